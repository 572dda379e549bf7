"""Pixel coordinates in the original image <-> the image the model sees (after Qwen2.5-VL's smart_resize).

Qwen2.5-VL grounds boxes and points in ABSOLUTE pixels of the resized image, so every ground-truth
box is scaled into that space for training and every predicted box is scaled back for evaluation.
The resize must be exactly the processor's, or boxes drift by up to a patch: `smart_resize` below is
a faithful copy of transformers' (importing theirs pulls in torch, ~5 s), and a test compares both.

Images are pre-resized to `model_input_size` before the processor sees them, so that size must be a
FIXED POINT of smart_resize (the processor then leaves it alone). For ordinary images smart_resize's
own answer is one. It is not when the budget forces the short side below one 28 px token (beyond ~51:1
with max_pixels=40000, ~146:1 with 200704: smart_resize keeps 28 px and overshoots max_pixels), nor
for budgets where its rounding lands outside [min_pixels, max_pixels] (e.g. min == max); there
`model_input_size` picks the in-budget 28-px grid closest in aspect ratio instead. Images wider than
200:1 (the processor's own limit) and budgets no grid can meet are refused with one line.

Sizes are always `(width, height)`; boxes are `[x1, y1, x2, y2]` with exclusive `x2`/`y2`
(x2 = x1 + box width); polygons are lists of `[x, y]` points. No torch, no transformers here.
Boxes follow skinderm.geometry's one rule: an inverted, zero-area or non-finite box is invalid and
both conversions refuse it (ValueError) instead of sorting its corners, so evaluation cannot score a
box that the reward paid 0 for.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from skinderm.geometry import check_box

# One visual token covers PATCH_SIZE * MERGE_SIZE pixels per side (14 px patches merged 2x2).
PATCH_SIZE = 14
MERGE_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE
# The processor's defaults (Qwen2.5-VL's preprocessor_config.json).
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 16384
# smart_resize refuses anything wider or taller than this (long side / short side).
MAX_ASPECT_RATIO = 200


def smart_resize(
    height: int,
    width: int,
    factor: int = FACTOR,
    min_pixels: int = 56 * 56,
    max_pixels: int = 14 * 14 * 4 * 1280,
) -> tuple[int, int]:
    """Copy of `transformers.models.qwen2_vl.image_processing_pil_qwen2_vl.smart_resize`: (height, width).

    Keep it byte-for-byte in behaviour, float rounding included: with max_pixels=224*168 a 600x450
    image gives 196x140, not 224x168, because sqrt() makes 450/beta/28 = 5.999... which floors to 5.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def model_input_size(
    width: int, height: int, *, min_pixels: int, max_pixels: int, factor: int = FACTOR
) -> tuple[int, int]:
    """(width, height) the model sees: the pixel space of its answers, and a size the processor keeps.

    smart_resize's own result whenever the processor would leave that unchanged (every ordinary image);
    otherwise the closest size it does keep (see the module docstring). ValueError, one line, for an
    image beyond MAX_ASPECT_RATIO or a pixel budget no size can meet.
    """
    _check_size((width, height), "image size")
    check_pixel_budget(min_pixels, max_pixels, factor=factor)
    check_aspect_ratio(width, height)
    resized_height, resized_width = smart_resize(
        int(height), int(width), factor=factor, min_pixels=min_pixels, max_pixels=max_pixels
    )
    if is_fixed_point(
        resized_width, resized_height, min_pixels=min_pixels, max_pixels=max_pixels, factor=factor
    ):
        return resized_width, resized_height
    return _closest_fixed_point(width, height, min_pixels=min_pixels, max_pixels=max_pixels, factor=factor)


def is_fixed_point(
    width: int, height: int, *, min_pixels: int, max_pixels: int, factor: int = FACTOR
) -> bool:
    """Whether smart_resize returns (width, height) unchanged, i.e. the processor does not resize it."""
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        return False
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels) == (
        height,
        width,
    )


