"""Scenes from the MuJoCo sim: one env, reset per scene, views rendered at chosen arm poses.

The arm is posed kinematically (joint angles set, `mj_forward`, no physics), so a view costs one
render and its ground truth is exact. Clips are kinematic too: the `tour` clip hovers the gripper over
a few objects in turn, the `pick_place` clip carries one object to a free spot (the object follows the
grasp site). That keeps a fully rendered scene (3 views, 2 clips, ~40 renders at 320x240) at about
0.3 s on one CPU core; real physics rollouts come from collected episodes (`episodes.py`).
"""

from __future__ import annotations

import mujoco
import numpy as np

from lerobot_env_vst_vla import FAMILIES, SpatialTabletopEnv
from lerobot_env_vst_vla.robot import JOINT_NAMES, DlsIK
from lerobot_env_vst_vla.scene import COLORS, GRASPABLE, ObjectSpec, SceneOptions
from lerobot_env_vst_vla.tasks.base import WORKSPACE_X, WORKSPACE_Y, Episode, is_free, place_objects

from .context import Balancer, Camera, Clip, Obj, SceneContext, View, referring_names

GRIPPER_OPEN, GRIPPER_HOLD = 1.0, 0.3  # radians of the gripper joint (hold: jaws on a ~3 cm object)
HOVER_Z, TRANSIT_Z = 0.075, 0.15  # gripper height above the table when visiting / between objects
IK_ITERS = 10  # warm-started; the ground truth is read back from the sim, so IK need not be exact
N_WRIST_POSES = 48
CLUTTER_SHARE = 0.5  # scenes with 3-6 random objects instead of a task family's layout
CARRY_X = (0.1, 0.33)  # where a carried object may be put down (the front camera sees the whole range)


class SimScenes:
    """Builds `SceneContext`s (`context(seed, balance)`) from reused envs, one per task family."""

    def __init__(self, width: int = 320, height: int = 240, families: list[str] | None = None):
        self.families = list(families or sorted(FAMILIES))
        unknown = set(self.families) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown task families {sorted(unknown)}; known: {sorted(FAMILIES)}")
        self.envs: dict[str, SpatialTabletopEnv] = {}  # one per family, made on first use
        self.width, self.height = width, height
        self._wrist_poses: list[np.ndarray] | None = None

    def warm_up(self) -> None:
        """Create every family's env and GL context and solve the wrist poses (start-up cost)."""
        for seed in range(len(self.families)):
            ctx = self.context(seed, Balancer(np.random.default_rng(0)))
            ctx.front  # noqa: B018  (renders)
            ctx.view("wrist")

    def close(self) -> None:
        for env in self.envs.values():
            env.close()

    def context(self, seed: int, balance: Balancer, scene_id: str | None = None, split: str = "train") -> SceneContext:
        """The scene of `seed`: a task family's episode layout, or (CLUTTER_SHARE) 3-6 random objects.

        Splits are kept apart by their seeds (`generate.scene_seed`); `split` is not needed here."""
        family = self.families[seed % len(self.families)]
        if family not in self.envs:
            self.envs[family] = SpatialTabletopEnv(task=family, obs_type="agent_pos", observation_width=self.width,
                                                   observation_height=self.height)
        env = self.envs[family]
        env.reset(seed=int(seed))
        rng = np.random.default_rng([seed, 7])
        layout = "clutter" if rng.random() < CLUTTER_SHARE and _clutter(env, rng) else family
        provider = _SimScene(self, env, rng, balance)
        meta = {"source": "sim", "seed": int(seed), "family": family, "layout": layout}
        return SceneContext(scene_id or f"s{seed}", provider, balance, meta)

    def wrist_poses(self, env: SpatialTabletopEnv) -> list[np.ndarray]:
        """Arm poses (5 joint angles) whose wrist camera looks at the workspace; solved once per process."""
        if self._wrist_poses is None:
            rng = np.random.default_rng(0)
            poses, q = [], env.joint_positions()[:5]
            for _ in range(N_WRIST_POSES):
                grip = np.array([rng.uniform(0.04, 0.2), rng.uniform(-0.14, 0.14), rng.uniform(0.1, 0.2)])
                look = np.array([rng.uniform(*WORKSPACE_X), rng.uniform(*WORKSPACE_Y)])
                yaw = float(np.arctan2(look[1] - grip[1], look[0] - grip[0]) + rng.uniform(-0.3, 0.3))
                arm, _ = env.ik.solve(q, grip, DlsIK.top_down(yaw), iters=30)
                arm[3] += rng.uniform(-0.25, 0.35)  # tilt the wrist: more varied views
                poses.append(np.clip(arm, env.ik.lo, env.ik.hi))
            self._wrist_poses = poses
        return self._wrist_poses


