"""`vst-vla deploy`: run a policy checkpoint on the sim SO-101 or the guarded real arm through LeRobot's
own rollout machinery, and record what happened.

    vst-vla deploy --policy.path=<ckpt>/pretrained_model                       # sim, sync inference
    vst-vla deploy --policy.path=<ckpt>/pretrained_model --inference.type=rtc  # real-time chunking
    vst-vla deploy policy.server=127.0.0.1:8765                                # remote: `vst-vla serve`
    vst-vla deploy --robot.type=vst_so101_follower --robot.port=/dev/ttyACM0 --policy.path=... task="..."

**What runs.** The stage composes `lerobot-rollout` flags from `vst_vla/configs/deploy.yaml` (printed
and stored in the summary, so the run can be repeated with the stock CLI), parses them into
LeRobot's `RolloutConfig` exactly as `lerobot-rollout` does, and drives LeRobot's Python API:
`build_rollout_context` (policy, processors, robot, inference engine), `create_strategy`, then the
strategy's `setup`/`run`/`teardown` — the body of `lerobot.scripts.lerobot_rollout.rollout`. No control
loop of our own: the ticks, the sync/RTC engines, the action mapping and the teardown are LeRobot's.
Between building the context and running the strategy the stage wraps, without changing behaviour:

- the robot the strategy talks to (`ctx.hardware.robot_wrapper`), to time each tick: observation →
  action dispatched (obs→action latency), ticks with no action (starved: RTC's queue was empty);
- the inference engine's `get_action` (per-tick cost; RTC queue depth after the pop);
- the policy's `predict_action_chunk` (LeRobot's torch.compile hook replaces it the same way), to
  time each inference in whatever thread runs it (main for sync, LeRobot's RTC thread), with the RTC
  delay and left-over, and for `vst_vla_remote` the server's own timing and whether the client holds;
- the safety guard of our robots (`SafetyGuard.sinks`), to log every intervention by kind.

**Remote.** With `policy.server=host:port` the stage asks that `vst-vla serve` for its hello, checks it
against the configured robot's features, writes a `vst_vla_remote` folder (`<output_dir>/remote_policy`,
no token on disk) and rolls it out; the token comes from `policy.token` or `$VST_VLA_TOKEN`.

**Outputs** in `output_dir`: `telemetry.jsonl` (one object per tick, inference and safety event),
`summary.json` (latency percentiles, starved ticks, queue depth, interventions by kind, the robot's
own summary, the equivalent `lerobot-rollout` command), `deploy.rrd` (Rerun: camera images, the arm in
3D, joint commands vs state, telemetry scalars, safety events and counts; the episode layout of
`vst_vla.viz.blueprint`), and for the sim `robot_summary.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import queue
import shlex
import signal
import sys
import threading
import time
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ROBOT_TYPES = {"vst_sim_so101": "the MuJoCo SO-101 tabletop", "vst_so101_follower": "the guarded real SO-101 arm"}
SIM = "vst_sim_so101"
# Guard events that are bookkeeping, not interventions.
NOT_INTERVENTIONS = {"reset", "observation_recovered"}


# ---------------------------------------------------------------------------------------------- config
@dataclass
class DeployPolicyConfig:
    path: str | None = None  # a LeRobot checkpoint folder (…/pretrained_model) for local inference
    device: str = "cpu"
    server: str | None = None  # "host:port" of a `vst-vla serve`: inference runs there (vst_vla_remote)
    token: str | None = None  # remote only; None: the environment variable `token_env`
    token_env: str = "VST_VLA_TOKEN"


@dataclass
class DeployRTCConfig:
    execution_horizon: int = 10
    max_guidance_weight: float = 10.0
    prefix_attention_schedule: str = "LINEAR"


@dataclass
class DeployInferenceConfig:
    type: str = "sync"  # sync | rtc (LeRobot's engines)
    queue_threshold: int = 30  # rtc: infer the next chunk once the queue holds this many actions or fewer
    rtc: DeployRTCConfig = field(default_factory=DeployRTCConfig)


@dataclass
class DeployRerunConfig:
    enabled: bool = True
    image_every: int = 1  # log camera images every n-th tick
    scene_every: int = 5  # sim: log the scene ground truth (objects, camera poses) every n-th tick
    jpeg_quality: int = 0  # 0: raw images; 1-100: JPEG-compressed in the .rrd
    queue_size: int = 512  # records waiting for the logging thread; more are dropped (and counted)


@dataclass
class DeployConfig:
    # --robot.* flags of lerobot-rollout. `type` picks the robot; the rest overrides robot_defaults[type].
    robot: dict[str, Any] = field(default_factory=lambda: {"type": SIM})
    robot_defaults: dict[str, Any] = field(default_factory=dict)
    policy: DeployPolicyConfig = field(default_factory=DeployPolicyConfig)
    policy_overrides: dict[str, Any] = field(default_factory=dict)  # more --policy.* flags
    inference: DeployInferenceConfig = field(default_factory=DeployInferenceConfig)
    fps: int = 30
    duration: float = 30.0  # seconds; 0 = until Ctrl-C
    task: str | None = None  # None: the sim scene's instruction (required on the real arm)
    return_to_initial_position: bool = True
    rollout_args: list[str] = field(default_factory=list)  # more lerobot-rollout flags, verbatim
    output_dir: str = "outputs/deploy/run"
    rerun: DeployRerunConfig = field(default_factory=DeployRerunConfig)


class DeployError(SystemExit):
    """A bad configuration, found before the robot moves: exits the CLI with this message."""

    def __init__(self, message: str):
        super().__init__(f"vst-vla deploy: {message}")


# ---------------------------------------------------------------------------------------------- flags
def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    return str(v)


def _flags(prefix: str, values: dict, cls: type | None) -> list[str]:
    """`--prefix.key=value` flags; a dict for a dataclass field is flattened (its other fields keep their
    defaults, e.g. the real arm's safety preset), any other dict or list goes whole as JSON (cameras)."""
    hints = {}
    if cls is not None and dataclasses.is_dataclass(cls):
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001  (unresolvable annotations: send values whole)
            hints = {}
    out = []
    for key, v in values.items():
        if v is None:  # null: LeRobot's default
            continue
        sub = hints.get(key)
        if isinstance(v, dict) and sub is not None and dataclasses.is_dataclass(sub):
            out += _flags(f"{prefix}.{key}", v, sub)
        else:
            out.append(f"--{prefix}.{key}={_value(v)}")
    return out


def _register_lerobot() -> None:
    """What `lerobot-rollout` imports and registers before parsing (cameras, robots, plugins)."""
    import lerobot.scripts.lerobot_rollout  # noqa: F401  (its imports register LeRobot's robots and cameras)
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()


def _robot_settings(cfg: DeployConfig) -> tuple[str, dict]:
    robot = dict(cfg.robot or {})
    robot_type = robot.pop("type", None) or SIM
    if robot_type not in ROBOT_TYPES:
        known = ", ".join(f"{k} ({v})" for k, v in ROBOT_TYPES.items())
        raise DeployError(f"unknown robot type {robot_type!r}: deploy drives {known}. "
                          "For other LeRobot robots run lerobot-rollout directly.")
    merged = {**dict((cfg.robot_defaults or {}).get(robot_type) or {}), **robot}
    return robot_type, merged


def _parse_robot(robot_type: str, settings: dict):
    """The robot's config as lerobot-rollout's parser builds it (not connected)."""
    import draccus
    from lerobot.robots.config import RobotConfig

    robot_only = dataclasses.make_dataclass("RobotOnly", [("robot", RobotConfig | None, None)])  # as RolloutConfig.robot
    cls = RobotConfig.get_choice_class(robot_type)
    args = [f"--robot.type={robot_type}", *_flags("robot", settings, cls)]
    try:
        return draccus.parse(config_class=robot_only, args=args).robot, args
    except (Exception, SystemExit) as err:  # draccus exits on unknown flags
        raise DeployError(f"bad robot settings {settings} for {robot_type}: {err}") from None


def _resolve_checkpoint(path: str | None) -> Path:
    if not path:
        raise DeployError("policy.path=<checkpoint folder> is required (…/checkpoints/last/pretrained_model), "
                          "or policy.server=<host:port> of a `vst-vla serve`")
    p = Path(path).expanduser()
    if not p.exists():
        raise DeployError(f"no checkpoint at {p}: expected a folder with config.json "
                          "(…/checkpoints/last/pretrained_model)")
    if not (p / "config.json").is_file():
        if (p / "pretrained_model" / "config.json").is_file():
            return p / "pretrained_model"
        raise DeployError(f"{p} holds no config.json: not a LeRobot checkpoint (…/pretrained_model)")
    return p


def _uses_relative_actions(checkpoint: Path) -> bool:
    pre = checkpoint / "policy_preprocessor.json"
    if not pre.is_file():
        return False
    steps = json.loads(pre.read_text()).get("steps", [])
    return any(s.get("registry_name") == "relative_actions_processor" and s.get("config", {}).get("enabled")
               for s in steps)


def _server_and_token(cfg: DeployConfig) -> tuple[str, int, str]:
    host, sep, port = str(cfg.policy.server).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise DeployError(f"policy.server must be host:port, got {cfg.policy.server!r}")
    token = cfg.policy.token or os.environ.get(cfg.policy.token_env, "")
    if not token:
        raise DeployError(f"remote inference needs the server's token: policy.token=... or ${cfg.policy.token_env}")
    return host, int(port), token


def _remote_folder(host: str, port: int, token: str, robot_config, out: Path) -> Path:
    from lerobot.robots import make_robot_from_config
    from lerobot_policy_vst_vla.remote.folder import write_remote_policy_folder

    robot = make_robot_from_config(robot_config)  # features only: not connected
    try:
        return write_remote_policy_folder(out / "remote_policy", host, port, token, robot_config.type,
                                          robot_feature_dicts=(robot.observation_features, robot.action_features))
    except (ConnectionError, OSError, TimeoutError, ValueError, PermissionError) as err:
        raise DeployError(f"policy server {host}:{port}: {err}") from None


def compose_rollout_args(cfg: DeployConfig, robot_args: list[str], policy_path: Path, task: str) -> list[str]:
    """The lerobot-rollout command line of this run (without the program name)."""
    inf = cfg.inference
    args = [*robot_args, f"--policy.path={policy_path}", f"--policy.device={cfg.policy.device}",
            *_flags("policy", cfg.policy_overrides or {}, None), f"--device={cfg.policy.device}",
            f"--fps={cfg.fps}", f"--duration={cfg.duration}", f"--task={task}",
            f"--return_to_initial_position={_value(cfg.return_to_initial_position)}", "--play_sounds=false",
            f"--inference.type={inf.type}"]
    if inf.type == "rtc":
        args += [f"--inference.queue_threshold={inf.queue_threshold}",
                 f"--inference.rtc.execution_horizon={inf.rtc.execution_horizon}",
                 f"--inference.rtc.max_guidance_weight={inf.rtc.max_guidance_weight}",
                 f"--inference.rtc.prefix_attention_schedule={inf.rtc.prefix_attention_schedule}"]
    return args + list(cfg.rollout_args or [])


def parse_rollout_config(args: list[str]):
    """`RolloutConfig` from lerobot-rollout flags, as `lerobot.configs.parser.wrap` builds it: the
    `--policy.path` flags are set aside and `RolloutConfig.__post_init__` reads them from sys.argv."""
    import draccus
    from lerobot.configs import parser
    from lerobot.rollout import RolloutConfig

    saved = sys.argv
    sys.argv = ["lerobot-rollout", *args]
    try:
        cli = parser.filter_path_args(RolloutConfig.__get_path_fields__(), args)
        return draccus.parse(config_class=RolloutConfig, args=cli)
    except SystemExit as err:  # argparse's exit on a bad flag
        raise DeployError(f"lerobot-rollout refused the arguments ({err}): {shlex.join(args)}") from None
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise DeployError(str(err)) from None
    finally:
        sys.argv = saved


# ---------------------------------------------------------------------------------------------- telemetry
def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


class Telemetry:
    """Per-tick, per-inference and per-intervention records (JSONL) and their summary; feeds the Rerun logger."""

    def __init__(self, path: Path, action_keys: list[str], rerun: RerunLogger | None = None):
        self.action_keys = list(action_keys)
        self._f = open(path, "w", buffering=1)  # noqa: SIM115  (closed by close())
        self._lock = threading.Lock()
        self.rerun = rerun
        self.t0 = time.perf_counter()
        self.phase = "run"
        self.tick = -1
        self._open: dict | None = None
        self._last_obs_start: float | None = None
        self.ticks: list[dict] = []
        self.inferences: list[dict] = []
        self.events: Counter[str] = Counter()
        self.first_action_tick: int | None = None
        self.scene_source = None  # sim: a callable returning the scene ground truth
        self.scene_every = 0
        self.image_every = 1

    def _write(self, record: dict) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.write(json.dumps(record, default=float) + "\n")

    def now(self) -> float:
        return time.perf_counter() - self.t0

    # ------------------------------------------------------------------ ticks (main thread)
    def on_observation(self, t_start: float, t_end: float, obs: dict) -> None:
        if self.phase != "run":
            return
        self.close_tick()
        self.tick += 1
        state = [float(obs[k]) for k in self.action_keys if k in obs]
        period = None if self._last_obs_start is None else (t_start - self._last_obs_start) * 1e3
        self._last_obs_start = t_start
        self._open = {"type": "tick", "tick": self.tick, "t": _r(t_end - self.t0, 4),
                      "obs_ms": _r((t_end - t_start) * 1e3), "period_ms": _r(period), "t_obs": t_end,
                      "state": state, "action": None, "sent_action": None, "sent": False,
                      "get_action_ms": None, "inference_ms": None, "queue": None, "safety": None,
                      "interventions": [], "obs_to_action_ms": None}
        if self.rerun is not None:
            images = None
            if self.image_every > 0 and self.tick % self.image_every == 0:
                images = {k: v for k, v in obs.items() if isinstance(v, np.ndarray) and v.ndim == 3}
            scene = None
            if self.scene_source is not None and self.scene_every > 0 and self.tick % self.scene_every == 0:
                try:
                    scene = self.scene_source()
                except Exception as err:  # noqa: BLE001  (visualisation must never stop a run)
                    logger.debug("no scene ground truth: %s", err)
            self._open["_images"], self._open["_scene"] = images, scene

    def on_get_action(self, ms: float, got: bool, queue_len: int | None) -> None:
        if self._open is not None and self.phase == "run":
            self._open["get_action_ms"] = _r(ms)
            self._open["queue"] = queue_len
            self._open["_got"] = got

    def on_action(self, t_send: float, action: dict, sent: dict | None, decision) -> None:
        if self._open is None or self.phase != "run":
            return
        tick = self._open
        tick["obs_to_action_ms"] = _r((t_send - tick["t_obs"]) * 1e3)
        tick["action"] = [float(action[k]) for k in self.action_keys if k in action]
        tick["sent"] = True
        if sent:
            tick["sent_action"] = [float(sent[k]) for k in self.action_keys if k in sent]
        if decision is not None:
            tick["safety"], tick["interventions"] = decision.status, list(decision.interventions)
        if self.first_action_tick is None:
            self.first_action_tick = tick["tick"]

    def close_tick(self) -> None:
        tick, self._open = self._open, None
        if tick is None:
            return
        tick.pop("t_obs", None)
        tick.pop("_got", None)
        images, scene = tick.pop("_images", None), tick.pop("_scene", None)
        tick["starved"] = not tick["sent"]
        self.ticks.append(tick)
        self._write(tick)
        if self.rerun is not None:
            self.rerun.put(("tick", tick, images, scene))

    # ------------------------------------------------------------------ inference (any thread)
    def on_inference(self, record: dict) -> None:
        record = {"type": "inference", "tick": max(self.tick, 0), "t": _r(self.now(), 4), **record}
        with self._lock:
            self.inferences.append(record)
        if self._open is not None and record["thread"] == threading.main_thread().name:
            self._open["inference_ms"] = record["ms"]  # sync: the inference ran inside this tick
        self._write(record)
        if self.rerun is not None:
            self.rerun.put(("inference", record))

    # ------------------------------------------------------------------ safety (main or physics thread)
    def on_safety_event(self, event: dict) -> None:
        kind = str(event.get("kind"))
        with self._lock:
            self.events[kind] += 1
            count = self.events[kind]
        record = {"type": "safety", "tick": max(self.tick, 0), "t": _r(self.now(), 4), "kind": kind,
                  "robot_t": event.get("t"), **{k: v for k, v in event.items() if k not in ("t", "kind")},
                  "count": count, "phase": self.phase}
        self._write(record)
        if self.rerun is not None:
            self.rerun.put(("safety", record))

    def close(self) -> None:
        self.close_tick()
        with self._lock:
            self._f.close()

    # ------------------------------------------------------------------ summary
    def summary(self, fps: float) -> dict:
        ticks = self.ticks
        sent = [t for t in ticks if t["sent"]]
        first = self.first_action_tick
        starved_after = [t for t in ticks if not t["sent"] and first is not None and t["tick"] > first]
        queues = [t["queue"] for t in ticks if t["queue"] is not None]
        infer = [i["ms"] for i in self.inferences]
        remote = [i["remote"] for i in self.inferences if i.get("remote")]
        statuses = Counter(t["safety"] for t in ticks if t["safety"])
        out = {
            "ticks": len(ticks),
            "actions_sent": len(sent),
            "starved_ticks": len(ticks) - len(sent),
            "starved_before_first_action": first if first is not None else len(ticks),
            "starved_after_first_action": len(starved_after),
            "first_action_s": None if first is None else ticks[first]["t"],
            "obs_to_action_ms": _stats([t["obs_to_action_ms"] for t in sent]),
            "observation_ms": _stats([t["obs_ms"] for t in ticks]),
            "get_action_ms": _stats([t["get_action_ms"] for t in ticks if t["get_action_ms"] is not None]),
            "control_period_ms": _stats([t["period_ms"] for t in ticks if t["period_ms"] is not None]),
            "target_period_ms": 1e3 / fps,
            "inference": {"count": len(infer), "ms": _stats(infer),
                          "threads": dict(Counter(i["thread"] for i in self.inferences))},
            "queue": None if not queues else {"min": int(min(queues)), "mean": float(np.mean(queues)),
                                              "max": int(max(queues))},
            "action_status": dict(statuses),
        }
        if remote:
            server = [r["infer_ms"] for r in remote if r.get("infer_ms") is not None]
            overhead = [i["ms"] - i["remote"]["infer_ms"] for i in self.inferences
                        if i.get("remote") and i["remote"].get("infer_ms") is not None and not i["remote"]["holding"]]
            out["remote"] = {"server_infer_ms": _stats(server), "transport_overhead_ms": _stats(overhead),
                             "hold_inferences": sum(1 for r in remote if r["holding"])}
        return out


class TelemetryRobot:
    """Stands in for LeRobot's `ThreadSafeRobot` in the strategy: same calls, same lock, timed."""

    def __init__(self, wrapped, telemetry: Telemetry):
        self._wrapped = wrapped
        self._telemetry = telemetry

    def get_observation(self) -> dict:
        t0 = time.perf_counter()
        obs = self._wrapped.get_observation()
        self._telemetry.on_observation(t0, time.perf_counter(), obs)
        return obs

    def send_action(self, action):
        t = time.perf_counter()
        sent = self._wrapped.send_action(action)
        decision = getattr(self._wrapped.inner, "last_decision", None)
        self._telemetry.on_action(t, action, sent if isinstance(sent, dict) else None, decision)
        return sent

    def __getattr__(self, name: str):
        return getattr(self._wrapped, name)


def _instrument(ctx, telemetry: Telemetry) -> None:
    """Wrap the engine's get_action and the policy's predict_action_chunk (see the module docstring)."""
    engine = ctx.policy.inference
    policy = ctx.policy.policy
    get_action = engine.get_action

    def queue_len() -> int | None:
        q = getattr(engine, "action_queue", None)
        if q is not None:
            return int(q.qsize())
        inner = getattr(policy, "_action_queue", None)
        return len(inner) if inner is not None and hasattr(inner, "__len__") else None

    @functools.wraps(get_action)
    def timed_get_action(obs_frame):
        t0 = time.perf_counter()
        action = get_action(obs_frame)
        telemetry.on_get_action((time.perf_counter() - t0) * 1e3, action is not None, queue_len())
        return action

    engine.get_action = timed_get_action

    predict = policy.predict_action_chunk

    @functools.wraps(predict)
    def timed_predict(batch, *args, **kwargs):
        t0 = time.perf_counter()
        chunk = predict(batch, *args, **kwargs)
        ms = (time.perf_counter() - t0) * 1e3
        left = kwargs.get("prev_chunk_left_over")
        record = {"ms": _r(ms), "thread": threading.current_thread().name,
                  "chunk": int(chunk.shape[1]) if getattr(chunk, "ndim", 0) == 3 else None,
                  "inference_delay": kwargs.get("inference_delay"),
                  "leftover_steps": None if left is None else int(left.shape[-2])}
        if getattr(policy, "name", "") == "vst_vla_remote":
            reply = getattr(policy, "last_reply", None)
            timing = getattr(reply, "timing", None) or {}
            record["remote"] = {"holding": bool(policy.holding), "infer_ms": timing.get("infer_ms"),
                                "server_total_ms": timing.get("total_ms"), "rtt_ms": getattr(reply, "rtt_ms", None)}
        telemetry.on_inference(record)
        return chunk

    policy.predict_action_chunk = timed_predict
    ctx.hardware.robot_wrapper = TelemetryRobot(ctx.hardware.robot_wrapper, telemetry)


# ---------------------------------------------------------------------------------------------- rerun
class RerunLogger:
    """A .rrd of the run, written by one background thread so the control loop only enqueues.

    Entities (timelines `tick` and `time`): `world/cameras/<cam>/image`, `world/arm/**` (posed from the
    joint state), for the sim `world/objects` and the camera frustums; `state/<motor>` (reached) and
    `action/<motor>` (commanded by the policy), `sent/<motor>` (after the safety layer);
    `telemetry/{obs_to_action_ms,get_action_ms,inference_ms,queue,starved}`; `safety/events` (TextLog)
    and `safety/<kind>` (running count of each intervention kind); `instruction`; `outcome`.
    """

    def __init__(self, path: Path, cameras: list[str], instruction: str, arm=None, jpeg_quality: int = 0,
                 queue_size: int = 512):
        import rerun as rr

        from vst_vla.viz.blueprint import MOTORS, episode_blueprint, log_joint_series

        self.rr, self.motors, self.arm, self.jpeg = rr, list(MOTORS), arm, jpeg_quality
        self.rec = rr.RecordingStream("vst_vla", recording_id=path.stem)
        self.rec.save(str(path), default_blueprint=episode_blueprint(
            cameras, MOTORS, timeline="tick", extra_plots=("telemetry", "safety")))
        self.rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        self.rec.log("instruction", rr.TextDocument(instruction), static=True)
        log_joint_series(self.rec, MOTORS, state="reached", action="commanded")
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self._static_done = False
        self._thread = threading.Thread(target=self._loop, name="vst-vla-deploy-rerun", daemon=True)
        self._thread.start()

    def put(self, item) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                getattr(self, f"_log_{item[0]}")(*item[1:])
            except Exception:  # noqa: BLE001  (visualisation must never stop a run)
                logger.exception("rerun logging failed for a %s record", item[0])

    def _time(self, record: dict) -> None:
        self.rec.set_time("tick", sequence=int(record["tick"]))
        self.rec.set_time("time", duration=float(record["t"]))

    def _log_tick(self, tick: dict, images: dict | None, scene) -> None:
        rr = self.rr
        self._time(tick)
        if scene is not None:
            from vst_vla.viz.episode import log_scene_ground_truth

            log_scene_ground_truth(self.rec, scene, images=images, jpeg_quality=self.jpeg,
                                   log_static=not self._static_done)
            self._static_done = True
        elif images:
            for cam, img in images.items():
                entity = rr.Image(np.ascontiguousarray(img))
                self.rec.log(f"world/cameras/{cam}/image", entity.compress(jpeg_quality=self.jpeg) if self.jpeg else entity)
        state = tick["state"]
        if self.arm is not None and len(state) == len(self.motors):
            from lerobot_env_vst_vla.robot import from_so101_units

            if not getattr(self, "_arm_static", False):
                self.arm.log_geometry(self.rec)
                self._arm_static = True
            self.arm.log_joints(self.rec, from_so101_units(np.asarray(state)))
        for name, value in zip(self.motors, state, strict=False):
            self.rec.log(f"state/{rr.escape_entity_path_part(name)}", rr.Scalars(value))
        for path, values in (("action", tick["action"]), ("sent", tick["sent_action"])):
            for name, value in zip(self.motors, values or [], strict=False):
                self.rec.log(f"{path}/{rr.escape_entity_path_part(name)}", rr.Scalars(value))
        for key in ("obs_to_action_ms", "get_action_ms", "queue"):
            if tick.get(key) is not None:
                self.rec.log(f"telemetry/{key}", rr.Scalars(float(tick[key])))
        self.rec.log("telemetry/starved", rr.Scalars(float(tick["starved"])))

    def _log_inference(self, record: dict) -> None:
        self._time(record)
        self.rec.log("telemetry/inference_ms", self.rr.Scalars(float(record["ms"])))

    def _log_safety(self, record: dict) -> None:
        rr = self.rr
        self._time(record)
        details = {k: v for k, v in record.items() if k not in ("type", "tick", "t", "kind", "count", "robot_t")}
        level = rr.TextLogLevel.INFO if record["kind"] in NOT_INTERVENTIONS else rr.TextLogLevel.WARN
        self.rec.log("safety/events", rr.TextLog(f"{record['kind']} {json.dumps(details, default=str)}", level=level))
        self.rec.log(f"safety/{rr.escape_entity_path_part(record['kind'])}", rr.Scalars(float(record["count"])))

    def close(self, outcome: dict | None, last_tick: int, last_t: float) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)
        if outcome:
            from vst_vla.viz.blueprint import log_outcome

            self.rec.set_time("tick", sequence=max(last_tick, 0))
            self.rec.set_time("time", duration=last_t)
            log_outcome(self.rec, outcome, title="deployment")
        self.rec.flush()
        self.rec.disconnect()


