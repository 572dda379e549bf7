"""HAM10000 names and discovery: metadata spellings, delimiter sniffing, image and mask folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from skinderm.core import files
from skinderm.data import layout

HEADER = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
ROW = ["HAM_0000118", "ISIC_0027419", "bkl", "histo", "80.0", "male", "scalp", "vidir_modern"]


@pytest.mark.parametrize("name", ["HAM10000_metadata.csv", "HAM10000_metadata", "ham10000_metadata.CSV"])
def test_metadata_file_is_found_in_each_spelling(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text(",".join(HEADER) + "\n")
    assert layout.find_metadata_file(tmp_path).name == name


def test_metadata_without_extension_is_preferred_after_the_csv(tmp_path: Path) -> None:
    (tmp_path / "HAM10000_metadata").write_text("\t".join(HEADER) + "\n")
    (tmp_path / "HAM10000_metadata.csv").write_text(",".join(HEADER) + "\n")
    assert layout.find_metadata_file(tmp_path).name == "HAM10000_metadata.csv"


@pytest.mark.parametrize(("name", "delimiter"), [("HAM10000_metadata.csv", "\t"), ("HAM10000_metadata", ",")])
def test_delimiter_is_sniffed_from_content_not_name(tmp_path: Path, name: str, delimiter: str) -> None:
    path = tmp_path / name
    path.write_text(delimiter.join(HEADER) + "\n" + delimiter.join(ROW) + "\n")
    assert layout.sniff_delimiter(path) == delimiter


def test_missing_metadata_error_names_the_folder_and_expected_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"HAM10000_metadata\.csv") as error:
        layout.find_metadata_file(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_missing_root_says_to_set_dataset_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"dataset\.root"):
        layout.find_metadata_file(tmp_path / "nope")


def test_image_folders_cover_every_part_spelling(tmp_path: Path) -> None:
    names = [
        "HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images_part1", "HAM10000_images_part2",
        "ham10000_images_part_1", "ham10000_images_part_2", "HAM10000_images",
    ]  # fmt: skip
    for name in [*names, "HAM10000_images_part_3", "other_images", "HAM10000_segmentations_lesion_tschandl"]:
        (tmp_path / name).mkdir()
    found = [p.name for p in layout.find_image_folders(tmp_path)]
    assert sorted(found) == sorted(names)
    assert found.index("HAM10000_images_part_1") < found.index("ham10000_images_part_1")


def test_mask_folder_is_found_case_insensitively_or_none(tmp_path: Path) -> None:
    assert layout.find_mask_folder(tmp_path) is None
    (tmp_path / "ham10000_segmentations_lesion_tschandl").mkdir()
    assert layout.find_mask_folder(tmp_path).name == "ham10000_segmentations_lesion_tschandl"


def test_file_names_follow_ham10000() -> None:
    assert layout.image_filename("ISIC_0024306") == "ISIC_0024306.jpg"
    assert layout.mask_filename("ISIC_0024306") == "ISIC_0024306_segmentation.png"
    assert layout.MASK_FILE_PATTERN.fullmatch("ISIC_0024306_segmentation.png").group(1) == "ISIC_0024306"
    assert layout.IMAGE_FILE_PATTERN.fullmatch("ISIC_0024306.JPG")
    assert not layout.IMAGE_ID_PATTERN.fullmatch("../ISIC_0024306")


def test_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    files.atomic_write_text(tmp_path / "sub" / "out.json", "[]\n")
    assert (tmp_path / "sub" / "out.json").read_text() == "[]\n"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["out.json"]
