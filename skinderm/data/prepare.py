"""`prepare_dataset(dataset_cfg)`: the one call training and evaluation make to get their records.

It does whatever is missing, and only that: generate the synthetic dataset (cached by its
parameters), annotate masks (json missing or older than the metadata), make splits (splits.csv
missing or made with other parameters). Every rank of a multi-GPU run may call it: a file lock
lets one of them do the work while the others wait and reuse it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from skinderm.core import files
from skinderm.core.files import to_plain
from skinderm.data import layout
from skinderm.data.annotation import (
    ANNOTATION_VERSION,
    annotate_dataset,
    annotation_attrs,
    format_data_summary,
    load_annotations,
    read_annotation_summary,
)
from skinderm.data.errors import DataError
from skinderm.data.ham10000 import check_on_error
from skinderm.data.skipped import read_skipped_csv
from skinderm.data.splits import extend_splits, make_splits, read_splits, split_summary, write_splits
from skinderm.data.synthetic import ensure_synthetic_dataset, is_synthetic_dataset_current

log = logging.getLogger(__name__)

_SPLIT_DEFAULTS: dict[str, Any] = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}


def _required(dataset_cfg: Mapping, key: str, hint: str) -> Any:
    try:
        value = dataset_cfg[key]
    except Exception as error:  # KeyError, or omegaconf's MissingMandatoryValue for `???`
        raise ValueError(f"dataset.{key} is required: {hint}") from error
    if value is None or value == "???":
        raise ValueError(f"dataset.{key} is required: {hint}")
    return value


def prepare_dataset(dataset_cfg: Mapping) -> pd.DataFrame:
    """Annotated records + `split` + absolute `image_path_abs` / `mask_path_abs` for the configured dataset.

    Keys read: name, root, synthetic (generator parameters, for name == "synthetic"), splits
    (val_fraction, test_fraction, seed), on_error (raise | skip), annotations_dir (optional: where
    the json/csv, splits.csv and skipped.csv go; default the dataset root, which may then be read-only).

    Bad data raises a one-line `DataError` or, with on_error=skip, is left out and listed in
    skipped.csv (docs/data.md). `attrs` says what happened, for reused annotations too (keys:
    `skinderm.data.annotation.ATTRS_KEYS`; `attrs["data_summary"]` is a flat str -> int dict for
    metrics), and one summary line is logged.
    """
    name = str(_required(dataset_cfg, "name", "synthetic or ham10000"))
    root = Path(str(_required(dataset_cfg, "root", "pass dataset.root=/path/to/HAM10000"))).expanduser()
    on_error = check_on_error(str(dataset_cfg.get("on_error", "raise")))
    annotations_dir = dataset_cfg.get("annotations_dir")
    out_dir = root if annotations_dir in (None, "") else Path(str(annotations_dir)).expanduser()
    split_params = {**_SPLIT_DEFAULTS, **to_plain(dataset_cfg.get("splits") or {})}
    unknown = sorted(set(split_params) - set(_SPLIT_DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown dataset.splits keys {unknown}; allowed: {sorted(_SPLIT_DEFAULTS)}.")

    if name == "synthetic":
        params = to_plain(_required(dataset_cfg, "synthetic", "the generator parameters (dataset=synthetic)"))
        if is_synthetic_dataset_current(root, **params):
            log.info("Synthetic dataset: reusing %s", root)
        else:
            ensure_synthetic_dataset(root, **params)
            log.info("Synthetic dataset: generated %s", root)

    out_dir.mkdir(parents=True, exist_ok=True)
    with files.exclusive_lock(out_dir / layout.PREPARE_LOCK):
        files.remove_stale_temp_files(out_dir)
        records = _annotations(root, out_dir, on_error)
        split = _splits(records, out_dir, split_params)

    attrs = dict(records.attrs)
    records = records.assign(split=split.to_numpy())
    records.attrs = attrs
    records["image_path_abs"] = [str(root / path) for path in records["image_path"]]
    records["mask_path_abs"] = [None if path is None else str(root / path) for path in records["mask_path"]]
    summary = split_summary(records, records["split"])
    log.info("Dataset %s (%s): %d images, images per class and split:\n%s", name, root, len(records), summary)
    if not records["mask_available"].all():
        log.info("%d images have no usable mask (no geometry)", int((~records["mask_available"]).sum()))
    level = logging.WARNING if attrs["data_summary"]["skipped_total"] else logging.INFO
    log.log(level, "Data summary for %s: %s", root, format_data_summary(attrs))
    return records


def _annotations(root: Path, out_dir: Path, on_error: str) -> pd.DataFrame:
    """The annotated records with their run's `attrs`: reused when current, else annotated now."""
    json_path = out_dir / layout.ANNOTATIONS_JSON
    metadata_path = layout.find_metadata_file(root)
    stale = _stale_reason(json_path, metadata_path, out_dir, on_error)
    if stale is None:
        records = load_annotations(json_path)
        summary = read_annotation_summary(out_dir)
        assert summary is not None  # checked by _stale_reason
        if summary["images_used"] == len(records) and not records.empty:
            records.attrs.update(annotation_attrs(summary, read_skipped_csv(out_dir), out_dir))
            log.info("Annotations: reusing %s (%d images)", json_path, len(records))
            return records
        stale = f"inconsistent with its summary ({len(records)} records, {summary['images_used']} expected)"
    log.info("Annotations: %s is %s, annotating %s", json_path, stale, root)
    return annotate_dataset(root, out_dir=out_dir, on_error=on_error)  # type: ignore[arg-type]


