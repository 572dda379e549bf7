"""Model FLOPs per optimizer step, achieved TFLOP/s and MFU for Qwen2.5-VL training runs.

Why: a step time alone says nothing about how much of the GPU a recipe uses; FLOPs per step divided by
step time, against the card's peak, does (docs/performance.md, "FLOPs and MFU").

The count, per part of the model, in input order (patch embedding, vision blocks, patch merger, language
model decoder layers + final norm, lm_head). P = the part's parameters (frozen base weights + LoRA
adapters; 4-bit weights counted unpacked), n = its trainable parameters, T = the tokens it runs on
(vision: image patch tokens before the 2x2 merge; merger: patches / 4; language model: text + image
tokens, padding excluded; lm_head: the positions whose logits are computed). A matmul with P weights
costs 2·P·T forward; backward costs 2·P·T for the input gradient and 2·n·T for the weight gradient.

    forward                        2·P·T + A
    backward, input gradient       2·P·T + 2·A   where gradients must flow (anything trainable at or below)
    backward, weight gradient      2·n·T

Full fine-tuning (n = P): 6·P·T. LoRA (frozen N plus adapters n, P = N + n): 4·N·T + 6·n·T. A frozen
part with nothing trainable below it (the vision tower under LoRA, which skinderm puts on the language
model only) costs its forward alone. A is the attention-score term, included: 2 matmuls (Q·K^T, A·V)
x 2 FLOP per multiply-add = 4·L·w·q·k per sequence (L layers, w = heads x head dim, q new tokens
attending to k; q = k in training), counted in full although causal kernels skip half; vision layers
attend within a frame (full-attention blocks) or within 112-pixel windows (the others), counted exactly
from each image's grid. Embedding lookups, norms' and activations' elementwise work are not counted
(the norms' few parameters are, as 2·P·T: < 0.01%).

Two totals: model FLOPs (the formula above: what the training needs, the PaLM definition of MFU, so
that turning on gradient checkpointing never "raises" MFU) and hardware FLOPs (what ran: plus one more
forward of every checkpointed block, 2·P·T + A, and the input-gradient pass through a frozen vision tower
when its output required grad, as `enable_input_require_grads` makes it under PEFT + checkpointing).
MFU = model FLOP/s / peak, HFU = hardware FLOP/s / peak. Forwards without grad inside a step (GRPO's
generation token by token, reference and old log-probs) count their forward only. Generation in vLLM
is not seen. Padding is not counted: padded positions lower MFU, as they should.
"""

from __future__ import annotations

import math
import re
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

# Dense (no 2:4 sparsity) BF16 tensor-core peaks in TFLOP/s, by regular expression on the lower-cased
# torch.cuda.get_device_name(); the first match wins. NVIDIA's datasheets print the sparse figure with a
# footnote; the dense one is half of it.
#   H100 / H200 / GH200: https://www.nvidia.com/en-us/data-center/h100/ and /h200/ (SXM: 1,979 sparse;
#     NVL: 1,671; H100 PCIe: 1,513). 'NVIDIA H200' and 'NVIDIA H100 80GB HBM3' are the SXM parts.
#     (This workplace's H200 ran an 8192^3 bf16 matmul at ~790 TFLOP/s, 80% of the datasheet's 989:
#     .library/device/KINDS.md. MFU here is against the datasheet, as is usual.)
#   A100: https://www.nvidia.com/en-us/data-center/a100/ (datasheet: 312, 624 sparse)
#   L40S 362, L40 181, L4 121, A10 125: the product pages under https://www.nvidia.com/en-us/data-center/
PEAK_BF16_DENSE_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bgh200\b", 989.0),
    (r"\bh200 nvl\b", 835.0),
    (r"\bh200\b", 989.0),
    (r"\bh100 nvl\b", 835.0),
    (r"\bh100 pcie\b", 756.0),
    (r"\bh100\b", 989.0),
    (r"\ba100\b", 312.0),
    (r"\bl40s\b", 362.0),
    (r"\bl40\b", 181.0),
    (r"\bl4\b", 121.0),
    (r"\ba10\b", 125.0),
)


