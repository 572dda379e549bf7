"""conf/dataset/*.yaml, conf/annotate.yaml and conf/synthesize.yaml compose and feed the library as-is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from skinderm.data.synthetic import _normalise_params

DATASET_KEYS = {"name", "root", "synthetic", "splits", "on_error", "annotations_dir"}


@pytest.fixture
def compose_config(tmp_path: Path) -> Iterator:
    def _compose(config_name: str, *overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_module("skinderm.conf", version_base="1.3"):
            return compose(config_name=config_name, overrides=[f"paths.root_dir={tmp_path}", *overrides])

    yield _compose
    GlobalHydra.instance().clear()


def test_synthetic_dataset_config_is_cached_by_its_parameters(compose_config, tmp_path: Path) -> None:
    cfg = compose_config("synthesize", "dataset.synthetic.num_images=200", "dataset.synthetic.seed=3")
    assert set(cfg.dataset) == DATASET_KEYS
    assert cfg.dataset.root == f"{tmp_path}/.cache/data/synthetic/n200_seed3_dermoscopy_standard"
    assert cfg.out == cfg.dataset.root and cfg.task_name == "synthesize"
    params = OmegaConf.to_container(cfg.dataset.synthetic, resolve=True)
    assert _normalise_params(**params)["num_images"] == 200  # every key is a generator parameter
    assert dict(cfg.dataset.splits) == {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}


def test_annotate_config_defaults_to_the_real_dataset_with_a_required_root(compose_config) -> None:
    cfg = compose_config("annotate")
    assert set(cfg.dataset) == DATASET_KEYS
    assert cfg.dataset.name == "ham10000" and cfg.dataset.synthetic is None
    assert OmegaConf.is_missing(cfg.dataset, "root")
    assert cfg.task_name == "annotate" and dict(cfg.annotate) == {"out_dir": None, "workers": None}
    assert compose_config("annotate", "dataset.root=/data/ham").dataset.root == "/data/ham"


def test_every_config_file_starts_with_a_command() -> None:
    conf = Path(__file__).resolve().parents[2] / "conf"
    for path in [
        conf / "annotate.yaml",
        conf / "synthesize.yaml",
        *sorted((conf / "dataset").glob("*.yaml")),
    ]:
        assert path.read_text().startswith("# python -m skinderm."), path
