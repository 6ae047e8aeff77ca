"""`vst-vla serve` and the `vst_vla_remote` policy over real sockets on 127.0.0.1.

Tiny untrained checkpoints are built from a config (vst_vla.deploy.tiny); the server loads them as
lerobot-rollout does. In-process servers run on their own event loop (ServerThread); the kill test
and the real `lerobot-rollout` use the `vst-vla serve` CLI in a subprocess.
"""

from __future__ import annotations

import http.client
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from lerobot.configs import PreTrainedConfig, RTCAttentionSchedule
from lerobot.policies import get_policy_class, make_pre_post_processors
from lerobot.policies.rtc.configuration_rtc import RTCConfig
from lerobot.policies.utils import prepare_observation_for_inference
from lerobot.processor import NormalizerProcessorStep, TransitionKey, create_transition
from lerobot_env_vst_vla.robot import MOTOR_KEYS
from lerobot_policy_vst_vla.remote import protocol
from lerobot_policy_vst_vla.remote.client import PolicyClient, ServerUnavailable
from lerobot_policy_vst_vla.remote.folder import write_remote_policy_folder
from lerobot_policy_vst_vla.remote.protocol import ProtocolError
from vst_vla.cli import main as cli
from vst_vla.deploy.server import LeRobotRunner, PolicyServer, ServerThread, StubRunner
from vst_vla.deploy.tiny import make_tiny_checkpoint

TOKEN = "test-token-0123456789abcdef"
TASK = "stack the blue cube on the red cube"
BIN = Path(sys.executable).parent
OVERRIDES = {"device_processor": {"device": "cpu"}, "rename_observations_processor": {"rename_map": {}}}


