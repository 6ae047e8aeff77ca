"""`vst-vla serve`: one LeRobot policy checkpoint behind an authenticated WebSocket (protocol v1).

    vst-vla serve --policy.path=<checkpoint>/pretrained_model --host 127.0.0.1 --port 8765 --token "$TOKEN"

- **Same inference as in-process.** The checkpoint is loaded as `lerobot-rollout` loads it (policy
  class from its type, `from_pretrained`, its saved pre/post-processors with LeRobot's device and
  rename overrides). Each request runs LeRobot's `prepare_observation_for_inference` on the raw
  frame, the preprocessor, `predict_action_chunk` (noise and RTC arguments forwarded when the policy
  takes them), the postprocessor: what the sync and RTC engines do locally, so there is no skew.
- **Security.** A token is required (`Authorization: Bearer`, compared in constant time; 401
  otherwise, before the WebSocket opens), 127.0.0.1 by default, messages capped at `max_bytes`
  (bigger ones close that connection with 1009), msgpack only (pickle payloads are refused), no
  tracebacks on the wire unless `debug=true`, at most `max_clients` connections.
- **Robustness.** A bad message gets an `error` reply and the connection stays open; a protocol
  mismatch closes that connection (1002); other clients are unaffected. Inference runs in one worker
  thread, so the event loop keeps answering pings, hellos and `/healthz` meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import os
import signal
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path

import numpy as np
import torch
from websockets.asyncio.server import Server, ServerConnection, serve as ws_serve
from websockets.exceptions import ConnectionClosed

from lerobot_policy_vst_vla.remote.protocol import (
    DEFAULT_MAX_BYTES,
    PROTOCOL_VERSION,
    TOKEN_ENV,
    ObsRequest,
    ProtocolError,
    RTCRequest,
    check_client_hello,
    decode,
    encode,
    error_message,
    features_to_wire,
    parse_obs,
)

logger = logging.getLogger(__name__)


@dataclass
class ServePolicyConfig:
    path: str = ""  # a LeRobot checkpoint folder (…/pretrained_model) of any policy type
    device: str = "cpu"


@dataclass
class ServeConfig:
    policy: ServePolicyConfig = field(default_factory=ServePolicyConfig)
    host: str = "127.0.0.1"  # loopback unless you mean it; there is no TLS: use a tunnel off-host
    port: int = 8765
    token: str | None = None  # None: read the environment variable `token_env`
    token_env: str = TOKEN_ENV
    fps: int = 30  # the control rate the policy was trained for (sent in the hello)
    max_bytes: int = DEFAULT_MAX_BYTES
    max_clients: int = 4
    # the server's keepalive only cleans up dead clients: lenient, so a busy robot computer is not dropped
    ping_interval_s: float = 2.0
    ping_timeout_s: float = 10.0
    debug: bool = False  # tracebacks in error replies


# ---------------------------------------------------------------------------------------------- runners
class LeRobotRunner:
    """A LeRobot checkpoint with its own processors, loaded and run as lerobot-rollout does."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        from lerobot.configs import PreTrainedConfig
        from lerobot.policies import make_pre_post_processors
        from lerobot.processor import NormalizerProcessorStep, RelativeActionsProcessorStep
        from lerobot.rollout.context import _load_pretrained_policy
        from lerobot.rollout.inference.rtc import supports_rtc_inference
        from lerobot.utils.import_utils import register_third_party_plugins

        register_third_party_plugins()
        path = str(path)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"no checkpoint folder {path} (expected …/pretrained_model with config.json)")
        config = PreTrainedConfig.from_pretrained(path, cli_overrides=[f"--device={device}"])
        config.pretrained_path = path
        self.device = torch.device(device)
        self.policy = _load_pretrained_policy(config).to(self.device).eval()
        self.config = self.policy.config
        self.preprocessor, self.postprocessor = make_pre_post_processors(
            policy_cfg=config, pretrained_path=path, pretrained_revision=config.pretrained_revision,
            preprocessor_overrides={"device_processor": {"device": device},
                                    "rename_observations_processor": {"rename_map": {}}})
        self.supports_rtc = supports_rtc_inference(self.policy)
        params = inspect.signature(self.policy.predict_action_chunk).parameters
        self._var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._params = set(params)
        self._relative = next((s for s in self.preprocessor.steps
                               if isinstance(s, RelativeActionsProcessorStep) and s.enabled), None)
        self._normalizer = next((s for s in self.preprocessor.steps if isinstance(s, NormalizerProcessorStep)), None)
        names = getattr(self.config, "action_feature_names", None)
        if self._relative is not None and self._relative.action_names is None and names:
            self._relative.action_names = list(names)  # as LeRobot's RTC engine does
        self.action_names = list(names) if names else None

    def _accepts(self, name: str) -> bool:
        return self._var_kw or name in self._params

    def hello_fields(self) -> dict:
        cfg = self.config
        chunk = int(getattr(cfg, "chunk_size", None) or getattr(cfg, "horizon", None) or 1)
        steps = int(getattr(cfg, "n_action_steps", None) or chunk)
        return {"policy_type": cfg.type, "input_features": features_to_wire(cfg.input_features),
                "output_features": features_to_wire(cfg.output_features), "action_names": self.action_names,
                "chunk_size": chunk, "n_action_steps": min(steps, chunk), "supports_rtc": bool(self.supports_rtc)}

    def infer(self, req: ObsRequest) -> np.ndarray:
        from lerobot.policies.utils import prepare_observation_for_inference

        rtc = req.rtc if (req.rtc is not None and req.rtc.enabled and self.supports_rtc) else None
        frame = {k: np.array(v) for k, v in req.observation.items()}  # writable copies for torch
        kwargs = {}
        # the sync engine runs under inference_mode; RTC guidance needs autograd (the RTC engine uses none)
        with torch.inference_mode() if rtc is None else nullcontext():
            batch = prepare_observation_for_inference(frame, self.device, req.task, req.robot_type)
            batch = self.preprocessor(batch)
            if req.noise is not None:
                if not self._accepts("noise"):
                    raise ProtocolError("bad_observation", f"policy type {self.config.type} takes no noise")
                kwargs["noise"] = torch.from_numpy(req.noise.copy()).unsqueeze(0).to(self.device)
            self._configure_rtc(rtc)
            if rtc is not None:
                kwargs["inference_delay"] = rtc.inference_delay
                kwargs["prev_chunk_left_over"] = self._leftover(rtc)
                if self._accepts("execution_horizon"):
                    kwargs["execution_horizon"] = rtc.execution_horizon
            chunk = self.policy.predict_action_chunk(batch, **kwargs)
            if chunk.ndim == 2:
                chunk = chunk.unsqueeze(1)
            actions = self.postprocessor(chunk)
        return actions[0].detach().float().cpu().numpy()

    def _configure_rtc(self, rtc: RTCRequest | None) -> None:
        """The policy's rtc_config follows the request (LeRobot's rollout sets it once at start)."""
        if not self.supports_rtc:
            return
        from lerobot.configs import RTCAttentionSchedule
        from lerobot.policies.rtc.configuration_rtc import RTCConfig

        current = getattr(self.config, "rtc_config", None)
        if rtc is None:
            want = None if current is None else replace(current, enabled=False)
        else:
            want = RTCConfig(enabled=True, prefix_attention_schedule=RTCAttentionSchedule(rtc.prefix_attention_schedule),
                             max_guidance_weight=rtc.max_guidance_weight, execution_horizon=rtc.execution_horizon)
        if want != current:
            self.config.rtc_config = want
            if hasattr(self.policy, "init_rtc_processor"):
                self.policy.init_rtc_processor()

    def _leftover(self, rtc: RTCRequest) -> torch.Tensor | None:
        """The leftover (robot units) in the model's space, as LeRobot's RTC engine computes it locally:
        re-anchored to the current state for relative actions, normalised; padding rows stay zero."""
        if rtc.leftover is None or rtc.leftover_len == 0:
            return None
        from lerobot.policies.rtc.relative import reanchor_relative_rtc_prefix
        from lerobot.processor import TransitionKey, create_transition

        real = torch.from_numpy(rtc.leftover[: rtc.leftover_len].copy())
        if self._relative is not None and self._relative.get_cached_state() is not None:
            model = reanchor_relative_rtc_prefix(real, self._relative.get_cached_state(), self._relative,
                                                 self._normalizer, self.device)
        elif self._normalizer is not None:
            model = self._normalizer(create_transition(action=real.to(self.device)))[TransitionKey.ACTION]
        else:
            model = real
        out = torch.zeros((rtc.leftover.shape[0], real.shape[1]), dtype=torch.float32, device=self.device)
        out[: rtc.leftover_len] = model.to(self.device, torch.float32)
        return out


