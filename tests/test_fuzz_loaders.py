"""Every loader of a user's file, fed malformed and hostile versions of a small valid file.

Hypothesis mutates a valid seed of each format (written here, small): truncations, bit flips, size fields set to
huge or negative values, inserted and deleted bytes, and for the JSON inside (contracts, MXNet symbols, settings)
fields set to NaN, huge numbers, wrong types, long strings and deep nesting. Every case must end in success or in
the loader's documented error, one line naming the file, within the per-example deadline; never another exception
(a traceback), and never an attempt to allocate without bound.

The cases run in one child process whose address space is capped (``RLIMIT_AS``) at what it uses after importing
everything plus one GiB: an allocation sized by a hostile field fails there, and a failure whose message says it
could not allocate counts as a finding, even when the loader turned it into one line. The child has an overall
timeout, so a hang fails the test instead of stalling the suite. Runs are derandomized: CI sees the same examples.

Run one format by hand: ``python tests/test_fuzz_loaders.py safetensors`` (prints its JSON verdict).
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TINY = dict(width_mult=0.0625, input_size=16)  # an IResNet-18 of 45k parameters
EXAMPLES = 80  # per format and per mutation family
CHILD_TIMEOUT_S = 400
RSS_HEADROOM = 1 << 30  # the cap over what the child uses once everything is imported

# --------------------------------------------------------------------------------------------------
# Small valid seeds


def tiny_contract(**edits):
    from arcface.inference.contract import TEMPLATES, ModelContract

    side = TINY["input_size"]
    points = tuple((x * side / 112, y * side / 112) for x, y in TEMPLATES["arcface_112"])
    fields = dict(architecture="r18", embedding_size=8, options=dict(TINY), input_size=(side, side))
    return ModelContract(**{**fields, "template_points": points, **edits})


def tiny_module():
    import torch

    from arcface.models import create_model

    torch.manual_seed(0)
    return create_model("r18", num_features=8, **TINY).eval()


def safetensors_seed(path: Path) -> Path:
    """Our model file: a tiny IResNet-18 with its contract in the metadata."""
    from arcface.inference.contract import save_model

    save_model(tiny_module(), tiny_contract(), path)
    return path


def contract_json_seed() -> str:
    """A model file's contract JSON, with its weights SHA-256 filled in."""
    from arcface.inference.contract import weights_sha256

    return tiny_contract(weights_sha256=weights_sha256(tiny_module().state_dict())).to_json()


def safetensors_with_contract(path: Path, contract_json: str) -> Path:
    """The tiny model's weights with ``contract_json`` as its contract (the weights' SHA-256 still matches)."""
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in tiny_module().state_dict().items()}
    save_file(sd, str(path), metadata={"arcface_contract": contract_json})
    return path


def pth_seed(path: Path) -> Path:
    """An arcface_torch ``backbone.pth``: a plain state dict saved by torch."""
    import torch

    torch.save(tiny_module().state_dict(), path)
    return path


def checkpoint_seed(path: Path) -> Path:
    """A training checkpoint as the trainer writes it (the tiny backbone, no head, the random-number states)."""
    import torch

    from arcface.engine.checkpoint import rng_state

    state = {"step": 3, "world_size": 1, "model": tiny_module().state_dict(), "head_shards": [{}], "optimizer": {},
             "scheduler": {}, "scaler": {}, "sampler": {}, "rng": rng_state()}  # fmt: skip
    torch.save(state, path)
    return path


