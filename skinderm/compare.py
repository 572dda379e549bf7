"""Paired comparison of two evaluations of the same images: `python -m skinderm.compare runs=[A,B]`.

    python -m skinderm.compare runs=[outputs/evaluate/runs/<sft eval>,outputs/evaluate/runs/<grpo eval>]
    python -m skinderm.compare runs=[outputs/sft/runs/<time>,outputs/grpo/runs/<time>] split=test

For every headline metric, B - A with a 95% interval from a paired bootstrap over lesions (both runs
scored on each resample), because two separate intervals on the same images hide a real difference.
Two evaluations of different splits, dataset roots, image sets or ground truth are refused in one line.
Writes compare.json and compare.md into outputs/compare/runs/<time>/ (conf/compare.yaml).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from skinderm.config import user_errors_as_messages
from skinderm.progress import configure_progress_bars


@hydra.main(version_base="1.3", config_path="pkg://skinderm.conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    configure_progress_bars()
    from skinderm.config import validate_compare_config
    from skinderm.evaluation.compare import run_comparison

    with user_errors_as_messages(cfg):
        validate_compare_config(cfg)
        result = run_comparison(cfg)
    print(result["table"])
    print(f"output folder: {result['output_dir']}")


if __name__ == "__main__":
    main()
