"""The dermoscopy style: overlapping class-conditional latents, a closed-form ceiling, HAM10000-like
framing, exact annotation of irregular masks, and a shifted acquisition with the same latents."""

from __future__ import annotations

import filecmp
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest

from skinderm.data import dermoscopy, layout, synthetic
from skinderm.data.annotation import annotate_dataset
from skinderm.data.classes import CLASS_CODES, LOCATIONS
from skinderm.data.errors import DataError
from skinderm.data.splits import make_splits
from skinderm.data.synthetic import generate_synthetic_ham10000

PARAMS: dict = {
    "num_images": 140,
    "seed": 5,
    "image_width": 240,
    "image_height": 180,
    "class_counts": dict.fromkeys(CLASS_CODES, 20),
    "multi_component_fraction": 0.25,
    "missing_mask_fraction": 0.1,
    "style": "dermoscopy",
}


@pytest.fixture(scope="module")
def derm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_ham10000(tmp_path_factory.mktemp("derm") / "ham", **PARAMS)


@pytest.fixture(scope="module")
def derm_shifted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_ham10000(
        tmp_path_factory.mktemp("shifted") / "ham", **{**PARAMS, "acquisition": "shifted"}
    )


def _truth(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / layout.SYNTHETIC_GROUND_TRUTH_CSV, keep_default_na=False)


# --- the latent model --------------------------------------------------------------------------


def test_cue_tables_are_distributions_and_no_cue_value_decides_the_class() -> None:
    for cue in dermoscopy.CATEGORICAL_CUES:
        table = np.asarray(cue.probabilities)
        assert table.shape == (len(CLASS_CODES), len(cue.values))
        assert np.allclose(table.sum(axis=1), 1.0) and (table > 0).all()
        posterior = table / table.sum(axis=0, keepdims=True)  # P(class | value), uniform prior
        assert posterior.max() < 0.75, cue.name  # every value is seen in several classes
    for cue in dermoscopy.GAUSSIAN_CUES:
        assert len(cue.means) == len(CLASS_CODES) and cue.sd > 0
        means = sorted(cue.means)
        assert min(b - a for a, b in itertools.pairwise(means)) < cue.sd  # neighbours overlap


def test_log_likelihood_is_the_closed_form_product_over_cues() -> None:
    latents = dermoscopy.sample_latents("mel", np.random.default_rng(0))
    expected = np.zeros(len(CLASS_CODES))
    for k in range(len(CLASS_CODES)):
        for cue in dermoscopy.CATEGORICAL_CUES:
            expected[k] += np.log(cue.probabilities[k][cue.values.index(latents[cue.name])])
        for cue in dermoscopy.GAUSSIAN_CUES:
            expected[k] += -0.5 * ((latents[cue.name] - cue.means[k]) / cue.sd) ** 2
    got = dermoscopy.latent_log_likelihoods(pd.DataFrame([latents]))[0]
    assert np.allclose(got, expected)
    prefixed = pd.DataFrame([{dermoscopy.LATENT_PREFIX + key: value for key, value in latents.items()}])
    assert np.allclose(dermoscopy.latent_log_likelihoods(prefixed)[0], expected)


def test_the_balanced_rule_beats_any_other_rule_on_average() -> None:
    """argmax p(z|y) maximises expected balanced accuracy: shifting its scores by a class bias loses."""
    rng = np.random.default_rng(1)
    dx = [code for code in CLASS_CODES for _ in range(1500)]
    frame = pd.DataFrame([dermoscopy.sample_latents(code, rng) for code in dx])
    y = np.asarray([CLASS_CODES.index(code) for code in dx])
    loglik = dermoscopy.latent_log_likelihoods(frame)
    best = np.mean([np.mean(loglik[y == k].argmax(axis=1) == k) for k in range(7)])
    for _ in range(5):
        bias = rng.normal(0, 0.7, size=7)
        other = np.mean([np.mean((loglik[y == k] + bias).argmax(axis=1) == k) for k in range(7)])
        assert other < best + 0.005


