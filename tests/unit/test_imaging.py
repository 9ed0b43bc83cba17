"""Per-file preprocessing: outputs, colour conversions, geometry, and every kind of bad input."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, features

from tests import corpus
from tests.corpus import (
    CorpusEntry,
    build_bad_corpus,
    call_unprivileged,
    leases_held,
    shared_tmp_dir,
)
from visionloop.lake.contract import Reason
from visionloop.preprocessing import (
    ImageOptions,
    ProcessedImage,
    Rejection,
    process_file,
    process_image_bytes,
    read_file_bytes,
)

SIZE = 32
OPTIONS = ImageOptions(size=SIZE, image_format="PNG", max_file_bytes=corpus.MAX_FILE_BYTES)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CorpusEntry]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, build_bad_corpus(root)


def _ok(data: bytes, options: ImageOptions = OPTIONS) -> ProcessedImage:
    result = process_image_bytes(data, options)
    assert isinstance(result, ProcessedImage), result
    return result


def _pixels(result: ProcessedImage) -> np.ndarray:
    image = Image.open(io.BytesIO(result.image))
    assert (image.format, image.mode, image.size) == (result.image_format, "RGB", (SIZE, SIZE))
    return np.asarray(image).astype(int)


def _rejected(data: bytes, reason: Reason, options: ImageOptions = OPTIONS) -> Rejection:
    result = process_image_bytes(data, options)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    assert result.image_id == hashlib.sha256(data).hexdigest()
    return result


# ---------------------------------------------------------------- good images


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_output_is_square_rgb_in_the_requested_format(image_format: str) -> None:
    data = corpus.jpeg_bytes(1, 100, 60)
    result = _ok(data, ImageOptions(size=SIZE, image_format=image_format, jpeg_quality=80))
    assert result.image_format == image_format
    assert result.image_id == hashlib.sha256(data).hexdigest()
    assert (result.width, result.height, result.mode, result.source_format) == (
        100,
        60,
        "RGB",
        "JPEG",
    )
    _pixels(result)


def test_landscape_is_letterboxed_with_black_bars_top_and_bottom() -> None:
    pixels = _pixels(_ok(corpus.png_bytes(2, 100, 50)))  # content 32x16, centred
    assert pixels[:7].max() == 0 and pixels[-7:].max() == 0
    assert pixels[9:23].mean() > 60


def test_small_image_is_scaled_up_to_fit() -> None:
    pixels = _pixels(_ok(_encode(Image.new("L", (8, 8), 200), "PNG")))
    assert np.all(np.abs(pixels - 200) <= 1)


def test_extreme_aspect_ratio_still_gives_a_full_size_output() -> None:
    _pixels(_ok(_encode(Image.new("RGB", (3000, 1), (9, 9, 9)), "PNG")))


@pytest.mark.parametrize(
    ("fmt", "stored"), [("JPEG", (60, 30)), ("AVIF", (60, 30)), ("HEIF", (30, 60))]
)
def test_exif_orientation_rotates_the_image(fmt: str, stored: tuple[int, int]) -> None:
    result = _ok(corpus.rotated_jpeg_bytes(60, 30, fmt))
    # As stored, before orientation; libheif applies HEIF's rotation (irot) as it decodes.
    assert (result.source_format, (result.width, result.height)) == (fmt, stored)
    pixels = _pixels(result)
    # Displayed portrait (16x32 in the box): black bars left and right, red top right.
    assert pixels[:, :6].max() < 20 and pixels[:, -6:].max() < 20
    top_right, top_left = pixels[2:12, 18:22].mean(axis=(0, 1)), pixels[2:12, 10:14]
    assert top_right[0] > 180 and top_right[1] < 60
    assert np.abs(top_left.mean(axis=(0, 1)) - 128).max() < 20


def test_16_bit_greyscale_keeps_its_gradient() -> None:
    result = _ok(corpus.gray16_png_bytes())
    assert result.mode == "I;16"
    grey = _pixels(result)[..., 0][6:26]  # inside the letterbox
    assert grey.min() < 40 and grey.max() > 215
    assert len(np.unique(grey)) > 50


def test_32_bit_integer_and_float_images_are_scaled_to_8_bit() -> None:
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    wide = Image.fromarray((ramp * 200_000 - 50_000).astype(np.int32), "I")
    for image in (Image.fromarray(ramp, "F"), wide):
        grey = _pixels(_ok(_encode(image, "TIFF")))[..., 0]
        assert grey[:, 0].max() < 10 and grey[:, -1].min() > 245, image.mode


def test_alpha_is_composited_over_white() -> None:
    result = _ok(corpus.rgba_png_bytes(40, 30))
    pixels = _pixels(result)[10:22]
    assert result.mode == "RGBA"
    assert pixels[:, 2:14].min() > 245  # transparent (black underneath) -> white
    assert np.abs(pixels[:, 18:30].mean(axis=(0, 1)) - (220, 20, 20)).max() < 10


def test_palette_transparency_is_composited_over_white() -> None:
    result = _ok(corpus.palette_png_bytes(40, 30))
    pixels = _pixels(result)[10:22]
    assert result.mode == "P"
    assert pixels[:, 2:14].min() > 245
    assert np.abs(pixels[:, 18:30].mean(axis=(0, 1)) - (30, 60, 200)).max() < 10


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    result = _ok(corpus.cmyk_jpeg_bytes(50, 40))
    assert result.mode == "CMYK"
    centre = _pixels(result)[10:22, 10:22].mean(axis=(0, 1))
    assert np.abs(centre - (0, 255, 255)).max() < 10


def test_animated_gif_uses_the_first_frame() -> None:
    result = _ok(corpus.animated_gif_bytes())
    centre = _pixels(result)[14:18, 14:18].mean(axis=(0, 1))
    assert result.source_format == "GIF"
    assert np.abs(centre - (0, 200, 0)).max() < 10


@pytest.mark.parametrize(("fmt", "params"), [("WEBP", {"lossless": True}), ("PNG", {})])
def test_animated_webp_and_apng_use_the_first_frame(fmt: str, params: dict) -> None:
    frames = [Image.new("RGB", (20, 20), color) for color in ((250, 200, 0), (0, 0, 250))]
    data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    centre = _pixels(_ok(data))[14:18, 14:18].mean(axis=(0, 1))
    assert np.abs(centre - (250, 200, 0)).max() < 10


def test_one_bit_and_ycbcr_images_convert() -> None:
    bilevel = Image.new("1", (16, 16), 1)
    assert _pixels(_ok(_encode(bilevel, "PNG"))).min() == 255
    ycbcr = Image.new("RGB", (16, 16), (10, 120, 240)).convert("YCbCr")
    centre = _pixels(_ok(_encode(ycbcr, "JPEG", quality=95))).mean(axis=(0, 1))
    assert np.abs(centre - (10, 120, 240)).max() < 12


@pytest.mark.parametrize(
    ("fmt", "encode"), [("HEIF", corpus.heic_bytes), ("AVIF", corpus.avif_bytes)]
)
def test_heic_and_avif_photos_decode_to_their_pixels(fmt: str, encode) -> None:
    result = _ok(encode(14, 64, 48))
    expected = _pixels(_ok(corpus.png_bytes(14, 64, 48)))  # the same photo, lossless
    assert (result.source_format, result.width, result.height) == (fmt, 64, 48)
    assert np.abs(_pixels(result) - expected).mean() < 6


def test_pillow_decodes_avif_itself() -> None:
    assert features.check("avif"), "this Pillow build lacks AVIF: reinstall the pinned wheel"


def test_heif_opener_is_registered_by_the_first_decode_not_on_import(tmp_path: Path) -> None:
    heic = tmp_path / "phone.heic"
    heic.write_bytes(corpus.heic_bytes(14, 64, 48))
    script = (
        "import sys; from PIL import Image; import visionloop.preprocessing as p\n"
        "print('HEIF' in Image.OPEN)\n"
        "r = p.process_file(sys.argv[1], p.ImageOptions(size=16, image_format='PNG'))\n"
        "print(r.source_format, 'HEIF' in Image.OPEN)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(heic)], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "HEIF", "True"]


def test_truncated_heic_is_corrupt_and_says_so() -> None:
    data = corpus.heic_bytes(16, 64, 48)
    for cut in (40, len(data) // 2, len(data) - 8):
        rejection = _rejected(data[:cut], Reason.CORRUPT)
        assert "HEIF" in rejection.detail and "re-export" in rejection.detail, rejection


def test_reduced_scale_jpeg_decoding_matches_a_full_decode() -> None:
    data = corpus.jpeg_bytes(5, 1024, 768)
    fast = _pixels(_ok(data))
    with Image.open(io.BytesIO(data)) as full:
        reference = ImageOps.pad(full, (SIZE, SIZE), Image.Resampling.LANCZOS, color=0)
        expected = np.asarray(reference).astype(int)
    assert np.abs(fast - expected).mean() < 4


# ---------------------------------------------------------------- bad input


def test_empty_bytes_are_rejected() -> None:
    _rejected(b"", Reason.EMPTY_FILE)


def test_text_is_not_an_image() -> None:
    _rejected(b"just some text\n" * 4, Reason.NOT_AN_IMAGE)


def test_truncated_jpeg_is_rejected_not_padded() -> None:
    data = corpus.jpeg_bytes(3, 100, 60)
    for cut in (20, len(data) // 2, len(data) - 2):
        rejection = _rejected(data[:cut], Reason.CORRUPT)
        assert "truncated" in rejection.detail.lower() or cut == 20


def test_damaged_png_header_is_corrupt_not_a_non_image() -> None:
    _rejected(corpus.broken_header_png_bytes(), Reason.CORRUPT)


def test_formats_outside_the_allow_list_are_unsupported() -> None:
    rejection = _rejected(corpus.EPS_BYTES, Reason.UNSUPPORTED_FORMAT)
    assert "EPS" in rejection.detail


def test_pixel_limit_applies_to_ordinary_images() -> None:
    options = ImageOptions(size=SIZE, image_format="PNG", max_pixels=40 * 30 - 1)
    _rejected(corpus.png_bytes(1, 40, 30), Reason.DECOMPRESSION_BOMB, options)
    _ok(corpus.png_bytes(1, 40, 30), ImageOptions(SIZE, "PNG", max_pixels=40 * 30))


def _image_memory_allocated(data: bytes, options: ImageOptions = OPTIONS) -> int:
    """How many images Pillow allocated pixel memory for while processing ``data``.

    Pillow's allocator counts every image it creates (``new_count``): decoding, converting
    and resizing each make one, parsing a header makes none.
    """
    before = Image.core.get_stats()["new_count"]
    process_image_bytes(data, options)
    return Image.core.get_stats()["new_count"] - before


def test_bombs_are_rejected_from_the_header_before_any_pixel_memory() -> None:
    bomb = corpus.bilevel_png_bytes(8000, 8000)  # 64 Mpx in ~8 kB; 64 MB once decoded
    detail = _rejected(bomb, Reason.DECOMPRESSION_BOMB).detail
    assert "8000x8000 = 64000000 pixels exceeds max_image_pixels=50000000" in detail
    assert "not decoded" in detail
    assert _image_memory_allocated(bomb) == 0

    huge = corpus.bilevel_png_bytes(30000, 30000, 2)  # over PIL's own limit: refused at open
    detail = _rejected(huge, Reason.DECOMPRESSION_BOMB).detail
    assert "PIL refuses it" in detail and "900000000 pixels" in detail
    assert _image_memory_allocated(huge) == 0


def test_the_pixel_limit_alone_decides_whether_pixels_are_decoded() -> None:
    data = corpus.bilevel_png_bytes(400, 300)
    at_limit = ImageOptions(SIZE, "PNG", max_pixels=400 * 300)
    below = ImageOptions(SIZE, "PNG", max_pixels=400 * 300 - 1)
    _ok(data, at_limit)
    assert _image_memory_allocated(data, at_limit) > 0  # the count sees decoding
    _rejected(data, Reason.DECOMPRESSION_BOMB, below)
    assert _image_memory_allocated(data, below) == 0


def test_hostile_bytes_never_raise() -> None:
    rng = np.random.default_rng(0)
    good = corpus.png_bytes(4, 30, 20)
    for _ in range(60):
        data = bytearray(good)
        for position in rng.integers(8, len(data), 4):
            data[position] = int(rng.integers(0, 256))
        assert isinstance(process_image_bytes(bytes(data), OPTIONS), ProcessedImage | Rejection)


def test_truncated_images_loaded_leniently_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        process_image_bytes(corpus.png_bytes(1, 8, 8), OPTIONS)


def test_invalid_options_raise() -> None:
    with pytest.raises(ValueError, match="image_format"):
        ImageOptions(size=SIZE, image_format="GIF")
    with pytest.raises(ValueError, match="size"):
        ImageOptions(size=0, image_format="PNG")


# ---------------------------------------------------------------- files and the corpus


def test_read_file_bytes_refuses_directories(tmp_path: Path) -> None:
    rejection = read_file_bytes(str(tmp_path), OPTIONS.max_file_bytes)
    assert isinstance(rejection, Rejection) and rejection.reason == Reason.NOT_A_FILE


def test_read_file_bytes_refuses_files_over_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 1000)
    assert read_file_bytes(str(path), max_bytes=1000) == b"x" * 1000
    rejection = read_file_bytes(str(path), max_bytes=999)
    assert isinstance(rejection, Rejection) and rejection.reason == Reason.FILE_TOO_LARGE
    assert "max_image_file_bytes=999" in rejection.detail
    assert "VISIONLOOP_MAX_IMAGE_FILE_BYTES" in rejection.detail


def test_missing_file(tmp_path: Path) -> None:
    result = process_file(str(tmp_path / "nope.png"), OPTIONS)
    assert isinstance(result, Rejection) and result.reason == Reason.MISSING
    assert result.image_id is None


def test_a_file_that_cannot_be_opened_is_unreadable(tmp_path: Path) -> None:
    """Another process's write lease makes the open fail (EAGAIN) for every user, root too."""
    data = corpus.png_bytes(12, 24, 24)
    path = tmp_path / "leased.png"
    path.write_bytes(data)
    with leases_held(tmp_path, ["leased.png"]):
        assert path.is_file() and path.stat().st_size == len(data)  # lists like any file
        rejection = process_file(str(path), OPTIONS)
    assert isinstance(rejection, Rejection) and rejection.reason == Reason.UNREADABLE
    assert rejection.detail == f"cannot read {path}: {os.strerror(errno.EAGAIN)}"
    assert rejection.image_id is None
    assert isinstance(process_file(str(path), OPTIONS), ProcessedImage)  # lease gone: fine