class StubRunner:
    """A policy stand-in for transport benchmarks and tests: returns the state, repeated, after `delay_s`."""

    def __init__(self, input_features: dict, action_dim: int = 6, chunk_size: int = 10, n_action_steps: int | None = None,
                 delay_s: float = 0.0, supports_rtc: bool = False, action_names: list[str] | None = None):
        self.input_features, self.action_dim, self.chunk_size = input_features, action_dim, chunk_size
        self.n_action_steps = n_action_steps or chunk_size
        self.delay_s, self.supports_rtc, self.action_names = delay_s, supports_rtc, action_names
        self.requests: list[ObsRequest] = []

    def hello_fields(self) -> dict:
        return {"policy_type": "stub", "input_features": self.input_features,
                "output_features": {"action": {"type": "ACTION", "shape": [self.action_dim]}},
                "action_names": self.action_names, "chunk_size": self.chunk_size,
                "n_action_steps": self.n_action_steps, "supports_rtc": self.supports_rtc}

    def infer(self, req: ObsRequest) -> np.ndarray:
        self.requests.append(req)
        if self.delay_s:
            time.sleep(self.delay_s)
        state = req.observation.get("observation.state")
        row = np.zeros(self.action_dim, np.float32) if state is None else np.resize(state, self.action_dim)
        return np.tile(row.astype(np.float32), (self.chunk_size, 1))