def test_expected_oracle_is_in_the_leaderboard_range_and_matches_the_recorded_constant() -> None:
    expected = dermoscopy.expected_balanced_accuracy(samples_per_class=3000, seed=3)
    assert 0.8 <= expected <= 0.92
    assert expected == pytest.approx(dermoscopy.EXPECTED_BALANCED_ACCURACY, abs=0.012)


# --- the generated dataset ---------------------------------------------------------------------


def test_layout_and_metadata_are_those_of_the_simple_style(derm: Path, tmp_path: Path) -> None:
    simple = generate_synthetic_ham10000(tmp_path / "simple", **{**PARAMS, "style": "simple"})
    for name in ("HAM10000_metadata.csv",):
        assert filecmp.cmp(simple / name, derm / name, shallow=False)
    listing = {p.relative_to(derm) for p in derm.rglob("*") if p.is_file()}
    assert listing - {Path(dermoscopy.SYNTHETIC_ORACLE_JSON)} == {
        p.relative_to(simple) for p in simple.rglob("*") if p.is_file()
    }
    truth = _truth(derm)
    assert list(truth.columns[: len(synthetic.GROUND_TRUTH_COLUMNS)]) == list(synthetic.GROUND_TRUTH_COLUMNS)
    assert set(dermoscopy.LATENT_COLUMNS) <= set(truth.columns)
    image = cv2.imread(str(next((derm / "HAM10000_images_part_1").iterdir())))
    assert image.shape == (180, 240, 3)


def test_latents_are_per_lesion_and_within_their_value_sets(derm: Path) -> None:
    truth = _truth(derm).merge(pd.read_csv(derm / "HAM10000_metadata.csv"), on="image_id")
    for cue in dermoscopy.CATEGORICAL_CUES:
        assert set(truth[dermoscopy.LATENT_PREFIX + cue.name]) <= set(cue.values)
    per_lesion = truth.groupby("lesion_id")[list(dermoscopy.LATENT_COLUMNS)].nunique()
    assert (per_lesion == 1).all().all()
    assert set(truth["oracle_dx"]) <= set(CLASS_CODES)


def test_oracle_json_is_the_bayes_rule_on_the_pipelines_splits(derm: Path) -> None:
    oracle = json.loads((derm / dermoscopy.SYNTHETIC_ORACLE_JSON).read_text())
    assert {"train", "val", "test", "all"} <= set(oracle)
    assert oracle["split_params"] == dermoscopy.DEFAULT_SPLIT_PARAMS
    metadata = pd.read_csv(derm / "HAM10000_metadata.csv")
    frame = metadata.merge(_truth(derm), on="image_id")
    split = make_splits(frame, **dermoscopy.DEFAULT_SPLIT_PARAMS)
    for name in ("train", "val", "test"):
        rows = frame[split == name]
        assert oracle[name]["n_images"] == len(rows)
        recalls = {
            dx: np.mean(rows.loc[rows["dx"] == dx, "oracle_dx"] == dx) for dx in sorted(set(rows["dx"]))
        }
        assert oracle[name]["balanced_accuracy"] == pytest.approx(np.mean(list(recalls.values())), abs=1e-4)
        assert oracle[name]["recall_per_class"] == pytest.approx(recalls, abs=1e-4)
        assert 0.0 <= oracle[name]["accuracy"] <= 1.0
    other = dermoscopy.write_oracle(derm, {"val_fraction": 0.2, "test_fraction": 0.3, "seed": 1})
    assert other["test"]["n_images"] != oracle["test"]["n_images"]
    dermoscopy.write_oracle(derm)  # leave the fixture as generated


