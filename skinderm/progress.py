"""Progress bars that stay readable when output goes to a file (SLURM logs, CI, nohup, `| tee`)."""

from __future__ import annotations

import os
import sys

# Seconds between redraws when stderr is not a terminal. tqdm's default (0.1 s) writes a line per redraw
# into a log file: thousands of lines for one training run.
LOG_FILE_MININTERVAL_S = 30


def configure_progress_bars() -> None:
    """In a log file, redraw progress bars (ours, the Trainer's, datasets') at most every 30 s.

    Sets tqdm's TQDM_MININTERVAL default (tqdm reads TQDM_* variables as defaults) unless the user set it;
    bars that pass their own `mininterval` keep it. On a terminal nothing changes.
    """
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", str(LOG_FILE_MININTERVAL_S))
