"""`vst-vla remote-policy`: a `--policy.path` folder for lerobot-rollout from a running server's hello."""

from __future__ import annotations

import os
from dataclasses import dataclass

from lerobot_policy_vst_vla.remote.folder import write_remote_policy_folder
from lerobot_policy_vst_vla.remote.protocol import TOKEN_ENV


@dataclass
class RemotePolicyConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    out: str = "outputs/deploy/remote_policy"  # pass it to lerobot-rollout as --policy.path
    robot_type: str | None = "vst_sim_so101"  # check the hello against this robot (default config); null: skip
    token: str | None = None  # None: $VST_VLA_TOKEN (the folder never stores it)
    token_env: str = TOKEN_ENV


def write_remote_policy(cfg: RemotePolicyConfig) -> None:
    token = cfg.token or os.environ.get(cfg.token_env, "")
    if not token:
        raise SystemExit(f"vst-vla remote-policy: a token is required: token=... or ${cfg.token_env}")
    print(write_remote_policy_folder(cfg.out, cfg.host, cfg.port, token, cfg.robot_type))
