"""The model zoo: the bundled default, arcface_torch backbone.pth, insightface-style ONNX, and SFace parity."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from arcface.inference import zoo
from arcface.inference.contract import ContractError, ModelContract, read_contract, weights_sha256
from arcface.inference.embedder import Embedder
from arcface.inference.loader import load_model
from arcface.inference.runners import preprocess
from arcface.models import create_model


def load_backend(*args, **kwargs) -> Embedder:
    """The model as it is: float32 (the numbers of the module / the ONNX graph)."""
    return load_model(*args, precision="fp32", **kwargs)

SFACE = "weights/recognition/face_recognition_sface_2021dec_int8bq.ortfix.onnx"
LFW = "data/lfw/lfw-deepfunneled"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a small shared CPU, busy-waiting thread pools make these tests several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _crops(n: int = 3, size: int = 112) -> np.ndarray:
    """(n, size, size, 3) uint8 RGB: smooth random images (a stand-in for faces in shape tests)."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.float32)
    big = torch.nn.functional.interpolate(torch.from_numpy(small).permute(0, 3, 1, 2), size=size, mode="bilinear")
    return big.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()


def _torch_embed(module: nn.Module, crops: np.ndarray, contract: ModelContract) -> np.ndarray:
    with torch.inference_mode():
        out = module.eval()(torch.from_numpy(preprocess(crops, contract))).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _randomise_bn(module: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that a wrong load or layout shows in the outputs."""
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


def _export(module: nn.Module, path, *, dynamic: bool, input_name: str = "input.1", shape=(1, 3, 112, 112)) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (torch.zeros(*shape),),
            str(path),
            dynamo=False,
            input_names=[input_name],
            output_names=["embedding"],
            dynamic_axes={input_name: {0: "batch"}, "embedding": {0: "batch"}} if dynamic else None,
            opset_version=17,
        )


def test_default_model():
    backend = load_backend()
    assert backend.module is not None and backend.backend in ("torch", "onnx")
    c = backend.contract
    assert (c.architecture, c.embedding_size, c.input_size, c.color) == ("mbf_tflite", 192, (112, 112), "RGB")
    assert (c.mean, c.std) == (127.5, 128.0)
    assert c.threshold is not None and 0.0 < c.threshold < 1.0
    assert "pairsDevTrain" in c.calibrated_on and "pairsDevTest accuracy" in c.calibrated_on
    assert load_backend("mobilefacenet").contract == c
    assert weights_sha256(backend.module.state_dict()) == c.weights_sha256
    emb = backend.embed(_crops())
    assert emb.shape == (3, 192) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_safetensors_path(tmp_path):
    from arcface.inference.contract import save_model

    module = create_model("r18", width_mult=0.25, num_features=64)
    contract = save_model(module, ModelContract("r18", 64, options={"width_mult": 0.25}), tmp_path / "m.safetensors")
    backend = load_backend(tmp_path / "m.safetensors")
    assert backend.contract == contract == read_contract(tmp_path / "m.safetensors")


def test_resolve_model_path(tmp_path):
    """The public name -> file helper the experiments use: names, existing files, and clear errors."""
    default = zoo.resolve_model_path("default")
    assert default.is_file() and default.name == zoo.BUNDLED_DEFAULT
    assert zoo.resolve_model_path("MobileFaceNet") == default
    f = tmp_path / "m.safetensors"
    f.write_bytes(b"x")
    assert zoo.resolve_model_path(f) == f
    with pytest.raises(FileNotFoundError, match="unknown model 'nope'"):
        zoo.resolve_model_path("nope")
    with pytest.raises(TypeError, match="name or a path"):
        zoo.resolve_model_path(3)


def test_unknown_names_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="unknown model 'resnet9000'.*default, mobilefacenet, sface"):
        load_backend("resnet9000")
    with pytest.raises(FileNotFoundError, match="model file .*nowhere.onnx does not exist"):
        load_backend(tmp_path / "nowhere.onnx")
    other = tmp_path / "model.bin"
    other.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="unknown model file type .bin"):
        load_backend(other)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="broken.onnx: onnxruntime cannot load"):
        load_backend(broken)


def test_arcface_torch_backbone_pth(tmp_path):
    module = _randomise_bn(create_model("r18"))  # arcface_torch's r18 key layout, 512-D
    sd = module.state_dict()
    path = tmp_path / "backbone.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"weights only; say which backbone it is with arch="):
        load_backend(path)
    with pytest.raises(ValueError, match="unknown arch 'r9'"):
        load_backend(path, arch="r9")
    with pytest.raises(ContractError, match="weights do not fit r34"):
        load_backend(path, arch="r34")
    backend = load_backend(path, arch="r18")
    c = backend.contract
    assert (c.architecture, c.embedding_size, c.color, c.mean, c.std, c.template) == (
        "r18",
        512,
        "RGB",
        127.5,
        127.5,
        "arcface_112",
    )
    assert c.weights_sha256 == weights_sha256(sd) and c.threshold is None
    crops = _crops(2)
    np.testing.assert_allclose(backend.embed(crops), _torch_embed(module, crops, c), atol=1e-5)


def test_backbone_pth_variants(tmp_path):
    """A DDP "module." prefix, a wrapping dict, options and a non-default embedding size."""
    module = _randomise_bn(create_model("r18", width_mult=0.25, num_features=128))
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in module.state_dict().items()}, "epoch": 3}, path)
    backend = load_backend(path, arch="r18", options={"width_mult": 0.25})
    assert backend.contract.embedding_size == 128 and backend.contract.options == {"width_mult": 0.25}
    crops = _crops(2)
    np.testing.assert_allclose(backend.embed(crops), _torch_embed(module, crops, backend.contract), atol=1e-5)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": module}, pickled)  # a whole module is a pickle, refused by weights_only loading
    with pytest.raises(ContractError, match="pickled.pth: not a weights-only"):
        load_backend(pickled, arch="r18")


def test_insightface_onnx_matches_torch(tmp_path):
    module = _randomise_bn(create_model("r18", width_mult=0.25, num_features=256))
    path = tmp_path / "w600k_tiny.onnx"
    _export(module, path, dynamic=True)
    backend = load_backend(path, pass_size=4)
    assert backend.backend == "onnx" and backend.runner.layout == "NCHW"
    c = backend.contract
    assert (c.embedding_size, c.input_size, c.color, c.mean, c.std) == (256, (112, 112), "RGB", 127.5, 127.5)
    assert c.options == {"preset": "insightface"} and c.threshold is None
    crops = _crops(6)  # two passes of up to 4
    got, want = backend.embed(crops), _torch_embed(module, crops, c)
    assert got.shape == (6, 256)
    assert (np.sum(got * want, axis=1) > 0.999).all()


def test_onnx_nhwc_fixed_batch(tmp_path):
    class NHWC(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x.permute(0, 3, 1, 2))

    module = _randomise_bn(create_model("r18", width_mult=0.25, num_features=32))
    path = tmp_path / "nhwc.onnx"
    _export(NHWC(module), path, dynamic=False, input_name="img", shape=(1, 112, 112, 3))
    backend = load_backend(path)
    assert backend.runner.layout == "NHWC" and backend.pass_size == 1  # fixed batch of 1: one crop per run
    crops = _crops(3)
    got, want = backend.embed(crops), _torch_embed(module, crops, backend.contract)
    assert (np.sum(got * want, axis=1) > 0.999).all()


def test_contract_ids_differ(tmp_path):
    module = create_model("r18", width_mult=0.25, num_features=64)
    torch.save(module.state_dict(), tmp_path / "a.pth")
    _export(module.eval(), tmp_path / "a.onnx", dynamic=True)
    ids = {
        load_backend().contract.id,
        load_backend(tmp_path / "a.pth", arch="r18", options={"width_mult": 0.25}).contract.id,
        load_backend(tmp_path / "a.onnx").contract.id,
        load_backend(tmp_path / "a.onnx", preset="sface").contract.id,  # other preprocessing, other space
    }
    assert len(ids) == 4


def test_sface_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "weight_dirs", lambda: [tmp_path])
    with pytest.raises(FileNotFoundError, match="'sface' is not shipped.*opencv_zoo"):
        load_backend("sface")


def test_sface_parity_with_opencv(shared, monkeypatch):
    """SFace: RGB, mean 0, std 1 matches cv2.FaceRecognizerSF on the same crops; and it tells people apart."""
    import cv2

    from arcface.align import create_detector, norm_crop
    from arcface.io.images import load_image

    path = shared(SFACE)
    lfw = shared(LFW)
    monkeypatch.setenv("ARCFACE_SHARED", str(path.parents[2]))
    monkeypatch.delenv("ARCFACE_DATA", raising=False)
    backend = load_backend("sface")
    assert backend.runner.path.name in zoo.SFACE_FILES
    c = backend.contract
    assert (c.color, c.mean, c.std, c.embedding_size, c.threshold) == ("RGB", 0.0, 1.0, 128, 0.363)
    assert load_backend(path).contract == c  # "sface" in the file name picks the preset

    detector = create_detector("mtcnn")
    names = [("George_W_Bush", 1), ("George_W_Bush", 2), ("Colin_Powell", 1), ("Colin_Powell", 2)]
    crops = []
    for name, i in names:
        rgb = load_image(lfw / name / f"{name}_{i:04d}.jpg")
        crops.append(norm_crop(rgb, detector.detect(rgb)[0].landmarks))
    crops = np.stack(crops)
    ours = backend.embed(crops)

    opencv = cv2.FaceRecognizerSF.create(str(path), "")
    ref = np.stack([opencv.feature(np.ascontiguousarray(crop[:, :, ::-1])).reshape(-1) for crop in crops])  # BGR in
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    parity = np.sum(ours * ref, axis=1)
    assert (parity >= 0.999).all(), parity

    sim = ours @ ours.T
    same, diff = [sim[0, 1], sim[2, 3]], [sim[0, 2], sim[0, 3], sim[1, 2], sim[1, 3]]
    assert min(same) > 0.6 and max(diff) < 0.3  # much higher for the same person
    assert min(same) > c.threshold > max(diff)

    # The alternatives really are wrong: BGR input or insightface normalisation drift from OpenCV.
    for wrong in (dict(color="BGR"), dict(mean=127.5, std=127.5)):
        other = Embedder.from_onnx(backend.runner.session, ModelContract(**{**_fields(c), **wrong}), path=path)
        assert (np.sum(other.embed(crops) * ref, axis=1) < 0.99).any()


def _fields(c: ModelContract) -> dict:
    import dataclasses

    return {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
