"""The embedding contract a saved model carries, and safetensors save/load around it.

Embeddings are only comparable when they come from the same weights fed the same way: same
architecture and options, same weights, same input size, colour order, normalisation and alignment
template, same embedding size. :class:`ModelContract` records exactly that (plus the decision
thresholds and what they were calibrated on, and where the weights come from), and
:attr:`ModelContract.id` is a short hash of the fields that make embeddings comparable.

A model file is a safetensors file whose metadata key ``"arcface_contract"`` holds
``ModelContract.to_json()``; the trainer writes its final and best backbones this way too.

Weights SHA-256 (:func:`weights_sha256`): for every state-dict entry in sorted key order, the
UTF-8 bytes of ``f"{name}|{dtype}|{shape}|"`` (``dtype`` as torch prints it, e.g.
``torch.float32``; ``shape`` as a Python tuple, e.g. ``(64, 3, 3, 3)``), then the tensor's raw
bytes in C order (native byte order, little-endian on every platform we run). It depends on the
values, not on the file layout or the metadata, so re-saving a model keeps it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from arcface.align.template import ARCFACE_TEMPLATE, TEMPLATE_NAME
from arcface.models import create_model
from arcface.models.weights import check_safetensors_header, load_safetensors
from arcface.runtime.untrusted import BadFileError, JSONDepthError, load_json, one_line, reading, shown

__all__ = [
    "CONTRACT_KEY",
    "MAX_EMBEDDING_SIZE",
    "MAX_INPUT_SIDE",
    "TEMPLATES",
    "ContractError",
    "differing_keys",
    "ModelContract",
    "read_contract",
    "read_model",
    "save_model",
    "weights_sha256",
]

CONTRACT_KEY = "arcface_contract"
"""safetensors metadata key holding ``ModelContract.to_json()``."""

CONTRACT_VERSION = 1

# Bounds on what a contract may ask for: a file's contract decides how large the crops and embeddings are that get
# allocated, so a hostile one must not be able to ask for more than any real face model uses.
MAX_INPUT_SIDE = 1024
"""Largest side of the aligned crop, in pixels."""
MAX_EMBEDDING_SIZE = 8192
"""Longest embedding."""
MAX_SCALE = 1e4
"""Largest magnitude of mean, std and template coordinates."""
MIN_STD = 1e-6
"""Smallest magnitude of std (the pixels are divided by it)."""
MAX_TEXT = 4096
"""Longest free-text field (source, license, what a threshold was calibrated on)."""
MAX_OPTIONS_CHARS = 4096
"""Longest ``options`` as JSON."""
MAX_OPTIONS_DEPTH = 8
"""Deepest nesting of ``options``."""
MAX_OPTION_NUMBER = 1024
"""Largest magnitude of a number in ``options`` (block counts, widths, sizes)."""
MAX_CONTRACT_CHARS = 64 * 1024
"""Longest contract JSON."""
MAX_CONTRACT_DEPTH = 12
"""Deepest nesting of a contract's JSON (the options inside it, plus the contract object and its point lists)."""
_MAX_NAME = 128

# Templates by name, as (x, y) tuples; the points themselves live in arcface.align.template only.
TEMPLATES: dict[str, tuple[tuple[float, float], ...]] = {
    TEMPLATE_NAME: tuple((float(x), float(y)) for x, y in ARCFACE_TEMPLATE.tolist()),
}

_COLORS = ("RGB", "BGR")
_LAYOUTS = ("NCHW", "NHWC")
# The fields that decide whether two models' embeddings can be compared (see ModelContract.id).
_ID_FIELDS = (
    "architecture",
    "options",
    "weights_sha256",
    "input_size",
    "color",
    "mean",
    "std",
    "template",
    "template_points",
    "embedding_size",
)


# Optional fields added after version 1 was fixed: absent from older contracts, omitted from the JSON while None.
_OPTIONAL_FIELDS = ("identification_threshold", "identification_calibrated_on")


class ContractError(BadFileError):
    """A model file or contract that is malformed, or weights that do not match their contract."""


