"""Scene seeds: which sim layouts each use draws, in one table, so no two uses ever share a layout.

A scene seed is `base + stride * i + k`: `i` is the family's index in `sorted(FAMILIES)`, `k` counts the
scenes (attempts) of that family. Demonstrations and evaluation take their base from their config
(`collect.seed`, `eval-policy.seed`); the defaults below keep every range disjoint (tested).
"""

from __future__ import annotations

from lerobot_env_vst_vla import FAMILIES

EPISODE_STRIDE = 100_000  # attempts per family, collect and eval-policy
COLLECT_SEED_BASE = 0  # demonstrations: [0, 100 000 · families)
DECISION_SEED_BASE = 700_000  # decision scenes (vst_vla/policy/decision_scenes.py)
DAGGER_SEED_BASE = 800_000  # the policy's own rollouts, labelled by the expert (vst_vla/policy/dagger.py)
GROUNDING_SEED_BASE = 900_000  # grounding scenes (vst_vla/tuning/grounding.py)
SCENE_STRIDE = 10_000  # scenes per family, decision and grounding
EVAL_SEED_BASE = 1_000_000  # held-out evaluation episodes


def family_index(family: str) -> int:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(FAMILIES)}")
    return sorted(FAMILIES).index(family)


def episode_seed(base: int, family: str, k: int) -> int:
    """Seed of attempt `k` of `family` (collect, eval-policy): the same config always yields the same scenes."""
    if not 0 <= k < EPISODE_STRIDE:
        raise ValueError(f"attempt {k} of {family!r} is outside [0, {EPISODE_STRIDE}): it would reuse another family's seeds")
    return base + EPISODE_STRIDE * family_index(family) + k


def scene_seed(base: int, family: str, k: int) -> int:
    """Seed of extra scene `k` of `family` (decision scenes, DAgger rollouts, grounding scenes)."""
    if not 0 <= k < SCENE_STRIDE:
        raise ValueError(f"scene {k} of {family!r} is outside [0, {SCENE_STRIDE}): ask for fewer scenes per family")
    return base + SCENE_STRIDE * family_index(family) + k


def seed_ranges() -> dict[str, range]:
    """Every default range, for checking they are disjoint."""
    n = len(FAMILIES)
    return {
        "collect": range(COLLECT_SEED_BASE, COLLECT_SEED_BASE + EPISODE_STRIDE * n),
        "decision": range(DECISION_SEED_BASE, DECISION_SEED_BASE + SCENE_STRIDE * n),
        "dagger": range(DAGGER_SEED_BASE, DAGGER_SEED_BASE + SCENE_STRIDE * n),
        "grounding": range(GROUNDING_SEED_BASE, GROUNDING_SEED_BASE + SCENE_STRIDE * n),
        "eval": range(EVAL_SEED_BASE, EVAL_SEED_BASE + EPISODE_STRIDE * n),
    }
