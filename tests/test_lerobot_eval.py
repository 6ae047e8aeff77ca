"""The real `lerobot-eval` CLI finds our env plugin and evaluates a locally saved (untrained) ACT on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.act.configuration_act import ACTConfig
from lerobot.policies.act.modeling_act import ACTPolicy
from lerobot.policies.factory import make_pre_post_processors
from lerobot.utils.feature_utils import dataset_to_policy_features

from vst_vla.collect import CollectConfig, collect

IMAGE = 96


@pytest.fixture(scope="module")
def act_checkpoint(tmp_path_factory):
    """A tiny ACT with random weights (no torchvision download: pretrained_backbone_weights=None)."""
    tmp = tmp_path_factory.mktemp("act")
    collect(CollectConfig(root=str(tmp / "ds"), tasks=["stack"], episodes_per_task=1, image_size=IMAGE))
    meta = LeRobotDataset("local/vst_tabletop", root=tmp / "ds").meta
    features = dataset_to_policy_features(meta.features)
    cfg = ACTConfig(
        input_features={k: f for k, f in features.items() if k.startswith("observation.")},
        output_features={"action": features["action"]},
        pretrained_backbone_weights=None, dim_model=64, n_heads=2, dim_feedforward=128,
        n_encoder_layers=1, n_decoder_layers=1, chunk_size=10, n_action_steps=10, use_vae=False, device="cpu",
    )
    policy = ACTPolicy(cfg)
    pre, post = make_pre_post_processors(cfg, dataset_stats=meta.stats)
    out = tmp / "act_checkpoint"
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return out


def test_lerobot_eval_runs_our_env_plugin(act_checkpoint, tmp_path):
    out = tmp_path / "eval"
    cmd = [Path(sys.executable).parent / "lerobot-eval", f"--policy.path={act_checkpoint}", "--policy.device=cpu",
           "--env.type=vst_tabletop", "--env.task=stack", f"--env.observation_height={IMAGE}",
           f"--env.observation_width={IMAGE}", "--env.episode_length=20", "--eval.n_episodes=1",
           "--eval.batch_size=1", f"--output_dir={out}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads((out / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 1
    assert info["overall"]["pc_success"] == 0.0  # random weights do not stack cubes
    assert info["per_group"]["stack"]["n_episodes"] == 1  # one suite per task family
    assert Path(info["per_group"]["stack"]["video_paths"][0]).stat().st_size > 1000  # the rendered rollout