def onnx_seed(path: Path, contract_json: str | None = None) -> Path:
    """A foreign ONNX recognition model (16x16 RGB in, 4-D embedding out), with our contract when given."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3 * 16 * 16)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["data"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w"], ["emb"], transB=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if contract_json is not None:
        helper.set_model_props(model, {"arcface_contract": contract_json})
    onnx.save(model, str(path))
    return path


def onnx_contract_seed() -> str:
    """The contract an ONNX export carries (architecture "onnx", the 16x16 input of :func:`onnx_seed`)."""
    from arcface.inference.contract import TEMPLATES, ModelContract

    points = tuple((x / 7, y / 7) for x, y in TEMPLATES["arcface_112"])
    return ModelContract("onnx", 4, {"preset": "insightface"}, (16, 16), template_points=points).to_json()


def mxnet_array(array: np.ndarray) -> bytes:
    """One dense NDArray record (V2 magic) of a ``.params`` file."""
    head = struct.pack("<Ii", 0xF993FAC9, 0) + struct.pack(f"<i{array.ndim}q", array.ndim, *array.shape)
    return head + struct.pack("<iii", 1, 0, 0) + array.astype("<f4").tobytes()


def mxnet_params_seed(path: Path) -> Path:
    """An MXNet ``.params`` file: a conv weight and a BatchNorm's moving mean, named as insightface names them."""
    arrays = [np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3), np.zeros(2, np.float32)]
    names = ["arg:conv0_weight", "aux:bn0_moving_mean"]
    body = struct.pack("<QQQ", 0x112, 0, len(arrays)) + b"".join(mxnet_array(a) for a in arrays)
    body += struct.pack("<Q", len(names)) + b"".join(struct.pack("<Q", len(n)) + n.encode() for n in names)
    path.write_bytes(body)
    return path


def mxnet_symbol_seed() -> dict:
    """An MXNet symbol: the input, its normalisation and one convolution."""
    return {
        "nodes": [
            {"op": "null", "name": "data", "inputs": []},
            {"op": "_minus_scalar", "name": "minus", "attrs": {"scalar": "127.5"}, "inputs": [[0, 0, 0]]},
            {"op": "_mul_scalar", "name": "mul", "attrs": {"scalar": "0.0078125"}, "inputs": [[1, 0, 0]]},
            {"op": "null", "name": "conv0_weight", "inputs": []},
            {
                "op": "Convolution",
                "name": "conv0",
                "attrs": {"kernel": "(3, 3)", "num_filter": "2", "no_bias": "True", "pad": "(1, 1)"},
                "inputs": [[2, 0, 0], [3, 0, 0]],
            },
        ],
        "arg_nodes": [0, 3],
        "heads": [[4, 0, 0]],
    }


def tiny_jpeg(value: int = 128) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.full((8, 8, 3), value, np.uint8))
    assert ok
    return buf.tobytes()


def recordio_seed(folder: Path) -> Path:
    """An insightface-style ``train.rec``/``train.idx``: header record, two images, two identity records."""
    from arcface.data.recordio import IRHeader, RecordIOWriter, pack

    rec = folder / "train.rec"
    with RecordIOWriter(rec, folder / "train.idx") as w:
        w.write_idx(0, pack(IRHeader(2, [3.0, 5.0], 0, 0), b""))
        w.write_idx(1, pack(IRHeader(0, 0.0, 1, 0), tiny_jpeg(100)))
        w.write_idx(2, pack(IRHeader(0, 1.0, 2, 0), tiny_jpeg(200)))
        w.write_idx(3, pack(IRHeader(2, [1.0, 2.0], 3, 0), b""))
        w.write_idx(4, pack(IRHeader(2, [2.0, 3.0], 4, 0), b""))
    return rec


def bin_seed() -> bytes:
    """An insightface verification ``.bin``: a protocol-2 pickle of (four encoded images, two is-same flags)."""
    return pickle.dumps(([tiny_jpeg(v) for v in (10, 20, 30, 40)], [True, False]), protocol=2)


LFW_PAIRS_SEED = "1\t1\nAlice\t1\t2\nAlice\t1\tBob\t1\n"
CSV_PAIRS_SEED = "a,b,same\nx/1.jpg,x/2.jpg,1\nx/1.jpg,y/1.jpg,0\n"
IJB_SEEDS = {
    "face_tid_mid": "a.jpg 1 7\nb.jpg 2 8\n",
    "template_pair_label": "1 2 0\n1 1 1\n",
    "name_5pts_score": "a.jpg " + " ".join(["10.5"] * 10) + " 0.9\n",
    "1n_csv": "TEMPLATE_ID,SUBJECT_ID\n1,5\n2,6\n",
}


def npz_seed() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, crops=np.zeros((2, 4, 4, 3), np.uint8), names=np.array(["a", "b"]))
    return buf.getvalue()


SETTINGS_SEED = {"max_upload_bytes": 1000000, "api_keys": ["k1", "k2"], "workers": 1}


def tflite_seed() -> Path | None:
    """The MobileFaceNet ``.tflite`` the bundled model comes from, when the shared material is present."""
    from conftest import shared_root

    path = shared_root() / "weights" / "recognition" / "MobileFaceNet.tflite"
    return path if path.is_file() else None