def _count(name: str, value: Any, most: int) -> int:
    """A whole number in ``[1, most]`` (an integral float such as ``112.0`` is accepted)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and isinstance(value, numbers.Real) and not isinstance(value, bool):
        ok = math.isfinite(value) and float(value).is_integer()
    if ok:
        value = int(value)
    if not ok or not 1 <= value <= most:
        raise ContractError(f"contract field {name}: must be a whole number from 1 to {most}, got {shown(value)}")
    return int(value)


def _number(name: str, value: Any, low: float, high: float, why: str = "must be a finite number") -> float:
    """A finite float in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ContractError(f"contract field {name}: {why} in [{low:g}, {high:g}], got {shown(value)}")
    try:
        out = float(value)
    except OverflowError:  # an int too large for a float
        out = math.inf
    if not (math.isfinite(out) and low <= out <= high):
        raise ContractError(f"contract field {name}: {why} in [{low:g}, {high:g}], got {shown(value)}")
    return out


def _text(name: str, value: Any, most: int, *, empty: bool = True) -> str:
    """A string of at most ``most`` characters (non-empty unless ``empty``)."""
    if not isinstance(value, str) or (not empty and not value):
        kind = "string" if empty else "non-empty string"
        raise ContractError(f"contract field {name}: must be a {kind}, got {shown(value)}")
    if len(value) > most:
        raise ContractError(f"contract field {name}: {len(value)} characters, more than the {most} allowed")
    return value


def _options(value: Any) -> dict[str, Any]:
    """The options as canonical JSON values: a mapping, bounded in size and depth, finite numbers only."""
    if not isinstance(value, Mapping):
        raise ContractError(f"contract field options: must be an object, got {shown(value)}")
    try:
        text = json.dumps(dict(value), sort_keys=True, allow_nan=False)
        if len(text) > MAX_OPTIONS_CHARS:
            raise ValueError(f"{len(text)} characters of JSON, more than the {MAX_OPTIONS_CHARS} allowed")
        out = load_json(text, max_depth=MAX_OPTIONS_DEPTH)
    except (TypeError, ValueError, RecursionError) as e:
        raise ContractError(f"contract field options: must be JSON values ({one_line(e)})") from None
    todo = [out]  # depth is bounded above, so this walk is short
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, (int, float)) and not isinstance(item, bool) and abs(item) > MAX_OPTION_NUMBER:
            raise ContractError(f"contract field options: the number {shown(item)} exceeds {MAX_OPTION_NUMBER}")
    return out


