"""Fixtures for the data-layer tests: one small synthetic HAM10000 per session, copied when a test writes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Small images keep the session fast; annotation and ground truth are size-independent.
SMALL_PARAMS: dict = {
    "num_images": 70,
    "seed": 7,
    "image_width": 240,
    "image_height": 180,
    "class_counts": {code: 10 for code in ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")},
    "multi_component_fraction": 0.25,
    "missing_mask_fraction": 0.1,
}


@pytest.fixture(scope="session")
def small_synthetic_params() -> dict:
    return dict(SMALL_PARAMS)


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only (by convention) synthetic dataset: 70 images, every class, satellites, missing masks."""
    from skinderm.data.synthetic import generate_synthetic_ham10000

    return generate_synthetic_ham10000(tmp_path_factory.mktemp("synthetic") / "ham", **SMALL_PARAMS)


@pytest.fixture
def synthetic_copy(small_synthetic: Path, tmp_path: Path) -> Callable[[], Path]:
    """A fresh writable copy of the session dataset (for tests that annotate, break or rename things)."""

    def _copy(name: str = "ham") -> Path:
        return Path(shutil.copytree(small_synthetic, tmp_path / name))

    return _copy