def test_oracle_splits_are_the_splits_prepare_dataset_makes(derm: Path, tmp_path: Path) -> None:
    from skinderm.data.prepare import prepare_dataset

    records = prepare_dataset(
        {"name": "ham10000", "root": str(derm), "annotations_dir": str(tmp_path), "on_error": "raise"}
    )
    oracle = json.loads((derm / dermoscopy.SYNTHETIC_ORACLE_JSON).read_text())
    truth = _truth(derm).set_index("image_id")
    for name in ("train", "val", "test"):
        rows = records[records["split"] == name]
        assert len(rows) == oracle[name]["n_images"]
        predicted = truth.loc[rows["image_id"], "oracle_dx"].to_numpy()
        recalls = [np.mean(predicted[rows["dx"].to_numpy() == dx] == dx) for dx in sorted(set(rows["dx"]))]
        assert oracle[name]["balanced_accuracy"] == pytest.approx(np.mean(recalls), abs=1e-4)


def test_annotation_equals_the_generators_ground_truth_exactly(derm: Path, tmp_path: Path) -> None:
    records = annotate_dataset(derm, out_dir=tmp_path / "out", workers=1)
    truth = _truth(derm).set_index("image_id")
    with_mask = records[records["mask_available"]]
    assert len(with_mask) == int(truth["has_mask"].sum()) == 126
    for record in with_mask.itertuples():
        expected = truth.loc[record.image_id]
        assert record.bbox == [int(expected.x1), int(expected.y1), int(expected.x2), int(expected.y2)]
        assert record.location == expected.location
        assert record.n_components == int(expected.n_components)
        assert record.centroid == [float(expected.centroid_x), float(expected.centroid_y)]
        assert record.area_fraction == pytest.approx(float(expected.area_fraction), abs=1e-6)


def test_masks_are_irregular_some_touch_the_border_have_satellites_or_holes(derm: Path) -> None:
    truth = _truth(derm)
    truth = truth[truth["has_mask"]]
    touching = holed = irregular = 0
    for row in truth.itertuples():
        mask = cv2.imread(str(derm / layout.MASK_FOLDER_NAME / layout.mask_filename(row.image_id)), 0)
        assert set(np.unique(mask)) <= {0, 255}
        contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        holed += bool((hierarchy[0, :, 3] >= 0).any())
        largest = max(contours, key=cv2.contourArea)
        solidity = cv2.contourArea(largest) / max(1.0, cv2.contourArea(cv2.convexHull(largest)))
        irregular += solidity < 0.93
        touching += row.x1 == 0 or row.y1 == 0 or row.x2 == 240 or row.y2 == 180
    assert (truth["n_components"].astype(int) >= 2).sum() >= 10
    assert touching >= 5 and holed >= 1 and irregular >= 20


def test_framing_follows_ham10000_centred_with_widely_spread_sizes(tmp_path: Path) -> None:
    root = generate_synthetic_ham10000(
        tmp_path / "framing", num_images=500, seed=2, image_width=160, image_height=120,
        max_images_per_lesion=1, style="dermoscopy",
    )  # fmt: skip
    truth = _truth(root)
    share = truth["location"].value_counts(normalize=True)
    assert share.idxmax() == "center-center" and share["center-center"] >= 0.5
    assert set(share.index) <= set(LOCATIONS) and len(share) >= 5  # some lesions are framed off-centre
    area = truth["area_fraction"].astype(float)
    assert area.quantile(0.1) < 0.08 and area.quantile(0.9) > 0.35


def test_generation_is_deterministic_and_independent_of_the_worker_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = {**PARAMS, "num_images": 30, "image_width": 120, "image_height": 90}
    first = generate_synthetic_ham10000(tmp_path / "a", **small)
    monkeypatch.setattr(synthetic, "_IMAGES_PER_WORKER", 10)  # 2+ spawned workers where there are cores
    second = generate_synthetic_ham10000(tmp_path / "b", **small)
    listing = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert listing == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all(filecmp.cmp(first / f, second / f, shallow=False) for f in listing)
    other = generate_synthetic_ham10000(tmp_path / "c", **{**small, "seed": 6})
    assert not filecmp.cmp(
        first / layout.SYNTHETIC_GROUND_TRUTH_CSV, other / layout.SYNTHETIC_GROUND_TRUTH_CSV, shallow=False
    )


