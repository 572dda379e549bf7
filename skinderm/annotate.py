"""Annotate a HAM10000 folder: masks -> box, 3x3 location, area and components per image.

    python -m skinderm.annotate dataset.root=/data/HAM10000
    python -m skinderm.annotate dataset.root=/data/HAM10000 annotate.out_dir=/scratch/ann annotate.workers=8
    python -m skinderm.annotate dataset=synthetic          # the cached synthetic set (run synthesize first)

Writes ham10000_with_spatial_data.json and .csv (schema: docs/architecture.md).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from skinderm.config import user_errors_as_messages
from skinderm.data.annotation import annotate_dataset, format_data_summary
from skinderm.data.classes import CLASS_CODES
from skinderm.data.errors import DataError
from skinderm.progress import configure_progress_bars


@hydra.main(version_base="1.3", config_path="pkg://skinderm.conf", config_name="annotate")
def main(cfg: DictConfig) -> None:
    configure_progress_bars()
    with user_errors_as_messages(cfg):
        if OmegaConf.is_missing(cfg.dataset, "root") or cfg.dataset.root is None:
            raise DataError(
                "dataset.root is required: python -m skinderm.annotate dataset.root=/path/to/HAM10000"
            )
        out_dir = cfg.annotate.out_dir or cfg.dataset.get("annotations_dir") or None
        records = annotate_dataset(
            cfg.dataset.root, out_dir=out_dir, workers=cfg.annotate.workers, on_error=cfg.dataset.on_error
        )
    attrs = records.attrs
    per_class = records["dx"].value_counts()
    print(f"Annotations: {attrs['json_path']} and {attrs['csv_path']}")
    print(f"Images: {len(records)} annotated, {int(records['mask_available'].sum())} with a lesion mask")
    print(format_data_summary(attrs))
    print("Per class: " + ", ".join(f"{dx} {int(per_class.get(dx, 0))}" for dx in CLASS_CODES))


if __name__ == "__main__":
    main()
