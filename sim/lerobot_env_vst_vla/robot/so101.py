"""SO-101 joint conventions and damped least-squares IK.

Units follow LeRobot's `so101_follower` with its default `use_degrees=True`: the five arm joints in
degrees (0 at the calibrated middle, which is the MJCF zero) and the gripper in 0..100 of its range
(0 closed, 100 open). Observation and action keys are `<motor>.pos`.
"""

from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np

ROBOT_XML = Path(__file__).resolve().parent / "so101.xml"
JOINT_NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
MOTOR_KEYS = tuple(f"{j}.pos" for j in JOINT_NAMES)
GRIPPER_RANGE = (-0.17453297762778586, 1.7453291995659765)  # radians, MJCF joint range


def to_so101_units(q: np.ndarray) -> np.ndarray:
    """Radians (MJCF) → so101_follower units: degrees for the arm, 0..100 for the gripper."""
    q = np.asarray(q, dtype=np.float64)
    out = np.degrees(q)
    lo, hi = GRIPPER_RANGE
    out[..., 5] = 100.0 * (q[..., 5] - lo) / (hi - lo)
    return out


def from_so101_units(a: np.ndarray) -> np.ndarray:
    """so101_follower units → radians (MJCF)."""
    a = np.asarray(a, dtype=np.float64)
    out = np.radians(a)
    lo, hi = GRIPPER_RANGE
    out[..., 5] = lo + (hi - lo) * a[..., 5] / 100.0
    return out


class DlsIK:
    """Damped least-squares IK for the `grasp` site over the five arm joints.

    Targets a position and, optionally, a top-down orientation whose jaw closing axis has a given yaw.
    Solves on a private MjData so the simulation state is never touched.
    """

    def __init__(self, model: mujoco.MjModel, site: str = "grasp", damping: float = 1e-3):
        self.model = model
        self.data = mujoco.MjData(model)
        self.site = model.site(site).id
        self.dofs = np.array([model.joint(j).dofadr[0] for j in JOINT_NAMES[:5]])
        self.qadr = np.array([model.joint(j).qposadr[0] for j in JOINT_NAMES[:5]])
        self.lo = model.jnt_range[[model.joint(j).id for j in JOINT_NAMES[:5]], 0]
        self.hi = model.jnt_range[[model.joint(j).id for j in JOINT_NAMES[:5]], 1]
        self.damping = damping
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self._eye3 = np.eye(3)
        self._eye5 = np.eye(5)

    @staticmethod
    def top_down(yaw: float) -> np.ndarray:
        """Site rotation for a vertical approach with the jaws closing along world yaw `yaw`."""
        x = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        z = np.array([0.0, 0.0, 1.0])  # site -z is the approach direction: pointing down
        return np.stack([x, np.cross(z, x), z], axis=1)

    def forward(self, q: np.ndarray) -> np.ndarray:
        """Grasp-site position (m) of arm angles `q` (5, radians), on the private MjData."""
        self.data.qpos[self.qadr] = np.clip(np.asarray(q, dtype=np.float64)[:5], self.lo, self.hi)
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site].copy()

    def solve(self, q0: np.ndarray, target_pos: np.ndarray, target_rot: np.ndarray | None = None,
              iters: int = 80, tol: float = 5e-4) -> tuple[np.ndarray, float]:
        """Return (arm joint angles, final position error in m), starting from arm angles `q0`.

        Position is the primary task; the orientation is followed in the position task's null space,
        so it is met where the 5-DoF arm and its joint limits allow and never costs position accuracy.
        """
        d = self.data
        q = np.clip(np.asarray(q0, dtype=np.float64).copy(), self.lo, self.hi)
        for _ in range(iters):
            d.qpos[self.qadr] = q
            mujoco.mj_kinematics(self.model, d)
            mujoco.mj_comPos(self.model, d)
            pos_err = target_pos - d.site_xpos[self.site]
            mujoco.mj_jacSite(self.model, d, self._jacp, self._jacr, self.site)
            Jp = self._jacp[:, self.dofs]
            Jp_pinv = Jp.T @ np.linalg.inv(Jp @ Jp.T + self.damping * self._eye3)
            dq = Jp_pinv @ pos_err
            rot_err_norm = 0.0
            if target_rot is not None:
                R = d.site_xmat[self.site].reshape(3, 3)
                # small-angle rotation error: half the sum of the axis cross products (written out:
                # np.cross costs more than the whole MuJoCo side of an iteration)
                rot_err = 0.5 * _cross_sum(R, target_rot)
                rot_err_norm = float(np.linalg.norm(rot_err))
                Jr = self._jacr[:, self.dofs]
                dq_rot = Jr.T @ np.linalg.solve(Jr @ Jr.T + 1e-2 * self._eye3, rot_err)
                dq = dq + (self._eye5 - Jp_pinv @ Jp) @ dq_rot
            if np.linalg.norm(pos_err) < tol and rot_err_norm < 1e-2:
                break
            q = np.clip(q + dq, self.lo, self.hi)
        d.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, d)
        return q, float(np.linalg.norm(target_pos - d.site_xpos[self.site]))


def _cross_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum_i cross(a[:, i], b[:, i]) for 3x3 matrices."""
    return np.array([
        (a[1] * b[2] - a[2] * b[1]).sum(),
        (a[2] * b[0] - a[0] * b[2]).sum(),
        (a[0] * b[1] - a[1] * b[0]).sum(),
    ])
