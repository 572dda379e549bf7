"""Lazy image datasets read back exactly what the eager ones held: same rows, same pixels, same batches.

The eager reference is built here the way sft.py / grpo.py built their datasets before images were
decoded per batch: every image decoded up front (`ExampleBuilder.sft_example` / `grpo_example`) and
stored by `Dataset.from_list`.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image

from skinderm.conversations import ExampleBuilder
from skinderm.data.prepare import prepare_dataset
from skinderm.training.common import DecodeImages, build_examples, image_dataset

# Every answer field (the polygon reads masks), a pixel budget that resizes the 240x180 images.
BUILDER = ExampleBuilder(
    fields=("diagnosis", "location", "bbox_2d", "polygon"), min_pixels=3136, max_pixels=40000
)


@pytest.fixture(scope="module")
def records(small_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """All 70 records of the small synthetic set, those without a mask file included."""
    frame = prepare_dataset(
        {
            "name": "ham10000",
            "root": str(small_synthetic),
            "annotations_dir": str(tmp_path_factory.mktemp("a")),
        }
    )
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def eager_sft(records: Sequence[Mapping[str, Any]], *, with_image_id: bool) -> Dataset:
    """sft.py's train (with image_id) / eval (without) dataset before lazy images."""
    examples = build_examples(records, BUILDER.sft_example, "eager")
    if with_image_id:
        examples = [
            {**example, "image_id": record["image_id"]}
            for example, record in zip(examples, records, strict=True)
        ]
    return Dataset.from_list(examples)


def eager_grpo(records: Sequence[Mapping[str, Any]]) -> Dataset:
    """grpo.py's train dataset before lazy images."""
    return Dataset.from_list(build_examples(records, BUILDER.grpo_example, "eager"))


def pixels(image: Image.Image) -> tuple[str, tuple[int, int], np.ndarray]:
    return image.mode, image.size, np.asarray(image)


def assert_same_rows(eager_rows: Sequence[Mapping[str, Any]], lazy_rows: Sequence[Mapping[str, Any]]) -> None:
    """Same keys in the same order, equal values, and images equal pixel for pixel."""
    assert len(eager_rows) == len(lazy_rows)
    for eager, lazy in zip(eager_rows, lazy_rows, strict=True):
        assert list(eager) == list(lazy)
        assert {k: v for k, v in eager.items() if k != "images"} == {
            k: v for k, v in lazy.items() if k != "images"
        }
        assert len(eager["images"]) == len(lazy["images"]) == 1
        for eager_image, lazy_image in zip(eager["images"], lazy["images"], strict=True):
            assert isinstance(lazy_image, Image.Image)
            (mode_a, size_a, array_a), (mode_b, size_b, array_b) = pixels(eager_image), pixels(lazy_image)
            assert (mode_a, size_a) == (mode_b, size_b) == ("RGB", lazy_image.size)
            np.testing.assert_array_equal(array_a, array_b)


CASES: dict[str, tuple[Callable[..., Dataset], Callable[..., Dataset]]] = {
    "sft_train": (
        lambda records: eager_sft(records, with_image_id=True),
        lambda records: image_dataset(records, BUILDER.sft_columns, "lazy", with_image_id=True),
    ),
    "sft_eval": (
        lambda records: eager_sft(records, with_image_id=False),
        lambda records: image_dataset(records, BUILDER.sft_columns, "lazy"),
    ),
    "grpo_train": (eager_grpo, lambda records: image_dataset(records, BUILDER.grpo_columns, "lazy")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lazy_datasets_read_back_the_eager_rows_every_way_trainers_read(
    case: str, records: list[dict]
) -> None:
    """Row by row (`ds[i]`), as the DataLoader fetches (`__getitems__` of a shuffled batch), by iteration
    (TRL's SFTTrainer looks at `next(iter(train_dataset))` to detect a vision dataset), and by column."""
    make_eager, make_lazy = CASES[case]
    eager, lazy = make_eager(records), make_lazy(records)
    assert len(eager) == len(lazy) == len(records)
    assert eager.column_names == lazy.column_names
    assert_same_rows([eager[i] for i in range(len(eager))], [lazy[i] for i in range(len(lazy))])
    order = list(np.random.default_rng(0).permutation(len(records))[:9])
    assert_same_rows(eager.__getitems__(order), lazy.__getitems__(order))
    assert_same_rows(list(eager), list(lazy))
    for column in (name for name in eager.column_names if name != "images"):
        assert eager[column] == lazy[column]


def test_lazy_datasets_hold_no_pixels_and_survive_pickling(records: list[dict]) -> None:
    """The Arrow table holds paths and sizes, not images; DataLoader workers get a working copy."""
    eager = eager_grpo(records)
    lazy = image_dataset(records, BUILDER.grpo_columns, "lazy")
    assert lazy.data.nbytes * 20 < eager.data.nbytes
    assert lazy.format["type"] == "custom" and isinstance(
        lazy.format["format_kwargs"]["transform"], DecodeImages
    )
    copy = pickle.loads(pickle.dumps(lazy))
    assert_same_rows([eager[3], eager[5]], [copy[3], copy[5]])


def test_the_sft_collator_builds_the_same_batches(records: list[dict], compose_train) -> None:
    """TRL's vision-language collator (SFTTrainer's, under skip_prepare_dataset) gives equal tensors."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from skinderm.core.files import to_plain
    from skinderm.models.loading import load_model_and_processor

    cfg = compose_train(["model.max_pixels=40000"])
    _, processor = load_model_and_processor(to_plain(cfg.model))
    collator = DataCollatorForVisionLanguageModeling(processor=processor, completion_only_loss=True)
    eager = eager_sft(records[:12], with_image_id=True)
    lazy = image_dataset(records[:12], BUILDER.sft_columns, "lazy", with_image_id=True)
    for batch in ([0, 1, 2, 3], [11, 4, 7, 9]):
        expected, got = collator(eager.__getitems__(batch)), collator(lazy.__getitems__(batch))
        assert sorted(expected) == sorted(got)
        for key, value in expected.items():
            assert torch.equal(value, got[key]), key


def test_image_ids_reach_the_shard_recording_collator(records: list[dict], tmp_path: Path) -> None:
    """hardware.record_shards reads `image_id` from the features the DataLoader hands the collator."""
    from skinderm.training.shards import RecordingCollator

    lazy = image_dataset(records, BUILDER.sft_columns, "lazy", with_image_id=True)
    order = [5, 0, 17, 3]
    batch = RecordingCollator(lambda features: features, tmp_path / "rank0.txt")(lazy.__getitems__(order))
    assert (tmp_path / "rank0.txt").read_text().split() == [records[i]["image_id"] for i in order]
    assert all(isinstance(example["images"][0], Image.Image) for example in batch)
