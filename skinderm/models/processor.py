"""An image-only Qwen2.5-VL processor, so that the project runs where torchvision cannot be installed.

transformers 5.24's `Qwen2_5_VLProcessor` refuses to build or load without a video processor, and the
video processor is torchvision-only. Images need no torchvision: `Qwen2VLImageProcessorPil` gives the
same `pixel_values` / `image_grid_thw` as the reference resize. `ImageOnlyQwen2_5_VLProcessor` is the
real processor class with its video half removed (its `__init__` names only `image_processor` and
`tokenizer`, which is how `ProcessorMixin.get_attributes` decides what to build, check, save and
load); text expansion, `apply_chat_template`, `mm_token_type_ids` and decoding are inherited unchanged.
Nothing in transformers is patched.

It saves in the standard layout (`processor_class: Qwen2_5_VLProcessor`, plus a default video
processor entry), so a folder written here loads with `AutoProcessor` where torchvision exists.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from transformers import Qwen2_5_VLProcessor
from transformers.image_utils import SizeDict
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

from skinderm.coordinates import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, check_pixel_budget

# The class name a Qwen2.5-VL checkpoint records; AutoProcessor resolves it where torchvision exists.
HUB_PROCESSOR_CLASS = "Qwen2_5_VLProcessor"
# What Qwen2_5_VLProcessor.save_pretrained writes for its default Qwen2VLVideoProcessor (captured with
# transformers 5.24 + torchvision 0.26), so the folder also loads where the video processor exists.
# Videos are never used here.
DEFAULT_VIDEO_PROCESSOR_CONFIG: dict[str, Any] = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "do_sample_frames": False,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "max_frames": 768,
    "max_video_tokens": 128000,
    "merge_size": 2,
    "min_frames": 4,
    "patch_size": 14,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "return_metadata": False,
    "size": {"longest_edge": 602112, "shortest_edge": 100352},
    "temporal_patch_size": 2,
    "video_processor_type": "Qwen2VLVideoProcessor",
}


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without a video processor: same images, tokens and chat template handling."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # Same special-token set-up as Qwen2_5_VLProcessor.__init__, which we skip because it passes a
        # third (video) sub-processor to ProcessorMixin.__init__.
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.image_token
        )
        self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.video_token
        )
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs):
        if videos is not None or audio is not None:
            raise ValueError(
                f"{type(self).__name__} handles images and text only (it exists because torchvision is "
                "missing); install torchvision to process videos"
            )
        return super().__call__(images=images, text=text, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The standard Qwen2.5-VL processor config, so the saved folder loads with AutoProcessor too."""
        output = super().to_dict()
        output["processor_class"] = HUB_PROCESSOR_CLASS
        output.setdefault("video_processor", copy.deepcopy(DEFAULT_VIDEO_PROCESSOR_CONFIG))
        return output

    def save_pretrained(
        self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs
    ) -> list[str]:
        """Save like `Qwen2_5_VLProcessor`: tokenizer files, chat_template.jinja, processor_config.json."""
        if push_to_hub:
            raise ValueError(
                f"{type(self).__name__}.save_pretrained saves locally only; upload the folder yourself"
            )
        files = super().save_pretrained(save_directory, **kwargs)
        # ProcessorMixin stamps the tokenizer config with this class's name, unknown to AutoProcessor.
        tokenizer_config = Path(save_directory) / "tokenizer_config.json"
        if tokenizer_config.is_file():
            config = json.loads(tokenizer_config.read_text(encoding="utf-8"))
            config["processor_class"] = HUB_PROCESSOR_CLASS
            tokenizer_config.write_text(
                json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
        return files


def torchvision_available() -> bool:
    """Whether torchvision imports here (transformers then builds the full processor itself)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


def build_image_processor(*, min_pixels: int, max_pixels: int) -> Qwen2VLImageProcessorPil:
    """Qwen2.5-VL's image processor (PIL backend) with the given pixel budget, other settings as released."""
    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


def set_pixel_limits(processor: ProcessorMixin, *, min_pixels: int, max_pixels: int) -> None:
    """Set the image resize budget in place: what `model_input_size` and box scaling must agree with.

    The same budget check as `model_input_size`: a budget no pre-resized image can stay inside is refused.
    """
    check_pixel_budget(int(min_pixels), int(max_pixels))
    processor.image_processor.size = SizeDict(shortest_edge=int(min_pixels), longest_edge=int(max_pixels))


def load_processor(
    path_or_id: str | os.PathLike,
    *,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    local_files_only: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
    padding_side: str = "left",
) -> ProcessorMixin:
    """Load a Qwen2.5-VL processor from a folder or hub id, with or without torchvision.

    With torchvision: `AutoProcessor` (the full processor, video included). Without: the image-only
    class, built by the same `from_pretrained` machinery from the folder's tokenizer files, image
    processor config (PIL backend) and chat template. Either way the pixel budget is set from the
    arguments and padding is on the `padding_side` (left: batched generation needs it; TRL's
    collators pass their own side explicitly).
    """
    hub_kwargs: dict[str, Any] = {"local_files_only": local_files_only}
    if revision is not None:
        hub_kwargs["revision"] = revision
    if torchvision_available():
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(
            str(path_or_id), trust_remote_code=trust_remote_code, **hub_kwargs
        )
    else:
        processor = ImageOnlyQwen2_5_VLProcessor.from_pretrained(str(path_or_id), **hub_kwargs)
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ValueError(
            f"{path_or_id} did not load as an image+text processor (got {type(processor).__name__}); "
            "model.name_or_path must point at a Qwen2.5-VL checkpoint"
        )
    set_pixel_limits(processor, min_pixels=min_pixels, max_pixels=max_pixels)
    processor.tokenizer.padding_side = padding_side
    return processor