# --------------------------------------------------------------------------------------------------
# Mutations

HOSTILE_INTS = [0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**32 - 1, 2**62, 2**63 - 1, 2**64 - 1, -(2**31), -(2**63)]


def byte_mutations(st, seed: bytes):
    """Hypothesis strategy: ``seed`` truncated, bit-flipped, with a size field overwritten by a hostile value,
    with bytes inserted or deleted, or with a chunk repeated."""
    n = len(seed)
    pos = st.integers(0, max(n - 1, 0))

    def truncate(k):
        return seed[:k]

    def flip(args):
        k, bit = args
        b = bytearray(seed)
        b[k] ^= 1 << bit
        return bytes(b)

    def overwrite(args):
        k, value, width = args
        b = bytearray(seed)
        packed = (value % (1 << (8 * width))).to_bytes(width, "little")
        b[k : k + width] = packed
        return bytes(b[: max(n, k + width)])

    def insert(args):
        k, extra = args
        return seed[:k] + extra + seed[k:]

    def delete(args):
        k, m = args
        return seed[:k] + seed[k + m :]

    def repeat(args):
        k, m, times = args
        return seed[:k] + seed[k : k + m] * times + seed[k:]

    return st.one_of(
        pos.map(truncate),
        st.tuples(pos, st.integers(0, 7)).map(flip),
        st.lists(st.tuples(pos, st.integers(0, 7)), min_size=2, max_size=20).map(
            lambda flips: _apply_flips(seed, flips)
        ),
        st.tuples(pos, st.sampled_from(HOSTILE_INTS), st.sampled_from([1, 2, 4, 8])).map(overwrite),
        st.tuples(pos, st.binary(min_size=1, max_size=64)).map(insert),
        st.tuples(pos, st.integers(1, 64)).map(delete),
        st.tuples(pos, st.integers(1, 64), st.integers(2, 50)).map(repeat),
    )


def _apply_flips(seed: bytes, flips) -> bytes:
    b = bytearray(seed)
    for k, bit in flips:
        b[k] ^= 1 << bit
    return bytes(b)


def deep(depth: int, kind: str = "[") -> str:
    """JSON text nested ``depth`` levels deep."""
    if kind == "[":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


HOSTILE_JSON = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e30",
    "-1e30",
    "1e999",
    str(2**64),
    "-1",
    "0",
    "null",
    "true",
    '"x"',
    '"' + "y" * 100_000 + '"',
    "[]",
    "{}",
    "[1, 2]",
    "[20000, 20000]",
    "100000000",
    deep(100_000),
    deep(100_000, "{"),
    deep(70),
]


def json_field_mutations(st, doc: dict):
    """Hypothesis strategy: the JSON text of ``doc`` with one field (at any depth) replaced by a hostile value,
    or removed, or with an extra unknown field."""
    paths = list(_paths(doc))

    def replace(args):
        path, value = args
        marker = "__HOSTILE__"
        edited = _set(json.loads(json.dumps(doc)), path, marker)
        return json.dumps(edited).replace(json.dumps(marker), value)

    def remove(path):
        edited = json.loads(json.dumps(doc))
        parent = _get(edited, path[:-1])
        if isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, list):
            parent.pop(path[-1])
        return json.dumps(edited)

    return st.one_of(
        st.tuples(st.sampled_from(paths), st.sampled_from(HOSTILE_JSON)).map(replace),
        st.sampled_from(paths).map(remove),
        st.sampled_from(HOSTILE_JSON).map(lambda v: json.dumps(doc)[:-1] + f', "extra": {v}}}'),
        byte_mutations(st, json.dumps(doc).encode()).map(lambda b: b.decode("utf-8", "replace")),
    )


def _paths(node, prefix=()):
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for k, v in items:
        yield (*prefix, k)
        yield from _paths(v, (*prefix, k))


def _get(node, path):
    for k in path:
        node = node[k]
    return node


def _set(doc, path, value):
    _get(doc, path[:-1])[path[-1]] = value
    return doc


# Structured mutations: the size fields of each binary format set to hostile values directly, since a random
# byte position seldom lands on them.

HOSTILE_FLOATS = [float("nan"), float("inf"), -1.0, 0.5, 1e30, 2.0**40, 2.0**63, 3.0]


