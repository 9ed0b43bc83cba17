"""A small, deterministic corpus of good and bad landing files, with what should become of each.

:func:`build_bad_corpus` writes an ImageFolder (``root/shirt/...``, ``root/trouser/...``) of
about 30 entries (well under 1 MB): ordinary images, every awkward-but-valid kind of image
(CMYK, 16-bit, alpha, palette, animated, EXIF-rotated, HEIC and AVIF as phones and cameras
shoot them, unicode names), files that must be
quarantined, file-system traps (symlink loops, a dangling link, a FIFO, a file that cannot
be opened while :func:`leases_held` runs) and cross-file cases (duplicates, one content under
two labels).

Each :class:`CorpusEntry` says who decides its fate (``scope``):

* ``file``: :func:`visionloop.preprocessing.process_file` alone returns ``expected``;
* ``listing``: the landing walker decides (``process_file`` would see something else);
* ``batch``: the Spark job decides across files; each file on its own processes fine.

Root ignores permission bits, so a ``chmod 000`` file is no test of ``unreadable`` when the
tests run as root (``make test`` does). The corpus's unreadable file is made so by the kernel
for every user instead: inside :func:`leases_held` another process holds a write lease on it
and every non-blocking open fails. :func:`call_unprivileged` is for the permission cases:
it runs a function as a user that permission bits apply to (``nobody`` when this is root).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pillow_heif
from PIL import Image

from visionloop.lake.contract import Reason

OK, DUPLICATE = "ok", "duplicate"
#: The file-size limit the corpus is built for (``max_image_file_bytes`` in its tests): every
#: file is well under it except ``trouser/oversized.png``.
MAX_FILE_BYTES = 32_000
LABELS = ("shirt", "trouser")
EXIF_ORIENTATION = 0x0112
#: Corpus files that cannot be opened while :func:`leases_held` runs (``unreadable``).
LEASED = ("trouser/leased.png",)
#: The uid and gid :func:`call_unprivileged` drops to when running as root.
NOBODY = 65534

T = TypeVar("T")

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


def touch(path: Path, data: bytes = b"x") -> Path:
    """Write ``data`` to ``path``, making its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


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


def rotated_jpeg_bytes(width: int = 60, height: int = 30, fmt: str = "JPEG") -> bytes:
    """Landscape-stored image with EXIF orientation 6 (display rotates 90 degrees clockwise).

    The stored image is grey with a red top-left quarter; displayed, it is portrait
    (``height x width``) with the red quarter at the top right. ``fmt`` is ``JPEG``,
    ``AVIF`` or ``HEIF`` (which stores the rotation as its ``irot`` transform).
    """
    image = Image.new("RGB", (width, height), (128, 128, 128))
    image.paste((230, 0, 0), (0, 0, width // 2, height // 2))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    if fmt == "HEIF":
        return _heif(image, exif=exif.tobytes())
    return _encode(image, fmt, quality=95, exif=exif.tobytes())


def _heif(image: Image.Image, **params: object) -> bytes:
    """HEIC (HEVC in HEIF) through pillow-heif's own API: PIL's openers stay as they were,
    so a test still sees whether the preprocessing registers the HEIF opener itself."""
    buffer = io.BytesIO()
    pillow_heif.from_pillow(image).save(buffer, quality=90, **params)
    return buffer.getvalue()


def heic_bytes(seed: int, width: int, height: int) -> bytes:
    """A HEIC photo (the format phones shoot), encoded by x265 through pillow-heif."""
    return _heif(_rgb(seed, width, height))


def avif_bytes(seed: int, width: int, height: int) -> bytes:
    """An AVIF photo (AV1 in HEIF, as many cameras write), encoded by Pillow."""
    return _encode(_rgb(seed, width, height), "AVIF", quality=90)


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
            ("shirt/phone.heic", heic_bytes(14, 64, 48), OK, "HEIC, as phones shoot"),
            ("trouser/camera.avif", avif_bytes(15, 48, 64), OK, "AVIF, portrait"),
            ("trouser/rotated.heif", rotated_jpeg_bytes(fmt="HEIF"), OK, "HEIF with irot"),
            ("shirt/rotated.avif", rotated_jpeg_bytes(fmt="AVIF"), OK, "AVIF, EXIF orientation 6"),
        ],
    )