# ---------------------------------------------------------------------------------------------- server
def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class PolicyServer:
    """The WebSocket server around one runner (`LeRobotRunner` or `StubRunner`)."""

    def __init__(self, runner, token: str, host: str = "127.0.0.1", port: int = 8765, fps: int = 30,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_clients: int = 4, ping_interval_s: float | None = 2.0,
                 ping_timeout_s: float | None = 10.0, debug: bool = False):
        if not token:
            raise ValueError("vst-vla serve needs a token (--token or $VST_VLA_TOKEN)")
        if len(token) < 16:
            logger.warning("the token is shorter than 16 characters: use a long random one "
                           "(python -c 'import secrets; print(secrets.token_urlsafe(24))')")
        self.runner, self.host, self.port = runner, host, port
        self._token_digest = _digest(token)
        self.max_bytes, self.max_clients, self.debug = max_bytes, max_clients, debug
        self.ping_interval_s, self.ping_timeout_s = ping_interval_s, ping_timeout_s
        self.hello = {"type": "hello", "protocol": PROTOCOL_VERSION, "server_id": uuid.uuid4().hex[:12],
                      **runner.hello_fields(), "fps": int(fps), "max_bytes": int(max_bytes)}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vst-vla-infer")
        self._server: Server | None = None
        self.clients = 0
        self.counts: dict[str, int] = {}

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    # ------------------------------------------------------------------ HTTP stage: health, auth
    def _process_request(self, connection: ServerConnection, request):
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        auth = request.headers.get("Authorization", "")
        given = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        if not hmac.compare_digest(_digest(given), self._token_digest):
            self._count("unauthorized")
            logger.warning("refused a connection from %s: bad or missing token", connection.remote_address)
            return connection.respond(HTTPStatus.UNAUTHORIZED, "unauthorized\n")
        if self.clients >= self.max_clients:
            self._count("busy")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many clients\n")
        return None

    # ------------------------------------------------------------------ one connection
    async def _handler(self, ws: ServerConnection) -> None:
        self.clients += 1
        peer = ws.remote_address
        try:
            await ws.send(encode(self.hello))
            try:
                first = await asyncio.wait_for(ws.recv(), timeout=10.0)
                check_client_hello(decode(first, self.max_bytes))
            except ProtocolError as err:
                self._count(err.code)
                await ws.send(encode(error_message(err.code, err.message)))
                await ws.close(code=1002, reason="protocol mismatch")
                return
            except TimeoutError:
                await ws.close(code=1008, reason="no hello")
                return
            logger.info("client %s connected", peer)
            async for data in ws:
                await self._answer(ws, data)
        except ConnectionClosed:
            pass
        finally:
            self.clients -= 1
            logger.info("client %s gone", peer)

    async def _answer(self, ws: ServerConnection, data) -> None:
        t_recv = time.perf_counter()
        seq = None
        try:
            msg = decode(data, self.max_bytes)
            seq = msg.get("seq") if isinstance(msg.get("seq"), int) else None
            if msg["type"] != "obs":
                raise ProtocolError("bad_message", f"unexpected message type {msg['type']!r} (expected obs)")
            req = parse_obs(msg, self.hello["input_features"])
            if req.rtc is not None and req.rtc.leftover_len > 0:
                self._count("rtc")  # a request with a leftover to guide towards
            actions, t_start, t_end = await asyncio.get_running_loop().run_in_executor(self._executor, self._infer, req)
            reply = {"type": "act", "seq": req.seq, "actions": actions, "action_names": self.hello["action_names"],
                     "timing": {"queue_ms": (t_start - t_recv) * 1e3, "infer_ms": (t_end - t_start) * 1e3,
                                "total_ms": (time.perf_counter() - t_recv) * 1e3}}
            self._count("act")
        except ProtocolError as err:
            self._count(err.code)
            reply = error_message(err.code, err.message, seq)
        except Exception as err:  # noqa: BLE001  (the policy failed on this input: tell the client, keep serving)
            self._count("inference_failed")
            logger.exception("inference failed for request %s", seq)
            text = traceback.format_exc() if self.debug else f"{type(err).__name__}: {err}"
            reply = error_message("inference_failed", text[-2000:], seq)
        await ws.send(encode(reply))

    def _infer(self, req: ObsRequest):
        t_start = time.perf_counter()
        actions = np.ascontiguousarray(self.runner.infer(req), dtype=np.float32)
        return actions, t_start, time.perf_counter()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._server = await ws_serve(self._handler, self.host, self.port, process_request=self._process_request,
                                      max_size=self.max_bytes, compression=None, max_queue=4,
                                      ping_interval=self.ping_interval_s, ping_timeout=self.ping_timeout_s)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"


