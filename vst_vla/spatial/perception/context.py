"""What a question generator sees: rendered views with exact ground truth, and the helpers they share.

A `SceneContext` is one tabletop scene. Its views (`front`, `wrist`, `wrist2`) and clips (`tour`,
`pick_place`) are rendered lazily by a provider (the sim, or a collected episode) the first time a
generator asks, so one scene is rendered once and then asked many questions.

Visibility is decided from the segmentation: an object is VISIBLE when enough of it shows (pixel count
and fraction of its unoccluded projected area), HIDDEN when no pixel of it shows, and PARTIAL
otherwise. Generators never ask about PARTIAL objects and skip questions whose answer depends on one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from vst_vla.spatial.boxes import MUJOCO_FROM_OPENCV, Intrinsics, project_points, unify_image_fov, world_box_to_camera
from vst_vla.spatial.draw import VST_STYLE, MarkStyle
from vst_vla.spatial.schema import SpatialSample

VISIBLE, PARTIAL, HIDDEN = "visible", "partial", "hidden"
MIN_VISIBLE_FRACTION = 0.5  # of the object's unoccluded image area that must show
# Unoccluded image area of a shape / area of its projected box's convex hull (measured in the sim).
SHAPE_FILL = {"cube": 1.0, "cylinder": 0.8, "sphere": 0.5, "bowl": 0.8, "plate": 0.78}
MIN_PIXEL_AREA = 1.0 / 1500.0  # of the image area, so thresholds scale with the image size
LETTERS = "ABCDEFGH"


@dataclass(frozen=True, eq=False)
class Camera:
    """A pinhole camera: OpenCV axes (x right, y down, z forward), world_from_camera 4x4."""

    K: np.ndarray
    world_from_camera: np.ndarray
    width: int
    height: int

    @classmethod
    def from_gt(cls, cam) -> Camera:
        get = cam.get if isinstance(cam, dict) else lambda k: getattr(cam, k)
        return cls(np.asarray(get("intrinsics"), float), np.asarray(get("world_from_camera"), float),
                   int(get("width")), int(get("height")))

    def to_dict(self) -> dict:
        return {"intrinsics": _r(self.K, 4), "world_from_camera": _r(self.world_from_camera, 5),
                "width": self.width, "height": self.height}

    @property
    def intrinsics(self) -> Intrinsics:
        return Intrinsics(self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2], self.width, self.height)

    @property
    def position(self) -> np.ndarray:
        return self.world_from_camera[:3, 3]

    @property
    def rotation(self) -> np.ndarray:
        return self.world_from_camera[:3, :3]

    def mujoco_pose(self) -> np.ndarray:
        """The pose in MuJoCo's camera convention, which `boxes.world_box_to_camera` takes."""
        pose = self.world_from_camera.copy()
        pose[:3, :3] = pose[:3, :3] @ MUJOCO_FROM_OPENCV
        return pose

    def to_camera(self, points_world) -> np.ndarray:
        p = np.atleast_2d(np.asarray(points_world, float))
        return (p - self.position) @ self.rotation

    def project(self, points_world) -> np.ndarray:
        return project_points(self.to_camera(points_world), self.intrinsics)

    def backproject(self, uv, depth: float) -> np.ndarray:
        """World point at pixel `uv` (x, y) with z-depth `depth`."""
        ray = np.linalg.solve(self.K, np.array([uv[0] + 0.5, uv[1] + 0.5, 1.0]))
        return self.position + self.rotation @ (ray * depth)

    def with_intrinsics(self, intr: Intrinsics) -> Camera:
        return Camera(intr.matrix, self.world_from_camera, intr.width, intr.height)

    def horizontal_frame(self, min_tilt: float = 0.3) -> tuple[np.ndarray, np.ndarray] | None:
        """(forward, right) unit vectors on the table plane, or None if the camera looks straight down.

        Forward is the viewing direction projected onto the table; right is forward x up, so that
        directions read as a person standing at the camera and facing that way would say them.
        """
        fwd = self.rotation[:, 2].copy()
        fwd[2] = 0.0
        n = np.linalg.norm(fwd)
        if n < min_tilt:
            return None
        fwd /= n
        return fwd, np.cross(fwd, [0.0, 0.0, 1.0])


