"""Decode an image (or mask) straight to the size the model needs.

HAM10000 images are 600x450 JPEGs and the model sees ~224x168 or less: JPEG's DCT scaling
(`Image.draft`) decodes at 1/2, 1/4 or 1/8 size for a fraction of the cost, then one bicubic resize
gives the exact size. Masks are resized nearest-neighbour so they stay binary. No torch here.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> Image.Image:
    """RGB image from `path`, resized to `size` = (width, height) when given (BICUBIC)."""
    path = Path(path)
    size = None if size is None else _check_size(size)
    if not path.is_file():
        raise FileNotFoundError(f"Image file {path} does not exist.")
    try:
        with Image.open(path) as image:
            if size is not None and image.format == "JPEG":
                image.draft("RGB", size)  # never below `size`: draft picks a scale >= the request
            image = image.convert("RGB")  # forces the (reduced) decode; detaches from the file
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(
            f"Image file {path} cannot be decoded ({error}); re-extract or re-download it."
        ) from None
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean lesion mask (> 127) from `path`, resized nearest-neighbour to `size` = (width, height)."""
    path = Path(path)
    size = None if size is None else _check_size(size)
    if not path.is_file():
        raise FileNotFoundError(f"Mask file {path} does not exist.")
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"Mask file {path} cannot be decoded; re-extract the segmentation archive.")
    if size is not None and (mask.shape[1], mask.shape[0]) != size:
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    return mask > 127


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"Image size must be positive (width, height), got {size}.")
    return width, height
