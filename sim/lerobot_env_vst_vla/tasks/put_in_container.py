"""Put an object into the one of two look-alike containers picked out by a spatial relation."""

from __future__ import annotations

import numpy as np

from ..scene import ObjectSpec
from .base import Episode, SceneState, TaskFamily, place_objects, placed, random_color, random_graspable
from .pick_relation import PHRASES, RELATIONS, pick_by_relation


class PutInContainer(TaskFamily):
    name = "put_in_container"
    templates = ("put the {a} {prep} the {container} {rel} the {ref}",
                 "place the {a} {prep} the {container} {rel} the {ref}",
                 "drop the {a} {prep} the {container} that is {rel} the {ref}")

    def sample(self, rng: np.random.Generator) -> Episode | None:
        kind = ("bowl", "plate")[rng.integers(2)]
        color = random_color(rng)
        containers = [ObjectSpec(kind, color, "small", (0.0, 0.0)) for _ in range(2)]
        a = random_graspable(rng, random_color(rng, (color,)))
        ref = random_graspable(rng, random_color(rng, (color, a.color)))
        objects = [a, ref, *containers]
        if not place_objects(rng, objects):
            return None
        relation = RELATIONS[rng.integers(len(RELATIONS))]
        k = pick_by_relation(relation, [np.array(c.pos) for c in containers], np.array(ref.pos))
        if k is None:
            return None
        chosen = containers[k]
        floor = 0.006 if kind == "bowl" else chosen.size[2]
        instruction = self.phrase(rng, a=a.label, prep="in" if kind == "bowl" else "on",
                                  container=f"{color} {kind}", rel=PHRASES[relation], ref=ref.label)
        return Episode(objects, instruction, target=0, place_xy=chosen.pos,
                       place_height=floor + a.size[2] / 2 + 0.012,
                       details={"relation": relation, "reference": 1, "container": 2 + k, "other": 3 - k})

    def lookalikes(self, episode: Episode) -> list[dict]:
        return [{"target": 0, "place_xy": episode.objects[c].pos, "place_height": episode.place_height}
                for c in (2, 3)]  # the two identical containers

    def success(self, env: SceneState) -> bool:
        ep = env.episode
        return self._inside(env, ep.details["container"]) and placed(env, 0)

    @staticmethod
    def _inside(env: SceneState, c: int) -> bool:
        obj, container = env.episode.objects[0], env.episode.objects[c]
        a, p = env.object_position(0), env.object_position(c)
        radius = container.size[0] / 2 - 0.01
        top = p[2] + container.size[2] + obj.size[2]  # bowl/plate body frames sit at their bases
        return float(np.linalg.norm(a[:2] - p[:2])) < radius and a[2] < top
