"""Decode an image (or mask) straight to the size the model needs; check image files before use.

HAM10000 images are 600x450 JPEGs and the model sees ~224x168 or less: JPEG's DCT scaling
(`Image.draft`) decodes at 1/2, 1/4 or 1/8 size for a fraction of the cost, then one bicubic resize
gives the exact size. Masks are resized nearest-neighbour so they stay binary. No torch here.

A cut-off JPEG (interrupted download or unzip) opens fine and reports its size, because the header
is intact; only decoding finds the missing data. And a cut-off JPEG that ends in an end-of-image
marker anyway (a tool that "repairs" files appends FF D9) even decodes without complaint: the decoder
stops at the marker and fills the rest with one flat colour. So `read_image_size` checks three things:
the end marker is there (in the last 4 KiB), PIL decodes the file (at 1/8 scale for JPEG: the
entropy-coded data is read in full, the inverse DCT mostly skipped), and, for a single-scan JPEG, the
decode gets to the last pixel row WITHOUT that marker: the marker is replaced by a few zero bytes (more
than the decoder's read-ahead, far less than one block row needs), so data that stops early runs out
and PIL says "image file is truncated" instead of inventing the rest. Measured on synthetic 600x450
JPEGs (one core): header + end marker 24 us/image, the full check 650 us (docs/data.md). Progressive
(multi-scan) JPEGs must see the marker before decoding anything, so for them the end-marker check is
the only truncation check. PIL's `ImageFile.LOAD_TRUNCATED_IMAGES` is held False during each decode.

An image above PIL's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`, 89 megapixels) is refused with
one line naming it; PIL would only warn up to twice that and then raise an exception of its own class.
Masks are read at their bit depth and with all their channels (`decode_mask`).
"""

from __future__ import annotations

import errno
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from skinderm.data.errors import DataError, DataFileNotFoundError

# Bytes that end a complete file, per PIL format (MPO is a JPEG with extra pictures appended).
_END_MARKERS: dict[str, bytes] = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND"}
# How far from the end the marker may sit: some writers pad or append a few bytes after it.
_TAIL_BYTES = 4096
_START_OF_SCAN = b"\xff\xda"  # cannot occur inside entropy-coded data (FF is followed by 00 or RSTn)
# Zero bytes in place of the end marker: libjpeg reads at most 8 bytes ahead (a 64-bit bit buffer), and
# zeros decode to at most ~1 block of a standard Huffman table, so a scan that stops early still runs out.
_END_PADDING = bytes(16)
_OPEN_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_PIXELS_IN_MESSAGE = re.compile(r"\((\d+) pixels\)")


# Qwen2.5-VL's image processor refuses images whose long side is more than 200 times the short one.
MAX_ASPECT_RATIO = 200


def check_image_aspect(path: str | Path, width: int, height: int) -> None:
    """Refuse (one-line DataError naming the file) an image the model's processor cannot take."""
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > MAX_ASPECT_RATIO:
        raise DataError(
            f"Image file {path} is {width}x{height}, {ratio:.0f}:1 between its sides, over the "
            f"{MAX_ASPECT_RATIO}:1 that Qwen2.5-VL's processor takes; crop or pad it (or drop it).",
            reason="image_too_elongated",
        )


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, after checking it decodes completely (see the module doc).

    Raises `DataFileNotFoundError` (reason image_missing) or `DataError` (image_unreadable,
    image_truncated, image_too_large) naming the file. About 0.65 ms for a 600x450 JPEG.
    """
    return _decode(Path(path), None, check_only=True)[0]


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> Image.Image:
    """RGB image from `path`, resized to `size` = (width, height) when given (BICUBIC).

    The same checks as `read_image_size`: a missing, unreadable, truncated or oversized file raises a
    `DataError` naming it (never a PIL traceback, never a half-invented image).
    """
    path = Path(path)
    size = None if size is None else _check_size(size)
    image = _decode(path, size, check_only=False)[1]
    assert image is not None  # decoded: check_only is False
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def _decode(
    path: Path, size: tuple[int, int] | None, *, check_only: bool
) -> tuple[tuple[int, int], Image.Image | None]:
    """(the file's size, the RGB image decoded for `size`, or None when `check_only`: decoded at the
    smallest JPEG scale and dropped)."""
    data = _read_bytes(path, "Image")
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES  # True would make PIL invent the missing rows
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            full_size, image_format = image.size, image.format
            if not _ends_completely(data, image_format):
                raise _truncated_image(path)
            if image_format == "JPEG" and data.count(_START_OF_SCAN) == 1:
                # Without its end marker, a scan that stops early runs out of data (module doc).
                image = Image.open(io.BytesIO(data[: data.rindex(b"\xff\xd9")] + _END_PADDING))
            if image_format == "JPEG" and (size is not None or check_only):
                # Never below `size`: draft picks a scale >= the request ((1, 1): the smallest, 1/8).
                image.draft("RGB", size or (1, 1))
            if check_only:
                image.load()
                image.close()
                return full_size, None
            return full_size, image.convert("RGB")  # forces the (reduced) decode
    except DataError:
        raise
    except _BOMB_ERRORS as error:
        raise _too_large_image(path, error) from None
    except UnidentifiedImageError:
        raise _unreadable_image(path, "no known image format") from None
    except _OPEN_ERRORS as error:
        # PIL's decoder says "image file is truncated" when data runs out before the last row.
        if "image file is truncated" in str(error):
            raise _truncated_image(path) from None
        raise DataError(
            f"Image file {path} cannot be decoded ({_one_line(error)}); re-extract or re-download it.",
            reason="image_unreadable",
        ) from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def _read_bytes(path: Path, kind: str) -> bytes:
    """The whole file; a missing file, symlink loop, dangling link or folder raises a one-line DataError."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise file_error(path, error, kind) from None


