"""Bad data: each broken file or row stops the run with a one-line message naming it, or, with
dataset.on_error=skip, is left out, counted in attrs and listed in skipped.csv (docs/data.md)."""

from __future__ import annotations

import csv
import errno
import logging
import os
import pickle
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from skinderm.core import files
from skinderm.data import layout
from skinderm.data.annotation import ATTRS_KEYS, format_data_summary
from skinderm.data.errors import SKIP_REASONS, DataError, DataFileNotFoundError
from skinderm.data.images import load_image, read_image_size
from skinderm.data.prepare import prepare_dataset

SPLITS = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0}
METADATA = "HAM10000_metadata.csv"


def _prepare(root: Path, on_error: str = "raise") -> pd.DataFrame:
    return prepare_dataset({"name": "ham10000", "root": str(root), "splits": SPLITS, "on_error": on_error})


def _raises(root: Path, error_type: type[Exception] = DataError) -> str:
    """The message `prepare_dataset` stops with under on_error=raise, checked to be one line."""
    with pytest.raises(error_type) as error:
        _prepare(root)
    message = str(error.value)
    assert "\n" not in message and isinstance(error.value, DataError)
    return message


def _skipped_rows(root: Path) -> list[dict[str, str]]:
    with (root / layout.SKIPPED_CSV).open(newline="") as handle:
        return list(csv.DictReader(handle))


def _metadata_lines(root: Path) -> list[str]:
    return (root / METADATA).read_text().splitlines()


def _write_metadata_lines(root: Path, lines: list[str]) -> None:
    (root / METADATA).write_text("\n".join(lines) + "\n")


def _line_of(root: Path, image_id: str) -> int:
    """The spreadsheet line number (header = 1) of `image_id` in the metadata."""
    return next(n for n, line in enumerate(_metadata_lines(root), start=1) if f",{image_id}," in line)


def _image(root: Path, image_id: str) -> Path:
    return next(root.glob(f"HAM10000_images_part_*/{image_id}.jpg"))


def _first_masked_id(root: Path) -> str:
    first = sorted((root / layout.MASK_FOLDER_NAME).iterdir())[0]
    return first.name.removesuffix("_segmentation.png")


def _mask(root: Path, image_id: str) -> Path:
    return root / layout.MASK_FOLDER_NAME / layout.mask_filename(image_id)


def _assert_skipped_one(root: Path, records: pd.DataFrame, image_id: str, reason: str, file: str) -> None:
    """`image_id` is left out, counted once under `reason`, and the one row of skipped.csv (its file
    column ending with `file`: a full path, or the expected name of a missing image)."""
    assert image_id not in set(records["image_id"]) and len(records) == 69
    assert records.attrs["skip_counts"][reason] == 1 and records.attrs["data_summary"]["skipped_total"] == 1
    assert records.attrs["data_summary"][f"skipped_{reason}"] == 1
    assert records.attrs["skipped_csv"] == str(root / layout.SKIPPED_CSV)
    [row] = _skipped_rows(root)
    assert (row["image_id"], row["reason"], row["line"]) == (image_id, reason, str(_line_of(root, image_id)))
    assert row["file"].endswith(file) and "\n" not in row["detail"]