def frame(seed: int = 0, size: int = 224) -> dict[str, np.ndarray]:
    """What build_dataset_frame gives a policy for the sim robot: state f32[6], cameras uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    return {"observation.state": rng.normal(0, 20, 6).astype(np.float32),
            "observation.images.front": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation.images.wrist": rng.integers(0, 256, (size, size, 3), dtype=np.uint8)}


def load_like_rollout(path: Path, **overrides):
    """Policy and processors exactly as lerobot-rollout builds them from --policy.path (--policy.<k>=<v>)."""
    cfg = PreTrainedConfig.from_pretrained(path, cli_overrides=[f"--{k}={v}" for k, v in overrides.items()])
    cfg.pretrained_path = str(path)
    policy = get_policy_class(cfg.type).from_pretrained(path, config=cfg).eval()
    pre, post = make_pre_post_processors(cfg, pretrained_path=str(path), preprocessor_overrides=OVERRIDES)
    return policy, pre, post


def batch_of(pre, f: dict) -> dict:
    return pre(prepare_observation_for_inference({k: v.copy() for k, v in f.items()}, torch.device("cpu"), TASK,
                                                 "vst_sim_so101"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ckpt")
    return {"flow": make_tiny_checkpoint(tmp / "flow"),
            "tokens": make_tiny_checkpoint(tmp / "tokens", action_head="tokens", chunk_size=1)}


@pytest.fixture(scope="module")
def flow_server(checkpoints):
    with ServerThread(PolicyServer(LeRobotRunner(checkpoints["flow"]), TOKEN, port=0)) as st:
        yield st


def raw_session(port: int, token: str = TOKEN):
    """A hand-driven connection: hello read, our hello sent."""
    ws = ws_connect(f"ws://127.0.0.1:{port}/", additional_headers={"Authorization": f"Bearer {token}"},
                    compression=None, max_size=None)
    hello = protocol.decode(ws.recv(timeout=10))
    ws.send(protocol.encode(protocol.client_hello()))
    return ws, hello


def obs_message(seq: int, f: dict | None = None, **extra) -> dict:
    return {"type": "obs", "seq": seq, "observation": frame() if f is None else f, "task": TASK,
            "robot_type": "vst_sim_so101", **extra}


# ---------------------------------------------------------------------------------------------- codec
def test_codec_round_trips_arrays_and_refuses_what_it_must():
    msg = {"type": "obs", "a": np.arange(6, dtype=np.float32), "img": np.zeros((2, 3, 3), np.uint8), "n": 3}
    back = protocol.decode(protocol.encode(msg))
    assert back["a"].dtype == np.float32 and np.array_equal(back["a"], msg["a"]) and back["img"].shape == (2, 3, 3)
    with pytest.raises(ProtocolError, match="pickle"):
        protocol.decode(pickle.dumps({"type": "obs"}))
    with pytest.raises(TypeError):
        protocol.encode({"type": "x", "a": np.array([object()], dtype=object)})
    forged = msgpack.packb({"type": "obs", "a": {"__nd__": 1, "dtype": "|O", "shape": [1], "data": b"\0" * 8}})
    with pytest.raises(ProtocolError, match="not allowed"):
        protocol.decode(forged)
    short = msgpack.packb({"type": "obs", "a": {"__nd__": 1, "dtype": "<f4", "shape": [4], "data": b"\0" * 8}})
    with pytest.raises(ProtocolError, match="needs 16 bytes"):
        protocol.decode(short)
    with pytest.raises(ProtocolError, match="extension"):
        protocol.decode(msgpack.packb({"type": "x", "e": msgpack.ExtType(1, b"x")}))
    with pytest.raises(ProtocolError):
        protocol.decode(msgpack.packb({1: "int keys"}))
    with pytest.raises(ProtocolError, match="text frames"):
        protocol.decode('{"type": "obs"}')
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.decode(b"\x00" * 101, max_bytes=100)


# ---------------------------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("head", ["flow", "tokens"])
def test_remote_actions_equal_local_for_the_same_observation_and_noise(checkpoints, tmp_path, head):
    ckpt = checkpoints[head]
    local, lpre, lpost = load_like_rollout(ckpt)
    with ServerThread(PolicyServer(LeRobotRunner(ckpt), TOKEN, port=0)) as st:
        folder = write_remote_policy_folder(tmp_path / "remote", "127.0.0.1", st.port, TOKEN, "vst_sim_so101")
        assert "token" not in json.loads((folder / "config.json").read_text()) or \
            json.loads((folder / "config.json").read_text())["token"] is None
        remote, rpre, rpost = load_like_rollout(folder, token=TOKEN)
        assert remote.config.chunk_size == local.config.chunk_size and remote.supports_rtc() == (head == "flow")
        for seed in range(3):
            f = frame(seed)
            noise = torch.randn(1, local.config.chunk_size, 6) if head == "flow" else None
            with torch.inference_mode():
                want = lpost(local.predict_action_chunk(batch_of(lpre, f), noise=noise))
            got = rpost(remote.predict_action_chunk(batch_of(rpre, f), noise=noise))
            assert got.shape == want.shape
            assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
        # the sync engine's path: select_action, one step per tick, a new chunk when the queue runs dry
        local.reset(), remote.reset()
        for tick in range(local.config.n_action_steps + 1):
            f = frame(10 + tick)
            torch.manual_seed(tick)
            noise = torch.randn(1, local.config.chunk_size, 6) if head == "flow" else None
            with torch.inference_mode():
                want = lpost(local.select_action(batch_of(lpre, f), noise=noise))
            got = rpost(remote.select_action(batch_of(rpre, f), noise=noise))
            assert torch.allclose(got, want, atol=1e-5, rtol=0), (tick, (got - want).abs().max())
        remote.client.close()


def test_rtc_arguments_reach_the_served_policy_as_local_rtc_passes_them(checkpoints, tmp_path):
    """The leftover travels in robot units; the server normalises it with the checkpoint's normaliser, so
    the chunk equals local RTC (LeRobot's engine hands the normalised leftover to predict_action_chunk)."""
    ckpt = checkpoints["flow"]
    local, lpre, lpost = load_like_rollout(ckpt)
    rtc_cfg = RTCConfig(enabled=True, prefix_attention_schedule=RTCAttentionSchedule.LINEAR, max_guidance_weight=5.0,
                        execution_horizon=6)
    local.config.rtc_config = rtc_cfg
    local.init_rtc_processor()
    normalizer = next(s for s in lpre.steps if isinstance(s, NormalizerProcessorStep))
    with ServerThread(PolicyServer(LeRobotRunner(ckpt), TOKEN, port=0)) as st:
        folder = write_remote_policy_folder(tmp_path / "remote", "127.0.0.1", st.port, TOKEN)
        remote, rpre, rpost = load_like_rollout(folder, token=TOKEN)
        remote.config.rtc_config = rtc_cfg  # what lerobot-rollout --inference.type=rtc does
        remote.init_rtc_processor()
        f = frame(3)
        noise = torch.randn(1, 10, 6)
        leftover_robot = torch.tensor(np.random.default_rng(1).normal(0, 20, (4, 6)), dtype=torch.float32)
        padded_robot = torch.cat([leftover_robot, torch.zeros(2, 6)])  # the engine zero-pads to the horizon
        model_left = normalizer(create_transition(action=leftover_robot))[TransitionKey.ACTION]
        padded_model = torch.cat([model_left, torch.zeros(2, 6)])
        want = lpost(local.predict_action_chunk(batch_of(lpre, f), noise=noise, inference_delay=2,
                                                prev_chunk_left_over=padded_model))
        plain = lpost(local.predict_action_chunk(batch_of(lpre, f), noise=noise))
        got = rpost(remote.predict_action_chunk(batch_of(rpre, f), noise=noise, inference_delay=2,
                                                prev_chunk_left_over=padded_robot))
        assert (want - plain).abs().max() > 1e-3  # the guidance changed the chunk
        assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
        remote.client.close()


# ---------------------------------------------------------------------------------------------- refusals
def test_bad_clients_are_refused_while_another_client_keeps_being_served(flow_server):
    port = flow_server.port
    good = PolicyClient("127.0.0.1", port, TOKEN)
    hello = good.connect()
    assert hello["protocol"] == protocol.PROTOCOL_VERSION and hello["action_names"] == list(MOTOR_KEYS)
    assert hello["chunk_size"] == 10 and hello["fps"] == 30 and hello["supports_rtc"] is True

    def still_served():
        assert good.infer(frame(), TASK, "vst_sim_so101").actions.shape == (10, 6)

    still_served()
    # wrong and missing token: refused with 401 before the WebSocket opens (constant-time compare)
    with pytest.raises(PermissionError):
        PolicyClient("127.0.0.1", port, TOKEN[:-1] + "x").connect()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/", headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert conn.getresponse().status == 401
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200
    still_served()

    # bad messages: an error reply each, and the same connection keeps working
    ws, _ = raw_session(port)
    bad = {
        "pickle_refused": pickle.dumps(obs_message(1)),
        "bad_message": b"\xc1 not msgpack",
        "bad_observation": protocol.encode(obs_message(2, {**frame(), "observation.state": np.zeros(5, np.float32)})),
    }
    for code, payload in bad.items():
        ws.send(payload)
        reply = protocol.decode(ws.recv(timeout=10))
        assert reply["type"] == "error" and reply["code"] == code, reply
        assert "Traceback" not in reply["message"]  # no tracebacks on the wire unless debug=true
    for f in ({**frame(), "observation.state": np.full(6, np.nan, np.float32)},
              {**frame(), "observation.images.top": np.zeros((8, 8, 3), np.uint8)}):
        ws.send(protocol.encode(obs_message(3, f)))
        assert protocol.decode(ws.recv(timeout=10))["code"] == "bad_observation"
    ws.send("text frame")
    assert protocol.decode(ws.recv(timeout=10))["code"] == "bad_message"
    ws.send(protocol.encode(obs_message(4)))
    reply = protocol.decode(ws.recv(timeout=10))
    assert reply["type"] == "act" and reply["seq"] == 4 and reply["actions"].shape == (10, 6)
    ws.close()
    still_served()

    # oversize: that connection is closed (1009), the server goes on
    ws, hello = raw_session(port)
    ws.send(b"\x00" * (hello["max_bytes"] + 1))
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd.code == 1009
    still_served()

    # protocol mismatch: error reply, then closed (1002)
    ws = ws_connect(f"ws://127.0.0.1:{port}/", additional_headers={"Authorization": f"Bearer {TOKEN}"})
    ws.recv(timeout=10)
    ws.send(protocol.encode({"type": "hello", "protocol": protocol.PROTOCOL_VERSION + 1, "client": "future"}))
    reply = protocol.decode(ws.recv(timeout=10))
    assert reply["code"] == "protocol_mismatch"
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd.code == 1002
    still_served()
    counts = flow_server.server.counts
    assert counts["unauthorized"] >= 2 and counts["pickle_refused"] >= 1 and counts["protocol_mismatch"] >= 1
    good.close()


def test_client_refuses_a_server_of_another_protocol_version():
    features = {"observation.state": {"type": "STATE", "shape": [6]}}
    server = PolicyServer(StubRunner(features), TOKEN, port=0)
    server.hello["protocol"] = protocol.PROTOCOL_VERSION + 1
    with ServerThread(server) as st, pytest.raises(ProtocolError, match="protocol"):
        PolicyClient("127.0.0.1", st.port, TOKEN).connect()


def test_a_folder_that_does_not_match_the_server_or_the_robot_is_refused_before_any_motion(flow_server, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.delenv("VST_VLA_TOKEN", raising=False)
    folder = write_remote_policy_folder(tmp_path / "remote", "127.0.0.1", flow_server.port, TOKEN, "vst_sim_so101")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "chunk_size": 5, "n_action_steps": 5}))
    with pytest.raises(ValueError, match="chunk_size"):
        load_like_rollout(folder, token=TOKEN)
    hello = PolicyClient("127.0.0.1", flow_server.port, TOKEN).connect()
    obs = {**dict.fromkeys(MOTOR_KEYS, float), "front": (56, 56, 3), "wrist": (56, 56, 3)}
    assert protocol.check_hello_against_robot(hello, obs, dict.fromkeys(MOTOR_KEYS, float)) == []
    permuted = list(reversed(MOTOR_KEYS))
    problems = protocol.check_hello_against_robot(hello, obs, dict.fromkeys(permuted, float))
    assert len(problems) == 1 and "by position" in problems[0]
    assert protocol.check_hello_against_robot(hello, {**dict.fromkeys(MOTOR_KEYS, float), "front": (56, 56, 3)},
                                              dict.fromkeys(MOTOR_KEYS, float))
    with pytest.raises(ValueError, match="needs the server's token"):
        load_like_rollout(folder)


