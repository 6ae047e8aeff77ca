"""Baselines every policy report sits next to, on the same seeds.

- `do_nothing`: holds the start pose. Success must be 0: nothing in a task is solved at reset.
- `random`: uniform joint targets in the action space every step. Success must be 0.
- `blind_expert`: the scripted expert sent to a uniformly random look-alike (either twin, either
  container, any side of the reference): what a perfect manipulator without spatial understanding
  reaches (≈ 1/2 on pick_relation). A spatial claim needs success above it, intervals apart.
"""

from __future__ import annotations

import numpy as np

from lerobot_env_vst_vla import ScriptedExpert

BASELINES = ("do_nothing", "random", "blind_expert")


class DoNothing:
    needs_pixels = False

    def reset(self, env, seed: int) -> None:
        self.hold = None

    def act(self, obs: dict, env) -> np.ndarray:
        if self.hold is None:
            self.hold = np.asarray(obs["agent_pos"], dtype=np.float32).copy()
        return self.hold


class RandomActions:
    needs_pixels = False

    def reset(self, env, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: dict, env) -> np.ndarray:
        return self.rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)


class BlindExpert:
    needs_pixels = False

    def reset(self, env, seed: int) -> None:
        rng = np.random.default_rng(seed)
        choices = env.family.lookalikes(env.episode)
        choice = choices[int(rng.integers(len(choices)))]
        self.expert = ScriptedExpert(env, target=choice["target"], place_xy=choice["place_xy"],
                                     place_height=choice["place_height"])

    def act(self, obs: dict, env) -> np.ndarray:
        return self.expert.act()


def make_baseline(name: str):
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {BASELINES}")
    return {"do_nothing": DoNothing, "random": RandomActions, "blind_expert": BlindExpert}[name]()
