"""A small, deterministic corpus of good and bad landing files, with what should become of each.

:func:`build_bad_corpus` writes an ImageFolder (``root/shirt/...``, ``root/trouser/...``) of
about 30 entries (well under 1 MB): ordinary images, every awkward-but-valid kind of image
(CMYK, 16-bit, alpha, palette, animated, EXIF-rotated, unicode names), files that must be
quarantined, file-system traps (symlink loops, a dangling link, a FIFO, an unreadable file)
and cross-file cases (duplicates, one content under two labels).

Each :class:`CorpusEntry` says who decides its fate (``scope``):

* ``file``: :func:`visionloop.preprocessing.process_file` alone returns ``expected``;
* ``listing``: the landing walker decides (``process_file`` would see something else);
* ``batch``: the Spark job decides across files; each file on its own processes fine.
"""

from __future__ import annotations

import csv
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from visionloop.lake.contract import Reason

OK, DUPLICATE = "ok", "duplicate"
#: The file-size limit the corpus is built for (``max_image_file_bytes`` in its tests): every
#: file is well under it except ``trouser/oversized.png``.
MAX_FILE_BYTES = 32_000
LABELS = ("shirt", "trouser")
EXIF_ORIENTATION = 0x0112

#: What the Spark job should make of each row of :func:`write_escaping_manifest`.
ESCAPING_MANIFEST_EXPECTED: dict[str, str] = {
    "shirt/good_a.png": OK,
    "trouser/good_c.jpeg": OK,
    "../../etc/passwd": Reason.OUTSIDE_ROOT.value,
    "/etc/hostname": Reason.OUTSIDE_ROOT.value,
    "file:///etc/hosts": Reason.OUTSIDE_ROOT.value,
    "shirt/not_there.png": Reason.MISSING.value,
}


@dataclass(frozen=True)
class CorpusEntry:
    """One landing file and its expected outcome: ``ok``, a Reason value, or ``duplicate``."""

    relpath: str  # relative to the corpus root: <label>/<file>
    label: str | None
    expected: str
    note: str
    scope: str = "file"  # file | listing | batch: who decides (see the module docstring)


# ---------------------------------------------------------------- pixel and byte makers


def _pixels(seed: int, width: int, height: int, channels: int = 3) -> np.ndarray:
    """Smooth gradients plus seeded noise: compresses like a photo, unique per seed."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi, channels)
    base = np.stack(
        [127 + 100 * np.sin(xs / width * 3 + ys / height * 2 + p) for p in phase], axis=-1
    )
    noisy = base + rng.normal(0, 12, base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _rgb(seed: int, width: int, height: int) -> Image.Image:
    return Image.fromarray(_pixels(seed, width, height), "RGB")


def png_bytes(seed: int, width: int, height: int) -> bytes:
    return _encode(_rgb(seed, width, height), "PNG")


def jpeg_bytes(seed: int, width: int, height: int, **params: object) -> bytes:
    return _encode(_rgb(seed, width, height), "JPEG", quality=90, **params)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def bilevel_png_bytes(width: int, height: int, rows: int | None = None) -> bytes:
    """A black 1-bit PNG of ``width x height``; ``rows`` < height leaves the data short.

    Black 1-bit rows compress about 1000:1, so a 64-megapixel image is ~8 kB on disk.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    data += compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def gray16_png_bytes(width: int = 48, height: int = 32) -> bytes:
    """A 16-bit greyscale PNG (PIL mode ``I;16``) with a diagonal gradient over 0..65535."""
    ys, xs = np.mgrid[0:height, 0:width]
    ramp = (xs + ys) / (width + height - 2) * 65535
    return _encode(Image.fromarray(ramp.astype(np.uint16)), "PNG")