def _stale_reason(json_path: Path, metadata_path: Path, out_dir: Path, on_error: str) -> str | None:
    """Why the annotations must be redone, or None when they can be reused."""
    if not json_path.is_file():
        return "missing"
    if json_path.stat().st_mtime < metadata_path.stat().st_mtime:
        return "older than the metadata"
    summary = read_annotation_summary(out_dir)
    if summary is None:
        return (
            f"without a current summary {layout.ANNOTATIONS_SUMMARY_JSON} (missing, or written by another "
            f"annotation version than {ANNOTATION_VERSION})"
        )
    skipped = sum(int(count) for count in summary["skip_counts"].values())
    if skipped and not (out_dir / layout.SKIPPED_CSV).is_file():
        return f"without the {layout.SKIPPED_CSV} its summary mentions"
    if skipped and on_error == "raise":
        # Made under on_error=skip: redo, so that raise reports the first bad file it left out.
        return f"made with on_error=skip ({skipped} images left out) but on_error is raise"
    return None


def _splits(records: pd.DataFrame, out_dir: Path, params: dict[str, Any]) -> pd.Series:
    splits_path = out_dir / layout.SPLITS_CSV
    params_path = out_dir / layout.SPLITS_PARAMS_JSON
    if splits_path.is_file():
        stored = json.loads(params_path.read_text(encoding="utf-8")) if params_path.is_file() else None
        if stored is None or stored == params:
            return _aligned_splits(records, splits_path, params, user_made=stored is None)
        log.info("Splits: %s was made with %s, remaking it with %s", splits_path, stored, params)
    split = make_splits(records, **params)
    write_splits(records, split, splits_path)
    files.atomic_write_text(params_path, json.dumps(params, sort_keys=True) + "\n")
    log.info("Splits: wrote %s (%s)", splits_path, params)
    return split


def _aligned_splits(
    records: pd.DataFrame, splits_path: Path, params: dict[str, Any], *, user_made: bool
) -> pd.Series:
    table = read_splits(splits_path)
    by_image = table.set_index("image_id")
    known = records["image_id"].isin(by_image.index).to_numpy()
    missing = records.loc[~known, "image_id"].tolist()
    if missing and user_made:
        raise DataError(
            f"Split file {splits_path} has no split for {len(missing)} annotated images "
            f"(first: {missing[:5]}); add them to it, or delete it to have it remade."
        )
    stored_lesion = records["image_id"].map(by_image["lesion_id"]).to_numpy()
    lesion_changed = known & (records["lesion_id"].to_numpy() != stored_lesion)
    if lesion_changed.any():
        raise DataError(
            f"Split file {splits_path} disagrees with the metadata about the lesion of "
            f"{int(lesion_changed.sum())} images; delete it to have it remade."
        )
    split = extend_splits(records, table, **params)
    if missing:
        # Images skipped when the splits were made, since fixed: place them without moving the others.
        added = records.loc[~known, ["image_id", "lesion_id", "dx"]].assign(split=split[~known].to_numpy())
        combined = pd.concat([table, added], ignore_index=True)
        files.atomic_write_text(splits_path, combined.to_csv(index=False, lineterminator="\n"))
        log.info("Splits: added %d images to %s, earlier assignments kept", len(missing), splits_path)
    else:
        log.info("Splits: %s %s", "given" if user_made else "reusing", splits_path)
    return pd.Series(split.to_numpy(), index=records.index, name="split", dtype=object)


def frame_to_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as dicts with missing values as None (pandas gives NaN, which JSON and TRL dislike)."""
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return records
