"""Reading files a user hands us: every failure becomes one :class:`BadFileError` line naming the file.

A file is untrusted input. A crafted one can make a parser fail in ways its authors never listed: a
``RecursionError`` from deep nesting, an ``OverflowError`` or ``MemoryError`` from a size field, a ``struct.error``
from a short read, a ``UnicodeDecodeError``. :func:`reading` wraps a loader so that any of them reaches the user as
one line that says which file and what was being read, never a traceback (:func:`reads` does the same for a whole
loader function). :func:`load_json` parses JSON after checking its length and nesting depth without recursion, so
the parser and every later walk of the result stay within bounds; :func:`load_npz` checks every array header of an
``.npz`` against the bytes behind it before numpy allocates the array.

Loaders keep their own error classes (a contract error, a RecordIO error, ...); each is a :class:`BadFileError`,
so callers may catch either.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pickle
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "MAX_JSON_DEPTH",
    "BadFileError",
    "JSONDepthError",
    "check_json_depth",
    "load_json",
    "load_npz",
    "one_line",
    "reading",
    "reads",
    "refusal",
    "shown",
]

#: Deepest JSON nesting any file of ours needs (model contracts, MXNet symbols and settings are a few levels deep).
MAX_JSON_DEPTH = 64

_LINE_MAX = 300
# A JSON string literal (escapes included), or a character that opens or closes a level.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_TOKEN = re.compile(_JSON_STRING.pattern + r"|[\[\]{}]", re.DOTALL)


class BadFileError(ValueError):
    """A file that cannot be read as what it claims to be; the message is one line naming it."""


def one_line(error: BaseException) -> str:
    """The first line of an exception's message (its class name when empty), at most a few hundred characters.

    torch's advice to retry a refused checkpoint with ``weights_only=False`` (which would run the code the file
    holds) is replaced by saying that the file was refused.
    """
    text = str(error).strip()
    if isinstance(error, pickle.UnpicklingError) and "weights_only" in text:
        return refusal()
    if isinstance(error, RecursionError):
        return "nested too deeply"
    if isinstance(error, MemoryError):
        return "a size in the file is too large to allocate"
    first = text.splitlines()[0] if text else type(error).__name__
    first = " ".join(first.split())
    return first if len(first) <= _LINE_MAX else first[: _LINE_MAX - 3] + "..."


def shown(value: Any, most: int = 60) -> str:
    """``repr(value)`` cut to ``most`` characters: a hostile file's field may be megabytes long."""
    text = repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."


def refusal() -> str:
    """What to say about a pickle that holds more than tensors and plain containers."""
    return "refused: the file holds code (pickled Python objects beyond tensors), and only weights are ever loaded"