def file_error(path: Path, error: OSError, kind: str) -> DataError:
    """A one-line `DataError` for a file that cannot be opened at all (`kind`: "Image" or "Mask").

    Why: the OS says "[Errno 40] Too many levels of symbolic links" or "No such file" for a link
    whose target is gone; the message must say which file and what to do about it.
    """
    lower = kind.lower()
    unreadable = f"{lower}_unreadable"
    if error.errno == errno.ELOOP:
        return DataError(
            f"{kind} file {path} is a symbolic link loop (it leads back to itself); replace it with the "
            "real file (re-extract the archive).",
            reason=unreadable,
        )
    if isinstance(error, FileNotFoundError):
        if path.is_symlink():
            return DataError(
                f"{kind} file {path} is a symbolic link to {os.readlink(path)}, which does not exist; "
                "fix the link or replace it with the real file.",
                reason=unreadable,
            )
        missing = "image_missing" if kind == "Image" else None
        return DataFileNotFoundError(f"{kind} file {path} does not exist.", reason=missing)
    if isinstance(error, IsADirectoryError):
        return DataError(f"{kind} file {path} is a folder, not a file; remove it.", reason=unreadable)
    return DataError(
        f"{kind} file {path} cannot be opened ({_one_line(error)}); check its permissions or re-extract it.",
        reason=unreadable,
    )


@dataclass(frozen=True)
class DecodedMask:
    """A mask file as (H, W) uint8 on the 0..255 scale, and what had to be done to get there."""

    values: np.ndarray  # C-contiguous uint8, lesion = > 127
    bit_depth: int  # 8, or 16 for a 16-bit PNG
    color: bool  # several channels that differ: lesion = the maximum over the colour channels


def decode_mask(path: str | Path) -> DecodedMask:
    """Decode a mask at its own bit depth and with all its channels (cv2.IMREAD_UNCHANGED).

    Rules (docs/data.md): a 16-bit mask whose values all fit in 0..255 holds 8-bit values (a 0/255 mask
    saved as 16-bit) and is used as is; otherwise it is scaled from 0..65535 (>> 8), so lesion means
    above half the range. A colour mask is the maximum over its colour channels (a lesion drawn in red
    only is still the lesion; OpenCV's grey conversion would make it 76 of 255: "empty"); the alpha
    channel counts only when the colour channels are all zero. A grey mask stored as RGB (equal
    channels) is not flagged as `color`.
    """
    path = Path(path)
    values = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if values is None:
        try:
            with path.open("rb"):
                pass
        except OSError as error:
            raise file_error(path, error, "Mask") from None
        raise DataError(
            f"Mask file {path} cannot be decoded (corrupt or not an image): re-extract the segmentation "
            "archive.",
            reason="mask_unreadable",
        )
    bit_depth = values.dtype.itemsize * 8
    if values.dtype not in (np.uint8, np.uint16):
        raise DataError(
            f"Mask file {path} holds {values.dtype} pixels; masks must be 8- or 16-bit PNGs (re-export it).",
            reason="mask_unreadable",
        )
    color = False
    if values.ndim == 3:
        channels = [values[:, :, index] for index in range(values.shape[2])]
        colour, alpha = channels[:3], channels[3] if len(channels) == 4 else None
        grey = colour[0]
        for channel in colour[1:]:
            color = color or not np.array_equal(channel, grey)
            grey = cv2.max(grey, channel)
        if alpha is not None and not grey.any() and alpha.min() != alpha.max():
            grey, color = alpha, True
        values = grey
    if values.dtype == np.uint16:
        values = values.astype(np.uint8) if int(values.max()) <= 255 else (values >> 8).astype(np.uint8)
    return DecodedMask(np.ascontiguousarray(values), bit_depth, color)


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean lesion mask (> 127 after `decode_mask`), resized nearest-neighbour to `size` (w, h)."""
    path = Path(path)
    size = None if size is None else _check_size(size)
    mask = decode_mask(path).values
    if size is not None and (mask.shape[1], mask.shape[0]) != size:
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    return mask > 127


def _ends_completely(data: bytes, image_format: str | None) -> bool:
    """Whether the file's last `_TAIL_BYTES` hold its format's end marker (True for other formats)."""
    marker = _END_MARKERS.get(image_format or "")
    if marker is None:
        return True
    return data.endswith(marker) or marker in data[-_TAIL_BYTES:]


def _unreadable_image(path: Path, detail: str) -> DataError:
    return DataError(
        f"Image file {path} cannot be read ({detail}); it is empty or not an image: "
        "re-extract or re-download it.",
        reason="image_unreadable",
    )


def _truncated_image(path: Path) -> DataError:
    return DataError(
        f"Image file {path} is truncated (its data stops before the last pixel row: a cut-off download "
        "or unzip); re-extract or re-download it.",
        reason="image_truncated",
    )


def _too_large_image(path: Path, error: BaseException) -> DataError:
    found = _PIXELS_IN_MESSAGE.search(str(error))
    pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return DataError(
        f"Image file {path} has {pixels}, more than the {Image.MAX_IMAGE_PIXELS:,} that PIL decodes (its "
        "decompression-bomb limit); downscale it (the model sees well under 1 megapixel), e.g. to 600x450.",
        reason="image_too_large",
    )


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"Image size must be positive (width, height), got {size}.")
    return width, height
