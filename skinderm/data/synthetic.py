"""A synthetic HAM10000: the real folder layout, names and metadata values, with drawn lesions.

Why: every stage of the pipeline (annotation, splits, SFT, GRPO, evaluation) must run end to end
without the 3 GB download, and a tiny model must be able to *learn* from it. Two looks (`style`):

- `simple` (the default): each class gets a look that survives downscaling to 112x84 (its own hue
  and brightness, shape family and texture), lesions are placed uniformly over the 3x3 location grid.
  Fast and easy: for tests.
- `dermoscopy` (skinderm/data/dermoscopy.py): HAM10000-like framing, dermoscopic structures drawn
  from class-conditional latent cues that overlap, class-independent artefacts (`acquisition`:
  standard | shifted), and a known ceiling (`synthetic_oracle.json`).

`synthetic_ground_truth.csv` records the generator's own geometry of the main lesion so that
annotation can be checked exactly (and, for `dermoscopy`, each image's latents and artefacts).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from skinderm.core import files
from skinderm.data import dermoscopy, layout
from skinderm.data.annotation import default_workers, parallel_map
from skinderm.data.classes import CLASS_CODES, HAM10000_CLASS_COUNTS, location_from_point
from skinderm.data.errors import DataError

log = logging.getLogger(__name__)

# Bump when the drawing changes, so cached folders (keyed by their parameters) are regenerated.
GENERATOR_VERSION = 2  # 2: style and acquisition parameters (style=simple draws as version 1 did)
FIRST_IMAGE_NUMBER = 24306  # HAM10000's first image is ISIC_0024306
JPEG_QUALITY = 90

# Metadata value sets of the real release, with weights close to its counts.
DX_TYPE_WEIGHTS: dict[str, dict[str, float]] = {
    "akiec": {"histo": 1.0},
    "bcc": {"histo": 1.0},
    "mel": {"histo": 1.0},
    "nv": {"follow_up": 0.55, "histo": 0.33, "consensus": 0.1, "confocal": 0.02},
    "bkl": {"histo": 0.5, "consensus": 0.4, "confocal": 0.1},
    "df": {"histo": 0.5, "consensus": 0.5},
    "vasc": {"histo": 0.5, "consensus": 0.5},
}
LOCALIZATION_WEIGHTS: dict[str, int] = {
    "back": 2192, "lower extremity": 2077, "trunk": 1404, "upper extremity": 1118, "abdomen": 1022,
    "face": 745, "chest": 407, "foot": 319, "unknown": 234, "neck": 168, "scalp": 128, "hand": 90,
    "ear": 56, "genital": 48, "acral": 7,
}  # fmt: skip
DATASET_WEIGHTS: dict[str, int] = {
    "vidir_molemax": 3954, "vidir_modern": 3363, "rosendahl": 2259, "vienna_dias": 439,
}  # fmt: skip
SEX_WEIGHTS: dict[str, float] = {"male": 0.54, "female": 0.455, "unknown": 0.005}
MISSING_AGE_FRACTION = 0.006

GROUND_TRUTH_COLUMNS: tuple[str, ...] = (
    "image_id", "x1", "y1", "x2", "y2", "location", "n_components",
    "centroid_x", "centroid_y", "area_fraction", "has_mask",
)  # fmt: skip

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ClassStyle:
    """How one class looks: all three cues differ between classes, so any one suffices to learn."""

    shape: str  # round | lobed | ellipse | ring | square | star | trefoil
    texture: str  # solid | dots | stripes | ring | centre
    color: RGB
    accent: RGB


CLASS_STYLES: dict[str, ClassStyle] = {
    "nv": ClassStyle("round", "solid", (128, 78, 48), (128, 78, 48)),  # medium brown disc
    "mel": ClassStyle("lobed", "dots", (34, 24, 40), (80, 96, 150)),  # near-black, blue-grey dots
    "bkl": ClassStyle("ellipse", "stripes", (204, 162, 58), (146, 104, 36)),  # ochre, striped
    "bcc": ClassStyle("ring", "ring", (222, 88, 128), (250, 232, 238)),  # pink rim, pearly centre
    "akiec": ClassStyle("square", "dots", (206, 70, 38), (246, 240, 228)),  # red-orange, white scale
    "df": ClassStyle("star", "centre", (118, 78, 122), (242, 236, 236)),  # mauve star, white centre
    "vasc": ClassStyle("trefoil", "dots", (150, 0, 42), (84, 0, 28)),  # crimson, dark lacunae
}
SKIN_RGB: RGB = (232, 195, 170)


@dataclass(frozen=True)
class LesionLook:
    """What stays fixed across the images of one lesion."""

    dx: str
    unit_polygon: np.ndarray  # (N, 2), area 1, centred, before aspect/rotation
    aspect: float  # width / height of the unrotated shape
    area_fraction: float  # of the image, before per-image jitter
    angle_deg: float
    color: RGB
    accent: RGB
    cell: tuple[int, int]  # (row, col) of the 3x3 grid
    relative_position: tuple[float, float]  # where in the cell's allowed range (0..1 each)
    stripe_angle: float


def default_class_counts(num_images: int) -> dict[str, int]:
    """HAM10000's class mix scaled to `num_images` (every class present once there are 7 images)."""
    return _apportion(num_images, {code: float(HAM10000_CLASS_COUNTS[code]) for code in CLASS_CODES})