# ---------------------------------------------------------------------------------------------- holding
def remote_on(port: int, tmp_path: Path, **cfg):
    folder = write_remote_policy_folder(tmp_path / f"remote_{port}", "127.0.0.1", port, TOKEN)
    policy, pre, post = load_like_rollout(folder, token=TOKEN, **cfg)
    return policy, pre, post


def test_client_holds_when_replies_stop_and_never_invents_motion(tmp_path):
    features = {"observation.state": {"type": "STATE", "shape": [6]},
                "observation.images.front": {"type": "VISUAL", "shape": [3, 32, 32]}}
    stub = StubRunner(features, chunk_size=4)
    with ServerThread(PolicyServer(stub, TOKEN, port=0)) as st:
        policy, pre, post = remote_on(st.port, tmp_path, reply_timeout_s=0.3)
        f = {"observation.state": np.arange(6, dtype=np.float32),
             "observation.images.front": np.zeros((32, 32, 3), np.uint8)}
        first = post(policy.select_action(batch_of(pre, f)))
        assert torch.equal(first[0], torch.arange(6, dtype=torch.float32)) and not policy.holding
        stub.delay_s = 1.0  # the server hangs: no reply within reply_timeout_s
        for _ in range(3):
            policy.select_action(batch_of(pre, f))  # the rest of the chunk
        t0 = time.perf_counter()
        held = post(policy.select_action(batch_of(pre, {**f, "observation.state": f["observation.state"] + 50})))
        # generous margins: a loaded CPU delays the thread; `holding` says it gave up waiting for the reply
        assert policy.holding and time.perf_counter() - t0 < 0.3 + 0.6
        assert torch.equal(held, first)  # the last action handed out, not the new state
        for _ in range(3):  # stays on hold, without waiting again
            t0 = time.perf_counter()
            assert torch.equal(post(policy.select_action(batch_of(pre, f))), first)
            assert time.perf_counter() - t0 < 0.2  # under reply_timeout_s: it does not wait again
        chunk = policy.predict_action_chunk(batch_of(pre, f))
        assert chunk.shape == (1, 4, 6) and torch.equal(chunk[0], first.expand(4, 6))
        assert policy.stats["holds"] == 1
    # nothing was ever sent: there is nothing to hold, so the call fails before any motion
    with ServerThread(PolicyServer(StubRunner(features, chunk_size=4, delay_s=1.0), TOKEN, port=0)) as st:
        policy, pre, _ = remote_on(st.port, tmp_path, reply_timeout_s=0.2, first_reply_timeout_s=0.3)
        with pytest.raises(ServerUnavailable, match="nothing to hold"):
            policy.select_action(batch_of(pre, f))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve_cli(checkpoint: Path, port: int, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "VST_VLA_TOKEN": TOKEN}
    proc = subprocess.Popen([str(BIN / "vst-vla"), "serve", f"--policy.path={checkpoint}", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd)
    try:
        for line in proc.stdout:  # the server prints one JSON line once it listens (LeRobot prints before it)
            if line.startswith("{"):
                break
        else:
            raise AssertionError(f"vst-vla serve did not start:\n{proc.stderr.read()[-3000:]}")
        ready = json.loads(line)
        assert ready["serving"] == "vst_vla" and ready["url"] == f"ws://127.0.0.1:{port}/"
    except BaseException:
        proc.kill()
        raise
    return proc


@pytest.mark.slow
def test_client_holds_within_one_tick_when_the_server_is_killed(checkpoints, tmp_path):
    port = free_port()
    server = start_serve_cli(checkpoints["flow"], port, tmp_path)
    try:
        policy, pre, post = remote_on(port, tmp_path)
        period, sent = 1 / 30, []
        for tick in range(14):  # one chunk of 10 and part of the next: actions are queued when the kill comes
            t0 = time.perf_counter()
            sent.append(post(policy.select_action(batch_of(pre, frame(tick, size=56)))))
            time.sleep(max(0.0, period - (time.perf_counter() - t0)))
        assert not policy.holding and len(policy._action_queue) > 0
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)  # dead: the kernel has closed its sockets (tearing down a torch process takes a while)
        t_dead = time.perf_counter()
        while policy.client.alive and time.perf_counter() - t_dead < 1.0:
            time.sleep(0.001)
        assert time.perf_counter() - t_dead < period, "the dead connection was not seen within one tick"
        batch = batch_of(pre, frame(99, size=56))
        t0 = time.perf_counter()
        held = post(policy.select_action(batch))  # the next tick
        assert policy.holding, "the client played on from its queue after the server died"
        assert torch.equal(held, sent[-1]) and time.perf_counter() - t0 < period
        for tick in range(5):
            assert torch.equal(post(policy.select_action(batch_of(pre, frame(100 + tick, size=56)))), sent[-1])
    finally:
        if server.poll() is None:
            server.kill()


