"""VST rewards and VSI-Bench scores: exact values on known cases, and never raising on any text."""

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vst_vla.spatial.rewards import (
    accuracy,
    box_score,
    extract_answer,
    extract_choice,
    format_reward,
    GroundTruthError,
    check_ground_truth,
    mra,
    parse_boxes,
    parse_number,
    reward,
)

OPTIONS = {"A": "the sink", "B": "the bottle", "C": "the chair", "D": "the lamp"}
MC = {"choice": "B", "options": OPTIONS}
CUBE = [0.0, 0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def _boxes_answer(boxes: list[dict], fenced: bool = True) -> str:
    body = json.dumps(boxes)
    return f"```json\n{body}\n```" if fenced else body


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>the bottle is nearer</think> B", 1.0),
        ("<think>\nreasoning\n</think>\n<answer>B</answer>", 1.0),
        ("<think></think>B", 1.0),  # an empty thought is still the format
        ("B", 0.0),
        ("<think>reasoning</think>", 0.0),  # no answer
        ("<think>reasoning</think>   \n", 0.0),
        ("<think>a</think><think>b</think>B", 0.0),  # two blocks
        ("preamble <think>a</think>B", 0.0),
        ("<think>unclosed B", 0.0),
        ("</think>B<think>", 0.0),
        ("<think>a</think><answer></answer>", 0.0),
    ],
)
def test_format_reward(text, expected):
    assert format_reward(text) == expected


def test_extract_answer():
    assert extract_answer("<think>A or B?</think>  B. the bottle ") == "B. the bottle"
    assert extract_answer("<think>x</think><answer> 3.5 m </answer>") == "3.5 m"
    assert extract_answer("no tags at all") == "no tags at all"


@pytest.mark.parametrize(
    "text,letter",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("b", "B"),
        ("B. the bottle", "B"),
        ("(B) the bottle", "B"),
        ("The answer is B", "B"),
        ("Answer: (B)", "B"),
        ("I pick option B because it is nearer.", "B"),
        ("**B**", "B"),
        ("the bottle", "B"),  # the text of one option
        ("A is closer to the camera", "A"),
        ("A bottle is on the left, so the answer is C", "C"),
        ("A or B", None),  # ambiguous
        ("nothing here", None),
        ("E", None),  # not an option
    ],
)
def test_extract_choice(text, letter):
    assert extract_choice(text, OPTIONS) == letter


@pytest.mark.parametrize(
    "pred,expected",
    [("<think>x</think>B", 1.0), ("<think>x</think>(B) the bottle", 1.0), ("C", 0.0), ("the chair", 0.0), ("", 0.0)],
)
def test_accuracy_multiple_choice(pred, expected):
    assert accuracy(pred, "multiple_choice", MC) == expected


@pytest.mark.parametrize(
    "pred,gt,expected",
    [
        ("2.0", {"value": 2.0}, 1.0),
        ("2.1", {"value": 2.0}, 1.0),  # 5 % off: still right
        ("2.11", {"value": 2.0}, 0.0),
        ("1.9 meters", {"value": 2.0, "unit": "m"}, 1.0),
        ("97 cm", {"value": 0.97, "unit": "m"}, 1.0),  # cm -> m
        ("0.97", {"value": 97, "unit": "cm"}, 0.0),  # bare number: read in the ground truth's unit
        ("0.97 m", {"value": 97, "unit": "cm"}, 1.0),
        ("970 mm", {"value": 97, "unit": "cm"}, 1.0),
        ("It is about 1,200 mm long.", {"value": 1.2, "unit": "m"}, 1.0),
        ("97 cm", {"value": 97}, 1.0),  # no unit in the ground truth: units are ignored
        ("There are three chairs.", {"value": 3}, 1.0),
        ("-2", {"value": 2.0}, 0.0),
        ("0", {"value": 0.0}, 1.0),
        ("0.1", {"value": 0.0}, 0.0),
        ("nan", {"value": 1.0}, 0.0),
        ("inf", {"value": 1.0}, 0.0),
        ("1e999", {"value": 1.0}, 0.0),
        ("no number", {"value": 1.0}, 0.0),
    ],
)
def test_accuracy_number(pred, gt, expected):
    assert accuracy(pred, "number", gt) == expected


