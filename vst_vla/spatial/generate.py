"""The generation loop: scenes in, a fixed number of samples of every requested skill out.

Each scene is rendered once (lazily, only the views the still-needed skills ask for) and asked up to
`max_per_scene` questions per skill. A generator returning None (ill-posed here) is retried a few
times with fresh random choices, then the skill waits for the next scene. Letters of correct options
and binary content (closer/farther, left/right, ...) are block-balanced per split by one `Balancer`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from vst_vla.spatial.draw import VST_STYLE, MarkStyle
from vst_vla.spatial.perception import PER_SCENE_LIMIT, SKILLS, Balancer, GeneratedSample, SceneContext
from vst_vla.spatial.reasoning import COT_TYPES, with_cot

SPLIT_OFFSETS = {"train": 0, "test": 500_000}  # scene seeds of the splits never overlap
MAX_IDLE_SCENES = 300  # a skill that nothing could be asked of in this many scenes in a row is an error


class SceneSource(Protocol):
    def context(self, seed: int, balance: Balancer, scene_id: str | None = None, split: str = "train") -> SceneContext: ...


def _signature(sample: GeneratedSample) -> tuple | None:
    """What makes two questions about one scene the same (None: drawn prompts make every one new)."""
    if any(img.key is None for img in sample.pixels):
        return None
    gt = json.loads(sample.ground_truth)
    truth = gt["options"][gt["choice"]] if "choice" in gt else sample.answer
    return sample.skill, sample.question.split("\nOptions:")[0], truth, tuple(img.key for img in sample.pixels)


def scene_seed(seed: int, split: str, i: int) -> int:
    return SPLIT_OFFSETS[split] + 1_000_000 * seed + i


def generate_samples(source: SceneSource, skills: list[str], per_skill: int, seed: int = 0, split: str = "train",
                     max_per_scene: int = 3, tries: int = 3, cot_fraction: float = 0.0,
                     rl_fraction: float = 0.0, marks: MarkStyle = VST_STYLE
                     ) -> Iterator[tuple[GeneratedSample, SceneContext]]:
    """Yield (sample, its scene) until every skill has `per_skill` samples.

    A `cot_fraction` of the rule-checkable samples get a chain-of-thought answer (VST-R cold start)
    and an `rl_fraction` are marked as the RL subset (think prompt, rule-checkable ground truth).
    `marks` is how visual prompts (marked points, numbered boxes) are drawn.
    """
    unknown = [s for s in skills if s not in SKILLS]
    if unknown:
        raise ValueError(f"unknown skills {unknown}; known: {sorted(SKILLS)}")
    cannot = sorted(set(skills) & set(getattr(source, "unsupported_skills", ())))
    if cannot:
        raise ValueError(f"skills {cannot} cannot be generated from {type(source).__name__} scenes")
    if cot_fraction + rl_fraction > 1.0:
        raise ValueError(f"cot_fraction + rl_fraction must be <= 1, got {cot_fraction} + {rl_fraction}")
    balance = Balancer(np.random.default_rng([seed, SPLIT_OFFSETS[split], 1]))
    role_rng = np.random.default_rng([seed, SPLIT_OFFSETS[split], 2])
    need = {s: per_skill for s in skills}
    idle = dict.fromkeys(skills, 0)
    max_idle = getattr(source, "max_idle_scenes", MAX_IDLE_SCENES)
    count, i = 0, 0
    while any(need.values()):
        ctx = source.context(scene_seed(seed, split, i), balance, split=split)
        ctx.marks = marks
        rng = np.random.default_rng([seed, SPLIT_OFFSETS[split], 3, i])
        seen: set[tuple] = set()
        for skill in skills:
            fn = SKILLS[skill][1]
            got, limit = 0, min(max_per_scene, PER_SCENE_LIMIT.get(skill, max_per_scene))
            while need[skill] and got < limit:
                sample = None
                for _ in range(tries):
                    balance.begin()
                    sample = fn(ctx, rng)
                    sig = None if sample is None else _signature(sample)
                    if sample is not None and (sig is None or sig not in seen):
                        seen.add(sig)
                        break
                    balance.rollback()  # ill-posed or a repeat: its balanced picks go back
                    sample = None
                if sample is None:
                    break
                got += 1
                need[skill] -= 1
                sample = dataclasses.replace(sample, id=f"{split}-{count:06d}-{skill}")
                if sample.answer_type in COT_TYPES:
                    r = role_rng.random()
                    if r < cot_fraction:
                        sample = with_cot(sample, role="cot")
                    elif r < cot_fraction + rl_fraction:
                        sample = with_cot(sample, role="rl")
                count += 1
                yield sample, ctx
            idle[skill] = 0 if got or not need[skill] else idle[skill] + 1
            if idle[skill] >= max_idle:
                raise RuntimeError(f"skill {skill!r}: no well-posed question in {max_idle} scenes in a row "
                                   f"({need[skill]} still needed); is its view or clip available from this source?")
        i += 1
