"""The safety layer (SafetyGuard): pure and deterministic, so every rule is checked with exact numbers."""

import json
import math
import os
import signal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lerobot_robot_vst_sim.safety import EStop, SafetyConfig, SafetyGuard

KEYS = ("shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos", "gripper.pos")
LO = np.array([-110.0, -100.0, -96.8, -95.0, -157.2, 0.0])
HI = np.array([110.0, 100.0, 96.8, 95.0, 162.8, 100.0])
HOME = dict(zip(KEYS, [0.0, -68.8, 60.9, 71.6, 0.0, 61.2], strict=True))
DT = 1 / 30


def guard(**kw) -> SafetyGuard:
    g = SafetyGuard(KEYS, LO, HI, SafetyConfig(**kw))
    g.reset(HOME, now=0.0)
    return g


def moved(base: dict, **delta) -> dict:
    return {k: base[k] + delta.get(k.removesuffix(".pos"), 0.0) for k in KEYS}


def test_valid_small_action_passes_unchanged():
    g = guard()
    d = g.filter(moved(HOME, shoulder_pan=2.0), HOME, now=DT)
    assert d.status == "ok" and d.action == pytest.approx(moved(HOME, shoulder_pan=2.0))


@pytest.mark.parametrize("bad", [
    {**HOME, "elbow_flex.pos": math.nan},
    {**HOME, "gripper.pos": math.inf},
    {**HOME, "gripper.pos": "50"},
    {**HOME, "gripper.pos": None},
    {**HOME, "gripper.pos": True},
    {k: v for k, v in HOME.items() if k != "wrist_roll.pos"},  # missing key
    {**HOME, "base.pos": 0.0},  # unknown key
    [1, 2, 3],
])
def test_malformed_actions_are_rejected_and_the_arm_holds_the_last_command(bad):
    g = guard()
    first = g.filter(moved(HOME, shoulder_pan=3.0), HOME, now=DT).action
    d = g.filter(bad, HOME, now=2 * DT)
    assert d.status == "hold" and d.interventions == ["rejected_action"]
    assert d.action == first  # the last command, re-sent: nothing new reaches the servos
    assert g.counts["rejected_action"] == 1


def test_joint_limits_clamp():
    g = guard(max_step=None, max_velocity=None, reject_step=None)
    d = g.filter(moved(HOME, shoulder_pan=500.0, gripper=-80.0), HOME, now=DT)
    assert d.action["shoulder_pan.pos"] == HI[0] and d.action["gripper.pos"] == LO[5]
    assert "joint_limit" in d.interventions


def test_max_relative_target_caps_goal_minus_present_like_so101_follower():
    g = guard(max_step=None, max_velocity=None, reject_step=None, max_relative_target={"shoulder_pan": 5.0, "shoulder_lift": 5.0,
              "elbow_flex": 5.0, "wrist_flex": 5.0, "wrist_roll": 5.0, "gripper": 50.0})
    present = moved(HOME, shoulder_pan=1.0)
    d = g.filter(moved(HOME, shoulder_pan=20.0, gripper=30.0), present, now=DT)
    assert d.action["shoulder_pan.pos"] == pytest.approx(6.0)
    assert d.action["gripper.pos"] == pytest.approx(HOME["gripper.pos"] + 30.0)
    with pytest.raises(ValueError, match="every joint"):
        guard(max_relative_target={"shoulder_pan": 5.0})


def test_step_and_velocity_limits_against_the_last_command():
    g = guard(max_step=4.0, max_velocity=60.0, reject_step=None)
    d = g.filter(moved(HOME, shoulder_pan=10.0), HOME, now=DT)  # 60 deg/s * 1/30 s = 2 deg < 4
    assert d.action["shoulder_pan.pos"] == pytest.approx(2.0) and d.interventions == ["rate_limit"]
    d = g.filter(moved(HOME, shoulder_pan=10.0), HOME, now=DT + 0.5)  # 0.5 s later: the step cap binds
    assert d.action["shoulder_pan.pos"] == pytest.approx(6.0)


def test_jumps_beyond_the_threshold_are_rejected_and_hold():
    g = guard(reject_step=20.0)
    ok = g.filter(moved(HOME, elbow_flex=5.0), HOME, now=DT).action
    d = g.filter(moved(HOME, elbow_flex=30.0), HOME, now=2 * DT)  # 25 deg from the last command
    assert d.status == "hold" and d.action == ok and g.counts["rejected_jump"] == 1


def test_watchdog_holds_the_present_pose_then_latches_a_stop_until_reset():
    g = guard(hold_after_s=0.2, stop_after_s=1.0)
    g.filter(moved(HOME, shoulder_pan=10.0), HOME, now=0.0)
    present = moved(HOME, shoulder_pan=4.0)  # the arm is still on its way
    assert g.tick(0.1, present) is None
    d = g.tick(0.2, present)
    assert d.status == "hold" and d.action == pytest.approx(present)  # stop where it is, not at the old goal
    assert g.tick(0.5, present) is None  # one hold event, not one per tick
    d = g.tick(1.0, present)
    assert d.status == "stopped" and g.stopped and not g.should_infer
    d = g.filter(moved(HOME, shoulder_pan=5.0), present, now=1.1)
    assert d.status == "stopped" and d.action == pytest.approx(present)
    assert g.reset(present, now=1.2)
    assert g.filter(moved(present, shoulder_pan=1.0), present, now=1.25).status == "ok"
    assert g.counts["watchdog_hold"] == 1 and g.counts["watchdog_stop"] == 1


