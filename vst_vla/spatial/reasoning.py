"""VST-R style reasoning data: the perception questions with chain-of-thought answers from ground truth.

The thought is a bird's-eye layout of the objects involved (table frame coordinates), then the
relation or measurement computed from them (the generator's `steps`), then the answer:
`<think>layout. steps.</think>answer`. Two roles (in `metadata["vst_r"]`): `cot` — CoT cold-start SFT
targets; `rl` — the rule-checkable subset for GRPO (multiple choice, number, 3D boxes), whose
ground truth the rewards in `rewards.py` score; its answer text is the same reference CoT.
"""

from __future__ import annotations

import dataclasses
import json

from vst_vla.spatial.perception.context import GeneratedSample

COT_TYPES = ("multiple_choice", "number", "boxes_3d")  # rule-checkable: rewards.accuracy scores them
THINK_PROMPT = ("First think about the question step by step inside <think> </think> tags, "
                "then give the final answer after the tags.")
ROLES = ("cot", "rl")


def bird_eye_layout(objects: list[dict], names: list[str | None], indices: list[int]) -> str:
    """"Bird's-eye layout (...): the red cube at (0.21, -0.01); ..." for the listed objects.

    `objects` are the sample's metadata objects (the scene state its question is about)."""
    if not indices:
        return ""
    parts = []
    for k in indices:
        x, y = objects[k]["position"][:2]
        parts.append(f"the {names[k] or objects[k]['label']} at ({x:.2f}, {y:.2f})")
    return ("Bird's-eye layout of the table (x away from the robot base, y to the robot's left, meters): "
            + "; ".join(parts) + ".")


def cot_text(sample: GeneratedSample) -> str:
    meta = json.loads(sample.metadata)
    layout = bird_eye_layout(meta["objects"], meta["names"], sample.layout)
    thought = " ".join(t for t in [layout, *sample.steps] if t)
    return f"<think>{thought}</think>{sample.answer}"


def with_cot(sample: GeneratedSample, role: str = "cot") -> GeneratedSample:
    """The sample as a VST-R row: think prompt in the question, CoT answer, cot=True, role in metadata."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if sample.answer_type not in COT_TYPES:
        raise ValueError(f"sample {sample.id!r}: {sample.answer_type} answers are not rule-checkable")
    meta = json.loads(sample.metadata)
    meta["vst_r"] = role
    return dataclasses.replace(sample, question=f"{sample.question}\n{THINK_PROMPT}", answer=cot_text(sample),
                               cot=True, metadata=json.dumps(meta))


def vst_r_role(row: dict) -> str | None:
    """"cot", "rl" or None (a plain perception sample) of a dataset row."""
    return json.loads(row["metadata"]).get("vst_r")
