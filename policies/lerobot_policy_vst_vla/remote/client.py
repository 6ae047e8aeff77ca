"""Blocking client of `vst-vla serve` (protocol v1, see protocol.py), used by the `vst_vla_remote` policy.

`PolicyClient.connect()` opens the WebSocket with the token as a bearer header, reads the server's
hello and checks its protocol version before anything else, and answers with its own hello.
`infer()` sends one observation and waits at most `reply_timeout_s` for the actions. A closed
connection (the server died: the kernel closes its sockets, the background reader sees it at once),
a missed keepalive pong or a reply that does not come raise `ServerUnavailable`; an `error` reply
raises `RemoteError` and leaves the connection usable.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect

from .protocol import (
    DEFAULT_MAX_BYTES,
    ProtocolError,
    RemoteError,
    check_act,
    check_server_hello,
    client_hello,
    decode,
    encode,
)

logger = logging.getLogger(__name__)


class ServerUnavailable(ConnectionError):
    """No reply from the policy server: connection refused, closed, timed out or keepalive lost."""


@dataclass
class Reply:
    actions: np.ndarray  # f32[H, A], robot units
    timing: dict  # the server's {queue_ms, infer_ms, total_ms}
    rtt_ms: float  # send -> reply, measured here


class PolicyClient:
    def __init__(self, host: str, port: int, token: str, *, connect_timeout_s: float = 5.0,
                 reply_timeout_s: float = 2.0, max_bytes: int = DEFAULT_MAX_BYTES,
                 ping_interval_s: float | None = 1.0, ping_timeout_s: float | None = 1.0):
        if not token:
            raise ValueError("a token is required to talk to a vst-vla policy server")
        self.url = f"ws://{host}:{port}/"
        self._token = token
        self.connect_timeout_s, self.reply_timeout_s = connect_timeout_s, reply_timeout_s
        self.max_bytes = max_bytes
        self.ping_interval_s, self.ping_timeout_s = ping_interval_s, ping_timeout_s
        self._ws: ClientConnection | None = None
        self._seq = itertools.count(1)
        self.hello: dict | None = None

    # ------------------------------------------------------------------ connection
    def connect(self) -> dict:
        """Open the connection; returns the server's (checked) hello."""
        self.close()
        try:
            ws = connect(self.url, additional_headers={"Authorization": f"Bearer {self._token}"},
                         max_size=self.max_bytes, compression=None, open_timeout=self.connect_timeout_s,
                         ping_interval=self.ping_interval_s, ping_timeout=self.ping_timeout_s, close_timeout=1.0)
        except InvalidStatus as err:
            status = err.response.status_code
            if status == 401:
                raise PermissionError(f"{self.url} refused the token (HTTP 401)") from None
            raise ServerUnavailable(f"{self.url} refused the connection (HTTP {status})") from None
        except (OSError, TimeoutError, InvalidHandshake) as err:
            raise ServerUnavailable(f"cannot reach the policy server at {self.url}: {err}") from None
        try:
            hello = check_server_hello(decode(ws.recv(timeout=self.connect_timeout_s), self.max_bytes))
            ws.send(encode(client_hello()))
        except ProtocolError:
            ws.close(code=1002, reason="protocol mismatch")
            raise
        except (ConnectionClosed, TimeoutError, OSError) as err:
            ws.close()
            raise ServerUnavailable(f"{self.url} sent no hello: {err}") from None
        self._ws, self.hello = ws, hello
        return hello

    @property
    def alive(self) -> bool:
        """The connection is open (a dead server or a lost keepalive closes it)."""
        return self._ws is not None and self._ws.state is State.OPEN

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001  (closing a broken connection)
                pass
            self._ws = None

    # ------------------------------------------------------------------ requests
    def infer(self, observation: dict[str, np.ndarray], task: str = "", robot_type: str = "",
              noise: np.ndarray | None = None, rtc: dict | None = None, timeout_s: float | None = None) -> Reply:
        """One observation -> its actions, waiting at most `timeout_s` (default `reply_timeout_s`)."""
        if not self.alive:
            raise ServerUnavailable(f"not connected to {self.url}")
        seq = next(self._seq)
        msg = {"type": "obs", "seq": seq, "t_capture_ns": time.time_ns(), "observation": observation,
               "task": task, "robot_type": robot_type}
        if noise is not None:
            msg["noise"] = noise
        if rtc is not None:
            msg["rtc"] = rtc
        payload = encode(msg)
        if len(payload) > self.hello["max_bytes"]:
            raise ValueError(f"observation of {len(payload)} bytes exceeds the server's limit of "
                             f"{self.hello['max_bytes']} (send smaller images)")
        timeout_s = self.reply_timeout_s if timeout_s is None else timeout_s
        t0 = time.perf_counter()
        try:
            self._ws.send(payload)
            deadline = t0 + timeout_s
            while True:  # replies to older, abandoned requests are skipped
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise TimeoutError
                reply = decode(self._ws.recv(timeout=remaining), self.max_bytes)
                if reply.get("seq") is None or reply.get("seq") >= seq:
                    break
        except TimeoutError:
            self.close()  # a late reply must not be taken for the next request's
            raise ServerUnavailable(f"no reply from {self.url} within {timeout_s:.3f} s") from None
        except (ConnectionClosed, OSError) as err:
            self.close()
            raise ServerUnavailable(f"connection to {self.url} lost: {err}") from None
        rtt_ms = (time.perf_counter() - t0) * 1e3
        if reply.get("type") == "error" and reply.get("code") in ("protocol_mismatch",):
            self.close()
        actions = check_act(reply, seq, (self.hello["chunk_size"], self.hello["output_features"]["action"]["shape"][0])
                            if "action" in self.hello["output_features"] else None)
        return Reply(actions=actions, timing=dict(reply.get("timing") or {}), rtt_ms=rtt_ms)


__all__ = ["PolicyClient", "ProtocolError", "RemoteError", "Reply", "ServerUnavailable"]