def test_parse_number():
    assert parse_number("about 3.5cm", "m") == pytest.approx(0.035)
    assert parse_number("3 feet", "m") == pytest.approx(0.9144)
    assert parse_number("12 steps", "m") == 12.0  # not a length unit: left alone
    assert parse_number("none") is None


@pytest.mark.parametrize(
    "pred,gt,expected",
    [
        ("<think>x</think>Left.", {"text": "left"}, 1.0),
        ("  LEFT  ", {"text": "left"}, 1.0),
        ('"left"', {"text": "left"}, 1.0),
        ("left side", {"text": "left"}, 0.0),
    ],
)
def test_accuracy_text(pred, gt, expected):
    assert accuracy(pred, "text", gt) == expected


def test_accuracy_accepts_ground_truth_json():
    assert accuracy("B", "multiple_choice", json.dumps(MC)) == 1.0


def test_boxes_perfect_and_partial():
    gt = {"boxes": [{"label": "chair", "bbox_3d": CUBE}]}
    assert accuracy(_boxes_answer(gt["boxes"]), "boxes_3d", gt) == 1.0
    # Unfenced JSON and a label in another case still parse.
    assert accuracy(f'[{{"label": "Chair", "bbox_3d": {CUBE}}}]', "boxes_3d", gt) == 1.0
    # Shifted half a side: IoU 1/3 (>= 0.25, so it is a true positive): 0.5/3 + 0.5 * 1.
    shifted = [0.5, 0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert accuracy(_boxes_answer([{"label": "chair", "bbox_3d": shifted}]), "boxes_3d", gt) == pytest.approx(
        0.5 / 3 + 0.5
    )


def test_boxes_hungarian_labels_and_extras():
    far = [5.0, 0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    gt = [{"label": "chair", "bbox_3d": CUBE}, {"label": "lamp", "bbox_3d": far}]
    # Right boxes, swapped labels: no same-label overlap at all.
    swapped = [{"label": "lamp", "bbox_3d": CUBE}, {"label": "chair", "bbox_3d": far}]
    assert box_score(parse_boxes(_boxes_answer(swapped)), gt) == 0.0
    # One perfect box and one extra: mean IoU 1/2 (divided by max(#pred, #gt)), F1 = 2*1/(2+1).
    pred = [{"label": "chair", "bbox_3d": CUBE}, {"label": "chair", "bbox_3d": far}]
    one_gt = gt[:1]
    assert box_score(parse_boxes(_boxes_answer(pred)), one_gt) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    # The matching is global: the better-overlapping assignment wins regardless of order.
    near = [0.1, 0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    gts = [{"label": "box", "bbox_3d": near}, {"label": "box", "bbox_3d": CUBE}]
    preds = parse_boxes(_boxes_answer([{"label": "box", "bbox_3d": CUBE}, {"label": "box", "bbox_3d": near}]))
    assert box_score(preds, gts) == pytest.approx(1.0)


def test_boxes_empty_and_malformed():
    assert accuracy("```json\n[]\n```", "boxes_3d", {"boxes": []}) == 1.0
    assert accuracy("[]", "boxes_3d", {"boxes": [{"label": "chair", "bbox_3d": CUBE}]}) == 0.0
    gt = {"boxes": [{"label": "chair", "bbox_3d": CUBE}]}
    for junk in [
        '[{"label": "chair", "bbox_3d": [1, 2, 3]}]',
        '[{"label": "chair", "bbox_3d": ["a", 0, 2, 1, 1, 1, 0, 0, 0]}]',
        '[{"label": "chair", "bbox_3d": [1e999, 0, 2, 1, 1, 1, 0, 0, 0]}]',
        '[{"label": "chair", "bbox_3d": [%s, 0, 2, 1, 1, 1, 0, 0, 0]}]' % ("9" * 400),
        '[{"label": "chair", "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]',  # truncated
        "[" * 5000 + "]" * 5000,
        '{"label": {"x": 1}, "bbox_3d": null}',
    ]:
        assert accuracy(junk, "boxes_3d", gt) == 0.0, junk


def test_reward_combines_accuracy_and_format():
    assert reward("<think>x</think>B", "multiple_choice", MC) == 1.0
    assert reward("<think>x</think>C", "multiple_choice", MC) == 0.5
    assert reward("B", "multiple_choice", MC) == 0.5
    assert reward("B", "multiple_choice", MC, require_think=False) == 1.0
    assert reward("", "multiple_choice", MC, require_think=False) == 0.0


@pytest.mark.parametrize(
    "pred,gt,expected",
    [
        (10.0, 10.0, 1.0),
        (10.4, 10.0, 1.0),  # 4 % off passes every threshold
        (11.0, 10.0, 0.9),  # 10 % off: VSI-Bench's float thresholds let θ = 0.9 pass too (as its code does)
        (12.0, 10.0, 0.6),  # 20 % off: θ = 0.50 .. 0.75
        (14.9, 10.0, 0.1),
        (15.0, 10.0, 0.1),  # VSI-Bench's "<=": 50 % off passes θ = 0.5
        (3.0, 2.0, 0.1),  # the issue's example
        (15.1, 10.0, 0.0),
        (30.0, 10.0, 0.0),
        ("about 11 meters", 10.0, 0.9),
        ("<think>x</think>12", 10.0, 0.6),
        ("no idea", 10.0, 0.0),
        (float("nan"), 10.0, 0.0),
        (float("inf"), 10.0, 0.0),
    ],
)
def test_mra(pred, gt, expected):
    assert mra(pred, gt) == pytest.approx(expected)


# --- never raise, always in [0, 1] -------------------------------------------------------------------

_floats = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**30), 10**30)
_box = st.lists(_floats, min_size=0, max_size=10)
_box_entry = st.fixed_dictionaries(
    {"label": st.sampled_from(["chair", "Chair", "lamp", ""]) | st.text(max_size=5), "bbox_3d": _box}
)
_json_junk = st.recursive(
    st.none() | st.booleans() | _floats | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)
_texts = (
    st.text(max_size=300)
    | st.builds(lambda t, a: f"<think>{t}</think>{a}", st.text(max_size=50), st.text(max_size=50))
    | st.builds(lambda b: "```json\n" + json.dumps(b, allow_nan=True) + "\n```", st.lists(_box_entry, max_size=6))
    | st.builds(lambda j: json.dumps(j, allow_nan=True), _json_junk)
    | st.sampled_from(["1e999", "-1e999", "nan", "9" * 5000, "(B)", "0.0", "<answer></answer>", "```json"])
)
_bad_ground_truths = st.one_of(
    _json_junk.map(lambda j: j if isinstance(j, dict) else {"junk": j}),
    st.text(max_size=30),  # a malformed JSON string
)
_ground_truths = st.one_of(
    st.tuples(st.just("multiple_choice"), st.fixed_dictionaries(
        {
            "choice": st.sampled_from(["A", "B", "C"]),
            "options": st.dictionaries(st.text(max_size=2), st.text(max_size=10), max_size=5),
        }
    )),
    st.tuples(st.just("number"), st.fixed_dictionaries(
        {"value": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**6), 10**6)},
        optional={"unit": st.sampled_from(["m", "cm", "mm", "", "parsecs"])})),
    st.tuples(st.just("boxes_3d"), st.fixed_dictionaries({"boxes": st.lists(st.fixed_dictionaries(
        {"label": st.text(max_size=5), "bbox_3d": st.lists(st.floats(-5, 5), min_size=9, max_size=9)}), max_size=4)})),
    st.tuples(st.just("text"), st.fixed_dictionaries({"text": st.text(max_size=20)})),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_texts, typed_gt=_ground_truths, require_think=st.booleans())
