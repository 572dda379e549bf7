"""skinderm: teach Qwen2.5-VL to diagnose, locate, box and outline skin lesions."""

from __future__ import annotations

import logging
import os

from omegaconf import OmegaConf

__version__ = "0.1.0"

# bitsandbytes (the qlora extra; peft imports it whenever it is installed) warns on every import on CPUs
# with AVX512-BF16 that an optional kernel could not be fetched from the Hugging Face hub. Nothing here
# needs it (and nothing may download): keep that one logger to errors.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# `${cwd:}` in conf/paths: the launch directory, resolvable before Hydra's runtime info exists (a multirun
# resolves its sweep dir first, where `${hydra:runtime.cwd}` fails).
if not OmegaConf.has_resolver("cwd"):
    OmegaConf.register_new_resolver("cwd", os.getcwd)


def _run_dir(resume: str | None, runs_root: str, stamp: str) -> str:
    from skinderm.core.runs import resolve_run_dir

    return resolve_run_dir(resume, runs_root, stamp)


# `${run_dir:${resume},<runs root>,<time stamp>}` in conf/hydra: a new run folder, or the one being resumed.
if not OmegaConf.has_resolver("run_dir"):
    OmegaConf.register_new_resolver("run_dir", _run_dir)


def _hydra_subdir(resume: str | None, stamp: str) -> str:
    """Where Hydra writes its config/overrides record: `.hydra`, or `.hydra/resume_<time>` for a resume, so
    that a resume attempt never overwrites the record of how the run was started."""
    return ".hydra" if resume in (None, "", "null", "None") else f".hydra/resume_{stamp}"


# `${hydra_subdir:${resume},<time stamp>}` in conf/hydra.
if not OmegaConf.has_resolver("hydra_subdir"):
    OmegaConf.register_new_resolver("hydra_subdir", _hydra_subdir)


def _rank_tag() -> str:
    """`[rank k]` in processes of a multi-process launch (torchrun/accelerate set WORLD_SIZE and RANK):
    all ranks append to the one train.log of the run folder. Empty in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ""
    return f"[rank {os.environ.get('RANK', '0')}]"


# `${rank_tag:}` in conf/hydra's log format.
if not OmegaConf.has_resolver("rank_tag"):
    OmegaConf.register_new_resolver("rank_tag", _rank_tag)
