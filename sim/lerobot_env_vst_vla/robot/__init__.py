"""The simulated SO-101 follower: joint names and units of LeRobot's `so101_follower`, and IK."""

from .so101 import JOINT_NAMES, MOTOR_KEYS, DlsIK, from_so101_units, to_so101_units

__all__ = ["JOINT_NAMES", "MOTOR_KEYS", "DlsIK", "from_so101_units", "to_so101_units"]
