"""What every task family shares: the episode description, layout sampling and state checks."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np

from ..scene import COLORS, GRASPABLE, ObjectSpec, rest_height

# Table area the SO-101 reaches with a top-down grasp (robot base at the origin, facing +x).
WORKSPACE_X = (0.14, 0.29)
WORKSPACE_Y = (-0.15, 0.15)
CLEARANCE = 0.012  # gap kept between object footprints


@dataclass
class Episode:
    objects: list[ObjectSpec]
    instruction: str
    target: int  # index into objects: the one to pick
    place_xy: tuple[float, float] | None = None  # None: the task ends with the target lifted
    place_height: float = 0.0  # height of the target's centre above the table at release
    details: dict = field(default_factory=dict)  # family-specific ground truth (reference, relation, ...)


class SceneState(Protocol):
    """All that success predicates read of a scene (SpatialTabletopEnv provides it): the episode and,
    per object index k into `episode.objects`, its position and whether the gripper holds or held it."""

    episode: Episode

    def object_position(self, k: int) -> np.ndarray:
        """World position (m) of object k's body."""

    def is_held(self, k: int) -> bool:
        """Both jaw pads touch object k now."""

    def was_lifted(self, k: int) -> bool:
        """The gripper lifted object k at some step of this episode."""


class TaskFamily(abc.ABC):
    """A family of spatial tasks: samples episodes (with paraphrased instructions) and checks success."""

    name: ClassVar[str]
    templates: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator) -> Episode | None:
        """An episode whose instruction has exactly one correct target, or None to resample."""

    @abc.abstractmethod
    def success(self, env: SceneState) -> bool:
        """Whether the current state completes the instruction; the env calls it a success only once it
        has held, with the target at rest, for `SUCCESS_HOLD_STEPS` consecutive steps."""

    def lookalikes(self, episode: Episode) -> list[dict]:
        """What an agent blind to the instruction's spatial words cannot tell apart: a list of
        {target, place_xy, place_height} choices, the correct one among them (the blind-expert baseline)."""
        return [{"target": episode.target, "place_xy": episode.place_xy, "place_height": episode.place_height}]

    def phrase(self, rng: np.random.Generator, **slots) -> str:
        return self.templates[rng.integers(len(self.templates))].format(**slots)


def random_color(rng: np.random.Generator, exclude: tuple[str, ...] = ()) -> str:
    choices = [c for c in COLORS if c not in exclude]
    return choices[rng.integers(len(choices))]


def random_graspable(rng: np.random.Generator, color: str | None = None) -> ObjectSpec:
    shape = GRASPABLE[rng.integers(len(GRASPABLE))]
    return ObjectSpec(shape, color or random_color(rng), ("small", "large")[rng.integers(2)], (0.0, 0.0),
                      yaw=float(rng.uniform(-np.pi, np.pi)))


def place_objects(rng: np.random.Generator, objects: list[ObjectSpec], tries: int = 200,
                  keep_free: list[tuple[tuple[float, float], float]] = ()) -> bool:
    """Give every object a collision-free table position (in place); False if the sampler gave up.

    Objects whose `pos` is already set away from the origin keep it. `keep_free` lists (xy, radius)
    discs that must stay empty, e.g. where the expert will put something down.
    """
    placed: list[tuple[np.ndarray, float]] = [(np.asarray(xy), r) for xy, r in keep_free]
    for obj in objects:
        if obj.pos != (0.0, 0.0):
            placed.append((np.asarray(obj.pos), obj.footprint_radius))
    for obj in objects:
        if obj.pos != (0.0, 0.0):
            continue
        r = obj.footprint_radius
        for _ in range(tries):
            xy = np.array([rng.uniform(WORKSPACE_X[0] + r * 0.5, WORKSPACE_X[1] - r * 0.5),
                           rng.uniform(WORKSPACE_Y[0] + r, WORKSPACE_Y[1] - r)])
            if all(np.linalg.norm(xy - p) > r + pr + CLEARANCE for p, pr in placed):
                obj.pos = (float(xy[0]), float(xy[1]))
                placed.append((xy, r))
                break
        else:
            return False
    return True


def is_free(objects: list[ObjectSpec], xy, radius: float, ignore: tuple[int, ...] = ()) -> bool:
    return all(np.linalg.norm(np.asarray(xy) - np.asarray(o.pos)) > radius + o.footprint_radius + CLEARANCE
               for k, o in enumerate(objects) if k not in ignore)


def in_workspace(xy, margin: float = 0.0) -> bool:
    return (WORKSPACE_X[0] + margin <= xy[0] <= WORKSPACE_X[1] - margin
            and WORKSPACE_Y[0] + margin <= xy[1] <= WORKSPACE_Y[1] - margin)


def resting_on_table(env: SceneState, k: int, tol: float = 0.006) -> bool:
    obj = env.episode.objects[k]
    return abs(env.object_position(k)[2] - rest_height(obj.shape, obj.size)) < tol and not env.is_held(k)


def lifted(env: SceneState, k: int, height: float = 0.04) -> bool:
    obj = env.episode.objects[k]
    return env.object_position(k)[2] > rest_height(obj.shape, obj.size) + height and env.is_held(k)


def placed(env: SceneState, k: int) -> bool:
    """Object k was carried by the gripper this episode and is now released: what "put" asks for.

    Without the carry a push, or an arm flailing at random, could move an object into the goal.
    """
    return env.was_lifted(k) and not env.is_held(k)
