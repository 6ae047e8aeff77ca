"""VST's rule-based rewards (the GRPO stage) and the lenient scores. Nothing here raises on model output;
a malformed ground truth raises (`GroundTruthError`), so a broken dataset is never a silent 0.

reward = 0.5 * accuracy + 0.5 * format (VST-R RL stage). Accuracy is an exact match of the (normalised)
answer first, then by answer type: multiple-choice letter, relaxed numeric (<= 5 % relative error),
3D boxes (0.5 * Hungarian-matched mean oriented 3D IoU + 0.5 * F1 at IoU 0.25) or normalised text.
The parsing is deliberately *lenient* ("(B)", "Option B", the option's text, "31 cm" for a metre
answer all count): a reward should pay for the right content in any reasonable form. Benchmark numbers
use `official.py` instead, which is VST's evaluation code rule for rule.
`mra` is VSI-Bench's mean relative accuracy for numeric answers (its `<=`, its thresholds).

Ground truths are the dicts of `schema.SpatialSample.ground_truth`:
{"choice": "B", "options": {...}} | {"value": 0.31, "unit": "m"} | {"boxes": [{"label", "bbox_3d"}]}
| {"text": str}.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment

from vst_vla.spatial.boxes import box_iou_3d

IOU_MATCH_THRESHOLD = 0.25
NUMERIC_TOLERANCE = 0.05
# Boxes beyond this many in one prediction are never matched (still counted as false positives);
# it bounds the cost of scoring a runaway generation.
MAX_PRED_BOXES = 256

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NUMBER_WORDS = {
    w: float(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORD_RE = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)
# Length units to metres.
_UNIT_SPELLINGS = {
    1e-3: "mm millimeter millimeters millimetre millimetres",
    1e-2: "cm centimeter centimeters centimetre centimetres",
    1.0: "m meter meters metre metres",
    1e3: "km kilometer kilometers kilometre kilometres",
    0.0254: "inch inches",  # not "in": "3 in the room" is no length
    0.3048: "ft foot feet",
}
_UNITS = {name: scale for scale, names in _UNIT_SPELLINGS.items() for name in names.split()}
# Longest spellings first so that "cm" is not read as "m".
_UNIT_RE = re.compile(r"\s*(" + "|".join(sorted(_UNITS, key=len, reverse=True)) + r")\b", re.IGNORECASE)


class GroundTruthError(ValueError):
    """A ground truth that does not fit its answer type: a dataset bug, never scored as a 0."""


def _never_raises(fn: Callable[..., float]) -> Callable[..., float]:
    """For functions of model text only: any failure on odd model output is a 0, never an exception."""

    def wrapped(*args, **kwargs) -> float:
        try:
            value = float(fn(*args, **kwargs))
        except Exception:
            return 0.0
        return value if 0.0 <= value <= 1.0 else 0.0

    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


def extract_answer(text: str) -> str:
    """The final answer: text after the last `</think>`, or inside the last `<answer>...</answer>`."""
    text = str(text)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    tagged = _ANSWER_RE.findall(text)
    return (tagged[-1] if tagged else text).strip()


@_never_raises
def format_reward(text: str) -> float:
    """1 iff the text is exactly one `<think>...</think>` block followed by a non-empty answer."""
    text = str(text).strip()
    if text.count("<think>") != 1 or text.count("</think>") != 1 or not text.startswith("<think>"):
        return 0.0
    return 1.0 if extract_answer(text) else 0.0


def normalize_text(text: str) -> str:
    """Lower case, single spaces, no surrounding quotes/markdown or trailing full stop."""
    text = " ".join(str(text).lower().split())
    return text.strip("*`'\" ").rstrip(".").strip()


def extract_choice(text: str, options: dict | None = None) -> str | None:
    """A single option letter from answers like "B", "(B)", "B.", "B. chair", "The answer is B"."""
    valid = {str(k).strip().upper() for k in options} if options else None
    allowed = (lambda c: c in valid) if valid else (lambda c: True)
    text = str(text).strip().strip("*`\"' ")
    # The whole answer is a letter, maybe bracketed and punctuated.
    m = re.fullmatch(r"\(?\s*([A-Za-z])\s*\)?\s*[.:)]?", text)
    if m and allowed(m.group(1).upper()):
        return m.group(1).upper()
    # "B. chair", "(B) chair", "B) chair", "B: chair" at the start.
    m = re.match(r"\(?([A-Z])(?:\)|[.:])\s", text + " ")
    if m and allowed(m.group(1)):
        return m.group(1)
    # "the answer is B", "Answer: (B)", "option B".
    found = re.findall(r"(?:answer|option|choice)\s*(?:is|:)?\s*[:\-]?\s*\(?([A-Z])\b", text, re.IGNORECASE)
    found = [c for c in found if c.isupper() and allowed(c)]
    if found:
        return found[-1]
    if options:  # the text of exactly one option
        norm = normalize_text(text)
        hits = [str(k).strip().upper() for k, v in options.items() if normalize_text(v) == norm]
        if len(hits) == 1:
            return hits[0]
    # Otherwise one distinct standalone capital letter, not the pronoun "I" nor the article in "A chair".
    letters = set()
    for m in re.finditer(r"(?<![A-Za-z'])\(?([A-Z])\)?(?![A-Za-z'])", text):
        c = m.group(1)
        article = c == "A" and re.match(r"\s(?!(?:is|was|or|and)\b)[a-z]", text[m.end() : m.end() + 6])
        if allowed(c) and c != "I" and not article:
            letters.add(c)
    return letters.pop() if len(letters) == 1 else None


def parse_number(text: str, unit: str | None = None) -> float | None:
    """The first number in `text`, converted to `unit` (a length unit) if given and the text has one."""
    text = _THOUSANDS_RE.sub("", str(text))
    m = _NUMBER_RE.search(text)
    if m is None:
        w = _NUMBER_WORD_RE.search(text)
        return _NUMBER_WORDS[w.group(1).lower()] if w else None
    value = float(m.group())
    target = _UNITS.get(str(unit).strip().lower()) if unit else None
    if target is not None:
        u = _UNIT_RE.match(text, m.end())
        if u:
            value = value * _UNITS[u.group(1).lower()] / target
    return value if math.isfinite(value) else None


def _relative_error(pred: float, gt: float) -> float:
    if gt == 0.0:
        return 0.0 if pred == 0.0 else math.inf
    return abs(pred - gt) / abs(gt)


def _finite_floats(values: list) -> list[float] | None:
    """Finite floats, or None if any entry is not a (finite, float-sized) number."""
    try:
        out = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    except OverflowError:  # an integer too large for a float
        return None
    return out if len(out) == len(values) and all(math.isfinite(v) for v in out) else None


def parse_boxes(text: str) -> list[dict]:
    """`[{"label", "bbox_3d"}]` from a JSON answer (possibly in ```json fences): a list of boxes or one
    box object; invalid entries dropped."""
    text = str(text)
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    body = (fence.group(1) if fence else text).strip()
    candidates = []
    start, end = body.find("["), body.rfind("]")
    if 0 <= start < end:
        candidates.append(body[start : end + 1])
    if "{" in body:  # one object, or a list whose brackets the slice above got wrong
        obj = body[body.find("{") : body.rfind("}") + 1]
        candidates.insert(0 if body.startswith("{") else len(candidates), obj)
    for candidate in candidates:
        try:
            data = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        items = data if isinstance(data, list) else [data]
        boxes = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("bbox_3d"), list):
                continue
            bbox = _finite_floats(item["bbox_3d"])
            if bbox is not None and len(bbox) == 9:
                boxes.append({"label": normalize_text(item.get("label", "")), "bbox_3d": bbox})
        if boxes:
            return boxes
    return []


def box_score(pred: list[dict], gt: list[dict]) -> float:
    """0.5 * mean IoU over a Hungarian matching (same label only) + 0.5 * F1 at IoU 0.25.

    The mean IoU divides by max(#pred, #gt) so missed and extra boxes count as IoU 0.
    No boxes predicted for no boxes expected scores 1.
    """
    if not gt or not pred:
        return 1.0 if not gt and not pred else 0.0
    scored = pred[:MAX_PRED_BOXES]
    iou = np.zeros((len(scored), len(gt)))
    for i, p in enumerate(scored):
        for j, g in enumerate(gt):
            if p["label"] == normalize_text(g.get("label", "")):
                iou[i, j] = box_iou_3d(p["bbox_3d"], g["bbox_3d"])
    rows, cols = linear_sum_assignment(iou, maximize=True)
    matched = iou[rows, cols]
    mean_iou = matched.sum() / max(len(pred), len(gt))
    tp = int(np.sum(matched >= IOU_MATCH_THRESHOLD))
    f1 = 2.0 * tp / (len(pred) + len(gt))  # = 2PR / (P + R)
    return 0.5 * mean_iou + 0.5 * f1


def _canonical_answer(answer_type: str, gt: dict) -> str:
    if answer_type == "multiple_choice":
        return str(gt["choice"])
    if answer_type == "number":
        unit = gt.get("unit")
        return f"{gt['value']} {unit}" if unit else str(gt["value"])
    if answer_type == "text":
        return str(gt["text"])
    return ""


def check_ground_truth(answer_type: str, ground_truth: dict | str) -> dict:
    """The ground truth as a dict, checked against its answer type; raises `GroundTruthError`."""
    try:
        gt = json.loads(ground_truth) if isinstance(ground_truth, str) else ground_truth
    except ValueError as err:
        raise GroundTruthError(f"ground truth is not JSON: {ground_truth!r:.80}") from err
    if not isinstance(gt, dict):
        raise GroundTruthError(f"ground truth must be a JSON object, got {gt!r:.80}")
    if answer_type == "multiple_choice":
        if not isinstance(gt.get("choice"), str) or not gt["choice"].strip():
            raise GroundTruthError(f"multiple-choice ground truth needs a 'choice' letter: {gt!r:.80}")
        if not isinstance(gt.get("options", {}), dict):
            raise GroundTruthError(f"'options' must be a dict of letter -> text: {gt!r:.80}")
    elif answer_type == "number":
        value = gt.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise GroundTruthError(f"number ground truth needs a finite 'value': {gt!r:.80}")
        if not isinstance(gt.get("unit") or "", str):
            raise GroundTruthError(f"'unit' must be a string: {gt!r:.80}")
    elif answer_type == "boxes_3d":
        boxes = gt.get("boxes")
        if not isinstance(boxes, list) or any(
            not isinstance(b, dict) or not isinstance(b.get("bbox_3d"), list) or len(b["bbox_3d"]) != 9
            or _finite_floats(b["bbox_3d"]) is None for b in boxes
        ):
            raise GroundTruthError(f"boxes ground truth needs 'boxes' of 9 finite numbers each: {gt!r:.80}")
    elif answer_type == "text":
        if not isinstance(gt.get("text"), str):
            raise GroundTruthError(f"text ground truth needs a 'text' string: {gt!r:.80}")
    else:
        raise GroundTruthError(f"unknown answer type {answer_type!r}")
    return gt


def accuracy(pred_text: str, answer_type: str, ground_truth: dict | str) -> float:
    """VST accuracy in [0, 1] of a model output against a schema ground truth (lenient parsing)."""
    return _accuracy(pred_text, answer_type, check_ground_truth(answer_type, ground_truth))


@_never_raises
def _accuracy(pred_text: str, answer_type: str, gt: dict) -> float:
    """The part that reads model text, on a checked ground truth: never raises."""
    answer = extract_answer(pred_text)
    canonical = _canonical_answer(answer_type, gt)
    if canonical and normalize_text(answer) == normalize_text(canonical):
        return 1.0
    if answer_type == "multiple_choice":
        choice = extract_choice(answer, gt.get("options"))
        return float(choice is not None and choice == gt["choice"].strip().upper())
    if answer_type == "number":
        value = parse_number(answer, gt.get("unit"))
        # The epsilon keeps exactly-5 %-off answers (2.1 for 2.0) right despite float rounding.
        return float(value is not None and _relative_error(value, float(gt["value"])) <= NUMERIC_TOLERANCE + 1e-9)
    if answer_type == "boxes_3d":
        return box_score(parse_boxes(answer), gt["boxes"])
    return 0.0  # text: only the exact match above counts


def reward(text: str, answer_type: str, ground_truth: dict | str, require_think: bool = True) -> float:
    """0.5 * accuracy + 0.5 * format; without `require_think` the format part only needs an answer."""
    acc = accuracy(text, answer_type, ground_truth)
    fmt = format_reward(text) if require_think else _has_answer(text)
    return 0.5 * acc + 0.5 * fmt


@_never_raises
def _has_answer(text: str) -> float:
    return float(bool(extract_answer(text)))


# VSI-Bench's thresholds exactly as its code makes them (np.linspace(.5, .95, int((.95 - .5) / .05 + 2))),
# so that float comparisons at a threshold go the same way.
_MRA_CONF = np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))


def mra(pred: str | float, gt: float) -> float:
    """VSI-Bench mean relative accuracy: mean over θ in 0.50..0.95 of 1[|pred - gt| / |gt| <= 1 - θ].

    `pred` is a number or model text (read leniently, `parse_number`); `gt` must be finite."""
    if isinstance(gt, bool) or not isinstance(gt, (int, float)) or not math.isfinite(float(gt)):
        raise GroundTruthError(f"MRA needs a finite ground-truth number, got {gt!r}")
    return _mra(pred, float(gt))


@_never_raises
def _mra(pred: str | float, gt: float) -> float:
    value = pred if isinstance(pred, (int, float)) else parse_number(extract_answer(pred))
    if value is None or not math.isfinite(value):
        return 0.0
    err = _relative_error(float(value), gt)
    return float(np.mean(err <= 1.0 - _MRA_CONF))
