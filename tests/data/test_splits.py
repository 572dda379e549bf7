"""Lesion-grouped, dx-stratified splits: no leakage, every class everywhere, sizes near the fractions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinderm.data.classes import CLASS_CODES, HAM10000_CLASS_COUNTS
from skinderm.data.splits import extend_splits, make_splits, read_splits, split_summary, write_splits


def _ham_like(n_lesions: int = 1500, seed: int = 0) -> pd.DataFrame:
    """HAM10000's class mix, 1-3 images per lesion, rows in a shuffled order."""
    rng = np.random.default_rng(seed)
    mix = np.array([HAM10000_CLASS_COUNTS[c] for c in CLASS_CODES], dtype=float)
    rows = []
    for lesion in range(n_lesions):
        dx = CLASS_CODES[int(rng.choice(7, p=mix / mix.sum()))]
        for _ in range(int(rng.choice([1, 2, 3], p=[0.75, 0.18, 0.07]))):
            rows.append({"image_id": f"ISIC_{len(rows):07d}", "lesion_id": f"HAM_{lesion:07d}", "dx": dx})
    frame = pd.DataFrame(rows)
    return frame.iloc[rng.permutation(len(frame))].set_index(pd.Index(range(100, 100 + len(frame))))


def test_no_lesion_is_in_two_splits() -> None:
    frame = _ham_like()
    split = make_splits(frame)
    assert split.index.equals(frame.index)
    assert (frame.assign(split=split).groupby("lesion_id")["split"].nunique() == 1).all()


def test_every_class_is_in_every_split_and_sizes_follow_the_fractions() -> None:
    frame = _ham_like()
    split = make_splits(frame, val_fraction=0.1, test_fraction=0.2)
    table = pd.crosstab(frame["dx"], split)
    assert (table[["train", "val", "test"]] > 0).all().all()
    shares = split.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.01)
    assert shares["val"] == pytest.approx(0.1, abs=0.01)
    assert shares["test"] == pytest.approx(0.2, abs=0.01)
    per_class_test = table["test"] / table.sum(axis=1)
    assert per_class_test[["nv", "mel", "bkl"]].between(0.17, 0.23).all()


def test_a_class_with_three_lesions_lands_in_all_three_splits() -> None:
    frame = pd.DataFrame(
        {
            "image_id": [f"ISIC_{i:07d}" for i in range(5)],
            "lesion_id": ["a", "a", "b", "c", "c"],
            "dx": ["df"] * 5,
        }
    )
    assert set(make_splits(frame)) == {"train", "val", "test"}


def test_rare_classes_go_to_train_first_then_test() -> None:
    frame = pd.DataFrame(
        {"image_id": ["ISIC_0000001", "ISIC_0000002"], "lesion_id": ["a", "b"], "dx": ["df", "df"]}
    )
    assert sorted(make_splits(frame)) == ["test", "train"]
    assert list(make_splits(frame.iloc[:1])) == ["train"]


def test_splits_are_deterministic_by_seed() -> None:
    frame = _ham_like(400)
    assert make_splits(frame, seed=3).equals(make_splits(frame, seed=3))
    assert not make_splits(frame, seed=3).equals(make_splits(frame, seed=4))


def test_zero_validation_fraction_gives_no_validation_split() -> None:
    assert "val" not in set(make_splits(_ham_like(300), val_fraction=0.0))


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.2), (0.5, 0.5), (0.1, 1.2)])
def test_invalid_fractions_are_rejected(val: float, test: float) -> None:
    with pytest.raises(ValueError, match="fractions"):
        make_splits(_ham_like(50), val_fraction=val, test_fraction=test)


def test_splits_csv_round_trips(tmp_path: Path) -> None:
    frame = _ham_like(200)
    split = make_splits(frame)
    table = read_splits(write_splits(frame, split, tmp_path / "splits.csv"))
    assert list(table.columns) == ["image_id", "lesion_id", "dx", "split"]
    assert table["image_id"].tolist() == frame["image_id"].tolist()
    assert table["split"].tolist() == split.tolist()


def test_a_splits_file_that_splits_a_lesion_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "splits.csv"
    path.write_text(
        "image_id,lesion_id,dx,split\nISIC_0000001,HAM_0000001,nv,train\nISIC_0000002,HAM_0000001,nv,test\n"
    )
    with pytest.raises(ValueError, match="several splits"):
        read_splits(path)


def test_summary_counts_images_per_class_and_split() -> None:
    frame = _ham_like(300)
    summary = split_summary(frame, make_splits(frame))
    assert summary.loc["All", "All"] == len(frame)
    assert list(summary.columns) == ["train", "val", "test", "All"]


def test_extending_splits_keeps_every_earlier_assignment_and_never_splits_a_lesion() -> None:
    frame = _ham_like(n_lesions=600)
    held_back = frame.iloc[:80]  # e.g. skipped as unreadable when the splits were made, fixed since
    first = frame.iloc[80:]
    known = first[["image_id", "lesion_id", "dx"]].assign(split=make_splits(first).to_numpy())
    split = extend_splits(frame, known)
    assert split.index.equals(frame.index)
    assert split.loc[first.index].tolist() == known["split"].tolist()
    assert (frame.assign(split=split).groupby("lesion_id")["split"].nunique() == 1).all()
    new_lesions = held_back[~held_back["lesion_id"].isin(known["lesion_id"])]
    assert len(new_lesions) > 20 and set(split.loc[new_lesions.index]) <= {"train", "val", "test"}
    reordered = frame.iloc[::-1]
    assert extend_splits(reordered, known).loc[frame.index].equals(split)  # row order does not matter
