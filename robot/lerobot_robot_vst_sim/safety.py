"""A safety layer between a learned policy and an SO-101: pure, deterministic, no I/O of its own.

`SafetyGuard.filter(action, present, now)` turns whatever a policy (or a network, or a teleop) asks
for into a goal that is safe to write to the servos, or into a *hold*. Per tick, in order:

1. **validate**: unknown keys, missing keys, non-numbers, NaN or inf -> reject the whole action, hold;
2. **e-stop / latched stop**: while latched, every action is refused and the arm holds;
3. **joint limits**: clamp each goal into [lower, upper] (the MJCF ranges in sim, the calibrated
   range on the arm; LeRobot clamps nothing in DEGREES mode);
4. **max_relative_target** against the *present* pose (LeRobot's `ensure_safe_goal_position` rule);
5. **jump rejection**: a goal further than `reject_step` from the last command -> reject, hold;
6. **step and velocity limit** against the last command: at most `min(max_step, max_velocity * dt)`.

A *hold* re-sends the last command that was sent (the servos keep it as their goal), or the present
pose when there is none yet. Two more checks run every tick with or without an action, from `tick()`:

- **watchdog**: no fresh action for `hold_after_s` -> hold the *present* pose (so the arm stops where
  it is instead of finishing an old goal); for `stop_after_s` -> a latched stop, cleared only by
  `reset()`;
- **stale observations** (`observe()`): a state or frame older than `max_obs_age_s`, or the same
  frame `frozen_frames` times in a row -> the guard holds, and `should_infer` is False until a fresh
  observation arrives (a deploy loop skips inference; inside lerobot-rollout the robot holds).

E-stops (`EStop`: `trigger()` from a key handler, SIGUSR1, or a touch file) latch until `reset()`.
Every intervention is counted in `counts` and passed to `sinks` (e.g. `JsonlLog`) as one event dict.
Times are whatever clock the caller uses (wall time on the arm, sim time in lockstep), so the same
inputs always give the same outputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

Limit = float | dict[str, float] | None


@dataclass
class SafetyConfig:
    """Thresholds of the guard, in the robot's units (degrees; gripper 0-100) and seconds."""

    enabled: bool = True
    # Per-tick cap on the change of the command (units per tick), scalar or {key: value}; None = off.
    max_step: Limit = 15.0
    # Cap on the command's speed (units per second) against the last command, dt-aware; None = off.
    # The scripted expert's commands (what policies learn) change by up to ~10 deg per 30 Hz tick,
    # ~300 deg/s, while the arm lags them; 360 leaves those intact and stops faster ramps.
    max_velocity: Limit = 360.0
    # The velocity limit assumes at least this interval between commands (one control period), so the
    # first command after a reset, or a second one within a tick, may still move by max_velocity * min_dt_s.
    min_dt_s: float = 1.0 / 30.0
    # A goal further than this from the last command is rejected outright (and the arm holds).
    reject_step: Limit = 45.0
    # Cap on goal - present (LeRobot's max_relative_target rule); None = off.
    max_relative_target: Limit = None
    # Watchdog: no fresh action for this long -> hold the present pose; this long -> latched stop.
    hold_after_s: float = 0.2
    stop_after_s: float = 2.0
    # Observations: older than this (state or frame) -> stale; 0 = no age check.
    max_obs_age_s: float = 0.5
    # This many identical consecutive frames from one camera -> frozen; 0 = no check. Off by default:
    # a rendered sim scene with a still arm repeats frames exactly; real sensors never do.
    frozen_frames: int = 0
    # E-stop sources: a file whose existence triggers it, and SIGUSR1.
    estop_file: str | None = None
    estop_signal: bool = False
    # Interventions as JSON lines (one object per event); None = not written.
    log_path: str | None = None


@dataclass
class Decision:
    """What to send this tick: `action` (None: send nothing), `status` and the interventions made."""

    action: dict[str, float] | None
    status: str  # ok | clamped | hold | stopped
    interventions: list[str] = field(default_factory=list)


