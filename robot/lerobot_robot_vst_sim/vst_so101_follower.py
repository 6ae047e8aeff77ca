"""A real SO-101 follower whose every goal passes through `SafetyGuard` before `Goal_Position` is written.

Stock `lerobot-rollout`, `lerobot-teleoperate` and `lerobot-record` select it with
`--robot.type=vst_so101_follower --robot.port=...` (plus `--robot.safety.*`). Differences from
so101_follower: joint limits are enforced in software (DEGREES mode clamps nothing), NaN/unknown-key
actions, jumps and stale observations make the arm hold, the watchdog and e-stop latch a stop, and
interventions are counted and logged. The watchdog runs on every `get_observation()` (the control
loop's tick), so a policy that stops answering holds within one tick of `hold_after_s`; a loop that
hangs entirely is not covered (the servos then keep their last goal, as with so101_follower).
Calibration is shared with so101_follower (same directory), so an arm calibrated once works with both.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from lerobot.robots.so_follower import SOFollower
from lerobot.utils.constants import HF_LEROBOT_CALIBRATION, ROBOTS

from .config_vst_so101_follower import VstSO101FollowerConfig
from .safety import Decision, SafetyGuard

logger = logging.getLogger(__name__)

# so101_follower units (degrees about the calibrated middle; gripper 0-100) of the SO-101 MJCF ranges.
DEFAULT_LIMITS = {
    "shoulder_pan": (-110.0, 110.0), "shoulder_lift": (-100.0, 100.0), "elbow_flex": (-96.8, 96.8),
    "wrist_flex": (-95.0, 95.0), "wrist_roll": (-157.2, 162.8), "gripper": (0.0, 100.0),
}


class VstSO101Follower(SOFollower):
    config_class = VstSO101FollowerConfig
    name = "vst_so101_follower"

    def __init__(self, config: VstSO101FollowerConfig):
        if config.calibration_dir is None:  # share so101_follower's calibration files
            config.calibration_dir = HF_LEROBOT_CALIBRATION / ROBOTS / SOFollower.name
        super().__init__(config)
        self.config = config
        self.motor_names = list(self.bus.motors)
        self.keys = [f"{m}.pos" for m in self.motor_names]
        lower, upper = self.joint_limits()
        self.guard = SafetyGuard(self.keys, lower, upper, self._safety_config())
        self.last_decision: Decision | None = None
        self._present: dict[str, float] | None = None

    def _safety_config(self):
        cfg = self.config.safety
        if self.config.max_relative_target is not None and cfg.max_relative_target is None:
            cfg = type(cfg)(**{**cfg.__dict__, "max_relative_target": self.config.max_relative_target})
        return cfg

    def joint_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) per motor: the config's, else the calibrated range of motion, else the MJCF's."""
        lower, upper = [], []
        for motor in self.motor_names:
            if self.config.joint_limits and motor in self.config.joint_limits:
                lo, hi = self.config.joint_limits[motor]
            elif motor in self.calibration and motor != "gripper" and self.config.use_degrees:
                cal = self.calibration[motor]
                mid, res = (cal.range_min + cal.range_max) / 2, 4095  # STS3215: 4096 steps a turn
                lo, hi = (cal.range_min - mid) * 360 / res, (cal.range_max - mid) * 360 / res
            else:
                lo, hi = DEFAULT_LIMITS[motor]
            lower.append(float(lo))
            upper.append(float(hi))
        return np.array(lower), np.array(upper)

    def _read_present(self) -> dict[str, float]:
        pos = self.bus.sync_read("Present_Position", num_retry=self.config.num_read_retries)
        return {f"{m}.pos": float(v) for m, v in pos.items()}

    def _write(self, goal: dict[str, float]) -> dict[str, float]:
        self.bus.sync_write("Goal_Position", {k.removesuffix(".pos"): v for k, v in goal.items()})
        return dict(goal)

    def connect(self, calibrate: bool = True) -> None:
        super().connect(calibrate)
        self.guard.lower, self.guard.upper = self.joint_limits()  # calibration may have just been written
        self._present = self._read_present()
        self.guard.reset(self._present, time.monotonic())

    def get_observation(self) -> dict:
        obs = super().get_observation()
        now = time.monotonic()
        self._present = {k: float(obs[k]) for k in self.keys}
        frames = {c: obs[c] for c in self.cameras if c in obs}
        self.guard.observe(now, state_time=now, frames=frames)
        decision = self.guard.tick(now, self._present)
        if decision is not None and decision.action is not None:
            self._write(decision.action)  # watchdog or e-stop: hold where the arm is
        return obs

    def send_action(self, action: dict) -> dict:
        now = time.monotonic()
        present = self._present
        if present is None or self.guard.max_relative is not None:  # as so101_follower: re-read the pose
            present = self._read_present()
        decision = self.guard.filter(action, present, now)
        self.last_decision = decision
        if decision.action is None:
            return {}
        return self._write(decision.action)

    def reset_safety(self) -> bool:
        """Clear a latched stop (watchdog or e-stop) from the present pose."""
        return self.guard.reset(self._read_present(), time.monotonic())

    def disconnect(self) -> None:
        try:
            logger.info("%s safety summary: %s", self, self.guard.summary()["counts"])
            self.guard.close()
        finally:
            super().disconnect()
