"""Decode and resize against detectron2's behaviour, reproduced with PIL as detectron2's
read_image does it (exif transpose, convert("RGB"), flip to BGR)."""

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from bls.errors import InvalidInput
from bls.pipeline.image import (DecodeLimits, decode_image, resize_image, resized_shape,
                                to_model_input)

RNG = np.random.default_rng(0)


def read_image_reference(data: bytes, channel_order: str) -> np.ndarray:
    """detectron2.data.detection_utils.read_image, with PIL only."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    rgb = np.asarray(image.convert("RGB"))
    return rgb[:, :, ::-1] if channel_order == "BGR" else rgb


def pil_bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def smooth(h, w, c=3):
    """A smooth image: JPEG decoders then agree to the last bit or nearly."""
    yy, xx = np.mgrid[0:h, 0:w]
    chans = [(xx * (k + 1) * 7 + yy * (3 - k) * 5) % 256 for k in range(c)]
    return np.stack(chans, -1).astype(np.uint8)


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return pil_bytes(image, "JPEG", quality=95, exif=exif.tobytes())


LOSSLESS = {
    "rgb.png": pil_bytes(Image.fromarray(RNG.integers(0, 256, (21, 34, 3), np.uint8)), "PNG"),
    "gray.png": pil_bytes(Image.fromarray(RNG.integers(0, 256, (21, 34), np.uint8)), "PNG"),
    "rgba.png": pil_bytes(Image.fromarray(RNG.integers(0, 256, (21, 34, 4), np.uint8), "RGBA"), "PNG"),
    "gray_alpha.png": pil_bytes(Image.fromarray(RNG.integers(0, 256, (21, 34, 2), np.uint8), "LA"), "PNG"),
    "palette.png": pil_bytes(Image.fromarray(RNG.integers(0, 256, (21, 34, 3), np.uint8)).convert("P"), "PNG"),
    "gray16.png": pil_bytes(Image.fromarray(RNG.integers(0, 65536, (21, 34), np.uint16)), "PNG"),
    "bmp.bmp": pil_bytes(Image.fromarray(RNG.integers(0, 256, (21, 34, 3), np.uint8)), "BMP"),
    "tiff.tif": pil_bytes(Image.fromarray(RNG.integers(0, 256, (21, 34, 3), np.uint8)), "TIFF"),
    "webp.webp": pil_bytes(Image.fromarray(RNG.integers(0, 256, (21, 34, 3), np.uint8)), "WEBP", lossless=True),
    "gif.gif": pil_bytes(Image.fromarray(RNG.integers(0, 256, (21, 34, 3), np.uint8)).convert("P"), "GIF"),
    "palette_transparent.png": pil_bytes(
        Image.fromarray(RNG.integers(0, 256, (21, 34, 3), np.uint8)).convert("P"), "PNG",
        transparency=0),
    "one_pixel_wide.png": pil_bytes(Image.fromarray(RNG.integers(0, 256, (37, 1, 3), np.uint8)), "PNG"),
    "one_pixel.png": pil_bytes(Image.fromarray(RNG.integers(0, 256, (1, 1, 3), np.uint8)), "PNG"),
}
# Lossy encodings: two JPEG decoders (OpenCV's, PIL's) may round a few values apart.
LOSSY = {
    "progressive.jpg": pil_bytes(Image.fromarray(smooth(48, 64)), "JPEG", progressive=True,
                                 quality=90),
    "cmyk.jpg": pil_bytes(Image.fromarray(smooth(48, 64)).convert("CMYK"), "JPEG", quality=90),
    "gray.jpg": pil_bytes(Image.fromarray(smooth(48, 64)[:, :, 0]), "JPEG", quality=90),
}


@pytest.mark.parametrize("name", sorted(LOSSLESS))
@pytest.mark.parametrize("order", ["BGR", "RGB"])
def test_lossless_formats_decode_exactly_as_read_image(name, order):
    data = LOSSLESS[name]
    got = decode_image(data, order)
    assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[2] == 3
    np.testing.assert_array_equal(got, read_image_reference(data, order))


@pytest.mark.parametrize("name", sorted(LOSSY))
def test_lossy_formats_decode_as_read_image(name):
    data = LOSSY[name]
    got, expected = decode_image(data, "BGR"), read_image_reference(data, "BGR")
    assert got.shape == expected.shape == (48, 64, 3)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 2


def test_a_large_legal_photo_decodes():
    data = pil_bytes(Image.fromarray(smooth(3000, 4500)), "JPEG", quality=80)  # 13.5 MP
    assert decode_image(data, "BGR").shape == (3000, 4500, 3)


def test_sixteen_bit_colour_keeps_the_high_byte():
    import cv2

    pixels = RNG.integers(0, 65536, (9, 11, 3), np.uint16)
    data = cv2.imencode(".png", pixels)[1].tobytes()  # PIL cannot write 16-bit colour
    np.testing.assert_array_equal(decode_image(data, "BGR"), (pixels >> 8).astype(np.uint8))
    np.testing.assert_array_equal(decode_image(data, "BGR"), read_image_reference(data, "BGR"))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_applied(orientation):
    image = Image.fromarray(smooth(40, 64))
    data = with_orientation(image, orientation)
    got = decode_image(data, "RGB")
    expected = read_image_reference(data, "RGB")
    assert got.shape == expected.shape
    assert got.shape[:2] == ((64, 40) if orientation in (6, 8) else (40, 64))
    # Two JPEG decoders (OpenCV's, PIL's) may round a few values differently.
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 2


def png_header_declaring(width: int, height: int) -> bytes:
    """A well-formed little PNG whose header declares width x height: a few bytes that
    would decompress to gigabytes (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


JPEG = pil_bytes(Image.fromarray(smooth(48, 64)), "JPEG", quality=90)


@pytest.mark.parametrize("data,match", [
    (b"", "is empty"),
    (b"not an image at all", "cannot be decoded"),
    ("plain text, not bytes of an image".encode(), "cannot be decoded"),
    (bytes(RNG.integers(0, 256, 1000, np.uint8)), "cannot be decoded"),
    (JPEG[:len(JPEG) // 2], "cannot be decoded"),  # truncated
    (LOSSLESS["rgb.png"][:-30], "cannot be decoded"),  # truncated
    (png_header_declaring(100_000, 100_000), "declares too many pixels|over the limit"),  # bomb
    (png_header_declaring(9000, 9000), r"declares 9000x9000 pixels, over the limit of 64000000"),
])
def test_undecodable_input_names_the_input(data, match):
    with pytest.raises(InvalidInput, match=match) as info:
        decode_image(data, "BGR")
    assert str(info.value).startswith("input 'image': ")


def test_limits_refuse_before_decoding():
    data = LOSSLESS["rgb.png"]
    with pytest.raises(InvalidInput, match="over the limit of 100 bytes"):
        decode_image(data, "BGR", DecodeLimits(max_encoded_bytes=100))
    with pytest.raises(InvalidInput, match=r"declares 34x21 pixels, over the limit of 500"):
        decode_image(data, "BGR", DecodeLimits(max_pixels=500))


@pytest.mark.parametrize("hw,expected", [
    ((480, 640), (800, 1067)),       # landscape: short edge 800
    ((640, 480), (1067, 800)),       # portrait
    ((2521, 3361), (800, 1067)),     # a large photo
    ((100, 2000), (67, 1333)),       # long edge capped at 1333
    ((800, 800), (800, 800)),
    ((256, 256), (800, 800)),        # upscaled
    ((1, 5000), (1, 1333)),          # 1 px stays 1 px (detectron2 would make it 0)
])
def test_resized_shape_follows_resize_shortest_edge(hw, expected):
    assert resized_shape(*hw, 800, 1333) == expected


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(32, 1024), st.integers(0, 1024))
def test_resized_shape_properties(h, w, min_size, extra):
    max_size = min_size + extra
    nh, nw = resized_shape(h, w, min_size, max_size)
    assert nh >= 1 and nw >= 1
    assert max(nh, nw) <= max_size
    # Either the short edge is min_size or the long edge hit max_size.
    assert min(nh, nw) == min_size or max(nh, nw) == max_size
    # One scale explains both sides to rounding (or to the 1 px floor).
    lo = max((nh - 0.5) / h if nh > 1 else 0, (nw - 0.5) / w if nw > 1 else 0)
    hi = min((nh + 0.5) / h if nh > 1 else np.inf, (nw + 0.5) / w if nw > 1 else np.inf)
    assert lo <= hi + 1e-9


def test_resize_is_pil_bilinear_and_layout_is_chw():
    image = smooth(30, 50)
    resized = resize_image(image, 48, 80)
    expected = np.asarray(Image.fromarray(image).resize((80, 48), Image.BILINEAR))
    np.testing.assert_array_equal(resized, expected)
    assert resize_image(image, 30, 50) is image
    chw = to_model_input(resized)
    assert chw.shape == (3, 48, 80) and chw.flags.c_contiguous
    np.testing.assert_array_equal(chw[1], resized[:, :, 1])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes_decode_or_refuse(data):
    """Any bytes: an image or InvalidInput naming the input, never another exception."""
    try:
        image = decode_image(data, "BGR")
    except InvalidInput as e:
        assert str(e).startswith("input 'image': ")
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


SEEDS = [LOSSLESS["rgb.png"], LOSSLESS["gif.gif"], LOSSLESS["bmp.bmp"], LOSSLESS["tiff.tif"],
         LOSSLESS["webp.webp"], JPEG, LOSSY["progressive.jpg"]]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SEEDS), st.data())
def test_fuzz_damaged_images_decode_or_refuse(seed, data):
    """Valid images truncated, with bytes flipped or inserted: the same promise."""
    damaged = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 8))):
        where = data.draw(st.integers(0, len(damaged) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            damaged[where] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del damaged[where:]
            if not damaged:
                break
        else:
            damaged[where:where] = data.draw(st.binary(min_size=1, max_size=16))
    try:
        image = decode_image(bytes(damaged), "BGR", DecodeLimits(max_pixels=4_000_000))
    except InvalidInput as e:
        assert str(e).startswith("input 'image': ")
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[0] * image.shape[1] <= 4_000_000