class _SimScene:
    """The provider for one reset env: renders views and clips, restoring the rest state after each."""

    def __init__(self, scenes: SimScenes, env: SpatialTabletopEnv, rng: np.random.Generator, balance: Balancer):
        self.scenes, self.env, self.rng, self.balance = scenes, env, rng, balance
        self.rest = env.data.qpos.copy()
        self.qadr = np.array([env.model.joint(j).qposadr[0] for j in JOINT_NAMES])
        wrist = scenes.wrist_poses(env)
        picks = rng.choice(len(wrist), size=2, replace=False)
        # jitter the solved poses so that no two scenes share a wrist view (or a camera pair)
        self.wrist_arms = [np.clip(wrist[k] + rng.uniform(-0.08, 0.08, 5), env.ik.lo, env.ik.hi) for k in picks]

    # ---------------------------------------------------------------- provider API
    def objects(self) -> list[Obj]:
        return [Obj.from_gt(o) for o in self.env.ground_truth().objects]

    def view(self, name: str) -> View:
        env = self.env
        if name == "front":
            self._pose(None)
            return self._render("front", "front", depth=True, seg=True)
        if name in ("wrist", "wrist2"):
            self._pose(self.wrist_arms[name == "wrist2"])
            view = self._render("wrist", name, depth=name == "wrist", seg=name == "wrist")
            env.data.qpos[:] = self.rest
            return view
        raise KeyError(f"unknown view {name!r}")

    def clip(self, name: str) -> Clip | None:
        try:
            return {"tour": self._tour, "pick_place": self._pick_place}[name]()
        finally:
            self.env.data.qpos[:] = self.rest
            mujoco.mj_forward(self.env.model, self.env.data)

    # ---------------------------------------------------------------- rendering
    def _pose(self, arm: np.ndarray | None, gripper: float | None = None) -> None:
        d = self.env.data
        d.qpos[:] = self.rest
        if arm is not None:
            d.qpos[self.qadr[:5]] = arm
        if gripper is not None:
            d.qpos[self.qadr[5]] = gripper
        mujoco.mj_forward(self.env.model, d)

    def _render(self, camera: str, key: str, depth: bool = False, seg: bool = False) -> View:
        env = self.env
        gt = env.ground_truth()
        return View(key=key, camera=Camera.from_gt(gt.cameras[camera]), rgb=env.render_camera(camera),
                    objects=[Obj.from_gt(o) for o in gt.objects],
                    depth=env.render_camera(camera, "depth") if depth else None,
                    seg=env.render_camera(camera, "segmentation") if seg else None)

    def _ik(self, q: np.ndarray, xyz: np.ndarray) -> np.ndarray:
        yaw = float(np.arctan2(xyz[1], xyz[0]))  # radial, as the expert grasps
        arm, _ = self.env.ik.solve(q, np.asarray(xyz, float), DlsIK.top_down(yaw), iters=IK_ITERS)
        return arm

    # ---------------------------------------------------------------- clips
    def _referable(self) -> list[int]:
        return [k for k, name in enumerate(referring_names(self.objects())) if name]

    def _tour(self) -> Clip | None:
        """The gripper hovers over 2-3 objects in turn, raised in between; frames at every stop."""
        env, rng = self.env, self.rng
        named = self._referable()
        if len(named) < 2:
            return None
        visits = [int(k) for k in rng.permutation(named)[:3]]
        pos = [env.object_position(k) for k in range(len(env.episode.objects))]
        # start high at one side, the wrist camera looking off the table: objects then come into view
        side = float(rng.choice([-1.0, 1.0]))
        start = np.array([rng.uniform(0.05, 0.1), side * rng.uniform(0.1, 0.16), TRANSIT_Z + 0.03])
        q = env.joint_positions()[:5]
        arm, _ = env.ik.solve(q, start, DlsIK.top_down(side * rng.uniform(1.2, 1.8)), iters=30)
        keys, prev = [arm], start
        for k in visits:
            hover = np.array([pos[k][0], pos[k][1], pos[k][2] + HOVER_Z])
            mid = np.array([(prev[0] + hover[0]) / 2, (prev[1] + hover[1]) / 2, TRANSIT_Z])
            keys += [self._ik(keys[-1], mid), self._ik(keys[-1], hover)]
            prev = hover
        front, wrist = [], []
        for i, arm in enumerate(keys):
            self._pose(arm, GRIPPER_OPEN)
            front.append(self._render("front", f"tour_front{i}", seg=i == 0))
            wrist.append(self._render("wrist", f"tour_wrist{i}", seg=True))
        return Clip(front, wrist, {"visits": visits, "stops": [2 * (i + 1) for i in range(len(visits))]})

    def _pick_place(self) -> Clip | None:
        """Carry one graspable object to a free spot; the direction is balanced over the four sides."""
        env, rng = self.env, self.rng
        objects = env.episode.objects
        graspable = [k for k in self._referable() if objects[k].shape in GRASPABLE]
        if not graspable:
            return None
        target = int(rng.choice(graspable))
        start = env.object_position(target)
        # the front camera looks along -x: image-left is -y, "toward the camera" is +x
        units = {"left": (0, -1), "right": (0, 1), "toward": (1, 0), "away": (-1, 0)}
        first = self.balance.pick(("pick_place", "direction"), tuple(units), final=True)
        goal = None
        for direction in [first, *rng.permutation([d for d in units if d != first])]:
            for dist in rng.permutation(np.linspace(0.06, 0.13, 8)):
                xy = start[:2] + dist * np.array(units[direction], float) + rng.uniform(-0.01, 0.01, 2)
                inside = CARRY_X[0] <= xy[0] <= CARRY_X[1] and WORKSPACE_Y[0] <= xy[1] <= WORKSPACE_Y[1]
                if inside and is_free(objects, xy, objects[target].footprint_radius, ignore=(target,)):
                    goal = np.array([xy[0], xy[1], start[2]])
                    break
            if goal is not None:
                break
        if goal is None:
            return None
        adr = env.model.joint(objects[target].name).qposadr[0]
        body0 = self.rest[adr : adr + 3].copy()
        lift = np.array([0.0, 0.0, TRANSIT_Z - start[2]])
        grip = np.array([0.0, 0.0, 0.002])  # the grasp point sits just above the object's centre
        # (gripper target, gripper opening, where the object's centre is; None: where it rests)
        plan = [(None, GRIPPER_OPEN, None), (start + lift, GRIPPER_OPEN, None), (start + grip, GRIPPER_HOLD, start),
                (start + lift, GRIPPER_HOLD, start + lift - grip), (goal + lift, GRIPPER_HOLD, goal + lift - grip),
                (goal + grip, GRIPPER_OPEN, goal), (goal + lift, GRIPPER_OPEN, goal)]
        front, arm = [], env.joint_positions()[:5]
        for i, (xyz, opening, obj_at) in enumerate(plan):
            if xyz is not None:
                arm = self._ik(arm, xyz)
            self._pose(None if xyz is None else arm, opening)
            if obj_at is not None:  # the carried object's body moves with the grasp point
                env.data.qpos[adr : adr + 3] = body0 + (np.asarray(obj_at) - start)
                mujoco.mj_forward(env.model, env.data)
            front.append(self._render("front", f"pick_place{i}", seg=i in (0, len(plan) - 1)))
        return Clip(front, [], {"moved": target, "direction": direction})


