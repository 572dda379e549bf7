"""A tiny, randomly initialised Qwen2.5-VL with a locally trained tokenizer: the whole pipeline offline.

Same architecture and processor as Qwen/Qwen2.5-VL-3B-Instruct (14 px patches merged 2x2, M-RoPE,
windowed vision attention, the official chat template and special tokens), only small: ~1.4 M
parameters as conf/model/tiny.yaml builds it (0.8 M with this module's defaults), built in about a
second, no download. The tokenizer is a byte-level BPE trained on a built-in corpus of the answer
vocabulary (JSON, digits, class codes and names, grid cells, prompt words), with the byte alphabet as
its base so that any text tokenises.

`ensure_tiny_model` builds on demand and caches the folder keyed by its parameters.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from skinderm.coordinates import DEFAULT_MIN_PIXELS
from skinderm.data.classes import CLASS_CODES, CLASS_NAMES, CLASS_SYNONYMS, LOCATIONS

# Qwen2.5-VL's special tokens, in the released tokenizer's id order (151643, 151644, ...).
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD,
)  # fmt: skip

# Records the build parameters; a folder whose file differs (or is missing) is rebuilt.
PARAMS_FILE = "skinderm_tiny_params.json"
# Bump when the builder changes what it writes, so cached folders are rebuilt.
BUILDER_VERSION = 1

# 224x168 for a 600x450 image (48 visual tokens). Not 224*168 = 37632: smart_resize's float rounding
# turns max_pixels=37632 into 196x140 for that image (see coordinates.smart_resize).
TINY_MAX_PIXELS = 40_000

_PROMPT_SENTENCES = (
    "Look at this dermoscopy image.",
    "Look at this dermoscopy image. Answer in JSON with",
    "What is the diagnosis of the skin lesion in this image?",
    "Answer with one JSON object and nothing else.",
    "the lesion box [x1, y1, x2, y2] in pixels of this image",
    "the lesion outline as [[x, y], ...] in pixels of this image",
    "the 3x3 grid cell of the lesion, one of",
    "You are a helpful assistant.",
    "lesion located in the center of the image",
    "diagnosis location bbox_2d polygon label region one of",
)


def tiny_corpus() -> list[str]:
    """Deterministic training text for the tiny tokenizer: what prompts and answers are made of."""
    lines: list[str] = list(_PROMPT_SENTENCES)
    for code in CLASS_CODES:
        names = (CLASS_NAMES[code], *CLASS_SYNONYMS[code])
        lines.append(f"{code}: {', '.join(names)}")
        lines.extend(f"The lesion is {name} ({code})." for name in names)
    lines.append(", ".join(CLASS_CODES))
    lines.append(", ".join(LOCATIONS))
    lines.extend(f"lesion located in {location} region" for location in LOCATIONS)
    lines.append(" ".join(str(number) for number in range(1001)))
    # Answers in the JSON spelling of json.dumps (", " and ": "), with every field and plenty of numbers.
    for index, code in enumerate(CLASS_CODES * 9):
        location = LOCATIONS[index % len(LOCATIONS)]
        x1, y1 = (37 * index) % 500, (53 * index) % 350
        box = [x1, y1, x1 + 20 + (11 * index) % 180, y1 + 15 + (7 * index) % 120]
        polygon = [[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]]
        answer = {"diagnosis": code, "location": location, "bbox_2d": box, "polygon": polygon}
        lines.append(json.dumps(answer))
        lines.append(json.dumps({"diagnosis": CLASS_NAMES[code], "location": location}))
    return lines


def train_tiny_tokenizer(vocab_size: int):
    """A Qwen2Tokenizer (Qwen's pre-tokeniser, byte-level BPE) trained on `tiny_corpus`, plus Qwen's specials.

    BPE ids come first, then the special tokens in Qwen's order; eos is `<|im_end|>`, pad `<|endoftext|>`.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe_size = vocab_size - len(SPECIAL_TOKENS)
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    if bpe_size < len(byte_alphabet):
        raise ValueError(
            f"model.tiny.vocab_size={vocab_size} is too small: the byte alphabet alone needs "
            f"{len(byte_alphabet)} ids plus {len(SPECIAL_TOKENS)} special tokens"
        )
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_size, initial_alphabet=byte_alphabet, min_frequency=2, show_progress=False
    )
    bpe.train_from_iterator(tiny_corpus(), trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(trained["vocab"])
    merges = [tuple(pair) for pair in trained["merges"]]  # Qwen2Tokenizer wants tuples, not "a b"
    first_special = len(vocab)
    for offset, token in enumerate(SPECIAL_TOKENS):
        vocab[token] = first_special + offset
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        extra_special_tokens=[token for token in SPECIAL_TOKENS if token not in (IM_END, ENDOFTEXT)],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )


def mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width) like Qwen's [16, 24, 24] of 64."""
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


def full_attention_blocks(depth: int) -> list[int]:
    """Vision blocks with full (not windowed) attention: every 8th and the last, as in [7, 15, 23, 31]."""
    return sorted({index for index in range(depth) if (index + 1) % 8 == 0} | {depth - 1})