def _arm_for(robot) -> Any:
    try:
        from vst_vla.viz.arm import ArmLogger, arm_logger

        env = getattr(robot, "env", None)
        return ArmLogger(env.model) if env is not None else arm_logger("primitives")
    except Exception as err:  # noqa: BLE001
        logger.warning("no 3D arm in the recording: %s", err)
        return None


# ---------------------------------------------------------------------------------------------- stage
class _Signals:
    """LeRobot's ProcessSignalHandler (SIGINT/SIGTERM -> a clean teardown), with the previous handlers
    restored afterwards (the stage also runs inside other programs, e.g. tests)."""

    NAMES = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")

    def __enter__(self):
        from lerobot.utils.process import ProcessSignalHandler

        self._saved = {}
        if threading.current_thread() is threading.main_thread():
            self._saved = {s: signal.getsignal(getattr(signal, s)) for s in self.NAMES if hasattr(signal, s)}
        self.handler = ProcessSignalHandler(use_threads=True, display_pid=False)
        return self.handler.shutdown_event

    def __exit__(self, *exc):
        for name, previous in self._saved.items():
            signal.signal(getattr(signal, name), previous)


def deploy(cfg: DeployConfig) -> dict:
    """The `vst-vla deploy` stage; returns the summary (also written to `<output_dir>/summary.json`)."""
    if cfg.inference.type not in ("sync", "rtc"):
        raise DeployError(f"inference.type must be sync or rtc, got {cfg.inference.type!r}")
    if cfg.fps <= 0 or cfg.duration < 0:
        raise DeployError(f"fps must be > 0 and duration >= 0 (got fps={cfg.fps}, duration={cfg.duration})")
    remote = bool(cfg.policy.server)
    robot_type, settings = _robot_settings(cfg)
    server = _server_and_token(cfg) if remote else None
    checkpoint = None if remote else _resolve_checkpoint(cfg.policy.path)
    if checkpoint is not None and cfg.inference.type == "sync" and _uses_relative_actions(checkpoint):
        raise DeployError(f"{checkpoint} predicts relative actions, which LeRobot 0.6.1's sync engine refuses: "
                          "use inference.type=rtc (or train with use_relative_actions=false)")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if robot_type == SIM and "summary_path" not in settings:
        settings["summary_path"] = str(out / "robot_summary.json")

    _register_lerobot()
    robot_config, robot_args = _parse_robot(robot_type, settings)
    task = cfg.task
    if task is None:
        if robot_type != SIM:
            raise DeployError("task=\"...\" (the instruction) is required on the real arm")
        from lerobot_robot_vst_sim import instruction_for

        task = instruction_for(robot_config)
    token = None
    if server is not None:
        host, port, token = server
        policy_path = _remote_folder(host, port, token, robot_config, out)
    else:
        policy_path = checkpoint
    args = compose_rollout_args(cfg, robot_args, policy_path, task)
    command = shlex.join(["lerobot-rollout", *args])
    logger.info("deploy: %s", command)
    rollout_cfg = parse_rollout_config(args)
    if token is not None:
        rollout_cfg.policy.token = token  # in memory only: never on disk or on the command line
    return _run(cfg, rollout_cfg, robot_type, task, command, out, remote)