def _write_bad_files(root: Path) -> list[CorpusEntry]:
    truncated, truncated_heic = jpeg_bytes(9, 100, 60), heic_bytes(16, 64, 48)
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
                "trouser/truncated.heic",
                truncated_heic[: len(truncated_heic) // 2],
                Reason.CORRUPT.value,
                "HEIC cut in half: its HEIF boxes no longer parse",
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
    (leased,) = LEASED
    _put(root, leased, png_bytes(12, 24, 24))
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
            leased,
            "trouser",
            Reason.UNREADABLE.value,
            "a valid PNG under another process's write lease while leases_held() runs: "
            "every non-blocking open fails with EAGAIN, for root too; readable otherwise",
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


# ---------------------------------------------------------------- files that cannot be read

#: Run by :func:`leases_held` in its own process: a write lease on each path, then wait.
_LEASE_HOLDER = """
import fcntl, os, signal, sys
signal.signal(signal.SIGIO, signal.SIG_IGN)  # a lease break signals the holder: stay alive
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    if fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_WRLCK:
        sys.exit(f"no write lease on {path}")
print("held", flush=True)
sys.stdin.read()  # until the test closes the pipe, or dies
"""


@contextlib.contextmanager
def leases_held(root: Path, relpaths: Sequence[str] = LEASED) -> Iterator[list[Path]]:
    """Make the files at ``relpaths`` under ``root`` (by default the corpus's :data:`LEASED`
    files) unreadable while the block runs; yields their paths.

    A helper process holds a write lease (``fcntl(F_SETLEASE, F_WRLCK)``) on each file. The
    kernel then refuses every non-blocking open by any other process, root's included, with
    ``EAGAIN``; :func:`visionloop.preprocessing.read_file_bytes` opens with ``O_NONBLOCK``, so
    the file stats as an ordinary regular file but cannot be read, in this process and in
    Spark's workers alike. The first refused open starts a lease break that the helper ignores;
    the kernel ends it after ``/proc/sys/fs/lease-break-time`` seconds (45 by default), after
    which opens succeed again: read each leased file once per block, and never with a blocking
    open (``Path.read_bytes`` would wait out the break instead of failing).
    """
    paths = [root / relpath for relpath in relpaths]
    holder = subprocess.Popen(
        [sys.executable, "-c", _LEASE_HOLDER, *map(str, paths)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        if holder.stdout.readline().strip() != "held":
            holder.stdin.close()
            _, errors = holder.communicate(timeout=30)
            raise RuntimeError(f"cannot take a write lease on {paths}: {errors.strip()}")
        yield paths
    finally:
        if not holder.stdin.closed:
            holder.stdin.close()
        try:
            holder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        holder.stdout.close()
        if holder.stderr is not None:
            holder.stderr.close()


def call_unprivileged(function: Callable[[], T]) -> T:
    """``function()`` as a user that file permission bits apply to.

    Root bypasses them (``CAP_DAC_OVERRIDE``), so as root the call runs in a forked child
    that first drops to ``nobody`` for good (supplementary groups, gid, then uid); its result
    or its exception comes back pickled. Any other user is bound by them already, so the call
    runs here. Root's ``tmp_path`` is inside a mode 700 folder ``nobody`` cannot enter: put the
    files in :func:`shared_tmp_dir`.
    """
    if os.geteuid() != 0:
        return function()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: reports through the pipe and exits, never returns into pytest
        os.close(read_end)
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            outcome: tuple[bool, object] = (True, function())
        except BaseException as error:
            outcome = (False, error)
        try:
            data = pickle.dumps(outcome)
        except Exception as error:
            data = pickle.dumps((False, RuntimeError(f"unpicklable outcome {outcome!r}: {error}")))
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(data)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"the unprivileged child died (wait status {status}) with no result")
    succeeded, value = pickle.loads(data)
    if not succeeded:
        raise value
    return value


@contextlib.contextmanager
def shared_tmp_dir() -> Iterator[Path]:
    """A new directory every user can enter (mode 711), removed afterwards with all in it,
    whatever modes the test left on the folders inside."""
    path = Path(tempfile.mkdtemp(prefix="vl-tests-shared-"))
    try:
        path.chmod(0o711)
        yield path
    finally:
        for folder, children, _ in os.walk(path):
            for name in children:  # before os.walk lists or enters it
                child = os.path.join(folder, name)
                if not os.path.islink(child):
                    os.chmod(child, 0o700)
        shutil.rmtree(path)
