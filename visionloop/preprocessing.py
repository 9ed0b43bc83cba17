"""The one image preprocessing: bytes in, a letterboxed RGB image or a :class:`Rejection` out.

Ingest stores what :func:`process_image_bytes` returns; training decodes those stored bytes;
serving, evaluation and batch scoring call :func:`model_image` on whatever bytes they get
(an original file or the lake's stored bytes, which pass through unchanged), so a model sees
the same pixels for a photo at training time and at serving time.

Pure functions (no Spark, no Prefect, no global state changed), safe to call from worker
processes and threads. Every problem with the input becomes a :class:`Rejection` naming a
:class:`~visionloop.lake.contract.Reason`; nothing here raises on bad input data.

Pipeline of :func:`process_image_bytes`: identify the format from the content (the file
name is ignored; HEIC/HEIF through pillow-heif, AVIF through Pillow itself), refuse formats
outside :data:`SUPPORTED_FORMATS`, refuse images over the pixel limit before any pixel is
decoded, decode the first frame strictly (truncated data is an error, never padded), apply
the EXIF orientation, convert to RGB (alpha composited over white, 16-bit and float scaled
to 8-bit, CMYK through its ICC profile when it has one), letterbox to ``size x size`` on
black and encode as PNG or JPEG.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import io
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from visionloop.lake.contract import Reason

if TYPE_CHECKING:
    from visionloop.settings import Settings

#: Bump when the pixels :func:`process_image_bytes` produces change for the same input:
#: embeddings and models record it, so old and new outputs are never mixed.
PREPROCESSING_VERSION = 1

OUTPUT_FORMATS = ("PNG", "JPEG")
#: The JPEG comment of stored JPEGs: :func:`model_image` decodes them as they are, as
#: training does, instead of preprocessing (and so re-encoding) them once more.
STORED_MARK = b"visionloop stored image"
#: Formats (as PIL names them) that are decoded. Anything else PIL identifies is rejected
#: as ``unsupported_format``: e.g. EPS (would run Ghostscript), TGA (has no magic number, so
#: arbitrary binary data can pass for it) and identify-only stubs such as MPEG or WMF.
SUPPORTED_FORMATS = frozenset(
    {"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "PPM", "AVIF", "HEIF", "ICO"}
    | {"JPEG2000", "QOI"}
)
#: ISO-BMFF ``ftyp`` brands (bytes 8..12) of AVIF and of HEIC/HEIF files (``mif1``/``msf1``
#: are the generic HEIF brands): see :func:`_sniff`.
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
#: Leading bytes of supported formats: content that starts like one of these but cannot be
#: parsed is ``corrupt_image`` rather than ``not_an_image``.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"qoif", "QOI"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
)
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_UINT16_SCALE = 255.0 / 65535.0
#: A JPEG is decoded at reduced scale (DCT scaling) only down to twice the output size, so
#: the final antialiased resize still has detail to work with.
_DRAFT_HEADROOM = 2
#: ``Image.resize`` first box-reduces by an integer factor down to this multiple of the
#: target, then resamples: much faster on big images, visually the same as a full LANCZOS.
_REDUCING_GAP = 3.0
_WHITE = (255, 255, 255)
#: zlib level 3: about 40% faster than the default 6 on small images and, with zlib-ng,
#: no larger (measured on Fashion-MNIST at 64x64: 0.18 vs 0.30 ms, 3.2 vs 3.7 kB).
_PNG_COMPRESS_LEVEL = 3


@dataclass(frozen=True)
class ImageOptions:
    """What every output image looks like."""

    size: int  # output is size x size
    image_format: str  # "PNG" or "JPEG"
    jpeg_quality: int = 95
    max_pixels: int = 50_000_000
    max_file_bytes: int = 100 * 2**20

    def __post_init__(self) -> None:
        if self.image_format not in OUTPUT_FORMATS:
            raise ValueError(
                f"image_format must be one of {OUTPUT_FORMATS}, not {self.image_format!r}"
            )
        if self.size < 1:
            raise ValueError(f"size must be at least 1, not {self.size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be within 1..100, not {self.jpeg_quality}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, not {self.max_pixels}")
        if self.max_file_bytes < 1:
            raise ValueError(f"max_file_bytes must be at least 1, not {self.max_file_bytes}")

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def image_options(settings: Settings) -> ImageOptions:
    """The preprocessing the settings ask for (ingest and every model made from the lake)."""
    return ImageOptions(
        size=settings.image_size,
        image_format=settings.image_format,
        jpeg_quality=settings.jpeg_quality,
        max_pixels=settings.max_image_pixels,
        max_file_bytes=settings.max_image_file_bytes,
    )


@dataclass(frozen=True)
class ProcessedImage:
    """A preprocessed image and what is known about its original.

    ``width``/``height`` are the dimensions stored in the original file, as decoded and
    *before* the EXIF orientation is applied (a portrait photo stored landscape with
    orientation 6 records its landscape width and height). HEIC/HEIF is the exception:
    libheif applies the file's rotation while decoding, so it records the upright size.
    """

    image_id: str  # sha256 hex of the original bytes
    image: bytes  # encoded output, image_format, size x size, RGB
    image_format: str
    width: int
    height: int
    mode: str  # PIL mode of the original
    source_format: str  # format PIL detected from the bytes, e.g. "JPEG"


@dataclass(frozen=True)
class Rejection:
    """Why a file cannot be used; ``detail`` says what is wrong and what to do about it."""

    reason: Reason
    detail: str
    image_id: str | None  # sha256 hex of the bytes, when they could be read


class _Rejected(Exception):
    """Internal: raised by a pipeline stage, turned into a :class:`Rejection`."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- reading files


