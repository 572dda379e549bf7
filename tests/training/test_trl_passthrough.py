"""stage.trl.*: any TRL SFTConfig / GRPOConfig field reaches the trainer; unknown or doubly-set ones fail in
one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from skinderm.core.errors import ConfigError
from skinderm.core.runs import RunFolder
from tests.conftest import SMALL_DATASET


def test_a_known_grpo_field_reaches_grpo_config(compose_train, tmp_path: Path) -> None:
    from trl import GRPOConfig

    from skinderm.training.common import with_trl_fields
    from skinderm.training.grpo import grpo_arguments

    cfg = compose_train(
        [
            "stage=grpo",
            "logger=none",
            "+stage.trl.epsilon_high=0.28",
            "+stage.trl.importance_sampling_level=sequence",
        ]
    )
    arguments = with_trl_fields(GRPOConfig, grpo_arguments(cfg, RunFolder(tmp_path), [1.0]), cfg.stage.trl)
    assert arguments.epsilon_high == 0.28 and arguments.importance_sampling_level == "sequence"
    assert arguments.disable_dropout is True, "dropout is off in GRPO by default"
    default = with_trl_fields(GRPOConfig, grpo_arguments(cfg, RunFolder(tmp_path), [1.0]), {})
    assert default.epsilon_high != 0.28


def test_a_known_sft_field_reaches_sft_config(compose_train, tmp_path: Path) -> None:
    from trl import SFTConfig

    from skinderm.training.common import with_trl_fields
    from skinderm.training.sft import sft_arguments

    cfg = compose_train(["logger=none", "+stage.trl.neftune_noise_alpha=5"])
    arguments = with_trl_fields(
        SFTConfig, sft_arguments(cfg, RunFolder(tmp_path), evaluate=True), cfg.stage.trl
    )
    assert arguments.neftune_noise_alpha == 5


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("epsilon_hgh", "not a field of TRL's GRPOConfig; close matches: epsilon_high"),
        ("learning_rate", "skinderm sets GRPOConfig.learning_rate itself"),
        ("num_generations", "skinderm sets GRPOConfig.num_generations itself"),
    ],
)
def test_unknown_or_doubly_set_fields_are_refused(
    compose_train, tmp_path: Path, field: str, expected: str
) -> None:
    from trl import GRPOConfig

    from skinderm.training.common import check_trl_fields
    from skinderm.training.grpo import grpo_arguments

    cfg = compose_train(["stage=grpo", "logger=none"])
    with pytest.raises(ConfigError, match=expected):
        check_trl_fields(GRPOConfig, grpo_arguments(cfg, RunFolder(tmp_path), []), {field: 1})


def test_an_unknown_field_is_one_error_line_before_any_data(tmp_path: Path, shared_cache: Path) -> None:
    data = tmp_path / "data"
    paths = (f"paths.root_dir={tmp_path}", f"paths.cache_dir={shared_cache}", f"paths.data_dir={data}")
    command = [
        sys.executable, "-m", "skinderm.train", *paths, *SMALL_DATASET, "logger=none",
        "+stage.trl.neftune_nois_alpha=5",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "stage.trl.neftune_nois_alpha" in errors[0] and "neftune_noise_alpha" in errors[0]
    assert not (tmp_path / "data").exists(), "no data was prepared"