def _run(cfg: DeployConfig, rollout_cfg, robot_type: str, task: str, command: str, out: Path, remote: bool) -> dict:
    from lerobot.rollout import build_rollout_context, create_strategy

    from lerobot_env_vst_vla.robot import MOTOR_KEYS

    for stale in ("telemetry.jsonl", "summary.json", "deploy.rrd", "robot_summary.json"):
        (out / stale).unlink(missing_ok=True)
    summary: dict = {"robot": robot_type, "mode": "remote" if remote else "local", "inference_type": cfg.inference.type,
                     "policy": str(rollout_cfg.policy.pretrained_path), "policy_type": rollout_cfg.policy.type,
                     "server": cfg.policy.server, "task": task, "fps": cfg.fps, "duration_s": cfg.duration,
                     "lerobot_rollout_command": command}
    with _Signals() as shutdown_event:
        try:
            ctx = build_rollout_context(rollout_cfg, shutdown_event)
        except (ValueError, NotImplementedError, FileNotFoundError, ConnectionError, TimeoutError) as err:
            raise DeployError(f"{type(err).__name__}: {err}") from err
        robot = ctx.hardware.robot_wrapper.inner
        rerun = None
        if cfg.rerun.enabled:
            rerun = RerunLogger(out / "deploy.rrd", list(getattr(robot, "cameras", {}) or {}), task, _arm_for(robot),
                                cfg.rerun.jpeg_quality, cfg.rerun.queue_size)
        telemetry = Telemetry(out / "telemetry.jsonl", list(MOTOR_KEYS), rerun)
        telemetry.image_every, telemetry.scene_every = cfg.rerun.image_every, cfg.rerun.scene_every
        if robot_type == SIM:
            telemetry.scene_source = robot.ground_truth
        guard = getattr(robot, "guard", None)
        if guard is not None:
            guard.sinks.append(telemetry.on_safety_event)
        _instrument(ctx, telemetry)
        strategy = create_strategy(rollout_cfg.strategy)
        t_start = time.perf_counter()
        error = None
        try:
            strategy.setup(ctx)
            telemetry.t0 = t_start = time.perf_counter()
            strategy.run(ctx)
        except KeyboardInterrupt:
            logger.info("deploy: interrupted")
        except Exception as err:
            error = err
            raise
        finally:
            wall = time.perf_counter() - t_start
            telemetry.close_tick()
            telemetry.phase = "teardown"
            try:
                strategy.teardown(ctx)
            finally:
                summary.update(_finish(cfg, ctx, telemetry, rerun, guard, out, wall, error))
                (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    if getattr(ctx.policy.inference, "failed", False):
        raise DeployError(f"the RTC inference thread failed (see the log); telemetry in {out}")
    logger.info("deploy: %d ticks, %d actions sent, %d starved; obs->action p50 %s ms; interventions %s; "
                "outputs in %s", summary["ticks"], summary["actions_sent"], summary["starved_ticks"],
                (summary["obs_to_action_ms"] or {}).get("p50"), summary["safety"]["interventions_by_kind"], out)
    print(json.dumps({"deploy": str(out / "summary.json"), "ticks": summary["ticks"],
                      "actions_sent": summary["actions_sent"], "starved_ticks": summary["starved_ticks"],
                      "interventions": summary["safety"]["interventions"]}), flush=True)
    return summary


def _finish(cfg: DeployConfig, ctx, telemetry: Telemetry, rerun: RerunLogger | None, guard, out: Path,
            wall: float, error: BaseException | None) -> dict:
    result = telemetry.summary(cfg.fps)
    result["wall_s"] = round(wall, 3)
    counts = dict(guard.counts) if guard is not None else dict(telemetry.events)
    interventions = {k: v for k, v in counts.items() if k not in NOT_INTERVENTIONS}
    result["safety"] = {"interventions": int(sum(interventions.values())), "interventions_by_kind": interventions,
                        "events_by_kind": counts,
                        "stopped": bool(getattr(guard, "stopped", False)),
                        "estop": bool(guard.estop.active) if guard is not None else False}
    policy = ctx.policy.policy
    if getattr(policy, "name", "") == "vst_vla_remote":
        result.setdefault("remote", {}).update({"client": dict(policy.stats), "holding_at_end": bool(policy.holding)})
    robot_summary = out / "robot_summary.json"
    if robot_summary.is_file():
        result["robot_summary"] = json.loads(robot_summary.read_text())
    result["rtc_failed"] = bool(getattr(ctx.policy.inference, "failed", False))
    if error is not None:
        result["error"] = f"{type(error).__name__}: {error}"
    files = {"telemetry": str(out / "telemetry.jsonl"), "summary": str(out / "summary.json")}
    telemetry.close()
    if rerun is not None:
        outcome = {"ticks": result["ticks"], "starved_ticks": result["starved_ticks"],
                   "interventions": result["safety"]["interventions"]}
        p50 = (result["obs_to_action_ms"] or {}).get("p50")
        if p50 is not None:
            outcome["obs_to_action_p50_ms"] = float(p50)
        if "robot_summary" in result:
            outcome["success"] = bool(result["robot_summary"].get("success"))
        last = telemetry.ticks[-1] if telemetry.ticks else {"tick": 0, "t": 0.0}
        rerun.close(outcome, last["tick"], float(last["t"] or 0.0))
        result["rerun_dropped"] = rerun.dropped
        files["rerun"] = str(out / "deploy.rrd")
    if robot_summary.is_file():
        files["robot_summary"] = str(robot_summary)
    result["files"] = files
    return result
