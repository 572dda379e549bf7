"""prepare_dataset: generate, annotate and split on demand; reuse what is current."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from skinderm.data import layout
from skinderm.data.annotation import RECORD_COLUMNS
from skinderm.data.prepare import prepare_dataset

SYNTHETIC = {
    "num_images": 42, "seed": 1, "image_width": 120, "image_height": 90,
    "class_counts": {"akiec": 1, "bcc": 1, "bkl": 1, "df": 1, "mel": 1, "nv": 1, "vasc": 1},
    "max_images_per_lesion": 2, "multi_component_fraction": 0.1, "missing_mask_fraction": 0.1,
}  # fmt: skip
SPLITS = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0}


def _cfg(root: Path, **overrides) -> dict:
    return {"name": "synthetic", "root": str(root), "synthetic": SYNTHETIC, "splits": SPLITS,
            "on_error": "raise", "annotations_dir": None, **overrides}  # fmt: skip


def test_synthetic_dataset_is_generated_annotated_and_split(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    records = prepare_dataset(OmegaConf.create(_cfg(root)))  # what the entrypoints pass
    assert list(records.columns) == [*RECORD_COLUMNS, "split", "image_path_abs", "mask_path_abs"]
    assert len(records) == 42
    for name in ("HAM10000_metadata.csv", layout.ANNOTATIONS_JSON, layout.ANNOTATIONS_CSV, layout.SPLITS_CSV):
        assert (root / name).is_file()
    assert set(records["split"]) == {"train", "val", "test"}
    assert (records.groupby("lesion_id")["split"].nunique() == 1).all()
    assert all(Path(p).is_file() for p in records["image_path_abs"])
    with_mask = records["mask_path"].notna()
    assert all(Path(p).is_file() for p in records.loc[with_mask, "mask_path_abs"])
    assert records.loc[~with_mask, "mask_path_abs"].isna().all() and (~with_mask).sum() == 4
    splits = pd.read_csv(root / layout.SPLITS_CSV)
    assert splits.set_index("image_id")["split"].to_dict() == records.set_index("image_id")["split"].to_dict()


def test_a_second_call_reuses_everything(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    first = prepare_dataset(_cfg(root))
    stamps = {
        n: (root / n).stat().st_mtime_ns
        for n in ("HAM10000_metadata.csv", layout.ANNOTATIONS_JSON, layout.SPLITS_CSV)
    }
    second = prepare_dataset(_cfg(root))
    assert stamps == {n: (root / n).stat().st_mtime_ns for n in stamps}
    pd.testing.assert_frame_equal(first, second)


def test_changed_split_parameters_remake_the_splits_only(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    first = prepare_dataset(_cfg(root))
    json_stamp = (root / layout.ANNOTATIONS_JSON).stat().st_mtime_ns
    second = prepare_dataset(_cfg(root, splits={**SPLITS, "seed": 5}))
    assert (root / layout.ANNOTATIONS_JSON).stat().st_mtime_ns == json_stamp
    assert not first["split"].equals(second["split"])


def test_annotations_older_than_the_metadata_are_redone(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    prepare_dataset(_cfg(root))
    (root / layout.ANNOTATIONS_JSON).write_text("[]")  # stale and wrong
    os.utime(root / layout.ANNOTATIONS_JSON, ns=(1, 1))  # older than HAM10000_metadata.csv
    assert len(prepare_dataset(_cfg(root))) == 42


def test_annotations_of_another_annotation_version_are_redone(tmp_path: Path) -> None:
    """A rule change (a new ANNOTATION_VERSION) must reach cached annotations, not only new folders."""
    import json

    root = tmp_path / "synthetic"
    prepare_dataset(_cfg(root))
    summary_path = root / layout.ANNOTATIONS_SUMMARY_JSON
    summary = json.loads(summary_path.read_text())
    summary["annotation_version"] = summary["annotation_version"] - 1
    summary_path.write_text(json.dumps(summary))
    (root / layout.ANNOTATIONS_JSON).write_text("[]")  # what the old rules "found": must not be reused
    assert len(prepare_dataset(_cfg(root))) == 42
    assert json.loads(summary_path.read_text())["annotation_version"] == summary["annotation_version"] + 1


def test_real_layout_with_tab_metadata_and_separate_annotation_folder(
    synthetic_copy: Callable[..., Path], tmp_path: Path
) -> None:
    root = synthetic_copy("download")
    table = pd.read_csv(root / "HAM10000_metadata.csv")
    (root / "HAM10000_metadata.csv").unlink()
    table.to_csv(root / "HAM10000_metadata", sep="\t", index=False)
    (root / "HAM10000_images_part_2").rename(root / "ham10000_images_part2")
    out = tmp_path / "annotations"
    records = prepare_dataset(
        {
            "name": "ham10000",
            "root": str(root),
            "synthetic": None,
            "splits": SPLITS,
            "annotations_dir": str(out),
        }
    )
    assert (
        len(records) == 70
        and (out / layout.ANNOTATIONS_JSON).is_file()
        and (out / layout.SPLITS_CSV).is_file()
    )
    assert not (root / layout.ANNOTATIONS_JSON).exists()
    assert records["image_path"].str.startswith("ham10000_images_part2/").any()


def test_skip_mode_leaves_out_missing_images_and_reports_them(
    synthetic_copy: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = synthetic_copy()
    next((root / "HAM10000_images_part_1").iterdir()).unlink()
    with pytest.raises(FileNotFoundError, match="1 of 70 images"):
        prepare_dataset({"name": "ham10000", "root": str(root), "splits": SPLITS})
    caplog.set_level("WARNING")
    records = prepare_dataset({"name": "ham10000", "root": str(root), "splits": SPLITS, "on_error": "skip"})
    assert len(records) == 69
    assert "69 of 70 listed images used, 1 skipped (image_missing 1; listed in" in caplog.text
    assert records.attrs["data_summary"]["skipped_image_missing"] == 1


def test_missing_root_is_explained() -> None:
    cfg = OmegaConf.create({"name": "ham10000", "root": "???", "synthetic": None})
    with pytest.raises(ValueError, match=r"dataset.root is required"):
        prepare_dataset(cfg)


def test_splits_file_that_misses_images_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    prepare_dataset(_cfg(root))
    (root / layout.SPLITS_PARAMS_JSON).unlink()  # now a user-given file, used as it is
    lines = (root / layout.SPLITS_CSV).read_text().splitlines()
    (root / layout.SPLITS_CSV).write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(ValueError, match="no split for 2 annotated images"):
        prepare_dataset(_cfg(root))
