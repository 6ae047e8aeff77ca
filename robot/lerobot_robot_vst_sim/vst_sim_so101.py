"""The vst-vla MuJoCo SO-101 as a LeRobot `Robot`: `lerobot-rollout --robot.type=vst_sim_so101 ...`.

Keys and units are so101_follower's (`<motor>.pos` in its motor order; degrees, gripper 0-100), the
cameras `front`/`wrist` give (H, W, 3) uint8, and `send_action` returns what reached the simulated
servos: the request after the safety layer (validation, joint limits, max_relative_target, jump
rejection, step/velocity limits). Two clocks:

- `realtime`: a physics thread advances one control period per 1/fps of wall time and keeps the last
  goal when no command comes, as the servos do; the watchdog runs on that thread. Rendering stays on
  the caller's thread (GL contexts belong to the thread that made them), under the physics lock.
- `lockstep`: every `get_observation()` after the first advances exactly one control period (the
  safety clock is sim time), so a run is deterministic whatever the host's speed.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from functools import cached_property
from pathlib import Path

import numpy as np
from lerobot.robots.robot import Robot
from lerobot.utils.errors import DeviceAlreadyConnectedError, DeviceNotConnectedError

from lerobot_env_vst_vla import SpatialTabletopEnv
from lerobot_env_vst_vla.robot import MOTOR_KEYS, from_so101_units, to_so101_units

from .config_vst_sim_so101 import VstSimSO101Config
from .safety import Decision, SafetyConfig, SafetyGuard

logger = logging.getLogger(__name__)


class VstSimSO101(Robot):
    config_class = VstSimSO101Config
    name = "vst_sim_so101"

    def __init__(self, config: VstSimSO101Config):
        super().__init__(config)
        self.config = config
        self.cameras = dict(config.cameras)  # lerobot-rollout sizes its image writers by len(robot.cameras)
        self.env: SpatialTabletopEnv | None = None
        self.guard: SafetyGuard | None = None
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._rng = np.random.default_rng(config.seed)
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._first_obs = True
        self._t_connect = 0.0
        self._history: collections.deque = collections.deque(maxlen=256)
        self._frozen: tuple[float, dict] | None = None
        self.stats = collections.Counter()
        self._initial_q: np.ndarray | None = None
        self._max_travel = np.zeros(len(MOTOR_KEYS))
        self.last_sent: dict[str, float] | None = None
        self.last_decision: Decision | None = None
        self.last_observation_times: dict[str, float] = {}

    # ------------------------------------------------------------------ features
    @cached_property
    def observation_features(self) -> dict:
        cams = {c: (cfg.height, cfg.width, 3) for c, cfg in self.config.cameras.items()}
        return {**dict.fromkeys(MOTOR_KEYS, float), **cams}

    @cached_property
    def action_features(self) -> dict:
        return dict.fromkeys(MOTOR_KEYS, float)

    @property
    def is_connected(self) -> bool:
        return self.env is not None

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    # ------------------------------------------------------------------ extras beyond the contract
    @property
    def instruction(self) -> str:
        """The episode's instruction: pass it as `--task` (see `python -m lerobot_robot_vst_sim.instruction`)."""
        if self.env is None:
            return instruction_for(self.config)
        return self.env.task_description

    @property
    def is_success(self) -> bool:
        self._require_connected()
        return self.env.is_success

    def ground_truth(self):
        self._require_connected()
        with self._lock:
            return self.env.ground_truth()

    def now(self) -> float:
        """The safety clock: sim time in lockstep, monotonic wall time in realtime."""
        if self.config.clock == "lockstep":
            return float(self.env.data.time)
        return time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def _require_connected(self) -> None:
        if self.env is None:
            raise DeviceNotConnectedError(f"{self} is not connected. Run `.connect()` first.")

    def connect(self, calibrate: bool = True) -> None:  # noqa: ARG002  (nothing to calibrate)
        if self.env is not None:
            raise DeviceAlreadyConnectedError(f"{self} already connected")
        cfg = self.config
        size = next(iter(cfg.cameras.values()), None)
        env = SpatialTabletopEnv(
            task=cfg.task_family, obs_type="pixels_agent_pos" if cfg.cameras else "agent_pos",
            action_space="joint", cameras=tuple(cfg.cameras) or ("front",),
            observation_width=size.width if size else 64, observation_height=size.height if size else 64,
            fps=cfg.fps, episode_length=10**9, robot_variant=cfg.robot_variant, randomize=cfg.randomize)
        env.reset(seed=cfg.seed)
        lower, upper = env.command_limits()
        safety = cfg.safety
        if cfg.max_relative_target is not None:
            safety = SafetyConfig(**{**safety.__dict__, "max_relative_target": cfg.max_relative_target})
        self._reset_counters()
        self.env = env
        self.guard = SafetyGuard(MOTOR_KEYS, lower, upper, safety)
        present = self._present()
        self._initial_q = np.array([present[k] for k in MOTOR_KEYS])
        self._t_connect = self.now()
        self.guard.reset(present, self._t_connect)
        if cfg.clock == "realtime":
            self._stop.clear()
            self._thread = threading.Thread(target=self._physics_loop, name="vst_sim_physics", daemon=True)
            self._thread.start()
        logger.info("%s connected: %s seed %d, %s clock; instruction: %r", self, cfg.task_family, cfg.seed,
                    cfg.clock, self.instruction)

    def disconnect(self) -> None:
        self._require_connected()
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=2.0)
            self._thread = None
        with self._lock:
            if self.config.torque_off_on_disconnect:  # position servos with no gain: the arm falls
                self.env.model.actuator_gainprm[:, 0] = 0.0
                self.env.model.actuator_biasprm[:, :3] = 0.0
                for _ in range(self.config.fps // 2):
                    self.env.advance()
            summary = self.summary()
            self.guard.close()
            self.env.close()
            self.env = None
        if self.config.summary_path:
            path = Path(self.config.summary_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=1, default=float))
        logger.info("%s disconnected: %s", self, summary["stats"])

    def summary(self) -> dict:
        """What happened since connect: ticks, commands, joint travel, success, safety interventions."""
        present = self._present()
        return {
            "robot": self.name, "task_family": self.config.task_family, "seed": self.config.seed,
            "clock": self.config.clock, "instruction": self.env.task_description,
            "stats": dict(self.stats), "success": bool(self.env.is_success),
            "initial_position": dict(zip(MOTOR_KEYS, self._initial_q.tolist(), strict=True)),
            "final_position": present,
            "max_travel": dict(zip(MOTOR_KEYS, self._max_travel.tolist(), strict=True)),
            "safety": self.guard.summary(),
        }

    # ------------------------------------------------------------------ physics
    def _present(self) -> dict[str, float]:
        q = to_so101_units(self.env.joint_positions())
        return dict(zip(MOTOR_KEYS, q.tolist(), strict=True))

    def _apply(self, goal: dict[str, float]) -> None:
        target = from_so101_units(np.array([goal[k] for k in MOTOR_KEYS]))
        lo, hi = self.env.model.actuator_ctrlrange.T
        self.env.data.ctrl[:] = np.clip(target, lo, hi)

    def _advance_one_period(self, now: float | None) -> None:
        """One control period holding the servos' goal, then the watchdog (caller holds the lock)."""
        self.env.advance()
        self.stats["ticks"] += 1
        q = to_so101_units(self.env.joint_positions())
        self._max_travel = np.maximum(self._max_travel, np.abs(q - self._initial_q))
        decision = self.guard.tick(self.now() if now is None else now, dict(zip(MOTOR_KEYS, q.tolist(), strict=True)))
        if decision is not None:
            self.stats[f"watchdog_{decision.status}"] += 1
            if decision.action is not None:
                self._apply(decision.action)
                self.last_sent = decision.action

    def _physics_loop(self) -> None:
        period = 1.0 / self.config.fps
        next_t = time.monotonic() + period
        while not self._stop.is_set():
            wait = next_t - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.005))
                continue
            with self._lock:
                if self.env is None:
                    return
                self._advance_one_period(time.monotonic())
            next_t += period
            behind = time.monotonic() - next_t
            if behind > 0.25:  # the host stalled: let sim time slip rather than fast-forward
                self.stats["physics_overruns"] += 1
                next_t = time.monotonic() + period

    # ------------------------------------------------------------------ Robot contract
    def get_observation(self) -> dict:
        self._require_connected()
        cfg = self.config
        with self._lock:
            if cfg.clock == "lockstep" and not self._first_obs:
                self._advance_one_period(None)
            self._first_obs = False
            now = self.now()
            state = self._present()
            frames = {c: self.env.render_camera(c) for c in cfg.cameras}
        self.stats["observations"] += 1
        frame_time = now
        if cfg.freeze_camera_after_s > 0 and now - self._t_connect >= cfg.freeze_camera_after_s:
            if self._frozen is None:
                self._frozen = (now, frames)
            frame_time, frames = self._frozen
        capture = {"state": now, "frames": frame_time}
        self._history.append((now, state, frames, capture))
        if cfg.obs_delay_ms > 0:  # the newest capture that is at least obs_delay_ms old
            cutoff = now - cfg.obs_delay_ms / 1000.0
            older = [h for h in self._history if h[0] <= cutoff]
            _, state, frames, capture = older[-1] if older else self._history[0]
        self.last_observation_times = capture
        with self._lock:
            self.guard.observe(now, capture["state"], frames, dict.fromkeys(frames, capture["frames"]))
        return {**state, **{c: frames[c] for c in cfg.cameras}}

    def send_action(self, action: dict) -> dict:
        self._require_connected()
        with self._lock:
            present = self._present()
            now = self.now()
            if self.guard.config.enabled:
                decision = self.guard.filter(action, present, now)
            else:
                decision = self._unguarded(action, present)
            self.last_decision = decision
            self.stats[f"action_{decision.status}"] += 1
            if decision.action is None:
                return {}
            if self.config.drop_action_prob > 0 and self._rng.random() < self.config.drop_action_prob:
                self.stats["actions_dropped"] += 1  # lost on the way to the servos (fault injection)
                return dict(self.last_sent or {})
            self._apply(decision.action)
            self.last_sent = decision.action
            return dict(decision.action)

    def _unguarded(self, action: dict, present: dict[str, float]) -> Decision:
        """Without the safety layer: what so101_follower and its servos do (relative cap, servo limits)."""
        goal = np.array([float(action[k]) for k in MOTOR_KEYS])
        if not np.all(np.isfinite(goal)):
            raise ValueError(f"non-finite action {action}")
        now = np.array([present[k] for k in MOTOR_KEYS])
        mrt = self.config.max_relative_target
        if mrt is not None:
            cap = np.array([(mrt[k] if k in mrt else mrt[k.removesuffix('.pos')]) if isinstance(mrt, dict) else mrt
                            for k in MOTOR_KEYS])
            goal = now + np.clip(goal - now, -cap, cap)
        goal = np.clip(goal, self.guard.lower, self.guard.upper)
        return Decision(dict(zip(MOTOR_KEYS, goal.tolist(), strict=True)), "ok")


def instruction_for(config: VstSimSO101Config) -> str:
    """The instruction of the scene `config` describes, without connecting a robot."""
    env = SpatialTabletopEnv(task=config.task_family, obs_type="agent_pos", randomize=config.randomize)
    try:
        env.reset(seed=config.seed)
        return env.task_description
    finally:
        env.close()