# --- images ---------------------------------------------------------------------------------------------
def test_corrupt_jpeg_is_named_or_skipped_and_listed(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    image_id = "ISIC_0024310"
    path = _image(root, image_id)
    path.write_bytes(b"this is not a jpeg at all")
    message = _raises(root)
    assert f"Image file {path} cannot be read" in message
    assert f"metadata line {_line_of(root, image_id)}" in message and "on_error=skip" in message
    records = _prepare(root, "skip")
    _assert_skipped_one(root, records, image_id, "image_unreadable", str(path))


def test_truncated_jpeg_is_caught_by_the_end_marker_check(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    image_id = "ISIC_0024311"
    path = _image(root, image_id)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the header survives: it opens
    message = _raises(root)
    assert f"Image file {path} is truncated" in message and "re-download" in message
    records = _prepare(root, "skip")
    _assert_skipped_one(root, records, image_id, "image_truncated", str(path))


def test_jpeg_missing_only_its_last_bytes_is_truncated(small_synthetic: Path, tmp_path: Path) -> None:
    data = _image(small_synthetic, "ISIC_0024312").read_bytes()
    cut = tmp_path / "ISIC_0024312.jpg"
    cut.write_bytes(data[:-2])
    with pytest.raises(DataError, match="is truncated") as error:
        read_image_size(cut)
    assert error.value.reason == "image_truncated"
    padded = tmp_path / "ISIC_0024313.jpg"
    padded.write_bytes(data + b"\x00" * 100)  # bytes after the end marker: still a complete image
    assert read_image_size(padded) == (240, 180)


def test_load_image_refuses_a_truncated_jpeg_naming_it(small_synthetic: Path, tmp_path: Path) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = _image(small_synthetic, "ISIC_0024312").read_bytes()
    cut = tmp_path / "ISIC_0024312.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match=r"ISIC_0024312\.jpg is truncated"):
        load_image(cut, (112, 84))
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # even if some other library flips it
    try:
        with pytest.raises(DataError, match="is truncated"):
            load_image(cut, (112, 84))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_missing_image_names_the_id_and_line_or_is_skipped(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    image_id = "ISIC_0024320"
    _image(root, image_id).unlink()
    message = _raises(root, FileNotFoundError)
    assert f"1 of 70 images listed in {root / METADATA}" in message
    assert f"{image_id} (line {_line_of(root, image_id)})" in message and "on_error=skip" in message
    records = _prepare(root, "skip")
    _assert_skipped_one(root, records, image_id, "image_missing", f"/{layout.image_filename(image_id)}")
    assert records.attrs["missing_images"] == [image_id] and records.attrs["skipped"] == []


# --- masks ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_missing_mask_keeps_the_image_without_geometry(
    synthetic_copy: Callable[..., Path], on_error: str
) -> None:
    root = synthetic_copy()
    image_id = _first_masked_id(root)
    _mask(root, image_id).unlink()
    records = _prepare(root, on_error).set_index("image_id")
    row = records.loc[image_id]
    assert (
        len(records) == 70 and row["dx"] == _metadata_lines(root)[_line_of(root, image_id) - 1].split(",")[2]
    )
    assert not row["mask_available"] and row["bbox"] is None and row["mask_path"] is None
    assert records.attrs["masks_missing"] == 8 and records.attrs["data_summary"]["masks_missing"] == 8
    assert records.attrs["data_summary"]["skipped_total"] == 0 and not (root / layout.SKIPPED_CSV).exists()


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_empty_mask_keeps_the_image_and_is_counted(
    synthetic_copy: Callable[..., Path], on_error: str
) -> None:
    root = synthetic_copy()
    image_id = _first_masked_id(root)
    cv2.imwrite(str(_mask(root, image_id)), np.zeros((180, 240), dtype=np.uint8))
    records = _prepare(root, on_error).set_index("image_id")
    row = records.loc[image_id]
    assert len(records) == 70 and not row["mask_available"] and row["bbox"] is None
    assert row["mask_path"] is not None and row["n_components"] == 0
    assert records.attrs["masks_empty"] == 1 and records.attrs["data_summary"]["masks_empty"] == 1
    assert not (root / layout.SKIPPED_CSV).exists()


def test_image_beyond_200_to_1_is_named_or_skipped(synthetic_copy: Callable[..., Path]) -> None:
    """Qwen2.5-VL's processor refuses such images: stop at annotation, naming it, not deep in training."""
    root = synthetic_copy()
    image_id = "ISIC_0024310"
    path = _image(root, image_id)
    Image.new("RGB", (2010, 10), (120, 80, 60)).save(path, format="JPEG")
    mask = _mask(root, image_id)
    if mask.exists():
        cv2.imwrite(str(mask), np.zeros((10, 2010), dtype=np.uint8))
    message = _raises(root)
    assert f"Image file {path} is 2010x10, 201:1 between its sides" in message
    records = _prepare(root, "skip")
    _assert_skipped_one(root, records, image_id, "image_too_elongated", str(path))


def test_mask_of_another_size_is_named_or_skipped(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    image_id = _first_masked_id(root)
    mask = _mask(root, image_id)
    cv2.imwrite(str(mask), np.full((240, 180), 255, dtype=np.uint8))  # transposed
    message = _raises(root)
    assert f"Mask file {mask} is 180x240 (rotated?) but its image" in message and "240x180" in message
    assert f"metadata line {_line_of(root, image_id)}" in message
    records = _prepare(root, "skip")
    _assert_skipped_one(root, records, image_id, "mask_size_mismatch", str(mask))


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_non_binary_mask_is_thresholded_above_127_and_counted(
    synthetic_copy: Callable[..., Path], on_error: str
) -> None:
    root = synthetic_copy()
    image_id = _first_masked_id(root)
    mask = np.zeros((180, 240), dtype=np.uint8)
    mask[20:60, 30:90] = 100  # a faint halo: not lesion
    mask[30:50, 40:70] = 200  # lesion
    cv2.imwrite(str(_mask(root, image_id)), mask)
    records = _prepare(root, on_error).set_index("image_id")
    assert records.loc[image_id, "bbox"] == [40, 30, 70, 50]
    assert records.attrs["masks_nonbinary"] == 1 and records.attrs["data_summary"]["masks_nonbinary"] == 1
    assert records.attrs["data_summary"]["skipped_total"] == 0


def test_zero_one_mask_counts_as_empty_with_a_warning(
    synthetic_copy: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = synthetic_copy()
    image_id = _first_masked_id(root)
    binary = (cv2.imread(str(_mask(root, image_id)), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)
    cv2.imwrite(str(_mask(root, image_id)), binary)  # saved as 0/1 instead of 0/255
    caplog.set_level(logging.WARNING)
    records = _prepare(root)
    assert records.attrs["masks_empty"] == 1 and records.attrs["masks_nonbinary"] == 1
    assert "0/1 masks?" in caplog.text and image_id in caplog.text


# --- metadata -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_metadata_without_a_required_column_is_always_fatal(
    synthetic_copy: Callable[..., Path], on_error: str
) -> None:
    root = synthetic_copy()
    table = pd.read_csv(root / METADATA, dtype=str, keep_default_na=False)
    table.drop(columns=["dx"]).to_csv(root / METADATA, index=False)
    with pytest.raises(DataError, match=r"lacks columns \['dx'\]") as error:
        _prepare(root, on_error)
    assert str(root / METADATA) in str(error.value) and "\n" not in str(error.value)


def test_unknown_dx_names_file_line_and_column_or_is_skipped(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    lines = _metadata_lines(root)
    image_id = lines[5].split(",")[1]
    fields = lines[5].split(",")
    fields[2] = "melanoma"
    lines[5] = ",".join(fields)
    _write_metadata_lines(root, lines)
    message = _raises(root)
    assert f"Metadata file {root / METADATA}, line 6, column dx: 'melanoma' is not one of akiec" in message
    assert "1 bad row(s) in all" in message and "on_error=skip" in message
    records = _prepare(root, "skip")
    _assert_skipped_one(root, records, image_id, "unknown_dx", str(root / METADATA))


def test_dx_in_the_wrong_case_gets_a_hint(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    lines = _metadata_lines(root)
    fields = lines[3].split(",")
    fields[2] = fields[2].upper()
    lines[3] = ",".join(fields)
    _write_metadata_lines(root, lines)
    assert f"line 4, column dx: {fields[2]!r} is not one of" in _raises(root)
    assert f"did you mean {fields[2].lower()!r}?" in _raises(root)


def test_identical_duplicate_rows_keep_the_first(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    lines = _metadata_lines(root)
    image_id = lines[4].split(",")[1]
    _write_metadata_lines(root, [*lines, lines[4]])  # line 72 repeats line 5
    message = _raises(root)
    assert f"{root / METADATA}, line 72, column image_id: listed more than once: {image_id}" in message
    records = _prepare(root, "skip")
    assert len(records) == 70 and image_id in set(records["image_id"])
    assert records.attrs["skip_counts"]["duplicate_image_id"] == 1
    [row] = _skipped_rows(root)
    assert (row["image_id"], row["reason"], row["line"]) == (image_id, "duplicate_image_id", "72")


def test_conflicting_duplicate_rows_are_all_left_out(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    lines = _metadata_lines(root)
    fields = lines[4].split(",")
    fields[2] = "vasc" if fields[2] != "vasc" else "nv"
    _write_metadata_lines(root, [*lines, ",".join(fields)])
    assert "with different values" in _raises(root)
    records = _prepare(root, "skip")
    assert len(records) == 69 and fields[1] not in set(records["image_id"])
    assert [row["line"] for row in _skipped_rows(root)] == ["5", "72"]


@pytest.mark.parametrize("bad_id", ["../ISIC_0024306", "ISIC_0024306/../../x", "..\\ISIC_0024306"])
def test_image_id_with_path_characters_is_named_or_skipped(
    synthetic_copy: Callable[..., Path], bad_id: str
) -> None:
    root = synthetic_copy()
    lines = _metadata_lines(root)
    good_id = lines[1].split(",")[1]
    lines[1] = lines[1].replace(good_id, bad_id)
    _write_metadata_lines(root, lines)
    message = _raises(root)
    assert f"{root / METADATA}, line 2, column image_id: {bad_id!r}" in message
    assert "path characters are not allowed" in message
    records = _prepare(root, "skip")
    assert len(records) == 69 and records.attrs["skip_counts"]["bad_image_id"] == 1
    [row] = _skipped_rows(root)
    assert (row["image_id"], row["reason"], row["line"], row["file"]) == (
        bad_id, "bad_image_id", "2", str(root / METADATA),
    )  # fmt: skip


def test_blank_lines_do_not_shift_line_numbers(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    lines = _metadata_lines(root)
    fields = lines[10].split(",")
    fields[2] = "xx"
    lines[10] = ",".join(fields)
    _write_metadata_lines(root, [*lines[:3], "", *lines[3:]])  # the bad row moves to line 12
    assert ", line 12, column dx: 'xx'" in _raises(root)


# --- empty after filtering ------------------------------------------------------------------------------
def test_nothing_left_after_skipping_is_fatal_and_says_why(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    table = pd.read_csv(root / METADATA, dtype=str, keep_default_na=False)
    table["dx"] = ["tumour"] * 60 + table["dx"].tolist()[60:]
    table.to_csv(root / METADATA, index=False)
    for path in sorted(root.glob("HAM10000_images_part_*/*.jpg")):
        if path.stem in set(table["image_id"][60:]):
            path.unlink()
    with pytest.raises(DataError) as error:
        _prepare(root, "skip")
    message = str(error.value)
    assert "\n" not in message and f"No usable images left in {root}: all 70 rows" in message
    assert "unknown_dx 60, image_missing 10" in message and str(root / layout.SKIPPED_CSV) in message
    assert len(_skipped_rows(root)) == 70


def test_empty_metadata_is_fatal(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    _write_metadata_lines(root, _metadata_lines(root)[:1])
    assert "has a header but no rows" in _raises(root)


# --- reporting ------------------------------------------------------------------------------------------
def test_reused_annotations_keep_the_skip_report(
    synthetic_copy: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = synthetic_copy()
    _image(root, "ISIC_0024330").write_bytes(b"")
    first = _prepare(root, "skip")
    stamp = (root / layout.ANNOTATIONS_JSON).stat().st_mtime_ns
    caplog.set_level(logging.INFO)
    second = _prepare(root, "skip")
    assert (root / layout.ANNOTATIONS_JSON).stat().st_mtime_ns == stamp  # reused, not redone
    assert set(ATTRS_KEYS) <= set(second.attrs) and second.attrs == first.attrs
    assert "Annotations: reusing" in caplog.text
    assert "69 of 70 listed images used, 1 skipped (image_unreadable 1; listed in" in caplog.text


def test_annotations_made_with_skip_are_redone_when_on_error_is_raise(
    synthetic_copy: Callable[..., Path],
) -> None:
    root = synthetic_copy()
    path = _image(root, "ISIC_0024330")
    path.write_bytes(b"")
    _prepare(root, "skip")
    assert f"Image file {path} cannot be read" in _raises(root)


def test_a_fixed_file_rejoins_and_the_stale_skipped_csv_goes(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    image = _image(root, "ISIC_0024330")
    good = image.read_bytes()
    image.write_bytes(b"")
    before = _prepare(root, "skip").set_index("image_id")["split"]
    assert (root / layout.SKIPPED_CSV).is_file()
    image.write_bytes(good)
    (root / layout.ANNOTATIONS_JSON).unlink()  # the documented way to re-annotate after a fix
    records = _prepare(root, "skip")
    assert len(records) == 70 and not (root / layout.SKIPPED_CSV).exists()
    assert records.attrs["skipped_csv"] is None
    after = records.set_index("image_id")["split"]  # the fixed image joins; nothing else moves
    assert after.loc[before.index].equals(before) and after.loc["ISIC_0024330"] in {"train", "val", "test"}


def test_skips_go_beside_the_annotations_when_the_download_is_elsewhere(
    synthetic_copy: Callable[..., Path], tmp_path: Path
) -> None:
    root = synthetic_copy()
    _image(root, "ISIC_0024330").unlink()
    out = tmp_path / "annotations"
    records = prepare_dataset(
        {
            "name": "ham10000",
            "root": str(root),
            "splits": SPLITS,
            "on_error": "skip",
            "annotations_dir": str(out),
        }
    )
    assert (
        records.attrs["skipped_csv"] == str(out / layout.SKIPPED_CSV) and (out / layout.SKIPPED_CSV).is_file()
    )
    assert not (root / layout.SKIPPED_CSV).exists()


def test_data_summary_has_a_key_for_every_reason(small_synthetic: Path, tmp_path: Path) -> None:
    records = prepare_dataset(
        {"name": "ham10000", "root": str(small_synthetic), "splits": SPLITS, "annotations_dir": str(tmp_path)}
    )
    summary = records.attrs["data_summary"]
    assert list(summary) == [
        "images_listed", "images_used", "skipped_total", *(f"skipped_{r}" for r in SKIP_REASONS),
        "masks_missing", "masks_empty", "masks_nonbinary", "masks_faint", "masks_16bit", "masks_color",
        "masks_full",
    ]  # fmt: skip
    assert all(isinstance(value, int) for value in summary.values())
    assert (summary["images_listed"], summary["images_used"], summary["masks_missing"]) == (70, 70, 7)


def test_unknown_on_error_value_is_refused(small_synthetic: Path) -> None:
    with pytest.raises(DataError, match=r"dataset\.on_error must be 'raise' or 'skip', got 'ignore'"):
        _prepare(small_synthetic, "ignore")


def test_data_errors_are_value_errors_and_keep_their_reason_across_processes() -> None:
    error = DataFileNotFoundError("Image file x.jpg does not exist.", reason="image_missing")
    assert isinstance(error, FileNotFoundError) and isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is DataFileNotFoundError and copy.reason == "image_missing" and str(copy) == str(error)


# --- links, oversized and padded-truncated images (issue 10) ---------------------------------------------
def _loop(path: Path, via: str | None = None) -> None:
    """Turn `path` into a symbolic link loop: to itself, or path -> via -> path."""
    path.unlink()
    if via is None:
        path.symlink_to(path.name)
    else:
        path.symlink_to(via)
        (path.parent / via).symlink_to(path.name)


@pytest.mark.parametrize("via", [None, "other.jpg"])
def test_image_that_is_a_symlink_loop_is_named_or_skipped(
    synthetic_copy: Callable[..., Path], via: str | None
) -> None:
    root = synthetic_copy()
    image_id = "ISIC_0024315"
    path = _image(root, image_id)
    _loop(path, via)
    message = _raises(root)
    assert (
        f"Image file {path} is a symbolic link loop" in message and "replace it with the real file" in message
    )
    records = _prepare(root, "skip")
    _assert_skipped_one(root, records, image_id, "image_unreadable", str(path))


@pytest.mark.parametrize("via", [None, "other_segmentation.png"])
def test_mask_that_is_a_symlink_loop_is_named_or_skipped(
    synthetic_copy: Callable[..., Path], via: str | None
) -> None:
    root = synthetic_copy()
    image_id = _first_masked_id(root)
    mask = _mask(root, image_id)
    _loop(mask, via)
    message = _raises(root)
    assert (
        f"Mask file {mask} is a symbolic link loop" in message
        and f"metadata line {_line_of(root, image_id)}" in message
    )
    records = _prepare(root, "skip")
    _assert_skipped_one(root, records, image_id, "mask_unreadable", str(mask))


def test_dangling_image_link_says_where_it_points(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    path = _image(root, "ISIC_0024316")
    path.unlink()
    path.symlink_to("/nonexistent/ISIC_0024316.jpg")
    assert (
        f"Image file {path} is a symbolic link to /nonexistent/ISIC_0024316.jpg, which does not exist"
        in _raises(root)
    )


def test_image_over_the_decompression_bomb_limit_is_one_line(bomb_png: Path) -> None:
    for read in (read_image_size, lambda path: load_image(path, (112, 84)), load_image):
        with pytest.raises(DataError) as error:
            read(bomb_png)
        message = str(error.value)
        assert "\n" not in message and error.value.reason == "image_too_large"
        assert f"Image file {bomb_png} has 400,000,000 pixels, more than the 89,478,485" in message
        assert "downscale it" in message


def test_image_over_the_limit_in_a_dataset_is_named_or_skipped(
    synthetic_copy: Callable[..., Path], bomb_png: Path
) -> None:
    root = synthetic_copy()
    image_id = "ISIC_0024317"
    path = _image(root, image_id)
    shutil.copyfile(bomb_png, path)  # a PNG named .jpg: PIL goes by the content
    assert f"Image file {path} has 400,000,000 pixels" in _raises(root)
    records = _prepare(root, "skip")
    _assert_skipped_one(root, records, image_id, "image_too_large", str(path))


def _cut_with_end_marker(path: Path, keep: float = 0.6) -> None:
    """Cut `path` and append FF D9, as a "repair" tool does: the end-marker check alone passes it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] + b"\xff\xd9")


def test_truncated_jpeg_with_an_appended_end_marker_is_truncated(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    image_id = "ISIC_0024318"
    path = _image(root, image_id)
    _cut_with_end_marker(path)
    with Image.open(path) as image:  # what the old check saw: a complete file that decodes fine
        image.load()
    message = _raises(root)
    assert f"Image file {path} is truncated" in message and "re-download" in message
    with pytest.raises(DataError, match="is truncated") as error:
        load_image(path, (112, 84))
    assert error.value.reason == "image_truncated"
    records = _prepare(root, "skip")
    _assert_skipped_one(root, records, image_id, "image_truncated", str(path))


@pytest.mark.parametrize("options", [{"quality": 90}, {"quality": 95, "subsampling": 0}, {"optimize": True}])
def test_complete_jpegs_pass_the_decode_check(tmp_path: Path, options: dict) -> None:
    rng = np.random.default_rng(0)
    for width, height in [(1, 1), (17, 9), (600, 450), (601, 451)]:
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        path = tmp_path / f"{width}x{height}.jpg"
        Image.fromarray(pixels).save(path, **options)
        assert read_image_size(path) == (width, height) and load_image(
            path, (max(1, width // 3), max(1, height // 3))
        )


# --- masks read at their bit depth and with their channels (issue 10) -----------------------------------
def _mask_pixels(root: Path, image_id: str) -> np.ndarray:
    return cv2.imread(str(_mask(root, image_id)), cv2.IMREAD_GRAYSCALE)


def _truth_bbox(root: Path, image_id: str) -> list[int]:
    row = pd.read_csv(root / layout.SYNTHETIC_GROUND_TRUTH_CSV).set_index("image_id").loc[image_id]
    return [int(row.x1), int(row.y1), int(row.x2), int(row.y2)]


@pytest.mark.parametrize("scale", [1, 257])  # 0/255 in a 16-bit file, and 0/65535
def test_16_bit_mask_is_read_at_its_bit_depth_and_counted(
    synthetic_copy: Callable[..., Path], caplog: pytest.LogCaptureFixture, scale: int
) -> None:
    root = synthetic_copy()
    image_id = _first_masked_id(root)
    cv2.imwrite(str(_mask(root, image_id)), _mask_pixels(root, image_id).astype(np.uint16) * scale)
    caplog.set_level(logging.WARNING)
    records = _prepare(root)
    assert records.set_index("image_id").loc[image_id, "bbox"] == _truth_bbox(root, image_id)
    assert records.attrs["masks_16bit"] == 1 and records.attrs["data_summary"]["masks_16bit"] == 1
    assert records.attrs["masks_empty"] == 0
    assert f"1 masks are 16-bit PNGs (first: ['{image_id}'])" in caplog.text


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_colour_mask_with_the_lesion_in_one_channel_is_the_lesion(
    synthetic_copy: Callable[..., Path], caplog: pytest.LogCaptureFixture, channel: int
) -> None:
    root = synthetic_copy()
    image_id = _first_masked_id(root)
    colour = np.zeros((180, 240, 3), dtype=np.uint8)
    colour[:, :, channel] = _mask_pixels(root, image_id)
    cv2.imwrite(str(_mask(root, image_id)), colour)
    caplog.set_level(logging.WARNING)
    records = _prepare(root)
    assert records.set_index("image_id").loc[image_id, "bbox"] == _truth_bbox(root, image_id)
    assert records.attrs["masks_color"] == 1 and records.attrs["masks_empty"] == 0
    assert "1 masks have colour channels that differ" in caplog.text and "0/1 masks?" not in caplog.text


def test_grey_mask_saved_as_rgb_is_not_flagged(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    image_id = _first_masked_id(root)
    cv2.imwrite(str(_mask(root, image_id)), cv2.cvtColor(_mask_pixels(root, image_id), cv2.COLOR_GRAY2BGR))
    records = _prepare(root)
    assert records.set_index("image_id").loc[image_id, "bbox"] == _truth_bbox(root, image_id)
    assert records.attrs["masks_color"] == 0 and records.attrs["masks_16bit"] == 0


def test_whole_image_mask_is_kept_and_reported(
    synthetic_copy: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = synthetic_copy()
    image_id = _first_masked_id(root)
    cv2.imwrite(str(_mask(root, image_id)), np.full((180, 240), 255, dtype=np.uint8))
    caplog.set_level(logging.WARNING)
    records = _prepare(root)
    row = records.set_index("image_id").loc[image_id]
    assert row["bbox"] == [0, 0, 240, 180] and row["area_fraction"] == 1.0
    assert records.attrs["masks_full"] == 1 and records.attrs["data_summary"]["masks_full"] == 1
    assert (
        f"1 masks mark the whole image as lesion (first: ['{image_id}']): a wrong or inverted mask?"
        in caplog.text
    )
    assert "1 whole-image" in format_data_summary(records.attrs)


# --- metadata columns and image copies (issue 10) -------------------------------------------------------
@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("second", ["dx", "DX", " dx"])
def test_metadata_with_two_dx_columns_is_fatal(
    synthetic_copy: Callable[..., Path], on_error: str, second: str
) -> None:
    root = synthetic_copy()
    lines = _metadata_lines(root)
    _write_metadata_lines(root, [f"{lines[0]},{second}"] + [f"{line},nv" for line in lines[1:]])
    with pytest.raises(DataError) as error:
        _prepare(root, on_error)
    message = str(error.value)
    assert "\n" not in message and f"Metadata file {root / METADATA} has a column more than once" in message
    assert "'dx' in columns 3, 9" in message and "delete the extra column" in message


def test_image_in_both_part_folders_with_other_content_is_named_or_skipped(
    synthetic_copy: Callable[..., Path],
) -> None:
    root = synthetic_copy()
    image_id = "ISIC_0024306"
    first = _image(root, image_id)
    assert first.parent.name == "HAM10000_images_part_1"
    other = root / "HAM10000_images_part_2" / first.name
    shutil.copyfile(_image(root, "ISIC_0024370"), other)  # another image's pixels under this id
    message = _raises(root)
    line = _line_of(root, image_id)
    assert f"Image {image_id} (metadata line {line}) has two different files, {first} and {other}" in message
    assert "delete the wrong one" in message
    records = _prepare(root, "skip")
    _assert_skipped_one(root, records, image_id, "duplicate_image_file", str(other))


def test_identical_copies_in_both_part_folders_are_counted(
    synthetic_copy: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = synthetic_copy()
    for image_id in ("ISIC_0024306", "ISIC_0024307"):
        shutil.copyfile(_image(root, image_id), root / "HAM10000_images_part_2" / f"{image_id}.jpg")
    caplog.set_level(logging.WARNING)
    records = _prepare(root)
    assert len(records) == 70 and records.attrs["data_summary"]["skipped_total"] == 0
    assert "2 images are in two image folders with identical content (first: ISIC_0024306" in caplog.text


# --- writes: a full disk, killed writers (issue 10) -----------------------------------------------------
def test_full_disk_during_annotation_names_the_file(
    synthetic_copy: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = synthetic_copy()

    def full_disk(path: Path, data: bytes) -> None:
        path.write_bytes(data[: len(data) // 2])  # what a full disk leaves: part of the temporary file
        raise OSError(errno.ENOSPC, "No space left on device")  # write() names no file

    monkeypatch.setattr(files, "_write_new_file", full_disk)
    with pytest.raises(OSError) as error:
        _prepare(root)
    assert error.value.errno == errno.ENOSPC
    assert error.value.filename == str(root / layout.ANNOTATIONS_SUMMARY_JSON)
    assert not [p for p in root.iterdir() if files.is_temp_file_name(p.name)]  # nothing half-written left


def test_stale_temporary_files_are_removed_and_reported(
    synthetic_copy: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = synthetic_copy()
    stale = root / f".{layout.ANNOTATIONS_JSON}.tmp-4242"
    fresh = root / f".{layout.SPLITS_CSV}.tmp-4343"  # another rank writing right now
    theirs = root / "notes.tmp-1"  # not our name pattern
    for path in (stale, fresh, theirs):
        path.write_text("partial")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    os.utime(theirs, (an_hour_ago, an_hour_ago))
    caplog.set_level(logging.WARNING)
    _prepare(root)
    assert not stale.exists() and fresh.exists() and theirs.exists()
    assert (
        f"Removed 1 temporary files left in {root} by interrupted writes (first: {stale.name})" in caplog.text
    )
