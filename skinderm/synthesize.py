"""Write a synthetic HAM10000 (real layout, names and metadata values; drawn lesions) + its ground truth.

    python -m skinderm.synthesize out=/tmp/ham_synth dataset.synthetic.num_images=200
    python -m skinderm.synthesize                       # into the cache that dataset=synthetic trains on

Reuses the folder when it already holds a dataset made with the same parameters. Refuses (one `error:`
line, exit code 2, nothing written) nonsense parameters and an `out=` folder holding files it did not write.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from skinderm.config import user_errors_as_messages
from skinderm.data import layout
from skinderm.data.classes import CLASS_CODES
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


if __name__ == "__main__":
    main()
