"""The real `lerobot-rollout` CLI drives the sim robot (`--robot.type=vst_sim_so101`) with a vst_vla checkpoint.

The checkpoints are tiny (2 training steps on 2 collected episodes). LeRobot 0.6.1's sync inference
engine refuses relative-action pipelines (what `vst-vla train-policy`'s CPU recipe trains); its RTC engine
(`--inference.type=rtc`, the flow head's real-time chunking) takes both absolute and relative ones.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vst_vla.cli import main as vst_vla_cli
from vst_vla.collect import CollectConfig, collect

IMAGE = 56
# 24 steps: at the RTC runs' 10 fps a chunk lasts 2.4 s, so inference may be slow (a loaded CPU) and
# still leave actions to execute; RTC drops the steps that passed while it ran (ceil(latency · fps)).
CHUNK = 24
RTC = ["--inference.type=rtc", "--fps=10", "--inference.rtc.execution_horizon=8", "--inference.queue_threshold=12"]
CAMERAS = f"{{front: {{width: {IMAGE}, height: {IMAGE}, fps: 30}}, wrist: {{width: {IMAGE}, height: {IMAGE}, fps: 30}}}}"


def run_cli(name: str, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    cmd = [str(Path(sys.executable).parent / name), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=cwd)
    if check:
        assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset root, checkpoint) of a 2-step flow-head vst_vla trained on two short stack episodes."""
    tmp = tmp_path_factory.mktemp("rollout")
    root = tmp / "ds"
    collect(CollectConfig(root=str(root), tasks=["stack"], episodes_per_task=2, image_size=IMAGE,
                          episode_length=30, only_successful=False))
    run_cli("lerobot-train", "--policy.type=vst_vla", "--policy.action_head=flow", f"--policy.image_size=[{IMAGE},{IMAGE}]",
            "--policy.use_relative_actions=false", f"--policy.chunk_size={CHUNK}", "--policy.num_steps=2",
            "--policy.device=cpu", "--policy.push_to_hub=false", "--dataset.repo_id=local/vst_tabletop",
            f"--dataset.root={root}", "--steps=2", "--batch_size=2", "--save_freq=2", "--num_workers=0",
            "--wandb.enable=false", f"--output_dir={tmp / 'train'}")
    return root, tmp / "train" / "checkpoints" / "last" / "pretrained_model"


@pytest.fixture(scope="module")
def trained_relative(trained, tmp_path_factory) -> Path:
    """A 2-step checkpoint of `vst-vla train-policy`'s CPU recipe (relative actions) on the same episodes."""
    dataset_root, _ = trained
    out = tmp_path_factory.mktemp("rollout_relative") / "train"
    vst_vla_cli(["train-policy", f"dataset_root={dataset_root}", f"output_dir={out}", "steps=2", "batch_size=2",
                 "save_freq=2", "log_freq=1", f"policy_overrides.image_size=[{IMAGE},{IMAGE}]",
                 f"policy_overrides.chunk_size={CHUNK}", "+policy_overrides.num_steps=2"])
    checkpoint = out / "checkpoints" / "last" / "pretrained_model"
    assert json.loads((checkpoint / "config.json").read_text())["use_relative_actions"] is True
    return checkpoint


def rollout_flags(checkpoint: Path, summary: Path) -> list[str]:
    return ["--robot.type=vst_sim_so101", "--robot.clock=lockstep", "--robot.task_family=stack", "--robot.seed=0",
            f"--robot.cameras={CAMERAS}", f"--robot.summary_path={summary}", f"--policy.path={checkpoint}",
            "--policy.device=cpu", "--device=cpu", "--fps=30", "--return_to_initial_position=false",
            "--play_sounds=false"]