class ServerThread:
    """A PolicyServer on its own event loop in a daemon thread (tests, benchmarks): `with ServerThread(...) as s`."""

    def __init__(self, server: PolicyServer):
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vst-vla-serve", daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    @property
    def port(self) -> int:
        return self.server.port

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def resolve_token(token: str | None, token_env: str) -> str:
    token = token or os.environ.get(token_env, "")
    if not token:
        raise SystemExit(f"vst-vla serve: a token is required: --token ... or ${token_env}")
    return token


def serve(cfg: ServeConfig) -> None:
    """The `vst-vla serve` stage: load the checkpoint, serve until SIGINT/SIGTERM."""
    token = resolve_token(cfg.token, cfg.token_env)
    if not cfg.policy.path:
        raise SystemExit("vst-vla serve: --policy.path=<checkpoint folder> is required")
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: reachable from other machines, and the protocol has no TLS", cfg.host)
    runner = LeRobotRunner(cfg.policy.path, cfg.policy.device)
    server = PolicyServer(runner, token, cfg.host, cfg.port, cfg.fps, cfg.max_bytes, cfg.max_clients,
                          cfg.ping_interval_s or None, cfg.ping_timeout_s or None, cfg.debug)
    run_until_signal(server)


def run_until_signal(server: PolicyServer) -> None:
    """Serve until SIGINT/SIGTERM; one JSON line on stdout once listening (`{"serving": type, "url": ...}`)."""

    async def main() -> None:
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(json.dumps({"serving": server.hello["policy_type"], "url": server.url,
                          "chunk_size": server.hello["chunk_size"], "supports_rtc": server.hello["supports_rtc"]}),
              flush=True)
        await stop.wait()
        await server.stop()

    asyncio.run(main())
