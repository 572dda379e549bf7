"""The classes of diagnosis answers that must earn nothing, as hypothesis strategies.

Shared by the parser, reward and evaluation tests, so that all three check the same inputs: each
strategy draws `(completion text, true class)` pairs where the completion states the true class AND
something that voids it (a negation, a second class, a misspelt second class, a look-alike letter,
an unknown word, a duplicate key). `true_answers` draws the single-class answers that must still
earn the full reward. Not a test module (no `test_` prefix): pytest does not collect it.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from skinderm.answers import CLASS_WORDS, FILLER_WORDS, NEGATION_WORDS
from skinderm.data.classes import CLASS_CODES, CLASS_NAMES, CLASS_SYNONYMS

TERMS: dict[str, tuple[str, ...]] = {
    code: (code, CLASS_NAMES[code], *CLASS_SYNONYMS[code]) for code in CLASS_CODES
}
CLASS_TERMS: list[tuple[str, str]] = [(code, term) for code in CLASS_CODES for term in TERMS[code]]

# Latin letters and a Cyrillic or Greek letter drawn the same in most fonts.
LOOKALIKES: dict[str, str] = {
    "a": "\u0430",  # Cyrillic a
    "c": "\u0441",  # Cyrillic es
    "e": "\u0435",  # Cyrillic ie
    "i": "\u0456",  # Cyrillic i
    "k": "\u043a",  # Cyrillic ka
    "m": "\u043c",  # Cyrillic em
    "n": "\u03b7",  # Greek eta
    "o": "\u03bf",  # Greek omicron
    "p": "\u0440",  # Cyrillic er
    "s": "\u0455",  # Cyrillic dze
    "v": "\u03bd",  # Greek nu
    "l": "\u04cf",  # Cyrillic palochka
    "d": "\u0501",  # Cyrillic komi de
}
# Characters that change nothing visible inside a word: combining marks, zero-width characters.
INVISIBLES = ("\u0301", "\u0308", "\u0327", "\u200b", "\u200d", "\u00ad", "\u2060", "\ufeff")
NEGATION_TEMPLATES = (
    "not {}",
    "no {}",
    "non-{}",
    "non {}",
    "{} unlikely",
    "unlikely {}",
    "rule out {}",
    "{} ruled out",
    "{} excluded",
    "never {}",
    "without {}",
    "negative for {}",
    "it is not {}",
    "this is not a {}",
    "{}: no",
    "{} - not",
    "{}, absent",
    "cannot be {}",
    "NOT {}",
)
HEDGE_JOINERS = (" or ", ", ", " / ", "/", " ", " and ", " vs ", "; ", " (", " then ", " - ", "\n")
SEPARATORS = (" ", ", ", " / ", "; ", " - ", " (", "\n")


def answer_text(diagnosis: Any) -> str:
    """A complete answer object around a diagnosis value (other fields valid)."""
    return json.dumps({"diagnosis": diagnosis, "location": "center-center", "bbox_2d": [10, 20, 110, 90]})


def full_width(text: str) -> str:
    """ASCII printable characters as their full-width forms (NFKC maps them back)."""
    return "".join(
        chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ("\u3000" if ch == " " else ch) for ch in text
    )


def _plain_words(text: str) -> list[str]:
    """Words as a reader sees them (independent of the parser's own tokeniser)."""
    cleaned = "".join(ch if ch.isalnum() else " " for ch in text.lower().replace("'", ""))
    return cleaned.split()


def _has_unknown_word(text: str) -> bool:
    return any(word not in CLASS_WORDS and word not in FILLER_WORDS for word in _plain_words(text))


true_terms = st.sampled_from(CLASS_TERMS)


@st.composite
def _negated(draw: st.DrawFn) -> tuple[str, str]:
    code, term = draw(true_terms)
    if draw(st.booleans()):
        return draw(st.sampled_from(NEGATION_TEMPLATES)).format(term), code
    words = ["this", "lesion", "is", *term.split(" ")]
    position = draw(st.integers(0, len(words)))
    words.insert(position, draw(st.sampled_from(sorted(NEGATION_WORDS))))
    return " ".join(words), code


@st.composite
def _two_classes(draw: st.DrawFn) -> tuple[str, str]:
    code, term = draw(true_terms)
    _, other = draw(st.sampled_from([pair for pair in CLASS_TERMS if pair[0] != code]))
    joiner = draw(st.sampled_from(HEDGE_JOINERS))
    parts = [term, other] if draw(st.booleans()) else [other, term]
    return joiner.join(parts) + (")" if joiner == " (" else ""), code


@st.composite
def _misspelling(draw: st.DrawFn, term: str) -> str:
    letters = [i for i, ch in enumerate(term) if ch.isalpha()]
    i = draw(st.sampled_from(letters))
    edit = draw(st.sampled_from(("delete", "double", "swap", "substitute")))
    if edit == "delete":
        return term[:i] + term[i + 1 :]
    if edit == "double":
        return term[: i + 1] + term[i:]
    if edit == "swap" and i + 1 < len(term):
        return term[:i] + term[i + 1] + term[i] + term[i + 2 :]
    letter = draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz").filter(lambda ch: ch != term[i]))
    return term[:i] + letter + term[i + 1 :]


@st.composite
def _misspelt_second_class(draw: st.DrawFn) -> tuple[str, str]:
    code, term = draw(true_terms)
    _, other = draw(st.sampled_from([pair for pair in CLASS_TERMS if pair[0] != code]))
    # Keep only misspellings a reader sees as a wrong word (not, by chance, another real name).
    misspelt = draw(_misspelling(other).filter(_has_unknown_word))
    joiner = draw(st.sampled_from((" or ", ", ", " ", "/", " maybe ", " (")))
    parts = [term, misspelt] if draw(st.booleans()) else [misspelt, term]
    return joiner.join(parts), code


@st.composite
def _lookalike_letters(draw: st.DrawFn) -> tuple[str, str]:
    code, term = draw(st.sampled_from([pair for pair in CLASS_TERMS if set(pair[1]) & set(LOOKALIKES)]))
    positions = [i for i, ch in enumerate(term) if ch in LOOKALIKES]
    i = draw(st.sampled_from(positions))
    if draw(st.booleans()):
        return term[:i] + LOOKALIKES[term[i]] + term[i + 1 :], code
    return term[: i + 1] + draw(st.sampled_from(INVISIBLES)) + term[i + 1 :], code


unknown_words = st.from_regex(r"[a-z]{1,12}", fullmatch=True).filter(
    lambda word: word not in CLASS_WORDS and word not in FILLER_WORDS
)


@st.composite
def _unknown_word(draw: st.DrawFn) -> tuple[str, str]:
    code, term = draw(true_terms)
    word = draw(unknown_words | st.sampled_from(("maybe", "possibly", "benign", "malignant", "atypical")))
    separator = draw(st.sampled_from(SEPARATORS))
    text = f"{word}{separator}{term}" if draw(st.booleans()) else f"{term}{separator}{word}"
    return text + (")" if separator == " (" else ""), code


@st.composite
def _duplicate_keys(draw: st.DrawFn) -> tuple[str, str]:
    """A complete, otherwise perfect answer in which one key appears twice (anywhere)."""
    code = draw(st.sampled_from(CLASS_CODES))
    pairs: list[tuple[str, Any]] = [
        ("diagnosis", code),
        ("location", "center-center"),
        ("bbox_2d", [10, 20, 110, 90]),
    ]
    key = draw(st.sampled_from(("diagnosis", "location", "bbox_2d", "polygon", "note")))
    second = draw(
        st.sampled_from([code, *CLASS_CODES])
        if key == "diagnosis"
        else st.sampled_from(["x", "top-left", None])
    )
    pairs.insert(draw(st.integers(0, len(pairs))), (key, second))
    if key != "diagnosis" or draw(st.booleans()):
        pairs.insert(draw(st.integers(0, len(pairs))), (key, second))  # make sure `key` is doubled
    body = "{" + ", ".join(f"{json.dumps(name)}: {json.dumps(value)}" for name, value in pairs) + "}"
    if draw(st.booleans()):
        body = '{"answer": ' + body + "}"
    return body, code


def _as_completion(pairs: st.SearchStrategy[tuple[str, str]]) -> st.SearchStrategy[tuple[str, str]]:
    return pairs.map(lambda pair: (answer_text(pair[0]), pair[1]))


# Diagnosis values (not completions) per hole class: the parser tests call parse_diagnosis on them.
HOLE_VALUES: dict[str, st.SearchStrategy[tuple[str, str]]] = {
    "negation": _negated(),
    "two classes": _two_classes(),
    "misspelt second class": _misspelt_second_class(),
    "look-alike letters": _lookalike_letters(),
    "unknown word": _unknown_word(),
}
# Whole completions per hole class: the reward and evaluation tests score them.
HOLE_COMPLETIONS: dict[str, st.SearchStrategy[tuple[str, str]]] = {
    **{name: _as_completion(values) for name, values in HOLE_VALUES.items()},
    "duplicate keys": _duplicate_keys(),
}
# A few of each, written out: they read as what they are in a failure message.
HOLE_EXAMPLES: dict[str, tuple[str, ...]] = {
    "negation": ("not mel", "no melanoma", "mel unlikely", "rule out mel", "non-melanoma", "Not MEL"),
    "two classes": ("mel or nv", "melanoma, nevus", "mel/nv", "melanoma (nv)", "mel nv"),
    "misspelt second class": ("mel or nevvus", "mel or nevs", "melanoma / dermatofibrma", "mel nvv"),
    "look-alike letters": ("m\u0435l", "mel\u0430noma", "m\u03bfle", "m\u00e9l", "me\u200bl", "mel\u0301"),
    "unknown word": ("mel maybe", "malignant melanoma", "mel?", "1 mel", "mel!", "probablymel"),
}
HOLE_COMPLETION_EXAMPLES: dict[str, tuple[str, ...]] = {
    **{name: tuple(answer_text(value) for value in values) for name, values in HOLE_EXAMPLES.items()},
    "duplicate keys": (
        '{"diagnosis": "nv", "location": "center-center", "diagnosis": "mel"}',
        '{"diagnosis": "mel", "diagnosis": "nv"}',
        '{"diagnosis": "mel", "diagnosis": "mel"}',
        '{"diagnosis": "mel", "\\u0064iagnosis": "nv"}',
        '{"answer": {"diagnosis": "nv"}, "answer": {"diagnosis": "mel"}}',
        '{"diagnosis": "mel", "location": "top-left", "location": "center-center"}',
        '{"diagnosis": "nv", "diagnosis": "mel"} {"diagnosis": "mel"}',
    ),
}

WHITESPACE = st.sampled_from(("", " ", "  ", "\t", "\n", "\u00a0", "\u3000", " \n "))


@st.composite
def _true_value(draw: st.DrawFn) -> tuple[str, str]:
    code, term = draw(true_terms)
    style = draw(st.sampled_from(("as is", "upper", "title", "mixed", "full width")))
    if style == "upper":
        term = term.upper()
    elif style == "title":
        term = term.title()
    elif style == "mixed":
        flips = draw(st.lists(st.booleans(), min_size=len(term), max_size=len(term)))
        term = "".join(ch.upper() if flip else ch for ch, flip in zip(term, flips, strict=True))
    elif style == "full width":
        term = full_width(term)
    frame = draw(st.sampled_from(("{}", "this lesion is likely a {}", "{} lesion", "{} ({})", "the {}.")))
    text = frame.format(term, code) if frame == "{} ({})" else frame.format(term)
    return draw(WHITESPACE) + text + draw(WHITESPACE), code


true_values: st.SearchStrategy[tuple[str, str]] = _true_value()
true_answers: st.SearchStrategy[tuple[str, str]] = _as_completion(true_values)
