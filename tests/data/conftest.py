"""Fixtures for the data-layer tests: one small synthetic HAM10000 per session, copied when a test writes."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def synthetic_copy(small_synthetic: Path, tmp_path: Path) -> Callable[[], Path]:
    """A fresh writable copy of the session dataset (for tests that annotate, break or rename things)."""

    def _copy(name: str = "ham") -> Path:
        return Path(shutil.copytree(small_synthetic, tmp_path / name))

    return _copy


REPO = Path(__file__).resolve().parents[2]


def run_module(
    module: str, *overrides: str, cwd: Path, code: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m module overrides...` as a user runs it (outputs under `cwd`); with `code`, that Python
    runs first in the same process (to simulate a full disk), then the module as __main__."""
    env = {
        **os.environ,
        "SKINDERM_ROOT": str(cwd),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("SKINDERM_DEBUG", None)
    env.pop("HYDRA_FULL_ERROR", None)
    if code is None:
        command = [sys.executable, "-m", module, *overrides]
    else:
        runner = f"{code}\nimport runpy, sys\nsys.argv = [{module!r}, *sys.argv[1:]]\n"
        runner += f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
        command = [sys.executable, "-c", runner, *overrides]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`run_module`, for subprocess tests of the entrypoints."""
    return run_module


def _bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid grey PNG of width x height (a few hundred KiB: zero rows compress well)."""
    compressor = zlib.compressobj(1)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="session")
def bomb_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20000x20000 PNG: past PIL's decompression-bomb limit."""
    return _bomb_png(tmp_path_factory.mktemp("bomb") / "huge.png")
