"""Shared fixtures for the evaluation tests: synthetic prediction records, no images, no network."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from skinderm.data.classes import CLASS_CODES, HAM10000_CLASS_COUNTS, LOCATIONS

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_records(n: int = 400, *, seed: int = 0, unparsed_rate: float = 0.1) -> list[dict[str, Any]]:
    """Prediction records with the HAM10000 class mix, 1-3 images per lesion, some unparsed answers."""
    rng = np.random.default_rng(seed)
    mix = np.array([HAM10000_CLASS_COUNTS[c] for c in CLASS_CODES], dtype=float)
    # Flatten the mix a little so every class appears in a few hundred records.
    mix = np.sqrt(mix) / np.sqrt(mix).sum()
    records: list[dict[str, Any]] = []
    lesion = 0
    while len(records) < n:
        dx_true = str(rng.choice(CLASS_CODES, p=mix))
        sex = str(rng.choice(["male", "female", "unknown"]))
        age = None if rng.random() < 0.05 else float(5 * rng.integers(0, 18))
        site = str(rng.choice(["back", "face", "lower extremity", "trunk"]))
        for _ in range(int(rng.integers(1, 4))):
            if len(records) == n:
                break
            roll = rng.random()
            if roll < unparsed_rate:
                dx_pred = None
            elif roll < 0.6:
                dx_pred = dx_true
            else:
                dx_pred = str(rng.choice(CLASS_CODES))
            x1, y1 = int(rng.integers(0, 300)), int(rng.integers(0, 200))
            bbox_true = [x1, y1, x1 + int(rng.integers(20, 300)), y1 + int(rng.integers(20, 250))]
            shift = rng.integers(-40, 41, size=4)
            bbox_pred = (
                None if dx_pred is None else [int(v + s) for v, s in zip(bbox_true, shift, strict=True)]
            )
            has_truth = rng.random() < 0.85
            location_true = str(rng.choice(LOCATIONS)) if has_truth else None
            records.append(
                {
                    "image_id": f"ISIC_{len(records):07d}",
                    "lesion_id": f"HAM_{lesion:07d}",
                    "dx_true": dx_true,
                    "dx_pred": dx_pred,
                    "location_true": location_true,
                    "location_pred": location_true if rng.random() < 0.5 else str(rng.choice(LOCATIONS)),
                    "bbox_true": bbox_true if has_truth else None,
                    "bbox_pred": bbox_pred,
                    "iou": None,
                    "mask_iou": float(rng.random()) if has_truth else None,
                    "parse_ok": dx_pred is not None,
                    "completion": "{}",
                    "sex": sex,
                    "age": age,
                    "localization": site,
                }
            )
        lesion += 1
    return records


@pytest.fixture
def records() -> list[dict[str, Any]]:
    return make_records()


@pytest.fixture
def record_factory():
    """`make_records` itself, for tests that need several splits or other sizes."""
    return make_records