# ---------------------------------------------------------------------------------------------- rollout
IMAGE = 56
CAMERAS = f"{{front: {{width: {IMAGE}, height: {IMAGE}, fps: 30}}, wrist: {{width: {IMAGE}, height: {IMAGE}, fps: 30}}}}"


@pytest.fixture(scope="module")
def served_folder(flow_server, tmp_path_factory):
    """A `vst-vla remote-policy` folder for the served tiny flow checkpoint (the server runs in this process;
    the `vst-vla serve` CLI itself is the kill test's)."""
    out = tmp_path_factory.mktemp("served") / "remote"
    cli(["remote-policy", "--port", str(flow_server.port), "--out", str(out), "--robot_type", "vst_sim_so101",
         "--token", TOKEN])
    assert json.loads((out / "config.json").read_text())["token"] is None
    return out


def rollout(folder: Path, tmp_path: Path, *extra: str) -> dict:
    summary = tmp_path / "summary.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "VST_VLA_TOKEN": TOKEN,
           "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    cmd = [str(BIN / "lerobot-rollout"), "--robot.type=vst_sim_so101", "--robot.clock=lockstep",
           "--robot.task_family=stack", "--robot.seed=0", f"--robot.cameras={CAMERAS}",
           f"--robot.summary_path={summary}", f"--policy.path={folder}", "--policy.device=cpu", "--device=cpu",
           "--fps=30", "--return_to_initial_position=false", "--play_sounds=false", f"--task={TASK}", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, f"lerobot-rollout failed:\n{done.stderr[-4000:]}"
    summary = json.loads(summary.read_text())
    assert max(summary["max_travel"].values()) > 2.0, summary["max_travel"]  # the arm moved
    assert not summary["safety"]["stopped"]
    return summary


