"""The real LeRobot CLIs train and evaluate vst_vla offline: the plugin is discovered, checkpoints reload."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lerobot.configs import PreTrainedConfig
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_policy, make_pre_post_processors

import lerobot_policy_vst_vla  # noqa: F401  (registers the policy type, as the CLIs' plugin discovery does)
from vst_vla.collect import CollectConfig, collect

IMAGE = 96
REPO_ID = "local/vst_tabletop"
ENV_FLAGS = ["--env.type=vst_tabletop", "--env.task=stack", f"--env.observation_height={IMAGE}",
             f"--env.observation_width={IMAGE}", "--eval.n_episodes=1", "--eval.batch_size=1"]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    """Two short stack episodes (two instructions, so prompts of different lengths share batches)."""
    root = tmp_path_factory.mktemp("policy_cli") / "ds"
    collect(CollectConfig(root=str(root), tasks=["stack"], episodes_per_task=2, image_size=IMAGE,
                          episode_length=30, only_successful=False))
    return root


def run_cli(name: str, *args: str) -> subprocess.CompletedProcess:
    # One thread: the CLIs otherwise spawn one per core and crawl on shared machines.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    cmd = [str(Path(sys.executable).parent / name), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-4000:]}"
    return proc


def train_flags(dataset_root: Path, out: Path, head: str, steps: int) -> list[str]:
    return ["--policy.type=vst_vla", f"--policy.action_head={head}", "--policy.image_size=[56,56]",
            "--policy.device=cpu", "--policy.push_to_hub=false", f"--dataset.repo_id={REPO_ID}",
            f"--dataset.root={dataset_root}", f"--steps={steps}", "--batch_size=2", f"--save_freq={steps}",
            "--num_workers=0", "--wandb.enable=false", "--log_freq=1", f"--output_dir={out}"]


@pytest.mark.slow
def test_lerobot_train_then_eval_flow_head(dataset_root, tmp_path):
    run_cli("lerobot-train", *train_flags(dataset_root, tmp_path / "train", "flow", steps=3),
            "--policy.chunk_size=4", "--policy.num_steps=3")
    checkpoint = tmp_path / "train" / "checkpoints" / "last" / "pretrained_model"
    assert json.loads((checkpoint / "config.json").read_text())["type"] == "vst_vla"
    for name in ("model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json", "backbone/config.json",
                 "backbone/tokenizer.json"):
        assert (checkpoint / name).is_file(), name

    out = tmp_path / "eval"
    run_cli("lerobot-eval", f"--policy.path={checkpoint}", "--policy.device=cpu", *ENV_FLAGS,
            "--env.episode_length=10", f"--output_dir={out}")
    info = json.loads((out / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 1
    assert info["per_group"]["stack"]["n_episodes"] == 1
    assert 0.0 <= info["overall"]["pc_success"] <= 100.0


@pytest.mark.slow
def test_lerobot_train_tokens_head_with_env_eval_and_reload(dataset_root, tmp_path):
    """The paper's head: lerobot-train (with its in-training env rollout), then LeRobot's own loaders."""
    proc = run_cli("lerobot-train", *train_flags(dataset_root, tmp_path / "train", "tokens", steps=2),
                   *ENV_FLAGS, "--env.episode_length=5", "--env_eval_freq=2")
    assert "Eval policy at step 2" in proc.stderr + proc.stdout
    checkpoint = tmp_path / "train" / "checkpoints" / "last" / "pretrained_model"

    dataset = LeRobotDataset(REPO_ID, root=dataset_root)
    cfg = PreTrainedConfig.from_pretrained(checkpoint)
    cfg.pretrained_path = checkpoint
    policy = make_policy(cfg, ds_meta=dataset.meta)
    pre, post = make_pre_post_processors(cfg, pretrained_path=str(checkpoint))
    frame = dataset[0]
    batch = pre({k: v for k, v in frame.items() if k.startswith("observation.") or k == "task"})
    action = post(policy.select_action(batch))
    assert action.shape == (1, 6)
    # Bin centres lie in [-1, 1], so decoded actions stay within the dataset's q01…q99 range.
    q01, q99 = (torch.as_tensor(dataset.meta.stats["action"][q]).float() for q in ("q01", "q99"))
    assert ((action >= q01 - 1e-3) & (action <= q99 + 1e-3)).all(), (action, q01, q99)
