"""The ISIC 2018 Task 3 test-set reader: official layout in, evaluation records (no masks) out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinderm.data.isic2018 import (
    GROUND_TRUTH_COLUMNS,
    OFFICIAL_ZERO_WEIGHT_IMAGES,
    RECORD_COLUMNS,
    SCORE_WEIGHT_COLUMN,
    read_isic2018_test,
)

# image id -> (challenge column, size)
IMAGES = {
    "ISIC_0034524": ("NV", (600, 450)),
    "ISIC_0034525": ("MEL", (600, 450)),
    "ISIC_0034526": ("BKL", (640, 480)),
    "ISIC_0034527": ("AKIEC", (600, 450)),
    "ISIC_0034528": ("VASC", (450, 600)),
    "ISIC_0034529": ("DF", (600, 450)),
    "ISIC_0034530": ("BCC", (600, 450)),
}


def write_isic2018_test(
    root: Path,
    *,
    images_folder: str = "ISIC2018_Task3_Test_Input",
    truth_in_folder: bool = False,
    images: dict[str, tuple[str, tuple[int, int]]] = IMAGES,
    weight_columns: dict[str, dict[str, str]] | None = None,
) -> Path:
    """A small copy of the official layout: JPEGs, the one-hot ground truth, the archive's extra files.

    `weight_columns` ({column: {image_id: cell}}) appends columns such as score_weight to the truth file,
    as the challenge platform's newer truth files have them."""
    folder = root / images_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id, (_, (width, height)) in images.items():
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{image_id}.jpg", quality=80)
    (folder / "LICENSE.txt").write_text("CC-BY-NC\n")
    (folder / "ATTRIBUTION.txt").write_text("ISIC\n")
    truth_dir = root / "ISIC2018_Task3_Test_GroundTruth" if truth_in_folder else root
    truth_dir.mkdir(exist_ok=True)
    extra = weight_columns or {}
    lines = ["image," + ",".join([*GROUND_TRUTH_COLUMNS, *extra])]
    for image_id, (column, _) in images.items():
        cells = ["1.0" if c == column else "0.0" for c in GROUND_TRUTH_COLUMNS]
        cells += [values[image_id] for values in extra.values()]
        lines.append(image_id + "," + ",".join(cells))
    (truth_dir / "ISIC2018_Task3_Test_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    return root


def test_records_have_the_prepare_dataset_shape_and_the_true_classes(tmp_path: Path) -> None:
    root = write_isic2018_test(tmp_path / "isic")
    frame = read_isic2018_test(root)
    assert list(frame.columns) == list(RECORD_COLUMNS)
    assert len(frame) == len(IMAGES)
    by_id = frame.set_index("image_id")
    for image_id, (column, (width, height)) in IMAGES.items():
        row = by_id.loc[image_id]
        assert row["dx"] == column.lower()
        assert (row["image_width"], row["image_height"]) == (width, height)
        assert row["lesion_id"] == image_id, "no grouping file: every image is its own lesion"
        assert Path(row["image_path_abs"]).is_file()
        assert row["image_path"] == f"ISIC2018_Task3_Test_Input/{image_id}.jpg"
    assert set(frame["split"]) == {"test"}
    assert not frame["mask_available"].any()
    assert (
        frame["bbox"].isna().all() and frame["location"].isna().all() and frame["mask_path_abs"].isna().all()
    )


def test_alternative_image_folder_and_ground_truth_folder_are_found(tmp_path: Path) -> None:
    root = write_isic2018_test(
        tmp_path / "isic", images_folder="ISIC2018_Task3_Test_Images", truth_in_folder=True
    )
    frame = read_isic2018_test(root)
    assert sorted(frame["image_id"]) == sorted(IMAGES)


def test_lesion_groupings_file_groups_images(tmp_path: Path) -> None:
    root = write_isic2018_test(tmp_path / "isic")
    (root / "ISIC2018_Task3_Test_LesionGroupings.csv").write_text(
        "image,lesion_id\n"
        + "\n".join(f"{image_id},HAM_{i // 2:07d}" for i, image_id in enumerate(IMAGES))
        + "\n"
    )
    frame = read_isic2018_test(root)
    assert frame.set_index("image_id").loc["ISIC_0034525", "lesion_id"] == "HAM_0000000"
    assert frame["lesion_id"].nunique() == 4


def test_a_row_that_is_not_one_hot_is_rejected_by_image_id(tmp_path: Path) -> None:
    root = write_isic2018_test(tmp_path / "isic")
    csv = root / "ISIC2018_Task3_Test_GroundTruth.csv"
    csv.write_text(
        csv.read_text().replace("ISIC_0034526,0.0,0.0,0.0,0.0,1.0", "ISIC_0034526,0.0,1.0,0.0,0.0,1.0")
    )
    with pytest.raises(ValueError, match="ISIC_0034526"):
        read_isic2018_test(root)


def test_a_missing_class_column_is_named(tmp_path: Path) -> None:
    root = write_isic2018_test(tmp_path / "isic")
    csv = root / "ISIC2018_Task3_Test_GroundTruth.csv"
    csv.write_text(csv.read_text().replace("VASC", "VASCULAR"))
    with pytest.raises(ValueError, match="VASC"):
        read_isic2018_test(root)


def test_a_missing_image_raises_or_is_skipped_and_counted(tmp_path: Path) -> None:
    root = write_isic2018_test(tmp_path / "isic")
    (root / "ISIC2018_Task3_Test_Input" / "ISIC_0034527.jpg").unlink()
    (root / "ISIC2018_Task3_Test_Input" / "ISIC_0034528.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(FileNotFoundError, match=r"ISIC_0034527.*on_error=skip"):
        read_isic2018_test(root)
    frame = read_isic2018_test(root, on_error="skip")
    assert len(frame) == len(IMAGES) - 2
    assert sorted(image_id for image_id, _ in frame.attrs["skipped"]) == ["ISIC_0034527", "ISIC_0034528"]


def test_missing_layout_parts_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such folder"):
        read_isic2018_test(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="ISIC2018_Task3_Test_Input"):
        read_isic2018_test(tmp_path / "empty")
    root = write_isic2018_test(tmp_path / "isic")
    (root / "ISIC2018_Task3_Test_GroundTruth.csv").unlink()
    with pytest.raises(FileNotFoundError, match="ground truth"):
        read_isic2018_test(root)


def test_images_without_ground_truth_are_not_evaluated(tmp_path: Path) -> None:
    root = write_isic2018_test(tmp_path / "isic")
    Image.new("RGB", (60, 45)).save(root / "ISIC2018_Task3_Test_Input" / "ISIC_0099999.jpg")
    assert "ISIC_0099999" not in set(read_isic2018_test(root)["image_id"])


# The official scorer's weights (isic_challenge_scoring/load_csv.py, parse_truth_csv).
WITH_ZERO_WEIGHT_IMAGE = {**IMAGES, "ISIC_0035068": ("NV", (600, 450))}


def test_every_image_weighs_1_except_the_one_the_official_scorer_weighs_0(tmp_path: Path) -> None:
    assert {"ISIC_0035068"} == OFFICIAL_ZERO_WEIGHT_IMAGES
    frame = read_isic2018_test(write_isic2018_test(tmp_path / "isic", images=WITH_ZERO_WEIGHT_IMAGE))
    weights = dict(zip(frame["image_id"], frame[SCORE_WEIGHT_COLUMN], strict=True))
    assert weights == {
        image_id: 0.0 if image_id == "ISIC_0035068" else 1.0 for image_id in WITH_ZERO_WEIGHT_IMAGE
    }


def test_a_score_weight_column_is_honoured_and_isic_0035068_stays_0(tmp_path: Path) -> None:
    cells = {image_id: str(0.5 * i) for i, image_id in enumerate(WITH_ZERO_WEIGHT_IMAGE)}
    cells["ISIC_0035068"] = "1.0"  # the scorer overrides the file for this image
    root = write_isic2018_test(
        tmp_path / "isic",
        images=WITH_ZERO_WEIGHT_IMAGE,
        weight_columns={"score_weight": cells, "validation_weight": dict.fromkeys(cells, "1.0")},
    )
    frame = read_isic2018_test(root)
    weights = dict(zip(frame["image_id"], frame[SCORE_WEIGHT_COLUMN], strict=True))
    expected = {image_id: float(cell) for image_id, cell in cells.items()} | {"ISIC_0035068": 0.0}
    assert weights == expected
    assert weights["ISIC_0034524"] == 0.0, "a 0 in the file's column is kept (that image is not scored)"


@pytest.mark.parametrize("bad", ["-1.0", "nan", "heavy", ""])
def test_a_score_weight_that_is_not_a_number_at_least_0_is_named(tmp_path: Path, bad: str) -> None:
    cells = dict.fromkeys(IMAGES, "1.0") | {"ISIC_0034527": bad}
    root = write_isic2018_test(tmp_path / "isic", weight_columns={"score_weight": cells})
    with pytest.raises(ValueError, match=r"ISIC_0034527 has score_weight"):
        read_isic2018_test(root)


def test_a_truth_file_that_scores_nothing_is_refused(tmp_path: Path) -> None:
    root = write_isic2018_test(tmp_path / "isic", weight_columns={"score_weight": dict.fromkeys(IMAGES, "0")})
    with pytest.raises(ValueError, match="nothing is scored"):
        read_isic2018_test(root)


def test_a_missing_image_of_weight_0_is_left_out_even_when_errors_raise(tmp_path: Path) -> None:
    root = write_isic2018_test(tmp_path / "isic", images=WITH_ZERO_WEIGHT_IMAGE)
    (root / "ISIC2018_Task3_Test_Input" / "ISIC_0035068.jpg").unlink()
    frame = read_isic2018_test(root)  # on_error="raise"
    assert "ISIC_0035068" not in set(frame["image_id"]) and len(frame) == len(IMAGES)
    assert [image_id for image_id, _ in frame.attrs["skipped"]] == ["ISIC_0035068"]
    (root / "ISIC2018_Task3_Test_Input" / "ISIC_0034524.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="ISIC_0034524"):
        read_isic2018_test(root)