def safetensors_header_mutations(st, seed: bytes):
    """The seed's JSON header (dtypes, shapes, data offsets, metadata) with one field made hostile, re-framed with
    the right length prefix; or the length prefix itself set to a hostile value."""
    n = int.from_bytes(seed[:8], "little")
    header, data = json.loads(seed[8 : 8 + n]), seed[8 + n :]

    def frame(text: str) -> bytes:
        raw = text.encode("utf-8", "surrogatepass")
        return len(raw).to_bytes(8, "little") + raw + data

    return st.one_of(
        json_field_mutations(st, header).map(frame),
        st.sampled_from(HOSTILE_INTS).map(lambda v: (v % 2**64).to_bytes(8, "little") + seed[8:]),
    )


def mxnet_params_mutations(st):
    """A params file whose one array has a hostile ndim, dimensions or dtype flag (and little data)."""

    def build(args):
        ndim, dims, flag, data = args
        head = struct.pack("<Ii", 0xF993FAC9, 0) + struct.pack("<i", ndim)
        head += b"".join(struct.pack("<q", d % 2**64 - (2**64 if d % 2**64 >= 2**63 else 0)) for d in dims)
        array = head + struct.pack("<iii", 1, 0, flag) + data
        return struct.pack("<QQQ", 0x112, 0, 1) + array + struct.pack("<Q", 1) + struct.pack("<Q", 5) + b"arg:w"

    return st.tuples(
        st.sampled_from([-1, 0, 1, 2, 4, 32, 33, 2**31 - 1]),
        st.lists(st.sampled_from(HOSTILE_INTS + [3, 16]), min_size=0, max_size=4),
        st.sampled_from([0, 1, 2, 3, 6, 7, 99, -1]),
        st.binary(max_size=64),
    ).map(build)


def recordio_label_mutations(st, folder: Path):
    """A RecordIO pair whose header record or records carry hostile labels and identity ranges."""
    from arcface.data.recordio import IRHeader, RecordIOWriter, pack

    def build(args):
        first, end, label, flag = args
        d = Path(tempfile.mkdtemp(dir=folder))
        with RecordIOWriter(d / "train.rec", d / "train.idx") as w:
            w.write_idx(0, pack(IRHeader(2, [first, end], 0, 0), b""))
            w.write_idx(1, pack(IRHeader(0, label, 1, 0), tiny_jpeg(100)))
            w.write_idx(2, pack(IRHeader(flag, [label] * max(flag, 1) if flag else label, 2, 0), tiny_jpeg(200)))
            w.write_idx(3, pack(IRHeader(2, [label, end], 3, 0), b""))
        return ("rec", (d / "train.rec").read_bytes(), (d / "train.idx").read_bytes())

    values = st.sampled_from(HOSTILE_FLOATS + [1.0, 2.0, 4.0])
    return st.tuples(values, values, values, st.sampled_from([0, 1, 2, 5])).map(build)


def npy_header_mutations(st):
    """An ``.npz`` whose member's ``.npy`` header claims a hostile shape or dtype over a few bytes of data."""

    def build(args):
        shape, descr = args
        buf = io.BytesIO()
        header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
        header = header.ljust(118) + "\n"
        buf.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + bytes(64))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            z.writestr("crops.npy", buf.getvalue())
        return out.getvalue()

    dims = st.lists(st.sampled_from([0, 1, 8, 2**20, 2**31, 2**40, 2**62]), max_size=4)
    return st.tuples(dims, st.sampled_from(["<f4", "|u1", "<f8", "|O", "<U100", "|V1000000"])).map(build)


# --------------------------------------------------------------------------------------------------
# The verdict on one case


class Finding(AssertionError):
    """A case that did not end in success or in the documented one-line error."""