class JsonlLog:
    """An intervention sink that appends one JSON object per event to a file (line-buffered)."""

    def __init__(self, path: str | os.PathLike):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a", buffering=1)  # noqa: SIM115  (closed by close())
        self._lock = threading.Lock()

    def __call__(self, event: dict) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.write(json.dumps(event, default=float) + "\n")

    def close(self) -> None:
        with self._lock:
            self._f.close()


class EStop:
    """A latched emergency stop: `trigger()` (a key handler calls it), SIGUSR1, or a touch file.

    Once triggered it stays triggered until `reset()`, and `reset()` refuses while the file exists
    (the cause must be removed first). Signals only set a flag; nothing else runs in the handler.
    """

    def __init__(self, file: str | None = None, use_signal: bool = False):
        self.file = Path(file) if file else None
        self._latched = False
        self.reason = ""
        self._prev_handler = None
        if use_signal and threading.current_thread() is threading.main_thread():
            self._prev_handler = signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._latched, self.reason = True, "signal"

    def trigger(self, reason: str = "key") -> None:
        self._latched, self.reason = True, reason

    @property
    def active(self) -> bool:
        if not self._latched and self.file is not None and self.file.exists():
            self._latched, self.reason = True, "file"
        return self._latched

    def reset(self) -> bool:
        if self.file is not None and self.file.exists():
            return False
        self._latched, self.reason = False, ""
        return True

    def close(self) -> None:
        if self._prev_handler is not None:
            signal.signal(signal.SIGUSR1, self._prev_handler)
            self._prev_handler = None


def _per_key(limit: Limit, keys: Sequence[str], name: str) -> np.ndarray | None:
    if limit is None:
        return None
    if isinstance(limit, Mapping):  # keyed by `<motor>.pos` or by motor name (so101_follower's style)
        limit = {k if k in keys else f"{k}.pos": v for k, v in limit.items()}
        if set(limit) != set(keys):
            raise ValueError(f"{name} must name every joint {list(keys)}; got {sorted(limit)}")
        out = np.array([float(limit[k]) for k in keys])
    else:
        out = np.full(len(keys), float(limit))
    if not np.all(out > 0):
        raise ValueError(f"{name} must be positive, got {limit}")
    return out


def frame_digest(frame: np.ndarray) -> bytes:
    """A cheap fingerprint of a frame (every 4th byte; equal frames give equal digests)."""
    flat = np.ascontiguousarray(frame).reshape(-1)
    return hashlib.blake2b(flat[::4].tobytes(), digest_size=16).digest()


