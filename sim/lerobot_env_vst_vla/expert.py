"""Scripted expert: a top-down pick (and place) driven by IK on privileged state.

Privileged state comes only through the env's scene-state interface (`grasp_position`,
`object_position/orientation`, `joint_positions`, `ee_target`, `ee_yaw`, `max_episode_steps`; see env.py).

It moves a commanded grasp point through waypoints at a bounded speed and returns actions in the
env's own action space, so its demonstrations are exactly what a policy has to produce.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .env import GRIPPER_CLOSED, GRIPPER_OPEN, MAX_EE_STEP, MAX_YAW_STEP, SpatialTabletopEnv
from .robot import DlsIK, from_so101_units, to_so101_units

SPEED = 0.006  # metres per control step for the commanded grasp point (0.18 m/s at 30 fps)
SLOW = 0.003  # near the table
CARRY_Z = 0.10
# pad-centre distance (m) at gripper angles (rad), measured on the model: the jaw opens along an arc
_PAD_DISTANCE = ([0.0148, 0.0302, 0.0498, 0.074, 0.0998], [0.0, 0.2, 0.46, 0.8, 1.2])


def approach_opening(width: float) -> float:
    """Gripper angle that clears an object `width` wide by ~1.5 cm: a wide-open jaw sweeps into neighbours."""
    return float(np.interp(width + 0.01 + 0.015, *_PAD_DISTANCE))


@dataclass
class Waypoint:
    xyz: np.ndarray
    gripper: float  # radians
    speed: float = SPEED
    hold: int = 0  # extra steps to stay once reached (gripper closing / opening)


class ScriptedExpert:
    """`target` / `place_xy` override the episode's (the spatially blind baseline sends the expert to a
    look-alike); by default the expert does what the instruction asks."""

    def __init__(self, env: SpatialTabletopEnv, target: int | None = None,
                 place_xy: tuple[float, float] | None = None, place_height: float | None = None):
        self.env = env
        self._target, self._place_xy, self._place_height = target, place_xy, place_height
        self.reset()

    MAX_RETRIES = 3

    def reset(self) -> None:
        env = self.env
        ep = env.episode
        self.target = ep.target if self._target is None else self._target
        self.place_xy = ep.place_xy if self._place_xy is None else self._place_xy
        self.place_height = ep.place_height if self._place_height is None else self._place_height
        self.cmd = env.grasp_position()
        self.q_arm = env.joint_positions()[:5]
        self.gripper = GRIPPER_OPEN
        self.retries = 0
        self._hold = None  # set by `take_over` at a pick's end state: the command to hold
        self._plan()

    def _plan(self) -> None:
        """Waypoints from the target's current pose: approach, grasp, lift (and carry, place, release)."""
        env = self.env
        obj = env.episode.objects[self.target]
        pos = env.object_position(self.target)
        grasp_z = max(pos[2], 0.02)  # keeps the jaws (which sweep down as they close) off the table
        self.yaw = self._grasp_yaw(obj.shape, self._object_yaw(), pos)
        above = np.array([pos[0], pos[1], CARRY_Z])
        grasp = np.array([pos[0], pos[1], grasp_z])
        opening = approach_opening(obj.size[0])
        self.plan = [Waypoint(above, opening), Waypoint(grasp, opening, SLOW, hold=2),
                     Waypoint(grasp, GRIPPER_CLOSED, SLOW, hold=10), Waypoint(above + [0, 0, 0.02], GRIPPER_CLOSED, SLOW)]
        self.release_stage = len(self.plan) + 10**6  # pick-only tasks hold the object to the end
        if self.place_xy is not None:
            # the grasp point sits at the object's centre height above its base when picked
            lift_offset = grasp_z - pos[2]
            place = np.array([*self.place_xy, self.place_height + lift_offset])
            self.plan += [Waypoint(np.array([*self.place_xy, CARRY_Z + 0.02]), GRIPPER_CLOSED),
                          Waypoint(place, GRIPPER_CLOSED, SLOW, hold=3),
                          Waypoint(place, GRIPPER_OPEN, SLOW, hold=8),
                          Waypoint(np.array([*self.place_xy, CARRY_Z + 0.02]), GRIPPER_OPEN)]
            self.release_stage = len(self.plan) - 2
        self.stage = 0
        self.held = 0

    def _object_yaw(self) -> float:
        quat = self.env.object_orientation(self.target)
        w, x, y, z = quat
        return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))

    @staticmethod
    def _grasp_yaw(shape: str, obj_yaw: float, pos: np.ndarray) -> float:
        """Closing direction: a cube face normal nearest the arm's natural (radial) yaw."""
        radial = float(np.arctan2(pos[1], pos[0]))
        if shape != "cube":
            return radial
        # A cube's four face normals lie pi/2 apart, so exactly one is within 45 deg of the radial yaw.
        # Comparing modulo pi instead would tie yaw and yaw+pi and let float noise flip the wrist by 180 deg,
        # which made the demonstrations bimodal.
        cands = obj_yaw + np.arange(4) * np.pi / 2
        offset = (cands - radial + np.pi) % (2 * np.pi) - np.pi  # wrapped to [-pi, pi)
        return float(radial + offset[np.argmin(np.abs(offset))])

    def take_over(self, commanded: np.ndarray | None = None) -> None:
        """Continue from the env's current state, as if the expert had driven to it: the labeller of DAgger.

        `commanded` is the last joint action sent (so101 units), which is where position control is heading;
        the expert's own command leads the arm the same way. The stage is read from the state: holding the
        target -> finish closing, then lift (or carry, at carry height); jaws over it and below carry height -> descend, or close
        at grasp height; a placed, released object -> retreat; anything else -> back above the target. A
        label is computed without stepping the sim, so the grasp-slip retry is off (it would read a contact
        state that does not advance)."""
        env = self.env
        q = env.joint_positions() if commanded is None else from_so101_units(np.asarray(commanded))
        self.q_arm, self.gripper = np.asarray(q[:5], dtype=float).copy(), float(q[5])
        self.cmd = env.grasp_position() if commanded is None else env.ik.forward(self.q_arm)
        self._plan()
        self.retries, self._hold = self.MAX_RETRIES, None
        held = env.is_held(self.target)
        pos = env.object_position(self.target)
        grasp_z = self.plan[1].xyz[2]
        near = float(np.linalg.norm(self.cmd[:2] - pos[:2])) < 0.01
        over_place = self.place_xy is not None and np.linalg.norm(self.cmd[:2] - np.asarray(self.place_xy)) < 0.01
        if held and self.gripper > GRIPPER_CLOSED + 1e-3:
            self.stage = 2  # the jaws touch it but are still closing: finish closing before the lift
        elif held and over_place:
            self.stage = 5  # lower it onto the place
        elif held:
            self.stage = 4 if self.place_xy is not None and self.cmd[2] >= CARRY_Z - 0.005 else 3
            if self.stage == 3:  # lift straight up from here: re-aiming at the held object's centre makes it creep
                self.plan[3].xyz = np.array([*self.cmd[:2], self.plan[3].xyz[2]])
                if self.place_xy is None and commanded is not None and self.cmd[2] >= self.plan[3].xyz[2] - 0.003:
                    self.stage = len(self.plan)  # lifted: the task's end state, hold the command still
                    self._hold = np.asarray(commanded, dtype=np.float32).copy()
        elif self.place_xy is not None and (over_place or np.linalg.norm(pos[:2] - np.asarray(self.place_xy)) < 0.03):
            # placed: finish opening the jaws, then retreat
            self.stage = len(self.plan) - 2 if self.gripper < GRIPPER_OPEN - 1e-3 else len(self.plan) - 1
        elif near and self.cmd[2] < CARRY_Z - 0.005:
            self.stage = 2 if self.cmd[2] - grasp_z < 0.004 else 1
        else:
            self.stage = 0

    def chunk(self, n: int) -> np.ndarray:
        """The next `n` actions from here, without stepping the sim (see `take_over`)."""
        if self._hold is not None:  # re-solving the IK each chunk would let the held object creep
            return np.repeat(self._hold[None], n, axis=0)
        return np.stack([self.act() for _ in range(n)])

    @property
    def done(self) -> bool:
        return self.stage >= len(self.plan)

    def act(self) -> np.ndarray:
        env = self.env
        # a grasp that slipped (or never held) is retried from where the object now lies
        carrying = 3 <= self.stage < self.release_stage
        if carrying and not env.is_held(self.target) and self.retries < self.MAX_RETRIES:
            self.retries += 1
            self._plan()
        wp = self.plan[min(self.stage, len(self.plan) - 1)]
        step = wp.xyz - self.cmd
        dist = float(np.linalg.norm(step))
        self.cmd = wp.xyz.copy() if dist <= wp.speed else self.cmd + step * (wp.speed / dist)
        # gripper moves gradually so grasps are not slammed
        self.gripper += np.clip(wp.gripper - self.gripper, -0.12, 0.12)
        if self.stage < len(self.plan) and dist <= wp.speed and abs(self.gripper - wp.gripper) < 1e-6:
            self.held += 1
            if self.held > wp.hold:
                self.stage, self.held = self.stage + 1, 0
        # yaw follows the arm's rotation about the base so the wrist never winds up
        yaw = self.yaw + np.arctan2(self.cmd[1], self.cmd[0]) - np.arctan2(self.plan[0].xyz[1], self.plan[0].xyz[0])
        self.q_arm, _ = env.ik.solve(self.q_arm, self.cmd, DlsIK.top_down(yaw), iters=15)
        if env.action_mode == "joint":
            return to_so101_units(np.concatenate([self.q_arm, [self.gripper]])).astype(np.float32)
        delta = np.clip(self.cmd - env.ee_target, -MAX_EE_STEP, MAX_EE_STEP)
        opening = (self.gripper - GRIPPER_CLOSED) / (GRIPPER_OPEN - GRIPPER_CLOSED)
        if env.action_mode == "ee_delta_yaw":  # jaw yaw relative to the radial direction, wrapped to ±pi/2
            rel = (yaw - np.arctan2(self.cmd[1], self.cmd[0]) + np.pi / 2) % np.pi - np.pi / 2
            dyaw = np.clip(rel - env.ee_yaw, -MAX_YAW_STEP, MAX_YAW_STEP)
            return np.array([*delta, dyaw, opening], dtype=np.float32)
        return np.array([*delta, opening], dtype=np.float32)


def run_expert_episode(env: SpatialTabletopEnv, seed: int, max_steps: int | None = None) -> dict:
    """Roll out the expert on one seeded episode; returns success and the step count."""
    env.reset(seed=seed)
    expert = ScriptedExpert(env)
    success, steps = False, 0
    for steps in range(1, (max_steps or env.max_episode_steps) + 1):
        _, _, terminated, truncated, info = env.step(expert.act())
        success = info["is_success"]
        if terminated or truncated:
            break
    return {"success": bool(success), "steps": steps, "instruction": env.task_description}
