"""THE answer format: written by `format_answer` (SFT targets), read by `parse_answer` (rewards,
evaluation, predict).

One format for all of them, because a model taught one format by SFT and rewarded for another by
GRPO earns a format reward stuck at 0 (VLM-R1 #173, trl #6966). The answer is one JSON object in
Qwen2.5-VL grounding style; coordinates are pixels of the image the model saw (after smart_resize):

    {"diagnosis": "mel", "location": "center-center", "bbox_2d": [10, 20, 110, 90]}

Model output is untrusted text. `parse_answer` never raises, never evaluates anything, reads at most
`MAX_PARSE_CHARS` characters and tries at most `MAX_OBJECT_STARTS` candidate objects, so its time is
bounded whatever the model emits (1 MB of digits or of `[[[[` included).

What counts is defined by classes of input, not lists of bad strings, because rewards pay for it
and GRPO searches for whatever pays: a diagnosis names exactly one class and nothing else (see
`parse_diagnosis`), an object with a duplicate key is no answer (the decoder would silently keep the
last value), and a box is valid or void by the one rule of `skinderm.geometry`.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
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


class _ObjectCounts:
    """What the decoder built during one `raw_decode`: objects with a duplicate key, answer objects."""

    def __init__(self) -> None:
        self.duplicates = 0
        self.answers = 0

    def object_from_pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            self.duplicates += 1
        if any(name in obj for name in ANSWER_FIELDS):
            self.answers += 1
        return obj


@dataclass(frozen=True)
class ParsedAnswer:
    """What a completion says, field by field; a field that is missing or invalid is None."""

    parse_ok: bool
    """An answer object was found: a decodable JSON object with at least one of ANSWER_FIELDS."""
    diagnosis: str | None
    """Canonical class code when the diagnosis field names exactly one class and nothing else
    (see `parse_diagnosis`)."""
    diagnosis_candidates: tuple[str, ...]
    """Every class the diagnosis field names (code, full name or synonym), in CLASS_CODES order; for
    predictions files (what a hedge hedged between), never for scoring."""
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

    Duplicate keys: a decoded object that holds a duplicate key anywhere inside it (its own keys or
    any nested object's) and is or contains an answer object voids the completion (UNPARSED; the
    scan stops there). JSON decoders keep the last of two "diagnosis" keys, so without this an answer
    could name one class to a reader and another to the decoder.

    Field values are checked, not trusted: an invalid value leaves that field None (see
    ParsedAnswer). Numbers must be finite JSON numbers (not bools, not strings, no NaN/Infinity)
    with magnitude <= MAX_ABS_COORDINATE.
    """
    if not isinstance(text, str):
        return UNPARSED
    obj = _first_answer_object(text[:MAX_PARSE_CHARS])
    if obj is None:
        return UNPARSED
    value = obj.get("diagnosis")
    return ParsedAnswer(
        parse_ok=True,
        diagnosis=parse_diagnosis(value),
        diagnosis_candidates=diagnosis_candidates(value) if isinstance(value, str) else (),
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
    found = _locate_answer_object(text)
    return None if found is None else found[0]


def _locate_answer_object(text: str) -> tuple[dict[str, Any], int] | None:
    """(the answer object parse_answer reads, the index of its `{`), or None."""
    counts = _ObjectCounts()
    # One decoder per call: the counts it writes are this call's alone (rewards may run in threads).
    decoder = json.JSONDecoder(parse_int=_parse_json_int, object_pairs_hook=counts.object_from_pairs)
    start = text.find("{")
    tries = 0
    while start != -1 and tries < MAX_OBJECT_STARTS:
        tries += 1
        counts.duplicates = counts.answers = 0
        try:
            value, _ = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            # ValueError covers JSONDecodeError and ints longer than Python's digit limit.
            value = None
        if isinstance(value, dict):
            if counts.duplicates and counts.answers:
                return None  # the first answer is ambiguous: void, do not look for a later one
            if any(name in value for name in ANSWER_FIELDS):
                return value, start
        start = text.find("{", start + 1)
    return None


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def answer_field_spans(text: Any) -> dict[str, tuple[int, int]]:
    """Where each answer field's VALUE is in `text`: {field: (start, end)} character offsets, for the
    fields of ANSWER_FIELDS in the object `parse_answer` reads; {} when it reads none. Never raises.

    GRPO's field-level credit (skinderm/training/credit.py) pays the tokens of each value for that
    field's reward alone; everything outside these spans (braces, keys, prose) is shared.
    """
    if not isinstance(text, str):
        return {}
    text = text[:MAX_PARSE_CHARS]
    found = _locate_answer_object(text)
    if found is None:
        return {}
    decoder = json.JSONDecoder(parse_int=_parse_json_int)
    spans: dict[str, tuple[int, int]] = {}
    pos = _WHITESPACE.match(text, found[1] + 1).end()
    try:
        while pos < len(text) and text[pos] == '"':
            key, pos = json.decoder.scanstring(text, pos + 1)
            pos = _WHITESPACE.match(text, pos).end()
            if text[pos : pos + 1] != ":":
                break
            start = _WHITESPACE.match(text, pos + 1).end()
            _, pos = decoder.raw_decode(text, start)
            if key in ANSWER_FIELDS:
                spans[key] = (start, pos)
            pos = _WHITESPACE.match(text, pos).end()
            if text[pos : pos + 1] != ",":
                break
            pos = _WHITESPACE.match(text, pos + 1).end()
    except (ValueError, RecursionError):  # cannot happen on an object raw_decode accepted; stay total
        return {}
    return spans


# Diagnosis and location share one normalisation: Unicode NFKC + casefold (so full-width "ｍｅｌ" and
# "MEL" read as "mel"), typographic quotes and dashes as ASCII, then only ASCII letters, digits,
# whitespace and the separators below may remain. Any other character, in particular a non-ASCII
# letter or combining mark left after NFKC (Cyrillic "е" in "mеl", Greek omicron, "mél"), voids the
# value: look-alike letters would otherwise split or disguise a class word.
_TYPOGRAPHIC = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u02bc": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
    }
)
# Separators only: nothing that reads as an operator or a doubt ("!mel", "~nv", "mel?", "mel+nv").
SEPARATOR_PUNCTUATION = frozenset("-_/,.;:()[]'\"")
_WORD = re.compile(r"[a-z0-9]+")
# Real answers are ~5 characters ("mel"); a long value is prose, not a diagnosis.
MAX_DIAGNOSIS_CHARS = 200


