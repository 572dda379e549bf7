"""Decoding images and masks straight to the model's input size."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from skinderm.data import layout
from skinderm.data.images import load_image, load_mask


def _first_image_and_mask(root: Path) -> tuple[Path, Path]:
    mask = sorted((root / layout.MASK_FOLDER_NAME).iterdir())[0]
    image_id = mask.name.removesuffix("_segmentation.png")
    return next(root.glob(f"HAM10000_images_part_*/{image_id}.jpg")), mask


def test_image_is_rgb_at_the_requested_width_and_height(small_synthetic: Path) -> None:
    image_path, _ = _first_image_and_mask(small_synthetic)
    image = load_image(image_path, (112, 84))
    assert image.mode == "RGB" and image.size == (112, 84)
    assert load_image(image_path).size == (240, 180)


def test_reduced_jpeg_decode_matches_a_full_decode_then_resize(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    smooth = cv2.resize(
        rng.integers(0, 255, size=(12, 16, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC
    )
    path = tmp_path / "ISIC_0000001.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    fast = np.asarray(load_image(path, (160, 120)), dtype=float)
    full = np.asarray(
        Image.open(path).convert("RGB").resize((160, 120), Image.Resampling.BICUBIC), dtype=float
    )
    assert np.abs(fast - full).mean() < 2.0


def test_missing_and_corrupt_images_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"ISIC_0000404\.jpg"):
        load_image(tmp_path / "ISIC_0000404.jpg", (112, 84))
    broken = tmp_path / "ISIC_0000500.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match=r"ISIC_0000500\.jpg cannot be decoded"):
        load_image(broken, (112, 84))


def test_mask_is_boolean_and_resized_nearest_neighbour(small_synthetic: Path, tmp_path: Path) -> None:
    _, mask_path = _first_image_and_mask(small_synthetic)
    full = load_mask(mask_path)
    assert full.dtype == bool and full.shape == (180, 240) and full.any()
    small = load_mask(mask_path, (112, 84))
    assert small.shape == (84, 112)
    expected = cv2.resize(cv2.imread(str(mask_path), 0), (112, 84), interpolation=cv2.INTER_NEAREST) > 127
    assert np.array_equal(small, expected)
    grey = tmp_path / "grey_segmentation.png"
    cv2.imwrite(str(grey), np.full((4, 4), 128, dtype=np.uint8))
    assert load_mask(grey).all()


def test_bad_size_and_missing_mask_are_reported(small_synthetic: Path, tmp_path: Path) -> None:
    image_path, _ = _first_image_and_mask(small_synthetic)
    with pytest.raises(ValueError, match="positive"):
        load_image(image_path, (0, 84))
    with pytest.raises(FileNotFoundError, match=r"nope_segmentation\.png"):
        load_mask(tmp_path / "nope_segmentation.png")
