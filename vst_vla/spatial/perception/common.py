"""Turning a generator's facts into a `GeneratedSample`: option lettering, answer text, metadata."""

from __future__ import annotations

import json

import numpy as np

from .context import LETTERS, Camera, GeneratedSample, Img, Obj, SceneContext

MC_SUFFIX = "Answer with the option's letter from the given choices directly."


def multiple_choice(ctx: SceneContext, skill: str, rng: np.random.Generator, correct: str,
                    distractors: list[str]) -> tuple[dict[str, str], str]:
    """Options with the correct one at a balanced letter and the distractors shuffled around it."""
    slot = ctx.balance.slot(skill, 1 + len(distractors))
    others = [distractors[i] for i in rng.permutation(len(distractors))]
    texts = others[:slot] + [correct] + others[slot:]
    return {LETTERS[i]: t for i, t in enumerate(texts)}, LETTERS[slot]


def sample(ctx: SceneContext, skill: str, scenario: str, images: list[Img], cameras: list[Camera | None],
           question: str, answer: str, answer_type: str, gt: dict, facts: dict, steps: list[str],
           layout: list[int], objects: list[Obj] | None = None) -> GeneratedSample:
    """A sample whose metadata carries everything needed to re-derive its answer from ground truth."""
    objects = ctx.objects if objects is None else objects
    meta = {
        "scene_id": ctx.scene_id,
        "scene": ctx.meta,
        "image_keys": [im.key for im in images],
        "cameras": [c.to_dict() if c is not None else None for c in cameras],
        "objects": [o.to_dict() for o in objects],
        "names": ctx.names,
        "facts": facts,
    }
    if cameras and cameras[0] is not None:
        intr = cameras[0].intrinsics
        meta["camera"] = {"hfov": round(intr.hfov_deg, 4), "vfov": round(intr.vfov_deg, 4),
                          "width": intr.width, "height": intr.height}
    return GeneratedSample(id="", skill=skill, scenario=scenario, images=[], question=question, answer=answer,
                           answer_type=answer_type, ground_truth=json.dumps(gt, default=_plain),
                           metadata=json.dumps(meta, default=_plain),
                           pixels=list(images), steps=steps, layout=list(layout))


def _plain(value):
    """numpy scalars and arrays as plain JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def mc_sample(ctx, skill, scenario, images, cameras, question, options, letter, facts, steps, layout,
              objects=None) -> GeneratedSample:
    opts = "\n".join(f"{k}. {v}" for k, v in options.items())
    text = f"{question}\nOptions:\n{opts}\n{MC_SUFFIX}"
    steps = [*steps, f"The answer is {letter}. {options[letter]}."]
    return sample(ctx, skill, scenario, images, cameras, text, letter, "multiple_choice",
                  {"choice": letter, "options": options}, facts, steps, layout, objects)


def number_sample(ctx, skill, scenario, images, cameras, question, value: float, unit: str | None, decimals: int,
                  facts, steps, layout, objects=None) -> GeneratedSample:
    value = round(float(value), decimals)
    shown = f"{value:.{decimals}f}" if decimals else str(int(value))
    answer = f"{shown} {unit}" if unit else shown
    gt = {"value": value, "unit": unit} if unit else {"value": value}
    return sample(ctx, skill, scenario, images, cameras, question, answer, "number", gt, facts,
                  [*steps, f"The answer is {answer}."], layout, objects)


def boxes_sample(ctx, skill, scenario, images, cameras, question, boxes: list[dict], facts, steps, layout,
                 objects=None) -> GeneratedSample:
    answer = "```json\n" + json.dumps(boxes, default=_plain) + "\n```"
    return sample(ctx, skill, scenario, images, cameras, question, answer, "boxes_3d", {"boxes": boxes}, facts,
                  steps, layout, objects)


def round_box(box: np.ndarray) -> list[float]:
    """Metres to the millimetre, angles (/180) to 3 decimals, as the answer text shows them."""
    return [round(float(v), 3) for v in box]


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def fmt_xyz(p: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in p) + ")"
