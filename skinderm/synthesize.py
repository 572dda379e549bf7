"""Write a synthetic HAM10000 (real layout, names and metadata values; drawn lesions) + its ground truth.

    python -m skinderm.synthesize out=/tmp/ham_synth dataset.synthetic.num_images=200
    python -m skinderm.synthesize                       # into the cache that dataset=synthetic trains on
    python -m skinderm.synthesize out=/tmp/derm dataset.synthetic.style=dermoscopy

The dermoscopy style also writes `synthetic_oracle.json` (the Bayes classifier of the latent cues, scored
on the splits dataset.splits makes) and prints its balanced accuracy per split: the ceiling for any model.

Reuses the folder when it already holds a dataset made with the same parameters. Refuses (one `error:`
line, exit code 2, nothing written) nonsense parameters and an `out=` folder holding files it did not write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from skinderm.config import user_errors_as_messages
from skinderm.data import layout
from skinderm.data.classes import CLASS_CODES
from skinderm.data.dermoscopy import DEFAULT_SPLIT_PARAMS, SYNTHETIC_ORACLE_JSON, write_oracle
from skinderm.data.errors import DataError
from skinderm.data.synthetic import ensure_synthetic_dataset, is_synthetic_dataset_current
from skinderm.progress import configure_progress_bars


@hydra.main(version_base="1.3", config_path="pkg://skinderm.conf", config_name="synthesize")
def main(cfg: DictConfig) -> None:
    configure_progress_bars()
    with user_errors_as_messages(cfg):  # bad parameters or a foreign out= folder: one line, before any work
        params = (
            OmegaConf.to_container(cfg.dataset.synthetic, resolve=True) if cfg.dataset.synthetic else None
        )
        if not params:
            raise DataError("dataset.synthetic holds no generator parameters: use dataset=synthetic.")
        out = Path(cfg.out)
        reused = is_synthetic_dataset_current(out, **params)
        ensure_synthetic_dataset(out, **params)
        oracle = _oracle(out, cfg) if params.get("style") == "dermoscopy" else None
    metadata = pd.read_csv(out / "HAM10000_metadata.csv")
    truth = pd.read_csv(out / layout.SYNTHETIC_GROUND_TRUTH_CSV)
    per_class = metadata["dx"].value_counts()
    print(f"Synthetic HAM10000 {'reused' if reused else 'written'}: {out}")
    print(
        f"Images: {len(metadata)} of {metadata['lesion_id'].nunique()} lesions, "
        f"{int((~truth['has_mask']).sum())} without a mask, {int((truth['n_components'] > 1).sum())} with a "
        f"satellite blob; ground truth in {layout.SYNTHETIC_GROUND_TRUTH_CSV}"
    )
    print("Per class: " + ", ".join(f"{dx} {int(per_class.get(dx, 0))}" for dx in CLASS_CODES))
    if oracle is not None:
        scores = ", ".join(
            f"{name} {oracle[name]['balanced_accuracy']:.3f} (accuracy {oracle[name]['accuracy']:.3f})"
            for name in ("train", "val", "test")
            if name in oracle
        )
        print(
            f"Oracle ceiling (Bayes classifier of the latents), balanced accuracy: {scores}; "
            f"{SYNTHETIC_ORACLE_JSON}"
        )


def _oracle(out: Path, cfg: DictConfig) -> dict[str, Any]:
    """The oracle on the splits this config makes: the generator wrote it for the default split
    parameters; other dataset.splits values are scored here (same function as prepare_dataset)."""
    splits = cfg.dataset.get("splits")
    params = {**DEFAULT_SPLIT_PARAMS, **(OmegaConf.to_container(splits, resolve=True) if splits else {})}
    path = out / SYNTHETIC_ORACLE_JSON
    if path.is_file():
        oracle = json.loads(path.read_text(encoding="utf-8"))
        if oracle.get("split_params") == params:
            return oracle
    return write_oracle(out, params)


if __name__ == "__main__":
    main()