def expect_clean(path: Path, call, documented=None, field_prefix: str | None = None):
    """Run ``call()``; success passes, and so does ``documented`` (default: BadFileError) or a missing-file
    error, when its message is one line naming ``path`` (or its companion file in the same folder) and does not
    report a failed allocation or pass on torch's advice to load a pickle unsafely. Anything else raises
    :class:`Finding`. With ``field_prefix``, a message that starts with it names a field instead of the file (a
    value checked after the file was read)."""
    from arcface.runtime.untrusted import BadFileError

    documented = documented or (BadFileError,)
    try:
        call()
    except (*documented, FileNotFoundError) as e:
        msg = str(e)
        problems = []
        if "\n" in msg.strip():
            problems.append("more than one line")
        named_field = field_prefix is not None and msg.startswith(field_prefix)
        if str(path.parent) not in msg and not named_field:  # the file, its companion (a .rec's .idx), or a field
            problems.append("does not name the file")
        if "allocate" in msg.lower() or "memory" in msg.lower():
            problems.append("an allocation sized by the file was attempted")
        if "weights_only" in msg:
            problems.append("passes on torch's weights_only advice")
        if problems:
            raise Finding(f"{type(e).__name__} ({', '.join(problems)}): {msg[:500]!r}") from None
    except BaseException as e:  # anything else would reach the user as a traceback
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise Finding(f"undocumented {type(e).__name__}: {str(e)[:500]!r}") from e


# --------------------------------------------------------------------------------------------------
# One fuzz target per loader (run in the capped child)