def check_pixel_budget(min_pixels: int, max_pixels: int, *, factor: int = FACTOR) -> None:
    """ValueError (one line naming model.min_pixels / model.max_pixels) for a budget that cannot be honoured.

    Every size the processor keeps is a grid of factor x factor tokens at most MAX_ASPECT_RATIO:1, so the
    budget needs at least one such grid with its area in [min_pixels, max_pixels]. Equal values are refused
    too: smart_resize's rounding rarely lands on one exact pixel count (600x450 at 40000/40000 would be
    resized twice).
    """
    if min_pixels <= 0 or max_pixels < min_pixels:
        raise ValueError(
            f"model.min_pixels={min_pixels}, model.max_pixels={max_pixels}: need 0 < min_pixels < "
            "max_pixels; fix model.min_pixels / model.max_pixels "
            f"(e.g. model.min_pixels={DEFAULT_MIN_PIXELS} model.max_pixels=40000, the tiny model's)"
        )
    if min_pixels == max_pixels:
        raise ValueError(
            f"model.min_pixels == model.max_pixels == {max_pixels}: Qwen2.5-VL's resize cannot hold every "
            "image at one exact pixel count (it would resize a pre-resized image again and move its boxes); "
            f"keep model.min_pixels below model.max_pixels (e.g. model.min_pixels={DEFAULT_MIN_PIXELS})"
        )
    if not _some_grid_fits(min_pixels, max_pixels, factor):
        token_area = factor * factor
        raise ValueError(
            f"model.min_pixels={min_pixels}, model.max_pixels={max_pixels}: no image size fits between them "
            f"(sides are multiples of {factor} px, so areas are multiples of {token_area}, with at most "
            f"{MAX_ASPECT_RATIO}:1 between the sides); "
            f"widen the range (e.g. model.min_pixels={DEFAULT_MIN_PIXELS})"
        )


