"""`vst-vla train-policy`: LeRobot's training loop on a local LeRobotDataset, from a typed config.

The typed config becomes the same `--key=value` flags `lerobot-train` takes; draccus parses them
into LeRobot's `TrainPipelineConfig` and LeRobot's own `train()` runs in-process. So every LeRobot
policy type works (`vst_vla`, `act`, `diffusion`, ...) and the checkpoint layout, logging and
resuming are exactly lerobot-train's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LAST_CHECKPOINT = Path("checkpoints") / "last" / "pretrained_model"


@dataclass
class TrainPolicyConfig:
    dataset_root: str = "outputs/datasets/vst_tabletop"
    repo_id: str = "local/vst_tabletop"
    policy_type: str = "vst_vla"  # any registered LeRobot policy type
    # `--policy.<key>=<value>` overrides, e.g. {action_head: flow, chunk_size: 10, image_size: [84, 84]}
    policy_overrides: dict[str, Any] = field(default_factory=lambda: {"action_head": "flow", "backbone_preset": "tiny"})
    # A tuned VLM from `vst-vla sft/cot-sft/grpo`: its run folder (…/final is used) or the final/ folder itself.
    backbone_path: str | None = None
    steps: int = 2000
    batch_size: int = 8
    output_dir: str = "outputs/policy/train"
    save_freq: int = 1000
    log_freq: int = 50
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    resume: bool = False
    extra_args: list[str] = field(default_factory=list)  # raw lerobot-train flags, e.g. ["--env.type=vst_tabletop"]


def _flag_value(value: Any) -> str:
    """A Python/YAML value as draccus reads it on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_flag_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_flag_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def resolve_backbone(path: str) -> str:
    """Accept a tuning run folder (uses its `final/`) or a checkpoint folder."""
    p = Path(path)
    if (p / "final" / "config.json").is_file():
        return str(p / "final")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"backbone_path {path}: no config.json there or in {p / 'final'} "
                                "(expected a `vst-vla sft/grpo` output or a Qwen2.5-VL checkpoint folder)")
    return str(p)


def lerobot_train_args(cfg: TrainPolicyConfig) -> list[str]:
    """The `lerobot-train` command line equivalent to `cfg`."""
    policy = dict(cfg.policy_overrides)
    if cfg.backbone_path:
        if cfg.policy_type != "vst_vla":
            raise ValueError(f"backbone_path needs policy_type=vst_vla, got {cfg.policy_type!r}")
        policy["backbone_path"] = resolve_backbone(cfg.backbone_path)
    args = [f"--policy.type={cfg.policy_type}", f"--policy.device={cfg.device}", "--policy.push_to_hub=false"]
    args += [f"--policy.{k}={_flag_value(v)}" for k, v in policy.items() if v is not None]
    args += [f"--dataset.repo_id={cfg.repo_id}", f"--dataset.root={cfg.dataset_root}",
             f"--steps={cfg.steps}", f"--batch_size={cfg.batch_size}", f"--save_freq={cfg.save_freq}",
             f"--log_freq={cfg.log_freq}", f"--seed={cfg.seed}", f"--num_workers={cfg.num_workers}",
             f"--output_dir={cfg.output_dir}", f"--resume={_flag_value(cfg.resume)}", "--wandb.enable=false"]
    return args + list(cfg.extra_args)


def build_train_pipeline_config(cfg: TrainPolicyConfig):
    """LeRobot's `TrainPipelineConfig`, parsed by draccus exactly as `lerobot-train` parses its flags."""
    import draccus
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()  # makes `vst_vla` (and `vst_tabletop`) known to draccus, as lerobot-train does
    return draccus.parse(config_class=TrainPipelineConfig, args=lerobot_train_args(cfg))


def train_policy(cfg: TrainPolicyConfig) -> Path:
    """Train with LeRobot's `train()`; returns the last checkpoint's `pretrained_model` folder."""
    from lerobot.scripts.lerobot_train import train

    pipeline = build_train_pipeline_config(cfg)
    log.info("lerobot-train %s", " ".join(lerobot_train_args(cfg)))
    train(pipeline)
    checkpoint = Path(cfg.output_dir) / LAST_CHECKPOINT
    print(f"policy checkpoint: {checkpoint}")
    return checkpoint