def peak_tflops(device_name: str | None) -> float | None:
    """The card's dense bf16 peak from PEAK_BF16_DENSE_TFLOPS, or None for a card not in it (no MFU)."""
    if not device_name:
        return None
    name = device_name.lower()
    return next((peak for pattern, peak in PEAK_BF16_DENSE_TFLOPS if re.search(pattern, name)), None)


@dataclass(frozen=True)
class Part:
    """Parameters one part's matmuls use, and how many of them are trained."""

    parameters: int
    trainable: int


NO_PART = Part(0, 0)


@dataclass(frozen=True)
class ModelCounts:
    """What the FLOP formula needs from a model: parameters by part and the attention shapes."""

    patch_embed: Part
    vision_blocks: Part
    merger: Part
    language_model: Part  # decoder layers + final norm (no input embedding: a lookup)
    lm_head: Part  # counted even when tied to the input embedding
    text_layers: int
    text_attention_width: int  # query heads x head dim
    vision_full_attention_layers: int = 0
    vision_window_layers: int = 0
    vision_attention_width: int = 0
    spatial_merge_size: int = 2
    window_merged: int = 4  # window side in merged tokens: window_size // spatial_merge_size // patch_size


@dataclass(frozen=True)
class ForwardTokens:
    """Tokens one forward call runs on, read from its keyword arguments."""

    sequences: tuple[tuple[int, int], ...]  # (new tokens q, attended tokens k) per sequence
    lm_head_tokens: int
    image_grids: tuple[tuple[int, int, int], ...] = ()  # (t, h, w) in patches, per image or video

    @property
    def text_tokens(self) -> int:
        return sum(q for q, _ in self.sequences)

    @property
    def patches(self) -> int:
        return sum(t * h * w for t, h, w in self.image_grids)


@dataclass(frozen=True)
class FlopCount:
    model: int
    hardware: int

    def __add__(self, other: FlopCount) -> FlopCount:
        return FlopCount(self.model + other.model, self.hardware + other.hardware)