def targets(st, work: Path) -> dict:
    """``{name: (strategy, check)}``: ``check(case)`` writes the case and loads it with the real loader."""
    from arcface.data.base import LOAD_ERRORS
    from arcface.data.recordio import RecordIODataset
    from arcface.engine.checkpoint import load_checkpoint
    from arcface.eval.datasets import read_bin, read_csv_pairs, read_lfw_pairs
    from arcface.eval.ijb import read_1n_csv, read_face_tid_mid, read_name_5pts_score, read_template_pair_label
    from arcface.inference.contract import ModelContract, read_model
    from arcface.inference.converters.mxnet import read_params, read_symbol
    from arcface.inference.files import read_model_file
    from arcface.models.weights import load_backbone_weights
    from arcface.runtime.untrusted import load_npz
    from arcface.serve.settings import Settings, SettingsError

    seeds = work / "seeds"
    seeds.mkdir()
    st_model = safetensors_seed(seeds / "m.safetensors").read_bytes()
    contract_doc = json.loads(contract_json_seed())
    pth = pth_seed(seeds / "b.pth").read_bytes()
    ckpt = checkpoint_seed(seeds / "ckpt.pt").read_bytes()
    onnx_plain = onnx_seed(seeds / "plain.onnx").read_bytes()
    onnx_contract_doc = json.loads(onnx_contract_seed())
    params = mxnet_params_seed(seeds / "m-0000.params").read_bytes()
    rec_dir = seeds / "rec"
    rec_dir.mkdir()
    recordio_seed(rec_dir)
    rec, idx = (rec_dir / "train.rec").read_bytes(), (rec_dir / "train.idx").read_bytes()
    counter = iter(range(10**9))

    def fresh(name: str) -> Path:
        d = work / f"case{next(counter)}"
        d.mkdir()
        return d / name

    def write(name: str, data: bytes | str) -> Path:
        path = fresh(name)
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
        return path

    def model_file(data: bytes):
        path = write("m.safetensors", data)
        expect_clean(path, lambda: read_model(path))

    def contract_in_safetensors(text: str):
        path = safetensors_with_contract(fresh("c.safetensors"), text)
        expect_clean(path, lambda: read_model_file(path))

    def contract_json(text: str):
        path = write("contract.json", text)  # a contract handed over as JSON text
        expect_clean(path, lambda: _contract_from_file(path, ModelContract))

    def init_from(data: bytes):
        path = write("init.safetensors", data)
        expect_clean(path, lambda: load_backbone_weights(path))

    def pth_file(data: bytes):
        path = write("backbone.pth", data)
        expect_clean(path, lambda: read_model_file(path, arch="r18", options=dict(TINY)))

    def checkpoint(data: bytes):
        path = write("ckpt-00000003.pt", data)
        expect_clean(path, lambda: load_checkpoint(path))

    def onnx_file(data: bytes):
        path = write("model.onnx", data)
        expect_clean(path, lambda: read_model_file(path))

    def onnx_contract(text: str):
        path = onnx_seed(fresh("c.onnx"), text)
        expect_clean(path, lambda: read_model_file(path))

    def params_file(data: bytes):
        path = write("m-0000.params", data)
        expect_clean(path, lambda: read_params(path))

    def symbol_file(text: str):
        path = write("m-symbol.json", text)
        expect_clean(path, lambda: read_symbol(path))

    def recordio(case):
        which, data, *index = case  # ("rec", bytes), ("idx", bytes) or ("rec", rec bytes, idx bytes)
        path = fresh("train.rec")
        path.write_bytes(data if which == "rec" else rec)
        path.with_suffix(".idx").write_bytes(data if which == "idx" else index[0] if index else idx)

        def load():
            ds = RecordIODataset(path, image_size=None)
            for i in range(min(len(ds), 4)):
                try:
                    ds.load(i)
                except LOAD_ERRORS as e:  # an unreadable record: the dataset logs it and skips to the next
                    if "\n" in str(e).strip():
                        raise Finding(f"a record's error is not one line: {str(e)[:300]!r}") from None
            ds.identity_ranges()

        expect_clean(path, load)

    def bin_file(data: bytes):
        path = write("lfw.bin", data)
        expect_clean(path, lambda: read_bin(path))

    def lfw_pairs(text: str):
        path = write("pairs.txt", text)
        expect_clean(path, lambda: read_lfw_pairs(path, path.parent))

    def csv_pairs(text: str):
        path = write("pairs.csv", text)
        expect_clean(path, lambda: read_csv_pairs(path))

    def ijb(case):
        kind, text = case
        path = write(f"meta_{kind}.txt", text)
        reader = {"face_tid_mid": read_face_tid_mid, "template_pair_label": read_template_pair_label,
                  "name_5pts_score": read_name_5pts_score, "1n_csv": read_1n_csv}[kind]  # fmt: skip
        expect_clean(path, lambda: reader(path))

    def npz(data: bytes):
        path = write("cache.npz", data)
        expect_clean(path, lambda: load_npz(path))

    def settings(case):
        suffix, text = case
        path = write(f"settings{suffix}", text)
        load = lambda: Settings.load(path, env={}, gallery=str(path.parent / "gallery"))  # noqa: E731
        expect_clean(path, load, (SettingsError,), field_prefix="settings: ")

    text = st.text(max_size=300)
    lines = st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60), max_size=8)
    st_mutations = st.one_of(byte_mutations(st, st_model), safetensors_header_mutations(st, st_model))
    found = {
        "safetensors": (
            st.one_of(byte_mutations(st, st_model), safetensors_header_mutations(st, st_model)),
            model_file,
        ),
        "contract_safetensors": (json_field_mutations(st, contract_doc), contract_in_safetensors),
        "contract_json": (json_field_mutations(st, contract_doc), contract_json),
        "init_from": (st_mutations, init_from),
        "pth": (byte_mutations(st, pth), pth_file),
        "checkpoint": (byte_mutations(st, ckpt), checkpoint),
        "onnx": (byte_mutations(st, onnx_plain), onnx_file),
        "onnx_contract": (json_field_mutations(st, onnx_contract_doc), onnx_contract),
        "mxnet_params": (st.one_of(byte_mutations(st, params), mxnet_params_mutations(st)), params_file),
        "mxnet_symbol": (json_field_mutations(st, mxnet_symbol_seed()), symbol_file),
        "recordio": (
            st.one_of(
                st.tuples(st.just("rec"), byte_mutations(st, rec)),
                st.tuples(st.just("idx"), byte_mutations(st, idx)),
                recordio_label_mutations(st, work),
            ),
            recordio,
        ),
        "bin": (byte_mutations(st, bin_seed()), bin_file),
        "lfw_pairs": (
            st.one_of(byte_mutations(st, LFW_PAIRS_SEED.encode()), text.map(str.encode), lines.map("\n".join)),
            lfw_pairs,
        ),
        "csv_pairs": (
            st.one_of(byte_mutations(st, CSV_PAIRS_SEED.encode()), lines.map("\n".join)),
            csv_pairs,
        ),
        "ijb": (
            st.sampled_from(sorted(IJB_SEEDS)).flatmap(
                lambda k: st.tuples(st.just(k), byte_mutations(st, IJB_SEEDS[k].encode()))
            ),
            ijb,
        ),
        "npz": (st.one_of(byte_mutations(st, npz_seed()), npy_header_mutations(st)), npz),
        "settings": (
            st.one_of(
                st.tuples(st.just(".json"), json_field_mutations(st, SETTINGS_SEED)),
                st.tuples(st.just(".yaml"), json_field_mutations(st, SETTINGS_SEED)),  # JSON is YAML too
                st.tuples(
                    st.just(".yaml"),
                    st.sampled_from(["a: &a [*a]", "- " * 5000 + "x", "{" * 5000, "!!python/object:os.system {}"]),
                ),
            ),
            settings,
        ),
    }
    tfl = tflite_seed()
    if tfl is not None:
        from arcface.inference.converters.tflite import TFLiteError, convert_tflite, read_tflite

        seed = tfl.read_bytes()

        def tflite_file(data: bytes):
            path = write("model.tflite", data)

            def load():
                read_tflite(path)
                convert_tflite(path)

            expect_clean(path, load, (TFLiteError,))

        found["tflite"] = (byte_mutations(st, seed), tflite_file)
    return found