@functools.lru_cache(maxsize=64)
def _some_grid_fits(min_pixels: int, max_pixels: int, factor: int) -> bool:
    """Whether some short x long token grid (long <= MAX_ASPECT_RATIO x short) has an area in the budget.

    Not just "a multiple of factor**2 in range": 383 tokens (a prime) only make a 1x383 grid, too wide.
    Cached: model_input_size asks once per image.
    """
    token_area = factor * factor
    low, high = -(-min_pixels // token_area), max_pixels // token_area
    short = 1
    while short * short <= high:
        if max(short, -(-low // short)) <= min(high // short, MAX_ASPECT_RATIO * short):
            return True
        short += 1
    return False


def check_aspect_ratio(width: int, height: int) -> None:
    """ValueError (one line) for a size the processor refuses: long side > MAX_ASPECT_RATIO x short side."""
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"{width}x{height} pixels has aspect ratio {ratio:.0f}:1, over the {MAX_ASPECT_RATIO}:1 limit of "
            "Qwen2.5-VL's image processor; crop or pad it to at most that ratio"
        )


def _closest_fixed_point(
    width: int, height: int, *, min_pixels: int, max_pixels: int, factor: int
) -> tuple[int, int]:
    """The token grid (short x long tokens) inside the budget closest to the image's aspect ratio.

    Any grid with min_pixels <= area <= max_pixels and ratio <= MAX_ASPECT_RATIO is a fixed point of
    smart_resize (both sides are already multiples of `factor`). Ties go to the larger area (more detail).
    At most sqrt(max_pixels) / factor short sides are tried: ~128 for the processor's default budget.
    """
    token_area = factor * factor
    low, high = -(-min_pixels // token_area), max_pixels // token_area
    target = math.log(max(width, height) / min(width, height))
    best: tuple[float, int, int, int] | None = None  # (aspect error, -area, short, long)
    short = 1
    while short * short <= high:
        longest = min(high // short, MAX_ASPECT_RATIO * short)
        shortest_long = max(short, -(-low // short))
        if shortest_long <= longest:
            # log(long / short) is monotone in long: the best long side is the ideal one, clamped.
            ideal = short * math.exp(target)
            for long in (
                max(shortest_long, min(longest, math.floor(ideal))),
                max(shortest_long, min(longest, math.ceil(ideal))),
            ):
                candidate = (abs(math.log(long / short) - target), -short * long, short, long)
                if best is None or candidate < best:
                    best = candidate
        short += 1
    if best is None:  # check_pixel_budget guarantees some area in range; kept for a clear message
        raise ValueError(
            f"no {factor}-px image size fits model.min_pixels={min_pixels}, model.max_pixels={max_pixels}"
        )
    _, _, short, long = best
    if width >= height:
        return long * factor, short * factor
    return short * factor, long * factor


def visual_token_count(width: int, height: int, *, min_pixels: int, max_pixels: int) -> int:
    """How many `<|image_pad|>` tokens one image costs (one per 28x28 pixels after the resize)."""
    model_width, model_height = model_input_size(width, height, min_pixels=min_pixels, max_pixels=max_pixels)
    return (model_width // FACTOR) * (model_height // FACTOR)


def box_to_model_space(
    box: Sequence[float], original_size: tuple[int, int], model_size: tuple[int, int]
) -> list[int]:
    """Scale an original-pixel box into model space: integers, clamped, at least 1 px wide and high.

    ValueError for an inverted, zero-area or non-finite box (skinderm.geometry's rule)."""
    x1, y1, x2, y2 = check_box(box)
    (width, height), (model_width, model_height) = _checked_sizes(original_size, model_size)
    left, right = _integer_span(x1 * model_width / width, x2 * model_width / width, model_width)
    top, bottom = _integer_span(y1 * model_height / height, y2 * model_height / height, model_height)
    return [left, top, right, bottom]


def box_to_original_space(
    box: Sequence[float], model_size: tuple[int, int], original_size: tuple[int, int]
) -> list[float]:
    """Scale a model-space box (e.g. parsed from an answer) back to original pixels, clamped to the image.

    Floats, unrounded: IoU against ground truth is computed in original pixels and rounding here
    would only add error. An inverted or zero-area box raises ValueError (skinderm.geometry's rule;
    the answer parser never returns one); a box outside the image comes back clamped to zero area.
    """
    x1, y1, x2, y2 = check_box(box)
    (model_width, model_height), (width, height) = _checked_sizes(model_size, original_size)
    return [
        _clamp(x1 * width / model_width, width),
        _clamp(y1 * height / model_height, height),
        _clamp(x2 * width / model_width, width),
        _clamp(y2 * height / model_height, height),
    ]


def points_to_model_space(
    points: Sequence[Sequence[float]], original_size: tuple[int, int], model_size: tuple[int, int]
) -> list[list[int]]:
    """Scale polygon points into the model's pixel space (rounded half up, clamped to [0, size])."""
    (width, height), (model_width, model_height) = _checked_sizes(original_size, model_size)
    return [
        [
            int(_clamp(_round_half_up(x * model_width / width), model_width)),
            int(_clamp(_round_half_up(y * model_height / height), model_height)),
        ]
        for x, y in _check_points(points)
    ]


def points_to_original_space(
    points: Sequence[Sequence[float]], model_size: tuple[int, int], original_size: tuple[int, int]
) -> list[list[float]]:
    """Scale model-space polygon points back to original pixels (floats, clamped to [0, size])."""
    (model_width, model_height), (width, height) = _checked_sizes(model_size, original_size)
    return [
        [_clamp(x * width / model_width, width), _clamp(y * height / model_height, height)]
        for x, y in _check_points(points)
    ]


def _integer_span(start: float, end: float, limit: int) -> tuple[int, int]:
    """Round an exclusive [start, end) span to integers inside [0, limit], keeping it at least 1 px long.

    Each end moves by at most half a pixel, or, for a span thinner than a pixel, by less than one.
    """
    low = int(_clamp(_round_half_up(start), limit))
    high = int(_clamp(_round_half_up(end), limit))
    if high <= low:  # thinner than one model pixel: the pixel that holds its centre
        low = int(min(max(math.floor((start + end) / 2), 0), limit - 1))
        high = low + 1
    return low, high


def _round_half_up(value: float) -> int:
    # Python's round() rounds half to even; half up keeps the mapping monotone and predictable.
    return math.floor(value + 0.5)


def _clamp(value: float, limit: int) -> float:
    return min(max(value, 0), limit)


def _checked_sizes(
    source_size: tuple[int, int], target_size: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    # Scaling is value * target / source (not value * (target / source)): exact at the image edges.
    _check_size(source_size, "source size")
    _check_size(target_size, "target size")
    return (source_size[0], source_size[1]), (target_size[0], target_size[1])


def _check_size(size: Sequence[int], what: str) -> None:
    if len(size) != 2 or not all(isinstance(v, int | float) and v > 0 for v in size):
        raise ValueError(f"{what} must be (width, height) with positive values, got {size!r}")


def _check_points(points: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    checked = []
    for point in points:
        if len(point) != 2 or not all(isinstance(v, int | float) and math.isfinite(v) for v in point):
            raise ValueError(f"a polygon point must be [x, y] with 2 finite numbers, got {point!r}")
        checked.append((float(point[0]), float(point[1])))
    return checked
