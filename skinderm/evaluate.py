"""Evaluate a trained run (or a base model zero-shot) on a split: `python -m skinderm.evaluate [k=v ...]`.

    python -m skinderm.evaluate run=latest split=test
    python -m skinderm.evaluate run=outputs/sft/runs/<time> score_classes=true logger=none
    python -m skinderm.evaluate run=null model=qwen2_5_vl_3b hardware=gpu dataset.root=/data/HAM10000 \
        dataset=ham10000
    python -m skinderm.evaluate run=latest dataset=isic2018_test dataset.root=/data/ISIC2018_Task3_Test

Writes predictions.jsonl, metrics.json and plots/ into outputs/evaluate/runs/<time>/ (conf/evaluate.yaml).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from skinderm.config import user_errors_as_messages
from skinderm.progress import configure_progress_bars


@hydra.main(version_base="1.3", config_path="pkg://skinderm.conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    configure_progress_bars()
    from skinderm.config import validate_evaluate_config
    from skinderm.evaluation.commands import run_evaluation
    from skinderm.evaluation.report import format_table

    with user_errors_as_messages(cfg):
        validate_evaluate_config(cfg)
        metrics = run_evaluation(cfg)
    context = metrics["evaluation"]
    who = context["run"] or f"{context['model']} zero-shot"
    title = f"{who} on {context['dataset']}/{context['split']}"
    print(format_table(metrics, title=title))
    print(f"output folder: {metrics['output_dir']}")
    return metrics.get("balanced_accuracy")


if __name__ == "__main__":
    main()