def test_a_file_without_read_permission_is_unreadable() -> None:
    """Read by a user permission bits apply to (``nobody`` when the tests run as root)."""
    with shared_tmp_dir() as shared:
        locked, readable = shared / "locked.png", shared / "readable.png"
        for path, mode in ((locked, 0o000), (readable, 0o644)):
            path.write_bytes(corpus.png_bytes(12, 24, 24))
            path.chmod(mode)
        assert isinstance(process_file(str(readable), OPTIONS), ProcessedImage)
        rejection, control = call_unprivileged(
            lambda: [process_file(str(path), OPTIONS) for path in (locked, readable)]
        )
    assert isinstance(control, ProcessedImage)  # the same user reaches the folder and reads
    assert isinstance(rejection, Rejection) and rejection.reason == Reason.UNREADABLE
    assert rejection.detail == (
        f"permission denied reading {locked}; make it readable by the ingest user"
    )


def test_every_corpus_file_gets_its_expected_outcome(corpus_dir) -> None:
    root, entries = corpus_dir
    outcomes = {}
    with leases_held(root):
        for entry in entries:
            result = process_file(str(root / entry.relpath), OPTIONS)
            outcomes[entry.relpath] = (
                "ok" if isinstance(result, ProcessedImage) else result.reason.value
            )
    expected = {entry.relpath: _file_level(entry) for entry in entries}
    assert outcomes == expected


