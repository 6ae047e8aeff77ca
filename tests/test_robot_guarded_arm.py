"""The guarded real arm type (`vst_so101_follower`): it parses from stock CLI flags, builds through LeRobot's
factory, and every goal goes through the safety layer before `Goal_Position` is written.

There is no hardware here: the Feetech bus is replaced by a fake at its method boundary (sync_read /
sync_write / connect), the same calls LeRobot's SOFollower makes, so the robot class itself is the real one.
"""

import contextlib
import math
from dataclasses import dataclass

import draccus
import pytest
from lerobot.motors import MotorCalibration
from lerobot.robots import RobotConfig, make_robot_from_config
from lerobot.robots.so_follower import SOFollower, SOFollowerRobotConfig

from lerobot_robot_vst_sim import VstSO101Follower, VstSO101FollowerConfig

HOME = {"shoulder_pan": 0.0, "shoulder_lift": -60.0, "elbow_flex": 60.0, "wrist_flex": 70.0, "wrist_roll": 0.0,
        "gripper": 50.0}


class FakeBus:
    """Stands in for FeetechMotorsBus: servos that jump to their goal, and a log of every write."""

    def __init__(self, motors):
        self.motors = motors
        self.position = dict(HOME)
        self.writes: list[dict] = []
        self.is_connected = False
        self.is_calibrated = True

    def connect(self):
        self.is_connected = True

    def disconnect(self, disable_torque=True):  # noqa: ARG002
        self.is_connected = False

    def sync_read(self, register, num_retry=0):  # noqa: ARG002
        assert register == "Present_Position"
        return dict(self.position)

    def sync_write(self, register, values):
        assert register == "Goal_Position"
        self.writes.append(dict(values))
        self.position.update(values)

    @contextlib.contextmanager
    def torque_disabled(self):
        yield

    def configure_motors(self):
        pass

    def write(self, *args, **kwargs):
        pass


def parse(*flags: str) -> VstSO101FollowerConfig:
    @dataclass
    class Cli:
        robot: RobotConfig

    return draccus.parse(Cli, args=list(flags)).robot


def connected(tmp_path, **safety) -> VstSO101Follower:
    flags = [f"--robot.safety.{k}={v}" for k, v in safety.items()]
    robot = make_robot_from_config(parse("--robot.type=vst_so101_follower", "--robot.port=/dev/ttyFAKE",
                                         f"--robot.calibration_dir={tmp_path}", *flags))
    robot.bus = FakeBus(robot.bus.motors)
    robot.connect()
    return robot


def pos(**delta) -> dict:
    return {f"{m}.pos": v + delta.get(m, 0.0) for m, v in HOME.items()}


def test_cli_flags_parse_into_a_so101_follower_subclass_with_safety_fields(tmp_path):
    cfg = parse("--robot.type=vst_so101_follower", "--robot.port=/dev/ttyACM0", "--robot.max_relative_target=5",
                "--robot.safety.hold_after_s=0.1", f"--robot.safety.estop_file={tmp_path / 'STOP'}", f"--robot.calibration_dir={tmp_path}")
    assert isinstance(cfg, VstSO101FollowerConfig) and isinstance(cfg, SOFollowerRobotConfig)
    assert (cfg.port, cfg.max_relative_target, cfg.safety.hold_after_s, cfg.safety.estop_file) == \
        ("/dev/ttyACM0", 5.0, 0.1, str(tmp_path / "STOP"))
    robot = make_robot_from_config(cfg)
    assert isinstance(robot, VstSO101Follower) and isinstance(robot, SOFollower)
    assert list(robot.action_features) == [f"{m}.pos" for m in HOME]
    assert robot.guard.max_relative is not None and robot.guard.max_relative[0] == 5.0


def test_joint_limits_come_from_the_calibrated_range(tmp_path):
    cfg = VstSO101FollowerConfig(port="/dev/null", calibration_dir=tmp_path)
    robot = VstSO101Follower(cfg)
    robot.calibration = {m: MotorCalibration(id=i + 1, drive_mode=0, homing_offset=0, range_min=1024, range_max=3072)
                         for i, m in enumerate(HOME)}
    lower, upper = robot.joint_limits()
    assert lower[0] == pytest.approx(-90.0, abs=0.1) and upper[0] == pytest.approx(90.0, abs=0.1)
    assert (lower[5], upper[5]) == (0.0, 100.0)  # the gripper stays in 0..100


def test_every_goal_passes_the_guard_before_goal_position_is_written(tmp_path):
    robot = connected(tmp_path, reject_step=20.0, max_step=5.0)
    robot.get_observation()
    sent = robot.send_action(pos(shoulder_pan=3.0))
    assert sent["shoulder_pan.pos"] == pytest.approx(3.0) and robot.bus.writes[-1]["shoulder_pan"] == pytest.approx(3.0)
    sent = robot.send_action(pos(shoulder_pan=12.0))  # step-limited to +5 from the last command
    assert sent["shoulder_pan.pos"] == pytest.approx(8.0)
    n = len(robot.bus.writes)
    held = robot.send_action({**pos(), "elbow_flex.pos": math.nan})
    assert robot.last_decision.status == "hold" and held["shoulder_pan.pos"] == pytest.approx(8.0)
    held = robot.send_action(pos(shoulder_pan=60.0))  # a jump: rejected
    assert robot.last_decision.status == "hold" and robot.bus.writes[-1]["shoulder_pan"] == pytest.approx(8.0)
    assert len(robot.bus.writes) == n + 2 and robot.guard.counts["rejected_jump"] == 1
    robot.disconnect()


def test_estop_file_latches_the_real_arm_until_reset(tmp_path):
    stop = tmp_path / "STOP"
    robot = connected(tmp_path, estop_file=str(stop))
    robot.get_observation()
    robot.send_action(pos(shoulder_pan=2.0))
    stop.touch()
    robot.get_observation()  # the tick sees the e-stop and writes a hold at the present pose
    assert robot.guard.stopped and robot.bus.writes[-1]["shoulder_pan"] == pytest.approx(2.0)
    robot.send_action(pos(shoulder_pan=4.0))
    assert robot.last_decision.status == "stopped" and robot.bus.position["shoulder_pan"] == pytest.approx(2.0)
    stop.unlink()
    assert robot.reset_safety()
    robot.send_action(pos(shoulder_pan=4.0))
    assert robot.bus.position["shoulder_pan"] == pytest.approx(4.0)
    robot.disconnect()
