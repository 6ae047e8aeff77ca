"""Stack an object on the one of two identical cubes picked out by a spatial relation."""

from __future__ import annotations

import numpy as np

from ..scene import ObjectSpec
from .base import Episode, SceneState, TaskFamily, place_objects, placed, random_color, random_graspable, resting_on_table
from .pick_relation import PHRASES, RELATIONS, pick_by_relation


class StackByRelation(TaskFamily):
    name = "stack"
    templates = ("stack the {a} on the {base} {rel} the {ref}",
                 "put the {a} on top of the {base} {rel} the {ref}",
                 "place the {a} onto the {base} that is {rel} the {ref}")

    def sample(self, rng: np.random.Generator) -> Episode | None:
        color = random_color(rng)
        bases = [ObjectSpec("cube", color, "large", (0.0, 0.0), yaw=float(rng.uniform(-0.4, 0.4))) for _ in range(2)]
        a = ObjectSpec("cube", random_color(rng, (color,)), "small", (0.0, 0.0), yaw=float(rng.uniform(-0.4, 0.4)))
        ref = random_graspable(rng, random_color(rng, (color, a.color)))
        objects = [a, ref, *bases]
        if not place_objects(rng, objects):
            return None
        relation = RELATIONS[rng.integers(len(RELATIONS))]
        k = pick_by_relation(relation, [np.array(b.pos) for b in bases], np.array(ref.pos))
        if k is None:
            return None
        base = bases[k]
        instruction = self.phrase(rng, a=a.label, base=base.label, rel=PHRASES[relation], ref=ref.label)
        return Episode(objects, instruction, target=0, place_xy=base.pos,
                       place_height=base.size[2] + a.size[2] / 2 + 0.006,
                       details={"relation": relation, "reference": 1, "base": 2 + k, "other": 3 - k})

    def lookalikes(self, episode: Episode) -> list[dict]:
        return [{"target": 0, "place_xy": episode.objects[c].pos, "place_height": episode.place_height}
                for c in (2, 3)]  # the two identical bases

    def success(self, env: SceneState) -> bool:
        ep = env.episode
        a, b = env.object_position(0), env.object_position(ep.details["base"])
        top = b[2] + ep.objects[ep.details["base"]].size[2] / 2 + ep.objects[0].size[2] / 2
        on_top = float(np.linalg.norm(a[:2] - b[:2])) < ep.objects[ep.details["base"]].size[0] / 2 and abs(a[2] - top) < 0.008
        return on_top and placed(env, 0) and resting_on_table(env, ep.details["base"])