class SafetyGuard:
    """Validates, clamps, rate-limits and times out joint commands. See the module docstring."""

    def __init__(self, keys: Sequence[str], lower: Sequence[float], upper: Sequence[float],
                 config: SafetyConfig | None = None, sinks: Sequence[Callable[[dict], None]] = (),
                 estop: EStop | None = None):
        self.config = cfg = config or SafetyConfig()
        self.keys = tuple(keys)
        self.lower, self.upper = np.asarray(lower, float), np.asarray(upper, float)
        if self.lower.shape != (len(self.keys),) or self.upper.shape != (len(self.keys),):
            raise ValueError("lower/upper need one value per key")
        if np.any(self.lower > self.upper):
            raise ValueError(f"lower > upper in joint limits {self.lower} {self.upper}")
        self.max_step = _per_key(cfg.max_step, self.keys, "max_step")
        self.max_velocity = _per_key(cfg.max_velocity, self.keys, "max_velocity")
        self.reject_step = _per_key(cfg.reject_step, self.keys, "reject_step")
        self.max_relative = _per_key(cfg.max_relative_target, self.keys, "max_relative_target")
        if cfg.stop_after_s < cfg.hold_after_s:
            raise ValueError("stop_after_s must be >= hold_after_s")
        self.sinks = list(sinks)
        if cfg.log_path:
            self.sinks.append(JsonlLog(cfg.log_path))
        self.estop = estop if estop is not None else EStop(cfg.estop_file, cfg.estop_signal)
        self.counts: Counter[str] = Counter()
        self.last_command: np.ndarray | None = None
        self.last_command_time: float | None = None
        self.last_action_time: float | None = None  # last *fresh* action (accepted or not)
        self.stopped = False  # latched stop (watchdog or e-stop); only reset() clears it
        self.watchdog_holding = False
        self.obs_stale = False
        self._digests: dict[str, tuple[bytes, int]] = {}

    # ------------------------------------------------------------------ events
    def _event(self, kind: str, now: float | None, **details) -> None:
        self.counts[kind] += 1
        event = {"t": now, "kind": kind, **details}
        for sink in self.sinks:
            sink(event)

    def summary(self) -> dict:
        return {"counts": dict(self.counts), "stopped": self.stopped, "estop": self.estop.active,
                "config": asdict(self.config)}

    def close(self) -> None:
        for sink in self.sinks:
            if hasattr(sink, "close"):
                sink.close()
        self.estop.close()

    # ------------------------------------------------------------------ state
    def reset(self, present: Mapping[str, float] | None = None, now: float | None = None) -> bool:
        """Clear a latched stop and start over from the present pose. False while an e-stop file exists."""
        if not self.estop.reset():
            self._event("reset_refused", now, reason="estop file still present")
            return False
        self.stopped = self.watchdog_holding = self.obs_stale = False
        self._digests.clear()
        self.last_command = None if present is None else self._vector(present)
        self.last_command_time = self.last_action_time = now
        self._event("reset", now)
        return True

    def _vector(self, values: Mapping[str, float]) -> np.ndarray:
        return np.array([float(values[k]) for k in self.keys])

    def _as_dict(self, v: np.ndarray) -> dict[str, float]:
        return {k: float(x) for k, x in zip(self.keys, v, strict=True)}

    def _hold_target(self, present: np.ndarray | None) -> np.ndarray | None:
        if self.last_command is not None:
            return self.last_command
        return None if present is None else np.clip(present, self.lower, self.upper)

    def _hold(self, present: np.ndarray | None, status: str, interventions: list[str]) -> Decision:
        target = self._hold_target(present)
        return Decision(None if target is None else self._as_dict(target), status, interventions)

    @property
    def should_infer(self) -> bool:
        """False while stopped or while observations are stale: a deploy loop then skips inference."""
        return not (self.stopped or self.estop.active or self.obs_stale)

    # ------------------------------------------------------------------ observations
    def observe(self, now: float, state_time: float | None = None,
                frames: Mapping[str, np.ndarray] | None = None,
                frame_times: Mapping[str, float] | None = None) -> bool:
        """Record one observation; returns whether it is fresh. Stale ones make the guard hold."""
        cfg = self.config
        reasons = []
        if cfg.max_obs_age_s > 0:
            times = {"state": state_time, **(frame_times or {})}
            for name, t in times.items():
                if t is not None and now - t > cfg.max_obs_age_s:
                    reasons.append(f"{name} age {now - t:.3f}s")
        if cfg.frozen_frames > 0 and frames:
            for cam, img in frames.items():
                d = frame_digest(img)
                prev, n = self._digests.get(cam, (None, 0))
                n = n + 1 if d == prev else 1
                self._digests[cam] = (d, n)
                if n >= cfg.frozen_frames:
                    reasons.append(f"{cam} frozen for {n} frames")
        stale = bool(reasons)
        if stale and not self.obs_stale:
            self._event("stale_observation", now, reasons=reasons)
        elif not stale and self.obs_stale:
            self._event("observation_recovered", now)
        self.obs_stale = stale
        return not stale

    # ------------------------------------------------------------------ watchdog
    def tick(self, now: float, present: Mapping[str, float] | None = None) -> Decision | None:
        """Run the watchdog and the e-stop check; a Decision when the robot must act on its own."""
        present_v = None if present is None else self._vector(present)
        if self.estop.active and not self.stopped:
            self.stopped = True
            self._event("estop", now, reason=self.estop.reason)
            return self._hold_present(present_v, "stopped", ["estop"], now)
        if self.stopped or self.last_action_time is None:
            return None
        idle = now - self.last_action_time
        if idle >= self.config.stop_after_s:
            self.stopped = True
            self._event("watchdog_stop", now, idle_s=idle)
            return self._hold_present(present_v, "stopped", ["watchdog_stop"], now)
        if idle >= self.config.hold_after_s and not self.watchdog_holding:
            self.watchdog_holding = True
            self._event("watchdog_hold", now, idle_s=idle)
            return self._hold_present(present_v, "hold", ["watchdog_hold"], now)
        return None

    def _hold_present(self, present: np.ndarray | None, status: str, why: list[str], now: float) -> Decision:
        """Hold where the arm *is*: the present pose becomes the command (if known)."""
        if present is not None and np.all(np.isfinite(present)):
            self.last_command = np.clip(present, self.lower, self.upper)
            self.last_command_time = now
        return self._hold(present, status, why)

    # ------------------------------------------------------------------ actions
    def filter(self, action: Mapping, present: Mapping[str, float] | None = None,
               now: float | None = None) -> Decision:
        """The goal to send for `action` given the present pose (see the module docstring)."""
        now = time.monotonic() if now is None else now
        present_v = None
        if present is not None:
            present_v = self._vector(present)
            if not np.all(np.isfinite(present_v)):
                present_v = None
        if not self.config.enabled:
            return Decision(dict(action), "ok")
        self.last_action_time = now
        self.watchdog_holding = False

        problem = self._validate(action)
        if problem is not None:
            self._event("rejected_action", now, reason=problem)
            return self._hold(present_v, "hold" if not self.stopped else "stopped", ["rejected_action"])
        if self.stopped or self.estop.active:
            if not self.stopped:
                self.stopped = True
                self._event("estop", now, reason=self.estop.reason)
            self.counts["refused_while_stopped"] += 1
            return self._hold(present_v, "stopped", ["stopped"])
        if self.obs_stale:
            self._event("hold_stale_observation", now)
            return self._hold(present_v, "hold", ["stale_observation"])

        goal = self._vector(action)
        interventions: list[str] = []
        clamped = np.clip(goal, self.lower, self.upper)
        if not np.array_equal(clamped, goal):
            interventions.append("joint_limit")
        goal = clamped
        if self.max_relative is not None and present_v is not None:
            rel = np.clip(goal, present_v - self.max_relative, present_v + self.max_relative)
            if not np.array_equal(rel, goal):
                interventions.append("max_relative_target")
            goal = np.clip(rel, self.lower, self.upper)
        ref = self.last_command if self.last_command is not None else present_v
        if ref is not None:
            delta = goal - ref
            if self.reject_step is not None and np.any(np.abs(delta) > self.reject_step):
                joint = self.keys[int(np.argmax(np.abs(delta) - self.reject_step))]
                self._event("rejected_jump", now, joint=joint, max_delta=float(np.max(np.abs(delta))))
                return self._hold(present_v, "hold", ["rejected_jump"])
            cap = self._step_cap(now)
            if cap is not None:
                limited = ref + np.clip(delta, -cap, cap)
                if not np.array_equal(limited, goal):
                    interventions.append("rate_limit")
                goal = np.clip(limited, self.lower, self.upper)
        for kind in interventions:
            self._event(kind, now)
        self.last_command, self.last_command_time = goal, now
        return Decision(self._as_dict(goal), "clamped" if interventions else "ok", interventions)

    def _validate(self, action: Mapping) -> str | None:
        if not isinstance(action, Mapping):
            return f"action is a {type(action).__name__}, not a mapping"
        keys = set(action)
        if keys != set(self.keys):
            unknown, missing = sorted(map(str, keys - set(self.keys))), sorted(set(self.keys) - keys)
            return f"unknown keys {unknown}, missing keys {missing}"
        for k in self.keys:
            v = action[k]
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) and not (
                    isinstance(v, np.ndarray) and v.size == 1 and np.issubdtype(v.dtype, np.number)) and not (
                    hasattr(v, "item") and hasattr(v, "numel") and v.numel() == 1):
                return f"{k} is a {type(v).__name__}"
            try:
                f = float(v)
            except (TypeError, ValueError, OverflowError):
                return f"{k} is not a number"
            if not math.isfinite(f):
                return f"{k} is {f}"
        return None

    def _step_cap(self, now: float) -> np.ndarray | None:
        caps = []
        if self.max_step is not None:
            caps.append(self.max_step)
        if self.max_velocity is not None and self.last_command_time is not None:
            dt = max(now - self.last_command_time, self.config.min_dt_s)
            caps.append(self.max_velocity * dt)
        if not caps:
            return None
        return np.minimum.reduce(caps)
