"""The sim robot plugin (`vst_sim_so101`): LeRobot's Robot contract over the MuJoCo SO-101, both clocks."""

import json
import time
from dataclasses import dataclass

import draccus
import numpy as np
import pytest
from lerobot.robots import RobotConfig, make_robot_from_config

from lerobot_env_vst_vla import SpatialTabletopEnv
from lerobot_robot_vst_sim import SafetyConfig, VstSimCameraConfig, VstSimSO101, VstSimSO101Config

# so101_follower's features: its bus motors in order (lerobot/robots/so_follower/so_follower.py), `.pos`.
SO101_KEYS = [f"{m}.pos" for m in ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")]
CAMS = {"front": VstSimCameraConfig(32, 24), "wrist": VstSimCameraConfig(32, 24)}


def make(**kw) -> VstSimSO101:
    kw.setdefault("cameras", CAMS)
    kw.setdefault("clock", "lockstep")
    robot = VstSimSO101(VstSimSO101Config(**kw))
    robot.connect()
    return robot


def hold_action(obs: dict, **delta) -> dict:
    action = {k: float(obs[k]) for k in obs if k.endswith(".pos")}
    for k, d in delta.items():
        action[f"{k}.pos"] += d
    return action


def test_features_match_so101_follower_keys_order_and_units():
    robot = VstSimSO101(VstSimSO101Config(cameras=CAMS))
    assert list(robot.action_features) == SO101_KEYS
    assert list(robot.observation_features) == [*SO101_KEYS, "front", "wrist"]
    assert robot.observation_features["front"] == (24, 32, 3)
    assert all(robot.observation_features[k] is float for k in robot.action_features)
    assert len(robot.cameras) == 2 and robot.is_calibrated and not robot.is_connected

    robot.connect()
    try:
        obs = robot.get_observation()
        assert list(obs) == list(robot.observation_features)
        for cam in ("front", "wrist"):
            assert obs[cam].shape == (24, 32, 3) and obs[cam].dtype == np.uint8
        assert 0.0 <= obs["gripper.pos"] <= 100.0  # 0..100 of its range, not radians
        assert abs(obs["shoulder_lift.pos"]) > 10  # degrees: the home pose lifts the arm by ~69 deg
    finally:
        robot.disconnect()


def test_registered_type_parses_from_cli_flags_and_builds_through_lerobot():
    @dataclass
    class Cli:
        robot: RobotConfig

    cfg = draccus.parse(Cli, args=["--robot.type=vst_sim_so101", "--robot.clock=lockstep", "--robot.seed=7",
                                   "--robot.task_family=pick_relation", "--robot.max_relative_target=5",
                                   "--robot.cameras={front: {width: 32, height: 24, fps: 30}}",
                                   "--robot.safety.max_step=3"]).robot
    assert isinstance(cfg, VstSimSO101Config) and cfg.type == "vst_sim_so101"
    assert (cfg.seed, cfg.task_family, cfg.max_relative_target, cfg.safety.max_step) == (7, "pick_relation", 5.0, 3.0)
    assert list(cfg.cameras) == ["front"]
    robot = make_robot_from_config(cfg)  # LeRobot's factory falls back to the plugin's device class
    assert isinstance(robot, VstSimSO101)
    with pytest.raises(ValueError, match="clock"):
        VstSimSO101Config(clock="fast")


def test_instruction_is_the_seeded_episode_and_task_family_seed_set_the_scene():
    robot = make(task_family="pick_relation", seed=11)
    try:
        env = SpatialTabletopEnv("pick_relation", obs_type="agent_pos")
        env.reset(seed=11)
        assert robot.instruction == env.task_description
        assert VstSimSO101(VstSimSO101Config(task_family="pick_relation", seed=11)).instruction == robot.instruction
        env.close()
    finally:
        robot.disconnect()


def test_send_action_returns_what_was_sent_after_relative_cap_and_joint_limits():
    robot = make(max_relative_target=5.0, safety=SafetyConfig(max_step=None, max_velocity=None, reject_step=None))
    try:
        obs = robot.get_observation()
        sent = robot.send_action(hold_action(obs, shoulder_pan=30.0))
        assert sent["shoulder_pan.pos"] == pytest.approx(obs["shoulder_pan.pos"] + 5.0)
        assert sent["elbow_flex.pos"] == pytest.approx(obs["elbow_flex.pos"])
    finally:
        robot.disconnect()
    robot = make(safety=SafetyConfig(max_step=None, max_velocity=None, reject_step=None))
    try:
        obs = robot.get_observation()
        sent = robot.send_action(hold_action(obs, gripper=1000.0, shoulder_pan=-1000.0))
        lo, hi = robot.guard.lower, robot.guard.upper
        assert sent["gripper.pos"] == pytest.approx(hi[5]) and sent["shoulder_pan.pos"] == pytest.approx(lo[0])
        assert robot.last_decision.interventions == ["joint_limit"]
    finally:
        robot.disconnect()


def test_lockstep_is_deterministic_and_moves_the_arm():
    def run() -> list:
        robot = make(seed=3)
        out = []
        try:
            obs = robot.get_observation()
            for t in range(12):
                robot.send_action(hold_action(obs, shoulder_pan=3.0, elbow_flex=-2.0))
                obs = robot.get_observation()
                out.append((obs["shoulder_pan.pos"], obs["front"].copy()))
            assert robot.stats["ticks"] == 12
        finally:
            robot.disconnect()
        return out

    a, b = run(), run()
    assert [x for x, _ in a] == [x for x, _ in b]
    assert all(np.array_equal(fa, fb) for (_, fa), (_, fb) in zip(a, b, strict=True))
    assert a[-1][0] > 20.0  # 12 ticks of +3 deg goals: the pan joint travelled


def test_realtime_physics_runs_on_wall_time_and_holds_the_last_command():
    robot = make(clock="realtime", safety=SafetyConfig(max_step=None, max_velocity=None, reject_step=None,
                                                       hold_after_s=5.0, stop_after_s=10.0))
    try:
        obs = robot.get_observation()
        robot.send_action(hold_action(obs, shoulder_pan=25.0))
        ticks0 = robot.stats["ticks"]
        time.sleep(0.6)  # no further commands: the servos keep the last goal
        obs = robot.get_observation()
        assert robot.stats["ticks"] - ticks0 >= 6  # ~18 at 30 Hz on an idle host; >= 6 on a loaded one
        assert obs["shoulder_pan.pos"] == pytest.approx(25.0, abs=3.0)
    finally:
        robot.disconnect()


def test_lockstep_watchdog_holds_then_latches_a_stop_until_reset(tmp_path):
    robot = make(fps=30, safety=SafetyConfig(hold_after_s=0.2, stop_after_s=0.5, log_path=str(tmp_path / "s.jsonl")),
                 summary_path=str(tmp_path / "summary.json"))
    obs = robot.get_observation()
    robot.send_action(hold_action(obs, shoulder_pan=10.0))
    held = []
    for _ in range(20):  # 20 ticks of sim time (0.67 s) with no action
        robot.get_observation()
        held.append(robot.guard.watchdog_holding)
    assert robot.guard.stopped
    first_hold = held.index(True)
    assert first_hold <= int(0.2 * 30) + 1  # within hold_after_s plus one tick
    obs = robot.get_observation()
    refused = robot.send_action(hold_action(obs, shoulder_pan=5.0))
    assert robot.last_decision.status == "stopped"
    assert refused["shoulder_pan.pos"] == pytest.approx(robot.guard.last_command[0])
    assert robot.guard.reset(obs, robot.now())
    robot.send_action(hold_action(obs, shoulder_pan=2.0))
    assert robot.last_decision.status == "ok"
    robot.disconnect()
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert kinds.index("watchdog_hold") < kinds.index("watchdog_stop") < kinds.index("reset", 1)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["safety"]["counts"]["watchdog_stop"] == 1 and summary["max_travel"]["shoulder_pan.pos"] > 1


def test_frozen_or_delayed_cameras_make_the_robot_hold():
    robot = make(freeze_camera_after_s=0.1, safety=SafetyConfig(max_obs_age_s=0.2))
    try:
        obs = robot.get_observation()
        statuses = []
        for _ in range(15):
            robot.send_action(hold_action(obs, shoulder_pan=1.0))
            statuses.append(robot.last_decision.status)
            obs = robot.get_observation()
        assert statuses[0] == "ok" and statuses[-1] == "hold"
        assert not robot.guard.should_infer and robot.guard.counts["stale_observation"] == 1
    finally:
        robot.disconnect()
    robot = make(obs_delay_ms=400, safety=SafetyConfig(max_obs_age_s=0.2))
    try:
        for _ in range(15):
            robot.get_observation()
        assert robot.guard.obs_stale
        assert robot.last_observation_times["state"] < robot.now() - 0.3
    finally:
        robot.disconnect()