def _file_level(entry: CorpusEntry) -> str:
    """What process_file alone returns: cross-file cases each process fine on their own."""
    if entry.scope == "batch":
        return "ok"
    if entry.scope == "listing":  # the directory symlink loop: a directory to process_file
        return Reason.NOT_A_FILE.value
    return entry.expected


def test_corpus_is_small_deterministic_and_complete(corpus_dir, tmp_path: Path) -> None:
    root, entries = corpus_dir
    again = build_bad_corpus(tmp_path)
    assert again == entries
    files = [path for path in root.rglob("*") if path.is_file() and not path.is_symlink()]
    assert sum(path.stat().st_size for path in files) < 1_000_000
    for path in files:
        assert path.read_bytes() == (tmp_path / path.relative_to(root)).read_bytes(), path
    expected = {entry.expected for entry in entries}
    assert {reason.value for reason in Reason} - expected <= {
        Reason.OUTSIDE_ROOT.value,  # manifest only: see write_escaping_manifest
        Reason.LABEL_FOR_EXISTING.value,  # needs a lake
    }


def test_escaping_manifest_lists_its_expectations(corpus_dir) -> None:
    root, _ = corpus_dir
    manifest = corpus.write_escaping_manifest(root)
    rows = manifest.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "uri,label"
    assert [row.split(",")[0] for row in rows[1:]] == list(corpus.ESCAPING_MANIFEST_EXPECTED)


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()
