"""Diagnose, locate and box the lesion in one image: `python -m skinderm.predict image=<path> [run=...]`.

    python -m skinderm.predict image=lesion.jpg                              # the newest training run
    python -m skinderm.predict run=outputs/grpo/runs/<time> image=lesion.jpg out=overlay.png
    python -m skinderm.predict run=null model=qwen2_5_vl_3b hardware=gpu image=lesion.jpg

Prints the answer as JSON (coordinates in the image's own pixels) with the path of an overlay PNG.
A missing or unreadable image is a one-line error with exit code 2.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from skinderm.config import user_errors_as_messages
from skinderm.progress import configure_progress_bars


@hydra.main(version_base="1.3", config_path="pkg://skinderm.conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    configure_progress_bars()
    from skinderm.config import validate_predict_config
    from skinderm.evaluation.commands import check_image, run_prediction

    with user_errors_as_messages(cfg):
        validate_predict_config(cfg)
        check_image(cfg.image)  # before the model loads: a typo in the path fails at once
        result = run_prediction(cfg)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
