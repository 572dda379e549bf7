"""Synthetic dermoscopy with a known ceiling: class -> latent cues -> image (`style: dermoscopy`).

Why: the `simple` style gives every class its own colour, shape and texture, so a tiny model saturates
it and it cannot rank pipelines. Here the class only acts through a vector of latent dermoscopic cues
(pigment network, globules, streaks, veil, regression, vessels, white patch, scale, milia, ovoid nests,
and five continuous ABCD-like scores), drawn from class-conditional distributions that overlap as they
do in the ABCD rule and the 7-point checklist: no single cue decides the class. Everything else in the
image (size, position, skin, hair, vignetting, bubbles, ruler, light, colour cast, JPEG quality) is
drawn independently of the class. The image is therefore a function of (latents, class-independent
noise), so no classifier of the image beats the Bayes classifier of the latents, and that one has a
closed form: the cues are conditionally independent given the class (`latent_log_likelihoods`). Its
scores per split (`oracle_report`) are the ceiling a model is measured against.

Geometry follows HAM10000 (Tschandl et al. 2018): images cropped and centred on the lesion, so most
centroids fall in the centre cell, with sizes from small to frame-filling (some touching the border),
irregular borders, sometimes a satellite or a hole. `acquisition: shifted` changes only the
class-independent part (another device and clinic), so the same lesions drawn under it form a paired
out-of-distribution test set. See docs/data.md ("The dermoscopy style") for the tables and sources.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from skinderm.core import files
from skinderm.data.classes import CLASS_CODES, location_from_point
from skinderm.data.splits import SPLIT_NAMES, make_splits

SYNTHETIC_ORACLE_JSON = "synthetic_oracle.json"
STYLES: tuple[str, ...] = ("simple", "dermoscopy")
ACQUISITIONS: tuple[str, ...] = ("standard", "shifted")
# The split parameters `prepare_dataset` uses when dataset.splits is not given (skinderm/data/prepare.py):
# the oracle written at generation is for these; `write_oracle` redoes it for others.
DEFAULT_SPLIT_PARAMS: dict[str, Any] = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}

# ---------------------------------------------------------------------------------------------
# The latent model: per class, each cue's distribution. Order of the tuples: CLASS_CODES
# (akiec, bcc, bkl, df, mel, nv, vasc).


@dataclass(frozen=True)
class CategoricalCue:
    """A discrete cue: P(value | class) for each class (rows sum to 1)."""

    name: str
    values: tuple[str, ...]
    probabilities: tuple[tuple[float, ...], ...]  # [class][value]


@dataclass(frozen=True)
class GaussianCue:
    """A continuous cue: N(mean[class], sd^2), drawn squashed (sigmoid) into the image."""

    name: str
    means: tuple[float, ...]  # [class]
    sd: float


def _binary(name: str, present: tuple[float, ...]) -> CategoricalCue:
    return CategoricalCue(name, ("absent", "present"), tuple((1.0 - p, p) for p in present))


# Probabilities modelled on the 7-point checklist (Argenziano 1998: atypical network, blue-white veil,
# atypical vascular pattern, irregular streaks, irregular dots/globules, irregular blotches, regression),
# Menzies' BCC criteria (no network; arborising vessels, blue-grey ovoid nests), pattern analysis
# (Argenziano/Kittler: milia-like cysts in seborrhoeic keratosis, central white patch in dermatofibroma,
# red-blue lacunae in angioma, dotted/glomerular vessels and scale in actinic keratosis / Bowen's).
# Each is present in several classes and absent in part of its own: rough clinical frequencies,
# softened so that the Bayes classifier lands near the top of the ISIC 2018 leaderboard (~0.86).
CATEGORICAL_CUES: tuple[CategoricalCue, ...] = (
    CategoricalCue(
        "network", ("none", "typical", "atypical"),
        ((.75, .15, .10), (.88, .08, .04), (.45, .35, .20), (.25, .65, .10), (.25, .20, .55),
         (.25, .60, .15), (.92, .06, .02)),
    ),
    CategoricalCue(
        "dots_globules", ("none", "regular", "irregular"),
        ((.60, .25, .15), (.60, .20, .20), (.60, .25, .15), (.70, .20, .10), (.30, .20, .50),
         (.35, .50, .15), (.80, .15, .05)),
    ),
    CategoricalCue(
        "vessels", ("none", "arborising", "dotted", "lacunae"),
        ((.35, .10, .50, .05), (.25, .60, .10, .05), (.65, .05, .20, .10), (.70, .05, .20, .05),
         (.60, .05, .30, .05), (.85, .02, .10, .03), (.10, .05, .15, .70)),
    ),
    _binary("streaks", (.05, .10, .08, .04, .40, .15, .02)),
    _binary("blue_white_veil", (.05, .20, .10, .05, .45, .08, .20)),
    _binary("regression", (.10, .15, .30, .10, .40, .08, .05)),
    _binary("white_patch", (.10, .10, .05, .70, .08, .03, .10)),
    _binary("scale", (.70, .20, .40, .10, .05, .05, .05)),
    _binary("milia_cysts", (.05, .05, .45, .03, .03, .10, .02)),
    _binary("ovoid_nests", (.03, .55, .05, .03, .08, .03, .05)),
)  # fmt: skip

# ABCD-like scores (Stolz 1994: Asymmetry, Border, Colour) and the two pigments that set the colour:
# melanin (brown-black) and erythema (pink-red, high in vascular and keratinocytic lesions).
GAUSSIAN_CUES: tuple[GaussianCue, ...] = (
    GaussianCue("asymmetry", (0.0, 0.4, 0.0, -0.6, 1.25, -0.75, -0.5), 0.8),
    GaussianCue("border_irregularity", (0.5, 0.6, 0.4, -0.4, 1.25, -0.6, -0.6), 0.8),
    GaussianCue("melanin", (-1.0, -0.5, 0.4, 0.0, 1.25, 0.6, -1.5), 0.7),
    GaussianCue("erythema", (1.25, 0.9, -0.25, 0.4, -0.1, -0.75, 2.0), 0.6),
    GaussianCue("variegation", (0.0, 0.25, 0.1, -0.25, 1.25, -0.75, -0.25), 0.8),
)

LATENT_PREFIX = "latent_"
LATENT_COLUMNS: tuple[str, ...] = tuple(
    LATENT_PREFIX + cue.name for cue in (*CATEGORICAL_CUES, *GAUSSIAN_CUES)
)
LATENT_DECIMALS = 4  # continuous latents are rounded when drawn, so the CSV holds exactly what was used


def sample_latents(dx: str, rng: np.random.Generator) -> dict[str, Any]:
    """One lesion's cue latents given its class: category names and rounded floats, in cue order."""
    k = CLASS_CODES.index(dx)
    latents: dict[str, Any] = {}
    for cue in CATEGORICAL_CUES:
        latents[cue.name] = cue.values[int(rng.choice(len(cue.values), p=cue.probabilities[k]))]
    for cue in GAUSSIAN_CUES:
        latents[cue.name] = round(float(rng.normal(cue.means[k], cue.sd)), LATENT_DECIMALS)
    return latents


