"""Wire protocol v1 of `vst-vla serve` and the `vst_vla_remote` policy: WebSocket, binary msgpack frames.

No pickle anywhere: a message is a msgpack map of plain values, and an array is a map
`{"__nd__": 1, "dtype": "<f4", "shape": [...], "data": <raw bytes>}`. Decoding builds nothing but
`dict`, `list`, `str`, numbers and `np.frombuffer` views of allow-listed dtypes (object, void and
big-endian dtypes, msgpack extension types and non-string map keys are refused).

Messages (every one has `type`):

| type | direction | fields |
|---|---|---|
| `hello` | server → client, first frame | `protocol, server_id, policy_type, input_features {key: {type, shape}}, output_features, action_names, chunk_size, n_action_steps, fps, supports_rtc, max_bytes` |
| `hello` | client → server, first frame | `protocol, client` |
| `obs` | client → server | `seq, t_capture_ns, observation {key: array}, task, robot_type, noise?, rtc?` |
| `act` | server → client | `seq, actions f32[H, A] (robot units, post-processed), action_names, timing {queue_ms, infer_ms, total_ms}` |
| `error` | server → client | `seq, code, message` |

`observation` holds the policy's input features by their LeRobot keys (`observation.state` f32[D],
`observation.images.<cam>` uint8 [H, W, 3], exactly what `build_dataset_frame` gives a local policy).
`rtc` (optional) is `{enabled, prefix_attention_schedule, max_guidance_weight, execution_horizon,
inference_delay, leftover f32[T, A] in robot units, leftover_len}`: the server normalises the leftover
with the checkpoint's own processors, as LeRobot's RTC engine does locally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
DEFAULT_MAX_BYTES = 16 * 2**20  # per message; two 1080p RGB frames fit
TOKEN_ENV = "VST_VLA_TOKEN"
ALLOWED_DTYPES = {"|u1", "|i1", "|b1", "<i2", "<u2", "<i4", "<i8", "<f2", "<f4", "<f8"}
MAX_NDIM = 4
MAX_TASK_CHARS = 4096
ERROR_CODES = ("bad_message", "pickle_refused", "protocol_mismatch", "bad_observation", "inference_failed",
               "busy", "internal")


class ProtocolError(Exception):
    """A message that breaks the protocol; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


# ---------------------------------------------------------------------------------------------- codec
def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype.str not in ALLOWED_DTYPES:
            arr = arr.astype(arr.dtype.newbyteorder("<"))
            if arr.dtype.str not in ALLOWED_DTYPES:
                raise TypeError(f"arrays of dtype {obj.dtype} are not sent")
        return {"__nd__": 1, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"cannot send a {type(obj).__name__}")