def test_shifted_acquisition_keeps_lesions_and_latents_and_changes_the_artefacts(
    derm: Path, derm_shifted: Path
) -> None:
    assert filecmp.cmp(derm / "HAM10000_metadata.csv", derm_shifted / "HAM10000_metadata.csv", shallow=False)
    standard, shifted = _truth(derm), _truth(derm_shifted)
    columns = [*dermoscopy.LATENT_COLUMNS, "oracle_dx"]
    pd.testing.assert_frame_equal(standard[columns], shifted[columns])
    standard_oracle = json.loads((derm / dermoscopy.SYNTHETIC_ORACLE_JSON).read_text())
    shifted_oracle = json.loads((derm_shifted / dermoscopy.SYNTHETIC_ORACLE_JSON).read_text())
    assert shifted_oracle["test"] == standard_oracle["test"]  # same lesions, same ceiling: a paired test
    assert standard["jpeg_quality"].astype(int).min() > shifted["jpeg_quality"].astype(int).max()
    assert shifted["n_bubbles"].astype(int).mean() > standard["n_bubbles"].astype(int).mean()
    assert shifted["n_hairs"].astype(int).mean() > standard["n_hairs"].astype(int).mean()
    assert shifted["area_fraction"].astype(float).median() < standard["area_fraction"].astype(float).median()


def test_artefacts_and_framing_do_not_depend_on_the_class() -> None:
    """The ceiling holds only if the class acts through the latents alone: same latents, same draws."""
    latents = dermoscopy.sample_latents("nv", np.random.default_rng(4))
    acquisition = dermoscopy.ACQUISITION_PRESETS["standard"]
    geometry = dermoscopy.lesion_geometry(latents, acquisition, np.random.default_rng(9))
    banks = dermoscopy.banks_for(120, 90, 0)
    images = [
        dermoscopy.draw_dermoscopy_image(
            latents, geometry, acquisition, width=120, height=90, rng=np.random.default_rng(2), banks=banks
        )
        for _ in range(2)
    ]
    assert np.array_equal(images[0].image_rgb, images[1].image_rgb)
    assert images[0].artefacts == images[1].artefacts


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"style": "photo"}, "dataset.synthetic.style must be one of simple, dermoscopy, got 'photo'"),
        ({"acquisition": "odd"}, "dataset.synthetic.acquisition must be one of standard, shifted"),
        ({"style": "simple", "acquisition": "shifted"}, "acquisition=shifted needs dataset.synthetic.style"),
    ],
)
def test_bad_style_or_acquisition_is_refused_before_any_work(
    tmp_path: Path, override: dict, message: str
) -> None:
    with pytest.raises(DataError) as error:
        synthetic.ensure_synthetic_dataset(tmp_path / "ham", **{**PARAMS, **override})
    assert message in str(error.value)
    assert not (tmp_path / "ham").exists()


def test_synthesize_cli_prints_the_oracle(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    out = tmp_path / "cli"
    result = run_cli(
        "skinderm.synthesize", f"out={out}", "dataset.synthetic.num_images=70",
        "dataset.synthetic.image_width=120", "dataset.synthetic.image_height=90",
        "dataset.synthetic.style=dermoscopy", "dataset.splits.seed=3", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Oracle ceiling (Bayes classifier of the latents), balanced accuracy: train " in result.stdout
    oracle = json.loads((out / dermoscopy.SYNTHETIC_ORACLE_JSON).read_text())
    assert oracle["split_params"]["seed"] == 3  # scored on the splits this config makes
    assert f"test {oracle['test']['balanced_accuracy']:.3f}" in result.stdout
