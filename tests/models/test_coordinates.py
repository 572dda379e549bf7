"""Original <-> model-space coordinates must agree with the processor's resize to the pixel."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skinderm.models.coordinates import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    box_to_model_space,
    box_to_original_space,
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


def test_model_box_back_to_original_sorts_and_clamps_a_sloppy_answer():
    assert box_to_original_space([224, 168, 0, 0], (224, 168), (600, 450)) == [0.0, 0.0, 600.0, 450.0]
    assert box_to_original_space([-10, 10, 1000, 84], (224, 168), (600, 450)) == pytest.approx(
        [0.0, 10 * 450 / 168, 600.0, 225.0]
    )


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
    program = (
        "import sys, skinderm.models.coordinates\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
