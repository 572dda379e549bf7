"""Train Stage 1 (SFT) or Stage 2 (GRPO): `python -m skinderm.train [group=option ...] [key=value ...]`.

    python -m skinderm.train                                  # SFT, embedded default (synthetic + tiny, CPU)
    python -m skinderm.train stage=grpo reward=iou_heavy      # GRPO from the latest finished SFT run
    python -m skinderm.train -m stage=grpo reward=default,iou_heavy
    accelerate launch -m skinderm.train hardware=gpu model=qwen2_5_vl_3b

Configs live in conf/ (installed as `skinderm.conf`); `--cfg job` prints the composed config.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from skinderm.config import user_errors_as_messages, validate_config
from skinderm.progress import configure_progress_bars


@hydra.main(version_base="1.3", config_path="pkg://skinderm.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    configure_progress_bars()
    with user_errors_as_messages(cfg):
        validate_config(cfg)
        from skinderm.training.pipeline import format_summary, run_training

        metrics = run_training(cfg)
    print(format_summary(metrics))
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    main()