def _normalised(value: str) -> str:
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())
    return text.translate(_TYPOGRAPHIC)


def _is_plain(text: str) -> bool:
    """Only ASCII letters and digits, whitespace and SEPARATOR_PUNCTUATION (text already normalised)."""
    return all((ch.isascii() and ch.isalnum()) or ch.isspace() or ch in SEPARATOR_PUNCTUATION for ch in text)


def _words(text: str) -> list[str]:
    """ASCII words of normalised text; an apostrophe joins ("bowen's" -> "bowens"), the rest separates."""
    return _WORD.findall(text.replace("'", ""))


# Each class's names as word sequences, grouped by first word, longest first (greedy longest match).
_CLASS_PHRASES: dict[str, list[tuple[tuple[str, ...], str]]] = {}
for _code in CLASS_CODES:
    for _term in (_code, CLASS_NAMES[_code], *CLASS_SYNONYMS.get(_code, ())):
        _phrase = tuple(_words(_normalised(_term)))
        _CLASS_PHRASES.setdefault(_phrase[0], []).append((_phrase, _code))
for _phrases in _CLASS_PHRASES.values():
    _phrases.sort(key=lambda item: len(item[0]), reverse=True)
CLASS_WORDS: frozenset[str] = frozenset(
    word for phrases in _CLASS_PHRASES.values() for phrase, _ in phrases for word in phrase
)

# Words allowed around the one class name: articles and plainly affirmative words only ("this
# lesion is likely a melanoma"). Kept small on purpose: every other word voids the diagnosis, so a
# misspelt second class ("mel or nevvus"), a qualifier or a new kind of negation cannot slip through.
FILLER_WORDS: frozenset[str] = frozenset(
    {"a", "an", "the", "this", "it", "is", "lesion", "diagnosis", "of", "consistent", "with", "likely",
     "probably", "probable"}
)  # fmt: skip
# Words that deny or exclude. They void a diagnosis by being outside FILLER_WORDS already; listed so
# a test keeps them out of FILLER_WORDS and the class names ("non-melanoma", "rule out mel").
NEGATION_WORDS: frozenset[str] = frozenset(
    {"no", "not", "non", "nor", "never", "none", "neither", "without", "unlikely", "exclude",
     "excluded", "excluding", "exclusion", "rule", "ruled", "negative", "absent", "isnt", "doesnt",
     "cannot", "cant", "against", "except", "minus", "false"}
)  # fmt: skip


def _read_classes(words: Sequence[str]) -> tuple[set[str], bool]:
    """(classes named by greedy longest phrase match, whether every other word is a filler)."""
    named: set[str] = set()
    only_fillers = True
    i = 0
    while i < len(words):
        for phrase, code in _CLASS_PHRASES.get(words[i], ()):
            if tuple(words[i : i + len(phrase)]) == phrase:
                named.add(code)
                i += len(phrase)
                break
        else:
            only_fillers = only_fillers and words[i] in FILLER_WORDS
            i += 1
    return named, only_fillers


def diagnosis_candidates(text: str) -> tuple[str, ...]:
    """Every class a piece of text names (code, full name or synonym; whole words, any case), in
    CLASS_CODES order. Informative only (what a hedge hedged between): scoring uses parse_diagnosis."""
    named, _ = _read_classes(_words(_normalised(text)))
    return tuple(code for code in CLASS_CODES if code in named)


def parse_diagnosis(value: Any) -> str | None:
    """The class code a diagnosis value names, or None unless it names exactly one class and nothing else.

    The value (a str of at most MAX_DIAGNOSIS_CHARS) is normalised (see above) and split into words;
    the words must read as one or more names of ONE class (code, CLASS_NAMES or CLASS_SYNONYMS,
    whole words; "Melanoma (mel)" is fine) plus FILLER_WORDS. So a second class ("mel or nv"), a
    negation ("not mel", "non-melanoma", "mel unlikely"), an unknown or misspelt word ("mel or
    nevvus", "malignant melanoma"), a number, a non-ASCII letter or stray punctuation ("mel?")
    each give None, i.e. a wrong answer for the reward and for evaluation alike.
    """
    if not isinstance(value, str) or len(value) > MAX_DIAGNOSIS_CHARS:
        return None
    text = _normalised(value)
    if not _is_plain(text):
        return None
    words = _words(text)
    if NEGATION_WORDS.intersection(words):
        return None
    named, only_fillers = _read_classes(words)
    return next(iter(named)) if len(named) == 1 and only_fillers else None


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
    """Canonical "{v}-{h}" for a location string, or None when it is not exactly one grid cell.

    Normalised like a diagnosis: non-ASCII letters, digits and stray punctuation void it too.
    """
    if not isinstance(value, str) or len(value) > _MAX_LOCATION_CHARS:
        return None
    text = _normalised(value)
    if not _is_plain(text):
        return None
    positions = []
    for word in _words(text):
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