def test_scores_never_raise_on_model_output_and_stay_in_unit_interval(text, typed_gt, require_think):
    answer_type, gt = typed_gt
    for value in (
        accuracy(text, answer_type, gt),
        reward(text, answer_type, gt, require_think=require_think),
        format_reward(text),
    ):
        assert isinstance(value, float) and 0.0 <= value <= 1.0


@settings(max_examples=100, deadline=None)
@given(text=_texts, answer_type=st.sampled_from(["multiple_choice", "number", "boxes_3d", "text"]),
       gt=_bad_ground_truths)
def test_malformed_ground_truth_raises_instead_of_scoring_zero(text, answer_type, gt):
    # a broken dataset must not pass as a model that is always wrong
    try:
        check_ground_truth(answer_type, gt)
    except GroundTruthError:
        with pytest.raises(GroundTruthError):
            accuracy(text, answer_type, gt)
    else:  # junk that happens to be well-formed for this type
        assert 0.0 <= accuracy(text, answer_type, gt) <= 1.0


def test_ground_truth_errors_name_the_problem():
    with pytest.raises(GroundTruthError, match="choice"):
        accuracy("A", "multiple_choice", {"options": {"A": "x"}})
    with pytest.raises(GroundTruthError, match="finite"):
        accuracy("3", "number", {"value": float("nan")})
    with pytest.raises(GroundTruthError, match="9 finite"):
        accuracy("[]", "boxes_3d", {"boxes": [{"label": "a", "bbox_3d": [1, 2]}]})
    with pytest.raises(GroundTruthError, match="unknown answer type"):
        reward("A", "essay", {"text": "x"})
    with pytest.raises(GroundTruthError):
        mra("3", float("inf"))


