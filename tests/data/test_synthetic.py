"""The synthetic HAM10000: real names, columns and value sets; deterministic; learnable; cached."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinderm.data import layout
from skinderm.data.classes import CLASS_CODES, LOCATIONS
from skinderm.data.errors import DataError
from skinderm.data.splits import make_splits
from skinderm.data.synthetic import (
    LOCALIZATION_WEIGHTS,
    default_class_counts,
    ensure_synthetic_dataset,
    generate_synthetic_ham10000,
    is_synthetic_dataset_current,
    synthetic_metadata,
)

TINY = {"num_images": 24, "seed": 3, "image_width": 120, "image_height": 90}
# Both styles must write the same HAM10000 layout: the tests below that take `style` run on each.
STYLES = ["simple", "dermoscopy"]


@pytest.fixture(scope="module")
def small_dermoscopy(tmp_path_factory: pytest.TempPathFactory, small_synthetic_params: dict) -> Path:
    """The session dataset's parameters in the dermoscopy style."""
    return generate_synthetic_ham10000(
        tmp_path_factory.mktemp("dermoscopy") / "ham", **{**small_synthetic_params, "style": "dermoscopy"}
    )


@pytest.fixture
def styled(request: pytest.FixtureRequest) -> Path:
    """The small dataset in the style the test is parametrised with."""
    return request.getfixturevalue("small_synthetic" if request.param == "simple" else "small_dermoscopy")


@pytest.mark.parametrize("styled", STYLES, indirect=True)
def test_layout_has_ham10000_names_and_columns(styled: Path, small_synthetic_params: dict) -> None:
    small_synthetic = styled
    entries = {p.name for p in small_synthetic.iterdir()}
    assert {
        "HAM10000_metadata.csv", "HAM10000_images_part_1", "HAM10000_images_part_2",
        "HAM10000_segmentations_lesion_tschandl", "synthetic_ground_truth.csv", ".complete",
    } <= entries  # fmt: skip
    metadata = pd.read_csv(small_synthetic / "HAM10000_metadata.csv")
    assert list(metadata.columns) == list(layout.METADATA_COLUMNS)
    numbers = sorted(int(i[5:]) for i in metadata["image_id"])
    assert numbers == list(range(24306, 24306 + small_synthetic_params["num_images"]))
    assert metadata["image_id"].str.fullmatch(r"ISIC_\d{7}").all()
    assert metadata["lesion_id"].str.fullmatch(r"HAM_\d{7}").all()
    part_1 = sorted(p.name for p in (small_synthetic / "HAM10000_images_part_1").iterdir())
    part_2 = sorted(p.name for p in (small_synthetic / "HAM10000_images_part_2").iterdir())
    assert len(part_1) == 35 and len(part_2) == 35
    assert sorted(part_1 + part_2) == sorted(f"{i}.jpg" for i in metadata["image_id"])


@pytest.mark.parametrize("styled", STYLES, indirect=True)
def test_metadata_values_come_from_ham10000_value_sets(styled: Path) -> None:
    small_synthetic = styled
    metadata = pd.read_csv(small_synthetic / "HAM10000_metadata.csv")
    assert set(metadata["dx"]) == set(CLASS_CODES)
    assert set(metadata["dx_type"]) <= {"histo", "follow_up", "consensus", "confocal"}
    assert set(metadata["sex"]) <= {"male", "female", "unknown"}
    assert set(metadata["localization"]) <= set(LOCALIZATION_WEIGHTS)
    assert len(LOCALIZATION_WEIGHTS) == 15 and "unknown" in LOCALIZATION_WEIGHTS
    assert set(metadata["dataset"]) <= {"vidir_molemax", "vidir_modern", "rosendahl", "vienna_dias"}
    ages = metadata["age"].dropna()
    assert metadata["age"].isna().sum() >= 1  # a few missing, as in HAM10000
    assert ((ages % 5 == 0) & (ages >= 0) & (ages <= 85)).all()


@pytest.mark.parametrize("styled", STYLES, indirect=True)
def test_images_of_one_lesion_share_diagnosis_and_metadata(styled: Path) -> None:
    small_synthetic = styled
    metadata = pd.read_csv(small_synthetic / "HAM10000_metadata.csv")
    per_lesion = metadata.groupby("lesion_id").nunique(dropna=False)
    assert (per_lesion[["dx", "dx_type", "sex", "localization", "dataset"]] == 1).all().all()
    assert (metadata.groupby("lesion_id").size() > 1).any()
    assert metadata.groupby("lesion_id").size().max() <= 3