def latent_log_likelihoods(latents: pd.DataFrame) -> np.ndarray:
    """log p(latents | class) per row and class (n, 7): the closed form of the naive-Bayes model.

    Columns are cue names or `latent_<cue>`. The Gaussian normalising constant is the same for
    every class (one sd per cue) and is left out: it cancels in every argmax.
    """
    n = len(latents)
    total = np.zeros((n, len(CLASS_CODES)))
    for cue in CATEGORICAL_CUES:
        column = latents[cue.name] if cue.name in latents else latents[LATENT_PREFIX + cue.name]
        index = column.map({value: i for i, value in enumerate(cue.values)})
        if index.isna().any():
            raise ValueError(f"Latent {cue.name} has values outside {cue.values}.")
        table = np.log(np.asarray(cue.probabilities))  # [class][value]
        total += table[:, index.to_numpy(dtype=int)].T
    for cue in GAUSSIAN_CUES:
        column = latents[cue.name] if cue.name in latents else latents[LATENT_PREFIX + cue.name]
        z = column.to_numpy(dtype=float)[:, None]
        total += -0.5 * ((z - np.asarray(cue.means)[None, :]) / cue.sd) ** 2
    return total


def oracle_predictions(latents: pd.DataFrame) -> list[str]:
    """The class the balanced-accuracy oracle (argmax_y p(z | y)) names for each row."""
    return [CLASS_CODES[k] for k in latent_log_likelihoods(latents.reset_index(drop=True)).argmax(axis=1)]


