"""Mask -> geometry (largest 8-connected component, exclusive box end) and whole-dataset annotation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skinderm.data import layout
from skinderm.data.annotation import (
    RECORD_COLUMNS,
    _geometry_by_labels,
    annotate_dataset,
    annotate_mask,
    load_annotations,
    parallel_map,
)


def test_annotation_equals_the_generators_ground_truth_exactly(
    small_synthetic: Path, synthetic_copy: Callable[..., Path], tmp_path: Path
) -> None:
    records = annotate_dataset(small_synthetic, out_dir=tmp_path / "out", workers=1)
    truth = pd.read_csv(small_synthetic / layout.SYNTHETIC_GROUND_TRUTH_CSV).set_index("image_id")
    with_mask = records[records["mask_available"]]
    assert len(with_mask) == int(truth["has_mask"].sum()) == 63
    for record in with_mask.itertuples():
        expected = truth.loc[record.image_id]
        assert record.bbox == [expected.x1, expected.y1, expected.x2, expected.y2]
        assert record.location == expected.location
        assert record.n_components == expected.n_components
        assert record.centroid == [expected.centroid_x, expected.centroid_y]
        assert record.area_fraction == pytest.approx(expected.area_fraction, abs=1e-6)
    assert (with_mask["n_components"] == 2).sum() >= 10  # satellites were really exercised


def test_empty_mask_has_no_geometry_and_zero_components() -> None:
    geometry = annotate_mask(np.zeros((45, 60), dtype=np.uint8))
    assert geometry.n_components == 0
    assert (geometry.bbox, geometry.location, geometry.centroid, geometry.area_fraction) == (None,) * 4


def test_box_is_the_largest_component_with_an_exclusive_end() -> None:
    mask = np.zeros((90, 120), dtype=np.uint8)
    mask[10:20, 5:15] = 255  # 100 px, first in scan order
    mask[50:80, 60:110] = 255  # 1500 px: the largest
    geometry = annotate_mask(mask)
    assert geometry.bbox == [60, 50, 110, 80]  # x2 = x1 + width, not the last pixel
    assert geometry.n_components == 2
    assert geometry.centroid == [84.5, 64.5]
    assert geometry.location == "bottom-right"  # centroid (84.5, 64.5) in 120x90: past both 2/3 lines
    assert geometry.spatial_description == "lesion located in bottom-right region"
    assert geometry.area_fraction == pytest.approx(1600 / (90 * 120), abs=1e-6)


def test_equal_largest_components_go_to_the_first_in_raster_order() -> None:
    """Not OpenCV's label order, which numbers components by 2x2 blocks: here it would pick the lower one."""
    mask = np.zeros((4, 49), dtype=np.uint8)
    mask[2, 47:49] = 255  # met first in raster order
    mask[3, 44:46] = 255  # same area, one row lower but further left
    assert annotate_mask(mask).bbox == [47, 2, 49, 3]
    assert _geometry_by_labels((mask > 127).astype(np.uint8)).bbox == [47, 2, 49, 3]


def test_diagonal_neighbours_form_one_component() -> None:
    mask = np.zeros((30, 30), dtype=np.uint8)
    for i in range(10):
        mask[i, i] = 255
    geometry = annotate_mask(mask)
    assert geometry.n_components == 1 and geometry.bbox == [0, 0, 10, 10]


def test_values_other_than_0_and_255_are_thresholded_above_127() -> None:
    mask = np.full((30, 40), 127, dtype=np.uint8)  # lossy background: not lesion
    mask[5:10, 30:35] = 128
    geometry = annotate_mask(mask)
    assert geometry.bbox == [30, 5, 35, 10] and geometry.location == "top-right"
    assert annotate_mask(mask.astype(np.float32)).bbox == [30, 5, 35, 10]
    faint_only = annotate_mask(np.full((30, 40), 127, dtype=np.uint8))
    assert faint_only.n_components == 0 and faint_only.bbox is None


def test_three_channel_and_boolean_masks_are_accepted() -> None:
    mask = np.zeros((30, 40, 3), dtype=np.uint8)
    mask[20:25, 2:6, 0] = 255
    assert annotate_mask(mask).bbox == [2, 20, 6, 25]
    assert annotate_mask(mask[:, :, 0] > 0).bbox == [2, 20, 6, 25]
    with pytest.raises(ValueError, match="shape"):
        annotate_mask(np.zeros((2, 3, 4, 5), dtype=np.uint8))


def test_a_hole_does_not_split_a_component_and_a_blob_inside_a_hole_is_its_own() -> None:
    mask = np.zeros((100, 100), dtype=np.uint8)
    cv2.circle(mask, (50, 50), 40, 255, -1)
    cv2.circle(mask, (50, 50), 20, 0, -1)
    assert annotate_mask(mask).n_components == 1
    mask[48:52, 48:52] = 255
    geometry = annotate_mask(mask)
    assert geometry.n_components == 2 and geometry.bbox == [10, 10, 91, 91]