def assert_policy_moved_the_arm(summary: dict) -> None:
    stats = summary["stats"]
    assert stats["ticks"] >= 10 and stats["observations"] == stats["ticks"] + 1  # lockstep: one period per observation
    sent = sum(v for k, v in stats.items() if k in ("action_ok", "action_clamped"))
    assert sent >= 3  # policy actions reached the servos
    # An untrained flow head samples wild chunks: any hold is a logged jump or malformed-action rejection.
    counts = summary["safety"]["counts"]
    assert stats.get("action_hold", 0) == counts.get("rejected_jump", 0) + counts.get("rejected_action", 0)
    assert max(summary["max_travel"].values()) > 2.0  # degrees (gripper: % of range): the arm moved
    assert not summary["safety"]["stopped"]


@pytest.mark.slow
def test_lerobot_rollout_sync_drives_the_sim_arm(trained, tmp_path):
    _, checkpoint = trained
    summary_path = tmp_path / "summary.json"
    run_cli("lerobot-rollout", *rollout_flags(checkpoint, summary_path), "--task=stack the cube", "--duration=3",
            cwd=tmp_path)
    summary = json.loads(summary_path.read_text())
    stats = summary["stats"]
    sent = sum(v for k, v in stats.items() if k in ("action_ok", "action_clamped"))
    assert sent >= stats["ticks"] // 2  # inline inference: an action every tick but the rejected ones
    assert_policy_moved_the_arm(summary)


@pytest.mark.slow
@pytest.mark.parametrize("actions", ["absolute", "relative"])
def test_lerobot_rollout_rtc_drives_the_sim_arm(actions, request, tmp_path):
    """Real-time chunking: a background thread samples each chunk guided by the previous one's left-over."""
    checkpoint = request.getfixturevalue("trained")[1] if actions == "absolute" else request.getfixturevalue(
        "trained_relative")
    summary_path = tmp_path / "summary.json"
    proc = run_cli("lerobot-rollout", *rollout_flags(checkpoint, summary_path), *RTC, "--task=stack the cube",
                   "--duration=3", cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert "RTC inference thread started" in log
    assert "RTC inference error" not in log and "Fatal error in RTC thread" not in log, log[-4000:]
    # relative chunks: LeRobot re-expresses the absolute left-over against the state each new chunk starts at
    assert ("RTC prefix will be re-anchored" in log) == (actions == "relative")
    assert_policy_moved_the_arm(json.loads(summary_path.read_text()))


@pytest.mark.slow
def test_lerobot_rollout_sync_refuses_relative_actions(trained_relative, tmp_path):
    """LeRobot 0.6.1's limit, which the README states: relative-action checkpoints need --inference.type=rtc."""
    proc = run_cli("lerobot-rollout", *rollout_flags(trained_relative, tmp_path / "summary.json"),
                   "--task=stack the cube", "--duration=1", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "does not support policies with relative actions" in proc.stderr


@pytest.mark.slow
def test_lerobot_rollout_episodic_records_the_training_feature_names(trained, tmp_path):
    dataset_root, checkpoint = trained
    rec = tmp_path / "rec"
    run_cli("lerobot-rollout", *rollout_flags(checkpoint, tmp_path / "summary.json"), "--strategy.type=episodic",
            "--dataset.repo_id=local/rollout_sim", f"--dataset.root={rec}", "--dataset.push_to_hub=false",
            "--dataset.num_episodes=1", "--dataset.episode_time_s=1", "--dataset.reset_time_s=0",
            "--dataset.single_task=stack the cube", "--dataset.fps=30", "--task=stack the cube", cwd=tmp_path)
    recorded = json.loads((rec / "meta" / "info.json").read_text())
    trained_features = json.loads((dataset_root / "meta" / "info.json").read_text())["features"]
    for key in ("observation.state", "action", "observation.images.front", "observation.images.wrist"):
        assert recorded["features"][key]["names"] == trained_features[key]["names"], key
        assert recorded["features"][key]["shape"] == trained_features[key]["shape"], key
    assert recorded["robot_type"] == "vst_sim_so101" and recorded["total_episodes"] == 1 and recorded["total_frames"] > 10
