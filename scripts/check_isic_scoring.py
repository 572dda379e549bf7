"""Check our ISIC 2018 Task 3 balanced accuracy against the challenge's own scorer (issue 12, point 6).

    .venv/bin/python scripts/check_isic_scoring.py                        # venv /tmp/isic-scoring-venv
    .venv/bin/python scripts/check_isic_scoring.py --venv DIR --keep /tmp/isic_check --seed 3

Why a separate environment: `isic-challenge-scoring` (the scorer the challenge leaderboard runs) calls
`DataFrame.applymap`, which pandas 3 removed, and we use pandas 3. The script runs it with its own
interpreter, `VENV/bin/python -m isic_challenge_scoring -o json classification TRUTH PREDICTIONS`,
creating VENV with `python -m venv VENV && VENV/bin/pip install isic-challenge-scoring==5.6.0 'pandas<3'`
when it lacks the package (`--no-install` prints that command instead).

Per case it writes a synthetic test folder with the 1,512 official image ids (tiny JPEGs, random
labels, the official ground-truth CSV format), and a submission CSV (`image,MEL,...,VASC`
probabilities) from a seeded random prediction, some rows with a tie for the highest probability. Our
number comes from our code path: `load_evaluation_records` (what `python -m skinderm.evaluate
dataset=isic2018_test` reads, via skinderm.data.isic2018), one prediction record per image whose
dx_pred is the CSV row's unique argmax (a tie is None, as an unparsed answer), then `build_metrics`
(what metrics.json holds). Cases: the official 2018 truth format (no weight columns: the scorer's
legacy rule, ISIC_0035068 weighted 0) and the same with score_weight/validation_weight columns.
Exit status 1 when any |ours - official| > 1e-9, 2 when the scorer cannot be run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file: make `skinderm` importable from the checkout
    sys.path.insert(0, str(REPO))

from skinderm.data.isic2018 import (  # noqa: E402
    DATASET_NAME,
    GROUND_TRUTH_COLUMNS,
    GROUND_TRUTH_NAME,
    IMAGE_FOLDER_NAMES,
    SCORE_WEIGHT_COLUMN,
)
from skinderm.evaluation.choice import load_evaluation_records  # noqa: E402
from skinderm.evaluation.report import build_metrics  # noqa: E402

TOLERANCE = 1e-9
DEFAULT_VENV = Path("/tmp/isic-scoring-venv")
SCORER_REQUIREMENTS: tuple[str, ...] = ("isic-challenge-scoring==5.6.0", "pandas<3")

# The ids of ISIC2018_Task3_Test_GroundTruth.csv (1,512 rows, header image,MEL,NV,BCC,AKIEC,BKL,DF,VASC):
# ISIC_0034524..ISIC_0036064 except these 29 numbers. Read from a public copy of the released file
# (github.com/yash2mehta/CDS_Streamlit, ISIC2018_Task3_Test_GroundTruth.csv: 62,027 bytes = a 35-byte
# header + 1,512 rows of 41), row by row; neither the scorer's wheel nor its sdist ships the list.
FIRST_ID, LAST_ID = 34524, 36064
ABSENT_IDS: frozenset[int] = frozenset({
    34550, 34647, 34673, 34775, 34796, 34799, 34929, 34963, 34969, 34981, 35069, 35141, 35159, 35174,
    35183, 35203, 35249, 35251, 35252, 35269, 35279, 35371, 35424, 35426, 35502, 35514, 35549, 35595,
    35620,
})  # fmt: skip
N_TEST_IMAGES = 1512
# A skewed class mix (nv most common, as in HAM10000) so recalls of small classes move the number.
CLASS_MIX: tuple[float, ...] = (0.11, 0.60, 0.07, 0.04, 0.12, 0.03, 0.03)  # GROUND_TRUTH_COLUMNS order
TIE_EVERY = 37  # every 37th image gets a tie for the highest probability


def official_ids() -> list[str]:
    """The 1,512 image ids of the ISIC 2018 Task 3 test ground truth, sorted."""
    ids = [f"ISIC_{number:07d}" for number in range(FIRST_ID, LAST_ID + 1) if number not in ABSENT_IDS]
    assert len(ids) == N_TEST_IMAGES and "ISIC_0035068" in ids, len(ids)
    return ids


def write_test_folder(
    root: Path, ids: Sequence[str], labels: Sequence[int], weights: Mapping[str, np.ndarray] | None
) -> Path:
    """The official layout: ISIC2018_Task3_Test_Input/<id>.jpg and the one-hot ground truth CSV.

    With `weights` ({column: values}), the truth file also has those columns after the classes, as the
    challenge platform's newer truth files do. Returns the ground-truth CSV.
    """
    images = root / IMAGE_FOLDER_NAMES[0]
    images.mkdir(parents=True)
    pixels = np.full((6, 8, 3), 128, dtype=np.uint8)
    for image_id in ids:
        Image.fromarray(pixels).save(images / f"{image_id}.jpg", quality=50)
    header = ["image", *GROUND_TRUTH_COLUMNS, *(weights or {})]
    lines = [",".join(header)]
    for row, (image_id, label) in enumerate(zip(ids, labels, strict=True)):
        cells = ["1.0" if k == label else "0.0" for k in range(len(GROUND_TRUTH_COLUMNS))]
        cells += [repr(float(values[row])) for values in (weights or {}).values()]
        lines.append(",".join([image_id, *cells]))
    truth = root / GROUND_TRUTH_NAME
    truth.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return truth


def write_predictions(path: Path, ids: Sequence[str], rng: np.random.Generator) -> Path:
    """A submission CSV: seeded Dirichlet probabilities per image; every TIE_EVERY-th row has a tie."""
    n_classes = len(GROUND_TRUTH_COLUMNS)
    lines = [",".join(["image", *GROUND_TRUTH_COLUMNS])]
    for row, image_id in enumerate(ids):
        probs = rng.dirichlet(np.full(n_classes, 0.6))
        if row % TIE_EVERY == 0:
            first, second = rng.choice(n_classes, size=2, replace=False)
            probs = np.full(n_classes, 0.2 / (n_classes - 2))
            probs[first] = probs[second] = 0.4
        lines.append(",".join([image_id, *(repr(float(p)) for p in probs)]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def predicted_codes(predictions_csv: Path) -> dict[str, str | None]:
    """{image_id: our class code of the row's unique highest probability, None on a tie}."""
    table = pd.read_csv(predictions_csv, dtype={"image": str}).set_index("image")
    values = table[list(GROUND_TRUTH_COLUMNS)].to_numpy(dtype=float)
    top = values.max(axis=1, keepdims=True)
    n_top = (values == top).sum(axis=1)
    codes = [GROUND_TRUTH_COLUMNS[i].lower() for i in values.argmax(axis=1)]
    return {
        image_id: (code if count == 1 else None)
        for image_id, code, count in zip(table.index, codes, n_top, strict=True)
    }


def our_scores(root: Path, predictions_csv: Path) -> dict[str, Any]:
    """Balanced accuracy (official rule) and unweighted, through skinderm's reader and metrics."""
    records = load_evaluation_records({"name": DATASET_NAME, "root": str(root)}, "test")
    predicted = predicted_codes(predictions_csv)
    predictions = [
        {
            "image_id": record["image_id"],
            "lesion_id": record["lesion_id"],
            "dx_true": record["dx"],
            "dx_pred": predicted[record["image_id"]],
            "parse_ok": predicted[record["image_id"]] is not None,
            SCORE_WEIGHT_COLUMN: record[SCORE_WEIGHT_COLUMN],
        }
        for record in records
    ]
    metrics = build_metrics(predictions, n_resamples=0)
    return {
        "n": metrics["n"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "balanced_accuracy_unweighted": metrics["balanced_accuracy_unweighted"],
        "n_weighted_zero": metrics["score_weights"]["n_weighted_zero"],
        "n_tied": sum(code is None for code in predicted.values()),
    }


def scorer_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def scorer_versions(venv: Path) -> dict[str, str] | None:
    """{package: version} of the scorer's environment, or None when it cannot import the scorer."""
    code = (
        "import importlib.metadata as m, json, isic_challenge_scoring; "
        "print(json.dumps({p: m.version(p) for p in ('isic-challenge-scoring', 'pandas', 'numpy', "
        "'scikit-learn')}))"
    )
    python = scorer_python(venv)
    if not python.is_file():
        return None
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def install_scorer(venv: Path) -> None:
    """Create `venv` and pip-install the scorer there (pandas < 3, which it needs)."""
    print(f"creating {venv} with {' '.join(SCORER_REQUIREMENTS)} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(scorer_python(venv)), "-m", "pip", "install", "--quiet", *SCORER_REQUIREMENTS], check=True
    )


def official_score(venv: Path, truth: Path, predictions_csv: Path) -> dict[str, Any]:
    """The scorer's JSON for one submission ("overall" is the leaderboard's balanced accuracy)."""
    command = [
        str(scorer_python(venv)), "-m", "isic_challenge_scoring", "-o", "json",
        "classification", str(truth), str(predictions_csv),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def run_case(name: str, work: Path, venv: Path, seed: int, weight_columns: bool) -> dict[str, Any]:
    """One synthetic folder + submission, scored both ways."""
    rng = np.random.default_rng(seed)
    ids = official_ids()
    labels = rng.choice(len(GROUND_TRUTH_COLUMNS), size=len(ids), p=CLASS_MIX)
    weights = None
    if weight_columns:
        weights = {
            SCORE_WEIGHT_COLUMN: rng.choice([0.0, 0.5, 1.0, 2.0], size=len(ids), p=[0.1, 0.2, 0.6, 0.1]),
            "validation_weight": rng.choice([0.0, 1.0], size=len(ids), p=[0.7, 0.3]),
        }
    root = work / name
    truth = write_test_folder(root, ids, labels, weights)
    predictions_csv = write_predictions(work / f"{name}_predictions.csv", ids, rng)
    ours = our_scores(root, predictions_csv)
    official = official_score(venv, truth, predictions_csv)
    overall = float(official["overall"])
    return {
        "case": name,
        **ours,
        "official": overall,
        "official_aggregate": float(official["aggregate"]["balanced_accuracy"]),
        "difference": abs(ours["balanced_accuracy"] - overall),
        "unweighted_difference": abs(ours["balanced_accuracy_unweighted"] - overall),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the scorer's own environment")
    parser.add_argument(
        "--no-install", action="store_true", help="do not create --venv when it lacks the scorer"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="write the folders here and keep them")
    args = parser.parse_args(argv)

    versions = scorer_versions(args.venv)
    if versions is None:
        if args.no_install:
            print(
                f"no isic-challenge-scoring in {args.venv}; create it with:\n"
                f"  python -m venv {args.venv} && {args.venv}/bin/pip install "
                + " ".join(f"'{r}'" for r in SCORER_REQUIREMENTS),
                file=sys.stderr,
            )
            return 2
        install_scorer(args.venv)
        versions = scorer_versions(args.venv)
        if versions is None:
            print(f"{args.venv} still cannot import isic_challenge_scoring", file=sys.stderr)
            return 2

    work = args.keep if args.keep is not None else Path(tempfile.mkdtemp(prefix="isic_check_"))
    if args.keep is not None and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        cases = [
            run_case("official_format", work, args.venv, args.seed, weight_columns=False),
            run_case("score_weight_columns", work, args.venv, args.seed + 1, weight_columns=True),
        ]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print("scorer environment: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    span = f"ISIC_{FIRST_ID:07d}..ISIC_{LAST_ID:07d}"
    print(f"official ids: {N_TEST_IMAGES} ({span}, {len(ABSENT_IDS)} numbers absent)")
    print(f"seed {args.seed}; tolerance {TOLERANCE:g}")
    header = (
        f"{'case':<22} {'n':>5} {'w=0':>4} {'ties':>4} {'ours (official rule)':>22} "
        f"{'official scorer':>20} {'|diff|':>9} {'ours unweighted':>20} {'|unw-off|':>9}"
    )
    print(header)
    print("-" * len(header))
    for case in cases:
        print(
            f"{case['case']:<22} {case['n']:>5} {case['n_weighted_zero']:>4} {case['n_tied']:>4} "
            f"{case['balanced_accuracy']:>22.17f} {case['official']:>20.17f} {case['difference']:>9.2e} "
            f"{case['balanced_accuracy_unweighted']:>20.17f} {case['unweighted_difference']:>9.2e}"
        )
    worst = max(case["difference"] for case in cases)
    ok = worst <= TOLERANCE
    print(f"{'OK' if ok else 'MISMATCH'}: largest |ours - official| = {worst:.3e} (tolerance {TOLERANCE:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
