"""THE answer format: written by `format_answer` (SFT targets), read by `parse_answer` (rewards,
evaluation, predict).

One format for all of them, because a model taught one format by SFT and rewarded for another by
GRPO earns a format reward stuck at 0 (VLM-R1 #173, trl #6966). The answer is one JSON object in
Qwen2.5-VL grounding style; coordinates are pixels of the image the model saw (after smart_resize):

    {"diagnosis": "mel", "location": "center-center", "bbox_2d": [10, 20, 110, 90]}

Model output is untrusted text. `parse_answer` never raises, never evaluates anything, reads at most
`MAX_PARSE_CHARS` characters and tries at most `MAX_OBJECT_STARTS` candidate objects, so its time is
bounded whatever the model emits (1 MB of digits or of `[[[[` included).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from skinderm.data.classes import (
    CLASS_CODES,
    CLASS_NAMES,
    CLASS_SYNONYMS,
    HORIZONTAL_BANDS,
    LOCATIONS,
    VERTICAL_BANDS,
)
from skinderm.geometry import valid_box

ANSWER_FIELDS: tuple[str, ...] = ("diagnosis", "location", "bbox_2d", "polygon")
DEFAULT_FIELDS: tuple[str, ...] = ("diagnosis", "location", "bbox_2d")

# Only the head of a completion is read: a real answer is ~100 characters; 20 kB leaves room for a
# long polygon (~2,000 points) and prose while bounding the work on adversarial output.
MAX_PARSE_CHARS = 20_000
# At most this many `{` positions are tried as the start of a JSON object.
MAX_OBJECT_STARTS = 64
# Coordinates beyond this magnitude are nonsense for any image; the field is rejected (None).
MAX_ABS_COORDINATE = 1e6


def _parse_json_int(digits: str) -> int | float:
    # A 5,000-digit int would make the decoder raise (Python's int digit limit) and lose the whole
    # answer; as a float it is just out of bounds, and only that field is rejected.
    return int(digits) if len(digits) <= 20 else float(digits)


_DECODER = json.JSONDecoder(parse_int=_parse_json_int)


@dataclass(frozen=True)
class ParsedAnswer:
    """What a completion says, field by field; a field that is missing or invalid is None."""

    parse_ok: bool
    """An answer object was found: a decodable JSON object with at least one of ANSWER_FIELDS."""
    diagnosis: str | None
    """Canonical class code when the diagnosis field names exactly one class."""
    diagnosis_candidates: tuple[str, ...]
    """Every class the diagnosis field names (code, full name or synonym), in CLASS_CODES order."""
    location: str | None
    """Canonical "{v}-{h}" grid cell."""
    bbox_2d: tuple[float, float, float, float] | None
    """A valid box as given: finite, |v| <= MAX_ABS_COORDINATE, x2 > x1 and y2 > y1
    (skinderm.geometry); an inverted or zero-area box leaves the field None."""
    polygon: tuple[tuple[float, float], ...] | None
    """Finite [x, y] points as given (possibly fewer than 3)."""
    fields: frozenset[str]
    """Which of ANSWER_FIELDS are present as keys (whatever their values)."""


UNPARSED = ParsedAnswer(
    parse_ok=False,
    diagnosis=None,
    diagnosis_candidates=(),
    location=None,
    bbox_2d=None,
    polygon=None,
    fields=frozenset(),
)


# --------------------------------------------------------------------------------------------------
# Writing


def format_answer(
    *,
    diagnosis: str,
    location: str | None = None,
    bbox_2d: Sequence[float] | None = None,
    polygon: Sequence[Sequence[float]] | None = None,
    fields: Sequence[str] = DEFAULT_FIELDS,
) -> str:
    """The training target for one image: JSON with the chosen `fields`, keys in ANSWER_FIELDS order.

    A field listed in `fields` whose value is None is left out (an image without a mask gets no box).
    Coordinates are rounded to ints. Raises ValueError on an unknown field, class or location, so a
    bad record fails while building the dataset instead of teaching the model a wrong answer. Boxes
    are written as given: ground truth comes from `box_to_model_space`, which refuses invalid boxes
    and keeps every box at least 1 px wide and high (an inverted box written here, e.g. a jittered
    bench answer, is one the parser voids).
    """
    unknown = [name for name in fields if name not in ANSWER_FIELDS]
    if unknown:
        raise ValueError(f"answer fields {unknown} are unknown; choose from {list(ANSWER_FIELDS)}")
    values: dict[str, Any] = {}
    if "diagnosis" in fields and diagnosis is not None:
        if diagnosis not in CLASS_CODES:
            raise ValueError(f"diagnosis {diagnosis!r} is not a class code; expected one of {CLASS_CODES}")
        values["diagnosis"] = diagnosis
    if "location" in fields and location is not None:
        if location not in LOCATIONS:
            raise ValueError(f"location {location!r} is not a grid cell; expected one of {LOCATIONS}")
        values["location"] = location
    if "bbox_2d" in fields and bbox_2d is not None:
        box = _rounded_coordinates(bbox_2d, "bbox_2d")
        if len(box) != 4:
            raise ValueError(f"bbox_2d must have 4 numbers [x1, y1, x2, y2], got {len(box)}")
        values["bbox_2d"] = box
    if "polygon" in fields and polygon is not None:
        points = [_rounded_coordinates(point, "polygon point") for point in polygon]
        if any(len(point) != 2 for point in points):
            raise ValueError("every polygon point must be [x, y]")
        values["polygon"] = points
    return json.dumps({name: values[name] for name in ANSWER_FIELDS if name in values})


def _rounded_coordinates(values: Sequence[float], what: str) -> list[int]:
    rounded = []
    for value in values:
        if isinstance(value, bool):
            raise ValueError(f"{what} holds a bool {value!r}; coordinates must be numbers")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{what} holds a non-finite coordinate {value!r}")
        rounded.append(round(number))
    return rounded


# --------------------------------------------------------------------------------------------------
# Reading


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a str, or conversational messages.

    Conversational completions are `[{"role": "assistant", "content": str | [{"type": "text",
    "text": ...}, ...]}]`; the text of every assistant (or role-less) message is joined by newlines.
    Anything else gives "" (never raises).
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if not isinstance(completion, Sequence):
        return ""
    texts = []
    for message in completion:
        if not isinstance(message, Mapping) or message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, Sequence):
            for part in content:
                if isinstance(part, Mapping) and part.get("type", "text") == "text":
                    text = part.get("text")
                    if isinstance(text, str):
                        texts.append(text)
    return "\n".join(texts)


def parse_answer(text: Any) -> ParsedAnswer:
    """Read one answer from model output; never raises.

    Which object counts: the text (its first MAX_PARSE_CHARS characters) is scanned for `{`; at each
    of the first MAX_OBJECT_STARTS positions a JSON value is decoded with `raw_decode`, and the FIRST
    decoded object that has at least one of ANSWER_FIELDS as a key is the answer. So prose around
    the JSON and ```json fences are fine, an answer nested in a wrapper object is found, and a second
    answer after the first is ignored (no hedging by listing several). Keys are matched exactly.

    Field values are checked, not trusted: an invalid value leaves that field None (see
    ParsedAnswer). Numbers must be finite JSON numbers (not bools, not strings, no NaN/Infinity)
    with magnitude <= MAX_ABS_COORDINATE.
    """
    if not isinstance(text, str):
        return UNPARSED
    obj = _first_answer_object(text[:MAX_PARSE_CHARS])
    if obj is None:
        return UNPARSED
    candidates = _diagnosis_candidates(obj.get("diagnosis"))
    return ParsedAnswer(
        parse_ok=True,
        diagnosis=candidates[0] if len(candidates) == 1 else None,
        diagnosis_candidates=candidates,
        location=parse_location(obj.get("location")),
        bbox_2d=_parse_box(obj.get("bbox_2d")),
        polygon=_parse_polygon(obj.get("polygon")),
        fields=frozenset(name for name in ANSWER_FIELDS if name in obj),
    )


def answer_to_dict(parsed: ParsedAnswer) -> dict[str, Any]:
    """A JSON-serialisable view of a parsed answer, for predictions files."""
    return {
        "parse_ok": parsed.parse_ok,
        "diagnosis": parsed.diagnosis,
        "diagnosis_candidates": list(parsed.diagnosis_candidates),
        "location": parsed.location,
        "bbox_2d": list(parsed.bbox_2d) if parsed.bbox_2d is not None else None,
        "polygon": [list(point) for point in parsed.polygon] if parsed.polygon is not None else None,
        "fields": [name for name in ANSWER_FIELDS if name in parsed.fields],
    }


def _first_answer_object(text: str) -> dict[str, Any] | None:
    start = text.find("{")
    tries = 0
    while start != -1 and tries < MAX_OBJECT_STARTS:
        tries += 1
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            # ValueError covers JSONDecodeError and ints longer than Python's digit limit.
            value = None
        if isinstance(value, dict) and any(name in value for name in ANSWER_FIELDS):
            return value
        start = text.find("{", start + 1)
    return None


# Diagnosis: one regex of every name of every class, longest first, matched as whole words on
# lower-cased text with "-" and "_" read as spaces ("basal-cell carcinoma", "Melanocytic_Nevi").
def _normalise_words(text: str) -> str:
    text = text.lower().replace("’", "'").replace("-", " ").replace("_", " ")
    return re.sub(r"\s+", " ", text)


_TERM_TO_CLASS: dict[str, str] = {
    _normalise_words(term): code
    for code in CLASS_CODES
    for term in (code, CLASS_NAMES[code], *CLASS_SYNONYMS.get(code, ()))
}
_TERMS_PATTERN = re.compile(
    r"(?<![a-z0-9])(?:"
    + "|".join(re.escape(term) for term in sorted(_TERM_TO_CLASS, key=len, reverse=True))
    + r")(?![a-z0-9])"
)


def diagnosis_candidates(text: str) -> tuple[str, ...]:
    """Every class a piece of text names (code, full name or synonym; whole words, any case)."""
    found = {_TERM_TO_CLASS[match] for match in _TERMS_PATTERN.findall(_normalise_words(text))}
    return tuple(code for code in CLASS_CODES if code in found)


def _diagnosis_candidates(value: Any) -> tuple[str, ...]:
    if not isinstance(value, str):
        return ()
    return diagnosis_candidates(value)


# Location: two position words in either order ("top left", "Left-Top", "middle center"), or one
# word that names the middle cell ("center"). A few filler words are allowed ("top left region").
_POSITION_WORDS: dict[str, str] = {
    "top": "top",
    "upper": "top",
    "bottom": "bottom",
    "lower": "bottom",
    "left": "left",
    "right": "right",
    "center": "center",
    "centre": "center",
    "middle": "center",
    "central": "center",
    "mid": "center",
}
_FILLER_WORDS = frozenset({"the", "of", "in", "region", "corner", "part", "area", "image"})
_VERTICAL_ONLY = frozenset(VERTICAL_BANDS) - {"center"}
_HORIZONTAL_ONLY = frozenset(HORIZONTAL_BANDS) - {"center"}
_MAX_LOCATION_CHARS = 100


def parse_location(value: Any) -> str | None:
    """Canonical "{v}-{h}" for a location string, or None when it is not exactly one grid cell."""
    if not isinstance(value, str) or len(value) > _MAX_LOCATION_CHARS:
        return None
    positions = []
    for word in re.findall(r"[a-z]+", value.lower()):
        if word in _POSITION_WORDS:
            positions.append(_POSITION_WORDS[word])
        elif word not in _FILLER_WORDS:
            return None
    if positions == ["center"]:
        return "center-center"
    if len(positions) != 2:
        return None
    first, second = positions
    if first in _HORIZONTAL_ONLY or second in _VERTICAL_ONLY:
        first, second = second, first
    if first in VERTICAL_BANDS and second in HORIZONTAL_BANDS:
        location = f"{first}-{second}"
        return location if location in LOCATIONS else None
    return None


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    if not math.isfinite(number) or abs(number) > MAX_ABS_COORDINATE:
        return None
    return number


def _parse_box(value: Any) -> tuple[float, float, float, float] | None:
    if not isinstance(value, list) or len(value) != 4:
        return None
    numbers = [_finite_number(item) for item in value]
    if any(number is None for number in numbers):
        return None
    return valid_box(numbers)  # inverted or zero-area: None, the one rule of skinderm.geometry


def _parse_polygon(value: Any) -> tuple[tuple[float, float], ...] | None:
    if not isinstance(value, list):
        return None
    points = []
    for point in value:
        if not isinstance(point, list) or len(point) != 2:
            return None
        x, y = _finite_number(point[0]), _finite_number(point[1])
        if x is None or y is None:
            return None
        points.append((x, y))
    return tuple(points)