def read_file_bytes(path: str, max_bytes: int) -> bytes | Rejection:
    """All bytes of the regular file at ``path`` (symlinks followed), or why not.

    Pipes, sockets, devices and directories are refused without being read, so a FIFO
    never blocks the caller. A file over ``max_bytes`` is refused after reading at most
    ``max_bytes + 1`` bytes, even if it grows while being read. Never raises for file problems.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return _not_a_file(path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        return _os_rejection(path, error)
    try:
        with open(fd, "rb") as handle:  # closes fd
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):  # swapped since stat()
                return _not_a_file(path)
            if info.st_size > max_bytes:
                return _too_large(path, info.st_size, max_bytes)
            data = handle.read(max_bytes + 1)
            return _too_large(path, len(data), max_bytes) if len(data) > max_bytes else data
    except OSError as error:
        return _os_rejection(path, error)


def _too_large(path: str, size: int, max_bytes: int) -> Rejection:
    return Rejection(
        Reason.FILE_TOO_LARGE,
        f"{path} is over max_image_file_bytes={max_bytes} ({size} bytes or more); not decoded. "
        "Downscale it, or raise VISIONLOOP_MAX_IMAGE_FILE_BYTES if it is a real image",
        None,
    )


def _not_a_file(path: str) -> Rejection:
    return Rejection(
        Reason.NOT_A_FILE,
        f"{path} is not a regular file (directory, pipe, socket or device); "
        "only regular image files can be ingested",
        None,
    )


def _os_rejection(path: str, error: OSError) -> Rejection:
    code = error.errno
    message = error.strerror or str(error)
    if code == errno.ELOOP:
        return Rejection(Reason.SYMLINK_LOOP, f"symlink loop at {path}; fix the link", None)
    if code in (errno.ENOENT, errno.ENOTDIR):
        if os.path.islink(path):
            detail = f"dangling symlink to {os.readlink(path)}; restore the target or drop it"
        else:
            detail = f"{path} does not exist ({message}); it was moved or deleted"
        return Rejection(Reason.MISSING, detail, None)
    if code in (errno.EISDIR, errno.ENXIO):
        return _not_a_file(path)
    if code in (errno.EACCES, errno.EPERM):
        detail = f"permission denied reading {path}; make it readable by the ingest user"
        return Rejection(Reason.UNREADABLE, detail, None)
    return Rejection(Reason.UNREADABLE, f"cannot read {path}: {message}", None)


# ---------------------------------------------------------------- what a model sees


class ImageRejectedError(ValueError):
    """Bytes given to a model cannot be used; ``rejection`` says why and what to do."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(f"{rejection.reason.value}: {rejection.detail}")
        self.rejection = rejection


