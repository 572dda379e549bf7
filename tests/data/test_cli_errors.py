"""Bad data and bad parameters through the entrypoints, as a user meets them: one `error:` line on stderr
naming the file or key and the fix, exit code 2, no traceback; or a counted skip (issue 10)."""

from __future__ import annotations

import errno
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from skinderm.data import layout

Run = Callable[..., subprocess.CompletedProcess[str]]
SMALL = [
    "dataset.synthetic.num_images=20",
    "dataset.synthetic.image_width=96",
    "dataset.synthetic.image_height=72",
]


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single `error:` line of a failed run, checked: exit code 2, no traceback on stderr."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def _image(root: Path, image_id: str) -> Path:
    return next(root.glob(f"HAM10000_images_part_*/{image_id}.jpg"))


def _mask(root: Path) -> Path:
    return sorted((root / layout.MASK_FOLDER_NAME).iterdir())[0]


def _annotate(run_cli: Run, root: Path, *overrides: str, code: str | None = None):
    return run_cli("skinderm.annotate", f"dataset.root={root}", *overrides, cwd=root.parent, code=code)


# --- synthesize ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("dataset.synthetic.num_images=0", "dataset.synthetic.num_images must be at least 1"),
        ("dataset.synthetic.image_width=0", "dataset.synthetic.image_width must be between 48 and 8192"),
        ("dataset.synthetic.image_height=-5", "dataset.synthetic.image_height must be between 36 and 8192"),
        ("dataset.synthetic.image_width=abc", "dataset.synthetic.image_width must be a whole number"),
    ],
)
def test_synthesize_refuses_nonsense_parameters(
    run_cli: Run, tmp_path: Path, override: str, key: str
) -> None:
    out = tmp_path / "ham"
    line = one_error_line(run_cli("skinderm.synthesize", f"out={out}", *SMALL, override, cwd=tmp_path))
    assert line.startswith(f"error: {key}")
    assert not out.exists()  # refused before any work


@pytest.mark.parametrize("content", ["notes", "ham10000"])
def test_synthesize_refuses_a_folder_it_did_not_write(
    run_cli: Run, tmp_path: Path, small_synthetic: Path, content: str
) -> None:
    out = tmp_path / "theirs"
    if content == "notes":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:  # a real HAM10000 copy: metadata and images, no generator markers
        out.mkdir()
        for name in ("HAM10000_metadata.csv", "HAM10000_images_part_1"):
            source = small_synthetic / name
            if source.is_dir():
                (out / name).mkdir()
                (out / name / "ISIC_0024306.jpg").write_bytes(
                    _image(small_synthetic, "ISIC_0024306").read_bytes()
                )
            else:
                (out / name).write_bytes(source.read_bytes())
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    line = one_error_line(run_cli("skinderm.synthesize", f"out={out}", *SMALL, cwd=tmp_path))
    assert f"error: Synthetic dataset folder {out} holds" in line and "choose a new or empty folder" in line
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert not list(tmp_path.glob(".*.lock"))


def test_synthesize_leaves_no_lock_file_beside_the_dataset(run_cli: Run, tmp_path: Path) -> None:
    parent = tmp_path / "data"
    parent.mkdir()
    result = run_cli("skinderm.synthesize", f"out={parent / 'ham'}", *SMALL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in parent.iterdir()] == ["ham"]


# --- annotate ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["image", "mask"])
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_annotate_symlink_loop(
    run_cli: Run, synthetic_copy: Callable[..., Path], kind: str, on_error: str
) -> None:
    root = synthetic_copy()
    path = _image(root, "ISIC_0024320") if kind == "image" else _mask(root)
    path.unlink()
    path.symlink_to(path.name)
    result = _annotate(run_cli, root, f"dataset.on_error={on_error}")
    if on_error == "raise":
        line = one_error_line(result)
        assert f"error: {kind.title()} file {path} is a symbolic link loop" in line
    else:
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert f"69 of 70 listed images used, 1 skipped ({kind}_unreadable 1;" in result.stdout


def test_annotate_names_an_image_over_the_decompression_limit(
    run_cli: Run, synthetic_copy: Callable[..., Path], bomb_png: Path
) -> None:
    root = synthetic_copy()
    path = _image(root, "ISIC_0024321")
    shutil.copyfile(bomb_png, path)  # a PNG named .jpg: PIL goes by the content
    line = one_error_line(_annotate(run_cli, root))
    assert f"error: Image file {path} has 400,000,000 pixels, more than the 89,478,485" in line
    assert "downscale it" in line


def test_annotate_names_a_truncated_jpeg_with_an_appended_end_marker(
    run_cli: Run, synthetic_copy: Callable[..., Path]
) -> None:
    root = synthetic_copy()
    path = _image(root, "ISIC_0024322")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    assert f"error: Image file {path} is truncated" in one_error_line(_annotate(run_cli, root))


def test_annotate_names_a_metadata_file_with_two_dx_columns(
    run_cli: Run, synthetic_copy: Callable[..., Path]
) -> None:
    root = synthetic_copy()
    metadata = root / "HAM10000_metadata.csv"
    lines = metadata.read_text().splitlines()
    metadata.write_text("\n".join([lines[0] + ",dx", *(line + ",nv" for line in lines[1:])]) + "\n")
    line = one_error_line(_annotate(run_cli, root, "dataset.on_error=skip"))
    assert f"error: Metadata file {metadata} has a column more than once ('dx' in columns 3, 9)" in line


def test_annotate_names_both_copies_of_an_image_in_two_part_folders(
    run_cli: Run, synthetic_copy: Callable[..., Path]
) -> None:
    root = synthetic_copy()
    first = _image(root, "ISIC_0024306")
    other = root / "HAM10000_images_part_2" / first.name
    other.write_bytes(_image(root, "ISIC_0024370").read_bytes())
    line = one_error_line(_annotate(run_cli, root))
    assert f"has two different files, {first} and {other}: delete the wrong one" in line


FULL_DISK = f"""
import errno
from skinderm.core import files
def _full(path, data):
    raise OSError(errno.ENOSPC, "No space left on device")
files._write_new_file = _full
assert errno.ENOSPC == {errno.ENOSPC}
"""


def test_annotate_on_a_full_disk_names_the_file_being_written(
    run_cli: Run, synthetic_copy: Callable[..., Path], tmp_path: Path
) -> None:
    root = synthetic_copy()
    out = tmp_path / "annotations"
    line = one_error_line(_annotate(run_cli, root, f"annotate.out_dir={out}", code=FULL_DISK))
    assert str(out / layout.ANNOTATIONS_SUMMARY_JSON) in line and "space" in line.lower()