def _numel(parameter: Any) -> int:
    """Elements of a parameter as the matmul sees them (ZeRO-3 partitions and 4-bit packing undone)."""
    partitioned = getattr(parameter, "ds_numel", None)
    if partitioned:
        return int(partitioned)
    quant_state = getattr(parameter, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return math.prod(quant_state.shape)
    return parameter.numel()


def _part(module: Any, exclude: Any = None) -> Part:
    if module is None:
        return NO_PART
    skip = {id(p) for p in exclude.parameters()} if exclude is not None else set()
    kept = [p for p in module.parameters() if id(p) not in skip]
    return Part(sum(_numel(p) for p in kept), sum(_numel(p) for p in kept if p.requires_grad))


def transformers_model(model: Any) -> Any:
    """The outermost transformers PreTrainedModel inside `model` (under a PEFT wrapper, the base model)."""
    from transformers import PreTrainedModel

    return next((module for module in model.modules() if isinstance(module, PreTrainedModel)), model)


def _submodules(model: Any) -> tuple[Any, Any, Any]:
    """(vision tower or None, language model, lm_head) of a Qwen2.5-VL (or a text-only causal LM)."""
    hf = transformers_model(model)
    inner = getattr(hf, "model", hf)
    visual = getattr(inner, "visual", None) or getattr(hf, "visual", None)
    language = getattr(inner, "language_model", None) or inner
    return visual, language, hf.get_output_embeddings()


def model_counts(model: Any) -> ModelCounts:
    """Parameters by part and attention shapes of a (possibly PEFT-wrapped, 4-bit) Qwen2.5-VL."""
    hf = transformers_model(model)
    visual, language, lm_head = _submodules(model)
    text = getattr(hf.config, "text_config", None) or hf.config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    counts: dict[str, Any] = {
        "language_model": _part(language, exclude=language.get_input_embeddings()),
        "lm_head": Part(
            _numel(lm_head.weight), _numel(lm_head.weight) if lm_head.weight.requires_grad else 0
        ),
        "text_layers": int(text.num_hidden_layers),
        "text_attention_width": int(text.num_attention_heads) * int(head_dim),
        "patch_embed": NO_PART,
        "vision_blocks": NO_PART,
        "merger": NO_PART,
    }
    if visual is not None:
        vision = hf.config.vision_config
        full = len([i for i in getattr(vision, "fullatt_block_indexes", []) if i < vision.depth])
        blocks = _part(visual)
        patch_embed, merger = _part(visual.patch_embed), _part(visual.merger)
        counts.update(
            patch_embed=patch_embed,
            merger=merger,
            # everything else in the tower is its blocks (rotary embeddings hold no parameters)
            vision_blocks=Part(
                blocks.parameters - patch_embed.parameters - merger.parameters,
                blocks.trainable - patch_embed.trainable - merger.trainable,
            ),
            vision_full_attention_layers=full,
            vision_window_layers=int(vision.depth) - full,
            vision_attention_width=int(vision.hidden_size),
            spatial_merge_size=int(vision.spatial_merge_size),
            window_merged=max(
                1, int(vision.window_size) // int(vision.spatial_merge_size) // int(vision.patch_size)
            ),
        )
    return ModelCounts(**counts)


def _as_list(value: Any) -> list[Any]:
    return value.tolist() if hasattr(value, "tolist") else list(value)


def forward_tokens(kwargs: Mapping[str, Any]) -> ForwardTokens:
    """Token counts of one forward call from its arguments: attention_mask (or input shape), grid_thw.

    Training and prefill (input as long as the mask): each row's mask sum, attending to itself. Cached
    decoding (input shorter than the mask): every row's new tokens, attending to its mask sum.
    """
    reference = kwargs.get("input_ids")
    if reference is None:
        reference = kwargs.get("inputs_embeds")
    if reference is None:
        return ForwardTokens((), 0)
    batch, length = int(reference.shape[0]), int(reference.shape[1])
    mask = kwargs.get("attention_mask")
    if mask is not None and getattr(mask, "dim", lambda: 0)() == 2:
        valid = [int(v) for v in _as_list(mask.sum(dim=1))]
        sequences = [(v, v) for v in valid] if mask.shape[1] == length else [(length, v) for v in valid]
    else:
        position = kwargs.get("cache_position")
        attended = int(position[-1]) + 1 if position is not None and len(position) else length
        sequences = [(length, attended)] * batch
    keep = kwargs.get("logits_to_keep", 0)
    if hasattr(keep, "numel"):
        keep = int(keep.numel()) if keep.dim() else int(keep)
    lm_head_tokens = sum(min(int(keep), q) if keep else q for q, _ in sequences)
    grids: list[tuple[int, int, int]] = []
    for pixels, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
        if kwargs.get(pixels) is not None and kwargs.get(grid) is not None:
            grids.extend((int(t), int(h), int(w)) for t, h, w in _as_list(kwargs[grid]))
    return ForwardTokens(tuple(sequences), lm_head_tokens, tuple(grids))


def _window_sum_of_squares(merged: int, window: int) -> int:
    """Sum of squared window sides when `merged` rows (or columns) are cut into windows of `window`."""
    return (merged // window) * window**2 + (merged % window) ** 2


def vision_attention_flops(counts: ModelCounts, grids: Sequence[tuple[int, int, int]]) -> int:
    """Forward attention-score FLOPs of the vision tower: 4·w·(sum of attended pairs) per layer."""
    full = windowed = 0
    m = counts.spatial_merge_size
    for t, h, w in grids:
        full += t * (h * w) ** 2
        windowed += (
            t
            * m**4
            * _window_sum_of_squares(h // m, counts.window_merged)
            * _window_sum_of_squares(w // m, counts.window_merged)
        )
    width = counts.vision_attention_width
    return 4 * width * (counts.vision_full_attention_layers * full + counts.vision_window_layers * windowed)


def text_attention_flops(counts: ModelCounts, sequences: Sequence[tuple[int, int]]) -> int:
    """Forward attention-score FLOPs of the language model: 4·L·w·q·k per sequence."""
    return 4 * counts.text_layers * counts.text_attention_width * sum(q * k for q, k in sequences)


def pass_flops(
    counts: ModelCounts,
    tokens: ForwardTokens,
    *,
    training: bool,
    vision_backward: bool | None = None,
    recompute_vision: bool = False,
    recompute_text: bool = False,
) -> FlopCount:
    """FLOPs of one forward (training=False) or forward + backward (training=True) over `tokens`.

    `vision_backward`: whether the vision tower's output required grad in this forward (None: only
    where the formula needs it). `recompute_*`: gradient checkpointing of the vision blocks / decoder
    layers (hardware FLOPs only).
    """
    patches = tokens.patches
    vision_attention = vision_attention_flops(counts, tokens.image_grids)
    text_attention = text_attention_flops(counts, tokens.sequences)
    # (name, part, tokens, forward attention FLOPs, checkpointed?) in input order
    parts = (
        ("patch_embed", counts.patch_embed, patches, 0, False),
        ("vision_blocks", counts.vision_blocks, patches, vision_attention, recompute_vision),
        ("merger", counts.merger, patches // counts.spatial_merge_size**2, 0, False),
        ("language_model", counts.language_model, tokens.text_tokens, text_attention, recompute_text),
        ("lm_head", counts.lm_head, tokens.lm_head_tokens, 0, False),
    )  # fmt: skip
    model = hardware = 0
    trainable_below = False
    for name, part, count, attention, checkpointed in parts:
        forward = 2 * part.parameters * count + attention
        model += forward
        hardware += forward
        if not training:
            continue
        trainable_below = trainable_below or part.trainable > 0
        input_gradient = 2 * part.parameters * count + 2 * attention
        weight_gradient = 2 * part.trainable * count
        # What ran: under PEFT + checkpointing the frozen tower's output requires grad, so its blocks and
        # merger pass input gradients back (pixel_values never need one: not the patch embedding's).
        vision = name in ("patch_embed", "vision_blocks", "merger")
        ran_input_gradient = trainable_below or (vision and name != "patch_embed" and bool(vision_backward))
        model += (input_gradient if trainable_below else 0) + weight_gradient
        hardware += (input_gradient if ran_input_gradient else 0) + weight_gradient
        if checkpointed and (ran_input_gradient or weight_gradient):
            hardware += forward
    return FlopCount(model, hardware)


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step as the callback measured it."""

    seconds: float
    model_flops: int
    hardware_flops: int
    tokens: int  # text + image tokens of the training forwards (no padding)


def throughput_metrics(records: Sequence[StepRecord], peak: float | None) -> dict[str, float]:
    """perf/* log values over `records` (sums over the window, so a slow step weighs by its time)."""
    seconds = sum(r.seconds for r in records)
    if not records or seconds <= 0:
        return {}
    model = sum(r.model_flops for r in records)
    hardware = sum(r.hardware_flops for r in records)
    tflops = model / seconds / 1e12
    metrics = {
        "perf/step_s": seconds / len(records),
        "perf/flops_per_step": model / len(records),
        "perf/tflops": tflops,
        "perf/hardware_tflops": hardware / seconds / 1e12,
        "perf/tokens_per_s": sum(r.tokens for r in records) / seconds,
    }
    if peak:
        metrics["perf/mfu"] = tflops / peak
        metrics["perf/hfu"] = metrics["perf/hardware_tflops"] / peak
    return metrics


def _device_name(model: Any) -> str | None:
    import torch

    parameter = next(iter(model.parameters()), None)
    if parameter is not None and parameter.device.type == "cuda":
        return torch.cuda.get_device_name(parameter.device)
    return None


class ThroughputCallback(TrainerCallback):
    """Measures each optimizer step's time and FLOPs; logs perf/tflops, perf/mfu, perf/tokens_per_s, ...

    Step time runs from on_step_begin to on_step_end (CUDA synchronised; the prefetch of the step's
    batches happens before on_step_begin and is not in it). Tokens and FLOPs come from a hook on the
    model's forward that reads each call's attention_mask, image_grid_thw and logits_to_keep, counting
    only calls inside a step (evaluation between steps is left out). The values of the steps since the
    last log are merged into the trainer's log (hence log_history and the console), and, when W&B is
    among report_to, logged to the current W&B row (commit=False) just before the trainer logs it:
    integration callbacks run before user callbacks, so adding to `logs` in on_log would reach W&B late.
    perf/mfu and perf/hfu are left out on a card not in PEAK_BF16_DENSE_TFLOPS (and on CPU).
    """

    def __init__(self, *, peak: float | None = None, device_name: str | None = None) -> None:
        self.peak = peak
        self.device_name = device_name
        self.records: list[StepRecord] = []
        self._window: list[StepRecord] = []
        self._pending: dict[str, float] = {}
        self._hooks: list[Any] = []
        self._counts: ModelCounts | None = None
        self._modules: tuple[Any, Any, Any] = (None, None, None)
        self._cuda = False
        self._in_step = False
        self._started = 0.0
        self._step = FlopCount(0, 0)
        self._tokens = 0
        self._vision_output_requires_grad: bool | None = None

    # -- measurement -------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is None:
            return
        hf = transformers_model(model)
        self._counts = model_counts(model)
        self._modules = _submodules(model)
        detected = _device_name(hf)
        self._cuda = detected is not None
        self.device_name = self.device_name or detected
        if self.peak is None:
            self.peak = peak_tflops(self.device_name)
        self._hooks.append(hf.register_forward_hook(self._after_forward, with_kwargs=True))
        visual = self._modules[0]
        if visual is not None:
            self._hooks.append(visual.register_forward_hook(self._after_vision))

    def _synchronize(self) -> None:
        if self._cuda:
            import torch

            torch.cuda.synchronize()

    def _after_vision(self, module: Any, args: Any, output: Any) -> None:
        tensor = getattr(output, "pooler_output", None)
        if tensor is None:
            tensor = getattr(output, "last_hidden_state", output)
        self._vision_output_requires_grad = bool(getattr(tensor, "requires_grad", False))

    def _after_forward(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        import torch

        vision_grad, self._vision_output_requires_grad = self._vision_output_requires_grad, None
        if not self._in_step or self._counts is None:
            return
        if args and "input_ids" not in kwargs:
            kwargs = {**kwargs, "input_ids": args[0]}
        tokens = forward_tokens(kwargs)
        training = torch.is_grad_enabled() and module.training
        visual, language, _ = self._modules
        self._step = self._step + pass_flops(
            self._counts,
            tokens,
            training=training,
            vision_backward=vision_grad if tokens.patches else None,
            recompute_vision=bool(getattr(visual, "gradient_checkpointing", False)),
            recompute_text=bool(getattr(language, "gradient_checkpointing", False)),
        )
        if training:
            self._tokens += tokens.text_tokens

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._synchronize()
        self._step, self._tokens, self._in_step = FlopCount(0, 0), 0, True
        self._started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._in_step:
            return
        self._synchronize()
        record = StepRecord(
            time.perf_counter() - self._started, self._step.model, self._step.hardware, self._tokens
        )
        self._in_step = False
        self.records.append(record)
        self._window.append(record)
        if control.should_log:
            self._pending = throughput_metrics(self._window, self.peak)
            self._window = []
            wandb = sys.modules.get("wandb")
            report_to = args.report_to if isinstance(args.report_to, list) else [args.report_to]
            if (
                self._pending
                and wandb is not None
                and getattr(wandb, "run", None) is not None
                and "wandb" in report_to
            ):
                wandb.log(dict(self._pending), commit=False)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if (
            not self._pending
            or logs is None
            or "train_runtime" in logs
            or any(k.startswith("eval_") for k in logs)
        ):
            return
        logs.update(self._pending)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending)
        self._pending = {}

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # -- summary for scripts (gpu_check) -----------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Medians over the steps after the first (warm-up): FLOPs per step, TFLOP/s, MFU, tokens/s."""
        later = self.records[1:] or self.records
        if not later:
            return {}
        per_step = [throughput_metrics([record], self.peak) for record in later]
        result: dict[str, Any] = {
            "device_name": self.device_name,
            "peak_tflops": self.peak,
            "model_flops_per_step": statistics.median(r.model_flops for r in later),
            "hardware_flops_per_step": statistics.median(r.hardware_flops for r in later),
            "tokens_per_step": statistics.median(r.tokens for r in later),
        }
        for key in ("perf/tflops", "perf/hardware_tflops", "perf/tokens_per_s", "perf/mfu", "perf/hfu"):
            values = [metrics[key] for metrics in per_step if key in metrics]
            if values:
                result[key.removeprefix("perf/")] = statistics.median(values)
        return result
