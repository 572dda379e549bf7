"""Process-wide torch settings from the hardware group: threads, TF32 (every entrypoint that runs a model)."""

from __future__ import annotations

from typing import Any

import torch


def configure_torch(cfg: Any) -> None:
    """Threads and TF32 from the hardware group (on small CPUs fewer threads is often faster)."""
    threads = cfg.hardware.torch_threads
    if threads:
        torch.set_num_threads(int(threads))
    if cfg.hardware.tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