def tiny_config(
    tokenizer,
    *,
    text_hidden_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    intermediate_size: int,
    vision_hidden_size: int,
    vision_depth: int,
    vision_num_heads: int,
    vision_intermediate_size: int,
    vocab_size: int,
    rope_theta: float = 1e6,
):
    """A Qwen2_5_VLConfig of the given shape whose token ids are the tiny tokenizer's.

    `rope_theta` is Qwen's 1e6 by default. With a small head dim, M-RoPE gives height and width the
    lowest frequencies, which at 1e6 barely turn over an image grid of a few tokens: the language model
    then cannot tell where an image token is. A small theta (e.g. 10) makes location learnable.
    """
    from transformers import Qwen2_5_VLConfig

    if text_hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
        raise ValueError(
            f"model.tiny: text_hidden_size ({text_hidden_size}) must divide by num_attention_heads "
            f"({num_attention_heads}), which must divide by num_key_value_heads ({num_key_value_heads})"
        )
    head_dim = text_hidden_size // num_attention_heads
    if head_dim % 2 or head_dim < 8:
        raise ValueError(f"model.tiny: head dim {head_dim} must be even and >= 8 for M-RoPE")
    if vision_hidden_size % vision_num_heads or (vision_hidden_size // vision_num_heads) % 4:
        raise ValueError(
            f"model.tiny: vision_hidden_size ({vision_hidden_size}) / vision_num_heads ({vision_num_heads}) "
            "must be a multiple of 4 (2-D rotary embedding)"
        )
    if rope_theta <= 1:
        raise ValueError(f"model.tiny.rope_theta={rope_theta} must be > 1")
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"model.tiny.vocab_size={vocab_size} is smaller than the tokenizer ({len(tokenizer)})"
        )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": text_hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": float(rope_theta),
            "mrope_section": mrope_section(head_dim),
        },
        "bos_token_id": ids[ENDOFTEXT],
        "eos_token_id": ids[IM_END],
        "pad_token_id": ids[ENDOFTEXT],
    }
    vision_config = {
        "depth": vision_depth,
        "hidden_size": vision_hidden_size,
        "intermediate_size": vision_intermediate_size,
        "num_heads": vision_num_heads,
        "out_hidden_size": text_hidden_size,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        "window_size": 112,
        "fullatt_block_indexes": full_attention_blocks(vision_depth),
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=False,
    )


def build_tiny_qwen2_5_vl(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    text_hidden_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 256,
    vision_hidden_size: int = 64,
    vision_depth: int = 2,
    vision_num_heads: int = 2,
    vision_intermediate_size: int = 128,
    vocab_size: int = 1024,
    rope_theta: float = 1e6,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
) -> Path:
    """Write a random tiny Qwen2.5-VL (safetensors) and its processor into `out_dir`; same seed, same bytes.

    The folder has the layout of a hub checkpoint, so it loads through `load_model_and_processor`
    exactly like Qwen/Qwen2.5-VL-3B-Instruct does. The caller's torch RNG state is left untouched.
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration
    from trl.chat_template_utils import qwen2_5_vl_chat_template

    from skinderm.models.processor import ImageOnlyQwen2_5_VLProcessor, build_image_processor

    out_dir = Path(out_dir)
    tokenizer = train_tiny_tokenizer(vocab_size)
    # TRL recognises this exact template (e.g. to swap in its assistant-mask version for assistant_only_loss).
    tokenizer.chat_template = qwen2_5_vl_chat_template
    config = tiny_config(
        tokenizer,
        text_hidden_size=text_hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
        vision_hidden_size=vision_hidden_size,
        vision_depth=vision_depth,
        vision_num_heads=vision_num_heads,
        vision_intermediate_size=vision_intermediate_size,
        vocab_size=vocab_size,
        rope_theta=rope_theta,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    text_ids = config.text_config
    model.generation_config = GenerationConfig(
        bos_token_id=text_ids.bos_token_id,
        eos_token_id=[text_ids.eos_token_id, text_ids.pad_token_id],  # <|im_end|>, <|endoftext|> as released
        pad_token_id=text_ids.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    processor = ImageOnlyQwen2_5_VLProcessor(
        image_processor=build_image_processor(min_pixels=min_pixels, max_pixels=max_pixels),
        tokenizer=tokenizer,
        chat_template=qwen2_5_vl_chat_template,
    )
    processor.save_pretrained(out_dir)
    return out_dir


def tiny_build_params(**params: Any) -> dict[str, Any]:
    """Defaults of `build_tiny_qwen2_5_vl` overlaid with `params`; unknown names are an error."""
    import inspect

    signature = inspect.signature(build_tiny_qwen2_5_vl)
    defaults = {name: p.default for name, p in signature.parameters.items() if name != "out_dir"}
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"model.tiny: unknown parameter(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **params}


def ensure_tiny_model(out_dir: str | os.PathLike, **params: Any) -> Path:
    """The tiny model folder for these parameters, built if missing or built with other parameters.

    Built in a temporary sibling folder and renamed into place, so a half-written folder is never
    used and concurrent builders (e.g. several ranks) end with one complete folder.
    """
    out_dir = Path(out_dir)
    wanted = {"builder_version": BUILDER_VERSION, **tiny_build_params(**params)}
    if _recorded_params(out_dir) == wanted:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.building-{uuid.uuid4().hex[:8]}"
    try:
        build_tiny_qwen2_5_vl(staging, **tiny_build_params(**params))
        (staging / PARAMS_FILE).write_text(
            json.dumps(wanted, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        if out_dir.exists():  # stale: other parameters or an older builder
            if _recorded_params(out_dir) == wanted:  # another process finished first
                return out_dir
            retired = out_dir.parent / f".{out_dir.name}.stale-{uuid.uuid4().hex[:8]}"
            out_dir.rename(retired)
            shutil.rmtree(retired, ignore_errors=True)
        try:
            staging.rename(out_dir)
        except OSError:
            if _recorded_params(out_dir) != wanted:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _recorded_params(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / PARAMS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
