"""The scale-out hardware options compose, each with an accelerate file that accelerate itself accepts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# hardware option -> (accelerate distributed_type, DeepSpeed ZeRO stage or None)
SCALE_OUT = {
    "multi_gpu": ("MULTI_GPU", None),
    "fsdp": ("FSDP", None),
    "deepspeed_zero2": ("DEEPSPEED", 2),
    "deepspeed_zero3": ("DEEPSPEED", 3),
}
MIXED_PRECISION = {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}


def _launcher_view(config_file: Path) -> tuple[object, dict[str, str]]:
    """What `accelerate launch --config_file FILE` turns the file into: its arguments and the ranks' env.

    The launcher's own validation and environment preparation, without starting processes (DeepSpeed
    would need `deepspeed` installed to start).
    """
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(config_file), "-m", "skinderm.train"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(
            [*defaults.deepspeed_config, "mixed_precision"]
        )
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, {key: str(value) for key, value in env.items()}


@pytest.mark.parametrize("option", sorted(SCALE_OUT))
def test_scale_out_option_composes_on_top_of_gpu_and_validates(compose_train, option: str) -> None:
    from skinderm.config import validate_config

    cfg = compose_train([f"hardware={option}", "model=qwen2_5_vl_3b"])
    validate_config(cfg)
    gpu = compose_train(["hardware=gpu"]).hardware
    assert cfg.hardware.name == option
    assert cfg.hardware.use_cpu is False and cfg.hardware.precision == gpu.precision == "bfloat16"
    assert cfg.hardware.accelerate_config == f"accelerate/{option}.yaml"


@pytest.mark.parametrize("option", sorted(SCALE_OUT))
def test_hardware_option_names_an_accelerate_file_of_its_kind(compose_train, option: str) -> None:
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    hardware = compose_train([f"hardware={option}"]).hardware
    config_file = CONF / hardware.accelerate_config
    accelerate_config = load_config_from_file(str(config_file))
    assert isinstance(accelerate_config, ClusterConfig)
    distributed_type, zero_stage = SCALE_OUT[option]
    assert accelerate_config.distributed_type.name == distributed_type
    assert accelerate_config.mixed_precision == MIXED_PRECISION[hardware.precision], (
        f"{config_file.name}: mixed_precision must match hardware.precision of hardware={option}"
    )
    if zero_stage is not None:
        assert accelerate_config.deepspeed_config["zero_stage"] == zero_stage


@pytest.mark.parametrize(
    "config_file", sorted((CONF / "accelerate").glob("*.yaml")), ids=lambda path: path.stem
)
def test_accelerate_file_passes_the_launchers_validation(config_file: Path, monkeypatch) -> None:
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    raw = OmegaConf.to_container(OmegaConf.load(config_file))
    launch_options = {action.dest for action in launch_command_parser()._actions}
    for section in ("fsdp_config", "deepspeed_config"):
        unknown = sorted(key for key in raw.get(section, {}) if key not in launch_options)
        assert not unknown, f"{config_file.name}: {section} keys accelerate launch ignores: {unknown}"

    args, env = _launcher_view(config_file)
    assert env["ACCELERATE_MIXED_PRECISION"] == raw["mixed_precision"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if args.use_fsdp:
        plugin = FullyShardedDataParallelPlugin()  # what every rank builds from that environment
        assert plugin.fsdp_version == 2
        assert plugin.transformer_cls_names_to_wrap == ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"]
        assert plugin.state_dict_type.name == "FULL_STATE_DICT", "run folders need a loadable full model"
    elif args.use_deepspeed:
        plugin = DeepSpeedPlugin()
        zero = plugin.deepspeed_config["zero_optimization"]
        assert zero["stage"] == raw["deepspeed_config"]["zero_stage"]
        # Batch sizes and accumulation come from the stage group through the Trainer ("auto").
        assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"
        if zero["stage"] == 3:
            assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    else:
        assert args.multi_gpu


def test_fsdp_checkpoints_activations_itself_instead_of_the_trainer(compose_train) -> None:
    hardware = compose_train(["hardware=fsdp"]).hardware
    fsdp = OmegaConf.load(CONF / hardware.accelerate_config).fsdp_config
    # transformers refuses FSDP activation checkpointing together with the Trainer's own.
    assert fsdp.fsdp_activation_checkpointing is True
    assert hardware.gradient_checkpointing is False


@pytest.mark.parametrize("option", ["fsdp", "deepspeed_zero3"])
def test_cli_prints_the_composed_scale_out_config(option: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "skinderm.train",
            f"hardware={option}",
            "--cfg",
            "job",
            "--package",
            "hardware",
        ],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = OmegaConf.create(result.stdout.split("\n", 1)[1])  # first line: "# @package hardware"
    assert printed.name == option and printed.accelerate_config == f"accelerate/{option}.yaml"


def test_slurm_launcher_asks_for_one_gpu_per_job() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason='pip install -e ".[slurm]"')
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("skinderm.conf", version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 1, 1)
    assert launcher.timeout_min >= 60 and launcher.max_num_timeout == 0
    # SLURM logs land beside the sweep's job folders.
    assert OmegaConf.to_container(launcher)["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"
    GlobalHydra.instance().clear()


def test_launch_script_pins_one_run_folder_and_counts_gpus(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "launch.sh"),
            "--dry-run",
            "fsdp",
            "stage=grpo",
            "model=qwen2_5_vl_7b",
        ],
        cwd=tmp_path,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "0,1,2", "SKINDERM_ROOT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[0].startswith(f"SKINDERM_RUN_DIR={tmp_path}/outputs/grpo/runs/")
    fsdp_file = str(CONF / "accelerate" / "fsdp.yaml")
    assert words[1:7] == ["accelerate", "launch", "--config_file", fsdp_file, "--num_processes", "3"]
    assert words[7:] == ["-m", "skinderm.train", "hardware=fsdp", "stage=grpo", "model=qwen2_5_vl_7b"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["no_such_hardware"], "use one of: deepspeed_zero2 deepspeed_zero3 fsdp multi_gpu"),
        (["multi_gpu", "-m", "seed=1,2"], "a multirun under accelerate launch"),
    ],
)
def test_launch_script_refuses_what_it_cannot_launch(arguments: list[str], message: str) -> None:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "launch.sh"), "--dry-run", *arguments],
        env={**os.environ, "NUM_PROCESSES": "2"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2 and message in result.stderr


# --------------------------------------------------------------------------------------------------
# Memory and sampling switches: QLoRA (hardware.load_in_4bit) and vLLM (hardware.vllm)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hardware.load_in_4bit=true", "model.lora.enabled=false"], "set model.lora.enabled=true"),
        (
            ["hardware=fsdp", "model=qwen2_5_vl_3b", "hardware.load_in_4bit=true"],
            "use hardware=gpu or hardware=multi_gpu",
        ),
        (
            ["stage=grpo", "model.lora.enabled=true", "stage.merge_adapter=true", "hardware.load_in_4bit=1"],
            "cannot be folded into 4-bit weights",
        ),
        (["hardware.vllm=colocate"], "stage=sft does not sample"),
        (["stage=grpo", "hardware.vllm=colocate"], "vLLM generates on CUDA GPUs"),
        (["stage=grpo", "hardware=gpu", "hardware.vllm=sometimes"], "expected one of ['colocate', 'server']"),
    ],
)
def test_memory_and_sampling_switches_refuse_what_cannot_work(
    compose_train, overrides: list[str], message: str
) -> None:
    from skinderm.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(compose_train(overrides))


def test_vllm_switch_without_vllm_installed_says_how_to_install_it(compose_train) -> None:
    import importlib.util

    from skinderm.config import ConfigError, validate_config

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(ConfigError, match=re.escape("pip install -e '.[vllm]'")):
        validate_config(compose_train(["stage=grpo", "hardware=gpu", "hardware.vllm=colocate"]))


def test_vllm_server_mode_needs_the_servers_address(compose_train, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from skinderm import config

    real_find_spec = importlib.util.find_spec

    def pretend_vllm_is_installed(name: str, *args: object) -> object:
        return object() if name == "vllm" else real_find_spec(name, *args)

    monkeypatch.setattr(config.importlib.util, "find_spec", pretend_vllm_is_installed)
    with pytest.raises(config.ConfigError, match=re.escape("hardware.vllm_server_base_url")):
        config.validate_config(compose_train(["stage=grpo", "hardware=gpu", "hardware.vllm=server"]))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], {"use_vllm": False}),
        (
            ["hardware.vllm=colocate", "hardware.vllm_gpu_memory_utilization=0.5"],
            {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.5},
        ),
        (
            ["hardware.vllm=server", "hardware.vllm_server_base_url=http://gpu7:8000"],
            {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": "http://gpu7:8000"},
        ),
    ],
)
def test_vllm_switch_becomes_trls_grpo_sampling_arguments(
    compose_train, tmp_path: Path, overrides: list[str], expected: dict[str, object]
) -> None:
    from trl import GRPOConfig

    from skinderm.training.grpo import sampler_arguments

    cfg = compose_train(["stage=grpo", "hardware=gpu", *overrides])
    arguments = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, **sampler_arguments(cfg.hardware))
    assert {key: getattr(arguments, key) for key in expected} == expected


def test_importing_bitsandbytes_after_skinderm_prints_no_hub_kernel_warning() -> None:
    """bitsandbytes' optional CPU kernel would come from the Hugging Face hub; its warning is noise here."""
    pytest.importorskip("bitsandbytes", reason="pip install -e '.[qlora]'")
    result = subprocess.run(
        [sys.executable, "-c", "import skinderm, peft, bitsandbytes"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "kernels-community" not in result.stdout + result.stderr
