"""SFT targets and GRPO ground truth agree: a target answer earns full reward, in model-space pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skinderm.answers import parse_answer
from skinderm.conversations import ExampleBuilder, build_prompt, mask_polygon
from skinderm.data.prepare import prepare_dataset
from skinderm.rewards import bbox_iou_reward, diagnosis_reward, outline_iou_reward, spatial_reward


@pytest.fixture(scope="module")
def records(small_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    frame = prepare_dataset(
        {
            "name": "ham10000",
            "root": str(small_synthetic),
            "annotations_dir": str(tmp_path_factory.mktemp("ann")),
        }
    )
    frame = frame[frame["mask_available"].astype(bool)]
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


BUILDER = ExampleBuilder(
    fields=("diagnosis", "location", "bbox_2d", "polygon"), min_pixels=3136, max_pixels=40000
)


def test_prompt_lists_exactly_the_taught_fields() -> None:
    assert "bbox_2d" in build_prompt(["diagnosis", "bbox_2d"]) and "location" not in build_prompt(
        ["diagnosis"]
    )
    with pytest.raises(ValueError, match=r"answer\.fields"):
        build_prompt(["diagnosis", "colour"])


def test_target_answers_earn_full_rewards_in_model_space(records: list[dict]) -> None:
    examples = [BUILDER.grpo_example(record) for record in records[:12]]
    answers = [BUILDER.answer(record) for record in records[:12]]
    columns = {
        key: [example[key] for example in examples] for key in examples[0] if key not in ("prompt", "images")
    }
    assert diagnosis_reward(answers, **columns) == [1.0] * len(answers)
    assert spatial_reward(answers, **columns) == [1.0] * len(answers)
    assert min(bbox_iou_reward(answers, **columns)) == pytest.approx(1.0)
    # The simplified polygon (<= 16 points) of a smooth blob covers most of its mask.
    assert float(np.mean(outline_iou_reward(answers, **columns))) > 0.8


def test_images_are_decoded_at_the_size_the_answer_coordinates_use(records: list[dict]) -> None:
    example = BUILDER.sft_example(records[0])
    width, height = BUILDER.model_size(records[0])
    assert example["images"][0].size == (width, height)
    parsed = parse_answer(example["completion"][0]["content"][0]["text"])
    x1, y1, x2, y2 = parsed.bbox_2d
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert all(0 <= x <= width and 0 <= y <= height for x, y in parsed.polygon)


def test_mask_polygon_respects_the_vertex_budget() -> None:
    yy, xx = np.mgrid[:100, :120]
    mask = (xx - 60) ** 2 / 40**2 + (yy - 50) ** 2 / 25**2 <= 1
    for budget in (3, 8, 16):
        assert 3 <= len(mask_polygon(mask, budget)) <= budget
    assert mask_polygon(np.zeros((10, 10), bool), 8) is None


def test_the_outline_is_of_the_component_annotation_boxes() -> None:
    """A thin ring encloses more area than a solid blob but has fewer pixels: the lesion (largest
    8-connected component by pixels, as annotation defines it) is the blob, and so is its outline."""
    from skinderm.data.annotation import annotate_mask

    mask = np.zeros((200, 300), dtype=bool)
    mask[20:180, 20:180] = True
    mask[22:178, 22:178] = False  # ring: 160x160 outline, ~1,264 pixels
    mask[60:110, 200:250] = True  # blob: 50x50 = 2,500 pixels
    x1, y1, x2, y2 = annotate_mask(mask).bbox
    assert (x1, y1, x2, y2) == (200, 60, 250, 110)
    polygon = mask_polygon(mask, max_points=16)
    assert polygon is not None and len(polygon) >= 3
    assert all(x1 <= x < x2 and y1 <= y < y2 for x, y in polygon), polygon
