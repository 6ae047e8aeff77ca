"""Small untrained LeRobot checkpoints built from a config in a second (tests and benchmarks of serving).

`make_tiny_checkpoint(folder, "vst_vla" | "act", ...)` writes what `lerobot-train` writes into
`pretrained_model/`: config.json, model.safetensors and the policy's own pre/post-processors with
made-up, fixed dataset statistics for the SO-101's six joints (around the sim's home pose, actions
within a few degrees of it) and `front`/`wrist` cameras.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lerobot_env_vst_vla.env import HOME_Q
from lerobot_env_vst_vla.robot import MOTOR_KEYS, to_so101_units

CAMERAS = ("front", "wrist")


def _stats(cameras: tuple[str, ...], seed: int) -> dict:
    """Joints around the sim's home pose (so101 units), so an untrained policy asks for nearby goals."""
    rng = np.random.default_rng(seed)
    home = to_so101_units(HOME_Q)

    def vec(scale: float) -> dict:
        mean = home + rng.normal(0, scale / 3, len(home))
        std = np.full(len(home), scale)
        return {"mean": mean, "std": std, "min": mean - 3 * std, "max": mean + 3 * std,
                "q01": mean - 2.3 * std, "q99": mean + 2.3 * std}

    stats = {"observation.state": vec(20.0), "action": vec(5.0)}
    for cam in cameras:
        c = np.full((3, 1, 1), 0.5)
        stats[f"observation.images.{cam}"] = {"mean": c, "std": c / 2, "min": c * 0, "max": c * 2,
                                             "q01": c * 0.02, "q99": c * 1.98}
    return {k: {s: torch.tensor(v, dtype=torch.float32) for s, v in d.items()} for k, d in stats.items()}


def make_tiny_checkpoint(folder: str | Path, policy_type: str = "vst_vla", image_size: int = 224,
                         cameras: tuple[str, ...] = CAMERAS, seed: int = 0, **overrides) -> Path:
    """An untrained `policy_type` checkpoint at `folder` (loadable with --policy.path); returns it."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies import get_policy_class, make_pre_post_processors

    inputs = {"observation.state": PolicyFeature(FeatureType.STATE, (len(MOTOR_KEYS),))}
    inputs.update({f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, image_size, image_size))
                   for c in cameras})
    outputs = {"action": PolicyFeature(FeatureType.ACTION, (len(MOTOR_KEYS),))}
    common = {"input_features": inputs, "output_features": outputs, "device": "cpu", "push_to_hub": False}
    if policy_type == "vst_vla":
        from lerobot_policy_vst_vla import VSTVLAConfig

        config = VSTVLAConfig(**common, **{"action_head": "flow", "image_size": (56, 56), "chunk_size": 10,
                                          "num_steps": 2, "use_relative_actions": False,
                                          "action_feature_names": list(MOTOR_KEYS), "backbone_seed": seed,
                                          **overrides})
    elif policy_type == "act":
        from lerobot.policies.act.configuration_act import ACTConfig

        config = ACTConfig(**common, **{"pretrained_backbone_weights": None, "chunk_size": 10, "n_action_steps": 10,
                                       "dim_model": 64, "n_heads": 2, "dim_feedforward": 128, "n_encoder_layers": 1,
                                       "n_decoder_layers": 1, "use_vae": False, **overrides})
    else:
        raise ValueError(f"make_tiny_checkpoint knows vst_vla and act, not {policy_type!r}")
    torch.manual_seed(seed)
    policy = get_policy_class(policy_type)(config)
    folder = Path(folder)
    policy.save_pretrained(folder)
    pre, post = make_pre_post_processors(config, dataset_stats=_stats(cameras, seed))
    pre.save_pretrained(folder)
    post.save_pretrained(folder)
    return folder
