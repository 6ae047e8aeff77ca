"""`--robot.type=vst_so101_follower`: a real SO-101 follower with vst-vla's safety layer in front of its servos.

A subclass of LeRobot's `SOFollowerRobotConfig` (a wrapper config holding another RobotConfig makes
draccus recurse), so every `--robot.*` flag of so101_follower works unchanged, plus `--robot.safety.*`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.robots.config import RobotConfig
from lerobot.robots.so_follower import SOFollowerRobotConfig

from .safety import SafetyConfig


def _real_arm_safety() -> SafetyConfig:
    # Real cameras never repeat a frame exactly for long: 5 identical frames (~1/6 s at 30 fps) = frozen.
    return SafetyConfig(frozen_frames=5)


@RobotConfig.register_subclass("vst_so101_follower")
@dataclass
class VstSO101FollowerConfig(SOFollowerRobotConfig):
    safety: SafetyConfig = field(default_factory=_real_arm_safety)
    # Guard limits {motor: [lower, upper]} in the bus units (degrees; gripper 0-100). None: from the
    # calibration file's recorded range of motion, else the SO-101 MJCF ranges.
    joint_limits: dict[str, list[float]] | None = None
