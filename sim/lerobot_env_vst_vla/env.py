"""The gymnasium environment: one SO-101 tabletop, any task family, two cameras.

Observations follow LeRobot's convention (`pixels` = {camera: HxWx3 uint8}, `agent_pos` = the six
joint positions in so101_follower units). Actions are either absolute joint targets in those units
(`joint`, what a policy trained here sends to the real arm) or end-effector deltas through IK
(`ee_delta`: dx, dy, dz in metres and a gripper opening in [0, 1]; `ee_delta_yaw` adds a wrist-yaw
delta in radians before the gripper).
"""

from __future__ import annotations

import atexit
import weakref
from dataclasses import dataclass

import gymnasium as gym
import mujoco
import numpy as np

from .robot import JOINT_NAMES, DlsIK, from_so101_units, to_so101_units
from .scene import CAMERAS, Scene, SceneGT, SceneOptions, build_model, scene_gt
from .tasks import FAMILIES
from .tasks.base import Episode, TaskFamily

HOME_Q = np.array([0.0, -1.2, 1.05, 1.25, 0.0, 1.0])  # radians: arm raised over the table, jaws open
GRIPPER_OPEN, GRIPPER_CLOSED = 1.0, -0.15  # radians of the gripper joint
MAX_EE_STEP = 0.02  # metres per control step in ee_delta mode
MAX_YAW_STEP = 0.15  # radians per control step in ee_delta_yaw mode
ACTION_NAMES = {
    "joint": ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos", "gripper.pos"],
    "ee_delta": ["dx", "dy", "dz", "gripper_open"],
    "ee_delta_yaw": ["dx", "dy", "dz", "dyaw", "gripper_open"],
}
EE_BOUNDS = (np.array([0.06, -0.3, 0.005]), np.array([0.4, 0.3, 0.3]))  # reachable box for ee_delta targets
# Success means the goal state *holds*: the family's predicate true, the target at rest, for this many
# consecutive control steps (1/3 s at 30 fps). Passing through the goal or falling into it does not count.
SUCCESS_HOLD_STEPS = 10
REST_SPEED = 0.03  # m/s: the target counts as at rest below this speed


# GL contexts must be released before MuJoCo's own atexit hook terminates the EGL display; atexit
# runs hooks last-in first-out, so ours is registered after the first renderer exists.
_LIVE_ENVS: weakref.WeakSet = weakref.WeakSet()
_atexit_registered = False


def _close_all_envs() -> None:
    for env in list(_LIVE_ENVS):
        env.close()


@dataclass
class Randomization:
    camera_jitter: float = 0.012  # metres, uniform per axis
    camera_tilt: float = 0.03  # radians
    light: tuple[float, float] = (0.7, 1.2)
    table_tint: float = 0.08


class SpatialTabletopEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, task: str = "pick_relation", obs_type: str = "pixels_agent_pos",
                 action_space: str = "joint", cameras: tuple[str, ...] = CAMERAS,
                 observation_width: int = 224, observation_height: int = 224, fps: int = 30,
                 episode_length: int = 300, robot_variant: str = "primitives", randomize: bool = True,
                 max_relative_target: float | None = None, render_mode: str = "rgb_array"):
        if task not in FAMILIES:
            raise ValueError(f"unknown task {task!r}; known task families: {sorted(FAMILIES)}")
        if obs_type not in ("pixels_agent_pos", "agent_pos"):
            raise ValueError(f"unknown obs_type {obs_type!r}: use 'pixels_agent_pos' or 'agent_pos'")
        if action_space not in ACTION_NAMES:
            raise ValueError(f"unknown action_space {action_space!r}; known: {list(ACTION_NAMES)}")
        unknown = set(cameras) - set(CAMERAS)
        if unknown:
            raise ValueError(f"unknown cameras {sorted(unknown)}; available: {CAMERAS}")
        self.family: TaskFamily = FAMILIES[task]()
        self.task = task
        self.obs_type, self.action_mode, self.cameras = obs_type, action_space, tuple(cameras)
        self.width, self.height, self.fps = observation_width, observation_height, fps
        self.render_mode = render_mode
        self.randomize = randomize
        self.max_relative_target = max_relative_target
        self._max_episode_steps = episode_length
        self.metadata = {**self.metadata, "render_fps": fps}

        self.model = build_model(robot_variant)
        self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, self.width)
        self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, self.height)
        # as many 2 ms-ish substeps as fit one control period exactly
        self.n_substeps = int(np.ceil(1.0 / (fps * 0.002)))
        self.model.opt.timestep = 1.0 / (fps * self.n_substeps)
        self.data = mujoco.MjData(self.model)
        self.scene = Scene(self.model)
        self.ik = DlsIK(self.model)
        self._qadr = np.array([self.model.joint(j).qposadr[0] for j in JOINT_NAMES])
        self._pad_geoms = {self.model.geom("fixed_jaw_pad").id, self.model.geom("moving_jaw_pad").id}
        self._renderer: mujoco.Renderer | None = None
        _LIVE_ENVS.add(self)
        self.episode: Episode | None = None
        self._ee_target = np.zeros(3)
        self._ee_yaw = 0.0  # jaw yaw relative to the arm's radial direction (ee_delta_yaw)
        self._steps = 0
        self._goal_streak = 0  # consecutive steps the goal predicate held with the target at rest
        self.lifted_objects: list[int] = []  # objects the gripper has lifted this episode, in order

        joint_lo, joint_hi = to_so101_units(self.model.jnt_range[[self.model.joint(j).id for j in JOINT_NAMES]].T)
        self._joint_low, self._joint_high = joint_lo.astype(np.float32), joint_hi.astype(np.float32)
        if action_space == "joint":
            self.action_space = gym.spaces.Box(self._joint_low, self._joint_high, dtype=np.float32)
        else:
            yaw = [MAX_YAW_STEP] if action_space == "ee_delta_yaw" else []
            self.action_space = gym.spaces.Box(np.array([-MAX_EE_STEP] * 3 + [-y for y in yaw] + [0.0], np.float32),
                                               np.array([MAX_EE_STEP] * 3 + yaw + [1.0], np.float32))
        spaces = {"agent_pos": gym.spaces.Box(-np.inf, np.inf, (6,), np.float64)}
        if obs_type == "pixels_agent_pos":
            spaces["pixels"] = gym.spaces.Dict({c: gym.spaces.Box(0, 255, (self.height, self.width, 3), np.uint8)
                                                for c in self.cameras})
        self.observation_space = gym.spaces.Dict(spaces)

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        episode = None
        for _ in range(1000):
            episode = self.family.sample(rng)
            if episode is not None:
                break
        if episode is None:
            raise RuntimeError(f"task {self.task!r}: could not sample a valid episode in 1000 tries")
        self.episode = episode
        mujoco.mj_resetData(self.model, self.data)
        self.scene.arrange(self.data, episode.objects, self._sample_scene_options(rng))
        self.data.qpos[self._qadr] = HOME_Q
        self.data.ctrl[:] = HOME_Q
        mujoco.mj_forward(self.model, self.data)
        for _ in range(3 * self.n_substeps):  # let objects settle on the table
            mujoco.mj_step(self.model, self.data)
        self._ee_target = self.data.site("grasp").xpos.copy()
        self._ee_yaw = 0.0
        self._steps = 0
        self._goal_streak = 0
        self.lifted_objects = []
        return self._observation(), self._info()

    def step(self, action):
        if self.episode is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action has shape {action.shape}; the {self.action_mode!r} action space "
                             f"expects {self.action_space.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN or inf: {action.tolist()}")
        success = self.advance(self._control_target(action))
        truncated = self._steps >= self._max_episode_steps
        return self._observation(), float(success), success, truncated, self._info(success)

    def advance(self, ctrl: np.ndarray | None = None) -> bool:
        """One control period of physics with actuator targets `ctrl` (radians; None keeps the last ones,
        as servos hold their goal), then the success bookkeeping. Returns whether the goal state holds.

        `step()` is `advance(<the action's targets>)` plus an observation; a robot driver that commands
        joints on its own clock (lerobot_robot_vst_sim) calls this directly."""
        if self.episode is None:
            raise RuntimeError("call reset() before advance()")
        if ctrl is not None:
            lo, hi = self.model.actuator_ctrlrange.T
            self.data.ctrl[:] = np.clip(np.asarray(ctrl, dtype=np.float64), lo, hi)
        for _ in range(self.n_substeps):
            mujoco.mj_step(self.model, self.data)
        self._steps += 1
        self._track_lifted()
        goal = self.family.success(self) and self.object_speed(self.episode.target) < REST_SPEED
        self._goal_streak = self._goal_streak + 1 if goal else 0
        return self._goal_streak >= SUCCESS_HOLD_STEPS

    @property
    def is_success(self) -> bool:
        """Whether the goal state has held for SUCCESS_HOLD_STEPS control periods up to now."""
        return self._goal_streak >= SUCCESS_HOLD_STEPS

    def command_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """The actuators' accepted targets in so101_follower units (degrees; gripper 0-100), joint order."""
        lo, hi = to_so101_units(self.model.actuator_ctrlrange.T.copy())
        return lo, hi

    def render(self):
        return self.render_camera("front")

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ observations and state
    @property
    def task_description(self) -> str:
        return self.episode.instruction if self.episode else ""

    def joint_positions(self) -> np.ndarray:
        """Current joint angles in radians, so101 joint order."""
        return self.data.qpos[self._qadr].copy()

    # The scene-state interface: what task predicates (tasks.base.SceneState) and the scripted expert
    # read, besides `episode`, `action_mode` and `ik`. Everything returns copies in world frame (m, rad).
    @property
    def max_episode_steps(self) -> int:
        """Steps after which an episode is truncated (`episode_length`)."""
        return self._max_episode_steps

    @property
    def ee_target(self) -> np.ndarray:
        """The ee_delta action spaces' commanded grasp point: the next delta moves it (reset: the grasp site)."""
        return self._ee_target.copy()

    @property
    def ee_yaw(self) -> float:
        """ee_delta_yaw's commanded jaw yaw relative to the arm's radial direction."""
        return self._ee_yaw

    def grasp_position(self) -> np.ndarray:
        """Where the gripper grasps: the point between the jaw pads."""
        return self.data.site("grasp").xpos.copy()

    def object_position(self, k: int) -> np.ndarray:
        """World position of object k's body (k indexes `episode.objects`)."""
        return self.data.body(self.episode.objects[k].name).xpos.copy()

    def object_orientation(self, k: int) -> np.ndarray:
        """Object k's body orientation as a quaternion (w, x, y, z)."""
        return self.data.body(self.episode.objects[k].name).xquat.copy()

    def object_speed(self, k: int) -> float:
        """Linear speed (m/s) of object k's body."""
        vel = np.zeros(6)
        body = self.model.body(self.episode.objects[k].name).id
        mujoco.mj_objectVelocity(self.model, self.data, mujoco.mjtObj.mjOBJ_BODY, body, vel, 0)
        return float(np.linalg.norm(vel[3:]))

    def was_lifted(self, k: int) -> bool:
        """Whether the gripper has lifted object k at some step of this episode (place tasks need a carry)."""
        return k in self.lifted_objects

    def _track_lifted(self) -> None:
        from .tasks.base import lifted

        for k in range(len(self.episode.objects)):
            if k not in self.lifted_objects and self.episode.objects[k].shape != "bowl" and lifted(self, k, 0.02):
                self.lifted_objects.append(k)

    def is_held(self, k: int) -> bool:
        """Both jaw pads touch object k."""
        geoms = set(self.scene.body_geoms[self.episode.objects[k].name])
        touching = set()
        for c in self.data.contact[: self.data.ncon]:
            if c.geom1 in geoms and c.geom2 in self._pad_geoms:
                touching.add(c.geom2)
            elif c.geom2 in geoms and c.geom1 in self._pad_geoms:
                touching.add(c.geom1)
        return len(touching) == 2

    def ground_truth(self) -> SceneGT:
        """Exact scene state: objects (names, sizes, poses), cameras (intrinsics, extrinsics), robot."""
        return scene_gt(self.model, self.data, self.episode.objects,
                        {c: (self.width, self.height) for c in self.cameras})

    def render_camera(self, camera: str, kind: str = "rgb") -> np.ndarray:
        """`rgb` (HxWx3 uint8), `depth` (HxW float32 metres) or `segmentation` (HxW int32 object index, -1 none)."""
        r = self._get_renderer()
        if kind == "depth":
            r.enable_depth_rendering()
        elif kind == "segmentation":
            r.enable_segmentation_rendering()
        elif kind != "rgb":
            raise ValueError(f"unknown render kind {kind!r}: use rgb, depth or segmentation")
        r.update_scene(self.data, camera)
        img = r.render()
        r.disable_depth_rendering()
        r.disable_segmentation_rendering()
        if kind == "segmentation":
            return self._segmentation_to_objects(img)
        return img.astype(np.float32) if kind == "depth" else img

    def _segmentation_to_objects(self, seg: np.ndarray) -> np.ndarray:
        geom_to_obj = np.full(self.model.ngeom + 1, -1, dtype=np.int32)
        for k, obj in enumerate(self.episode.objects):
            geom_to_obj[self.scene.body_geoms[obj.name]] = k
        ids, types = seg[..., 0], seg[..., 1]
        out = np.where((types == int(mujoco.mjtObj.mjOBJ_GEOM)) & (ids >= 0), geom_to_obj[np.clip(ids, 0, None)], -1)
        return out.astype(np.int32)

    def _get_renderer(self) -> mujoco.Renderer:
        global _atexit_registered
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.height, self.width)
            if not _atexit_registered:
                atexit.register(_close_all_envs)
                _atexit_registered = True
        return self._renderer

    def _observation(self) -> dict:
        obs = {"agent_pos": to_so101_units(self.joint_positions())}
        if self.obs_type == "pixels_agent_pos":
            obs["pixels"] = {c: self.render_camera(c) for c in self.cameras}
        return obs

    def _info(self, success: bool = False) -> dict:
        return {"is_success": bool(success), "task": self.task_description, "task_family": self.task}

    # ------------------------------------------------------------------ actions
    def _control_target(self, action: np.ndarray) -> np.ndarray:
        """Joint position targets (radians) for an action in the env's action space."""
        q_now = self.joint_positions()
        if self.action_mode == "joint":
            target = action.copy()
            if self.max_relative_target is not None:  # as so101_follower does on the real arm
                now = to_so101_units(q_now)
                target = now + np.clip(target - now, -self.max_relative_target, self.max_relative_target)
            q = from_so101_units(np.clip(target, self._joint_low, self._joint_high))
        else:
            delta = np.clip(action[:3], -MAX_EE_STEP, MAX_EE_STEP)
            # targets outside the reachable box are clamped to it (documented safe behaviour)
            self._ee_target = np.clip(self._ee_target + delta, EE_BOUNDS[0], EE_BOUNDS[1])
            if self.action_mode == "ee_delta_yaw":
                self._ee_yaw = float(np.clip(self._ee_yaw + np.clip(action[3], -MAX_YAW_STEP, MAX_YAW_STEP),
                                             -np.pi / 2, np.pi / 2))
            yaw = np.arctan2(self._ee_target[1], self._ee_target[0]) + self._ee_yaw
            arm, _ = self.ik.solve(q_now[:5], self._ee_target, DlsIK.top_down(yaw), iters=10)
            grip = GRIPPER_CLOSED + (GRIPPER_OPEN - GRIPPER_CLOSED) * float(np.clip(action[-1], 0.0, 1.0))
            q = np.concatenate([arm, [grip]])
        lo, hi = self.model.actuator_ctrlrange.T
        return np.clip(q, lo, hi)

    def _sample_scene_options(self, rng: np.random.Generator) -> SceneOptions:
        if not self.randomize:
            return SceneOptions()
        r = Randomization()
        base = np.array([0.62, 0.5, 0.38])
        return SceneOptions(
            light_scale=float(rng.uniform(*r.light)),
            camera_jitter=tuple(rng.uniform(-r.camera_jitter, r.camera_jitter, 3).tolist()),
            camera_tilt=float(rng.uniform(-r.camera_tilt, r.camera_tilt)),
            table_rgb=tuple(np.clip(base + rng.uniform(-r.table_tint, r.table_tint, 3), 0, 1).tolist()),
        )

