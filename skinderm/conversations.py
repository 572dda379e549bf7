"""Turn annotated records into the chat examples TRL trains on (SFT) and samples from (GRPO).

SFT and GRPO share the prompt, the image size and the answer format, so a model leaving Stage 1 answers
in exactly the format Stage 2 rewards (public GRPO recipes lose their format reward when these drift).
Images are decoded straight to the size the processor would resize them to (smart_resize), so the
processor does no resizing and boxes in answers are in the pixel space the model sees. Training datasets
hold only an image *source* per example (`image_source`: path + model size, a few bytes) and decode it
when a batch is read (skinderm.training.common.DecodeImages): 10,015 decoded HAM10000 images at
504x364 are ~5 GB per rank, their sources well under 1 MB. `sft_example` / `grpo_example` are the same
examples with the images decoded now (evaluation, tests, benchmarks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from skinderm.answers import format_answer
from skinderm.coordinates import box_to_model_space, model_input_size, points_to_model_space
from skinderm.data.annotation import largest_component
from skinderm.data.classes import CLASS_CODES, LOCATIONS
from skinderm.data.images import load_image, load_mask

_FIELD_INSTRUCTIONS = {
    "diagnosis": f'"diagnosis": one of {", ".join(CLASS_CODES)}',
    "location": f'"location": the 3x3 grid cell of the lesion, one of {", ".join(LOCATIONS)}',
    "bbox_2d": '"bbox_2d": the lesion box [x1, y1, x2, y2] in pixels of this image',
    "polygon": '"polygon": the lesion outline as [[x, y], ...] in pixels of this image',
}


def build_prompt(fields: Sequence[str]) -> str:
    """The question asked for every image; it lists exactly the answer fields being taught."""
    unknown = [field for field in fields if field not in _FIELD_INSTRUCTIONS]
    if unknown or not fields:
        raise ValueError(
            f"answer.fields={list(fields)}: unknown field(s) {unknown}; "
            f"choose from {list(_FIELD_INSTRUCTIONS)}"
        )
    parts = "; ".join(_FIELD_INSTRUCTIONS[field] for field in fields)
    return f"Look at this dermoscopy image. Answer in JSON with {parts}."


def prompt_messages(prompt: str) -> list[dict[str, Any]]:
    """A user turn holding the image placeholder and the question (TRL's multimodal message form)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def mask_polygon(mask: np.ndarray, max_points: int) -> list[list[int]] | None:
    """The outline of THE lesion (`largest_component`: the one annotation boxes), simplified to at most
    `max_points` vertices.

    Douglas-Peucker with a tolerance that grows until the vertex budget is met; None for an empty mask.
    """
    if max_points < 3:
        raise ValueError(f"answer.polygon_max_points={max_points}: a polygon needs at least 3 points")
    component = largest_component(mask)
    if component is None:
        return None
    # One 8-connected component has exactly one outer boundary (holes are not part of the outline).
    contours, _ = cv2.findContours(component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contour = max(contours, key=len)
    if len(contour) < 3:
        return None
    perimeter = cv2.arcLength(contour, closed=True)
    epsilon = 0.005 * perimeter
    approx = cv2.approxPolyDP(contour, epsilon, closed=True)
    while len(approx) > max_points:
        epsilon *= 1.25
        approx = cv2.approxPolyDP(contour, epsilon, closed=True)
    if len(approx) < 3:  # the tolerance jumped past the budget: evenly spaced contour points instead
        picks = np.linspace(0, len(contour), num=min(max_points, len(contour)), endpoint=False).astype(int)
        approx = contour[picks]
    return approx.reshape(-1, 2).tolist()


@dataclass(frozen=True)
class ExampleBuilder:
    """Builds SFT and GRPO examples from annotated records for one model input size policy."""

    fields: tuple[str, ...]
    min_pixels: int
    max_pixels: int
    polygon_max_points: int = 16

    @property
    def prompt(self) -> str:
        return build_prompt(self.fields)

    def model_size(self, record: Mapping[str, Any]) -> tuple[int, int]:
        return model_input_size(
            int(record["image_width"]),
            int(record["image_height"]),
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
        )

    def targets(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Ground truth in model space: dx, location, bbox_2d, polygon (None where the mask is missing)."""
        original_size = (int(record["image_width"]), int(record["image_height"]))
        size = self.model_size(record)
        bbox = record.get("bbox")
        has_box = bbox is not None and not (isinstance(bbox, float) and np.isnan(bbox))
        bbox_2d = box_to_model_space(list(bbox), original_size, size) if has_box else None
        polygon = None
        if "polygon" in self.fields and record.get("mask_path_abs"):
            points = mask_polygon(load_mask(record["mask_path_abs"]), self.polygon_max_points)
            polygon = points_to_model_space(points, original_size, size) if points else None
        location = record.get("location")
        return {
            "dx": record["dx"],
            "location": location if isinstance(location, str) else None,
            "bbox_2d": bbox_2d,
            "polygon": polygon,
            "model_width": size[0],
            "model_height": size[1],
        }

    def answer(self, record: Mapping[str, Any]) -> str:
        target = self.targets(record)
        return format_answer(
            diagnosis=target["dx"],
            location=target["location"],
            bbox_2d=target["bbox_2d"],
            polygon=target["polygon"],
            fields=self.fields,
        )

    def image(self, record: Mapping[str, Any]) -> Image.Image:
        return load_image(record["image_path_abs"], self.model_size(record))

    def image_source(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """What `decode_image_source` needs to decode `image(record)` later: path and model size."""
        width, height = self.model_size(record)
        return {"path": str(record["image_path_abs"]), "width": width, "height": height}

    def sft_columns(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """`sft_example` with `images` holding image sources instead of decoded images (same keys, order)."""
        return {
            "prompt": prompt_messages(self.prompt),
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": self.answer(record)}]}],
            "images": [self.image_source(record)],
        }

    def sft_example(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Conversational prompt-completion: TRL computes the loss on the completion only."""
        return {**self.sft_columns(record), "images": [self.image(record)]}

    def reward_columns(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The ground-truth columns reward functions receive (TRL passes dataset columns as kwargs)."""
        target = self.targets(record)
        return {
            "image_id": record["image_id"],
            "dx": target["dx"],
            "location": target["location"],
            "bbox_2d": target["bbox_2d"],
            "mask_path": record.get("mask_path_abs") or None,
            "model_width": target["model_width"],
            "model_height": target["model_height"],
        }

    def grpo_columns(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """`grpo_example` with `images` holding image sources instead of decoded images (same keys, order)."""
        return {
            "prompt": prompt_messages(self.prompt),
            "images": [self.image_source(record)],
            **self.reward_columns(record),
        }

    def grpo_example(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Prompt + image + ground-truth columns; TRL hands the extra columns to reward functions."""
        return {**self.grpo_columns(record), "images": [self.image(record)]}


def decode_image_source(source: Mapping[str, Any]) -> Image.Image:
    """The image an `ExampleBuilder.image_source` describes, decoded as `ExampleBuilder.image` decodes it."""
    return load_image(source["path"], (int(source["width"]), int(source["height"])))
