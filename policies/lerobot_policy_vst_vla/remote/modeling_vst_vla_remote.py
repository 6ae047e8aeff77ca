"""`vst_vla_remote`: a LeRobot policy whose `predict_action_chunk` is a call to `vst-vla serve`.

What it sends is what a local policy would be given before its own preprocessor: the observation
frame (`observation.state` f32, cameras as uint8 [H, W, 3], recovered exactly from LeRobot's [0, 1]
floats), the task and the robot type. The server runs the checkpoint's own preprocessor, model and
postprocessor, so the actions that come back are in robot units and this side's processors are
identity (rename, batch, device). RTC arguments are forwarded; the leftover is in robot units and the
server normalises it with the checkpoint's processors.

**Hold.** When replies stop (the connection closes because the server died, a keepalive pong is
missed, or no reply comes within `reply_timeout_s`; before the first action, which has nothing to
hold yet, `first_reply_timeout_s`), the policy drops its queued actions and returns
the hold action at once: the last action it handed out (for RTC: the next one the queue would have
executed), i.e. what the safety layer's own hold re-sends. While holding no new motion is ever
produced; `holding` is True and `stats` counts the ticks. With `reconnect_after_s > 0` it tries to
reconnect and, if the server's hello is still the same, resumes.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from pathlib import Path

import numpy as np
import torch
from lerobot.configs import PreTrainedConfig
from lerobot.policies.pretrained import PreTrainedPolicy
from torch import Tensor

from .client import PolicyClient, ServerUnavailable
from .configuration_vst_vla_remote import VSTVLARemoteConfig
from .protocol import features_to_wire

logger = logging.getLogger(__name__)


class VSTVLARemotePolicy(PreTrainedPolicy):
    config_class = VSTVLARemoteConfig
    name = "vst_vla_remote"

    def __init__(self, config: VSTVLARemoteConfig, dataset_stats=None, dataset_meta=None,  # noqa: ARG002
                 client: PolicyClient | None = None, connect: bool = True, **kwargs):
        super().__init__(config)
        self.config = config
        self.client = client or PolicyClient(
            config.host, config.port, config.resolve_token(), connect_timeout_s=config.connect_timeout_s,
            reply_timeout_s=config.reply_timeout_s, max_bytes=config.max_bytes,
            ping_interval_s=config.ping_interval_s or None, ping_timeout_s=config.ping_timeout_s or None)
        self.stats: Counter[str] = Counter()
        self.holding = False
        self.hold_reason = ""
        self._hold_since: float | None = None
        self._last_reconnect: float = 0.0
        self._hold_action: Tensor | None = None  # (A,) robot units
        self._checked_batch = False
        self.last_reply = None
        self.reset()
        if connect:
            self.check_hello(self.client.connect())

    # ------------------------------------------------------------------ hello
    def check_hello(self, hello: dict) -> None:
        """The server must serve what this config (the folder) says, before any motion."""
        cfg = self.config
        if not cfg.input_features:  # a bare config: take the server's word
            from lerobot.configs.types import FeatureType, PolicyFeature
            cfg.input_features = {k: PolicyFeature(FeatureType(v["type"]), tuple(v["shape"]))
                                  for k, v in hello["input_features"].items()}
            cfg.output_features = {k: PolicyFeature(FeatureType(v["type"]), tuple(v["shape"]))
                                   for k, v in hello["output_features"].items()}
            cfg.action_feature_names = hello.get("action_names")
            cfg.chunk_size, cfg.n_action_steps = hello["chunk_size"], hello["n_action_steps"]
            cfg.fps, cfg.server_policy_type = hello["fps"], hello["policy_type"]
            self.reset()
        problems = []
        for name, mine, theirs in (
                ("input_features", features_to_wire(cfg.input_features), hello["input_features"]),
                ("output_features", features_to_wire(cfg.output_features), hello["output_features"]),
                ("action_names", cfg.action_feature_names, hello.get("action_names")),
                ("chunk_size", cfg.chunk_size, hello["chunk_size"]),
                ("n_action_steps", cfg.n_action_steps, hello["n_action_steps"]),
                ("fps", cfg.fps, hello["fps"]),
                ("policy_type", cfg.server_policy_type, hello["policy_type"])):
            if mine != theirs and not (name == "action_names" and mine is None):
                problems.append(f"{name}: this config has {mine}, the server has {theirs}")
        if problems:
            self.client.close()
            raise ValueError(f"the policy server at {self.client.url} does not serve what {cfg.pretrained_path or 'the config'} "
                             "describes (remake the folder with `vst-vla remote-policy`):\n  " + "\n  ".join(problems))

    def supports_rtc(self) -> bool:
        return bool(self.client.hello and self.client.hello.get("supports_rtc"))

    def init_rtc_processor(self) -> None:
        pass  # the server runs RTC; lerobot-rollout calls this after setting config.rtc_config

    # ------------------------------------------------------------------ LeRobot policy API
    def reset(self):
        self._action_queue: deque[Tensor] = deque(maxlen=self.config.n_action_steps)

    def get_optim_params(self) -> dict:
        return {}

    def forward(self, batch: dict, reduction: str = "mean"):  # noqa: ARG002
        raise NotImplementedError("vst_vla_remote only runs inference; train the served checkpoint instead")

    @torch.no_grad()
    def select_action(self, batch: dict, noise: Tensor | None = None) -> Tensor:
        """(1, A): the next action of the current chunk (sync inference); the hold action while holding."""
        if self._action_queue and not self.client.alive:
            self._start_hold("connection closed")
        if self.holding and not self._maybe_reconnect():
            self._action_queue.clear()
            return self._hold_chunk(batch, 1)[:, 0]
        if not self._action_queue:
            chunk = self.predict_action_chunk(batch, noise=noise)
            if self.holding:
                return chunk[:, 0]
            self._action_queue.extend(chunk[:, : self.config.n_action_steps].transpose(0, 1))
        action = self._action_queue.popleft()
        self._hold_action = action[0].detach().clone()
        return action

    def predict_action_chunk(self, batch: dict, noise: Tensor | None = None, *, inference_delay: int | None = None,
                             prev_chunk_left_over: Tensor | None = None, execution_horizon: int | None = None) -> Tensor:
        """(1, chunk_size, A) actions in robot units from the server; a hold chunk when it does not answer."""
        observation, task, robot_type = self._wire_observation(batch)
        rtc = self._rtc_request(inference_delay, prev_chunk_left_over, execution_horizon)
        if rtc is not None and rtc["leftover_len"] > 0:
            self._hold_action = torch.from_numpy(rtc["leftover"][0].copy())  # what the queue would play next
        if self.holding and not self._maybe_reconnect():
            return self._hold_chunk(batch, self.config.chunk_size)
        if self._hold_action is None and not self.client.alive:
            # Nothing has moved yet (a long robot or dataset set-up may outlast the keepalive): reconnecting
            # and re-checking the hello is safe.
            try:
                self.check_hello(self.client.connect())
            except ServerUnavailable as err:
                self._start_hold(str(err))
                return self._hold_chunk(batch, self.config.chunk_size)
        try:
            reply = self.client.infer(observation, task=task, robot_type=robot_type,
                                      noise=None if noise is None else noise[0].detach().cpu().float().numpy(),
                                      rtc=rtc, timeout_s=self.config.first_reply_timeout_s
                                      if self._hold_action is None else None)
        except ServerUnavailable as err:
            self._start_hold(str(err))
            return self._hold_chunk(batch, self.config.chunk_size)
        self.last_reply = reply
        self.stats["chunks"] += 1
        actions = torch.from_numpy(reply.actions.copy()).unsqueeze(0)
        if rtc is None or rtc["leftover_len"] == 0:
            self._hold_action = actions[0, -1].clone()  # an empty queue has played the whole chunk
        return actions.to(self._batch_device(batch))

    # ------------------------------------------------------------------ hold
    def _start_hold(self, reason: str) -> None:
        if not self.holding:
            logger.warning("policy server %s stopped answering (%s): holding the last action", self.client.url, reason)
            self.holding, self.hold_reason, self._hold_since = True, reason, time.monotonic()
            self.stats["holds"] += 1
        self._action_queue.clear()
        self.client.close()

    def _maybe_reconnect(self) -> bool:
        """While holding: try to reconnect when allowed; True if the server is back with the same hello."""
        after = self.config.reconnect_after_s
        now = time.monotonic()
        if after <= 0 or now - self._hold_since < after or now - self._last_reconnect < after:
            return False
        self._last_reconnect = now
        try:
            self.check_hello(self.client.connect())
        except (ServerUnavailable, ValueError, PermissionError) as err:
            logger.warning("reconnect to %s failed: %s", self.client.url, err)
            return False
        logger.warning("policy server %s is back: resuming", self.client.url)
        self.holding, self.hold_reason = False, ""
        return True

    def _hold_chunk(self, batch: dict, steps: int) -> Tensor:
        self.stats["hold_steps"] += steps
        if self._hold_action is None:
            raise ServerUnavailable(f"the policy server at {self.client.url} is not answering and no action was "
                                    f"ever sent, so there is nothing to hold ({self.hold_reason})")
        return self._hold_action.view(1, 1, -1).expand(1, steps, -1).clone().to(self._batch_device(batch))

    # ------------------------------------------------------------------ wire
    @staticmethod
    def _batch_device(batch: dict) -> torch.device:
        for v in batch.values():
            if isinstance(v, Tensor):
                return v.device
        return torch.device("cpu")

    def _wire_observation(self, batch: dict) -> tuple[dict[str, np.ndarray], str, str]:
        """The frame a local policy would get, from LeRobot's prepared batch (B = 1)."""
        features = self.config.input_features
        task = batch.get("task", "")
        if isinstance(task, (list, tuple)):
            if len(task) != 1:
                raise ValueError(f"vst_vla_remote serves one robot: batch of {len(task)} tasks")
            task = task[0]
        robot_type = batch.get("robot_type", "")
        if isinstance(robot_type, (list, tuple)):
            robot_type = robot_type[0] if robot_type else ""
        if not self._checked_batch:  # before the first request (and so before any motion)
            problems = []
            for key, ft in features.items():
                if key not in batch:
                    problems.append(f"missing {key}")
                elif ft.type.value == "VISUAL" and (batch[key].ndim != 4 or batch[key].shape[1] != 3):
                    problems.append(f"{key} has shape {tuple(batch[key].shape)}, expected (1, 3, H, W)")
                elif ft.type.value != "VISUAL" and tuple(batch[key].shape[1:]) != tuple(ft.shape):
                    problems.append(f"{key} has shape {tuple(batch[key].shape)}, the served policy takes (1, {ft.shape})")
            if self.config.robot_type and robot_type and robot_type != self.config.robot_type:
                problems.append(f"the robot is {robot_type!r}, the folder was checked against {self.config.robot_type!r}")
            if problems:
                raise ValueError("the observation does not fit the served policy: " + "; ".join(problems))
            self._checked_batch = True
        out = {}
        for key, ft in features.items():
            value = batch[key]
            if value.shape[0] != 1:
                raise ValueError(f"vst_vla_remote serves one robot: {key} has batch size {value.shape[0]}")
            value = value[0].detach().cpu()
            if ft.type.value == "VISUAL":
                out[key] = to_wire_image(value)
            else:
                out[key] = value.float().numpy()
        return out, str(task), str(robot_type)

    def _rtc_request(self, inference_delay, prev_chunk_left_over, execution_horizon) -> dict | None:
        rtc_cfg = self.config.rtc_config
        if inference_delay is None and prev_chunk_left_over is None:
            return None
        if rtc_cfg is None or not rtc_cfg.enabled:
            return None
        req = {"enabled": True, "prefix_attention_schedule": getattr(rtc_cfg.prefix_attention_schedule, "value",
                                                                     str(rtc_cfg.prefix_attention_schedule)),
               "max_guidance_weight": float(rtc_cfg.max_guidance_weight),
               "execution_horizon": int(execution_horizon or rtc_cfg.execution_horizon),
               "inference_delay": int(inference_delay or 0), "leftover_len": 0}
        if prev_chunk_left_over is not None:
            left = prev_chunk_left_over.detach().cpu().float()
            if left.ndim == 3:
                left = left[0]
            rows = left.shape[0]
            while rows > 0 and not torch.any(left[rows - 1]):  # the engine zero-pads to execution_horizon
                rows -= 1
            req["leftover"], req["leftover_len"] = left.numpy(), rows
        return req

    # ------------------------------------------------------------------ checkpoints
    def _save_pretrained(self, save_directory: Path, state_dict=None) -> None:  # noqa: ARG002
        token = self.config.token
        self.config.token = None  # never on disk
        try:
            self.config._save_pretrained(Path(save_directory))
        finally:
            self.config.token = token

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path: str | Path, *, config: PreTrainedConfig | None = None,
                        **kwargs) -> VSTVLARemotePolicy:
        """No weights: the config (from the folder, with CLI overrides) says where the server is."""
        if config is None:
            config = PreTrainedConfig.from_pretrained(pretrained_name_or_path)
        if not isinstance(config, VSTVLARemoteConfig):
            raise TypeError(f"{pretrained_name_or_path} is a {config.type!r} config, not vst_vla_remote")
        kwargs = {k: v for k, v in kwargs.items() if k in ("client", "connect")}
        policy = cls(config, **kwargs)
        policy.eval()
        return policy


def to_wire_image(chw: Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> [H, W, 3] uint8 when it came from uint8 (exactly: u8 / 255 * 255 rounds
    back), else [H, W, 3] float32 (the server treats both as LeRobot's local path does)."""
    if chw.dtype == torch.uint8:
        return chw.permute(1, 2, 0).contiguous().numpy()
    chw = chw.float()
    u8 = (chw * 255).round_().clamp_(0, 255).to(torch.uint8)
    if torch.equal(u8.float() / 255, chw):
        return u8.permute(1, 2, 0).contiguous().numpy()
    return chw.permute(1, 2, 0).contiguous().numpy()
