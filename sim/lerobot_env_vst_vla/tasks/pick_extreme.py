"""Pick the one object of a look-alike group that is extreme along a spatial axis or in size."""

from __future__ import annotations

import numpy as np

from ..scene import ObjectSpec
from .base import Episode, SceneState, TaskFamily, lifted, place_objects, random_color, random_graspable
from .relations import MARGIN

FRONT_CAMERA_XYZ = np.array([0.45, 0.0, 0.3])  # nominal; jitter (≤1.2 cm) stays well inside MARGIN
CRITERIA = {  # criterion -> (phrase placement, score to maximise)
    "nearest to the camera": lambda o: -np.linalg.norm(np.array([*o.pos, 0.0]) - FRONT_CAMERA_XYZ),
    "farthest from the camera": lambda o: np.linalg.norm(np.array([*o.pos, 0.0]) - FRONT_CAMERA_XYZ),
    "leftmost": lambda o: -o.pos[1],
    "rightmost": lambda o: o.pos[1],
    "largest": lambda o: o.size[2] * 10 + o.size[0],
    "smallest": lambda o: -(o.size[2] * 10 + o.size[0]),
}
PREFIX = {"leftmost", "rightmost", "largest", "smallest"}


class PickExtreme(TaskFamily):
    name = "pick_extreme"
    templates = ("pick up the {phrase}", "grab the {phrase}", "lift the {phrase}", "take the {phrase}")

    def sample(self, rng: np.random.Generator) -> Episode | None:
        criterion = list(CRITERIA)[rng.integers(len(CRITERIA))]
        first = random_graspable(rng)
        n = int(rng.integers(2, 4))
        group = [first] + [ObjectSpec(first.shape, first.color, first.size_class, (0.0, 0.0),
                                      yaw=float(rng.uniform(-3, 3))) for _ in range(n - 1)]
        if criterion in ("largest", "smallest"):  # exactly one differs in size
            odd = "large" if criterion == "largest" else "small"
            for o in group:
                o.size_class = "small" if odd == "large" else "large"
            group[int(rng.integers(n))].size_class = odd
        distractors = [random_graspable(rng, random_color(rng, (first.color,))) for _ in range(rng.integers(0, 3))]
        objects = [*group, *distractors]
        if not place_objects(rng, objects):
            return None
        scores = np.array([CRITERIA[criterion](o) for o in group])
        order = np.argsort(-scores)
        if criterion not in ("largest", "smallest") and scores[order[0]] - scores[order[1]] < MARGIN:
            return None
        label = f"{first.color} {first.shape}"
        phrase = f"{criterion} {label}" if criterion in PREFIX else f"{label} {criterion}"
        return Episode(objects, self.phrase(rng, phrase=phrase), target=int(order[0]),
                       details={"criterion": criterion, "group": list(range(n))})

    def lookalikes(self, episode: Episode) -> list[dict]:
        return [{"target": k, "place_xy": None, "place_height": 0.0} for k in episode.details["group"]]

    def success(self, env: SceneState) -> bool:
        ep = env.episode
        others = [k for k in ep.details["group"] if k != ep.target]
        return lifted(env, ep.target) and not any(lifted(env, k) for k in others)