def differing_keys(state_dict: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys whose presence or shape differs between two state dicts, sorted (empty when they match).

    Compared on shapes only, so ``reference`` may live on the meta device: nothing is allocated to find out that
    weights do not fit a module.
    """
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    want = {k: tuple(v.shape) for k, v in reference.items()}
    return sorted(set(got) ^ set(want)) or sorted(k for k in got if got[k] != want[k])


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over a state dict: sorted names, dtypes, shapes and raw bytes (see module doc)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ModelContract:
    """How a model's embeddings are produced and compared.

    Args:
        architecture: name in ``arcface.models.MODELS`` (e.g. "r50", "mbf_tflite").
        options: extra ``create_model`` arguments (JSON values), e.g. ``{"input_size": 112}``.
        embedding_size: length of the embedding (``num_features``).
        input_size: (H, W) of the aligned crop.
        color: channel order the model expects, "RGB" or "BGR".
        mean: subtracted from 0..255 pixel values.
        std: the difference is divided by it: ``(x - mean) / std``.
        layout: tensor layout of the ORIGINAL model the weights come from ("NHWC" for a TFLite
            graph). Informational: every module :func:`read_model` builds takes NCHW.
        template: name of the alignment template (a key of ``TEMPLATES`` for ours).
        template_points: its five (x, y) points in the ``input_size`` crop.
        weights_sha256: :func:`weights_sha256` of the weights ("" until :func:`save_model` fills it).
        threshold: cosine-similarity decision threshold (same identity when ``cos > threshold``),
            or None when not calibrated.
        calibrated_on: the pairs the threshold was chosen on, e.g.
            "LFW View 1 pairsDevTrain.txt, 2200 pairs, accuracy 0.993".
        identification_threshold: cosine threshold of an open-set 1:N search (a gallery hit is a match when
            ``cos > identification_threshold``), chosen for a false-positive identification rate (FPIR: the share
            of searches by people who are NOT enrolled whose best hit passes), or None when not calibrated. It is
            higher than ``threshold`` (a 1:1 decision), because a stranger searched against N people gets N
            chances to pass; the FPIR it gives grows with the gallery size.
        identification_calibrated_on: the protocol it was chosen on (gallery size, searches, FPIR and FNIR).
        source: where the weights come from.
        license: their license terms, or where to find them.
    """

    architecture: str
    embedding_size: int
    options: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int] = (112, 112)
    color: str = "RGB"
    mean: float = 127.5
    std: float = 127.5
    layout: str = "NCHW"
    template: str = TEMPLATE_NAME
    template_points: tuple[tuple[float, float], ...] = TEMPLATES[TEMPLATE_NAME]
    weights_sha256: str = ""
    threshold: float | None = None
    calibrated_on: str | None = None
    source: str = ""
    license: str = ""
    identification_threshold: float | None = None
    identification_calibrated_on: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the fields in place once
        set_(self, "architecture", _text("architecture", self.architecture, _MAX_NAME, empty=False))
        set_(self, "options", _options(self.options))
        set_(self, "embedding_size", _count("embedding_size", self.embedding_size, MAX_EMBEDDING_SIZE))
        size = self.input_size
        size = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
        if not isinstance(size, (tuple, list)) or len(size) != 2:
            raise ContractError(f"contract field input_size: must be (H, W), got {shown(self.input_size)}")
        set_(self, "input_size", tuple(_count("input_size", s, MAX_INPUT_SIDE) for s in size))
        if self.color not in _COLORS:
            raise ContractError(f"contract field color: must be one of {_COLORS}, got {shown(self.color)}")
        if self.layout not in _LAYOUTS:
            raise ContractError(f"contract field layout: must be one of {_LAYOUTS}, got {shown(self.layout)}")
        set_(self, "mean", _number("mean", self.mean, -MAX_SCALE, MAX_SCALE))
        set_(self, "std", _number("std", self.std, -MAX_SCALE, MAX_SCALE))
        if abs(self.std) < MIN_STD:
            raise ContractError(f"contract field std: must be at least {MIN_STD:g} in size, got {self.std:g}")
        set_(self, "template", _text("template", self.template, _MAX_NAME, empty=False))
        points = self.template_points
        points = points.tolist() if hasattr(points, "tolist") else points  # a (5, 2) array
        if not isinstance(points, (tuple, list)) or len(points) != 5:
            n = len(points) if isinstance(points, (tuple, list)) else shown(points)
            raise ContractError(f"contract field template_points: must be 5 (x, y) points, got {n}")
        pts = []
        for p in points:
            if not isinstance(p, (tuple, list)) or len(p) != 2:
                raise ContractError(f"contract field template_points: each point is (x, y), got {shown(p)}")
            pts.append(tuple(_number("template_points", v, -MAX_SCALE, MAX_SCALE) for v in p))
        set_(self, "template_points", tuple(pts))
        sha = self.weights_sha256
        if not isinstance(sha, str) or (sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha))):
            raise ContractError(f"contract field weights_sha256: must be 64 lowercase hex digits, got {shown(sha)}")
        for name in ("threshold", "identification_threshold"):
            if getattr(self, name) is not None:
                set_(self, name, _number(name, getattr(self, name), -1.0, 1.0, "is a cosine"))
        for name in ("source", "license"):
            set_(self, name, _text(name, getattr(self, name), MAX_TEXT))
        for name in ("calibrated_on", "identification_calibrated_on"):
            if getattr(self, name) is not None:
                set_(self, name, _text(name, getattr(self, name), MAX_TEXT))

    def check_crop(self) -> None:
        """Refuse template points outside the ``input_size`` crop (a file's contract is checked this way on load).

        Raises:
            ContractError: a point lies outside ``[0, W] x [0, H]`` (the field is named).
        """
        h, w = self.input_size
        for x, y in self.template_points:
            if not (0.0 <= x <= w and 0.0 <= y <= h):
                raise ContractError(f"contract field template_points: ({x:g}, {y:g}) lies outside the {h}x{w} crop")

    @property
    def threshold_l2(self) -> float | None:
        """The threshold as a squared L2 distance of unit vectors, ``2 - 2 * threshold`` (same when below)."""
        return None if self.threshold is None else 2.0 - 2.0 * self.threshold

    @property
    def id(self) -> str:
        """16 hex digits identifying the embedding space: equal ids mean comparable embeddings.

        A SHA-256 over the canonical JSON of architecture, options, weights SHA-256, input size,
        colour, mean, std, template (name and points) and embedding size. The thresholds,
        their calibration, layout, source and license do not enter it.
        """
        d = self._as_dict()
        key = json.dumps({k: d[k] for k in _ID_FIELDS}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def compatible(self, other: ModelContract) -> bool:
        """True when embeddings made under ``self`` and ``other`` may be compared (same :attr:`id`)."""
        return self.id == other.id

    def _as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["template_points"] = [list(p) for p in self.template_points]
        return d

    def to_json(self) -> str:
        """The contract as one canonical JSON object (sorted keys), with ``threshold_l2`` and ``id`` added.

        The identification fields are left out while they are None, so a contract without them reads the same as
        one written before they existed (and older readers keep reading it).
        """
        d = self._as_dict()
        for key in _OPTIONAL_FIELDS:
            if d[key] is None:
                del d[key]
        d["threshold_l2"] = self.threshold_l2
        d["id"] = self.id
        d["contract_version"] = CONTRACT_VERSION
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelContract:
        """Parse :meth:`to_json` output; an unknown or missing key, or inconsistent derived field, raises.

        Raises:
            ContractError: malformed JSON, unknown keys (named), missing required keys, bad values, or a
                stored ``id``/``threshold_l2`` that disagrees with the other fields.
        """
        if not isinstance(text, (str, bytes)):
            raise ContractError(f"contract: expected JSON text, got {type(text).__name__}")
        try:
            # NaN parses here so that the field check below names the field that holds it
            d = load_json(text, max_depth=MAX_CONTRACT_DEPTH, max_chars=MAX_CONTRACT_CHARS, allow_nan=True)
        except JSONDepthError as e:
            where = f"contract field {e.key}" if e.key else "contract"
            raise ContractError(f"{where}: nested more than {MAX_CONTRACT_DEPTH} levels deep") from None
        except ValueError as e:
            raise ContractError(f"contract: not valid JSON ({one_line(e)})") from None
        if not isinstance(d, dict):
            raise ContractError("contract: JSON must be an object")
        version = d.pop("contract_version", CONTRACT_VERSION)
        if version != CONTRACT_VERSION:
            raise ContractError(f"contract: version {version} is not supported (this code reads {CONTRACT_VERSION})")
        stored_id = d.pop("id", None)
        stored_l2 = d.pop("threshold_l2", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ContractError(f"contract: unknown key(s) {', '.join(unknown)}")
        try:
            contract = cls(**d)
        except TypeError as e:  # a missing required field
            raise ContractError(f"contract: {e}") from None
        contract.check_crop()
        if stored_id is not None and stored_id != contract.id:
            raise ContractError(f"contract: stored id {stored_id} does not match its fields ({contract.id})")
        l2 = contract.threshold_l2
        if stored_l2 is not None and (isinstance(stored_l2, bool) or not isinstance(stored_l2, (int, float))):
            raise ContractError(f"contract field threshold_l2: must be a number, got {shown(stored_l2)}")
        if (stored_l2 is None) != (l2 is None) or (l2 is not None and abs(stored_l2 - l2) > 1e-9):
            raise ContractError(f"contract: threshold_l2 {stored_l2} is not 2 - 2 * threshold ({l2})")
        return contract

    def summary(self) -> str:
        """A few human-readable lines (for the CLI)."""
        h, w = self.input_size
        thr = (
            "not calibrated"
            if self.threshold is None
            else f"cos > {self.threshold:.4f} (squared L2 < {self.threshold_l2:.4f}) on {self.calibrated_on}"
        )
        return "\n".join(
            [
                f"contract {self.id}: {self.architecture} {json.dumps(self.options, sort_keys=True)}",
                f"  input {h}x{w} {self.color} (x - {self.mean:g}) / {self.std:g}, original layout {self.layout}",
                f"  template {self.template}, embedding {self.embedding_size}-D, weights sha256 {self.weights_sha256}",
                f"  threshold {thr}",
                "  identification threshold "
                + (
                    "not calibrated"
                    if self.identification_threshold is None
                    else f"cos > {self.identification_threshold:.4f} on {self.identification_calibrated_on}"
                ),
                f"  source {self.source or '-'}; license {self.license or '-'}",
            ]
        )


class _ShapesOnly(TorchFunctionMode):
    """Skips random initialisation while a module is built only for its shapes (on the meta device): a meta tensor
    holds no numbers to draw, and torch's meta kernel for a normal draw imports its compiler stack, a second of start-up
    for every command that loads a model. The mode is per thread, like the device context it runs inside."""

    _SKIPPED = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.erfinv_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self._SKIPPED:
            return args[0]
        return func(*args, **(kwargs or {}))


def _build(contract: ModelContract) -> nn.Module:
    try:
        return create_model(contract.architecture, num_features=contract.embedding_size, **contract.options)
    except KeyError as e:
        raise ContractError(f"contract: {e.args[0] if e.args else e}") from None
    except Exception as e:  # an option the architecture does not take, or a value it cannot build
        raise ContractError(
            f"contract: options {shown(contract.options)} do not fit {contract.architecture}: {one_line(e)}"
        ) from None


def save_model(module: nn.Module, contract: ModelContract, path: str | Path) -> ModelContract:
    """Write ``module``'s weights as safetensors with ``contract`` in the metadata (atomically).

    The weights SHA-256 is computed here and replaces the contract's; the module must have the
    state-dict layout that ``create_model(contract.architecture, ...)`` builds, so that
    :func:`read_model` can load it strictly.

    Returns:
        The contract as written (with ``weights_sha256`` filled in).

    Raises:
        ContractError: the module does not match the architecture the contract names.
    """
    from safetensors.torch import save

    sd = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with torch.device("meta"):
        ref = _build(contract).state_dict()
    diff = differing_keys(sd, ref)
    if diff:
        raise ContractError(
            f"module does not match architecture {contract.architecture!r} with options {contract.options} "
            f"and embedding size {contract.embedding_size} (first differing keys: {', '.join(diff[:3])})"
        )
    contract = dataclasses.replace(contract, weights_sha256=weights_sha256(sd))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        # Written by us (not save_file) so the file gets the usual umask permissions.
        with open(tmp, "wb") as f:
            f.write(save(sd, metadata={CONTRACT_KEY: contract.to_json()}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return contract


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    check_safetensors_header(path, ContractError)
    with reading(path, "not a safetensors model file", ContractError), safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _read_contract(path: Path) -> ModelContract:
    meta = _read_metadata(path)
    try:
        if CONTRACT_KEY in meta:
            return ModelContract.from_json(meta[CONTRACT_KEY])
    except (ContractError, json.JSONDecodeError) as e:
        raise ContractError(f"{path}: {e}") from None
    keys = shown(sorted(meta)) if meta else "none"
    raise ContractError(f"{path}: no arcface contract in the safetensors metadata (keys: {keys})")


def read_contract(path: str | Path) -> ModelContract:
    """The contract stored in a model file, without loading the weights.

    Raises:
        FileNotFoundError: no such file.
        ContractError: not a safetensors file, or no (valid) arcface contract in its metadata.
    """
    return _read_contract(Path(path))


def read_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelContract]:
    """Read a model file written by :func:`save_model` (or by the trainer) and verify its weights.

    The module is rebuilt with ``create_model(contract.architecture,
    num_features=contract.embedding_size, **contract.options)``, loaded with ``strict=True`` and put in
    eval mode. It takes NCHW input whatever ``contract.layout`` says.

    Args:
        path: a ``.safetensors`` model file.
        device: where to put the module.

    Returns:
        (module, contract).

    Raises:
        FileNotFoundError: no such file.
        ContractError: no contract, a contract without a weights SHA-256, weights whose SHA-256 differs
            from the contract's, or weights that do not fit the architecture.
    """
    path = Path(path)
    contract = _read_contract(path)
    sd = load_safetensors(path, ContractError)
    if not contract.weights_sha256:
        raise ContractError(f"{path}: its contract has no weights_sha256, so the weights cannot be verified")
    actual = weights_sha256(sd)
    if actual != contract.weights_sha256:
        raise ContractError(
            f"{path}: weights SHA-256 {actual} does not match the contract's {contract.weights_sha256} "
            "(corrupt or edited file)"
        )
    with torch.device("meta"), _ShapesOnly():  # the shapes first: options asking for a huge model allocate nothing
        diff = differing_keys(sd, _build(contract).state_dict())
    if diff:
        raise ContractError(
            f"{path}: weights do not fit {contract.architecture} with options {shown(contract.options)} "
            f"(first differing keys: {shown(diff[:3])})"
        )
    module = _build(contract)
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ContractError(f"{path}: weights do not fit {contract.architecture}: {first}") from None
    return module.to(device).eval(), contract