def _scores(y: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """(balanced accuracy over the classes present in y, accuracy)."""
    recalls = [float(np.mean(predicted[y == k] == k)) for k in np.unique(y)]
    return float(np.mean(recalls)), float(np.mean(predicted == y))


def oracle_report(
    dx: Sequence[str], latents: pd.DataFrame, split: Sequence[str] | None = None
) -> dict[str, Any]:
    """The Bayes-optimal classifier of the latents, scored per split (and on all images).

    Two rules, both closed form: `balanced_accuracy` is that of argmax_y p(z | y) (uniform prior:
    it maximises expected balanced accuracy, the ISIC 2018 metric); `accuracy` is that of the
    posterior argmax_y p(y) p(z | y) with p(y) the training split's class frequencies (it maximises
    expected accuracy). Each split also reports the other rule's score, the balanced rule's recall per
    class (the ceiling of each row of a model's per-class table) and its image count.
    """
    y = np.asarray([CLASS_CODES.index(code) for code in dx])
    loglik = latent_log_likelihoods(latents.reset_index(drop=True))
    split_array = np.asarray(["all"] * len(y) if split is None else list(split), dtype=object)
    train = split_array == "train"
    reference = y[train] if train.any() else y
    counts = np.bincount(reference, minlength=len(CLASS_CODES)).astype(float)
    priors = (counts + 1.0) / (counts.sum() + len(CLASS_CODES))  # add-one: a class absent from train
    balanced_rule = loglik.argmax(axis=1)
    posterior_rule = (loglik + np.log(priors)[None, :]).argmax(axis=1)
    report: dict[str, Any] = {}
    names = [name for name in (*SPLIT_NAMES, "all") if name == "all" or (split_array == name).any()]
    for name in names:
        rows = np.ones(len(y), dtype=bool) if name == "all" else split_array == name
        balanced, balanced_rule_accuracy = _scores(y[rows], balanced_rule[rows])
        posterior_balanced, accuracy = _scores(y[rows], posterior_rule[rows])
        report[name] = {
            "balanced_accuracy": round(balanced, 4),
            "accuracy": round(accuracy, 4),
            "balanced_rule_accuracy": round(balanced_rule_accuracy, 4),
            "posterior_rule_balanced_accuracy": round(posterior_balanced, 4),
            "recall_per_class": {
                CLASS_CODES[k]: round(float(np.mean(balanced_rule[rows][y[rows] == k] == k)), 4)
                for k in np.unique(y[rows])
            },
            "n_images": int(rows.sum()),
        }
    return report


def expected_balanced_accuracy(samples_per_class: int = 20000, seed: int = 0) -> float:
    """The population balanced accuracy of the oracle (Monte Carlo over the latent model): what the
    per-split figures scatter around; for docs and calibration."""
    rng = np.random.default_rng(seed)
    dx = [code for code in CLASS_CODES for _ in range(samples_per_class)]
    rows = [sample_latents(code, rng) for code in dx]
    return oracle_report(dx, pd.DataFrame(rows))["all"]["balanced_accuracy"]


def write_oracle(out_dir: str | Path, split_params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Compute the oracle of a generated dermoscopy dataset on the pipeline's own splits and write
    `synthetic_oracle.json`; returns what it wrote.

    The splits are `make_splits` (lesion-grouped, dx-stratified) of the metadata with `split_params`
    (default: prepare_dataset's defaults), i.e. exactly the splits training and evaluation see when
    annotation keeps every image (synthetic data has no bad files).
    """
    out_dir = Path(out_dir)
    params = {**DEFAULT_SPLIT_PARAMS, **dict(split_params or {})}
    metadata = pd.read_csv(out_dir / "HAM10000_metadata.csv")
    truth = pd.read_csv(out_dir / "synthetic_ground_truth.csv", keep_default_na=False)
    missing = [column for column in LATENT_COLUMNS if column not in truth.columns]
    if missing:
        raise ValueError(
            f"{out_dir} has no latent columns {missing[:3]}: it is not a dermoscopy-style dataset."
        )
    frame = metadata.merge(truth[["image_id", *LATENT_COLUMNS]], on="image_id", how="inner", validate="1:1")
    split = make_splits(frame, **params)
    report = oracle_report(frame["dx"].tolist(), frame[list(LATENT_COLUMNS)], split.tolist())
    report["split_params"] = params
    report["expected_balanced_accuracy"] = EXPECTED_BALANCED_ACCURACY
    files.atomic_write_text(
        out_dir / SYNTHETIC_ORACLE_JSON, json.dumps(report, indent=2, sort_keys=True) + "\n"
    )
    return report


# Measured once with `expected_balanced_accuracy(20000, 0)` (140,000 latent draws; +-0.002). A test
# recomputes it, so it cannot drift from the tables above.
EXPECTED_BALANCED_ACCURACY = 0.8615


# ---------------------------------------------------------------------------------------------
# Acquisition: everything drawn independently of the class.


@dataclass(frozen=True)
class Acquisition:
    """One device and clinic: lesion framing and artefact rates (none of them depends on the class)."""

    name: str
    area_median: float  # median lesion area fraction before clipping at the image border
    area_log_sd: float  # spread of log(area fraction)
    centre_sd: float  # sd of the lesion centre offset, as a fraction of the image side
    off_centre_rate: float  # share of lesions framed off-centre
    off_centre_sd: float
    cast: tuple[float, float, float]  # mean RGB gain
    cast_sd: float
    vignette: tuple[float, float]  # corner darkening range
    dark_corner_rate: float  # round dermatoscope field with black corners
    hair_rate: float
    hair_mean: float  # hairs per hairy image
    bubble_rate: float
    bubble_mean: float
    ruler_rate: float
    gradient: float  # largest illumination slope across the image
    jpeg_quality: tuple[int, int]
    noise_sd: float
    blur_rate: float  # out-of-focus share


ACQUISITION_PRESETS: dict[str, Acquisition] = {
    # Modelled on HAM10000 (vidir/rosendahl, mostly polarised, warm): lesion mostly centred, median area
    # ~ 17% of the frame, occasional hair, few bubbles, JPEG at high quality.
    "standard": Acquisition(
        name="standard", area_median=0.17, area_log_sd=0.85, centre_sd=0.075, off_centre_rate=0.15,
        off_centre_sd=0.2, cast=(1.02, 0.98, 0.97), cast_sd=0.02, vignette=(0.0, 0.35),
        dark_corner_rate=0.12, hair_rate=0.3, hair_mean=4.0, bubble_rate=0.12, bubble_mean=3.0,
        ruler_rate=0.06, gradient=0.18, jpeg_quality=(82, 96), noise_sd=2.5, blur_rate=0.1,
    ),
    # Another clinic and device (as the ISIC 2018 test set is not HAM10000): cooler, greener light, a
    # wider field (smaller lesions), heavy vignetting, more hair and immersion-gel bubbles, more rulers,
    # stronger compression and noise.
    "shifted": Acquisition(
        name="shifted", area_median=0.1, area_log_sd=0.7, centre_sd=0.08, off_centre_rate=0.2,
        off_centre_sd=0.2, cast=(0.94, 1.0, 1.05), cast_sd=0.03, vignette=(0.2, 0.6),
        dark_corner_rate=0.45, hair_rate=0.6, hair_mean=7.0, bubble_rate=0.45, bubble_mean=6.0,
        ruler_rate=0.25, gradient=0.3, jpeg_quality=(55, 78), noise_sd=4.5, blur_rate=0.25,
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class LesionGeometry:
    """What stays fixed across the images of one lesion: its framing and outline (in lesion units)."""

    area_fraction: float  # target area / image area (before per-image jitter and border clipping)
    centre: tuple[float, float]  # offset from the image centre, fractions of width and height
    angle: float  # radians
    aspect: float  # width / height of the outline before rotation
    harmonics: np.ndarray  # (16, 2): amplitude and phase of cos(k theta), k = 1..16
    noise_amplitude: float  # radial noise of the border, fraction of the radius
    satellite: tuple[float, float, float]  # (angle, gap, radius) in lesion units, when an image has one
    hole: tuple[float, float, float] | None  # (u, v, radius) in lesion units
    edge_px: float  # width of the soft edge at 600 px image width
    seed: int  # the lesion's own stream: noise texture and structure layout


def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def lesion_geometry(
    latents: Mapping[str, Any],
    acquisition: Acquisition,
    rng: np.random.Generator,
    *,
    hole_rate: float = 0.06,
) -> LesionGeometry:
    """The lesion's framing (from the acquisition) and outline (asymmetry and border latents)."""
    area = float(np.exp(rng.normal(math.log(acquisition.area_median), acquisition.area_log_sd)))
    area = float(np.clip(area, 0.01, 0.9))
    if rng.random() < acquisition.off_centre_rate:
        centre = rng.normal(0.0, acquisition.off_centre_sd, size=2)
    else:
        centre = rng.normal(0.0, acquisition.centre_sd, size=2)
    centre = np.clip(centre, -0.42, 0.42)
    asymmetry = _sigmoid(float(latents["asymmetry"]))
    border = _sigmoid(float(latents["border_irregularity"]))
    k = np.arange(1, 17)
    amplitude = np.where(k <= 3, 0.02 + 0.16 * asymmetry / k, (0.01 + 0.07 * border) * 4.0 / (k + 2.0))
    amplitude = amplitude * rng.uniform(0.6, 1.4, size=k.size)
    harmonics = np.stack([amplitude, rng.uniform(0, 2 * np.pi, size=k.size)], axis=1)
    sat = (float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0.18, 0.5)), float(rng.uniform(0.1, 0.22)))
    hole = None
    if rng.random() < hole_rate:
        radius = float(rng.uniform(0.1, 0.2))
        angle = float(rng.uniform(0, 2 * np.pi))
        distance = float(rng.uniform(0.0, 0.3))
        hole = (distance * math.cos(angle), distance * math.sin(angle), radius)
    return LesionGeometry(
        area_fraction=area,
        centre=(float(centre[0]), float(centre[1])),
        angle=float(rng.uniform(0, np.pi)),
        aspect=float(np.exp(rng.normal(0.0, 0.18))),
        harmonics=harmonics,
        noise_amplitude=float(0.03 + 0.12 * border),
        satellite=sat,
        hole=hole,
        edge_px=float(np.exp(rng.uniform(math.log(2.5), math.log(16.0)))),
        seed=int(rng.integers(2**31)),
    )


def _radius(harmonics: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """r(theta) = 1 + sum_k a_k cos(k theta + phi_k), floored so the outline stays star-shaped."""
    radius = np.ones_like(theta)
    for k, (amplitude, phase) in enumerate(harmonics, start=1):
        radius = radius + amplitude * np.cos(k * theta + phase)
    return np.maximum(radius, 0.35)


def _outline_area(harmonics: np.ndarray) -> float:
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    return float(0.5 * np.mean(_radius(harmonics, theta) ** 2) * 2 * np.pi)


@dataclass(frozen=True)
class Frame:
    """Lesion units (u, v; the outline at rho = r(theta)) <-> image pixels, for one image."""

    cx: float
    cy: float
    scale_x: float  # pixels per lesion unit along the lesion's u axis
    scale_y: float
    cos: float
    sin: float

    def to_pixels(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        du, dv = u * self.scale_x, v * self.scale_y
        return self.cx + du * self.cos - dv * self.sin, self.cy + du * self.sin + dv * self.cos

    def to_lesion(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = x - self.cx, y - self.cy
        return (dx * self.cos + dy * self.sin) / self.scale_x, (-dx * self.sin + dy * self.cos) / self.scale_y


# ---------------------------------------------------------------------------------------------
# Texture banks: computed once per (image size, seed) and process; images take random windows.


class Banks:
    """Precomputed textures (pigment networks, speckle, sensor noise): vectorised and cheap per image."""

    def __init__(self, width: int, height: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 5])
        unit = width / 600.0
        self.pad = max(16, width // 4)
        h, w = height + self.pad, width + self.pad
        typical = _voronoi_lines(rng, h, w, spacing=max(4.0, 9.0 * unit), jitter=0.38, sigma=0.65 * unit)
        self.typical = np.clip(typical * (0.6 + 0.7 * _smooth_noise(rng, h, w, cells=max(2, w // 25))), 0, 1)
        atypical = _voronoi_lines(rng, h, w, spacing=max(5.0, 13.0 * unit), jitter=0.5, sigma=1.3 * unit)
        modulation = _smooth_noise(rng, h, w, cells=max(2, w // 40))
        self.atypical = np.clip(atypical * (0.55 + 0.9 * modulation), 0, 1).astype(np.float32)
        speckle = rng.random((h, w)).astype(np.float32)
        self.speckle = cv2.GaussianBlur(speckle, (0, 0), max(0.5, 0.8 * unit))
        self.speckle = (self.speckle - self.speckle.min()) / (np.ptp(self.speckle) + 1e-6)
        grain = rng.normal(0.0, 1.0, size=(h, w, 1)).astype(np.float32)
        furrows = cv2.GaussianBlur(rng.normal(0.0, 1.0, size=(h, w)).astype(np.float32), (0, 0), 1.5 * unit)
        furrows = furrows / (furrows.std() + 1e-6)
        self.grain = grain * np.asarray([1.0, 0.95, 0.9], dtype=np.float32) + 0.8 * furrows[:, :, None]

    def window(self, bank: np.ndarray, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        dy, dx = (int(v) for v in rng.integers(0, self.pad, size=2))
        return bank[dy : dy + height, dx : dx + width]


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Values in [0, 1] varying over `cells` cells across the width: a small random grid, upsampled."""
    rows = max(2, round(cells * height / width))
    small = rng.random((rows, cells)).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _voronoi_lines(
    rng: np.random.Generator, height: int, width: int, *, spacing: float, jitter: float, sigma: float
) -> np.ndarray:
    """A honeycomb of lines (the borders of Voronoi cells of a jittered hexagonal lattice), in [0, 1]:
    the look of a pigment network (pigmented rete ridges around paler dermal papillae)."""
    rows = int(height / (spacing * 0.866)) + 2
    cols = int(width / spacing) + 2
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    xs = (xx + 0.5 * (yy % 2)) * spacing + rng.uniform(-jitter, jitter, size=xx.shape) * spacing
    ys = yy * spacing * 0.866 + rng.uniform(-jitter, jitter, size=yy.shape) * spacing
    seeds = np.full((height, width), 255, dtype=np.uint8)
    inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    seeds[ys[inside].astype(int), xs[inside].astype(int)] = 0
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    edges = np.zeros((height, width), dtype=np.float32)
    edges[:, 1:] += labels[:, 1:] != labels[:, :-1]
    edges[1:, :] += labels[1:, :] != labels[:-1, :]
    lines = cv2.GaussianBlur(np.minimum(edges, 1.0), (0, 0), max(0.4, sigma))
    return np.clip(lines / (np.percentile(lines, 99.5) + 1e-6), 0, 1).astype(np.float32)


_BANKS: dict[tuple[int, int, int], Banks] = {}


def banks_for(width: int, height: int, seed: int) -> Banks:
    """The process's banks for this image size and seed (built on first use)."""
    key = (width, height, seed)
    if key not in _BANKS:
        _BANKS.clear()  # one dataset at a time: keep memory flat
        _BANKS[key] = Banks(width, height, seed)
    return _BANKS[key]


# ---------------------------------------------------------------------------------------------
# Drawing


@dataclass(frozen=True)
class DermoscopyImage:
    """One drawn image, its mask and the mask's exact geometry (the annotation definition)."""

    image_rgb: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8 0/255, every kept component
    bbox: tuple[int, int, int, int]  # largest 8-connected component, exclusive end
    centroid: tuple[float, float]
    n_components: int
    lesion_pixels: int
    jpeg_quality: int
    artefacts: dict[str, int]


# Colour anchors (RGB), dermoscopy-like: melanin from tan to black-brown, blood from pink to crimson.
_MELANIN_STOPS = np.asarray([0.0, 0.35, 0.65, 0.85, 1.0], dtype=np.float32)
_MELANIN_RGB = np.asarray(
    [[214, 168, 130], [176, 118, 78], [128, 76, 48], [82, 50, 36], [48, 32, 30]], dtype=np.float32
)
_PINK, _CRIMSON = np.asarray([222, 128, 126], np.float32), np.asarray([178, 36, 58], np.float32)
_VEIL = np.asarray([112, 128, 168], np.float32)
_SCAR = np.asarray([226, 210, 206], np.float32)
_WHITE = np.asarray([242, 238, 232], np.float32)
_KERATIN = np.asarray([236, 226, 196], np.float32)
_BLACK = np.asarray([36, 26, 28], np.float32)
_BLUE_GREY = np.asarray([92, 106, 134], np.float32)
_VESSEL = np.asarray([196, 28, 48], np.float32)

# Lesion-frame noise texture: channels (border, variegation A, variegation B, veil, regression,
# network patches, scale, white patch), over u, v in [-_TEXTURE_SPAN, _TEXTURE_SPAN].
_TEXTURE_SIZE, _TEXTURE_SPAN, _TEXTURE_CHANNELS = 40, 2.0, 8


def _lesion_texture(rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in lesion units, zero mean, unit-ish spread: moves and scales with the lesion."""
    texture = rng.normal(0.0, 1.0, size=(_TEXTURE_SIZE, _TEXTURE_SIZE, _TEXTURE_CHANNELS)).astype(np.float32)
    texture = cv2.GaussianBlur(texture, (0, 0), 1.6)
    return texture / (texture.reshape(-1, _TEXTURE_CHANNELS).std(axis=0) + 1e-6)


def _texture_at(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup of the lesion texture at lesion coordinates (any shape) -> (..., channels)."""
    scale = (_TEXTURE_SIZE - 1) / (2 * _TEXTURE_SPAN)
    map_x = ((u + _TEXTURE_SPAN) * scale).astype(np.float32)
    map_y = ((v + _TEXTURE_SPAN) * scale).astype(np.float32)
    shape = map_x.shape
    if map_x.ndim == 1:
        map_x, map_y = map_x[None, :], map_y[None, :]
    out = np.stack(
        [
            cv2.remap(texture[:, :, c], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            for c in range(texture.shape[2])
        ],
        axis=-1,
    )
    return out.reshape(*shape, texture.shape[2])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _melanin_colour(level: np.ndarray) -> np.ndarray:
    level = np.clip(level, 0.0, 1.0)
    return np.stack([np.interp(level, _MELANIN_STOPS, _MELANIN_RGB[:, c]) for c in range(3)], axis=-1)


def draw_dermoscopy_image(
    latents: Mapping[str, Any],
    geometry: LesionGeometry,
    acquisition: Acquisition,
    *,
    width: int,
    height: int,
    rng: np.random.Generator,
    banks: Banks,
    satellite: bool = False,
) -> DermoscopyImage:
    """One image of one lesion: latents -> structures, geometry -> outline, acquisition -> artefacts.

    `rng` is the image's own stream (jitter and artefacts); the lesion's layout comes from
    `geometry.seed`, so every image of a lesion shows the same structures in the same places.
    """
    lesion_rng = np.random.default_rng(geometry.seed)
    texture = _lesion_texture(lesion_rng)
    unit = width / 600.0

    # Per-image framing: the same lesion seen again, a little larger or smaller, turned and moved.
    area_px = geometry.area_fraction * rng.uniform(0.85, 1.15) * width * height
    angle = geometry.angle + rng.normal(0.0, 0.2)
    scale = math.sqrt(area_px / _outline_area(geometry.harmonics))
    frame = Frame(
        cx=width / 2 + (geometry.centre[0] + rng.normal(0, 0.02)) * width,
        cy=height / 2 + (geometry.centre[1] + rng.normal(0, 0.02)) * height,
        scale_x=scale * math.sqrt(geometry.aspect),
        scale_y=scale / math.sqrt(geometry.aspect),
        cos=math.cos(angle),
        sin=math.sin(angle),
    )
    radius_px = scale  # pixels per lesion unit (geometric mean of the two axes)

    # Coarse grid: every smooth map is computed here and upsampled once (a fraction of the pixels).
    factor = max(1, min(width, height) // 110)
    coarse_w, coarse_h = math.ceil(width / factor), math.ceil(height / factor)
    gx = (np.arange(coarse_w, dtype=np.float32) + 0.5) * width / coarse_w - 0.5
    gy = (np.arange(coarse_h, dtype=np.float32) + 0.5) * height / coarse_h - 0.5
    grid_x, grid_y = np.meshgrid(gx, gy)
    u, v = frame.to_lesion(grid_x, grid_y)
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    local = _texture_at(texture, u, v)  # (ch, cw, channels)
    outline = _radius(geometry.harmonics, theta) * (1.0 + geometry.noise_amplitude * local[..., 0])
    field = outline - rho  # > 0 inside, in lesion units
    if satellite:
        sat_angle, gap, sat_radius = geometry.satellite
        reach = float(_radius(geometry.harmonics, np.asarray([sat_angle]))[0]) * (
            1.0 + 2.5 * geometry.noise_amplitude
        )
        distance = reach + gap + sat_radius + 4.0 / radius_px
        su, sv = distance * math.cos(sat_angle), distance * math.sin(sat_angle)
        field = np.maximum(field, sat_radius - np.hypot(u - su, v - sv))
    if geometry.hole is not None:
        hu, hv, hole_radius = geometry.hole
        field = np.minimum(field, np.hypot(u - hu, v - hv) - hole_radius)
    depth = np.clip(rho / np.maximum(outline, 1e-3), 0.0, 1.5)  # 0 centre, 1 border

    base, network_weight, scale_weight = _lesion_colours(latents, local, u, v, depth, lesion_rng)
    skin = _skin(rng, coarse_h, coarse_w)
    gain, dark_corners = _gain(acquisition, rng, grid_x, grid_y, width, height)
    stack = np.concatenate(
        [skin, base, gain, field[..., None], network_weight[..., None], scale_weight[..., None]], axis=-1
    ).astype(np.float32)
    full = cv2.resize(stack, (width, height), interpolation=cv2.INTER_LINEAR)
    skin_full, lesion_full, gain_full = full[..., 0:3], full[..., 3:6], full[..., 6:9]
    field_full, network_full, scale_full = full[..., 9], full[..., 10], full[..., 11]

    mask, bbox, centroid, n_components, lesion_pixels, removed = _mask_geometry(field_full > 0, width, height)
    alpha = np.clip(0.5 + field_full * (radius_px / (geometry.edge_px * unit)), 0.0, 1.0)
    if removed is not None:
        alpha[removed] = 0.0

    # Fine structures, drawn in ink layers inside the lesion's box only.
    rows = np.flatnonzero(alpha.max(axis=1) > 0)
    cols = np.flatnonzero(alpha.max(axis=0) > 0)
    image = skin_full * (1.0 + 0.012 * acquisition.noise_sd * banks.window(banks.grain, rng, height, width))
    if rows.size:
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        box_alpha = alpha[y0:y1, x0:x1]
        layer = lesion_full[y0:y1, x0:x1]
        speckle = banks.window(banks.speckle, lesion_rng, y1 - y0, x1 - x0)
        layer = layer * (0.93 + 0.14 * speckle[..., None])
        _draw_structures(
            layer, latents, frame, (x0, y0), radius_px, unit, banks, lesion_rng,
            network_full[y0:y1, x0:x1], scale_full[y0:y1, x0:x1], speckle, texture, geometry.harmonics,
        )  # fmt: skip
        region = image[y0:y1, x0:x1]
        region += (layer - region) * box_alpha[..., None]
    image *= gain_full
    image += banks.window(banks.grain, rng, height, width) * acquisition.noise_sd
    if rng.random() < acquisition.blur_rate:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.8, 1.8) * unit)
    image_u8 = np.clip(image, 0, 255).astype(np.uint8)
    artefacts = _artefacts(image_u8, acquisition, rng, unit)
    artefacts["dark_corners"] = int(dark_corners)
    quality = int(rng.integers(acquisition.jpeg_quality[0], acquisition.jpeg_quality[1] + 1))
    return DermoscopyImage(
        image_rgb=image_u8, mask=mask, bbox=bbox, centroid=centroid, n_components=n_components,
        lesion_pixels=lesion_pixels, jpeg_quality=quality, artefacts=artefacts,
    )  # fmt: skip


def _lesion_colours(
    latents: Mapping[str, Any],
    local: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    depth: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lesion's smooth colour map (pigment, asymmetry, variegation and the region-like
    structures: veil, regression, white patch, scale) and the weights of network and scale texture."""
    melanin = _sigmoid(1.3 * float(latents["melanin"]))
    erythema = _sigmoid(1.3 * float(latents["erythema"]))
    asymmetry = _sigmoid(float(latents["asymmetry"]))
    variegation = _sigmoid(float(latents["variegation"]))
    direction = rng.uniform(0, 2 * np.pi)
    along = u * math.cos(direction) + v * math.sin(direction)
    profile = rng.uniform(-0.1, 0.25)  # darker centre (most nevi) or paler centre, class-independent
    level = (
        0.1 + 0.8 * melanin
        + profile * (0.6 - depth)
        + 0.35 * asymmetry * np.tanh(along)
        + 0.28 * variegation * local[..., 1]
        - 0.25 * np.clip(depth - 0.6, 0, 1)
    )  # fmt: skip
    colour = _melanin_colour(level)
    red = erythema * (1.0 - 0.7 * melanin) * np.clip(0.8 + 0.25 * local[..., 2], 0, 1.2)
    blood = _PINK + (_CRIMSON - _PINK) * float(np.clip(2 * erythema - 1, 0, 1))
    colour = colour + (blood - colour) * np.clip(red, 0, 1)[..., None]
    # Variegation also brings extra colours in patches (ABCD's C: up to six colours).
    extra = _smoothstep((local[..., 2] - 1.2 + 1.4 * variegation) * 1.5) * 0.6 * variegation
    extra_colour = _BLACK if rng.random() < 0.5 else _BLUE_GREY
    colour = colour + (extra_colour - colour) * extra[..., None]

    def region(present: bool, channel: int, threshold: float, bias: np.ndarray | float = 0.0) -> np.ndarray:
        if not present:
            return np.zeros_like(depth)
        return _smoothstep((local[..., channel] - threshold + bias) * 1.2)

    veil = region(latents["blue_white_veil"] == "present", 3, 0.2, 1.2 * (0.5 - depth)) * 0.75
    colour = colour + (_VEIL - colour) * veil[..., None]
    regression = region(latents["regression"] == "present", 4, 0.4) * 0.7
    colour = colour + (_SCAR - colour) * regression[..., None]
    if latents["white_patch"] == "present":
        patch = _smoothstep((0.42 - depth + 0.12 * local[..., 7]) * 5.0) * 0.85
        colour = colour + (_WHITE - colour) * patch[..., None]
    scale = region(latents["scale"] == "present", 6, 0.1) * 0.6
    colour = colour + (_KERATIN - colour) * scale[..., None]
    network = np.zeros_like(depth)
    if latents["network"] == "typical":
        network = 0.75 * _smoothstep((1.05 - depth) * 2.5)  # fades towards the periphery
    elif latents["network"] == "atypical":
        network = 1.0 * _smoothstep((local[..., 5] + 0.3) * 2.0) * (depth < 1.1)  # patchy, abrupt
    # The regression scar and veil replace the network where they are.
    network = network * (1.0 - regression) * (1.0 - veil)
    return colour, network, scale


def _skin(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Fair skin (most HAM10000 patients): an even pinkish beige with soft, mostly luminance blotches
    and a faint diffuse redness, on the coarse grid."""
    tone = np.asarray([226, 176, 164], np.float32) + float(rng.normal()) * np.asarray([7, 8, 8], np.float32)
    shade = rng.normal(0.0, 1.0, size=(4, 5, 1)).astype(np.float32) * 5.0
    redness = rng.normal(0.0, 1.0, size=(4, 5, 1)).astype(np.float32) * np.asarray([3, -4, -3], np.float32)
    blotch = cv2.resize(shade + redness, (width, height), interpolation=cv2.INTER_CUBIC)
    return tone + blotch.reshape(height, width, 3)


def _gain(
    acquisition: Acquisition,
    rng: np.random.Generator,
    grid_x: np.ndarray,
    grid_y: np.ndarray,
    width: int,
    height: int,
) -> tuple[np.ndarray, bool]:
    """Per-pixel RGB gain: colour cast x illumination gradient x vignetting (and black corners)."""
    cast = np.asarray(acquisition.cast) * np.exp(rng.normal(0, acquisition.cast_sd, size=3))
    direction = rng.uniform(0, 2 * np.pi)
    nx = (grid_x / width - 0.5) * 2.0
    ny = (grid_y / height - 0.5) * 2.0
    light = (
        1.0 + rng.uniform(0, acquisition.gradient) * (nx * math.cos(direction) + ny * math.sin(direction)) / 2
    )
    radial = np.hypot(nx, ny * height / width) / math.hypot(1.0, height / width)  # 1 in the corners
    strength = rng.uniform(*acquisition.vignette)
    light = light * (1.0 - strength * radial**2.5)
    dark_corners = bool(rng.random() < acquisition.dark_corner_rate)
    if dark_corners:
        aperture = rng.uniform(0.78, 0.98)
        light = light * np.clip((aperture - radial) / 0.05, 0.0, 1.0) ** 0.7
    gain = np.clip(light, 0.0, 1.3)[..., None] * cast[None, None, :]
    return gain.astype(np.float32), dark_corners


def _mask_geometry(
    binary: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[float, float], int, int, np.ndarray | None]:
    """Mask (0/255) without specks, and the annotation definition of its geometry.

    Components under 0.05% of the image (at least 6 px; upsampling noise) are dropped. The box and
    centroid are the largest 8-connected component's (ties: first in raster order, as annotation).
    """
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(binary.view(np.uint8), connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA].copy()
    areas[0] = 0
    keep = areas >= max(6, 0.0005 * width * height)
    if count <= 1 or not keep.any():  # no lesion inside the frame (a lesion framed far out): keep all
        keep = areas > 0
    keep[0] = False
    lut = np.where(keep, 255, 0).astype(np.uint8)
    mask = lut[labels]
    removed = None
    dropped = (~keep[1:]) & (areas[1:] > 0)
    if dropped.any():
        removed = np.isin(labels, 1 + np.flatnonzero(dropped))
    if not keep.any():
        return mask, (0, 0, 0, 0), (float("nan"), float("nan")), 0, 0, removed
    kept_areas = np.where(keep, areas, -1)
    tied = np.flatnonzero(kept_areas == kept_areas.max())
    if len(tied) == 1:
        largest = int(tied[0])
    else:
        flat = labels.ravel()
        largest = int(min(tied, key=lambda label: int(np.argmax(flat == label))))
    x, y, w, h = (int(value) for value in stats[largest, :4])
    centroid = (float(centroids[largest][0]), float(centroids[largest][1]))
    return mask, (x, y, x + w, y + h), centroid, int(keep.sum()), int(areas[keep].sum()), removed


def _inside(
    rng: np.random.Generator, outline: np.ndarray, count: int, reach: float, bias: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """`count` points in lesion units inside rho < reach * r(theta); `bias` = (angle, strength, spread)
    clusters them towards one side (irregular, asymmetric distribution) when strength > 0."""
    theta = rng.uniform(0, 2 * np.pi, size=count)
    angle, strength, spread = bias
    if strength > 0:
        clustered = rng.random(count) < strength
        theta = np.where(clustered, angle + rng.normal(0, spread, size=count), theta)
    distance = np.sqrt(rng.random(count)) * reach
    radius = np.interp(theta % (2 * np.pi), np.linspace(0, 2 * np.pi, len(outline)), outline)
    rho = distance * radius
    return rho * np.cos(theta), rho * np.sin(theta)


def _draw_structures(
    layer: np.ndarray,
    latents: Mapping[str, Any],
    frame: Frame,
    origin: tuple[int, int],
    radius_px: float,
    unit: float,
    banks: Banks,
    rng: np.random.Generator,
    network: np.ndarray,
    scale: np.ndarray,
    speckle: np.ndarray,
    texture: np.ndarray,
    harmonics: np.ndarray,
) -> None:
    """Network, dots/globules, streaks, ovoid nests, peppering, milia and vessels, in place on `layer`.

    Every element is placed in lesion units from the lesion's stream (the same in each of its images)
    and drawn in pixels; each ink is one opaque-ish colour composited once.
    """
    h, w = layer.shape[:2]
    x0, y0 = origin
    # The outline's radius per angle, in lesion units (the pixel noise of the border left out).
    outline = _radius(harmonics, np.linspace(0, 2 * np.pi, 181))
    inks: dict[str, np.ndarray] = {}

    def ink(name: str) -> np.ndarray:
        if name not in inks:
            inks[name] = np.zeros((h, w), dtype=np.uint8)
        return inks[name]

    def pixels(uu: np.ndarray, vv: np.ndarray) -> np.ndarray:
        px, py = frame.to_pixels(uu, vv)
        return np.stack([(px - x0) * 16, (py - y0) * 16], axis=-1).round().astype(np.int32)

    def px_size(relative: np.ndarray | float, smallest: float) -> np.ndarray:
        return np.maximum(np.asarray(relative) * radius_px, smallest * unit) * 16

    dark = float(np.clip(0.25 + 0.75 * _sigmoid(1.3 * float(latents["melanin"])), 0, 1))
    brown_ink = _MELANIN_RGB[-2] * (1.2 - 0.4 * dark)
    # Pigment network: a honeycomb window, weighted by the coarse network map.
    if latents["network"] != "none":
        bank = banks.typical if latents["network"] == "typical" else banks.atypical
        lines = banks.window(bank, rng, h, w) * network
        np.maximum(ink("brown"), (lines * 255 * (0.45 + 0.3 * dark)).astype(np.uint8), out=ink("brown"))
    # Dots and globules: regular = small, even, brown; irregular = varied sizes, clustered, black.
    dots = latents["dots_globules"]
    if dots != "none":
        regular = dots == "regular"
        count = int(rng.integers(15, 60) if regular else rng.integers(12, 45))
        bias = (rng.uniform(0, 2 * np.pi), 0.0 if regular else 0.7, 0.6)
        uu, vv = _inside(rng, outline, count, 0.75 if regular else 0.95, bias)
        sizes = rng.uniform(0.022, 0.032, count) if regular else np.exp(rng.normal(np.log(0.035), 0.5, count))
        centres, radii = pixels(uu, vv), px_size(sizes, 1.2)
        layer_name = "brown" if regular else "black"
        values = rng.integers(140, 235, count)
        for centre, radius, value in zip(centres, radii, values, strict=True):
            cv2.circle(
                ink(layer_name), (int(centre[0]), int(centre[1])), int(radius), int(value), -1, cv2.LINE_AA, 4
            )
    # Streaks (radial streaming, pseudopods): short radial lines at the periphery, on an arc.
    if latents["streaks"] == "present":
        count = int(rng.integers(10, 30))
        start, arc = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 2 * np.pi)
        angles = start + rng.uniform(0, arc, count)
        inner, outer = rng.uniform(0.6, 0.8, count), rng.uniform(0.95, 1.08, count)
        a = pixels(inner * np.cos(angles), inner * np.sin(angles))
        b = pixels(outer * np.cos(angles), outer * np.sin(angles))
        thickness = max(1, round(max(0.009 * radius_px, 1.0 * unit)))
        for p, q in zip(a, b, strict=True):
            cv2.line(
                ink("black"), (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), 170, thickness, cv2.LINE_AA, 4
            )
            cv2.circle(ink("black"), (int(q[0]), int(q[1])), int(thickness * 14), 160, -1, cv2.LINE_AA, 4)
    # Blue-grey ovoid nests (BCC): a few clustered ovals.
    if latents["ovoid_nests"] == "present":
        count = int(rng.integers(2, 8))
        uu, vv = _inside(rng, outline, count, 0.8, (rng.uniform(0, 2 * np.pi), 0.8, 0.5))
        centres = pixels(uu, vv)
        for centre in centres:
            size = rng.uniform(0.05, 0.13)
            for _ in range(int(rng.integers(2, 5))):  # a nest: a few overlapping ovoid lobules
                offset = px_size(rng.normal(0, size * 0.6, size=2), 0.0)
                axes = px_size(size * rng.uniform(0.4, 0.9, size=2), 1.5)
                cv2.ellipse(
                    ink("blue"), (int(centre[0] + offset[0]), int(centre[1] + offset[1])),
                    (int(axes[0]), int(axes[1])), float(rng.uniform(0, 180)), 0, 360,
                    int(rng.integers(150, 230)), -1, cv2.LINE_AA, 4,
                )  # fmt: skip
    # Regression peppering: fine blue-grey granules where the lesion texture's regression channel is high.
    if latents["regression"] == "present":
        uu, vv = _inside(rng, outline, 300, 0.95, (0.0, 0.0, 0.0))
        keep = _texture_at(texture, uu, vv)[:, 4] > 0.5
        centres = pixels(uu[keep], vv[keep])
        radius = int(px_size(0.008, 0.9))
        for centre in centres:
            cv2.circle(ink("blue"), (int(centre[0]), int(centre[1])), radius, 170, -1, cv2.LINE_AA, 4)
    # Milia-like cysts (seborrhoeic keratosis): small bright round spots with a soft halo.
    if latents["milia_cysts"] == "present":
        count = int(rng.integers(3, 15))
        uu, vv = _inside(rng, outline, count, 0.85, (0.0, 0.0, 0.0))
        for centre, radius in zip(pixels(uu, vv), px_size(rng.uniform(0.02, 0.05, count), 1.5), strict=True):
            cv2.circle(
                ink("white"), (int(centre[0]), int(centre[1])), int(radius * 1.7), 110, -1, cv2.LINE_AA, 4
            )
            cv2.circle(ink("white"), (int(centre[0]), int(centre[1])), int(radius), 240, -1, cv2.LINE_AA, 4)
    # Scale: rough keratin texture over the scale region.
    if latents["scale"] == "present":
        rough = (np.clip(speckle * 1.6 - 0.55, 0, 1) * scale * 255).astype(np.uint8)
        np.maximum(ink("white"), rough, out=ink("white"))
    # Vessels.
    vessels = latents["vessels"]
    if vessels == "arborising":  # BCC: sharp, branching, thick trunks tapering
        for _ in range(int(rng.integers(2, 5))):
            _draw_tree(ink("red"), rng, pixels, radius_px, unit, outline)
    elif vessels == "dotted":  # dotted / glomerular: an even field of small red dots
        count = int(rng.integers(30, 110))
        uu, vv = _inside(rng, outline, count, 0.9, (0.0, 0.0, 0.0))
        radius = int(px_size(0.014, 1.0))
        for centre in pixels(uu, vv):
            cv2.circle(ink("red"), (int(centre[0]), int(centre[1])), radius, 220, -1, cv2.LINE_AA, 4)
    elif vessels == "lacunae":  # red-blue lacunae: packed round lagoons with pale septa between
        count = int(rng.integers(12, 45))
        uu, vv = _inside(rng, outline, count, 0.85, (0.0, 0.0, 0.0))
        for centre, radius in zip(pixels(uu, vv), px_size(rng.uniform(0.04, 0.12, count), 2.0), strict=True):
            value = int(rng.integers(170, 250))
            cv2.circle(
                ink("lacuna"), (int(centre[0]), int(centre[1])), int(radius), value, -1, cv2.LINE_AA, 4
            )
    lacuna_colour = np.asarray([120, 22, 48], np.float32) * (1.0 - 0.4 * rng.random()) + np.asarray(
        [0, 0, 30 * rng.random()], np.float32
    )
    colours = {
        "brown": brown_ink, "black": _BLACK, "blue": _BLUE_GREY, "white": _WHITE, "red": _VESSEL,
        "lacuna": lacuna_colour,
    }  # fmt: skip
    soft = max(0.5, 0.7 * unit)  # dermoscopic structures are never razor-sharp at this magnification
    for name in ("brown", "black", "blue", "lacuna", "white", "red"):
        if name in inks:
            blur = {"red": 0.7, "lacuna": 2.0, "blue": 1.6}.get(name, 1.0)
            blurred = cv2.GaussianBlur(inks[name], (0, 0), soft * blur)
            weight = blurred.astype(np.float32) * (1.0 / 255.0)
            layer += (colours[name] - layer) * weight[..., None]


def _draw_tree(
    canvas: np.ndarray,
    rng: np.random.Generator,
    pixels: Any,
    radius_px: float,
    unit: float,
    outline: np.ndarray,
) -> None:
    """One arborising vessel: a trunk that wanders and forks into thinner branches."""
    start_angle, start_distance = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.6)
    stack = [(start_distance * math.cos(start_angle), start_distance * math.sin(start_angle),
              rng.uniform(0, 2 * np.pi), max(1.0, 0.03 * radius_px), 0)]  # fmt: skip
    while stack:
        u, v, heading, thickness, level = stack.pop()
        steps = int(rng.integers(4, 9))
        headings = heading + np.cumsum(rng.normal(0, 0.35, steps))
        step = rng.uniform(0.04, 0.08)
        uu = u + np.concatenate([[0.0], np.cumsum(step * np.cos(headings))])
        vv = v + np.concatenate([[0.0], np.cumsum(step * np.sin(headings))])
        inside = np.hypot(uu, vv) < 0.95
        if not inside[0]:
            continue
        last = int(np.argmin(inside)) if not inside.all() else len(uu)
        points = pixels(uu[:last], vv[:last])
        if len(points) >= 2:
            width_px = max(1, round(max(thickness, 0.9 * unit)))
            cv2.polylines(canvas, [points.reshape(-1, 1, 2)], False, 235, width_px, cv2.LINE_AA, 4)
        if level < 3 and last == len(uu):
            for turn in (-1, 1):
                if rng.random() < 0.8:
                    stack.append((uu[-1], vv[-1], headings[-1] + turn * rng.uniform(0.3, 0.9),
                                  thickness * 0.65, level + 1))  # fmt: skip


def _artefacts(
    image: np.ndarray, acquisition: Acquisition, rng: np.random.Generator, unit: float
) -> dict[str, int]:
    """Hair, gel bubbles and ruler marks, drawn in place on the final uint8 image; returns counts."""
    height, width = image.shape[:2]
    n_hair = int(rng.poisson(acquisition.hair_mean)) + 1 if rng.random() < acquisition.hair_rate else 0
    for _ in range(n_hair):
        start = rng.uniform([0, 0], [width, height])
        heading = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.2, 0.9) * width
        bend, wave = rng.normal(0, 1.0), rng.normal(0, 0.25)
        t = np.linspace(0, 1, 24)[:, None]
        headings = heading + bend * t + wave * np.sin(t * rng.uniform(3, 9))
        path = start + np.cumsum(np.hstack([np.cos(headings), np.sin(headings)]) * length / 24, axis=0)
        colour = tuple(float(c) for c in np.asarray([58, 40, 32]) * rng.uniform(0.45, 1.5))
        thickness = max(1, round(rng.uniform(0.6, 2.0) * unit))
        cv2.polylines(image, [np.round(path * 16).astype(np.int32).reshape(-1, 1, 2)], False, colour,
                      thickness, cv2.LINE_AA, 4)  # fmt: skip
    n_bubbles = int(rng.poisson(acquisition.bubble_mean)) + 1 if rng.random() < acquisition.bubble_rate else 0
    if n_bubbles:
        glare = np.zeros((height, width), dtype=np.uint8)
        for _ in range(n_bubbles):
            centre = (int(rng.uniform(0, width) * 16), int(rng.uniform(0, height) * 16))
            radius = rng.uniform(4, 40) * unit
            cv2.circle(glare, centre, int(radius * 16), 40, -1, cv2.LINE_AA, 4)
            cv2.circle(glare, centre, int(radius * 16), 200, max(1, round(1.5 * unit)), cv2.LINE_AA, 4)
            spot = (centre[0] - int(radius * 6), centre[1] - int(radius * 6))
            cv2.circle(glare, spot, int(max(1.0, radius * 0.2) * 16), 230, -1, cv2.LINE_AA, 4)
        weight = glare.astype(np.float32)[..., None] * (1.0 / 255.0)
        image[:] = np.clip(image + (250.0 - image) * weight, 0, 255).astype(np.uint8)
    ruler = bool(rng.random() < acquisition.ruler_rate)
    if ruler:
        spacing = max(3.0, 9.0 * unit)
        vertical = bool(rng.random() < 0.5)
        side = rng.uniform(0.03, 0.1) * (width if vertical else height)
        length = (height if vertical else width) * rng.uniform(0.4, 0.9)
        begin = rng.uniform(0, (height if vertical else width) - length)
        colour = (24.0, 22.0, 26.0)
        for i in range(int(length / spacing)):
            tick = (10 if i % 10 == 0 else 6 if i % 5 == 0 else 3) * max(1.0, unit)
            along = begin + i * spacing
            if vertical:
                p, q = (side, along), (side + tick, along)
            else:
                p, q = (along, height - side), (along, height - side - tick)
            cv2.line(image, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, 1, cv2.LINE_AA)
    return {"n_hairs": n_hair, "n_bubbles": n_bubbles, "ruler": int(ruler)}


def ground_truth_row(drawn: DermoscopyImage, width: int, height: int) -> dict[str, Any]:
    """The geometry columns of synthetic_ground_truth.csv for one drawn image."""
    x1, y1, x2, y2 = drawn.bbox
    cx, cy = drawn.centroid
    return {
        "x1": x1, "y1": y1, "x2": x2, "y2": y2,
        "location": location_from_point(cx, cy, width, height),
        "n_components": drawn.n_components, "centroid_x": round(cx, 2), "centroid_y": round(cy, 2),
        "area_fraction": round(drawn.lesion_pixels / (width * height), 6),
    }  # fmt: skip