def _decode_nd(obj: dict) -> Any:
    if "__nd__" not in obj:
        return obj
    dtype, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
    if set(obj) != {"__nd__", "dtype", "shape", "data"} or not isinstance(dtype, str) \
            or not isinstance(data, bytes) or not isinstance(shape, list):
        raise ProtocolError("bad_message", "an array needs exactly __nd__, dtype, shape and data (bytes)")
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError("bad_message", f"array dtype {dtype!r} is not allowed (allowed: {sorted(ALLOWED_DTYPES)})")
    if len(shape) > MAX_NDIM or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ProtocolError("bad_message", f"bad array shape {shape}")
    dt = np.dtype(dtype)
    if math.prod(shape) * dt.itemsize != len(data):
        raise ProtocolError("bad_message", f"array of shape {shape} and dtype {dtype} needs "
                                           f"{math.prod(shape) * dt.itemsize} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(shape)


def _refuse_ext(code: int, data: bytes) -> Any:  # noqa: ARG001
    raise ProtocolError("bad_message", f"msgpack extension type {code} is not allowed")


def looks_like_pickle(data: bytes) -> bool:
    """Pickle protocols 2-5 start with PROTO (0x80) and the protocol number."""
    return len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5


def encode(msg: dict) -> bytes:
    return msgpack.packb(msg, default=_encode_default, use_bin_type=True)


def decode(data: bytes | bytearray | memoryview | str, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """One message from a binary frame; raises ProtocolError (never anything else) on a bad one."""
    if isinstance(data, str):
        raise ProtocolError("bad_message", "text frames are not accepted: send binary msgpack")
    data = bytes(data)
    if len(data) > max_bytes:
        raise ProtocolError("bad_message", f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    if looks_like_pickle(data):
        raise ProtocolError("pickle_refused", "pickle payloads are refused: send msgpack")
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, object_hook=_decode_nd,
                              ext_hook=_refuse_ext)
    except ProtocolError:
        raise
    except Exception as err:  # noqa: BLE001  (msgpack raises several types; all mean a bad message)
        raise ProtocolError("bad_message", f"not a msgpack message ({type(err).__name__}: {err})") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_message", "a message is a map with a string 'type'")
    return msg


# ---------------------------------------------------------------------------------------------- messages
def error_message(code: str, message: str, seq: int | None = None) -> dict:
    return {"type": "error", "seq": seq, "code": code, "message": message}


def client_hello(client: str = "vst_vla_remote") -> dict:
    return {"type": "hello", "protocol": PROTOCOL_VERSION, "client": client}


def _check_hello(msg: dict, expected: str, peer: str, me: str) -> None:
    if msg.get("type") != "hello":
        raise ProtocolError("protocol_mismatch", f"{expected}, got {msg.get('type')!r}")
    if msg.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError("protocol_mismatch", f"{peer} speaks protocol {msg.get('protocol')!r}, "
                                                 f"this {me} speaks {PROTOCOL_VERSION}")


def check_client_hello(msg: dict) -> None:
    _check_hello(msg, "the first message must be a hello", "client", "server")


HELLO_FIELDS = {"protocol": int, "server_id": str, "policy_type": str, "input_features": dict,
                "output_features": dict, "chunk_size": int, "n_action_steps": int, "fps": int,
                "supports_rtc": bool, "max_bytes": int}


def check_server_hello(msg: dict) -> dict:
    """The server's hello, checked for the protocol version and its fields; returns it."""
    _check_hello(msg, "expected the server's hello", "server", "client")
    for name, kind in HELLO_FIELDS.items():
        if not isinstance(msg.get(name), kind) or (kind is int and isinstance(msg.get(name), bool)):
            raise ProtocolError("bad_message", f"hello field {name!r} must be a {kind.__name__}, got {msg.get(name)!r}")
    names = msg.get("action_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ProtocolError("bad_message", "hello field 'action_names' must be a list of strings or None")
    for group in ("input_features", "output_features"):
        for key, ft in msg[group].items():
            if not (isinstance(ft, dict) and isinstance(ft.get("type"), str) and isinstance(ft.get("shape"), list)):
                raise ProtocolError("bad_message", f"hello {group}[{key!r}] must be {{type, shape}}")
    return msg


def features_to_wire(features: dict) -> dict:
    """LeRobot `PolicyFeature`s -> `{key: {type, shape}}`."""
    return {k: {"type": getattr(ft.type, "value", str(ft.type)), "shape": [int(n) for n in ft.shape]}
            for k, ft in (features or {}).items()}


@dataclass
class RTCRequest:
    enabled: bool = True
    prefix_attention_schedule: str = "LINEAR"
    max_guidance_weight: float = 10.0
    execution_horizon: int = 10
    inference_delay: int = 0
    leftover: np.ndarray | None = None  # f32[T, A] in robot units
    leftover_len: int = 0  # rows of `leftover` that are real (the rest is the engine's zero padding)


@dataclass
class ObsRequest:
    seq: int
    observation: dict[str, np.ndarray]
    task: str = ""
    robot_type: str = ""
    t_capture_ns: int | None = None
    noise: np.ndarray | None = None
    rtc: RTCRequest | None = None
    extra: dict = field(default_factory=dict)


def _finite_float_array(value: Any, name: str, ndim: int) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != ndim or value.dtype.kind != "f":
        raise ProtocolError("bad_observation", f"{name} must be a float array with {ndim} dims")
    if not np.all(np.isfinite(value)):
        raise ProtocolError("bad_observation", f"{name} contains NaN or inf")
    return value


def parse_obs(msg: dict, input_features: dict) -> ObsRequest:
    """An `obs` message checked against the policy's input features (`{key: {type, shape}}`)."""
    seq = msg.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ProtocolError("bad_message", "obs needs an integer 'seq'")
    obs = msg.get("observation")
    if not isinstance(obs, dict):
        raise ProtocolError("bad_observation", "obs needs an 'observation' map of arrays")
    unknown = sorted(set(obs) - set(input_features))
    missing = sorted(set(input_features) - set(obs))
    if unknown or missing:
        raise ProtocolError("bad_observation", f"observation keys do not match the policy's input features: "
                                               f"missing {missing}, unknown {unknown}")
    out = {}
    for key, ft in input_features.items():
        value = obs[key]
        if not isinstance(value, np.ndarray):
            raise ProtocolError("bad_observation", f"{key} must be an array")
        if ft["type"] == "VISUAL":
            if value.ndim != 3 or value.shape[2] != 3 or not 0 < value.shape[0] <= 8192 or not 0 < value.shape[1] <= 8192:
                raise ProtocolError("bad_observation", f"{key} must be an [H, W, 3] image, got shape {list(value.shape)}")
            if value.dtype != np.uint8:
                _finite_float_array(value, key, 3)
        else:
            if value.ndim != len(ft["shape"]) or list(value.shape) != list(ft["shape"]):
                raise ProtocolError("bad_observation", f"{key} must have shape {ft['shape']}, got {list(value.shape)}")
            value = _finite_float_array(value, key, len(ft["shape"])).astype(np.float32, copy=False)
        out[key] = value
    task = msg.get("task", "")
    robot_type = msg.get("robot_type", "")
    if not isinstance(task, str) or len(task) > MAX_TASK_CHARS or not isinstance(robot_type, str) or len(robot_type) > 256:
        raise ProtocolError("bad_observation", f"task and robot_type must be strings (task ≤ {MAX_TASK_CHARS} chars)")
    noise = msg.get("noise")
    if noise is not None:
        noise = _finite_float_array(noise, "noise", 2).astype(np.float32, copy=False)
    rtc = msg.get("rtc")
    if rtc is not None:
        rtc = parse_rtc(rtc)
    t_capture = msg.get("t_capture_ns")
    return ObsRequest(seq=seq, observation=out, task=task, robot_type=robot_type,
                      t_capture_ns=t_capture if isinstance(t_capture, int) else None, noise=noise, rtc=rtc)


def parse_rtc(rtc: Any) -> RTCRequest:
    if not isinstance(rtc, dict):
        raise ProtocolError("bad_observation", "rtc must be a map")
    try:
        req = RTCRequest(enabled=bool(rtc.get("enabled", True)),
                         prefix_attention_schedule=str(rtc.get("prefix_attention_schedule", "LINEAR")),
                         max_guidance_weight=float(rtc.get("max_guidance_weight", 10.0)),
                         execution_horizon=int(rtc.get("execution_horizon", 10)),
                         inference_delay=int(rtc.get("inference_delay", 0)),
                         leftover=rtc.get("leftover"), leftover_len=int(rtc.get("leftover_len", 0)))
    except (TypeError, ValueError) as err:
        raise ProtocolError("bad_observation", f"bad rtc fields: {err}") from None
    if req.leftover is not None:
        req.leftover = _finite_float_array(req.leftover, "rtc.leftover", 2).astype(np.float32, copy=False)
        if not 0 <= req.leftover_len <= req.leftover.shape[0]:
            raise ProtocolError("bad_observation", "rtc.leftover_len must lie in [0, len(leftover)]")
    if req.execution_horizon < 1 or req.inference_delay < 0 or not math.isfinite(req.max_guidance_weight):
        raise ProtocolError("bad_observation", "rtc needs execution_horizon ≥ 1, inference_delay ≥ 0")
    return req


def check_act(msg: dict, seq: int, chunk_shape: tuple[int, int] | None = None) -> np.ndarray:
    """The actions of an `act` reply to request `seq`: f32[H, A], finite."""
    if msg.get("type") == "error":
        raise RemoteError(str(msg.get("code")), str(msg.get("message")))
    if msg.get("type") != "act" or msg.get("seq") != seq:
        raise ProtocolError("bad_message", f"expected act #{seq}, got {msg.get('type')!r} #{msg.get('seq')!r}")
    actions = msg.get("actions")
    if not isinstance(actions, np.ndarray) or actions.ndim != 2 or actions.dtype.kind != "f":
        raise ProtocolError("bad_message", "act.actions must be a float array [H, A]")
    if chunk_shape is not None and (actions.shape[1] != chunk_shape[1] or not 1 <= actions.shape[0] <= chunk_shape[0]):
        raise ProtocolError("bad_message", f"act.actions has shape {actions.shape}, expected up to {chunk_shape}")
    if not np.all(np.isfinite(actions)):
        raise ProtocolError("bad_message", "act.actions contains NaN or inf")
    return actions.astype(np.float32, copy=False)


class RemoteError(Exception):
    """The server answered a request with an error message (the connection stays usable)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"policy server refused the request ({code}): {message}")
        self.code, self.message = code, message


# ---------------------------------------------------------------------------------------------- robot check
def check_hello_against_robot(hello: dict, observation_features: dict, action_features: dict) -> list[str]:
    """What would go wrong driving this robot with the served policy (empty: nothing).

    LeRobot's rollout builds `observation.state` from the robot's scalar `.pos`/`.vel` keys in their
    order, the cameras by name, and maps action index i to the robot's i-th action key (sync engine):
    the served policy must see the same layout.
    """
    problems = []
    state_keys = [k for k, v in observation_features.items() if v is float and k.endswith((".pos", ".vel"))]
    cams = [k for k, v in observation_features.items() if isinstance(v, tuple)]
    action_keys = [k for k in action_features if k.endswith((".pos", ".vel"))]
    feats = hello["input_features"]
    state = feats.get("observation.state")
    if state is not None and state["shape"] != [len(state_keys)]:
        problems.append(f"policy state has shape {state['shape']}, the robot gives {len(state_keys)} values {state_keys}")
    for key, ft in feats.items():
        if ft["type"] == "VISUAL" and key.removeprefix("observation.images.") not in cams:
            problems.append(f"policy camera {key} is not among the robot's cameras {cams}")
    out = hello["output_features"].get("action")
    if out is not None and out["shape"] != [len(action_keys)]:
        problems.append(f"policy action has shape {out['shape']}, the robot takes {len(action_keys)} {action_keys}")
    names = hello.get("action_names")
    if names is not None and list(names) != action_keys:
        problems.append(f"policy action names {names} differ from the robot's action keys {action_keys} "
                        "(LeRobot's sync engine maps by position)")
    return problems