@dataclass(eq=False)
class Obj:
    """One object's exact state at one moment (world frame)."""

    label: str
    shape: str
    color: str
    size_class: str
    size: np.ndarray  # full extents along the object's axes (m)
    position: np.ndarray  # centre (m)
    rotation: np.ndarray  # world-from-object 3x3

    @classmethod
    def from_gt(cls, o) -> Obj:
        get = o.get if isinstance(o, dict) else lambda k: getattr(o, k)
        w, x, y, z = get("quaternion")
        return cls(get("label"), get("shape"), get("color"), get("size_class"), np.asarray(get("size"), float),
                   np.asarray(get("position"), float), Rotation.from_quat([x, y, z, w]).as_matrix())

    def to_dict(self) -> dict:
        return {"label": self.label, "shape": self.shape, "color": self.color, "size_class": self.size_class,
                "size": _r(self.size, 4), "position": _r(self.position, 4), "rotation": _r(self.rotation, 4)}

    def corners(self) -> np.ndarray:
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
        return self.position + (0.5 * signs * self.size) @ self.rotation.T

    def box(self, cam: Camera) -> np.ndarray:
        """The VST box [x, y, z, xs, ys, zs, pitch, yaw, roll] in `cam`'s frame."""
        return world_box_to_camera(self.position, self.rotation, self.size, cam.mujoco_pose())


@dataclass(eq=False)
class View:
    """One rendered camera image with the scene state at that moment."""

    key: str  # unique within the scene; names the shared image file
    camera: Camera
    rgb: np.ndarray
    objects: list[Obj]
    depth: np.ndarray | None = None  # z-depth (m)
    seg: np.ndarray | None = None  # object index, -1 for none

    @cached_property
    def pixel_counts(self) -> np.ndarray:
        if self.seg is None:
            raise ValueError(f"view {self.key!r} was rendered without segmentation")
        counts = np.bincount(self.seg.ravel() + 1, minlength=len(self.objects) + 1)
        return counts[1 : len(self.objects) + 1]

    @cached_property
    def states(self) -> list[str]:
        min_px = MIN_PIXEL_AREA * self.camera.width * self.camera.height
        out = []
        for k, obj in enumerate(self.objects):
            count = int(self.pixel_counts[k])
            hull = projected_area(obj, self.camera) * SHAPE_FILL.get(obj.shape, 1.0)
            if count == 0:
                out.append(HIDDEN)
            elif count >= min_px and hull > 0 and count >= MIN_VISIBLE_FRACTION * hull:
                out.append(VISIBLE)
            else:
                out.append(PARTIAL)
        return out

    def visible(self) -> list[int]:
        return [k for k, s in enumerate(self.states) if s == VISIBLE]

    def mask(self, k: int, erode: int = 0) -> np.ndarray:
        m = (self.seg == k).astype(np.uint8)
        if erode:
            m = cv2.erode(m, np.ones((3, 3), np.uint8), iterations=erode)
        return m.astype(bool)

    def bbox2d(self, k: int) -> tuple[int, int, int, int]:
        ys, xs = np.nonzero(self.seg == k)
        return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def projected_area(obj: Obj, cam: Camera) -> float:
    """Pixel area of the convex hull of the object's projected box (0 if it is behind the camera)."""
    pc = cam.to_camera(obj.corners())
    if np.any(pc[:, 2] <= 1e-3):
        return 0.0
    uv = project_points(pc, cam.intrinsics).astype(np.float32)
    return float(cv2.contourArea(cv2.convexHull(uv)))


@dataclass(eq=False)
class Clip:
    """Frames of one motion, in time order, from the front and (optionally) the wrist camera."""

    front: list[View]
    wrist: list[View] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # what happened: visit order, moved object, ...


@dataclass(eq=False)
class Img:
    """An image a sample shows; `key` names images shared by the samples of one scene (None: unique)."""

    array: np.ndarray
    key: str | None = None


@dataclass
class GeneratedSample(SpatialSample):
    """A `SpatialSample` still holding its pixels and the reasoning steps its CoT variant uses."""

    pixels: list[Img] = field(default_factory=list, repr=False)
    steps: list[str] = field(default_factory=list, repr=False)
    layout: list[int] = field(default_factory=list, repr=False)  # objects the CoT layout lists

    def to_row(self) -> dict:
        return {k: getattr(self, k) for k in SpatialSample.__dataclass_fields__}


