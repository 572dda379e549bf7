"""Train/val/test splits grouped by lesion and stratified by diagnosis.

HAM10000 has several images of many lesions; a lesion on both sides of a split leaks its look into
the test score, so whole lesions are assigned. Stratifying per dx keeps the rare classes (df, vasc:
about 1% each) present in every split, which balanced accuracy needs.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinderm.core import files
from skinderm.data.classes import CLASS_CODES

log = logging.getLogger(__name__)

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
SPLIT_COLUMNS: tuple[str, ...] = ("image_id", "lesion_id", "dx", "split")
# When a class has fewer lesions than splits, this is the order they are served in.
_PRESENCE_ORDER: tuple[str, ...] = ("train", "test", "val")


def make_splits(
    df: pd.DataFrame, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> pd.Series:
    """Split name per row of `df` (index aligned; values train/val/test).

    Per dx: shuffle its lesions (seeded), take them largest first, give each split with a nonzero
    fraction one lesion when the class has enough (>= 3 lesions: all three), then give each further
    lesion to the split furthest below its target image count. A lesion with images of several dx
    values (not in HAM10000) is stratified under its most frequent dx.
    """
    for name in ("image_id", "lesion_id", "dx"):
        if name not in df.columns:
            raise ValueError(f"make_splits needs column {name!r}; got {list(df.columns)}.")
    _check_fractions(val_fraction, test_fraction)
    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    if df.empty:
        return pd.Series([], index=df.index, dtype=object, name="split")

    lesion_sizes = df.groupby("lesion_id", sort=True).size()
    lesion_dx = df.groupby("lesion_id", sort=True)["dx"].agg(lambda values: values.value_counts().index[0])
    lesion_split: dict[str, str] = {}
    rng = np.random.default_rng(seed)
    dx_order = [dx for dx in CLASS_CODES if dx in set(lesion_dx)] + sorted(set(lesion_dx) - set(CLASS_CODES))
    for dx in dx_order:
        lesions = lesion_dx.index[lesion_dx == dx].to_numpy()
        lesions = lesions[rng.permutation(len(lesions))]
        # Largest lesions first pack better; the stable sort keeps the shuffle among equal sizes.
        sizes = lesion_sizes.loc[lesions].to_numpy()
        lesions = lesions[np.argsort(-sizes, kind="stable")]
        total = int(lesion_sizes.loc[lesions].sum())
        targets = {name: fractions[name] * total for name in SPLIT_NAMES}
        counts = dict.fromkeys(SPLIT_NAMES, 0)
        wanted = [name for name in _PRESENCE_ORDER if fractions[name] > 0]
        for position, lesion in enumerate(lesions):
            if position < len(wanted):
                name = wanted[position]  # one lesion each first, so every split sees the class
            else:
                name = max(wanted, key=lambda s: (targets[s] - counts[s], -SPLIT_NAMES.index(s)))
            lesion_split[str(lesion)] = name
            counts[name] += int(lesion_sizes.loc[lesion])
    return pd.Series(df["lesion_id"].map(lesion_split).to_numpy(), index=df.index, dtype=object, name="split")


def extend_splits(
    df: pd.DataFrame,
    known: pd.DataFrame,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> pd.Series:
    """Split per row of `df` (index aligned) that keeps every assignment of `known` (a `read_splits` table).

    For images that were left out when the splits were made (skipped, then fixed): an image of a
    lesion `known` already places joins that lesion's split (no leakage); a new lesion gets a split
    drawn with the fractions from a generator seeded by (seed, lesion_id), so the result does not
    depend on row order and no earlier image moves (models trained on the old splits stay comparable).
    """
    _check_fractions(val_fraction, test_fraction)
    by_image = known.set_index("image_id")["split"]
    by_lesion = known.drop_duplicates("lesion_id").set_index("lesion_id")["split"]
    bounds = np.cumsum([1.0 - val_fraction - test_fraction, val_fraction])
    splits: list[str] = []
    for image_id, lesion_id in zip(df["image_id"], df["lesion_id"], strict=True):
        if image_id in by_image.index:
            splits.append(str(by_image[image_id]))
        elif lesion_id in by_lesion.index:
            splits.append(str(by_lesion[lesion_id]))
        else:
            draw = np.random.default_rng([seed, zlib.crc32(str(lesion_id).encode())]).random()
            splits.append(SPLIT_NAMES[int(np.searchsorted(bounds, draw, side="right"))])
    return pd.Series(splits, index=df.index, dtype=object, name="split")


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"Split fractions must be >= 0 and leave room for training: val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}."
        )


def write_splits(df: pd.DataFrame, split: pd.Series, path: str | Path) -> Path:
    """Write `splits.csv` (image_id, lesion_id, dx, split) atomically; returns its path."""
    path = Path(path)
    if not split.index.equals(df.index):
        raise ValueError("write_splits: the split Series must be index-aligned with the DataFrame.")
    table = df[["image_id", "lesion_id", "dx"]].assign(split=split.to_numpy())
    files.atomic_write_text(path, table.to_csv(index=False, lineterminator="\n"))
    return path


def read_splits(path: str | Path) -> pd.DataFrame:
    """`splits.csv` back as a DataFrame, checked for columns, split names and lesion leakage."""
    path = Path(path)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in SPLIT_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"Split file {path} lacks columns {missing}; delete it to have it remade.")
    bad = sorted(set(table["split"]) - set(SPLIT_NAMES))
    if bad:
        raise ValueError(f"Split file {path} has unknown split names {bad}; use {list(SPLIT_NAMES)}.")
    leaking = table.groupby("lesion_id")["split"].nunique()
    leaking = leaking[leaking > 1]
    if not leaking.empty:
        raise ValueError(
            f"Split file {path} puts {len(leaking)} lesion(s) in several splits (first: {leaking.index[0]}); "
            "images of one lesion must share a split. Delete it to have it remade."
        )
    return table[list(SPLIT_COLUMNS)]


def split_summary(df: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    """Images per dx (rows, class order) and split (columns), with totals: for logs and reports."""
    table = pd.crosstab(pd.Categorical(df["dx"], categories=CLASS_CODES), split.to_numpy(), margins=True)
    table.index.name, table.columns.name = "dx", "split"
    return table.reindex(columns=[*(s for s in SPLIT_NAMES if s in table.columns), "All"])


def subsample(records: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    """A seeded, order-stable subset (for eval sets that must stay cheap)."""
    if not limit or len(records) <= limit:
        return records
    keep = np.sort(np.random.default_rng(seed).choice(len(records), size=int(limit), replace=False))
    return [records[index] for index in keep]