def rgba_png_bytes(width: int = 40, height: int = 30) -> bytes:
    """Left half fully transparent (black underneath), right half opaque red."""
    pixels = np.zeros((height, width, 4), np.uint8)
    pixels[:, width // 2 :] = (220, 20, 20, 255)
    return _encode(Image.fromarray(pixels, "RGBA"), "PNG")


def palette_png_bytes(width: int = 40, height: int = 30) -> bytes:
    """Palette image: index 0 is transparent (left half), index 1 is opaque blue."""
    image = Image.new("P", (width, height), 0)
    image.putpalette([0, 0, 0, 30, 60, 200] + [0] * (256 * 3 - 6))
    image.paste(1, (width // 2, 0, width, height))
    return _encode(image, "PNG", transparency=0)


def cmyk_jpeg_bytes(width: int = 50, height: int = 40) -> bytes:
    """A CMYK JPEG (Adobe marker) of pure cyan: RGB (0, 255, 255) when read correctly."""
    return _encode(Image.new("CMYK", (width, height), (255, 0, 0, 0)), "JPEG", quality=95)


def animated_gif_bytes(width: int = 30, height: int = 20) -> bytes:
    """Two frames: green first, then magenta."""
    frames = [Image.new("RGB", (width, height), color) for color in ((0, 200, 0), (200, 0, 200))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def rotated_jpeg_bytes(width: int = 60, height: int = 30) -> bytes:
    """Landscape-stored JPEG with EXIF orientation 6 (display rotates 90 degrees clockwise).

    The stored image is grey with a red top-left quarter; displayed, it is portrait
    (``height x width``) with the red quarter at the top right.
    """
    image = Image.new("RGB", (width, height), (128, 128, 128))
    image.paste((230, 0, 0), (0, 0, width // 2, height // 2))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return _encode(image, "JPEG", quality=95, exif=exif.tobytes())


EPS_BYTES = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
    b"newpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
)


def broken_header_png_bytes() -> bytes:
    """A PNG whose IHDR no longer matches its checksum."""
    data = bytearray(png_bytes(7, 20, 20))
    data[20] ^= 0xFF  # a byte of the declared height
    return bytes(data)


# ---------------------------------------------------------------- the corpus


def build_bad_corpus(root: Path) -> list[CorpusEntry]:
    """Write the corpus under ``root`` (created if needed) and return its entries."""
    root.mkdir(parents=True, exist_ok=True)
    for label in LABELS:
        (root / label).mkdir(exist_ok=True)
    entries = _write_images(root) + _write_bad_files(root) + _write_cross_file(root)
    return entries + _write_filesystem_traps(root)


def _put(root: Path, relpath: str, data: bytes) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _files(root: Path, files: list[tuple[str, bytes, str, str]]) -> list[CorpusEntry]:
    """Write ``(relpath, bytes, expected, note)`` rows; the label is the first path part."""
    entries = []
    for relpath, data, expected, note in files:
        _put(root, relpath, data)
        entries.append(CorpusEntry(relpath, relpath.split("/")[0], expected, note))
    return entries


def _write_images(root: Path) -> list[CorpusEntry]:
    return _files(
        root,
        [
            ("shirt/good_a.png", png_bytes(1, 40, 30), OK, "plain RGB PNG"),
            ("shirt/good_b.jpg", jpeg_bytes(2, 100, 60), OK, "plain RGB JPEG"),
            ("trouser/good_c.jpeg", jpeg_bytes(3, 60, 100), OK, "portrait JPEG"),
            ("trouser/good_d.png", png_bytes(4, 100, 60), OK, "plain RGB PNG"),
            ("trouser/sub/nested.png", png_bytes(5, 30, 30), OK, "nested folder, label trouser"),
            ("shirt/ümlaut café 画像.png", png_bytes(6, 32, 24), OK, "unicode and spaces"),
            ("shirt/gray16.png", gray16_png_bytes(), OK, "16-bit greyscale gradient (I;16)"),
            ("shirt/rgba.png", rgba_png_bytes(), OK, "alpha: composited over white"),
            ("trouser/palette.png", palette_png_bytes(), OK, "palette with transparent index"),
            ("trouser/cmyk.jpg", cmyk_jpeg_bytes(), OK, "CMYK JPEG, pure cyan"),
            ("trouser/animated.gif", animated_gif_bytes(), OK, "two frames; first is used"),
            ("shirt/rotated.jpg", rotated_jpeg_bytes(), OK, "EXIF orientation 6"),
            ("shirt/progressive.jpg", jpeg_bytes(8, 64, 48, progressive=True), OK, "progressive"),
        ],
    )


def _write_bad_files(root: Path) -> list[CorpusEntry]:
    truncated = jpeg_bytes(9, 100, 60)
    return _files(
        root,
        [
            (
                "shirt/truncated.jpg",
                truncated[: len(truncated) // 2],
                Reason.CORRUPT.value,
                "JPEG cut in half: must not be padded with grey",
            ),
            (
                "trouser/broken_header.png",
                broken_header_png_bytes(),
                Reason.CORRUPT.value,
                "PNG signature but IHDR checksum mismatch",
            ),
            (
                "shirt/notes.jpg",
                b"these are my notes, not a picture\n" * 3,
                Reason.NOT_AN_IMAGE.value,
                "text file with an image extension",
            ),
            ("trouser/empty.png", b"", Reason.EMPTY_FILE.value, "zero bytes"),
            (
                "trouser/oversized.png",
                png_bytes(13, 128, 128),
                Reason.FILE_TOO_LARGE.value,
                f"valid 38 kB PNG over MAX_FILE_BYTES={MAX_FILE_BYTES}: refused unread",
            ),
            (
                "shirt/bomb.png",
                bilevel_png_bytes(8000, 8000),
                Reason.DECOMPRESSION_BOMB.value,
                "valid 8000x8000 1-bit PNG (64 Mpx > 50 Mpx default), ~8 kB on disk",
            ),
            (
                "trouser/bomb_header.png",
                bilevel_png_bytes(30000, 30000, rows=4),
                Reason.DECOMPRESSION_BOMB.value,
                "header declares 30000x30000 (900 Mpx; PIL's own limit fires at open)",
            ),
            (
                "shirt/vector.png",
                EPS_BYTES,
                Reason.UNSUPPORTED_FORMAT.value,
                "EPS named .png: identified, but would need Ghostscript",
            ),
        ],
    )


def _write_cross_file(root: Path) -> list[CorpusEntry]:
    conflict, duplicate = png_bytes(10, 36, 36), jpeg_bytes(11, 48, 40)
    rows = [
        ("shirt/conflict.png", conflict, Reason.LABEL_CONFLICT.value, "same bytes as trouser/"),
        ("trouser/conflict.png", conflict, Reason.LABEL_CONFLICT.value, "same bytes as shirt/"),
        ("trouser/dup_a.jpg", duplicate, OK, "kept: first by uri among identical bytes"),
        ("trouser/dup_b.jpg", duplicate, DUPLICATE, "identical to trouser/dup_a.jpg"),
    ]
    entries = _files(root, rows)
    return [
        CorpusEntry(entry.relpath, entry.label, entry.expected, entry.note, "batch")
        for entry in entries
    ]


def _write_filesystem_traps(root: Path) -> list[CorpusEntry]:
    _symlink(root / "shirt/loop.png", "loop.png")
    _symlink(root / "shirt/dangling.png", "nonexistent.png")
    _symlink(root / "trouser/sub/up", "..")
    pipe = root / "shirt/pipe.png"
    if not pipe.exists():
        os.mkfifo(pipe)
    locked = _put(root, "trouser/locked.png", png_bytes(12, 24, 24))
    locked.chmod(0)
    locked_expected = OK if os.geteuid() == 0 else Reason.UNREADABLE.value
    return [
        CorpusEntry(
            "shirt/loop.png", "shirt", Reason.SYMLINK_LOOP.value, "symlink to itself (ELOOP)"
        ),
        CorpusEntry(
            "shirt/dangling.png", "shirt", Reason.MISSING.value, "symlink to a missing file"
        ),
        CorpusEntry(
            "trouser/sub/up",
            "trouser",
            Reason.SYMLINK_LOOP.value,
            "directory symlink to its parent: the walker must not recurse into it "
            "(process_file alone sees a directory: not_a_regular_file)",
            "listing",
        ),
        CorpusEntry(
            "shirt/pipe.png",
            "shirt",
            Reason.NOT_A_FILE.value,
            "FIFO: opening it for reading would block, it must never be read",
        ),
        CorpusEntry(
            "trouser/locked.png",
            "trouser",
            locked_expected,
            "mode 000: unreadable, except to root (tests usually run as root)",
        ),
    ]


def _symlink(link: Path, target: str) -> None:
    if os.path.lexists(link):
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)


def write_escaping_manifest(root: Path) -> Path:
    """Write ``root/manifest.csv`` (``uri,label``) naming files in and outside ``root``.

    Relative uris resolve against the manifest's folder. Expected outcomes are in
    :data:`ESCAPING_MANIFEST_EXPECTED`: two good files, three uris outside the root
    (``../../etc/passwd``, an absolute path and a ``file://`` uri: ``outside_landing_root``)
    and one missing file (``missing_file``). Call :func:`build_bad_corpus` on ``root`` first.
    """
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uri", "label"])
        for uri in ESCAPING_MANIFEST_EXPECTED:
            writer.writerow([uri, "trouser" if uri.startswith("trouser/") else "shirt"])
    return manifest
