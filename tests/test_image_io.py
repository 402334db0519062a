"""Tests of the one image loader: every bad input named in the issue, generated on the fly."""

from __future__ import annotations

import io
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from arcface.io.images import (
    ImageError,
    image_from_upload,
    load_image,
)

RED = (220, 20, 30)
BLUE = (20, 40, 220)


# --------------------------------------------------------------------------------------------------
# Generators (tiny files written into tmp_path; nothing binary is committed)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _noise_jpeg(size=(200, 160)) -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return _encode(Image.fromarray(arr), "JPEG", quality=90)


def _png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR is patched to claim ``width x height`` (a few dozen bytes on disk)."""
    data = bytearray(_encode(Image.new("RGB", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _two_blocks(w=60, h=40) -> Image.Image:
    """Blue image with a red 20x20 block in the top-left corner."""
    arr = np.empty((h, w, 3), np.uint8)
    arr[:] = BLUE
    arr[:20, :20] = RED
    return Image.fromarray(arr)


def _is_close(pixel, colour, tol=40) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, colour))


def _assert_rgb(out: np.ndarray, shape_hw) -> None:
    assert out.dtype == np.uint8
    assert out.shape == (*shape_hw, 3)
    assert out.flags.c_contiguous and out.flags.writeable


def _error(src, **kw) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(src, **kw)
    return info.value


# --------------------------------------------------------------------------------------------------
# Files that are not (readable) images


def test_missing_file(tmp_path):
    path = tmp_path / "nobody.jpg"
    e = _error(path)
    assert e.reason == "missing"
    assert str(e) == f"{path}: no such file"
    assert _error(str(path), name="upload 7").source == "upload 7"


def test_directory_is_not_an_image(tmp_path):
    e = _error(tmp_path)
    assert e.reason == "unreadable"
    assert "is a directory" in str(e) and str(tmp_path) in str(e)


def test_url_is_not_downloaded():
    e = _error("https://example.com/face.jpg")
    assert e.reason == "missing" and "URL" in str(e)


def test_empty_file(tmp_path):
    path = _write(tmp_path / "x.jpg", b"")
    e = _error(path)
    assert e.reason == "empty"
    assert str(e) == f"{path}: file is empty (0 bytes)"
    assert _error(b"").reason == "empty"


def test_text_named_jpg(tmp_path):
    path = _write(tmp_path / "photo.jpg", b"hello, this is not a photo\nsecond line\n")
    e = _error(path)
    assert e.reason == "not_image"
    assert str(e) == f"{path}: not an image (looks like text)"


@pytest.mark.parametrize(
    "data, reason, words",
    [
        (b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>", "not_image", "HTML"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "not_image", "PDF"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "unsupported", "SVG"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "unsupported", "EPS"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "unsupported", "HEIC"),
        (b"PK\x03\x04" + bytes(40), "not_image", "ZIP"),
        (bytes(range(256)) * 2, "not_image", "unknown format"),
    ],
)
def test_non_image_bytes_say_what_they_look_like(data, reason, words):
    e = _error(data)
    assert e.reason == reason
    assert words in str(e)
    assert str(e).startswith("<bytes>: ")


def test_other_pillow_format_is_refused_not_parsed():
    psd_header = b"8BPS\x00\x01" + bytes(6) + b"\x00\x03" + struct.pack(">II", 4, 4) + b"\x00\x08\x00\x03"
    e = _error(psd_header)
    assert e.reason == "unsupported" and "PSD" in str(e)


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_jpeg(tmp_path, keep):
    data = _noise_jpeg()
    path = _write(tmp_path / "x.jpg", data[: int(len(data) * keep)])
    e = _error(path)
    assert e.reason == "corrupt"
    assert str(e).startswith(f"{path}: truncated or corrupt JPEG")


def test_corrupt_png_data(tmp_path):
    data = bytearray(_encode(Image.fromarray(np.full((64, 64, 3), 7, np.uint8)), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 8 : idat + 16] = b"\xff" * 8  # garbage inside the compressed stream
    e = _error(_write(tmp_path / "bad.png", bytes(data)))
    assert e.reason == "corrupt" and "PNG" in str(e)


# --------------------------------------------------------------------------------------------------
# Pixel limits (checked on the header, before decoding)


def test_image_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixel data must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    path = _write(tmp_path / "big.png", _png_claiming(5000, 5000))
    assert path.stat().st_size < 100
    e = _error(path, max_pixels=1_000_000)
    assert e.reason == "too_large"
    assert str(e) == f"{path}: 5000x5000 = 25 MP exceeds the pixel limit of 1 MP (max_pixels)"


@pytest.mark.parametrize("side", [10_000, 30_000])  # past Pillow's warning, past Pillow's error
def test_image_bomb_past_pillows_limits(tmp_path, side):
    path = _write(tmp_path / "bomb.png", _png_claiming(side, side))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not leak out
        e = _error(path)
    assert e.reason == "too_large"
    assert "exceeds the pixel limit of 40 MP (max_pixels)" in str(e)
    assert f"{side * side / 1e6:.4g} MP" in str(e)


def test_pillow_hard_limit_still_applies_without_max_pixels():
    e = _error(_png_claiming(30_000, 30_000), max_pixels=None)
    assert e.reason == "too_large" and "decompression-bomb" in str(e)


def test_pixel_limit_applies_to_arrays_and_pil_images():
    assert _error(np.zeros((100, 100, 3), np.uint8), max_pixels=5000).reason == "too_large"
    assert _error(Image.new("RGB", (100, 100)), max_pixels=5000).reason == "too_large"
    lazy = Image.open(io.BytesIO(_png_claiming(5000, 5000)))
    assert _error(lazy, max_pixels=1_000_000).reason == "too_large"


def test_huge_but_allowed_image(tmp_path):
    arr = np.zeros((2000, 3000, 3), np.uint8)
    arr[1000:1060, 2200:2260] = 255
    path = _write(tmp_path / "wide.png", _encode(Image.fromarray(arr), "PNG"))
    image = load_image(path)
    _assert_rgb(image, (2000, 3000))
    assert image[1030, 2230].tolist() == [255, 255, 255]

def test_upload_size_is_checked_before_decoding():
    data = _encode(_two_blocks(), "PNG")
    with pytest.raises(ImageError) as info:
        image_from_upload(data, max_bytes=len(data) - 1)
    assert info.value.reason == "too_large"
    assert str(info.value).startswith("<upload>: upload of ") and "(max_bytes)" in str(info.value)
    with pytest.raises(ImageError) as info:  # garbage over the limit is "too large", not "not an image"
        image_from_upload(b"x" * 100, max_bytes=10, name="a.jpg")
    assert info.value.reason == "too_large" and info.value.source == "a.jpg"
    _assert_rgb(image_from_upload(data, max_bytes=len(data)), (40, 60))
    with pytest.raises(ImageError) as info:
        image_from_upload(data, max_pixels=100)
    assert info.value.reason == "too_large"


# --------------------------------------------------------------------------------------------------
# Images that need converting


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = (np.arange(256)[:, None] * 256 + np.arange(256)[None, :]).astype(np.uint16)  # 0..65535
    path = _write(tmp_path / "deep.png", _encode(Image.fromarray(values), "PNG"))
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")
    out = load_image(path)
    _assert_rgb(out, (256, 256))
    expected = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 256, axis=1)  # value >> 8 == row
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_16_bit_rgb_png(tmp_path):
    import cv2
    values = (np.arange(256)[:, None] * 256 + np.arange(256)[None, :]).astype(np.uint16)
    bgr = np.dstack([np.zeros_like(values), values, 65535 - values])  # B, G, R
    ok, enc = cv2.imencode(".png", bgr)
    assert ok
    out = load_image(enc.tobytes())
    np.testing.assert_array_equal(out[..., 1], (values >> 8).astype(np.uint8))
    np.testing.assert_array_equal(out[..., 0], ((65535 - values) >> 8).astype(np.uint8))
    assert out[..., 2].max() == 0


def test_rgba_png_is_composited_on_white(tmp_path):
    rgba = np.array(
        [[[255, 0, 0, 255], [255, 0, 0, 0]], [[0, 0, 0, 128], [0, 255, 0, 255]]],
        dtype=np.uint8,
    )
    path = _write(tmp_path / "cutout.png", _encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    out = load_image(path)
    _assert_rgb(out, (2, 2))
    np.testing.assert_array_equal(out, [[[255, 0, 0], [255, 255, 255]], [[127, 127, 127], [0, 255, 0]]])
    on_black = load_image(path, background=(0, 0, 0))
    np.testing.assert_array_equal(on_black[0, 1], [0, 0, 0])
    np.testing.assert_array_equal(on_black[1, 0], [0, 0, 0])


def test_grey_jpeg(tmp_path):
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))
    path = _write(tmp_path / "grey.jpg", _encode(Image.fromarray(grey, "L"), "JPEG", quality=95))
    out = load_image(path)
    _assert_rgb(out, (32, 64))
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert np.abs(out[..., 0].astype(int) - grey).max() <= 8


def test_cmyk_jpeg_keeps_its_colours(tmp_path):
    cmyk = Image.new("CMYK", (32, 16), (0, 0, 0, 0))  # white
    cmyk.paste((0, 255, 255, 0), (0, 0, 16, 16))  # red on the left
    path = _write(tmp_path / "print.jpg", _encode(cmyk, "JPEG", quality=95))
    with Image.open(path) as im:
        assert im.mode == "CMYK"
    out = load_image(path)
    _assert_rgb(out, (16, 32))
    left, right = out[8, 4], out[8, 28]
    assert left[0] > 200 and left[1] < 60 and left[2] < 60, left  # red, not inverted to cyan
    assert right.min() > 200, right  # white, not inverted to black


@pytest.mark.parametrize(
    "orientation, red_at, blue_at",
    [(6, (5, 35), (5, 5)), (8, (55, 5), (5, 5)), (3, (35, 55), (5, 5))],
)
def test_exif_rotated_jpeg(tmp_path, orientation, red_at, blue_at):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _write(tmp_path / "phone.jpg", _encode(_two_blocks(60, 40), "JPEG", quality=95, exif=exif))
    out = load_image(path)
    _assert_rgb(out, (40, 60) if orientation == 3 else (60, 40))
    assert _is_close(out[red_at], RED), out[red_at]
    assert _is_close(out[blue_at], BLUE), out[blue_at]


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = load_image(path)
    _assert_rgb(out, (8, 8))
    assert _is_close(out[4, 4], RED, tol=10)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "TIFF", "PPM"])
def test_common_formats_from_bytes(fmt):
    arr = np.asarray(_two_blocks())
    out = load_image(_encode(Image.fromarray(arr), fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    np.testing.assert_array_equal(out, arr)


# --------------------------------------------------------------------------------------------------
# In-memory inputs


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_like_inputs(kind):
    arr = np.asarray(_two_blocks())
    out = load_image(kind(_encode(Image.fromarray(arr), "PNG")))
    np.testing.assert_array_equal(out, arr)


def test_numpy_inputs():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = load_image(rgb)
    np.testing.assert_array_equal(out, rgb)
    assert not np.shares_memory(out, rgb)

    view = rgb[:, ::-1]  # not contiguous
    out = load_image(view)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, view)

    grey = rgb[..., 0]
    np.testing.assert_array_equal(load_image(grey), np.dstack([grey] * 3))
    np.testing.assert_array_equal(load_image(grey[..., None]), np.dstack([grey] * 3))

    rgba = np.dstack([rgb, np.full((5, 7), 255, np.uint8)])
    rgba[0, 0, 3] = 0
    out = load_image(rgba)
    np.testing.assert_array_equal(out[1:], rgb[1:])
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])

    deep = np.array([[0, 255, 256, 65535]], np.uint16)
    np.testing.assert_array_equal(load_image(deep)[..., 0], [[0, 0, 1, 255]])

    np.testing.assert_array_equal(load_image(rgb.astype(np.int64)), rgb)


@pytest.mark.parametrize(
    "arr, words",
    [
        (np.zeros((4, 4, 3), np.float32), "float"),
        (np.ones((4, 4, 3), np.float64) * 200, "float"),
        (np.zeros((4, 4), bool), "boolean"),
        (np.full((4, 4, 3), 300, np.int32), "300"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((3, 4, 4, 3), np.uint8), "shape"),
    ],
)
def test_numpy_inputs_refused(arr, words):
    e = _error(arr)
    assert e.reason == "unsupported"
    assert str(e).startswith("<array>: ") and words in str(e)


def test_empty_array():
    assert _error(np.zeros((0, 5, 3), np.uint8)).reason == "empty"


def test_pil_inputs():
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.info["transparency"] = 0
    out = load_image(p)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # transparent index -> background
    np.testing.assert_array_equal(out[1, 1], [255, 0, 0])

    la = Image.fromarray(np.dstack([np.full((2, 2), 10, np.uint8), np.array([[255, 0], [255, 255]], np.uint8)]), "LA")
    np.testing.assert_array_equal(load_image(la)[:, :, 0], [[10, 255], [10, 10]])

    i16 = Image.fromarray(np.array([[0, 0x1234, 0xFFFF]], np.uint16))
    assert i16.mode == "I;16"
    np.testing.assert_array_equal(load_image(i16)[..., 1], [[0, 0x12, 0xFF]])

    i32 = Image.fromarray(np.array([[0, 0x8000, 0xFFFF]], np.int32), "I")
    np.testing.assert_array_equal(load_image(i32)[..., 1], [[0, 0x80, 0xFF]])

    bilevel = Image.new("1", (3, 2), 1)
    assert load_image(bilevel).min() == 255

    assert _error(Image.new("F", (2, 2))).reason == "unsupported"


def test_pil_input_exif_applied_once(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _write(tmp_path / "phone.jpg", _encode(_two_blocks(60, 40), "JPEG", exif=exif))
    with Image.open(path) as im:
        out = load_image(im)
        assert im.size == (60, 40)  # the caller's image is not modified
    assert out.shape == (60, 40, 3)


def test_truncated_pil_input_is_corrupt(tmp_path):
    data = _noise_jpeg()
    im = Image.open(io.BytesIO(data[: len(data) // 2]))
    e = _error(im)
    assert e.reason == "corrupt" and str(e).startswith("<PIL image>: truncated or corrupt JPEG")


def test_wrong_type_is_a_type_error():
    with pytest.raises(TypeError):
        load_image(12345)
    with pytest.raises(ValueError):
        load_image(np.zeros((2, 2), np.uint8), max_pixels=0)


# --------------------------------------------------------------------------------------------------
# The error contract: one line, names the input, picklable


def test_every_error_is_one_line_and_names_the_input(tmp_path):
    data = _noise_jpeg()
    cases = {
        tmp_path / "missing.jpg": None,
        tmp_path / "empty.jpg": b"",
        tmp_path / "text.jpg": b"just some\nmultiline text\n",
        tmp_path / "page.jpg": b"<html>\n<body>oops</body>\n</html>\n",
        tmp_path / "cut.jpg": data[: len(data) // 2],
        tmp_path / "bomb.png": _png_claiming(30_000, 30_000),
        tmp_path / "odd\nname.jpg": b"",
    }
    for path, content in cases.items():
        if content is not None:
            path.write_bytes(content)
        e = _error(path)
        message = str(e)
        assert "\n" not in message and "\r" not in message, message
        assert message.startswith(e.source + ": ")
        assert path.name.replace("\n", "\\n") in e.source

    e = _error(tmp_path / "empty.jpg")
    clone = pickle.loads(pickle.dumps(e))
    assert (type(clone), str(clone), clone.reason) == (ImageError, str(e), e.reason)
    assert isinstance(e, ValueError)
