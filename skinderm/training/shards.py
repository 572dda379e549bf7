"""Which images each rank trained on: `<run>/data_shards/rank<k>.txt`, one image_id a line, in order.

With `hardware.record_shards=true` every rank appends the image_id of each training example its
dataloader collates. It answers "did my 8 GPUs really see different data?" and "which images went
into step N?" after the fact. The dataloader may collate one batch ahead of the last step.
Only the training datasets carry an `image_id` column, so evaluation batches are not recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

SHARDS_DIR = "data_shards"
ID_COLUMN = "image_id"


def shard_file(shards_dir: Path, rank: int) -> Path:
    return Path(shards_dir) / f"rank{rank}.txt"


class RecordingCollator:
    """Wraps a data collator: appends the batch's image_ids to this rank's file, then collates.

    One append per batch, so it also works inside dataloader worker processes.
    """

    def __init__(self, collator: Callable[[list[Any]], Any], path: Path) -> None:
        self.collator = collator
        self.path = Path(path)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> Any:
        image_ids = [feature[ID_COLUMN] for feature in features if feature.get(ID_COLUMN) is not None]
        if image_ids:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write("".join(f"{image_id}\n" for image_id in image_ids))
        return self.collator(features)


def record_data_shards(trainer: Any, shards_dir: Path) -> Path:
    """Make `trainer` record the image_ids its training batches hold on this rank; returns the file."""
    path = shard_file(shards_dir, int(trainer.args.process_index))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(trainer.data_collator, RecordingCollator):
        trainer.data_collator = RecordingCollator(trainer.data_collator, path)
    return path


def read_shards(shards_dir: Path) -> dict[int, list[str]]:
    """{rank: image_ids in the order that rank consumed them} from a run's data_shards folder."""
    return {
        int(path.stem.removeprefix("rank")): path.read_text(encoding="utf-8").split()
        for path in sorted(Path(shards_dir).glob("rank*.txt"))
    }
