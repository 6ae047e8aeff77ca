"""The real `lerobot-rollout` CLI drives the sim robot (`--robot.type=vst_sim_so101`) with a vst_vla checkpoint.

The checkpoint is tiny (2 lerobot-train steps on 2 collected episodes) and uses absolute actions:
LeRobot 0.6.1's sync inference engine refuses relative-action pipelines (vst_vla's default), and RTC
needs the policy's RTC support (issue 10, item 3).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vst_vla.collect import CollectConfig, collect

IMAGE = 56
CAMERAS = f"{{front: {{width: {IMAGE}, height: {IMAGE}, fps: 30}}, wrist: {{width: {IMAGE}, height: {IMAGE}, fps: 30}}}}"


def run_cli(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    cmd = [str(Path(sys.executable).parent / name), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=cwd)
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
            "--policy.use_relative_actions=false", "--policy.chunk_size=4", "--policy.num_steps=2",
            "--policy.device=cpu", "--policy.push_to_hub=false", "--dataset.repo_id=local/vst_tabletop",
            f"--dataset.root={root}", "--steps=2", "--batch_size=2", "--save_freq=2", "--num_workers=0",
            "--wandb.enable=false", f"--output_dir={tmp / 'train'}")
    return root, tmp / "train" / "checkpoints" / "last" / "pretrained_model"


def rollout_flags(checkpoint: Path, summary: Path) -> list[str]:
    return ["--robot.type=vst_sim_so101", "--robot.clock=lockstep", "--robot.task_family=stack", "--robot.seed=0",
            f"--robot.cameras={CAMERAS}", f"--robot.summary_path={summary}", f"--policy.path={checkpoint}",
            "--policy.device=cpu", "--device=cpu", "--fps=30", "--return_to_initial_position=false",
            "--play_sounds=false"]


@pytest.mark.slow
def test_lerobot_rollout_sync_drives_the_sim_arm(trained, tmp_path):
    _, checkpoint = trained
    summary_path = tmp_path / "summary.json"
    run_cli("lerobot-rollout", *rollout_flags(checkpoint, summary_path), "--task=stack the cube", "--duration=3",
            cwd=tmp_path)
    summary = json.loads(summary_path.read_text())
    stats = summary["stats"]
    assert stats["ticks"] >= 10 and stats["observations"] == stats["ticks"] + 1  # lockstep: one period per observation
    sent = sum(v for k, v in stats.items() if k in ("action_ok", "action_clamped"))
    assert sent >= stats["ticks"] // 2  # policy actions reached the servos
    # An untrained flow head samples wild chunks: any hold is a logged jump or malformed-action rejection.
    counts = summary["safety"]["counts"]
    assert stats.get("action_hold", 0) == counts.get("rejected_jump", 0) + counts.get("rejected_action", 0)
    assert max(summary["max_travel"].values()) > 2.0  # degrees (gripper: % of range): the arm moved
    assert not summary["safety"]["stopped"]


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