def _apportion(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of `weights` to integers summing to `total`; nonzero weights get >= 1."""
    positive = [code for code in CLASS_CODES if weights.get(code, 0) > 0]
    weight_sum = sum(weights[code] for code in positive)
    exact = {code: total * weights[code] / weight_sum for code in positive}
    counts = {code: math.floor(value) for code, value in exact.items()}
    by_remainder = sorted(positive, key=lambda code: (-(exact[code] - counts[code]), CLASS_CODES.index(code)))
    for code in by_remainder[: total - sum(counts.values())]:
        counts[code] += 1
    if total >= len(positive):
        for code in positive:
            while counts[code] == 0:
                donor = max(positive, key=lambda c: counts[c])
                counts[donor] -= 1
                counts[code] += 1
    return {code: counts.get(code, 0) for code in CLASS_CODES}


def _resolve_class_counts(num_images: int, class_counts: Mapping[str, float] | None) -> dict[str, int]:
    if class_counts is None:
        return default_class_counts(num_images)
    return _apportion(num_images, {code: float(v) for code, v in class_counts.items()})


# ---------------------------------------------------------------------------------------------
# Shapes


def _unit_polygon(shape: str, rng: np.random.Generator, n_points: int = 96) -> np.ndarray:
    """A closed, star-shaped (hence connected) polygon around the origin, scaled to area 1."""
    theta = np.linspace(0.0, 2.0 * np.pi, n_points, endpoint=False)
    if shape in ("round", "ellipse", "ring"):
        radius = np.ones_like(theta)
    elif shape == "lobed":  # irregular, several harmonics of random phase (melanoma-like border)
        radius = np.ones_like(theta)
        for k in range(2, 6):
            radius += rng.uniform(0.1, 0.22) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    elif shape == "square":  # superellipse: a rounded square
        power = rng.uniform(3.5, 5.0)
        radius = (np.abs(np.cos(theta)) ** power + np.abs(np.sin(theta)) ** power) ** (-1.0 / power)
    elif shape == "star":
        points = int(rng.integers(5, 8))
        inner = rng.uniform(0.45, 0.55)
        phase = (theta * points / (2 * np.pi)) % 1.0
        radius = inner + (1.0 - inner) * np.abs(1.0 - 2.0 * phase)  # triangle wave: sharp tips
    elif shape == "trefoil":
        radius = 1.0 + 0.38 * np.cos(3 * theta + rng.uniform(0, 2 * np.pi))
    else:  # pragma: no cover - CLASS_STYLES only names the shapes above
        raise ValueError(f"unknown shape {shape!r}")
    polygon = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)
    return polygon / math.sqrt(_polygon_area(polygon))


def _polygon_area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _shape_aspect(shape: str, rng: np.random.Generator) -> float:
    if shape == "ellipse":
        return float(rng.uniform(2.0, 2.6))
    if shape in ("round", "ring", "trefoil"):
        return float(rng.uniform(0.88, 1.0))
    return float(rng.uniform(0.8, 1.0))


def _place_polygon(
    look: LesionLook, area_px: float, angle_deg: float, width: int, height: int, jitter: np.ndarray
) -> np.ndarray:
    """Scale, rotate and place the lesion so its centre falls in its grid cell, inside the image.

    A lesion too large to fit inside its (edge or corner) cell's reach is shrunk, down to 8% of
    the image; only then is it allowed to cross the image border or approach the cell's edges.
    """
    stretch = np.array([math.sqrt(look.aspect), 1.0 / math.sqrt(look.aspect)])
    angle = math.radians(angle_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    unit = (look.unit_polygon * stretch) @ rotation.T
    row, col = look.cell
    cell_w, cell_h = width / 3.0, height / 3.0
    rel = np.clip(np.asarray(look.relative_position) + jitter, 0.0, 1.0)
    min_area = 0.08 * width * height
    local = unit
    # (inset from the cell's edges, share of the lesion kept inside, free margin to the image border)
    for inset, inside, margin in (
        (0.12, 1.0, 0.03),
        (0.0, 1.0, 0.03),
        (0.0, 1.0, 0.0),
        (0.0, 0.7, 0.0),
        (0.0, 0.0, 0.0),
    ):
        scale = math.sqrt(area_px)
        while True:
            local = unit * scale
            half_w, half_h = np.abs(local).max(axis=0)
            reach_x, reach_y = inside * half_w + margin * width, inside * half_h + margin * height
            x_lo = max(col * cell_w + inset * cell_w, reach_x)
            x_hi = min((col + 1) * cell_w - inset * cell_w, width - reach_x)
            y_lo = max(row * cell_h + inset * cell_h, reach_y)
            y_hi = min((row + 1) * cell_h - inset * cell_h, height - reach_y)
            fits = x_lo <= x_hi and y_lo <= y_hi
            if fits or (scale * 0.92) ** 2 < min_area:
                break
            scale *= 0.92
        if fits:
            break
    centre_x = x_lo + rel[0] * (x_hi - x_lo)
    centre_y = y_lo + rel[1] * (y_hi - y_lo)
    # Keep the centre strictly inside the cell (its right/bottom edge belongs to the next cell).
    centre = (min(centre_x, (col + 1) * cell_w - 0.51), min(centre_y, (row + 1) * cell_h - 0.51))
    return local + np.asarray(centre)


def _fill_polygon(mask: np.ndarray, polygon: np.ndarray) -> None:
    fixed_point = np.round(polygon * 16).astype(np.int32)  # 4 fractional bits
    cv2.fillPoly(mask, [fixed_point], 255, lineType=cv2.LINE_8, shift=4)


def _keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Thin tips can rasterise into stray pixels: the main lesion must be one 8-connected piece."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 2:
        return mask
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return np.where(labels == largest, 255, 0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Drawing


@dataclass(frozen=True)
class DrawnLesion:
    image_rgb: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8 0/255, all components
    bbox: tuple[int, int, int, int]  # main lesion, exclusive end
    centroid: tuple[float, float]  # main lesion
    n_components: int
    lesion_pixels: int  # all components


class _NoiseBank:
    """Precomputed fine skin noise; each image takes a random window (fast and deterministic)."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, pad: int = 64) -> None:
        noise = rng.normal(0.0, 5.0, size=(height + pad, width + pad, 1))
        noise = np.repeat(noise, 3, axis=2)
        self.positive = np.clip(noise, 0, 255).astype(np.uint8)
        self.negative = np.clip(-noise, 0, 255).astype(np.uint8)
        self.pad = pad

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        height, width = image.shape[:2]
        dy, dx = (int(v) for v in rng.integers(0, self.pad, size=2))
        image = cv2.add(image, self.positive[dy : dy + height, dx : dx + width])
        return cv2.subtract(image, self.negative[dy : dy + height, dx : dx + width])


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Skin colour with soft blotches: a tiny random image upsampled (cheap, no per-pixel RNG)."""
    tone = np.asarray(SKIN_RGB, dtype=np.float32) + rng.uniform(-10, 10, size=3).astype(np.float32)
    small = rng.normal(0.0, 6.0, size=(8, 10, 1)).astype(np.float32) + tone
    small = np.clip(small, 0, 255).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _jitter_color(color: RGB, rng: np.random.Generator, amount: float) -> RGB:
    values = np.clip(np.asarray(color) + rng.uniform(-amount, amount, size=3), 0, 255)
    return (int(values[0]), int(values[1]), int(values[2]))


def _texture(
    layer: np.ndarray,
    look: LesionLook,
    style: ClassStyle,
    polygon_local: np.ndarray,
    area_px: float,
    rng: np.random.Generator,
) -> None:
    """Paint the class texture into `layer` (the lesion's bounding region), in place."""
    height, width = layer.shape[:2]
    if style.texture == "dots":
        spacing = max(4.0, math.sqrt(area_px) / 7.0)
        radius = max(1, round(spacing / 4.0))
        count = int(area_px / spacing**2 * 0.8)
        xs = rng.uniform(0, width, size=count).astype(int)
        ys = rng.uniform(0, height, size=count).astype(int)
        for x, y in zip(xs, ys, strict=True):
            cv2.circle(layer, (int(x), int(y)), radius, look.accent, -1, lineType=cv2.LINE_8)
    elif style.texture == "stripes":
        period = max(4.0, math.sqrt(area_px) / 6.0)
        yy, xx = np.ogrid[:height, :width]
        along = xx * math.cos(look.stripe_angle) + yy * math.sin(look.stripe_angle)
        layer[np.sin(2 * np.pi * along / period) > 0.2] = look.accent
    elif style.texture in ("ring", "centre"):
        shrink = 0.55 if style.texture == "ring" else 0.3
        inner = np.zeros(layer.shape[:2], dtype=np.uint8)
        _fill_polygon(inner, polygon_local * shrink + polygon_local.mean(axis=0) * (1 - shrink))
        layer[inner > 0] = look.accent


def draw_lesion_image(
    look: LesionLook,
    *,
    width: int,
    height: int,
    rng: np.random.Generator,
    noise: _NoiseBank | None,
    satellite: bool,
) -> DrawnLesion:
    """One image of one lesion: size, rotation and position jittered around the lesion's look."""
    style = CLASS_STYLES[look.dx]
    area_px = width * height * float(np.clip(look.area_fraction * rng.uniform(0.88, 1.12), 0.08, 0.25))
    angle = look.angle_deg + rng.uniform(-15.0, 15.0)
    polygon = _place_polygon(look, area_px, angle, width, height, rng.normal(0.0, 0.12, size=2))
    area_px = _polygon_area(polygon)  # after any shrinking to fit its cell

    x0 = max(0, math.floor(polygon[:, 0].min()) - 1)
    y0 = max(0, math.floor(polygon[:, 1].min()) - 1)
    x1 = min(width, math.ceil(polygon[:, 0].max()) + 2)
    y1 = min(height, math.ceil(polygon[:, 1].max()) + 2)
    local_polygon = polygon - (x0, y0)
    region_mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    _fill_polygon(region_mask, local_polygon)
    region_mask = _keep_largest_component(region_mask)

    ys, xs = np.nonzero(region_mask)
    main_pixels = int(xs.size)
    bbox = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
    centroid = (x0 + float(xs.mean()), y0 + float(ys.mean()))

    image = _background(rng, width, height)
    color = _jitter_color(look.color, rng, 4.0)
    layer = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
    layer[:] = color
    _texture(layer, look, style, local_polygon, area_px, rng)
    region = image[y0:y1, x0:x1]
    inside = region_mask > 0
    region[inside] = layer[inside]

    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y0:y1, x0:x1] = region_mask
    n_components = 1
    satellite_pixels = 0
    if satellite:
        satellite_pixels = _draw_satellite(image, mask, main_pixels, color, rng)
        n_components += satellite_pixels > 0
    if noise is not None:
        image = noise.apply(image, rng)
    return DrawnLesion(image, mask, bbox, centroid, n_components, main_pixels + satellite_pixels)


def _draw_satellite(
    image: np.ndarray, mask: np.ndarray, main_pixels: int, color: RGB, rng: np.random.Generator
) -> int:
    """A small round blob that does not touch the main lesion; returns its pixel count (0 if no room)."""
    height, width = mask.shape
    radius = max(3, round(math.sqrt(main_pixels * rng.uniform(0.05, 0.12) / math.pi)))
    gap = max(4, round(0.02 * width))
    reach = radius + gap
    if 2 * radius + 4 >= min(width, height):
        return 0
    for _ in range(40):
        cx = int(rng.integers(radius + 1, width - radius - 1))
        cy = int(rng.integers(radius + 1, height - radius - 1))
        window = mask[max(0, cy - reach) : cy + reach + 1, max(0, cx - reach) : cx + reach + 1]
        if not window.any():
            blob = np.zeros_like(mask)
            cv2.circle(blob, (cx, cy), radius, 255, -1, lineType=cv2.LINE_8)
            mask |= blob
            image[blob > 0] = color
            return int(np.count_nonzero(blob))
    return 0


def _lesion_look(dx: str, rng: np.random.Generator) -> LesionLook:
    style = CLASS_STYLES[dx]
    return LesionLook(
        dx=dx,
        unit_polygon=_unit_polygon(style.shape, rng),
        aspect=_shape_aspect(style.shape, rng),
        area_fraction=float(rng.uniform(0.09, 0.23)),
        angle_deg=float(rng.uniform(0.0, 180.0)),
        color=_jitter_color(style.color, rng, 12.0),
        accent=_jitter_color(style.accent, rng, 8.0),
        cell=(int(rng.integers(0, 3)), int(rng.integers(0, 3))),
        relative_position=(float(rng.uniform()), float(rng.uniform())),
        stripe_angle=float(rng.uniform(0.0, np.pi)),
    )


# ---------------------------------------------------------------------------------------------
# Metadata


def _images_per_lesion(rng: np.random.Generator, remaining: int, max_images: int) -> int:
    """1 image for most lesions, sometimes more (HAM10000: 10,015 images of 7,470 lesions)."""
    weights = 0.3 ** np.arange(max_images)
    return min(remaining, 1 + int(rng.choice(max_images, p=weights / weights.sum())))


def _weighted_choice(rng: np.random.Generator, weights: Mapping[str, float]) -> str:
    names = list(weights)
    probabilities = np.asarray([weights[name] for name in names], dtype=float)
    return names[int(rng.choice(len(names), p=probabilities / probabilities.sum()))]


def _build_metadata(
    rng: np.random.Generator, counts: Mapping[str, int], max_images_per_lesion: int
) -> tuple[pd.DataFrame, list[int], list[str]]:
    """Metadata rows (one per image), each image's lesion index (0..n_lesions-1) and each lesion's dx."""
    lesion_dx: list[str] = []
    image_lesion: list[int] = []
    for dx in CLASS_CODES:
        remaining = counts[dx]
        while remaining > 0:
            k = _images_per_lesion(rng, remaining, max_images_per_lesion)
            image_lesion.extend([len(lesion_dx)] * k)
            lesion_dx.append(dx)
            remaining -= k
    n_lesions = len(lesion_dx)
    lesion_numbers = rng.permutation(n_lesions)
    missing_age = set(
        rng.choice(n_lesions, size=max(1, round(MISSING_AGE_FRACTION * n_lesions)), replace=False).tolist()
        if n_lesions >= 10
        else []
    )
    lesion_rows = []
    for index, dx in enumerate(lesion_dx):
        age = float(5 * round(float(np.clip(rng.normal(52, 17), 0, 85)) / 5))
        lesion_rows.append(
            {
                "lesion_id": f"HAM_{int(lesion_numbers[index]):07d}",
                "dx": dx,
                "dx_type": _weighted_choice(rng, DX_TYPE_WEIGHTS[dx]),
                "age": np.nan if index in missing_age else age,
                "sex": _weighted_choice(rng, SEX_WEIGHTS),
                "localization": _weighted_choice(rng, LOCALIZATION_WEIGHTS),
                "dataset": _weighted_choice(rng, DATASET_WEIGHTS),
            }
        )
    order = rng.permutation(len(image_lesion))  # image ids are not grouped by lesion in HAM10000
    image_lesion = [image_lesion[i] for i in order]
    rows = []
    for number, lesion in enumerate(image_lesion):
        rows.append({"image_id": f"ISIC_{FIRST_IMAGE_NUMBER + number:07d}", **lesion_rows[lesion]})
    metadata = pd.DataFrame(rows)[list(layout.METADATA_COLUMNS)]
    return metadata, image_lesion, lesion_dx


def _metadata_for(
    rng: np.random.Generator,
    num_images: int,
    class_counts: Mapping[str, float] | None,
    max_images_per_lesion: int,
) -> tuple[pd.DataFrame, list[int], list[str]]:
    """The generator's first draws: metadata, image -> lesion, lesion dx (also `synthetic_metadata`'s)."""
    counts = _resolve_class_counts(num_images, class_counts)
    return _build_metadata(rng, counts, max_images_per_lesion)


# ---------------------------------------------------------------------------------------------
# Public API


def synthetic_metadata(
    *,
    num_images: int,
    seed: int,
    class_counts: Mapping[str, float] | None = None,
    max_images_per_lesion: int = 3,
    **drawing_params: Any,
) -> pd.DataFrame:
    """The HAM10000_metadata rows `generate_synthetic_ham10000` would write, without drawing an image.

    Why: class counts and lesion grouping decide the split sizes (e.g. whether every class has 30 test
    images); this answers that in milliseconds. Drawing parameters are accepted and ignored.
    """
    _normalise_params(
        num_images=num_images, seed=seed, class_counts=class_counts,
        max_images_per_lesion=max_images_per_lesion, **drawing_params,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    metadata, _, _ = _metadata_for(rng, num_images, class_counts, max_images_per_lesion)
    return metadata.sort_values(["lesion_id", "image_id"]).reset_index(drop=True)


def generate_synthetic_ham10000(
    out_dir: str | Path,
    *,
    num_images: int,
    seed: int,
    image_width: int = 600,
    image_height: int = 450,
    class_counts: Mapping[str, float] | None = None,
    max_images_per_lesion: int = 3,
    multi_component_fraction: float = 0.1,
    missing_mask_fraction: float = 0.0,
    style: str = "simple",
    acquisition: str = "standard",
) -> Path:
    """Write a synthetic HAM10000 into `out_dir` (replacing an earlier synthetic one) and return it.

    `class_counts` are relative weights per dx code, scaled to `num_images` (exact when they sum to
    it); None means HAM10000's own class mix. `style` is simple | dermoscopy; `acquisition`
    (dermoscopy only) is standard | shifted: with the same seed, shifted draws the same lesions, classes
    and latents under another device's artefacts (a paired out-of-distribution set). The metadata is
    the same for every style and acquisition. The `.complete` marker is written last.
    """
    params = _normalise_params(
        num_images=num_images, seed=seed, image_width=image_width, image_height=image_height,
        class_counts=class_counts, max_images_per_lesion=max_images_per_lesion,
        multi_component_fraction=multi_component_fraction, missing_mask_fraction=missing_mask_fraction,
        style=style, acquisition=acquisition,
    )  # fmt: skip
    out_dir = Path(out_dir)
    _clear_previous_output(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Marks the folder as the generator's before anything else is written, so that an interrupted
    # generation is recognised (and redone) rather than refused as someone else's data.
    marker = {"generator_version": GENERATOR_VERSION, "params": params}
    files.atomic_write_text(out_dir / layout.SYNTHETIC_MARKER, json.dumps(marker, indent=2, sort_keys=True))

    rng = np.random.default_rng(seed)
    metadata, image_lesion, lesion_dx = _metadata_for(rng, num_images, class_counts, max_images_per_lesion)
    n_lesions = len(lesion_dx)
    n_images = len(metadata)
    n_satellite = round(multi_component_fraction * n_images)
    n_no_mask = round(missing_mask_fraction * n_images)
    with_satellite = set(rng.choice(n_images, size=n_satellite, replace=False).tolist())
    without_mask = set(rng.choice(n_images, size=n_no_mask, replace=False).tolist())
    part_dirs = [out_dir / name for name in layout.IMAGE_FOLDER_NAMES]
    mask_dir = out_dir / layout.MASK_FOLDER_NAME
    for folder in (*part_dirs, mask_dir):
        folder.mkdir(parents=True, exist_ok=True)
    first_part_size = (n_images + 1) // 2
    image_paths = [
        (part_dirs[0] if index < first_part_size else part_dirs[1])
        / layout.image_filename(str(metadata["image_id"].iloc[index]))
        for index in range(n_images)
    ]
    mask_paths = [
        None
        if index in without_mask
        else mask_dir / layout.mask_filename(str(metadata["image_id"].iloc[index]))
        for index in range(n_images)
    ]
    if params["style"] == "dermoscopy":
        rows = _draw_dermoscopy(params, lesion_dx, image_lesion, with_satellite, image_paths, mask_paths)
    else:
        rows = _draw_simple(params, lesion_dx, image_lesion, with_satellite, image_paths, mask_paths)
    truth_rows = [
        {"image_id": str(metadata["image_id"].iloc[index]), **row, "has_mask": mask_paths[index] is not None}
        for index, row in enumerate(rows)
    ]

    metadata_csv = metadata.sort_values(["lesion_id", "image_id"]).to_csv(index=False)
    files.atomic_write_text(out_dir / "HAM10000_metadata.csv", metadata_csv)
    columns = list(GROUND_TRUTH_COLUMNS)
    if params["style"] == "dermoscopy":
        columns += list(DERMOSCOPY_TRUTH_COLUMNS)
    truth_csv = pd.DataFrame(truth_rows, columns=columns).to_csv(index=False)
    files.atomic_write_text(out_dir / layout.SYNTHETIC_GROUND_TRUTH_CSV, truth_csv)
    if params["style"] == "dermoscopy":
        oracle = dermoscopy.write_oracle(out_dir)
        log.info("Oracle (Bayes classifier of the latents) balanced accuracy: %s", {
            name: oracle[name]["balanced_accuracy"] for name in ("train", "val", "test") if name in oracle
        })  # fmt: skip
    marker = {"generator_version": GENERATOR_VERSION, "params": params, "num_lesions": n_lesions}
    files.atomic_write_text(out_dir / layout.COMPLETE_MARKER, json.dumps(marker, indent=2, sort_keys=True))
    log.info(
        "Synthetic HAM10000: %d images of %d lesions in %s (%d without mask, %d with a satellite)",
        n_images, n_lesions, out_dir, n_no_mask, n_satellite,
    )  # fmt: skip
    return out_dir


DERMOSCOPY_TRUTH_COLUMNS: tuple[str, ...] = (
    "jpeg_quality", "n_hairs", "n_bubbles", "ruler", "dark_corners", *dermoscopy.LATENT_COLUMNS, "oracle_dx",
)  # fmt: skip


def _draw_simple(
    params: Mapping[str, Any],
    lesion_dx: list[str],
    image_lesion: list[int],
    with_satellite: set[int],
    image_paths: list[Path],
    mask_paths: list[Path | None],
) -> list[dict[str, Any]]:
    """The `simple` style (the streams of generator version 1, image for image): writes every image
    and mask, returns the ground-truth geometry per image."""
    seed, width, height = params["seed"], params["image_width"], params["image_height"]
    looks = [
        _lesion_look(dx, np.random.default_rng([seed, 1, lesion])) for lesion, dx in enumerate(lesion_dx)
    ]
    noise = _NoiseBank(np.random.default_rng([seed, 3]), width, height)
    rows = []
    for index in tqdm(range(len(image_paths)), desc="synthesize", unit="img", disable=None):
        drawn = draw_lesion_image(
            looks[image_lesion[index]], width=width, height=height,
            rng=np.random.default_rng([seed, 2, index]), noise=noise, satellite=index in with_satellite,
        )  # fmt: skip
        bgr = cv2.cvtColor(drawn.image_rgb, cv2.COLOR_RGB2BGR)
        _write_image(image_paths[index], bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        mask_path = mask_paths[index]
        if mask_path is not None:
            _write_image(mask_path, drawn.mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        x1, y1, x2, y2 = drawn.bbox
        cx, cy = drawn.centroid
        rows.append(
            {
                "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                "location": location_from_point(cx, cy, width, height),
                "n_components": drawn.n_components, "centroid_x": round(cx, 2), "centroid_y": round(cy, 2),
                "area_fraction": round(drawn.lesion_pixels / (width * height), 6),
            }
        )  # fmt: skip
    return rows


@dataclass(frozen=True)
class _DermoscopyJob:
    """Everything one worker needs to draw and write one dermoscopy-style image (picklable)."""

    index: int
    seed: int
    width: int
    height: int
    acquisition: str
    latents: dict[str, Any]
    geometry: dermoscopy.LesionGeometry
    satellite: bool
    oracle_dx: str
    image_path: Path
    mask_path: Path | None


def _dermoscopy_job(job: _DermoscopyJob) -> dict[str, Any]:
    """Draw and write one image (and mask); return its ground-truth row. Module level: runs in workers."""
    banks = dermoscopy.banks_for(job.width, job.height, job.seed)
    drawn = dermoscopy.draw_dermoscopy_image(
        job.latents, job.geometry, dermoscopy.ACQUISITION_PRESETS[job.acquisition],
        width=job.width, height=job.height, rng=np.random.default_rng([job.seed, 13, job.index]),
        banks=banks, satellite=job.satellite,
    )  # fmt: skip
    bgr = cv2.cvtColor(drawn.image_rgb, cv2.COLOR_RGB2BGR)
    _write_image(job.image_path, bgr, [cv2.IMWRITE_JPEG_QUALITY, drawn.jpeg_quality])
    if job.mask_path is not None:
        _write_image(job.mask_path, drawn.mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return {
        **dermoscopy.ground_truth_row(drawn, job.width, job.height),
        "jpeg_quality": drawn.jpeg_quality, **drawn.artefacts,
        **{dermoscopy.LATENT_PREFIX + name: value for name, value in job.latents.items()},
        "oracle_dx": job.oracle_dx,
    }  # fmt: skip


# Below this many images per process, starting processes costs more than it saves (~1 s each).
_IMAGES_PER_WORKER = 300
_MAX_WORKERS = 8


def _main_module_is_importable() -> bool:
    """True when spawned workers can safely re-import `__main__`: a module run with `python -m` (the
    entrypoints, `python -m pytest`), whose top level is import-safe. A plain script calling the
    generator at its top level would be re-run by every worker (and hang the pool), so it gets one process.
    """
    return getattr(sys.modules.get("__main__"), "__spec__", None) is not None


def _draw_dermoscopy(
    params: Mapping[str, Any],
    lesion_dx: list[str],
    image_lesion: list[int],
    with_satellite: set[int],
    image_paths: list[Path],
    mask_paths: list[Path | None],
) -> list[dict[str, Any]]:
    """The `dermoscopy` style, on all cores for large sets (results do not depend on the worker count).

    Latents and geometry have their own streams per lesion, which the acquisition does not touch: the
    same seed under `shifted` gives the same lesions and latents (framing quantiles too).
    """
    seed, width, height = params["seed"], params["image_width"], params["image_height"]
    acquisition = dermoscopy.ACQUISITION_PRESETS[params["acquisition"]]
    latents = [
        dermoscopy.sample_latents(dx, np.random.default_rng([seed, 11, i])) for i, dx in enumerate(lesion_dx)
    ]
    geometries = [
        dermoscopy.lesion_geometry(z, acquisition, np.random.default_rng([seed, 12, i]))
        for i, z in enumerate(latents)
    ]
    oracle_dx = dermoscopy.oracle_predictions(pd.DataFrame(latents))
    jobs = [
        _DermoscopyJob(
            index=index,
            seed=seed,
            width=width,
            height=height,
            acquisition=acquisition.name,
            latents=latents[lesion],
            geometry=geometries[lesion],
            satellite=index in with_satellite,
            oracle_dx=oracle_dx[lesion],
            image_path=image_paths[index],
            mask_path=mask_paths[index],
        )
        for index, lesion in enumerate(image_lesion)
    ]
    workers = max(1, min(_MAX_WORKERS, default_workers(), len(jobs) // _IMAGES_PER_WORKER))
    if not _main_module_is_importable():
        workers = 1
    return parallel_map(_dermoscopy_job, jobs, workers=workers, desc="synthesize", unit="img")


def is_synthetic_dataset_current(out_dir: str | Path, **params: Any) -> bool:
    """True when `out_dir` holds a complete synthetic dataset made with exactly these parameters."""
    wanted = {"generator_version": GENERATOR_VERSION, "params": _normalise_params(**params)}
    marker_path = Path(out_dir) / layout.COMPLETE_MARKER
    if not marker_path.is_file():
        return False
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return {key: marker.get(key) for key in wanted} == wanted


def ensure_synthetic_dataset(out_dir: str | Path, **params: Any) -> Path:
    """Generate the synthetic dataset unless `out_dir` already holds it with the same parameters.

    The parameters and the folder are checked before anything is written: a folder holding files the
    generator did not write is refused with one line, and nothing in it is touched. The lock file is
    inside `out_dir` (`layout.SYNTHESIZE_LOCK`), never beside it.
    """
    out_dir = Path(out_dir)
    _normalise_params(**params)
    _check_output_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with files.exclusive_lock(out_dir / layout.SYNTHESIZE_LOCK):
        files.remove_stale_temp_files(out_dir)
        if is_synthetic_dataset_current(out_dir, **params):
            log.info("Reusing synthetic HAM10000 in %s", out_dir)
            return out_dir
        log.info("Generating synthetic HAM10000 in %s", out_dir)
        return generate_synthetic_ham10000(out_dir, **params)


def _normalise_params(**params: Any) -> dict[str, Any]:
    """The generator's parameters with defaults filled in, as JSON-comparable plain values."""
    signature = inspect.signature(generate_synthetic_ham10000)
    allowed = [name for name in signature.parameters if name != "out_dir"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise DataError(
            f"Unknown synthetic dataset parameters {unknown} (dataset.synthetic.*); allowed: {allowed}."
        )
    bound = {name: params.get(name, signature.parameters[name].default) for name in allowed}
    missing = [name for name, value in bound.items() if value is inspect.Parameter.empty]
    if missing:
        raise DataError(f"Synthetic dataset parameters {missing} are required (dataset.synthetic.*).")
    bound["class_counts"] = _check_class_counts(bound["class_counts"])
    bound["num_images"] = _whole_number("num_images", bound["num_images"], 1, hint=" (HAM10000 has 10,015)")
    bound["seed"] = _whole_number("seed", bound["seed"], 0)
    for name, smallest in (("image_width", MIN_WIDTH), ("image_height", MIN_HEIGHT)):
        bound[name] = _whole_number(
            name, bound[name], smallest, MAX_SIDE, hint=" pixels (HAM10000 images are 600x450)"
        )
    long_side, short_side = sorted((bound["image_width"], bound["image_height"]), reverse=True)
    if long_side > MAX_ASPECT * short_side:
        raise DataError(
            f"dataset.synthetic.image_width x image_height = {bound['image_width']}x{bound['image_height']} "
            f"is more elongated than {MAX_ASPECT}:1; use a photo-like shape such as 600x450."
        )
    bound["max_images_per_lesion"] = _whole_number("max_images_per_lesion", bound["max_images_per_lesion"], 1)
    for name in ("multi_component_fraction", "missing_mask_fraction"):
        bound[name] = _fraction(name, bound[name])
    for name, allowed_values in (("style", dermoscopy.STYLES), ("acquisition", dermoscopy.ACQUISITIONS)):
        if bound[name] not in allowed_values:
            raise DataError(
                f"dataset.synthetic.{name} must be one of {', '.join(allowed_values)}, got {bound[name]!r}."
            )
    if bound["style"] == "simple" and bound["acquisition"] != "standard":
        raise DataError(
            "dataset.synthetic.acquisition=shifted needs dataset.synthetic.style=dermoscopy "
            "(the simple style has no acquisition artefacts to shift)."
        )
    return bound


# Image size bounds: the drawing needs room for a lesion in each grid cell; beyond 8192 per side, images
# would near PIL's decompression-bomb limit (89 megapixels) and could not be read back.
MIN_WIDTH, MIN_HEIGHT, MAX_SIDE, MAX_ASPECT = 48, 36, 8192, 10


def _whole_number(name: str, value: Any, smallest: int, largest: int | None = None, *, hint: str = "") -> int:
    """`value` as an int within bounds, else a one-line DataError naming dataset.synthetic.<name>."""
    key = f"dataset.synthetic.{name}"
    try:
        number = int(value)
        whole = not isinstance(value, bool) and float(value) == number
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise DataError(f"{key} must be a whole number, got {value!r}.")
    if number < smallest or (largest is not None and number > largest):
        bounds = f"at least {smallest}" if largest is None else f"between {smallest} and {largest}"
        raise DataError(f"{key} must be {bounds}{hint}, got {number}.")
    return number


def _fraction(name: str, value: Any) -> float:
    key = f"dataset.synthetic.{name}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        raise DataError(f"{key} must be a fraction in [0, 1], got {value!r}.")
    return number


def _check_class_counts(counts: Any) -> dict[str, float] | None:
    """Plain sorted weights, or a one-line DataError naming dataset.synthetic.class_counts."""
    if counts is None:
        return None
    key = "dataset.synthetic.class_counts"
    if not isinstance(counts, Mapping):
        raise DataError(f"{key} must map dx codes to weights (e.g. {{nv: 2, mel: 1}}), got {counts!r}.")
    unknown = sorted(str(code) for code in set(counts) - set(CLASS_CODES))
    if unknown:
        raise DataError(f"{key} has unknown dx codes {unknown}; use {list(CLASS_CODES)}.")
    try:
        weights = {str(code): float(value) for code, value in sorted(dict(counts).items())}
    except (TypeError, ValueError):
        raise DataError(f"{key} weights must be numbers, got {dict(counts)}.") from None
    if any(not math.isfinite(v) or v < 0 for v in weights.values()) or sum(weights.values()) <= 0:
        raise DataError(f"{key} {weights} must be non-negative with a positive sum.")
    return weights


def _write_image(path: Path, array: np.ndarray, options: list[int]) -> None:
    ok, encoded = cv2.imencode(path.suffix, array, options)
    if not ok:  # pragma: no cover - encoders for .jpg/.png are always built into OpenCV
        raise OSError(f"OpenCV could not encode {path}.")
    files.atomic_write_bytes(path, encoded.tobytes())  # a full disk names the file


# What the project's own tools leave in a dataset folder that holds no generated data yet.
_TOOL_FILES = frozenset({layout.SYNTHESIZE_LOCK, layout.PREPARE_LOCK})
_OWN_MARKERS = (layout.SYNTHETIC_MARKER, layout.COMPLETE_MARKER, layout.SYNTHETIC_GROUND_TRUTH_CSV)
_SHOWN_NAMES = 3


def _check_output_folder(out_dir: Path) -> None:
    """Refuse a path that is a file, or a folder holding files that the generator did not write.

    Why: generating replaces the dataset folders and metadata; pointed at a real HAM10000 copy or any
    other folder, it must stop with one line before it writes or deletes anything.
    """
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    where = "(out= for synthesize, dataset.root for training)"
    if not out_dir.is_dir():
        raise DataError(f"Synthetic dataset folder {out_dir} is not a folder; choose another path {where}.")
    if any((out_dir / name).exists() for name in _OWN_MARKERS):
        return
    foreign = sorted(
        entry.name
        for entry in out_dir.iterdir()
        if entry.name not in _TOOL_FILES and not files.is_temp_file_name(entry.name)
    )
    if foreign:
        shown = ", ".join(foreign[:_SHOWN_NAMES]) + (", ..." if len(foreign) > _SHOWN_NAMES else "")
        data = any(name in foreign for name in (*layout.METADATA_FILENAMES, *layout.IMAGE_FOLDER_NAMES))
        what = "HAM10000 data" if data else f"{len(foreign)} files or folders"
        raise DataError(
            f"Synthetic dataset folder {out_dir} holds {what} that the generator did not write ({shown}); "
            f"refusing to overwrite them: choose a new or empty folder {where}."
        )


def _clear_previous_output(out_dir: Path) -> None:
    """Remove what an earlier generation wrote (and what was derived from it); refuse anyone else's."""
    _check_output_folder(out_dir)
    if not out_dir.exists():
        return
    for name in (
        layout.COMPLETE_MARKER, "HAM10000_metadata.csv", layout.SYNTHETIC_GROUND_TRUTH_CSV,
        layout.ANNOTATIONS_JSON, layout.ANNOTATIONS_CSV, layout.ANNOTATIONS_SUMMARY_JSON, layout.SKIPPED_CSV,
        layout.SPLITS_CSV, layout.SPLITS_PARAMS_JSON, dermoscopy.SYNTHETIC_ORACLE_JSON,
    ):  # fmt: skip
        (out_dir / name).unlink(missing_ok=True)
    for name in (*layout.IMAGE_FOLDER_NAMES, layout.MASK_FOLDER_NAME):
        if (out_dir / name).is_dir():
            shutil.rmtree(out_dir / name)
