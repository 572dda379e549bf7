"""Shared fixtures: composed configs over a per-session data/model cache, never touching the network."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Small enough for seconds, large enough that every class lands in every split.
SMALL_DATASET = (
    "dataset.synthetic.style=simple",  # the fast look; the dermoscopy default is tested in tests/data
    "dataset.synthetic.num_images=70",
    "dataset.synthetic.class_counts={akiec:10,bcc:10,bkl:10,df:10,mel:10,nv:10,vasc:10}",
)


def cli_env() -> dict[str, str]:
    """The environment for running an entrypoint in a subprocess: this checkout importable, offline, one
    thread, W&B offline (no account settings of the user's), tracebacks hidden as for a user."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.pop("SKINDERM_DEBUG", None)
    repo = Path(__file__).resolve().parents[1]
    return {
        **env,
        "PYTHONPATH": str(repo),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
    }


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache (synthetic data, tiny model) for the whole session: built once, reused by every test."""
    return tmp_path_factory.mktemp("skinderm_cache")


def compose_config(
    root: Path, cache: Path, overrides: Sequence[str] = (), *, config_name: str = "train", output_dir: Path
) -> object:
    """Compose a conf/ entrypoint config like the CLI does: outputs under `root`, data/models in `cache`."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_module("skinderm.conf", version_base="1.3"):
        cfg = compose(
            config_name=config_name,
            overrides=[
                f"paths.root_dir={root}",
                f"paths.cache_dir={cache}",
                f"paths.data_dir={cache}/data",
                *overrides,
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def compose_train(tmp_path: Path, shared_cache: Path) -> Iterator[Callable[..., object]]:
    """Compose conf/train.yaml (or another entrypoint config): outputs in tmp_path, the shared cache."""
    from hydra.core.global_hydra import GlobalHydra

    def _compose(overrides: Sequence[str] = (), *, config_name: str = "train") -> object:
        return compose_config(
            tmp_path, shared_cache, overrides, config_name=config_name, output_dir=tmp_path / "run"
        )

    yield _compose
    GlobalHydra.instance().clear()


# Small images keep the session fast; annotation and ground truth are size-independent.
SMALL_PARAMS: dict = {
    "num_images": 70,
    "seed": 7,
    "image_width": 240,
    "image_height": 180,
    "class_counts": {code: 10 for code in ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")},
    "multi_component_fraction": 0.25,
    "missing_mask_fraction": 0.1,
}


@pytest.fixture(scope="session")
def small_synthetic_params() -> dict:
    return dict(SMALL_PARAMS)


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only (by convention) synthetic dataset: 70 images, every class, satellites, missing masks."""
    from skinderm.data.synthetic import generate_synthetic_ham10000

    return generate_synthetic_ham10000(tmp_path_factory.mktemp("synthetic") / "ham", **SMALL_PARAMS)
