"""Pick one of two identical objects, told apart only by where it is relative to a reference."""

from __future__ import annotations

import numpy as np

from ..scene import CONTAINERS, ObjectSpec
from .base import Episode, SceneState, TaskFamily, lifted, place_objects, random_color, random_graspable
from .relations import DIRECTIONS, MARGIN, distance, holds

RELATIONS = (*DIRECTIONS, "nearest to", "farthest from")
PHRASES = {"left of": "to the left of", "right of": "to the right of", "in front of": "in front of",
           "behind": "behind", "nearest to": "nearest to", "farthest from": "farthest from"}


def pick_by_relation(relation: str, candidates: list[np.ndarray], ref_xy: np.ndarray) -> int | None:
    """Index of the unique candidate that satisfies `relation` to the reference, else None."""
    if relation in DIRECTIONS:
        hits = [k for k, xy in enumerate(candidates) if holds(relation, xy, ref_xy)]
        # every other candidate lies clearly on the opposite side, so no reading makes it an answer
        along = [float((xy - ref_xy) @ DIRECTIONS[relation]) for xy in candidates]
        others_clear = all(along[k] < 0 for k in range(len(candidates)) if k not in hits)
        return hits[0] if len(hits) == 1 and others_clear else None
    d = np.array([distance(xy, ref_xy) for xy in candidates])
    order = np.argsort(d if relation == "nearest to" else -d)
    return int(order[0]) if abs(d[order[0]] - d[order[1]]) > MARGIN else None


class PickByRelation(TaskFamily):
    name = "pick_relation"
    templates = ("pick up the {target} {rel} the {ref}",
                 "grab the {target} that is {rel} the {ref}",
                 "lift the {target} {rel} the {ref}",
                 "find the {target} {rel} the {ref} and pick it up")

    def sample(self, rng: np.random.Generator) -> Episode | None:
        twin = random_graspable(rng)
        twins = [twin, ObjectSpec(twin.shape, twin.color, twin.size_class, (0.0, 0.0), yaw=float(rng.uniform(-3, 3)))]
        ref_shape = CONTAINERS[rng.integers(2)] if rng.random() < 0.5 else None
        ref = (ObjectSpec(ref_shape, random_color(rng, (twin.color,)), "small", (0.0, 0.0)) if ref_shape
               else random_graspable(rng, random_color(rng, (twin.color,))))
        distractors = [random_graspable(rng, random_color(rng, (twin.color, ref.color)))
                       for _ in range(rng.integers(0, 3))]
        objects = [ref, *twins, *distractors]
        if not place_objects(rng, objects):
            return None
        relation = RELATIONS[rng.integers(len(RELATIONS))]
        k = pick_by_relation(relation, [np.array(o.pos) for o in twins], np.array(ref.pos))
        if k is None:
            return None
        instruction = self.phrase(rng, target=twin.label, rel=PHRASES[relation], ref=ref.label)
        return Episode(objects, instruction, target=1 + k,
                       details={"relation": relation, "reference": 0, "twin": 2 - k})

    def lookalikes(self, episode: Episode) -> list[dict]:
        return [{"target": k, "place_xy": None, "place_height": 0.0} for k in (1, 2)]  # the twins

    def success(self, env: SceneState) -> bool:
        ep = env.episode
        return lifted(env, ep.target) and not lifted(env, ep.details["twin"])
