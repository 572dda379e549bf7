"""Diagnosis reward: strict (no hedging, no substring credit) and optionally class-weighted."""

from __future__ import annotations

import json
import pickle

import pytest
from hypothesis import given, settings

from skinderm.data.classes import CLASS_CODES, HAM10000_CLASS_COUNTS
from skinderm.rewards import diagnosis_reward, get_diagnosis_reward
from skinderm.rewards.diagnosis import inverse_frequency_weights
from tests.answer_holes import HOLE_COMPLETION_EXAMPLES, HOLE_COMPLETIONS, true_answers

WEIGHTED = get_diagnosis_reward("inverse_frequency", HAM10000_CLASS_COUNTS)


def answer(diagnosis: object) -> str:
    return json.dumps({"diagnosis": diagnosis, "location": "center-center", "bbox_2d": [1, 2, 3, 4]})


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (answer("mel"), 1.0),
        (answer("Melanoma"), 1.0),
        (f"Here you go:\n```json\n{answer('MEL')}\n```", 1.0),
        ([{"role": "assistant", "content": answer("melanoma")}], 1.0),
        ([{"role": "assistant", "content": [{"type": "text", "text": answer("mel")}]}], 1.0),
        (answer("nv"), 0.0),  # wrong class
        (answer("mel or nv"), 0.0),  # hedging between two classes
        (answer("mel, nv, bcc, bkl, akiec, df, vasc"), 0.0),  # listing every class
        (answer("melanoma, not nevus"), 0.0),
        (answer("not mel"), 0.0),  # negation
        (answer("non-melanoma"), 0.0),
        (answer("mel or nevvus"), 0.0),  # hedge with a misspelt second class
        (answer("m\u0435l"), 0.0),  # Cyrillic ie
        (answer("\uff4d\uff45\uff4c"), 1.0),  # full-width "mel": NFKC-equivalent
        (answer("  Mel \n"), 1.0),
        ('{"diagnosis": "nv", "diagnosis": "mel"}', 0.0),  # duplicate key: the decoder keeps "mel"
        (answer(""), 0.0),
        (answer(None), 0.0),
        (answer(["mel"]), 0.0),
        ("", 0.0),  # empty completion
        ("melanoma", 0.0),  # prose without the answer object
        ('{"diagnosis": "mel"', 0.0),  # malformed JSON
        (answer("camelia"), 0.0),  # "mel" inside another word is not a diagnosis
        ('{"diagnosis": "nv"} {"diagnosis": "mel"}', 0.0),  # only the first answer counts
    ],
)
def test_only_naming_exactly_the_true_class_earns_the_reward(completion: object, expected: float) -> None:
    assert diagnosis_reward([completion], dx=["mel"]) == [expected]


# --- hole classes (tests/answer_holes.py): each states the true class and still earns 0 ----------


@pytest.mark.parametrize("hole", sorted(HOLE_COMPLETION_EXAMPLES))
def test_written_out_hole_examples_earn_zero(hole: str) -> None:
    for completion in HOLE_COMPLETION_EXAMPLES[hole]:
        truth = "mel" if "mel" in completion else "nv"
        for reward in (diagnosis_reward, WEIGHTED):
            assert reward([completion], dx=["mel"]) == [0.0], completion
            assert reward([completion], dx=[truth]) == [0.0], completion


@pytest.mark.parametrize("hole", sorted(HOLE_COMPLETIONS))
def test_every_hole_class_earns_zero_for_the_class_it_states(hole: str) -> None:
    @settings(max_examples=150, deadline=None)
    @given(HOLE_COMPLETIONS[hole])
    def check(pair: tuple[str, str]) -> None:
        completion, truth = pair
        assert diagnosis_reward([completion], dx=[truth]) == [0.0]
        assert WEIGHTED([completion], dx=[truth]) == [0.0]

    check()


@settings(max_examples=300, deadline=None)
@given(true_answers)
def test_one_true_class_in_any_case_spacing_or_width_earns_the_full_reward(pair: tuple[str, str]) -> None:
    completion, truth = pair
    assert diagnosis_reward([completion], dx=[truth]) == [1.0]
    assert WEIGHTED([completion], dx=[truth]) == [WEIGHTED.correct_reward[truth]]


def test_missing_or_unknown_ground_truth_gives_none() -> None:
    # None: TRL leaves the term out of those rows' weighted sums instead of paying them all 0.
    assert diagnosis_reward([answer("mel")] * 3, dx=[None, "melanoma", float("nan")]) == [None, None, None]
    assert diagnosis_reward([answer("mel"), answer("mel")], dx=[None, "mel"]) == [None, 1.0]


def test_scores_align_with_their_ground_truth() -> None:
    completions = [answer(code) for code in CLASS_CODES]
    assert diagnosis_reward(completions, dx=list(CLASS_CODES)) == [1.0] * 7
    assert diagnosis_reward(completions, dx=list(reversed(CLASS_CODES))) == [0, 0, 0, 1.0, 0, 0, 0]


