"""Benchmark scoring exactly as VST's evaluation code does it (Yangr116/vst `benchmark/eval_vsibench.py`,
lmms-eval's VSI-Bench task), rule for rule, so our numbers compare with the paper's.

- multiple choice: the first space-separated word of the response, trailing full stops stripped, must
  equal the option letter (case-insensitive): "B" and "B." count, "(B)", "Option B" and "b) chair" do not.
- numbers: `float()` of that first word (no units, no words), mean relative accuracy over
  θ = 0.50, 0.55, …, 0.95 of `|ŷ − y| / y <= 1 − θ`; an unreadable answer scores 0.
The response is scored as generated: VST's VSI-Bench code strips no `<think>` block.
VSI-Bench has no 3D boxes or free text: those keep the lenient VST accuracy (`rewards.accuracy`), and
free text is an exact (case-insensitive) match. CV-Bench and MMSI are scored by VLMEvalKit in VST,
whose answer matcher is not reproduced here; their rows get these VSI-Bench rules.
"""

from __future__ import annotations

import numpy as np

from vst_vla.spatial.rewards import accuracy, check_ground_truth


def fuzzy_matching(pred: str) -> str:
    return pred.split(" ")[0].rstrip(".").strip()


def exact_match(pred: str, target: str) -> float:
    return 1.0 if pred.lower() == target.lower() else 0.0


def abs_dist_norm(pred: float, target: float) -> float:
    return abs(pred - target) / target


def mean_relative_accuracy(pred: float, target: float, start: float = 0.5, end: float = 0.95,
                           interval: float = 0.05) -> float:
    num_pts = (end - start) / interval + 2
    conf_intervs = np.linspace(start, end, int(num_pts))
    return float((abs_dist_norm(pred, target) <= 1 - conf_intervs).mean())


def to_float(pred) -> float | None:
    try:
        return float(pred)
    except BaseException:
        return None


def score_multiple_choice(response: str, choice: str) -> float:
    return exact_match(fuzzy_matching(str(response)), choice)


def score_number(response: str, value: float) -> float:
    """VSI-Bench's MRA of the response's first word; 0 when it is no number (their TypeError branch)."""
    try:
        return mean_relative_accuracy(to_float(fuzzy_matching(str(response))), to_float(value))
    except TypeError:
        return 0.0


def score(response: str, answer_type: str, ground_truth: dict | str) -> dict:
    """{"accuracy": ..., and "mra" for numbers} of one response, by VST's official rules.

    For numbers `accuracy` is the strictest MRA threshold (within 5 %) on the same official parse."""
    gt = check_ground_truth(answer_type, ground_truth)
    if answer_type == "multiple_choice":
        return {"accuracy": score_multiple_choice(response, gt["choice"])}
    if answer_type == "number":
        value = to_float(fuzzy_matching(str(response)))
        close = value is not None and abs_dist_norm(value, float(gt["value"])) <= 0.05
        return {"accuracy": float(close), "mra": score_number(response, float(gt["value"]))}
    if answer_type == "text":
        return {"accuracy": exact_match(str(response).strip(), gt["text"].strip())}
    return {"accuracy": accuracy(response, answer_type, gt)}
