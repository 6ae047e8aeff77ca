"""Serving over the network on loopback: `vst-vla serve` + `vst_vla_remote` vs LeRobot's async inference.

Every server runs in its own process (OMP_NUM_THREADS=1, as the client); the client sends what
lerobot-rollout would, for the sim SO-101 at 30 Hz: two 224×224 RGB cameras (uint8) and the 6-D joint
state, from a fixed set of random frames (no rendering, so the sim does not compete for the 2 cores).

- `transport_overhead_ms`: round trip minus the server's own inference time (`timing.infer_ms`),
  with a stub policy (returns the state) so nothing but transport is measured. Goal p50 ≤ 3, p99 ≤ 10.
- `obs_to_action_ms`: observation handed to the client → its action chunk usable on the client, for
  the same tiny ACT checkpoint (2×224² cameras) served by `vst-vla serve` and by LeRobot's own
  `lerobot.async_inference.policy_server` (gRPC + pickle; driven with its own stubs and message
  classes as its RobotClient does: SendObservations then GetActions; `--inference_latency=0`, since
  its default pads every GetActions to 33 ms). ACT because LeRobot's server only takes its allow-list.
- `vst_vla_policy_*`: the same for a tiny untrained `vst_vla` flow checkpoint (our own policy type,
  which LeRobot's async server refuses).
- `starved_ticks`, `control_jitter_ms_p99`: a 30 Hz control loop playing one action per tick from a
  queue that a background thread refills through `VSTVLARemotePolicy.predict_action_chunk` (the tiny
  vst_vla policy) when it falls to `--threshold` actions; a tick with an empty queue is starved;
  jitter is |tick start − schedule|.
- `hold_after_server_kill_ms`: the same loop in sync style (`select_action` every tick); the
  server process gets SIGKILL and we time the first tick that holds. `..._from_exit_ms` counts from
  the moment the process is gone (its sockets closed), which excludes the kernel's teardown of a
  torch process.

Progress goes to stderr; the last stdout line is one JSON object.

    MUJOCO_GL=egl python benchmarks/deploy.py
"""

from __future__ import annotations

import argparse
import json
import os
import pickle  # nosec: LeRobot's own wire format, only to drive its server for the comparison
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

TOKEN = "benchmark-token-" + "x" * 16
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SIZE = 224
FPS = 30


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"p50": round(float(np.percentile(v, 50)), 3), "p99": round(float(np.percentile(v, 99)), 3)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "VST_VLA_TOKEN": TOKEN}


def frames(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    home = np.array([0.0, -68.75, 60.16, 71.62, 0.0, 61.18], np.float32)
    return [{"observation.state": (home + rng.normal(0, 2, 6)).astype(np.float32),
             "observation.images.front": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
             "observation.images.wrist": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)} for _ in range(n)]