def test_a_missing_ground_truth_column_is_a_setup_error_naming_the_column() -> None:
    with pytest.raises(ValueError, match="'dx'"):
        diagnosis_reward([answer("mel")], location=["center-center"])
    with pytest.raises(ValueError, match="2 values for 1 completions"):
        diagnosis_reward([answer("mel")], dx=["mel", "nv"])


def test_the_default_and_configured_rewards_are_named_and_picklable() -> None:
    configured = get_diagnosis_reward("inverse_frequency", HAM10000_CLASS_COUNTS)
    for reward in (diagnosis_reward, configured):
        assert reward.__name__ == "diagnosis"
        restored = pickle.loads(pickle.dumps(reward))
        assert restored.__name__ == "diagnosis"
        assert restored([answer("nv")], dx=["nv"]) == reward([answer("nv")], dx=["nv"])


# --- inverse-frequency weighting -------------------------------------------------------------------


def ham_proportioned_truths() -> list[str]:
    return [code for code, count in HAM10000_CLASS_COUNTS.items() for _ in range(count)]


def test_inverse_frequency_weights_average_one_over_the_training_images() -> None:
    weights = inverse_frequency_weights(HAM10000_CLASS_COUNTS)
    total = sum(HAM10000_CLASS_COUNTS.values())
    assert sum(HAM10000_CLASS_COUNTS[c] * weights[c] for c in CLASS_CODES) / total == pytest.approx(1.0)
    assert weights["nv"] == pytest.approx(10015 / (7 * 6705))
    assert weights["df"] > weights["mel"] > weights["nv"]


def test_always_nv_earns_less_under_inverse_frequency_while_correct_rare_answers_still_earn_one() -> None:
    truths = ham_proportioned_truths()
    always_nv = [answer("nv")] * len(truths)
    unweighted = get_diagnosis_reward("none")
    weighted = get_diagnosis_reward("inverse_frequency", HAM10000_CLASS_COUNTS)

    mean_unweighted = sum(unweighted(always_nv, dx=truths)) / len(truths)
    mean_weighted = sum(weighted(always_nv, dx=truths)) / len(truths)
    assert mean_unweighted == pytest.approx(6705 / 10015)
    assert mean_weighted == pytest.approx(10015 / (7 * 6705) * 6705 / 10015)  # = 1/7
    assert mean_weighted < mean_unweighted

    rare = [code for code in CLASS_CODES if code != "nv"]
    assert weighted([answer(code) for code in rare], dx=rare) == [1.0] * len(rare)  # clipped to 1
    assert weighted([answer("nv")], dx=["nv"]) == [pytest.approx(10015 / (7 * 6705))]


def test_perfect_answers_earn_over_three_times_always_nv_under_inverse_frequency() -> None:
    truths = ham_proportioned_truths()
    weighted = get_diagnosis_reward("inverse_frequency", HAM10000_CLASS_COUNTS)
    perfect = sum(weighted([answer(dx) for dx in truths], dx=truths)) / len(truths)
    always_nv = sum(weighted([answer("nv")] * len(truths), dx=truths)) / len(truths)
    assert perfect == pytest.approx((10015 - 6705 + 10015 / 7) / 10015)  # every class but nv pays 1
    assert perfect > 3 * always_nv


def test_a_class_absent_from_training_earns_one_when_answered_correctly() -> None:
    counts = {"mel": 10, "nv": 30}
    weighted = get_diagnosis_reward("inverse_frequency", counts)
    assert weighted([answer("df"), answer("nv"), answer("mel")], dx=["df", "nv", "mel"]) == [
        1.0,
        pytest.approx(40 / (2 * 30)),
        1.0,
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_weighting": "inverse_frequency"}, "needs class_counts"),
        ({"class_weighting": "balanced"}, "reward.diagnosis.class_weighting"),
        ({"class_weighting": "inverse_frequency", "class_counts": {"mel": -1}}, "class_counts\\['mel'\\]"),
        ({"class_weighting": "inverse_frequency", "class_counts": {"mel": 2.5}}, "whole number"),
        ({"class_weighting": "inverse_frequency", "class_counts": {"mel": True}}, "whole number"),
        ({"class_weighting": "inverse_frequency", "class_counts": {"melanoma": 3}}, "unknown classes"),
        ({"class_weighting": "inverse_frequency", "class_counts": {"mel": 0}}, "no images"),
    ],
)
def test_bad_weighting_settings_raise_a_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_diagnosis_reward(**kwargs)


def test_numpy_counts_from_pandas_are_accepted() -> None:
    np = pytest.importorskip("numpy")
    counts = {code: np.int64(count) for code, count in HAM10000_CLASS_COUNTS.items()}
    weighted = get_diagnosis_reward("inverse_frequency", counts)
    assert weighted.class_weights["nv"] == pytest.approx(10015 / (7 * 6705))
