"""Export a trained run as one merged model folder with a model card: `python -m skinderm.export run=...`.

    python -m skinderm.export run=latest
    python -m skinderm.export run=outputs/grpo/runs/<time> out=/models/skinderm-grpo dtype=bfloat16
    python -m skinderm.export run=latest push_to_hub=me/skinderm-sft

The folder (default <run>/export) loads with plain transformers `from_pretrained`; LoRA adapters are
folded into the weights. See docs/export.md. A missing or unfinished run, or an `out` folder that is not
an earlier export, is a one-line error with exit code 2.
"""

from __future__ import annotations

import shlex

import hydra
from omegaconf import DictConfig

from skinderm.config import user_errors_as_messages
from skinderm.progress import configure_progress_bars


def _command_line() -> str:
    """This command as typed (Hydra's overrides), for the model card."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task)
    return " ".join(["python -m skinderm.export", *(shlex.quote(item) for item in overrides)])


@hydra.main(version_base="1.3", config_path="pkg://skinderm.conf", config_name="export")
def main(cfg: DictConfig) -> None:
    configure_progress_bars()
    from skinderm.config import validate_export_config
    from skinderm.evaluation.export import export_run, push_export

    with user_errors_as_messages(cfg):
        validate_export_config(cfg)
        result = export_run(
            cfg.run,
            log_dir=cfg.paths.log_dir,
            out=cfg.out,
            dtype=cfg.dtype,
            max_new_tokens=cfg.max_new_tokens,
            license=cfg.license,
            base_model_path=cfg.base_model_path,
            command=_command_line(),
        )
        url = (
            push_export(result.path, str(cfg.push_to_hub), private=bool(cfg.private))
            if cfg.push_to_hub
            else None
        )
    evaluated = (
        f"{len(result.evaluations)} evaluation(s) in the card" if result.evaluations else "not evaluated"
    )
    print(f"export folder: {result.path}")
    weights = "LoRA merged" if result.merged_adapter else "full weights"
    print(f"  from run: {result.run_dir} ({weights}, {evaluated})")
    if url:
        print(f"  uploaded: {url}")


if __name__ == "__main__":
    main()