def test_a_fresh_action_clears_a_watchdog_hold_but_not_a_stop():
    g = guard(hold_after_s=0.2, stop_after_s=1.0)
    g.filter(HOME, HOME, now=0.0)
    g.tick(0.3, HOME)
    assert g.watchdog_holding
    assert g.filter(moved(HOME, shoulder_pan=1.0), HOME, now=0.35).status == "ok"
    assert not g.watchdog_holding


def test_stale_and_frozen_observations_hold_and_skip_inference():
    g = guard(max_obs_age_s=0.1, frozen_frames=3)
    img = np.zeros((8, 8, 3), np.uint8)
    assert g.observe(1.0, state_time=1.0, frames={"front": img}, frame_times={"front": 1.0})
    assert not g.observe(1.0, state_time=1.0, frames={"front": img + 1}, frame_times={"front": 0.8})  # old frame
    assert not g.should_infer
    d = g.filter(moved(HOME, shoulder_pan=1.0), HOME, now=1.0)
    assert d.status == "hold" and d.interventions == ["stale_observation"]
    assert g.observe(1.1, state_time=1.1, frames={"front": img + 2})  # fresh again
    assert g.should_infer
    g.observe(1.2, frames={"front": img + 2})
    assert not g.observe(1.3, frames={"front": img + 2})  # third identical frame: frozen camera
    assert g.counts["stale_observation"] == 2 and g.counts["observation_recovered"] == 1


def test_estop_from_file_signal_and_key_latches_until_explicit_reset(tmp_path):
    stop_file = tmp_path / "STOP"
    g = guard(estop_file=str(stop_file))
    assert g.filter(moved(HOME, shoulder_pan=1.0), HOME, now=DT).status == "ok"
    stop_file.touch()
    d = g.tick(2 * DT, HOME)
    assert d.status == "stopped" and g.counts["estop"] == 1
    assert g.filter(moved(HOME, shoulder_pan=2.0), HOME, now=3 * DT).status == "stopped"
    assert not g.reset(HOME, now=4 * DT)  # refused while the cause is still there
    stop_file.unlink()
    assert g.filter(moved(HOME, shoulder_pan=2.0), HOME, now=5 * DT).status == "stopped"  # still latched
    assert g.reset(HOME, now=6 * DT)
    assert g.filter(moved(HOME, shoulder_pan=1.0), HOME, now=7 * DT).status == "ok"

    estop = EStop(use_signal=True)
    try:
        g = SafetyGuard(KEYS, LO, HI, SafetyConfig(), estop=estop)
        g.reset(HOME, now=0.0)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert g.filter(HOME, HOME, now=DT).status == "stopped"
        assert estop.reason == "signal"
    finally:
        estop.close()
    g = guard()
    g.estop.trigger("key")
    assert g.tick(DT, HOME).status == "stopped"


def test_every_intervention_is_logged_as_jsonl(tmp_path):
    log = tmp_path / "interventions.jsonl"
    g = guard(log_path=str(log), reject_step=20.0)
    g.filter({**HOME, "gripper.pos": math.nan}, HOME, now=0.1)
    g.filter(moved(HOME, shoulder_pan=50.0), HOME, now=0.2)
    g.filter(moved(HOME, shoulder_pan=18.0), HOME, now=0.3)  # under reject_step, over max_step (15)
    g.close()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["kind"] for e in events] == ["reset", "rejected_action", "rejected_jump", "rate_limit"]
    assert events[2]["joint"] == "shoulder_pan.pos" and events[1]["t"] == 0.1
    assert all(g.counts[e["kind"]] == 1 for e in events)


# ---------------------------------------------------------------------------- fuzzing
WILD = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e300, 1e300),
                 st.integers(-10**30, 10**30), st.none(), st.text(max_size=3), st.booleans())
ACTION = st.one_of(
    st.dictionaries(st.sampled_from([*KEYS, "x.pos", "gripper"]), WILD, max_size=8),
    st.fixed_dictionaries({k: WILD for k in KEYS}),
    st.fixed_dictionaries({k: st.floats(-400, 400) for k in KEYS}),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.lists(st.tuples(ACTION, st.floats(0.0, 0.2)), min_size=1, max_size=25),
       present_noise=st.floats(-5, 5))
def test_fuzz_no_emitted_command_ever_steps_beyond_the_limits(actions, present_noise):
    cfg = dict(max_step=8.0, max_velocity=120.0, reject_step=30.0)
    g = guard(**cfg)
    last = np.array([HOME[k] for k in KEYS])
    now = 0.0
    present = {k: v + present_noise for k, v in HOME.items()}
    for action, dt in actions:
        now += dt
        d = g.filter(action, present, now=now)
        if d.action is None:
            continue
        out = np.array([d.action[k] for k in KEYS])
        assert set(d.action) == set(KEYS) and np.all(np.isfinite(out))
        assert np.all(out >= LO) and np.all(out <= HI)
        step = np.abs(out - last)
        assert np.all(step <= cfg["max_step"] + 1e-9), (action, out, last)
        assert np.all(step <= cfg["max_velocity"] * max(dt, g.config.min_dt_s) + 1e-9)
        if d.status == "hold":
            assert np.array_equal(out, last)  # a hold never moves the command
        last = out