@pytest.mark.parametrize("styled", STYLES, indirect=True)
def test_images_are_jpeg_and_masks_single_channel_binary_of_the_same_size(styled: Path) -> None:
    small_synthetic = styled
    masks = sorted((small_synthetic / layout.MASK_FOLDER_NAME).iterdir())
    for mask_path in masks[:10]:
        image_id = mask_path.name.removesuffix("_segmentation.png")
        image_path = next(small_synthetic.glob(f"HAM10000_images_part_*/{image_id}.jpg"))
        with Image.open(image_path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (240, 180)
        with Image.open(mask_path) as mask_image:
            assert mask_image.mode == "L" and mask_image.size == (240, 180)
        assert set(np.unique(np.asarray(Image.open(mask_path)))) == {0, 255}


@pytest.mark.parametrize("styled", STYLES, indirect=True)
def test_missing_mask_fraction_leaves_masks_out(styled: Path) -> None:
    small_synthetic = styled
    truth = pd.read_csv(small_synthetic / layout.SYNTHETIC_GROUND_TRUTH_CSV)
    masks = {p.name for p in (small_synthetic / layout.MASK_FOLDER_NAME).iterdir()}
    assert (~truth["has_mask"]).sum() == 7  # 10 % of 70
    for row in truth.itertuples():
        assert (layout.mask_filename(row.image_id) in masks) == row.has_mask


@pytest.mark.parametrize("styled", STYLES, indirect=True)
def test_annotation_agrees_with_the_ground_truth_on_every_image(styled: Path, tmp_path: Path) -> None:
    """Largest 8-connected component, exact: irregular, holed and border-touching masks included."""
    from skinderm.data.annotation import annotate_dataset

    records = annotate_dataset(styled, out_dir=tmp_path / "out", workers=1).set_index("image_id")
    truth = pd.read_csv(styled / layout.SYNTHETIC_GROUND_TRUTH_CSV, keep_default_na=False)
    assert records["mask_available"].sum() == truth["has_mask"].sum() == 63
    for row in truth[truth["has_mask"]].itertuples():
        record = records.loc[row.image_id]
        assert record.bbox == [row.x1, row.y1, row.x2, row.y2]
        assert (record.location, record.n_components) == (row.location, row.n_components)
        assert record.centroid == [row.centroid_x, row.centroid_y]
        assert record.area_fraction == pytest.approx(row.area_fraction, abs=1e-6)


def test_satellite_is_smaller_than_the_main_lesion_and_does_not_touch_it(small_synthetic: Path) -> None:
    truth = pd.read_csv(small_synthetic / layout.SYNTHETIC_GROUND_TRUTH_CSV)
    with_satellite = truth[(truth["n_components"] == 2) & truth["has_mask"]]
    assert len(with_satellite) >= 10
    for row in with_satellite.itertuples():
        mask = cv2.imread(
            str(small_synthetic / layout.MASK_FOLDER_NAME / layout.mask_filename(row.image_id)), 0
        )
        count, _, stats, _ = cv2.connectedComponentsWithStats((mask > 127).astype(np.uint8), connectivity=8)
        assert count - 1 == 2  # separate under 8-connectivity, so they do not touch
        areas = sorted(stats[1:, cv2.CC_STAT_AREA])
        assert areas[0] < 0.2 * areas[1]


def test_lesions_cover_about_8_to_25_percent_of_the_image(small_synthetic: Path) -> None:
    truth = pd.read_csv(small_synthetic / layout.SYNTHETIC_GROUND_TRUTH_CSV)
    assert truth["area_fraction"].between(0.04, 0.3).all()
    assert truth["area_fraction"].median() == pytest.approx(0.16, abs=0.05)


def test_generation_is_deterministic_by_seed(tmp_path: Path) -> None:
    first = generate_synthetic_ham10000(tmp_path / "a", **TINY)
    second = generate_synthetic_ham10000(tmp_path / "b", **TINY)
    other = generate_synthetic_ham10000(tmp_path / "c", **{**TINY, "seed": 4})
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all(filecmp.cmp(first / f, second / f, shallow=False) for f in files)
    assert not filecmp.cmp(first / "HAM10000_metadata.csv", other / "HAM10000_metadata.csv", shallow=False)


def test_default_class_mix_follows_ham10000_with_every_class_present() -> None:
    counts = default_class_counts(1500)
    assert sum(counts.values()) == 1500
    assert counts["nv"] == max(counts.values()) and counts["nv"] == pytest.approx(1500 * 6705 / 10015, abs=1)
    assert min(default_class_counts(20).values()) >= 1


def test_synthetic_metadata_is_what_generation_writes(tmp_path: Path) -> None:
    params = {**TINY, "num_images": 30, "class_counts": {"mel": 1, "df": 2}}
    root = generate_synthetic_ham10000(tmp_path / "m", **params)
    written = pd.read_csv(root / "HAM10000_metadata.csv")
    predicted = synthetic_metadata(**params)
    pd.testing.assert_frame_equal(
        written[["image_id", "lesion_id", "dx"]], predicted[["image_id", "lesion_id", "dx"]]
    )


def test_embedded_default_has_30_test_images_of_every_class_and_nv_majority() -> None:
    """conf/dataset/synthetic.yaml: the acceptance check's test split holds >= 30 images of each class."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_module("skinderm.conf", version_base="1.3"):
        cfg = compose(config_name="synthesize", overrides=["paths.root_dir=/nonexistent"])
    GlobalHydra.instance().clear()
    metadata = synthetic_metadata(**OmegaConf.to_container(cfg.dataset.synthetic, resolve=True))
    split = make_splits(metadata, **OmegaConf.to_container(cfg.dataset.splits, resolve=True))
    test_counts = metadata.loc[split == "test", "dx"].value_counts()
    assert set(test_counts.index) == set(CLASS_CODES)
    assert test_counts.min() >= 30
    class_share = metadata["dx"].value_counts(normalize=True)
    assert class_share.idxmax() == "nv" and class_share["nv"] > 0.5  # still HAM10000-like: mostly nevi


def test_class_counts_are_weights_scaled_to_num_images(tmp_path: Path) -> None:
    root = generate_synthetic_ham10000(
        tmp_path / "w", **{**TINY, "num_images": 21, "class_counts": {"mel": 2, "nv": 1}}
    )
    counts = pd.read_csv(root / "HAM10000_metadata.csv")["dx"].value_counts().to_dict()
    assert counts == {"mel": 14, "nv": 7}
    with pytest.raises(ValueError, match="unknown dx codes"):
        generate_synthetic_ham10000(tmp_path / "x", **{**TINY, "class_counts": {"melanoma": 1}})


def test_each_class_has_a_distinct_colour_after_downscaling_to_112x84(small_synthetic: Path) -> None:
    """Learnability: a nearest-centroid rule on the mean lesion colour at 112x84 tells the classes apart."""
    metadata = pd.read_csv(small_synthetic / "HAM10000_metadata.csv").set_index("image_id")
    truth = pd.read_csv(small_synthetic / layout.SYNTHETIC_GROUND_TRUTH_CSV)
    features, labels = [], []
    for row in truth[truth["has_mask"]].itertuples():
        image_path = next(small_synthetic.glob(f"HAM10000_images_part_*/{row.image_id}.jpg"))
        image = np.asarray(Image.open(image_path).convert("RGB").resize((112, 84), Image.Resampling.BICUBIC))
        mask = cv2.imread(
            str(small_synthetic / layout.MASK_FOLDER_NAME / layout.mask_filename(row.image_id)), 0
        )
        small_mask = cv2.resize(mask, (112, 84), interpolation=cv2.INTER_NEAREST) > 127
        features.append(image[small_mask].mean(axis=0))
        labels.append(metadata.loc[row.image_id, "dx"])
    features_array, labels_array = np.asarray(features), np.asarray(labels)
    centroids = {dx: features_array[labels_array == dx].mean(axis=0) for dx in CLASS_CODES}
    predicted = [min(centroids, key=lambda dx: np.linalg.norm(f - centroids[dx])) for f in features_array]
    assert np.mean(np.asarray(predicted) == labels_array) >= 0.95


def test_lesion_centres_cover_every_grid_cell(tmp_path: Path) -> None:
    root = generate_synthetic_ham10000(
        tmp_path / "cells", num_images=270, seed=1, image_width=96, image_height=72, max_images_per_lesion=1,
        multi_component_fraction=0.0,
    )  # fmt: skip
    counts = pd.read_csv(root / layout.SYNTHETIC_GROUND_TRUTH_CSV)["location"].value_counts()
    assert set(counts.index) == set(LOCATIONS)
    assert counts.min() >= 15  # uniform would be 30 per cell


def test_ensure_reuses_a_complete_dataset_and_regenerates_when_parameters_change(tmp_path: Path) -> None:
    root = ensure_synthetic_dataset(tmp_path / "cache", **TINY)
    marker = json.loads((root / layout.COMPLETE_MARKER).read_text())
    assert marker["params"]["num_images"] == 24
    (root / layout.ANNOTATIONS_JSON).write_text("[]")  # derived from the old data
    stamp = (root / "HAM10000_metadata.csv").stat().st_mtime_ns
    assert ensure_synthetic_dataset(root, **TINY) == root
    assert (root / "HAM10000_metadata.csv").stat().st_mtime_ns == stamp
    assert is_synthetic_dataset_current(root, **TINY)
    assert not is_synthetic_dataset_current(root, **{**TINY, "multi_component_fraction": 0.5})
    ensure_synthetic_dataset(root, **{**TINY, "multi_component_fraction": 0.5})
    assert is_synthetic_dataset_current(root, **{**TINY, "multi_component_fraction": 0.5})
    assert not (root / layout.ANNOTATIONS_JSON).exists()


def test_a_folder_without_the_complete_marker_is_regenerated(tmp_path: Path) -> None:
    root = ensure_synthetic_dataset(tmp_path / "partial", **TINY)
    (root / layout.COMPLETE_MARKER).unlink()
    victim = next((root / "HAM10000_images_part_2").iterdir())
    victim.unlink()  # as if generation had been interrupted
    assert not is_synthetic_dataset_current(root, **TINY)
    ensure_synthetic_dataset(root, **TINY)
    assert victim.exists() and (root / layout.COMPLETE_MARKER).exists()


def test_generator_refuses_to_overwrite_data_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "HAM10000_metadata").write_text("lesion_id\timage_id\n")
    with pytest.raises(DataError, match="holds HAM10000 data that the generator did not write"):
        generate_synthetic_ham10000(tmp_path / "real", **TINY)
    assert (tmp_path / "real" / "HAM10000_metadata").exists()


def test_unknown_or_invalid_parameters_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown synthetic dataset parameters"):
        ensure_synthetic_dataset(tmp_path / "x", **TINY, colour="red")
    with pytest.raises(ValueError, match="missing_mask_fraction"):
        generate_synthetic_ham10000(tmp_path / "y", **{**TINY, "missing_mask_fraction": 1.5})


def test_lock_file_is_inside_the_dataset_folder_not_beside_it(tmp_path: Path) -> None:
    parent = tmp_path / "cache"
    parent.mkdir()
    root = ensure_synthetic_dataset(parent / "ham", **TINY)
    assert [p.name for p in parent.iterdir()] == ["ham"]
    assert (root / layout.SYNTHESIZE_LOCK).is_file()


def test_an_interrupted_generation_is_redone_not_refused(tmp_path: Path) -> None:
    root = ensure_synthetic_dataset(tmp_path / "ham", **TINY)
    for name in (layout.COMPLETE_MARKER, layout.SYNTHETIC_GROUND_TRUTH_CSV, "HAM10000_metadata.csv"):
        (root / name).unlink()  # killed while drawing: only the first marker and some images are there
    ensure_synthetic_dataset(root, **TINY)
    assert is_synthetic_dataset_current(root, **TINY)


@pytest.mark.parametrize("foreign", ["notes.txt", "HAM10000_metadata.csv", "HAM10000_images_part_1"])
def test_a_folder_with_files_the_generator_did_not_write_is_left_untouched(
    tmp_path: Path, foreign: str
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    if foreign.startswith("HAM10000_images"):
        (out / foreign).mkdir()
        (out / foreign / "ISIC_0000001.jpg").write_bytes(b"real data")
    else:
        (out / foreign).write_text("lesion_id,image_id\n")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match=f"holds .* that the generator did not write \\({foreign}\\)"):
        ensure_synthetic_dataset(out, **TINY)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # no lock file either
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"num_images": 0}, "dataset.synthetic.num_images must be at least 1 (HAM10000 has 10,015), got 0"),
        ({"image_width": 0}, "dataset.synthetic.image_width must be between 48 and 8192 pixels"),
        ({"image_height": 100000}, "dataset.synthetic.image_height must be between 36 and 8192 pixels"),
        ({"image_width": 4000, "image_height": 40}, "is more elongated than 10:1"),
        ({"image_width": "wide"}, "dataset.synthetic.image_width must be a whole number, got 'wide'"),
        ({"num_images": 2.5}, "dataset.synthetic.num_images must be a whole number, got 2.5"),
        ({"seed": -1}, "dataset.synthetic.seed must be at least 0, got -1"),
        ({"max_images_per_lesion": 0}, "dataset.synthetic.max_images_per_lesion must be at least 1"),
        ({"class_counts": {"nv": -1}}, "dataset.synthetic.class_counts {'nv': -1.0} must be non-negative"),
        ({"class_counts": {"nv": "many"}}, "dataset.synthetic.class_counts weights must be numbers"),
    ],
)
def test_nonsense_parameters_are_refused_before_any_work(
    tmp_path: Path, override: dict, message: str
) -> None:
    with pytest.raises(DataError) as error:
        ensure_synthetic_dataset(tmp_path / "ham", **{**TINY, **override})
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "ham").exists()