def _contract_from_file(path: Path, cls):
    """A contract given as a JSON file: the reader names the file in front of the contract's own message."""
    from arcface.inference.contract import ContractError
    from arcface.runtime.untrusted import reading

    with reading(path, "not a model contract", ContractError):
        try:
            return cls.from_json(path.read_bytes())
        except ContractError as e:
            raise ContractError(f"{path}: {e}") from None


FORMATS = (
    "safetensors", "contract_safetensors", "contract_json", "init_from", "pth", "checkpoint", "onnx", "onnx_contract",
    "mxnet_params", "mxnet_symbol", "recordio", "bin", "lfw_pairs", "csv_pairs", "ijb", "npz", "settings", "tflite",
)  # fmt: skip


def run_child(names: list[str]) -> dict:
    """In the child: cap the address space, then run each target's examples; ``{name: verdict}``."""
    import resource

    from hypothesis import strategies as st

    import arcface.inference.converters.tflite  # noqa: F401  (every loader's imports happen before the cap)
    import arcface.serve.settings  # noqa: F401

    logging.disable(logging.WARNING)  # loaders log what they skip; the verdicts are what matter here
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        found = targets(st, Path(tmp))
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + RSS_HEADROOM, resource.RLIM_INFINITY))
        for name in names:
            if name not in found:
                results[name] = {"skipped": "no seed (the shared MobileFaceNet.tflite is absent)"}
                continue
            strategy, check = found[name]
            results[name] = _fuzz(strategy, check)
    return results


def _describe(error: BaseException) -> str:
    """Each failure Hypothesis found, with the case it found it on (shortened)."""
    parts = []
    for e in getattr(error, "exceptions", None) or [error]:
        notes = " ".join(getattr(e, "__notes__", []))[:600]
        parts.append(f"{type(e).__name__}: {str(e)[:800]} [{notes}]")
    return " | ".join(parts)


def _fuzz(strategy, check) -> dict:
    """Run ``check`` on ``EXAMPLES`` cases drawn from ``strategy``: ``{"ok": n}`` or ``{"finding": ...}``."""
    from hypothesis import HealthCheck, given, settings

    ran = [0]

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=timedelta(seconds=10),
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(strategy)
    def fuzz(case):
        ran[0] += 1
        check(case)

    try:
        fuzz()
    except BaseException as e:  # a finding: report it to the parent, go on with the next format
        return {"finding": _describe(e)}
    return {"ok": ran[0]}


@pytest.fixture(scope="module")
def verdicts() -> dict:
    """Every format's verdict from one capped child process (imports paid once)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(HERE)])}
    try:
        r = subprocess.run(
            [sys.executable, str(Path(__file__)), *FORMATS],
            capture_output=True,
            text=True,
            env=env,
            timeout=CHILD_TIMEOUT_S,
            cwd=str(REPO),
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the fuzz child ran past {CHILD_TIMEOUT_S} s (a hang?): {str(e.stderr)[-2000:]}")
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert r.returncode == 0 and lines, f"the fuzz child died (status {r.returncode}): {r.stderr[-3000:]}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("name", FORMATS)
def test_loader_survives_hostile_files(verdicts, name):
    verdict = verdicts[name]
    if "skipped" in verdict:
        pytest.skip(verdict["skipped"])
    assert "finding" not in verdict, verdict["finding"]
    assert verdict["ok"] > 0


if __name__ == "__main__":
    sys.path[:0] = [str(REPO / "src"), str(HERE)]
    print(json.dumps(run_child(sys.argv[1:] or list(FORMATS))))