def special_file(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it is neither a regular file nor a folder ("FIFO", "socket", "device"); None otherwise,
    and for a path that cannot be examined (the loader's own open then says why)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "FIFO"
    return "socket" if stat.S_ISSOCK(mode) else "device"


@contextmanager
def reading(path: str | os.PathLike, what: str, error: type[BadFileError] = BadFileError) -> Iterator[None]:
    """Turn any failure inside the block into ``error("PATH: WHAT (reason)")``, one line.

    ``FileNotFoundError`` passes through (the caller's message already names the missing file), as does an
    ``error`` raised inside (already one line naming the file). Any other ``BadFileError``, and a ``ValueError``
    whose message starts with the path, is re-raised as ``error`` with its message kept.

    Args:
        path: the file being read (named in the message).
        what: what it should be, e.g. "not an MXNet params file".
        error: the :class:`BadFileError` subclass to raise.
    """
    special = special_file(path)
    if special:  # opening a FIFO for reading waits for a writer, and a device can stream forever
        raise error(f"{os.fspath(path)}: {what} (it is a {special}, not a regular file; only regular files are read)")
    try:
        yield
    except (FileNotFoundError, error):
        raise
    except BadFileError as e:
        raise error(str(e)) from None
    except ValueError as e:
        if str(e).startswith((os.fspath(path), str(Path(path)))):  # the loader's own message, naming the file
            raise error(one_line(e)) from None
        raise error(f"{os.fspath(path)}: {what} ({one_line(e)})") from None
    except Exception as e:  # anything a hostile file can provoke: one line naming it
        raise error(f"{os.fspath(path)}: {what} ({one_line(e)})") from None


def reads(what: str, error: type[BadFileError] = BadFileError) -> Callable[[F], F]:
    """Decorate a loader whose first argument is the file: the whole call runs under :func:`reading`."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def loader(path: Any, *args: Any, **kwargs: Any) -> Any:
            with reading(path, what, error):
                return fn(path, *args, **kwargs)

        return loader  # type: ignore[return-value]

    return wrap


class JSONDepthError(ValueError):
    """JSON nested deeper than allowed; ``key`` is the top-level key it happens under (None when not in an object)."""

    def __init__(self, max_depth: int, key: str | None) -> None:
        super().__init__(f"nested more than {max_depth} levels deep" + (f" under {shown(key)}" if key else ""))
        self.key = key


def check_json_depth(text: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON text nested deeper than ``max_depth`` arrays/objects, without recursing.

    String literals are skipped, so brackets inside them do not count. Malformed text is left for the parser.

    Raises:
        JSONDepthError: the nesting depth exceeds ``max_depth`` (a ``ValueError`` naming the top-level key).
    """
    import numpy as np  # the fast pass: C-speed over megabytes of text

    chars = np.frombuffer(_JSON_STRING.sub('""', text).encode("utf-8", "surrogatepass"), np.uint8)
    opens, closes = (chars == ord("[")) | (chars == ord("{")), (chars == ord("]")) | (chars == ord("}"))
    steps = opens[opens | closes].astype(np.int64) * 2 - 1  # +1 per opening bracket, -1 per closing one
    if not steps.size or int(np.cumsum(steps).max()) <= max_depth:
        return
    depth, key = 0, None  # too deep: walk the tokens to name the top-level key it happens under
    for m in _JSON_TOKEN.finditer(text):
        token = m.group()
        if token[0] == '"':
            if depth == 1:
                key = token
        elif token in "[{":
            depth += 1
            if depth > max_depth:
                raise JSONDepthError(max_depth, _key(key))
        else:
            depth -= 1


def _key(token: str | None) -> str | None:
    """The text of a JSON string token, or None when it is not one."""
    try:
        key = json.loads(token) if token else None
    except ValueError:
        return None
    return key if isinstance(key, str) else None


def load_json(
    data: str | bytes, *, max_depth: int = MAX_JSON_DEPTH, max_chars: int | None = None, allow_nan: bool = False
) -> Any:
    """``json.loads`` after bounding the text's length and nesting depth; NaN and Infinity are refused unless
    ``allow_nan`` (for a caller that checks every number itself and names the field that holds a bad one).

    Raises:
        ValueError: too long, too deep, not UTF-8, not JSON, or a non-finite number (the reason in one line).
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if max_chars is not None and len(text) > max_chars:
        check_json_depth(text[:max_chars], max_depth)  # too deep within the allowed length: name the key instead
        raise ValueError(f"{len(text)} characters of JSON, more than the {max_chars} allowed")
    check_json_depth(text, max_depth)

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    return json.loads(text) if allow_nan else json.loads(text, parse_constant=constant)


# Deflate expands at most about 1032 to 1: a zip member claiming more than this is lying about its size.
_MAX_DEFLATE_RATIO = 1100


@reads("not a readable .npz file of plain arrays")
def load_npz(path: str | os.PathLike) -> dict[str, Any]:
    """Every array of an ``.npz`` file, without pickle, after checking each member's claimed shape against its size.

    numpy allocates an array as large as its header says before reading the data, so a crafted header could ask
    for any amount of memory; here every header is read first and must fit in the bytes its zip member holds
    (and a member may claim no more than deflate can expand its compressed bytes to).

    Raises:
        FileNotFoundError: no such file.
        BadFileError: not a zip of ``.npy`` members, a header that claims more than its member holds, or any other
            failure (one line naming the file).
    """
    import zipfile

    import numpy as np

    if not Path(path).is_file():
        raise FileNotFoundError(f".npz file {os.fspath(path)} does not exist")
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if info.file_size > max(info.compress_size, 1) * _MAX_DEFLATE_RATIO:
                name, n, packed = shown(info.filename), info.file_size, info.compress_size
                raise ValueError(f"member {name} claims {n} bytes from {packed}")
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                fmt = np.lib.format
                read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, _, dtype = read_header(f)
                if dtype.hasobject:
                    raise ValueError(f"member {shown(info.filename)} holds Python objects")
                if math.prod(shape) * dtype.itemsize > info.file_size:
                    raise ValueError(f"member {shown(info.filename)} claims shape {shown(shape)}, more than it holds")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
