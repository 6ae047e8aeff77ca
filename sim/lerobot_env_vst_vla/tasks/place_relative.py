"""Put an object at a named side of a reference object."""

from __future__ import annotations

import numpy as np

from ..scene import CONTAINERS, ObjectSpec
from .base import (Episode, SceneState, TaskFamily, in_workspace, is_free, place_objects, placed, random_color, random_graspable,
                   resting_on_table)
from .pick_relation import PHRASES
from .relations import DIRECTIONS, distance, holds

GAP = 0.035  # free space the expert leaves between the two footprints
SUCCESS_MARGIN = 0.03  # the relation must hold by this much (metres); layouts start with it false at margin 0


class PlaceRelative(TaskFamily):
    name = "place_relative"
    templates = ("put the {a} {rel} the {b}", "place the {a} {rel} the {b}",
                 "move the {a} so that it is {rel} the {b}", "set the {a} down {rel} the {b}")

    def sample(self, rng: np.random.Generator) -> Episode | None:
        a = random_graspable(rng)
        b = (ObjectSpec(CONTAINERS[rng.integers(2)], random_color(rng, (a.color,)), "small", (0.0, 0.0))
             if rng.random() < 0.4 else random_graspable(rng, random_color(rng, (a.color,))))
        distractors = [random_graspable(rng, random_color(rng, (a.color, b.color))) for _ in range(rng.integers(0, 3))]
        objects = [a, b, *distractors]
        if not place_objects(rng, objects):
            return None
        relation = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
        if holds(relation, a.pos, b.pos, margin=0.0):
            return None  # already (nearly) done: not a task; success needs SUCCESS_MARGIN on top of this

        goal = np.array(b.pos) + DIRECTIONS[relation] * (a.footprint_radius + b.footprint_radius + GAP)
        if not in_workspace(goal, margin=a.footprint_radius * 0.5) or not is_free(objects, goal, a.footprint_radius, ignore=(0,)):
            return None
        instruction = self.phrase(rng, a=a.label, rel=PHRASES[relation], b=b.label)
        return Episode(objects, instruction, target=0, place_xy=(float(goal[0]), float(goal[1])),
                       place_height=a.size[2] / 2 + 0.004, details={"relation": relation, "reference": 1})

    def lookalikes(self, episode: Episode) -> list[dict]:
        """The same place on each side of the reference that stays on the table: blind to the direction word."""
        a, b = episode.objects[0], episode.objects[1]
        out = []
        for relation, u in DIRECTIONS.items():
            goal = np.array(b.pos) + u * (a.footprint_radius + b.footprint_radius + GAP)
            if relation == episode.details["relation"] or in_workspace(goal, margin=a.footprint_radius * 0.5):
                out.append({"target": 0, "place_xy": (float(goal[0]), float(goal[1])),
                            "place_height": episode.place_height})
        return out

    def success(self, env: SceneState) -> bool:
        ep = env.episode
        a, b = env.object_position(0)[:2], env.object_position(1)[:2]
        near = distance(a, b) < ep.objects[0].footprint_radius + ep.objects[1].footprint_radius + 0.1
        return (holds(ep.details["relation"], a, b, margin=SUCCESS_MARGIN) and near and placed(env, 0)
                and resting_on_table(env, 0))