@st.composite
def random_masks(draw: st.DrawFn) -> np.ndarray:
    height, width = draw(st.integers(3, 60)), draw(st.integers(3, 60))
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(draw(st.integers(0, 6))):
        x, y = draw(st.integers(-5, width + 5)), draw(st.integers(-5, height + 5))
        radius = draw(st.integers(0, 15))
        cv2.circle(mask, (x, y), radius, draw(st.sampled_from([0, 255])), -1)
    if draw(st.booleans()):
        noise = np.frombuffer(
            draw(st.binary(min_size=height * width, max_size=height * width)), dtype=np.uint8
        )
        mask[noise.reshape(height, width) > 240] = 255
    if draw(st.booleans()):  # faint (1..127, background) and bright (128..254, lesion) values
        values = np.frombuffer(draw(st.binary(min_size=height * width, max_size=height * width)), np.uint8)
        values = values.reshape(height, width)
        mask = np.where(values % 5 == 0, values, mask).astype(np.uint8)
    return mask


@settings(max_examples=300, deadline=None)
@given(random_masks())
def test_contour_paths_equal_the_connected_components_stats_pass(mask: np.ndarray) -> None:
    binary = (mask > 127).astype(np.uint8)
    reference = _geometry_by_labels(binary)
    assert annotate_mask(mask) == reference
    assert annotate_mask(binary.astype(bool)) == reference
    assert annotate_mask(mask.astype(np.int32)) == reference
    assert annotate_mask(np.dstack([mask, np.zeros_like(mask), mask])) == reference


def test_dataset_records_follow_the_schema(small_synthetic: Path, tmp_path: Path) -> None:
    records = annotate_dataset(small_synthetic, out_dir=tmp_path, workers=1)
    assert tuple(records.columns) == RECORD_COLUMNS
    assert len(records) == 70
    row = records[records["mask_available"]].iloc[0]
    assert (small_synthetic / row["image_path"]).is_file() and row["image_path"].startswith(
        "HAM10000_images_part_"
    )
    assert (small_synthetic / row["mask_path"]).is_file()
    assert (row["image_width"], row["image_height"]) == (240, 180)
    no_mask = records[records["mask_path"].isna()]
    assert len(no_mask) == 7 == records.attrs["masks_missing"]
    assert not no_mask["mask_available"].any()
    assert (
        no_mask["bbox"].isna().all()
        and no_mask["location"].isna().all()
        and no_mask["n_components"].isna().all()
    )
    saved = json.loads((tmp_path / layout.ANNOTATIONS_JSON).read_text())
    assert [list(r) for r in saved[:1]] == [list(RECORD_COLUMNS)]
    assert saved[0]["age"] is None or isinstance(saved[0]["age"], float)


def test_json_round_trips_and_csv_holds_boxes_as_json_strings(small_synthetic: Path, tmp_path: Path) -> None:
    records = annotate_dataset(small_synthetic, out_dir=tmp_path, workers=1)
    pd.testing.assert_frame_equal(load_annotations(tmp_path), records)
    table = pd.read_csv(tmp_path / layout.ANNOTATIONS_CSV)
    first = records[records["mask_available"]].iloc[0]
    assert json.loads(table.set_index("image_id").loc[first["image_id"], "bbox"]) == first["bbox"]


def test_one_and_two_workers_write_byte_identical_files(small_synthetic: Path, tmp_path: Path) -> None:
    annotate_dataset(small_synthetic, out_dir=tmp_path / "one", workers=1)
    annotate_dataset(small_synthetic, out_dir=tmp_path / "two", workers=2)
    for name in (layout.ANNOTATIONS_JSON, layout.ANNOTATIONS_CSV):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_annotations_default_to_the_dataset_folder(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    annotate_dataset(root, workers=1)
    assert (root / layout.ANNOTATIONS_JSON).is_file() and (root / layout.ANNOTATIONS_CSV).is_file()
    assert not list(root.glob(".*.tmp-*"))


def test_mask_of_the_wrong_size_is_an_error_naming_the_file(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    mask_path = sorted((root / layout.MASK_FOLDER_NAME).iterdir())[0]
    cv2.imwrite(str(mask_path), np.zeros((50, 60), dtype=np.uint8))
    with pytest.raises(ValueError, match="is 60x50 but its image") as error:
        annotate_dataset(root, workers=1)
    assert mask_path.name in str(error.value)
    records = annotate_dataset(root, workers=1, on_error="skip")
    assert len(records) == 69 and records.attrs["skipped"][0][0] == mask_path.name.split("_seg")[0]


def test_corrupt_mask_is_an_error_naming_the_file(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    mask_path = sorted((root / layout.MASK_FOLDER_NAME).iterdir())[1]
    mask_path.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot be decoded") as error:
        annotate_dataset(root, workers=1)
    assert mask_path.name in str(error.value)


def test_load_annotations_explains_how_to_create_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"python -m skinderm.annotate"):
        load_annotations(tmp_path)


def test_annotation_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, skinderm.data.annotation, skinderm.data.images; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        == "False\n"
    )


def test_one_process_map_runs_opencv_on_one_thread_and_restores_the_callers_setting() -> None:
    before = cv2.getNumThreads()
    assert parallel_map(_opencv_threads, [0, 1], workers=1) == [1, 1]
    assert cv2.getNumThreads() == before


def _opencv_threads(_: int) -> int:
    return cv2.getNumThreads()