def decode_stored(data: bytes) -> Image.Image:
    """The RGB image of bytes :func:`process_image_bytes` produced (the lake's ``image``)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def model_image(data: bytes, options: ImageOptions) -> Image.Image:
    """What a model sees for any encoded image: preprocessed as at ingest, then decoded.

    The lake's stored bytes come out exactly as training decodes them (preprocessing is
    idempotent on its own PNG output; a stored JPEG, marked, is decoded as it is); an
    original file comes out as ingest would store it.
    Raises :class:`ImageRejectedError` for bytes ingest would quarantine.
    """
    if _is_stored_jpeg(data, options):  # re-encoding it would change its pixels
        return decode_stored(data)
    processed = process_image_bytes(data, options)
    if isinstance(processed, Rejection):
        raise ImageRejectedError(processed)
    return decode_stored(processed.image)


def _is_stored_jpeg(data: bytes, options: ImageOptions) -> bool:
    """Whether ``data`` is a JPEG :func:`process_image_bytes` wrote for ``options``: lossy,
    so not a fixed point of preprocessing as a stored PNG is; it carries :data:`STORED_MARK`."""
    if options.image_format != "JPEG" or not data.startswith(b"\xff\xd8"):
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = (options.size, options.size)
            return image.info.get("comment") == STORED_MARK and image.size == size
    except Exception:  # not for this check to reject; process_image_bytes names the problem
        return False


# ---------------------------------------------------------------- processing bytes


def process_file(path: str, options: ImageOptions) -> ProcessedImage | Rejection:
    """Read the file at ``path`` and preprocess it."""
    data = read_file_bytes(path, options.max_file_bytes)
    if isinstance(data, Rejection):
        return data
    return process_image_bytes(data, options)


def process_image_bytes(data: bytes, options: ImageOptions) -> ProcessedImage | Rejection:
    """Preprocess one encoded image; every problem with ``data`` is a :class:`Rejection`."""
    _require_strict_decoding()
    _register_openers()
    image_id = hashlib.sha256(data).hexdigest()
    if not data:
        return Rejection(Reason.EMPTY_FILE, "file is empty (0 bytes); re-export it", image_id)
    try:
        return _process(data, image_id, options)
    except _Rejected as rejected:
        return Rejection(rejected.reason, rejected.detail, image_id)
    except Exception as error:  # PIL raises many types on hostile data; none may escape
        return Rejection(Reason.CORRUPT, f"cannot decode: {_describe(error)}", image_id)


def _require_strict_decoding() -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated "
            "images would be silently padded instead of quarantined; find the import that "
            "sets it and remove it"
        )


@functools.cache
def _register_openers() -> None:
    """Teach PIL to open HEIC/HEIF (pillow-heif), once per process, on its first decode.

    Pillow decodes AVIF itself. pillow-heif's embedded thumbnails, depth and auxiliary
    images are turned off: the pixels come from the primary image alone.
    """
    register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)


def _process(data: bytes, image_id: str, options: ImageOptions) -> ProcessedImage:
    with _open(data) as image:
        source_format, mode = str(image.format), image.mode
        width, height = image.size
        _check_supported(source_format, mode)
        _check_pixels(width, height, options.max_pixels)
        if source_format in ("JPEG", "MPO"):
            image.draft(None, _scaled(_fit((width, height), options.size), _DRAFT_HEADROOM))
        _decode(image, source_format)
        _apply_orientation(image)
        rgb = _letterbox(_to_rgb_or_l(image), options.size).convert("RGB")
    return ProcessedImage(
        image_id=image_id,
        image=_encode(rgb, options),
        image_format=options.image_format,
        width=width,
        height=height,
        mode=mode,
        source_format=source_format,
    )


def _open(data: bytes) -> Image.Image:
    """Parse the header only; the format comes from the content."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise _bomb(f"PIL refuses it: {error}") from error
    except UnidentifiedImageError as error:
        looks_like = _sniff(data)
        if looks_like:
            raise _Rejected(
                Reason.CORRUPT,
                f"starts like a {looks_like} file but its header cannot be parsed; "
                "the file is damaged, re-export it",
            ) from error
        raise _Rejected(
            Reason.NOT_AN_IMAGE,
            f"content is not an image PIL can identify (starts with {data[:16]!r}); "
            "the file extension does not matter",
        ) from error
    except Exception as error:
        raise _Rejected(Reason.CORRUPT, f"cannot parse header: {_describe(error)}") from error


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and data[8:12] in _AVIF_BRANDS:
        return "AVIF"
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIF"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def _check_supported(source_format: str, mode: str) -> None:
    if source_format not in SUPPORTED_FORMATS:
        raise _Rejected(
            Reason.UNSUPPORTED_FORMAT,
            f"{source_format} ({mode}) is not ingested; convert it to PNG or JPEG "
            f"(supported: {', '.join(sorted(SUPPORTED_FORMATS))})",
        )


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise _Rejected(Reason.CORRUPT, f"header declares an empty image ({width}x{height})")
    if width * height > max_pixels:
        raise _bomb(
            f"{width}x{height} = {width * height} pixels exceeds max_image_pixels="
            f"{max_pixels} (possible decompression bomb); not decoded"
        )