# ---------------------------------------------------------------------------------------------- servers
def start_ours(args: list[str], label: str) -> tuple[subprocess.Popen, int]:
    """`vst-vla serve ...` (or this script's stub server) in a subprocess; returns once it listens."""
    port = free_port()
    proc = subprocess.Popen([*args, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=child_env(), cwd=REPO)
    for line in proc.stdout:
        if line.startswith("{"):
            log(f"[deploy] {label} server: {line.strip()}")
            return proc, port
    proc.kill()
    raise RuntimeError(f"{label} server did not start")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def serve_stub(port: int) -> None:
    """This script's `--serve-stub` mode: a PolicyServer around a StubRunner (no policy compute)."""
    from vst_vla.deploy.server import PolicyServer, StubRunner, run_until_signal

    features = {"observation.state": {"type": "STATE", "shape": [6]},
                **{f"observation.images.{c}": {"type": "VISUAL", "shape": [3, SIZE, SIZE]} for c in ("front", "wrist")}}
    run_until_signal(PolicyServer(StubRunner(features, chunk_size=10), TOKEN, "127.0.0.1", port))


# ---------------------------------------------------------------------------------------------- ours
def round_trips(port: int, obs: list[dict], n: int, paced: bool = True) -> tuple[list[float], list[float]]:
    """(round trip ms, server inference ms) of n requests at 30 Hz."""
    from lerobot_policy_vst_vla.remote.client import PolicyClient

    client = PolicyClient("127.0.0.1", port, TOKEN, reply_timeout_s=30.0)
    client.connect()
    for i in range(5):  # warm-up
        client.infer(obs[i % len(obs)], "stack the cube", "vst_sim_so101")
    rtt, infer = [], []
    next_t = time.perf_counter()
    for i in range(n):
        if paced:
            time.sleep(max(0.0, next_t - time.perf_counter()))
            next_t = max(next_t + 1 / FPS, time.perf_counter())
        t0 = time.perf_counter()
        reply = client.infer(obs[i % len(obs)], "stack the cube", "vst_sim_so101")
        rtt.append((time.perf_counter() - t0) * 1e3)
        infer.append(reply.timing["infer_ms"])
    client.close()
    return rtt, infer


# ---------------------------------------------------------------------------------------------- LeRobot async
def lerobot_async_round_trips(checkpoint: Path, obs: list[dict], n: int) -> list[float]:
    import grpc
    from lerobot.async_inference.helpers import RemotePolicyConfig, TimedObservation, map_robot_keys_to_lerobot_features
    from lerobot.transport import services_pb2, services_pb2_grpc
    from lerobot.transport.utils import grpc_channel_options, send_bytes_in_chunks
    from lerobot_env_vst_vla.robot import MOTOR_KEYS
    from lerobot_robot_vst_sim import VstSimCameraConfig, VstSimSO101, VstSimSO101Config

    port = free_port()
    proc = subprocess.Popen([str(BIN / "python"), "-m", "lerobot.async_inference.policy_server", "--host=127.0.0.1",
                             f"--port={port}", f"--fps={FPS}", "--inference_latency=0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(), cwd=REPO)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", grpc_channel_options())
        grpc.channel_ready_future(channel).result(timeout=300)
        stub = services_pb2_grpc.AsyncInferenceStub(channel)
        stub.Ready(services_pb2.Empty())
        robot = VstSimSO101(VstSimSO101Config(cameras={c: VstSimCameraConfig(SIZE, SIZE, FPS) for c in ("front", "wrist")}))
        spec = RemotePolicyConfig("act", str(checkpoint), map_robot_keys_to_lerobot_features(robot), 10, "cpu")
        stub.SendPolicyInstructions(services_pb2.PolicySetup(data=pickle.dumps(spec)))  # nosec
        log("[deploy] lerobot_async server ready")

        def raw(i: int) -> dict:  # what its RobotClient sends: the robot's own observation dict
            f = obs[i % len(obs)]
            return {**dict(zip(MOTOR_KEYS, f["observation.state"].tolist(), strict=True)),
                    "front": f["observation.images.front"], "wrist": f["observation.images.wrist"],
                    "task": "stack the cube"}

        def one(i: int) -> float:
            t0 = time.perf_counter()
            timed = TimedObservation(timestamp=time.time(), timestep=i, observation=raw(i), must_go=True)
            stub.SendObservations(send_bytes_in_chunks(pickle.dumps(timed), services_pb2.Observation, silent=True))  # nosec
            while True:
                reply = stub.GetActions(services_pb2.Empty())
                if reply.data:
                    actions = pickle.loads(reply.data)  # nosec
                    if actions and actions[0].get_timestep() == i:
                        return (time.perf_counter() - t0) * 1e3

        for i in range(5):
            one(i)
        out, next_t = [], time.perf_counter()
        for i in range(5, 5 + n):
            time.sleep(max(0.0, next_t - time.perf_counter()))
            next_t = max(next_t + 1 / FPS, time.perf_counter())
            out.append(one(i))
        channel.close()
        return out
    finally:
        stop(proc)


# ---------------------------------------------------------------------------------------------- control loop
def remote_policy(port: int, folder: Path):
    from lerobot.configs import PreTrainedConfig
    from lerobot.policies import get_policy_class, make_pre_post_processors
    from lerobot_policy_vst_vla.remote.folder import write_remote_policy_folder

    write_remote_policy_folder(folder, "127.0.0.1", port, TOKEN, "vst_sim_so101")
    cfg = PreTrainedConfig.from_pretrained(folder, cli_overrides=[f"--token={TOKEN}"])  # never in the folder
    cfg.pretrained_path = str(folder)
    policy = get_policy_class(cfg.type).from_pretrained(folder, config=cfg)
    pre, _ = make_pre_post_processors(cfg, pretrained_path=str(folder), preprocessor_overrides={
        "device_processor": {"device": "cpu"}, "rename_observations_processor": {"rename_map": {}}})
    return policy, pre


def prepared(pre, f: dict):
    import torch
    from lerobot.policies.utils import prepare_observation_for_inference

    return pre(prepare_observation_for_inference({k: v.copy() for k, v in f.items()}, torch.device("cpu"),
                                                 "stack the cube", "vst_sim_so101"))


def control_loop(policy, pre, obs: list[dict], seconds: float, threshold: int) -> dict:
    """30 Hz: one action per tick from a queue; a thread refills it (predict_action_chunk) at `threshold`."""
    queue: deque = deque()
    lock = threading.Lock()
    latest = {"f": obs[0]}
    stop_evt = threading.Event()
    infer_ms = []

    def refill() -> None:
        while not stop_evt.is_set():
            with lock:
                need = len(queue) <= threshold
            if not need:
                time.sleep(0.002)
                continue
            t0 = time.perf_counter()
            chunk = policy.predict_action_chunk(prepared(pre, latest["f"]))[0]
            infer_ms.append((time.perf_counter() - t0) * 1e3)
            with lock:
                queue.clear()  # the new chunk replaces what is left (no blending)
                queue.extend(chunk)

    worker = threading.Thread(target=refill, daemon=True)
    worker.start()
    deadline = time.perf_counter() + 120
    while not queue:  # the first chunk
        if not worker.is_alive() or time.perf_counter() > deadline:
            raise RuntimeError("the refill thread produced no chunk")
        time.sleep(0.001)
    ticks = int(seconds * FPS)
    starved, lateness = 0, []
    start = time.perf_counter()
    for k in range(ticks):
        scheduled = start + k / FPS
        time.sleep(max(0.0, scheduled - time.perf_counter()))
        lateness.append(abs(time.perf_counter() - scheduled) * 1e3)
        latest["f"] = obs[k % len(obs)]
        with lock:
            if queue:
                queue.popleft()
            else:
                starved += 1
    stop_evt.set()
    worker.join(timeout=10)
    return {"ticks": ticks, "starved_ticks": starved, "control_jitter_ms_p99": pct(lateness)["p99"],
            "refill_ms": pct(infer_ms)}


def hold_after_kill(policy, pre, server: subprocess.Popen, obs: list[dict]) -> dict:
    """Sync-style loop (select_action every tick); SIGKILL the server mid-chunk; time the first hold."""
    policy.reset()
    batches = [prepared(pre, f) for f in obs[:8]]
    start = time.perf_counter()
    t_kill = t_hold = None
    exited: dict = {}

    def reap() -> None:
        server.wait()
        exited["t"] = time.perf_counter()

    for k in range(10 * FPS):
        scheduled = start + k / FPS
        time.sleep(max(0.0, scheduled - time.perf_counter()))
        if k == FPS + 3:  # mid-chunk (chunk 10): the queue still holds actions
            server.send_signal(signal.SIGKILL)
            t_kill = time.perf_counter()
            threading.Thread(target=reap, daemon=True).start()
        policy.select_action(batches[k % len(batches)])
        if policy.holding:
            t_hold = time.perf_counter()
            break
    if t_hold is None:
        return {"hold_after_server_kill_ms": None, "hold_after_server_exit_ms": None}
    t_exit = exited.get("t", t_hold)
    return {"hold_after_server_kill_ms": round((t_hold - t_kill) * 1e3, 2),
            "hold_after_server_exit_ms": round(max(0.0, t_hold - t_exit) * 1e3, 2)}


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=300, help="round trips per measurement (30 Hz)")
    parser.add_argument("--loop-seconds", type=float, default=10.0)
    parser.add_argument("--threshold", type=int, default=5, help="refill the queue at this many actions (chunk 10)")
    parser.add_argument("--serve-stub", action="store_true", help=argparse.SUPPRESS)  # internal: the stub server
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stub:
        serve_stub(args.port)
        return
    import torch

    torch.set_num_threads(1)
    from vst_vla.deploy.tiny import make_tiny_checkpoint

    t_start = time.perf_counter()
    obs = frames(16)
    tmp = Path(tempfile.mkdtemp(prefix="deploy_bench_"))
    act = make_tiny_checkpoint(tmp / "act", "act", image_size=SIZE)
    vst = make_tiny_checkpoint(tmp / "vst_vla", "vst_vla", image_size=SIZE)
    from lerobot_policy_vst_vla.remote.protocol import encode

    payload = len(encode({"type": "obs", "seq": 1, "observation": obs[0], "task": "stack the cube"}))
    result: dict = {"benchmark": "deploy", "fps": FPS, "cameras": f"2x{SIZE}x{SIZE} uint8", "state_dim": 6,
                    "obs_payload_bytes": payload}

    # (a) transport overhead with a stub policy
    proc, port = start_ours([str(BIN / "python"), str(Path(__file__).resolve()), "--serve-stub"], "stub")
    try:
        rtt, infer = round_trips(port, obs, args.samples)
    finally:
        stop(proc)
    overhead = [r - i for r, i in zip(rtt, infer, strict=True)]
    result["transport_overhead_ms"] = pct(overhead)
    result["transport_overhead_goal_ms"] = {"p50": 3.0, "p99": 10.0}
    result["transport_overhead_meets_goal"] = bool(result["transport_overhead_ms"]["p50"] <= 3.0
                                                   and result["transport_overhead_ms"]["p99"] <= 10.0)
    log(f"[deploy] stub: round trip {pct(rtt)}, overhead {result['transport_overhead_ms']}")

    # (b) obs -> action, same tiny ACT checkpoint: ours vs LeRobot async
    n = max(60, args.samples // 3)
    proc, port = start_ours([str(BIN / "vst-vla"), "serve", f"--policy.path={act}"], "act")
    try:
        rtt_act, infer_act = round_trips(port, obs, n)
    finally:
        stop(proc)
    log(f"[deploy] vst_vla_serve act: {pct(rtt_act)} (server inference {pct(infer_act)})")
    lr_act = lerobot_async_round_trips(act, obs, n)
    log(f"[deploy] lerobot_async act: {pct(lr_act)}")
    result["obs_to_action_ms"] = {"vst_vla_serve": pct(rtt_act), "lerobot_async": pct(lr_act)}
    result["obs_to_action_policy"] = "act (tiny, untrained, 2 cameras 224x224, chunk 10)"
    result["act_server_inference_ms"] = pct(infer_act)
    result["lerobot_async_inference_latency_s"] = 0.0

    # (c, d) our policy type: round trips, the control loop, then the kill
    proc, port = start_ours([str(BIN / "vst-vla"), "serve", f"--policy.path={vst}"], "vst_vla")
    try:
        rtt_vst, infer_vst = round_trips(port, obs, n)
        result["vst_vla_policy_obs_to_action_ms"] = pct(rtt_vst)
        result["vst_vla_policy_infer_ms"] = pct(infer_vst)
        result["vst_vla_policy_transport_overhead_ms"] = pct([r - i for r, i in zip(rtt_vst, infer_vst, strict=True)])
        policy, pre = remote_policy(port, tmp / "remote")
        loop = control_loop(policy, pre, obs, args.loop_seconds, args.threshold)
        log(f"[deploy] control loop: {loop}")
        result.update({"control_ticks": loop["ticks"], "starved_ticks": loop["starved_ticks"],
                       "control_jitter_ms_p99": loop["control_jitter_ms_p99"], "refill_ms": loop["refill_ms"],
                       "refill_threshold": args.threshold})
        result.update(hold_after_kill(policy, pre, proc, obs))
        log(f"[deploy] hold after kill: {result['hold_after_server_kill_ms']} ms")
    finally:
        if proc.poll() is None:
            proc.kill()
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