def test_parse_boxes_reads_a_single_json_object():
    one = {"label": "red cube", "bbox_3d": [0.1, 0.0, 0.5, 0.03, 0.03, 0.03, 0.0, 0.0, 0.0]}
    for text in (json.dumps(one), "```json\n" + json.dumps(one) + "\n```", "The box: " + json.dumps(one)):
        assert parse_boxes(text) == [{"label": "red cube", "bbox_3d": one["bbox_3d"]}], text
    assert accuracy(json.dumps(one), "boxes_3d", {"boxes": [one]}) == pytest.approx(1.0)


@settings(max_examples=200, deadline=None)
@given(pred=_texts | _floats, gt=st.floats(allow_nan=False, allow_infinity=False))
def test_mra_never_raises_on_model_output(pred, gt):
    value = mra(pred, gt)
    assert isinstance(value, float) and 0.0 <= value <= 1.0


@settings(max_examples=100, deadline=None)
@given(
    pred=st.lists(
        st.fixed_dictionaries(
            {"label": st.just("chair"), "bbox_3d": st.lists(st.floats(-3, 3), min_size=9, max_size=9)}
        ),
        max_size=5,
    ),
    gt=st.lists(
        st.fixed_dictionaries(
            {"label": st.just("chair"), "bbox_3d": st.lists(st.floats(-3, 3), min_size=9, max_size=9)}
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_box_accuracy_in_unit_interval_and_perfect_on_itself(pred, gt):
    score = accuracy(_boxes_answer(pred), "boxes_3d", {"boxes": gt})
    assert 0.0 <= score <= 1.0
    # Any ground truth scores 1 against itself when every box has a volume.
    if all(all(s > 1e-3 for s in b["bbox_3d"][3:6]) for b in gt):
        assert accuracy(_boxes_answer(gt), "boxes_3d", {"boxes": gt}) == pytest.approx(1.0)
    assert not math.isnan(score)
