"""Configuration of the remote policy (LeRobot policy type `vst_vla_remote`).

The policy runs on a `vst-vla serve` server; this side only talks to it. A folder made by
`vst-vla remote-policy` (or `python -m lerobot_policy_vst_vla.remote`) holds this config with the
server's features, action names and chunk size from its hello, plus identity processors, so that
`lerobot-rollout --policy.path=<folder> --policy.host=... --policy.port=...` works like a local
checkpoint (rollout requires `--policy.path`). The token is never written to the folder: pass
`--policy.token=...` or set the environment variable named by `token_env` (VST_VLA_TOKEN).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lerobot.configs import PreTrainedConfig
from lerobot.optim import AdamWConfig
from lerobot.policies.rtc.configuration_rtc import RTCConfig

from .protocol import DEFAULT_MAX_BYTES, PROTOCOL_VERSION, TOKEN_ENV


@PreTrainedConfig.register_subclass("vst_vla_remote")
@dataclass
class VSTVLARemoteConfig(PreTrainedConfig):
    # --- where the server is ---
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None  # None: read from the environment variable `token_env`
    token_env: str = TOKEN_ENV
    # --- liveness: what makes the client hold ---
    connect_timeout_s: float = 5.0
    reply_timeout_s: float = 2.0  # no actions this long after sending an observation -> hold
    # Until the first action is handed out the arm has not moved and there is nothing to hold, so the
    # first chunk (a fresh server's warm-up included) may take this long before the call fails.
    first_reply_timeout_s: float = 60.0
    ping_interval_s: float = 0.5  # websocket keepalive; a missed pong closes the connection -> hold
    ping_timeout_s: float = 2.0
    # After holding this long, try to reconnect (and re-check the hello) before each new chunk;
    # 0: hold until the run ends (an operator restarts it).
    reconnect_after_s: float = 0.0
    max_bytes: int = DEFAULT_MAX_BYTES

    # --- what the server said in its hello (written by the folder maker, checked at connect) ---
    protocol: int = PROTOCOL_VERSION
    server_policy_type: str | None = None
    chunk_size: int = 1
    n_action_steps: int = 1
    fps: int = 30
    action_feature_names: list[str] | None = None
    # the robot type the folder was checked against (hello vs robot features); None: not checked
    robot_type: str | None = None

    # set by lerobot-rollout for --inference.type=rtc and forwarded to the server
    rtc_config: RTCConfig | None = None

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(f"n_action_steps ({self.n_action_steps}) must be in [1, chunk_size={self.chunk_size}]")
        if self.reply_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("reply_timeout_s and connect_timeout_s must be positive")

    def resolve_token(self) -> str:
        token = self.token or os.environ.get(self.token_env, "")
        if not token:
            raise ValueError(f"vst_vla_remote needs the server's token: --policy.token=... or ${self.token_env}")
        return token

    def validate_features(self) -> None:
        pass  # the server's hello is the truth; it is checked against these at connect

    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=0.0)  # nothing to train here

    def get_scheduler_preset(self) -> None:
        return None
