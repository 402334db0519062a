"""Backbones: published state-dict layouts, golden outputs, options, and the TFLite MobileFaceNet layout."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arcface.models import MODELS, create_model
from arcface.models._blocks import Conv2dSame

STATE_DICTS = "reference/arcface_torch_backbone_state_dicts.json"
PUBLISHED = ("r18", "r34", "r50", "r100", "r200", "mbf")
GOLDEN = ("r18", "r34", "r50", "r100", "mbf")


def _tiny(**options) -> nn.Module:
    # A CPU-sized IResNet-18 for option tests: 1/4 width, 56x56 input.
    return create_model("r18", num_features=32, width_mult=0.25, input_size=56, **options)


def _reference_shapes(shared) -> dict[str, dict[str, list[int]]]:
    return json.loads(shared(STATE_DICTS).read_text())["backbones"]


def _import_golden(path: Path):
    spec = importlib.util.spec_from_file_location("arcface_reference_golden", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_registry_holds_published_names():
    assert set(PUBLISHED) | {"mbf_large", "mbf_tflite"} <= set(MODELS.names())
    with pytest.raises(KeyError, match="r999"):
        create_model("r999")


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_embeds(name):
    # Train mode: with fresh BatchNorm statistics an untrained deep IResNet (N(0, 0.1) convs, as in
    # arcface_torch) overflows in eval mode; batch statistics keep it finite.
    model = create_model(name, num_features=256).train()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 256)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS.names())
def test_default_embedding_size(name):
    with torch.device("meta"):
        model = create_model(name)
    assert model.num_features == (192 if name == "mbf_tflite" else 512)


@pytest.mark.parametrize("name", PUBLISHED)
def test_state_dict_matches_arcface_torch(name, shared):
    expected = _reference_shapes(shared)[name]
    with torch.device("meta"):  # no memory, no init: r200 costs nothing here
        model = create_model(name)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(expected)  # same keys, same order
    assert ours == expected
    checkpoint = {k: torch.empty(s, device="meta") for k, s in expected.items()}
    model.load_state_dict(checkpoint, strict=True, assign=True)


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_outputs(name, shared):
    golden = _import_golden(shared("reference/golden.py"))
    expected = torch.tensor(json.loads(shared("reference/expected_outputs.json").read_text())["outputs"][name])
    shapes = _reference_shapes(shared)[name]
    model = create_model(name).eval()
    state = {k: torch.from_numpy(v) for k, v in golden.make_state_dict(shapes).items()}
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(torch.from_numpy(golden.make_input()))  # (2, 512)
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())


def test_iresnet_embedding_bn_scale_is_frozen():
    model = _tiny()
    assert not model.features.weight.requires_grad
    assert torch.equal(model.features.weight, torch.ones(32))


def test_width_mult_and_input_size():
    model = create_model("r18", num_features=128, width_mult=0.25, input_size=56)
    assert model.conv1.out_channels == 16 and model.bn2.num_features == 128
    assert model.fc.in_features == 128 * 4 * 4  # 56 -> 28 -> 14 -> 7 -> 4
    assert model.eval()(torch.randn(3, 3, 56, 56)).shape == (3, 128)
    mbf = create_model("mbf", num_features=64, input_size=64).eval()
    assert mbf.features.layers[0].layers[0].kernel_size == (4, 4)
    assert mbf(torch.randn(2, 3, 64, 64)).shape == (2, 64)


def test_se_adds_modules_and_keeps_the_plain_keys():
    plain, se = _tiny(), _tiny(se=True)
    plain_keys, se_keys = set(plain.state_dict()), set(se.state_dict())
    assert plain_keys < se_keys
    assert all(".se." in k for k in se_keys - plain_keys)
    assert se.eval()(torch.randn(2, 3, 56, 56)).shape == (2, 32)


def test_dropout():
    model = _tiny(dropout=0.5)
    assert model.dropout.p == 0.5
    x = torch.randn(4, 3, 56, 56)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_grad_checkpoint_matches_plain_training_step():
    plain = _tiny().train()
    ckpt = _tiny(grad_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    # A pre-hook: recomputation stops as soon as the saved tensors are rebuilt, before post-hooks.
    ckpt.layer2[0].register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.randn(4, 3, 56, 56)
    out_plain, out_ckpt = plain(x), ckpt(x)
    torch.testing.assert_close(out_ckpt, out_plain)
    out_plain.square().sum().backward()
    out_ckpt.square().sum().backward()
    assert len(calls) == 2  # forward + recomputation in backward: checkpointing is active
    grads = dict(ckpt.named_parameters())
    for name, p in plain.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[name].grad, p.grad, msg=name)
    # Recomputation must not update BatchNorm running statistics a second time.
    torch.testing.assert_close(ckpt.state_dict(), plain.state_dict())


def test_conv2d_same_pads_like_tensorflow():
    conv = Conv2dSame(4, 6, 3, stride=2)
    even, odd = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 9, 9)
    # Even size: one extra row/column at the bottom/right only.
    torch.testing.assert_close(conv(even), F.conv2d(F.pad(even, (0, 1, 0, 1)), conv.weight, conv.bias, 2))
    # Odd size: symmetric, as PyTorch's padding=1.
    torch.testing.assert_close(conv(odd), F.conv2d(odd, conv.weight, conv.bias, 2, padding=1))


_GRAPH_OP = re.compile(
    r"^(CONV_2D|DEPTHWISE_CONV_2D) in=\S+ weight=\S+\[(\d+)x(\d+)x(\d+)x(\d+)\] bias=\S+\[(\d+)\] -> (\S+)"
)


def _graph_convs(text: str) -> list[tuple[tuple[int, ...], int, tuple[int, ...]]]:
    """(weight shape in PyTorch layout, bias size, NCHW output shape) of each conv, in graph order."""
    convs = []
    for line in text.splitlines():
        m = _GRAPH_OP.match(line)
        if not m:
            continue
        op, a, h, w, c = m.group(1), *map(int, m.group(2, 3, 4, 5))
        # CONV_2D weights are OHWI -> OIHW; depthwise weights are 1HWC -> (C, 1, H, W).
        shape = (a, c, h, w) if op == "CONV_2D" else (c, 1, h, w)
        n, oh, ow, oc = map(int, m.group(7).split("x"))
        convs.append((shape, int(m.group(6)), (n, oc, oh, ow)))
    return convs


def test_mbf_tflite_matches_the_tflite_graph(shared):
    text = shared("reference/mobilefacenet_tflite_graph.txt").read_text()
    graph = _graph_convs(text)
    alphas = [int(a) for a in re.findall(r"^PRELU alpha=\S+\[(\d+)\]", text, re.M)]
    model = create_model("mbf_tflite").eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(graph) == 52
    assert [tuple(c.weight.shape) for c in convs] == [g[0] for g in graph]
    assert [c.bias.numel() if c.bias is not None else 0 for c in convs] == [g[1] for g in graph]
    assert [m.weight.numel() for m in model.modules() if isinstance(m, nn.PReLU)] == alphas
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    # Output sizes per conv (strides and SAME padding) follow the graph too.
    outputs = []
    for c in convs:
        c.register_forward_hook(lambda _m, _i, out: outputs.append(tuple(out.shape)))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert outputs == [g[2] for g in graph]
    assert out.shape == (2, 192)
