"""Reading a HAM10000 folder: both metadata formats, validation messages, image and mask discovery."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from skinderm.data import layout
from skinderm.data.ham10000 import find_images, find_masks, index_dataset, read_metadata

HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization,dataset"


def _write_metadata(
    root: Path, rows: list[str], *, header: str = HEADER, name: str = "HAM10000_metadata.csv"
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_comma_csv_and_tab_file_without_extension_read_the_same(
    small_synthetic: Path, synthetic_copy: Callable[..., Path]
) -> None:
    root = synthetic_copy()
    comma = read_metadata(small_synthetic)
    table = pd.read_csv(root / "HAM10000_metadata.csv")
    (root / "HAM10000_metadata.csv").unlink()
    table.to_csv(root / "HAM10000_metadata", sep="\t", index=False)  # the Dataverse form
    tab = read_metadata(root)
    pd.testing.assert_frame_equal(comma, tab)
    assert list(tab.columns) == list(layout.METADATA_COLUMNS)
    assert tab["age"].dtype == float and tab["age"].isna().any()


def test_metadata_without_dataset_column_gets_nulls(tmp_path: Path) -> None:
    _write_metadata(
        tmp_path, ["HAM_0000118,ISIC_0027419,bkl,histo,80.0,male,scalp"],
        header="lesion_id,image_id,dx,dx_type,age,sex,localization",
    )  # fmt: skip
    table = read_metadata(tmp_path)
    assert list(table.columns) == list(layout.METADATA_COLUMNS)
    assert table["dataset"].isna().all()


def test_unknown_dx_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = _write_metadata(
        tmp_path,
        [
            "HAM_0000118,ISIC_0027419,bkl,histo,80.0,male,scalp,x",
            "HAM_0000119,ISIC_0027420,MEL,histo,,male,scalp,x",
        ],
    )
    with pytest.raises(ValueError, match=r"line 3, column dx: 'MEL'") as error:
        read_metadata(tmp_path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("image_id", ["../../etc/passwd", "ISIC_0027419/../x", "ISIC_27419", ""])
def test_image_ids_that_are_not_isic_ids_are_rejected(tmp_path: Path, image_id: str) -> None:
    _write_metadata(tmp_path, [f"HAM_0000118,{image_id},bkl,histo,80.0,male,scalp,x"])
    with pytest.raises(ValueError, match="column image_id"):
        read_metadata(tmp_path)


def test_duplicate_image_ids_are_rejected(tmp_path: Path) -> None:
    row = "HAM_0000118,ISIC_0027419,bkl,histo,80.0,male,scalp,x"
    _write_metadata(tmp_path, [row, row])
    with pytest.raises(ValueError, match="more than once: ISIC_0027419"):
        read_metadata(tmp_path)


def test_missing_required_column_is_named(tmp_path: Path) -> None:
    _write_metadata(tmp_path, ["HAM_0000118,ISIC_0027419,80.0"], header="lesion_id,image_id,age")
    with pytest.raises(ValueError, match=r"lacks columns \['dx', 'dx_type', 'sex', 'localization'\]"):
        read_metadata(tmp_path)


def test_missing_age_spellings_read_as_nan(tmp_path: Path) -> None:
    rows = [
        f"HAM_000011{i},ISIC_002741{i},nv,histo,{age},male,back,x"
        for i, age in enumerate(["", "NA", "nan", "45.0"])
    ]
    _write_metadata(tmp_path, rows)
    assert read_metadata(tmp_path)["age"].isna().tolist() == [True, True, True, False]


def test_non_numeric_age_is_reported(tmp_path: Path) -> None:
    _write_metadata(tmp_path, ["HAM_0000118,ISIC_0027419,bkl,histo,old,male,scalp,x"])
    with pytest.raises(ValueError, match="column age: 'old'"):
        read_metadata(tmp_path)


def test_images_are_found_in_every_part_folder_spelling(tmp_path: Path) -> None:
    for folder, image_id in [
        ("HAM10000_images_part_1", "ISIC_0000001"), ("HAM10000_images_part2", "ISIC_0000002"),
        ("ham10000_images_part_1", "ISIC_0000003"), ("HAM10000_images", "ISIC_0000004"),
    ]:  # fmt: skip
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{image_id}.jpg").write_bytes(b"")
    (tmp_path / "HAM10000_images_part_1" / "notes.txt").write_text("")
    found = find_images(tmp_path)
    assert list(found) == ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004"]
    assert found["ISIC_0000003"].parent.name == "ham10000_images_part_1"


def test_kaggle_duplicate_folders_keep_the_canonical_copy(tmp_path: Path) -> None:
    for folder in ("HAM10000_images_part_1", "ham10000_images_part_1"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "ISIC_0000001.jpg").write_bytes(b"")
    assert find_images(tmp_path)["ISIC_0000001"].parent.name == "HAM10000_images_part_1"


def test_masks_are_found_or_empty(small_synthetic: Path, tmp_path: Path) -> None:
    masks = find_masks(small_synthetic)
    assert len(masks) == 63 and all(p.name == f"{i}_segmentation.png" for i, p in masks.items())
    assert find_masks(tmp_path) == {}


def test_missing_images_raise_with_count_and_first_ids(synthetic_copy: Callable[..., Path]) -> None:
    root = synthetic_copy()
    removed = sorted((root / "HAM10000_images_part_2").iterdir())[:3]
    for path in removed:
        path.unlink()
    with pytest.raises(FileNotFoundError, match="3 of 70 images") as error:
        index_dataset(root)
    assert removed[0].stem in str(error.value) and "on_error=skip" in str(error.value)
    index = index_dataset(root, on_error="skip")
    assert sorted(index.missing_images) == [p.stem for p in removed]
    assert len(index.metadata) == 67 and not index.metadata["image_id"].isin(index.missing_images).any()


def test_folder_without_images_explains_what_to_unzip(tmp_path: Path) -> None:
    _write_metadata(tmp_path, ["HAM_0000118,ISIC_0027419,bkl,histo,80.0,male,scalp,x"])
    with pytest.raises(FileNotFoundError, match="HAM10000_images_part_1"):
        index_dataset(tmp_path)
