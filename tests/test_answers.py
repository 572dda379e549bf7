"""The answer format: what SFT writes is what rewards, evaluation and predict read, and model output
(untrusted text) never crashes or stalls the parser."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skinderm.answers import (
    ANSWER_FIELDS,
    CLASS_WORDS,
    FILLER_WORDS,
    MAX_ABS_COORDINATE,
    MAX_DIAGNOSIS_CHARS,
    NEGATION_WORDS,
    ParsedAnswer,
    answer_field_spans,
    answer_to_dict,
    completion_text,
    diagnosis_candidates,
    format_answer,
    parse_answer,
    parse_diagnosis,
    parse_location,
)
from skinderm.data.classes import CLASS_CODES, CLASS_NAMES, CLASS_SYNONYMS, LOCATIONS
from tests.answer_holes import (
    HOLE_COMPLETION_EXAMPLES,
    HOLE_COMPLETIONS,
    HOLE_EXAMPLES,
    HOLE_VALUES,
    full_width,
    true_values,
)

PERFECT = '{"diagnosis": "mel", "location": "center-center", "bbox_2d": [10, 20, 110, 90]}'


# --- format_answer ---------------------------------------------------------------------------------


def test_format_answer_writes_the_documented_json() -> None:
    text = format_answer(diagnosis="mel", location="center-center", bbox_2d=[10, 20, 110, 90])
    assert text == PERFECT


def test_format_answer_orders_keys_as_answer_fields_whatever_the_fields_order() -> None:
    text = format_answer(
        diagnosis="nv",
        location="top-left",
        bbox_2d=(1, 2, 3, 4),
        polygon=[(1, 2), (3, 4), (5, 6)],
        fields=("polygon", "bbox_2d", "location", "diagnosis"),
    )
    assert list(json.loads(text)) == list(ANSWER_FIELDS)


def test_format_answer_omits_missing_values_so_no_mask_means_no_box() -> None:
    text = format_answer(diagnosis="bcc", location=None, bbox_2d=None)
    assert json.loads(text) == {"diagnosis": "bcc"}


def test_format_answer_writes_only_the_chosen_fields() -> None:
    text = format_answer(diagnosis="df", location="top-left", bbox_2d=[1, 2, 3, 4], fields=("diagnosis",))
    assert json.loads(text) == {"diagnosis": "df"}


def test_format_answer_rounds_coordinates_to_ints() -> None:
    text = format_answer(
        diagnosis="df", bbox_2d=[1.4, 2.6, 30.5000001, 40.0], polygon=[[0.2, 9.7]], fields=ANSWER_FIELDS
    )
    assert json.loads(text) == {"diagnosis": "df", "bbox_2d": [1, 3, 31, 40], "polygon": [[0, 10]]}
    assert "." not in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"diagnosis": "melanoma"}, "not a class code"),
        ({"diagnosis": "mel", "location": "middle"}, "not a grid cell"),
        ({"diagnosis": "mel", "fields": ("diagnosis", "label")}, "unknown"),
        ({"diagnosis": "mel", "bbox_2d": [1, 2, 3]}, "4 numbers"),
        ({"diagnosis": "mel", "bbox_2d": [1, 2, float("nan"), 4]}, "non-finite"),
        ({"diagnosis": "mel", "bbox_2d": [True, 2, 3, 4]}, "bool"),
        ({"diagnosis": "mel", "polygon": [[1, 2, 3]], "fields": ANSWER_FIELDS}, "polygon point"),
    ],
)
def test_format_answer_rejects_records_that_would_teach_a_wrong_answer(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        format_answer(**kwargs)


@settings(max_examples=200, deadline=None)
@given(
    diagnosis=st.sampled_from(CLASS_CODES),
    location=st.sampled_from(LOCATIONS),
    corner=st.tuples(st.integers(0, 2000), st.integers(0, 2000)),
    extent=st.tuples(st.integers(1, 2000), st.integers(1, 2000)),
    polygon=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 2000)), min_size=3, max_size=20),
)
def test_parse_reads_back_everything_format_writes(
    diagnosis: str,
    location: str,
    corner: tuple[int, int],
    extent: tuple[int, int],
    polygon: list[tuple[int, int]],
) -> None:
    box = [corner[0], corner[1], corner[0] + extent[0], corner[1] + extent[1]]
    text = format_answer(
        diagnosis=diagnosis, location=location, bbox_2d=box, polygon=polygon, fields=ANSWER_FIELDS
    )
    parsed = parse_answer(text)
    assert parsed.parse_ok
    assert parsed.diagnosis == diagnosis and parsed.diagnosis_candidates == (diagnosis,)
    assert parsed.location == location
    assert parsed.bbox_2d == tuple(float(v) for v in box)
    assert parsed.polygon == tuple((float(x), float(y)) for x, y in polygon)
    assert parsed.fields == frozenset(ANSWER_FIELDS)
    # Each field's value is found where it was written (GRPO's field-level credit pays those tokens).
    spans = answer_field_spans(f"Answer: {text} done")
    written = json.loads(text)
    assert set(spans) == set(ANSWER_FIELDS)
    for name, (start, end) in spans.items():
        assert json.loads(f"Answer: {text} done"[start:end]) == written[name]


# --- answer_field_spans: where each value is ------------------------------------------------------


def test_field_spans_are_those_of_the_object_parse_answer_reads() -> None:
    text = (
        '{"note": 1} {"wrap": {"location": "top-left" , "x": [1, {"y": 2}],"diagnosis":"nv"}} '
        '{"diagnosis": "mel"}'
    )
    spans = answer_field_spans(text)
    found = {name: text[a:b] for name, (a, b) in spans.items()}
    assert found == {"location": '"top-left"', "diagnosis": '"nv"'}
    assert parse_answer(text).diagnosis == "nv"


@pytest.mark.parametrize(
    "text", ["", "no answer", '{"diagnosis": "mel", "diagnosis": "nv"}', '{"diagnosis": ', "{" * 50, None, 42]
)
def test_no_answer_has_no_field_spans(text: object) -> None:
    assert answer_field_spans(text) == {}


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from('{}[]",: 0123456789abdgnosilctpyx_\\n'), max_size=120))
def test_field_spans_never_raise_and_always_hold_a_decodable_value(text: str) -> None:
    spans = answer_field_spans(text)
    assert set(spans) <= set(ANSWER_FIELDS)
    for start, end in spans.values():
        json.loads(text[start:end])


# --- parse_answer: where the answer is ------------------------------------------------------------


def test_perfect_answer_parses_every_field() -> None:
    parsed = parse_answer(PERFECT)
    assert parsed == ParsedAnswer(
        parse_ok=True,
        diagnosis="mel",
        diagnosis_candidates=("mel",),
        location="center-center",
        bbox_2d=(10.0, 20.0, 110.0, 90.0),
        polygon=None,
        fields=frozenset({"diagnosis", "location", "bbox_2d"}),
    )


def test_prose_around_the_json_is_ignored() -> None:
    parsed = parse_answer(f"Looking at the image, I think: {PERFECT} Hope this helps {{ :)")
    assert parsed.parse_ok and parsed.diagnosis == "mel" and parsed.location == "center-center"


def test_fenced_json_is_read() -> None:
    parsed = parse_answer(f"```json\n{PERFECT}\n```")
    assert parsed.parse_ok and parsed.bbox_2d == (10.0, 20.0, 110.0, 90.0)


def test_objects_without_answer_fields_are_skipped() -> None:
    parsed = parse_answer('{"thinking": "dark, asymmetric"} then {"diagnosis": "mel"}')
    assert parsed.diagnosis == "mel"


def test_answer_nested_in_a_wrapper_object_is_found() -> None:
    assert parse_answer('{"answer": {"diagnosis": "nv", "location": "top-left"}}').location == "top-left"


def test_only_the_first_answer_counts_so_listing_several_does_not_hedge() -> None:
    parsed = parse_answer('{"diagnosis": "nv"} or maybe {"diagnosis": "mel"}')
    assert parsed.diagnosis == "nv" and parsed.diagnosis_candidates == ("nv",)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "melanoma, center-center",
        '{"diagnosis": "mel", "location": "center-center"',  # unterminated
        "{'diagnosis': 'mel'}",  # Python literal, not JSON
        '{"diagnosis": mel}',
        '["mel", "center-center"]',
        '{"label": "mel", "region": "center"}',  # no known field
        "{" * 50,
    ],
)
def test_text_without_a_decodable_answer_object_is_not_parsed(text: str) -> None:
    parsed = parse_answer(text)
    assert not parsed.parse_ok
    assert parsed.diagnosis is None and parsed.location is None and parsed.bbox_2d is None
    assert parsed.fields == frozenset()


@pytest.mark.parametrize("value", [None, 42, b'{"diagnosis": "mel"}', ["{}"], {"diagnosis": "mel"}])
def test_non_string_input_is_not_parsed(value: object) -> None:
    assert not parse_answer(value).parse_ok


def test_fields_lists_keys_present_even_when_their_values_are_invalid() -> None:
    parsed = parse_answer('{"diagnosis": "xyz", "bbox_2d": null, "extra": 1}')
    assert parsed.parse_ok
    assert parsed.fields == frozenset({"diagnosis", "bbox_2d"})
    assert parsed.diagnosis is None and parsed.bbox_2d is None


# --- parse_answer: diagnosis ----------------------------------------------------------------------


@pytest.mark.parametrize("code", CLASS_CODES)
def test_every_code_full_name_and_synonym_names_its_class_in_any_case(code: str) -> None:
    for term in (code, CLASS_NAMES[code], *CLASS_SYNONYMS[code]):
        for variant in (term, term.upper(), term.title()):
            parsed = parse_answer(json.dumps({"diagnosis": variant}))
            assert parsed.diagnosis == code, variant


@pytest.mark.parametrize(
    ("value", "candidates"),
    [
        ("mel or nv", ("mel", "nv")),
        ("melanoma / melanocytic nevus / basal cell carcinoma", ("bcc", "mel", "nv")),
        ("not nv, it is mel", ("mel", "nv")),
        ("Melanoma (mel)", ("mel",)),
        ("basal-cell carcinoma", ("bcc",)),
        ("Melanocytic_Nevi", ("nv",)),
        ("Bowen’s disease", ("akiec",)),
        ("camel", ()),  # "mel" only as a whole word
        ("nvidia", ()),
        ("", ()),
        ("unknown", ()),
    ],
)
def test_diagnosis_candidates_are_whole_word_class_names(value: str, candidates: tuple[str, ...]) -> None:
    parsed = parse_answer(json.dumps({"diagnosis": value}))
    assert parsed.diagnosis_candidates == candidates
    assert parsed.diagnosis == (candidates[0] if len(candidates) == 1 else None)


@pytest.mark.parametrize("value", [["mel"], 5, None, {"code": "mel"}, True])
def test_a_diagnosis_that_is_not_a_string_names_no_class(value: object) -> None:
    parsed = parse_answer(json.dumps({"diagnosis": value}))
    assert parsed.parse_ok and parsed.diagnosis is None and parsed.diagnosis_candidates == ()


def test_diagnosis_candidates_helper_matches_the_parser() -> None:
    assert diagnosis_candidates("Dermatofibroma or VASC") == ("df", "vasc")


# --- parse_diagnosis: exactly one class and nothing else (hole classes: tests/answer_holes.py) ---


@pytest.mark.parametrize("hole", sorted(HOLE_EXAMPLES))
def test_written_out_hole_examples_name_no_class(hole: str) -> None:
    for value in HOLE_EXAMPLES[hole]:
        assert parse_diagnosis(value) is None, value
        assert parse_answer(json.dumps({"diagnosis": value})).diagnosis is None, value


@pytest.mark.parametrize("hole", sorted(HOLE_VALUES))
def test_every_hole_class_names_no_class(hole: str) -> None:
    @settings(max_examples=150, deadline=None)
    @given(HOLE_VALUES[hole])
    def check(pair: tuple[str, str]) -> None:
        value, _ = pair
        assert parse_diagnosis(value) is None
        assert parse_answer(json.dumps({"diagnosis": value})).diagnosis is None

    check()


@settings(max_examples=300, deadline=None)
@given(true_values)
def test_one_class_in_any_case_spacing_or_width_names_that_class(pair: tuple[str, str]) -> None:
    value, code = pair
    assert parse_diagnosis(value) == code
    assert parse_answer(json.dumps({"diagnosis": value})).diagnosis == code


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("mel", "mel"),
        (" MEL\n", "mel"),
        ("\u00a0Melanoma\u3000", "mel"),
        (full_width("mel"), "mel"),
        ("\U0001d426\U0001d41e\U0001d425", "mel"),  # mathematical bold: NFKC-equivalent to "mel"
        ("Melanoma (mel)", "mel"),  # two names of one class
        ("this lesion is likely a melanoma", "mel"),
        ("Basal-Cell Carcinoma", "bcc"),
        ("Bowen\u2019s disease", "akiec"),
        ("actinic keratoses and intraepithelial carcinoma", "akiec"),  # "and" inside the class name
        ("benign keratosis-like lesions", "bkl"),
        ("vascular lesion", "vasc"),
    ],
)
def test_true_single_class_answers_still_parse(value: str, code: str) -> None:
    assert parse_diagnosis(value) == code


def test_negation_words_are_neither_fillers_nor_part_of_a_class_name() -> None:
    assert not NEGATION_WORDS & FILLER_WORDS
    assert not NEGATION_WORDS & CLASS_WORDS
    assert {"not", "no", "non", "unlikely", "rule"} <= NEGATION_WORDS


def test_a_diagnosis_longer_than_the_limit_names_no_class() -> None:
    value = "mel" + " " * MAX_DIAGNOSIS_CHARS
    assert parse_diagnosis(value) is None
    assert parse_diagnosis(value.strip()) == "mel"


# --- parse_answer: duplicate keys --------------------------------------------------------------


@pytest.mark.parametrize("text", HOLE_COMPLETION_EXAMPLES["duplicate keys"])
def test_an_answer_with_a_duplicate_key_is_no_answer(text: str) -> None:
    parsed = parse_answer(text)
    assert parsed == parse_answer("")
    assert not parsed.parse_ok


@settings(max_examples=200, deadline=None)
@given(HOLE_COMPLETIONS["duplicate keys"])
def test_any_duplicate_key_in_or_around_an_answer_voids_it(pair: tuple[str, str]) -> None:
    assert not parse_answer(pair[0]).parse_ok


def test_duplicate_keys_in_an_object_before_the_answer_do_not_void_the_answer() -> None:
    parsed = parse_answer('{"thinking": "a", "thinking": "b"} then {"diagnosis": "mel"}')
    assert parsed.parse_ok and parsed.diagnosis == "mel"


# --- parse_answer: location -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("center-center", "center-center"),
        ("center center", "center-center"),
        ("Top-Left", "top-left"),
        ("top left", "top-left"),
        ("TOP_RIGHT", "top-right"),
        ("left-top", "top-left"),  # unambiguous words in the other order
        ("right bottom", "bottom-right"),
        ("middle", "center-center"),
        ("centre", "center-center"),
        ("middle-left", "center-left"),
        ("left middle", "center-left"),
        ("upper right corner", "top-right"),
        ("lower-center", "bottom-center"),
        ("the bottom left region", "bottom-left"),
        ("top", None),
        ("left", None),
        ("top bottom", None),
        ("left right", None),
        ("top left or center", None),
        ("top-left-center", None),
        ("", None),
        ("north-west", None),
        (3, None),
    ],
)
def test_location_spellings_map_to_one_canonical_cell_or_none(value: object, expected: str | None) -> None:
    assert parse_location(value) == expected
    assert parse_answer(json.dumps({"location": value})).location == expected


# --- parse_answer: boxes and polygons -------------------------------------------------------------


@pytest.mark.parametrize(
    ("box_json", "expected"),
    [
        ("[10, 20, 110, 90]", (10.0, 20.0, 110.0, 90.0)),
        ("[10.5, 20, 110, 90.25]", (10.5, 20.0, 110.0, 90.25)),
        ("[-5, -5, 10, 10]", (-5.0, -5.0, 10.0, 10.0)),  # as given; clipped by the reward
        ("[110, 90, 10, 20]", None),  # inverted: invalid (skinderm.geometry), not repaired
        ("[110, 20, 10, 90]", None),  # inverted in x only
        ("[10, 90, 110, 20]", None),  # inverted in y only
        ("[10, 20, 10, 90]", None),  # zero width
        ("[10, 20, 110, 20]", None),  # zero height
        ("[10.5, 20, 10.5000001, 90]", (10.5, 20.0, 10.5000001, 90.0)),  # thin but valid
        ("[NaN, 20, 110, 90]", None),
        ("[10, Infinity, 110, 90]", None),
        ("[10, 20, -Infinity, 90]", None),
        ("[true, 20, 110, 90]", None),
        ('["10", "20", "110", "90"]', None),
        ("[10, 20, 110]", None),
        ("[10, 20, 110, 90, 5]", None),
        ("[[10, 20], [110, 90]]", None),
        ("[10, 20, 110, 1e7]", None),
        ("[10, 20, 110, 1e400]", None),  # overflows to inf
        ("[10, 20, 110, " + "9" * 5000 + "]", None),  # an int longer than Python's digit limit
        ("null", None),
        ('"10,20,110,90"', None),
    ],
)
def test_boxes_are_four_finite_bounded_numbers_or_none(box_json: str, expected: tuple | None) -> None:
    parsed = parse_answer(f'{{"diagnosis": "nv", "bbox_2d": {box_json}}}')
    assert parsed.bbox_2d == expected
    assert parsed.diagnosis == "nv"  # one bad field leaves the others readable


def test_an_inverted_box_format_answer_writes_is_voided_by_the_parser() -> None:
    # format_answer writes boxes as given (bench answers jitter them); the one rule applies on reading.
    parsed = parse_answer(format_answer(diagnosis="nv", bbox_2d=[57, 53, 56, 61]))
    assert parsed.parse_ok and parsed.diagnosis == "nv" and parsed.bbox_2d is None


def test_coordinates_at_the_bound_are_kept() -> None:
    bound = int(MAX_ABS_COORDINATE)
    assert parse_answer(f'{{"bbox_2d": [-{bound}, 0, {bound}, 1]}}').bbox_2d == (-bound, 0, bound, 1)


@pytest.mark.parametrize(
    ("polygon_json", "expected"),
    [
        ("[[1, 2], [3, 4], [5, 6]]", ((1.0, 2.0), (3.0, 4.0), (5.0, 6.0))),
        ("[[1, 2], [3, 4]]", ((1.0, 2.0), (3.0, 4.0))),  # kept; the reward falls back to the box
        ("[]", ()),
        ("[[1, 2], [3, NaN], [5, 6]]", None),
        ("[[1, 2], [3], [5, 6]]", None),
        ("[[1, 2], [3, 4, 5]]", None),
        ("[1, 2, 3, 4]", None),
        ("[[1, 2], [false, 4], [5, 6]]", None),
        ("[[1, 2], [3, 4e9], [5, 6]]", None),
    ],
)
def test_polygons_are_finite_points_or_none(polygon_json: str, expected: tuple | None) -> None:
    assert parse_answer(f'{{"polygon": {polygon_json}}}').polygon == expected


# --- completion_text and answer_to_dict -----------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "text"),
    [
        (PERFECT, PERFECT),
        ([{"role": "assistant", "content": PERFECT}], PERFECT),
        ([{"role": "assistant", "content": [{"type": "text", "text": PERFECT}]}], PERFECT),
        (
            [
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
            "a\nb",
        ),
        ([{"role": "user", "content": "ignore me"}, {"role": "assistant", "content": "x"}], "x"),
        ({"role": "assistant", "content": "single"}, "single"),
        ([{"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "t"}]}], "t"),
        (None, ""),
        (42, ""),
        ([{"role": "assistant", "content": None}], ""),
        ([1, "two", None], ""),
    ],
)
def test_completion_text_reads_plain_and_conversational_completions(completion: object, text: str) -> None:
    assert completion_text(completion) == text


def test_answer_to_dict_is_json_serialisable_and_complete() -> None:
    parsed = parse_answer(
        '{"diagnosis": "mel or nv", "location": "top left", "bbox_2d": [1, 2, 3, 4], '
        '"polygon": [[1, 2], [3, 4], [5, 6]]}'
    )
    record = json.loads(json.dumps(answer_to_dict(parsed)))
    assert record == {
        "parse_ok": True,
        "diagnosis": None,
        "diagnosis_candidates": ["mel", "nv"],
        "location": "top-left",
        "bbox_2d": [1.0, 2.0, 3.0, 4.0],
        "polygon": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
        "fields": list(ANSWER_FIELDS),
    }
    assert json.loads(json.dumps(answer_to_dict(parse_answer(None))))["parse_ok"] is False


# --- untrusted input: bounded time, never raises --------------------------------------------------

MEGABYTE = 1_000_000


@pytest.mark.parametrize(
    "text",
    [
        "1" * MEGABYTE,
        "[" * MEGABYTE,
        "{" * MEGABYTE,
        '{"diagnosis": ' + "[" * MEGABYTE,
        '{"diagnosis": "' + "mel " * (MEGABYTE // 4),
        '{"a": "' * (MEGABYTE // 7),
        '{"bbox_2d": [' + "9" * MEGABYTE + "]}",
        '{"polygon": [' + "[1, 2], " * (MEGABYTE // 8),
    ],
    ids=[
        "digits",
        "brackets",
        "braces",
        "nested-diagnosis",
        "long-diagnosis",
        "open-strings",
        "long-int",
        "long-polygon",
    ],
)
def test_megabyte_inputs_parse_in_bounded_time(text: str) -> None:
    start = time.perf_counter()
    parsed = parse_answer(text)
    assert time.perf_counter() - start < 0.5
    assert isinstance(parsed, ParsedAnswer)


def test_deeply_nested_field_inside_the_read_window_does_not_raise() -> None:
    parsed = parse_answer('{"diagnosis": "mel", "polygon": ' + "[" * 15_000 + "]" * 15_000 + "}")
    assert isinstance(parsed, ParsedAnswer)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
answer_like = st.dictionaries(
    st.sampled_from((*ANSWER_FIELDS, "label", "Diagnosis")),
    json_values
    | st.sampled_from(CLASS_CODES + LOCATIONS)
    | st.lists(st.integers(-10, 2000) | st.floats(), max_size=5)
    | st.lists(st.lists(st.integers(-10, 2000) | st.floats(), max_size=3), max_size=6),
    max_size=5,
)


def _check_parsed(parsed: ParsedAnswer) -> None:
    assert isinstance(parsed, ParsedAnswer)
    assert parsed.diagnosis is None or parsed.diagnosis in CLASS_CODES
    assert parsed.bbox_2d is None or (
        parsed.bbox_2d[2] > parsed.bbox_2d[0] and parsed.bbox_2d[3] > parsed.bbox_2d[1]
    )
    assert set(parsed.diagnosis_candidates) <= set(CLASS_CODES)
    assert parsed.location is None or parsed.location in LOCATIONS
    assert parsed.fields <= frozenset(ANSWER_FIELDS)
    json.dumps(answer_to_dict(parsed), allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    _check_parsed(parse_answer(text))


@settings(max_examples=200, deadline=None)
@given(value=json_values | answer_like, prefix=st.text(max_size=20), suffix=st.text(max_size=20))
def test_arbitrary_json_in_prose_never_raises_and_yields_clean_values(
    value: object, prefix: str, suffix: str
) -> None:
    _check_parsed(parse_answer(prefix + json.dumps(value) + suffix))