class Balancer:
    """Balanced choices, so that no blind guess beats chance.

    `slot(key, n)` places the correct option among n: each letter is owed 1/n per question that has
    it, and the letter owed the most is used (ties at random). Every letter's count then stays within
    about one of its share per key even when questions have different numbers of options, so always
    answering one letter scores chance. `pick(key, values)` draws content (closer/farther, the sign of
    a direction) in shuffled blocks. Picks made by an attempt that ends up discarded are put back with
    `rollback()`, so failed attempts do not skew the balance.
    """

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self._blocks: dict[tuple, list] = defaultdict(list)
        self._owed: dict[tuple, np.ndarray] = defaultdict(lambda: np.zeros(len(LETTERS)))
        self._log: list[tuple] = []

    def pick(self, key: tuple, values: list | tuple, final: bool = False):
        """A value for `key`; `final` picks (e.g. a rendered clip's setup) are never rolled back."""
        block_key = (key, tuple(values))
        block = self._blocks[block_key]
        if not block:
            block.extend(self.rng.permutation(len(values)).tolist())
        i = block.pop()
        if not final:
            self._log.append(("pick", block_key, i))
        return values[i]

    def slot(self, key: tuple, n: int) -> int:
        owed = self._owed[key]
        owed[:n] += 1.0 / n
        best = np.flatnonzero(owed[:n] >= owed[:n].max() - 1e-9)
        i = int(best[self.rng.integers(len(best))])
        owed[i] -= 1.0
        self._log.append(("slot", key, n, i))
        return i

    def begin(self) -> None:
        """Start an attempt: picks from here on can be rolled back."""
        self._log = []

    def rollback(self) -> None:
        for entry in reversed(self._log):
            if entry[0] == "pick":
                self._blocks[entry[1]].append(entry[2])
            else:
                _, key, n, i = entry
                self._owed[key][i] += 1.0
                self._owed[key][:n] -= 1.0 / n
        self._log = []


class SceneProvider(Protocol):
    """Renders a scene's views on demand (see `sim.SimScenes` and `episodes.EpisodeScenes`)."""

    def objects(self) -> list[Obj]: ...
    def view(self, name: str) -> View: ...
    def clip(self, name: str) -> Clip | None: ...


class SceneContext:
    """One scene: lazily rendered views and clips, referring expressions and the balancer."""

    VIEWS = ("front", "wrist", "wrist2")
    CLIPS = ("tour", "pick_place")

    def __init__(self, scene_id: str, provider: SceneProvider, balance: Balancer, meta: dict):
        self.scene_id, self.provider, self.balance, self.meta = scene_id, provider, balance, meta
        self.marks: MarkStyle = VST_STYLE  # how visual prompts are drawn (the generation loop sets the config's)
        self._views: dict[str, View] = {}
        self._clips: dict[str, Clip | None] = {}

    @cached_property
    def objects(self) -> list[Obj]:
        return self.provider.objects()

    def view(self, name: str) -> View:
        if name not in self._views:
            self._views[name] = self.provider.view(name)
        return self._views[name]

    def clip(self, name: str) -> Clip | None:
        if name not in self._clips:
            self._clips[name] = self.provider.clip(name)
        return self._clips[name]

    @property
    def front(self) -> View:
        return self.view("front")

    @cached_property
    def names(self) -> list[str | None]:
        return referring_names(self.objects)

    @cached_property
    def front_unified(self) -> tuple[Img, Camera]:
        """The front image resized to VST's virtual focal length, and its camera (for 3D skills)."""
        front = self.front
        image, _, intr = unify_image_fov(front.rgb, front.camera.intrinsics)
        return Img(image, f"{front.key}_unified"), front.camera.with_intrinsics(intr)

    def image(self, view: View) -> Img:
        return Img(view.rgb, view.key)


def referring_names(objects: list[Obj]) -> list[str | None]:
    """A unique noun phrase per object ("red cube", else "large red cube"), None if none is unique."""
    labels = [o.label for o in objects]
    sized = [f"{o.size_class} {o.label}" for o in objects]
    out = []
    for k in range(len(objects)):
        if labels.count(labels[k]) == 1:
            out.append(labels[k])
        elif sized.count(sized[k]) == 1:
            out.append(sized[k])
        else:
            out.append(None)
    return out


def plural(shape: str) -> str:
    return {"box": "boxes"}.get(shape, shape + "s")


def clock_hour(angle_rad: float) -> tuple[int, float]:
    """Clock hour (1..12, 12 straight ahead, 3 to the right) of a direction and its distance to the hour."""
    h = (math.degrees(angle_rad) / 30.0) % 12.0
    r = round(h)
    return (r % 12) or 12, abs(h - r)


def _r(a, nd: int):
    return np.round(np.asarray(a, float), nd).tolist()