def _bomb(detail: str) -> _Rejected:
    return _Rejected(
        Reason.DECOMPRESSION_BOMB,
        f"{detail}; downscale the original, or raise VISIONLOOP_MAX_IMAGE_PIXELS if it is "
        "genuine (PIL refuses more than 2 x PIL.Image.MAX_IMAGE_PIXELS regardless)",
    )


def _decode(image: Image.Image, source_format: str) -> None:
    """Decode the first frame; truncated or damaged data raises, it is never padded."""
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise _bomb(f"PIL refuses it: {error}") from error
    except Exception as error:
        raise _Rejected(
            Reason.CORRUPT,
            f"{source_format} data cannot be decoded: {_describe(error)}; re-export the file",
        ) from error


def _apply_orientation(image: Image.Image) -> None:
    """Rotate/flip as the EXIF orientation says; unparseable EXIF leaves the image as is."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # damaged EXIF metadata does not make the pixels unusable
        return


# ---------------------------------------------------------------- colour conversion


def _to_rgb_or_l(image: Image.Image) -> Image.Image:
    """An 8-bit ``RGB`` or ``L`` image with the original's colours, alpha over white."""
    try:
        if image.mode in _HIGH_DEPTH_MODES:
            return _high_depth_to_l(image)
        if image.mode == "CMYK":
            return _cmyk_to_rgb(image)
        if image.has_transparency_data:
            return _flatten_on_white(image.convert("RGBA"))
        if image.mode in ("RGB", "L"):
            return image
        return image.convert("L" if image.mode == "1" else "RGB")
    except (ValueError, OSError) as error:
        raise _Rejected(
            Reason.UNSUPPORTED_FORMAT,
            f"mode {image.mode} cannot be converted to RGB: {_describe(error)}",
        ) from error


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit integer and float pixels to 8-bit grey.

    ``I;16*`` and ``I`` within 0..65535 map the full 16-bit range linearly (0 -> 0,
    65535 -> 255); ``F`` within 0..1 maps 1.0 to 255. Other ranges are stretched from
    their minimum to their maximum.
    """
    values = np.asarray(image).astype(np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and low >= 0 and high <= 65535):
        scaled = values * _UINT16_SCALE
    elif image.mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0
    else:
        scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        grey[np.asarray(image) == transparent] = 255
    return Image.fromarray(grey, "L")


@functools.cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """Through the embedded ICC profile when there is a usable one, else PIL's formula."""
    icc = image.info.get("icc_profile")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(image, source, _srgb_profile(), outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass
    return image.convert("RGB")


def _flatten_on_white(rgba: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", rgba.size, _WHITE)
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


# ---------------------------------------------------------------- geometry and encoding


def _fit(size: tuple[int, int], box: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio that fits in ``box x box``."""
    width, height = size
    scale = min(box / width, box / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _scaled(size: tuple[int, int], factor: int) -> tuple[int, int]:
    return size[0] * factor, size[1] * factor


def _letterbox(image: Image.Image, size: int) -> Image.Image:
    """Resize to fit ``size x size`` keeping the aspect ratio, centred on black."""
    fitted = _fit(image.size, size)
    if fitted != image.size:
        image = image.resize(fitted, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)
    if fitted == (size, size):
        return image
    canvas = Image.new(image.mode, (size, size), 0)
    canvas.paste(image, ((size - fitted[0]) // 2, (size - fitted[1]) // 2))
    return canvas


def _encode(image: Image.Image, options: ImageOptions) -> bytes:
    buffer = io.BytesIO()
    if options.image_format == "PNG":
        image.save(buffer, "PNG", optimize=False, compress_level=_PNG_COMPRESS_LEVEL)
    else:
        image.save(buffer, "JPEG", quality=options.jpeg_quality, comment=STORED_MARK)
    return buffer.getvalue()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
