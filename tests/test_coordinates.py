"""Original <-> model-space coordinates must agree with the processor's resize to the pixel."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from skinderm.coordinates import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    MAX_ASPECT_RATIO,
    box_to_model_space,
    box_to_original_space,
    check_pixel_budget,
    model_input_size,
    points_to_model_space,
    points_to_original_space,
    smart_resize,
    visual_token_count,
)


def test_600x450_at_default_pixel_limits_becomes_588x448():
    size = model_input_size(600, 450, min_pixels=DEFAULT_MIN_PIXELS, max_pixels=DEFAULT_MAX_PIXELS)
    assert size == (588, 448)
    assert visual_token_count(600, 450, min_pixels=DEFAULT_MIN_PIXELS, max_pixels=DEFAULT_MAX_PIXELS) == 336


def test_max_pixels_224x168_gives_196x140_because_of_float_rounding():
    # sqrt makes 450 / beta / 28 = 5.999..., floored to 5: the processor really produces 196x140 here.
    assert model_input_size(600, 450, min_pixels=3136, max_pixels=224 * 168) == (196, 140)


def test_tiny_and_large_model_budgets_give_the_documented_sizes():
    assert model_input_size(600, 450, min_pixels=3136, max_pixels=40_000) == (224, 168)
    assert visual_token_count(600, 450, min_pixels=3136, max_pixels=40_000) == 48
    assert model_input_size(600, 450, min_pixels=3136, max_pixels=448 * 448) == (504, 364)


def test_an_image_already_at_model_size_is_left_alone():
    assert model_input_size(224, 168, min_pixels=3136, max_pixels=40_000) == (224, 168)


def test_small_images_are_scaled_up_to_min_pixels():
    width, height = model_input_size(30, 20, min_pixels=3136, max_pixels=40_000)
    assert width * height >= 3136
    assert width % 28 == 0 and height % 28 == 0


def test_smart_resize_copy_matches_transformers():
    # transformers' module imports torch (~5 s), so it runs in a subprocess that prints its results.
    cases = [
        (h, w, lo, hi)
        for h, w in [
            (450, 600),
            (600, 450),
            (1, 28),
            (28, 28),
            (57, 3000),
            (1080, 1920),
            (768, 1024),
            (100, 101),
        ]
        for lo, hi in [(3136, 12_845_056), (3136, 37_632), (3136, 40_000), (37_632, 37_632), (3136, 200_704)]
    ]
    program = (
        "import json, sys\n"
        "from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize\n"
        "cases = json.loads(sys.argv[1])\n"
        "print(json.dumps([smart_resize(h, w, 28, lo, hi) for h, w, lo, hi in cases]))\n"
    )
    import json

    result = subprocess.run(
        [sys.executable, "-c", program, json.dumps(cases)], capture_output=True, text=True, check=True
    )
    expected = [tuple(pair) for pair in json.loads(result.stdout.strip().splitlines()[-1])]
    ours = [smart_resize(h, w, 28, lo, hi) for h, w, lo, hi in cases]
    assert ours == expected


def test_box_is_scaled_into_model_space_and_clamped():
    assert box_to_model_space([0, 0, 600, 450], (600, 450), (224, 168)) == [0, 0, 224, 168]
    assert box_to_model_space([150, 75, 450, 375], (600, 450), (300, 225)) == [75, 38, 225, 188]
    assert box_to_model_space([-20, -5, 700, 500], (600, 450), (224, 168)) == [0, 0, 224, 168]


def test_a_box_thinner_than_a_model_pixel_keeps_one_pixel():
    assert box_to_model_space([300, 200, 301, 201], (600, 450), (224, 168)) == [112, 74, 113, 75]
    assert box_to_model_space([599, 449, 600, 450], (600, 450), (224, 168)) == [223, 167, 224, 168]


def test_model_box_back_to_original_clamps_a_box_beyond_the_image():
    assert box_to_original_space([0, 0, 224, 168], (224, 168), (600, 450)) == [0.0, 0.0, 600.0, 450.0]
    assert box_to_original_space([-10, 10, 1000, 84], (224, 168), (600, 450)) == pytest.approx(
        [0.0, 10 * 450 / 168, 600.0, 225.0]
    )
    # Wholly outside: clamped to zero area, which box_iou scores 0 (as the reward's clipped box).
    assert box_to_original_space([300, 10, 400, 20], (224, 168), (600, 450))[::2] == [600.0, 600.0]


@pytest.mark.parametrize("box", [[224, 168, 0, 0], [50, 10, 40, 20], [10, 20, 40, 10], [10, 10, 10, 20]])
def test_inverted_and_zero_area_boxes_are_refused_not_sorted(box):
    # One rule (skinderm.geometry): the reward pays 0 for these, so evaluation must not repair them.
    with pytest.raises(ValueError, match="inverted and zero-area boxes are invalid"):
        box_to_original_space(box, (224, 168), (600, 450))
    with pytest.raises(ValueError, match="inverted and zero-area boxes are invalid"):
        box_to_model_space(box, (600, 450), (224, 168))


@settings(max_examples=300, deadline=None)
@given(
    original=st.tuples(st.integers(50, 3000), st.integers(50, 3000)),
    model_width=st.integers(1, 60).map(lambda k: 28 * k),
    model_height=st.integers(1, 60).map(lambda k: 28 * k),
    data=st.data(),
)
def test_box_round_trip_error_is_at_most_one_model_pixel(original, model_width, model_height, data):
    width, height = original
    x1 = data.draw(st.integers(0, width - 1))
    x2 = data.draw(st.integers(x1 + 1, width))
    y1 = data.draw(st.integers(0, height - 1))
    y2 = data.draw(st.integers(y1 + 1, height))
    model_size = (model_width, model_height)
    model_box = box_to_model_space([x1, y1, x2, y2], original, model_size)
    assert 0 <= model_box[0] < model_box[2] <= model_width
    assert 0 <= model_box[1] < model_box[3] <= model_height
    back = box_to_original_space(model_box, model_size, original)
    pixel_x, pixel_y = width / model_width, height / model_height
    assert abs(back[0] - x1) <= pixel_x + 1e-9 and abs(back[2] - x2) <= pixel_x + 1e-9
    assert abs(back[1] - y1) <= pixel_y + 1e-9 and abs(back[3] - y2) <= pixel_y + 1e-9


@settings(max_examples=200, deadline=None)
@given(
    original=st.tuples(st.integers(50, 3000), st.integers(50, 3000)),
    model_size=st.tuples(st.integers(1, 60).map(lambda k: 28 * k), st.integers(1, 60).map(lambda k: 28 * k)),
    data=st.data(),
)
def test_polygon_round_trip_error_is_at_most_half_a_model_pixel(original, model_size, data):
    width, height = original
    points = data.draw(
        st.lists(st.tuples(st.integers(0, width), st.integers(0, height)), min_size=3, max_size=12)
    )
    model_points = points_to_model_space([list(p) for p in points], original, model_size)
    assert all(0 <= x <= model_size[0] and 0 <= y <= model_size[1] for x, y in model_points)
    assert all(isinstance(x, int) and isinstance(y, int) for x, y in model_points)
    back = points_to_original_space(model_points, model_size, original)
    half_x, half_y = 0.5 * width / model_size[0], 0.5 * height / model_size[1]
    for (x, y), (bx, by) in zip(points, back, strict=True):
        assert abs(bx - x) <= half_x + 1e-9
        assert abs(by - y) <= half_y + 1e-9


def test_bad_boxes_and_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\[x1, y1, x2, y2\]"):
        box_to_model_space([1, 2, 3], (600, 450), (224, 168))
    with pytest.raises(ValueError, match="finite"):
        box_to_original_space([1, 2, float("nan"), 4], (224, 168), (600, 450))
    with pytest.raises(ValueError, match=r"\(width, height\)"):
        box_to_model_space([1, 2, 3, 4], (0, 450), (224, 168))
    with pytest.raises(ValueError, match=r"\[x, y\]"):
        points_to_model_space([[1, 2, 3]], (600, 450), (224, 168))
    with pytest.raises(ValueError, match="min_pixels"):
        model_input_size(600, 450, min_pixels=50_000, max_pixels=40_000)


def test_coordinates_module_does_not_import_torch():
    program = "import sys, skinderm.coordinates\nprint('torch' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


# --- the pre-resized image is a fixed point of the processor's resize ---------------------------------

CONF_MODELS = Path(__file__).resolve().parents[1] / "conf" / "model"
SHIPPED_BUDGETS = sorted(
    {
        (int(cfg.min_pixels), int(cfg.max_pixels))
        for cfg in (OmegaConf.load(path) for path in CONF_MODELS.glob("*.yaml"))
    }
    | {(DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)}
)


@pytest.fixture(scope="module")
def processor_resize() -> Callable[..., tuple[int, int]]:
    """The resize Qwen2VLImageProcessorPil applies (transformers' own function; imports torch)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as theirs

    return theirs


def image_sizes() -> st.SearchStrategy[tuple[int, int]]:
    """Any size from 1 px to 30000 px a side; extreme aspect ratios (up to the 200:1 limit) drawn often."""
    uniform = st.tuples(st.integers(1, 30_000), st.integers(1, 30_000))
    short = st.integers(1, 3000)
    ratio = st.floats(1.0, float(MAX_ASPECT_RATIO))
    elongated = st.builds(
        lambda s, r, wide: (round(s * r), s)[:: 1 if wide else -1], short, ratio, st.booleans()
    )
    return st.one_of(uniform, elongated)


def test_shipped_budgets_are_the_ones_checked():
    assert (3136, 40_000) in SHIPPED_BUDGETS and (3136, 200_704) in SHIPPED_BUDGETS
    for low, high in SHIPPED_BUDGETS:
        check_pixel_budget(low, high)


@settings(max_examples=600, deadline=None)
@given(size=image_sizes(), budget=st.sampled_from(SHIPPED_BUDGETS))
def test_processing_the_pre_resized_image_is_the_identity(processor_resize, size, budget):
    width, height = size
    assume(max(size) / min(size) <= MAX_ASPECT_RATIO)
    low, high = budget
    model_width, model_height = model_input_size(width, height, min_pixels=low, max_pixels=high)
    assert processor_resize(model_height, model_width, 28, low, high) == (model_height, model_width)
    assert model_width % 28 == 0 and model_height % 28 == 0
    assert low <= model_width * model_height <= high
    # Where smart_resize's own answer is already kept, it is the answer (runs trained before stay valid).
    first = processor_resize(height, width, 28, low, high)
    if max(first) / min(first) <= MAX_ASPECT_RATIO and processor_resize(*first, 28, low, high) == first:
        assert (model_height, model_width) == first


@settings(max_examples=300, deadline=None)
@given(
    size=image_sizes(),
    low=st.integers(1, 300_000),
    extra=st.integers(1, 400_000),
)
def test_any_budget_that_validates_gives_a_size_the_processor_keeps(processor_resize, size, low, extra):
    width, height = size
    assume(max(size) / min(size) <= MAX_ASPECT_RATIO)
    high = low + extra
    try:
        check_pixel_budget(low, high)
    except ValueError:
        assume(False)
    model_width, model_height = model_input_size(width, height, min_pixels=low, max_pixels=high)
    assert processor_resize(model_height, model_width, 28, low, high) == (model_height, model_width)


@pytest.mark.parametrize(
    ("size", "budget", "expected"),
    [
        (
            (2650, 50),
            (3136, 40_000),
            (1428, 28),
        ),  # 53:1, tiny: smart_resize alone gives 2632x28 (over budget)
        ((50, 9000), (3136, 40_000), (28, 1428)),
        ((9000, 50), (3136, 200_704), (5040, 28)),  # 180:1, 3B/7B: smart_resize alone gives 5992x28 (214:1)
        ((600, 450), (3136, 40_000), (224, 168)),  # ordinary images: unchanged
    ],
)
def test_extreme_aspect_ratios_get_the_closest_size_the_processor_keeps(size, budget, expected):
    assert model_input_size(*size, min_pixels=budget[0], max_pixels=budget[1]) == expected


def test_sizes_and_budgets_that_cannot_be_honoured_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"aspect ratio 400:1, over the 200:1 limit") as refused:
        model_input_size(20_000, 50, min_pixels=3136, max_pixels=40_000)
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match=r"model\.min_pixels == model\.max_pixels"):
        model_input_size(600, 450, min_pixels=40_000, max_pixels=40_000)
    with pytest.raises(ValueError, match=r"no image size fits"):
        check_pixel_budget(39_300, 39_500)  # no multiple of 784 between them
    check_pixel_budget(37_632, 37_633)  # 48 tokens exactly fit
    with pytest.raises(ValueError, match=r"no image size fits"):
        check_pixel_budget(299_489, 300_272)  # only 383 tokens fit, a prime: 1x383 is over 200:1