def _clutter(env: SpatialTabletopEnv, rng: np.random.Generator) -> bool:
    """Swap the reset episode's objects for 3-6 random ones, keeping its lights and camera jitter.

    Task layouts are few and patterned (twins, 2-4 objects); the spatial data also wants busier,
    less regular tables. False (scene unchanged) if the objects did not fit.
    """
    objects = []
    for _ in range(int(rng.integers(3, 7))):
        shape = ("cube", "cylinder", "sphere", "cube", "cylinder", "sphere", "bowl", "plate")[rng.integers(8)]
        size = "small" if shape in ("bowl", "plate") or rng.random() < 0.5 else "large"
        color = list(COLORS)[rng.integers(len(COLORS))]
        objects.append(ObjectSpec(shape, color, size, (0.0, 0.0), yaw=float(rng.uniform(-np.pi, np.pi))))
    containers = [o for o in objects if o.shape in ("bowl", "plate")]
    if len(containers) > 2 or not place_objects(rng, objects):
        return False
    m = env.model
    cam = m.camera("front").id
    saved = (m.cam_pos[cam].copy(), m.cam_quat[cam].copy(), m.light_diffuse.copy(),
             m.geom_rgba[m.geom("table").id].copy())
    env.scene.arrange(env.data, objects, SceneOptions())
    m.cam_pos[cam], m.cam_quat[cam], m.light_diffuse[:], m.geom_rgba[m.geom("table").id] = saved
    env.episode = Episode(objects, instruction="", target=0)
    mujoco.mj_forward(m, env.data)
    return True