@pytest.mark.slow
@pytest.mark.parametrize("inference", ["sync", "rtc"])
def test_lerobot_rollout_drives_the_sim_arm_over_the_network(flow_server, served_folder, tmp_path, inference):
    extra = ["--duration=5"]  # ~150 ticks on an idle machine; far fewer when the CPU is shared
    if inference == "rtc":  # chunk 10 ≥ 2·(delay + horizon); threshold ≤ chunk − horizon
        extra += ["--inference.type=rtc", "--inference.rtc.execution_horizon=4", "--inference.queue_threshold=6"]
    counts = flow_server.server.counts
    before = dict(counts)
    stats = rollout(served_folder, tmp_path, *extra)["stats"]
    assert stats["ticks"] >= 10
    assert counts["act"] > before.get("act", 0)
    # RTC's arguments travelled (and only then): the server ran guided chunks
    assert (counts.get("rtc", 0) > before.get("rtc", 0)) == (inference == "rtc")
    assert sum(v for k, v in stats.items() if k in ("action_ok", "action_clamped")) >= stats["ticks"] // 2


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["episodic", "sentry"])
def test_lerobot_rollout_records_over_the_network(served_folder, tmp_path, strategy):
    rec = tmp_path / "rec"
    extra = (["--dataset.num_episodes=1", "--dataset.episode_time_s=3", "--dataset.reset_time_s=0"] if strategy == "episodic"
             else ["--duration=4", "--strategy.target_video_file_size_mb=1"])
    rollout(served_folder, tmp_path, f"--strategy.type={strategy}", f"--dataset.repo_id=local/rollout_{strategy}",
            f"--dataset.root={rec}", "--dataset.push_to_hub=false", f"--dataset.single_task={TASK}",
            "--dataset.fps=30", *extra)
    info = json.loads((rec / "meta" / "info.json").read_text())
    assert info["features"]["action"]["names"] == list(MOTOR_KEYS) and info["total_frames"] >= 10
