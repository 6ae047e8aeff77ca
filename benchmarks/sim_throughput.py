"""Simulation throughput: our SO-101 tabletop suite vs `lerobot_env_so101`'s pick-place env.

Measured in one run (medians over `--repeats`, the variants interleaved so background load hits all
of them alike; episodes of `--episode-steps` steps run on across repeats, so resets are included in
proportion to the steps; rates are given per wall second and, under `per_cpu_second`, per CPU second
of the measuring process, which a shared machine's other processes disturb far less):

- ours, 2 cameras (front + wrist) at `--size`² and without cameras (agent_pos only), a mix of the
  task families (round robin over episodes), joint action space;
- the peer at its shipped settings (`gym.make(PICK_PLACE_ENV_ID, image_obs=True)`: one 128² `front`
  camera, control_dt 0.1 s, stock STL meshes), the peer without cameras, and the peer with two
  `--size`² cameras (its `front` camera plus MuJoCo's free camera: the peer has only one fixed camera);
- the raw render rate of our scene: `update_scene` + `render` of both cameras, no physics
  (`ours_render_limit_fps`, frame pairs/s), and the same for the peer's two cameras;
- ours with 2 worker processes (`gym.vector.AsyncVectorEnv`, 2 envs, steps/s summed).

Actions are random but valid (`--policy random`, default: a smooth random walk in joint space for
ours, uniform `[dx, dy, dz, grasp]` for the peer) or the scripted experts (`--policy expert`).
`--profile` adds a cProfile breakdown of our camera step; `--what-if` re-measures ours with runtime
patches the sim could adopt (see WHAT_IFS). Progress goes to stderr; the last stdout line is JSON.

    MUJOCO_GL=egl python benchmarks/sim_throughput.py
    MUJOCO_GL=egl python benchmarks/sim_throughput.py --lp-threads 1 --what-if all --profile
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import json
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("MUJOCO_GL", "egl")

PEER_CONTROL_DT = 0.1  # SO101PickPlaceGymEnv's default control_dt

WHAT_IFS = {
    "hide_parked": "alpha 0 for the unused pool objects parked under the table (MuJoCo skips them when rendering)",
    "sleep": "pool bodies compiled with gravcomp=1 (so ngravcomp > 0 and parked bodies stop falling) + mjENBL_SLEEP",
    "offscreen": "offscreen buffer sized to the observation (tabletop.xml asks for 640x480)",
    "slices": "visual quality numslices 12 / numstacks 6 instead of 28 / 16 (spheres, cylinders, capsules)",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ our env
def _apply_what_ifs(env, what_ifs: set[str]) -> None:
    """Runtime patches on one SpatialTabletopEnv instance (the sim's files are not touched)."""
    import mujoco

    if "sleep" in what_ifs:
        env.model.opt.enableflags |= int(mujoco.mjtEnableBit.mjENBL_SLEEP)
    if "offscreen" in what_ifs:
        env.model.vis.global_.offwidth, env.model.vis.global_.offheight = env.width, env.height
    if "slices" in what_ifs:
        env.model.vis.quality.numslices, env.model.vis.quality.numstacks = 12, 6
    if "hide_parked" in what_ifs:
        arrange = env.scene.arrange

        def arrange_and_hide(data, objects, options):
            arrange(data, objects, options)
            used = {o.name for o in objects}
            for name, geoms in env.scene.body_geoms.items():
                env.model.geom_rgba[geoms, 3] = 1.0 if name in used else 0.0

        env.scene.arrange = arrange_and_hide


@contextlib.contextmanager
def _gravcomp_pool(enabled: bool):
    """Compile pool bodies with gravcomp=1 (the sim toggles it at run time, which MuJoCo ignores when
    the compiled model has ngravcomp == 0)."""
    if not enabled:
        yield
        return
    import lerobot_env_vst_vla.env as env_module
    import lerobot_env_vst_vla.scene as scene

    original = env_module.build_model

    def build(robot_variant: str = "primitives"):
        import mujoco

        spec = mujoco.MjSpec.from_file(str(scene.SCENE_XML))
        for (shape, size_class), count in scene.POOL.items():
            for k in range(count):
                scene._add_pool_body(spec, scene.ObjectSpec(shape, "white", size_class, (0.0, 0.0),
                                                            name=f"{shape}_{size_class}_{k}"))
                spec.body(f"{shape}_{size_class}_{k}").gravcomp = 1.0
        if robot_variant == "meshes":
            scene._use_mesh_robot(spec)
        return spec.compile()

    env_module.build_model = build
    try:
        yield
    finally:
        env_module.build_model = original


def make_ours(family: str, size: int, cameras: bool, episode_steps: int, what_ifs: tuple[str, ...] = ()):
    from lerobot_env_vst_vla import SpatialTabletopEnv

    with _gravcomp_pool("sleep" in what_ifs):
        env = SpatialTabletopEnv(task=family, obs_type="pixels_agent_pos" if cameras else "agent_pos",
                                 cameras=("front", "wrist"), observation_width=size, observation_height=size,
                                 episode_length=episode_steps, action_space="joint")
    _apply_what_ifs(env, set(what_ifs))
    return env


class RandomJointWalk:
    """Valid joint actions: a random walk (σ = `step_deg` per step) from the current state, clipped to the limits."""

    def __init__(self, space, rng, step_deg: float = 2.0):
        self.low, self.high, self.rng, self.step = space.low, space.high, rng, step_deg
        self.q = None

    def reset(self, obs) -> None:
        self.q = obs["agent_pos"].astype("float32").copy()

    def act(self, obs):
        self.q = (self.q + self.rng.normal(0.0, self.step, self.q.shape)).clip(self.low, self.high).astype("float32")
        return self.q


class OursExpert:
    def __init__(self, env):
        self.env = env

    def reset(self, obs) -> None:
        from lerobot_env_vst_vla import ScriptedExpert

        self.expert = ScriptedExpert(self.env)

    def act(self, obs):
        return self.expert.act()


# ----------------------------------------------------------------------------------------- the peer
def make_peer(cameras: int, size: int | None):
    """cameras 0: state only; 1: shipped image_obs (128² front unless `size`); 2: front + free camera at `size`²."""
    import gymnasium as gym
    import lerobot_env_so101
    from lerobot_env_so101 import GymRenderingSpec

    kwargs = {"image_obs": cameras > 0}
    if size is not None:
        kwargs["render_spec"] = GymRenderingSpec(height=size, width=size)
    env = gym.make(lerobot_env_so101.PICK_PLACE_ENV_ID, **kwargs)
    return SecondCamera(env) if cameras == 2 else env


def _peer_second_view(env):
    u = env.unwrapped
    u.render()  # builds the renderer on first use
    u._viewer.update_scene(u.data, camera=-1)  # MuJoCo's free camera: the peer ships one fixed camera
    return u._viewer.render()


class SecondCamera:
    """Adds a second camera image (`pixels.free`) to the peer's observation, rendered like its own."""

    def __init__(self, env):
        self.env, self.action_space, self.unwrapped = env, env.action_space, env.unwrapped

    def reset(self, **kw):
        obs, info = self.env.reset(**kw)
        obs["pixels"]["free"] = _peer_second_view(self.env)
        return obs, info

    def step(self, action):
        obs, *rest = self.env.step(action)
        obs["pixels"]["free"] = _peer_second_view(self.env)
        return (obs, *rest)

    def close(self):
        self.env.close()


class PeerRandom:
    def __init__(self, space, rng):
        self.space, self.rng = space, rng

    def reset(self, obs) -> None:
        pass

    def act(self, obs):
        return self.rng.uniform(self.space.low, self.space.high).astype("float32")


class PeerExpert:
    def __init__(self, env):
        from lerobot_env_so101.scripted.pick_place import PickPlaceController

        self.u = env.unwrapped
        self.ctrl = PickPlaceController(action_scale=self.u._action_scale)

    def reset(self, obs) -> None:
        self.ctrl.reset()

    def act(self, obs):
        u = self.u
        return self.ctrl.act(u.ik_point_pos, u.data.sensor("block_pos").data.copy(), u.goal_pos)


# -------------------------------------------------------------------------------------- measurement
class Workload:
    """Episodes of `episode_steps` steps, round robin over `envs` (one per task family for ours).

    `run(seconds)` steps until `seconds` have passed and carries an unfinished episode over to the
    next call, so over a whole measurement resets happen once per episode, in proportion to the steps,
    even for an env too slow to finish an episode within one repeat.
    """

    def __init__(self, name: str, envs: list, policies: list, episode_steps: int, seed: int = 0):
        self.name, self.envs, self.policies, self.episode_steps = name, envs, policies, episode_steps
        self.episode, self.seed = 0, seed
        self.obs, self.left = None, 0  # current observation, steps left in the current episode

    def run(self, seconds: float, min_steps: int = 1) -> tuple[float, float]:
        """(steps per wall second, steps per CPU second of this process, all its threads)."""
        steps, t0, c0 = 0, time.perf_counter(), time.process_time()
        while True:
            k = self.episode % len(self.envs)
            env, policy = self.envs[k], self.policies[k]
            if self.left == 0:
                self.obs, _ = env.reset(seed=self.seed + self.episode)
                policy.reset(self.obs)
                self.left = self.episode_steps
            self.obs, _, terminated, truncated, _ = env.step(policy.act(self.obs))
            steps += 1
            self.left -= 1
            if terminated or truncated:
                self.left = 0
            if self.left == 0:
                self.episode += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds and steps >= min_steps:
                return steps / elapsed, steps / max(time.process_time() - c0, 1e-9)

    def close(self) -> None:
        for env in self.envs:
            env.close()


class RenderOnly:
    """Renderer alone: update_scene + render of both cameras on states reached by reset."""

    def __init__(self, name: str, targets: list[tuple[Callable, Callable]], envs: list = ()):
        self.name, self.targets, self.envs = name, targets, list(envs)  # (prepare, render_pair) per env

    def run(self, seconds: float, min_steps: int = 1) -> tuple[float, float]:
        if not getattr(self, "_prepared", False):
            for prepare, _ in self.targets:
                prepare()
            self._prepared = True
        pairs, t0, c0 = 0, time.perf_counter(), time.process_time()
        while pairs < min_steps or time.perf_counter() - t0 < seconds:
            for _, render_pair in self.targets:
                render_pair()
                pairs += 1
        return pairs / (time.perf_counter() - t0), pairs / max(time.process_time() - c0, 1e-9)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _ours_render_target(env, seed: int):
    def prepare():
        env.reset(seed=seed)

    r = env._get_renderer()

    def render_pair():
        for cam in env.cameras:
            r.update_scene(env.data, cam)
            r.render()

    return prepare, render_pair


def _peer_render_target(env):
    u = env.unwrapped

    def prepare():
        env.reset(seed=0)

    def render_pair():
        u.render()
        _peer_second_view(env)

    return prepare, render_pair


def _vector_make(family: str, size: int, episode_steps: int, what_ifs: tuple[str, ...]):
    return make_ours(family, size, True, episode_steps, what_ifs)


def measure_vector(families: list[str], n_envs: int, size: int, episode_steps: int, seconds: float,
                   repeats: int, what_ifs: tuple[str, ...], seed: int) -> float:
    import gymnasium as gym
    import numpy as np

    fns = [functools.partial(_vector_make, families[i % len(families)], size, episode_steps, what_ifs)
           for i in range(n_envs)]
    venv = gym.vector.AsyncVectorEnv(fns, context="spawn")
    try:
        rng = np.random.default_rng(seed)
        low, high = venv.single_action_space.low, venv.single_action_space.high
        obs, _ = venv.reset(seed=seed)
        q = obs["agent_pos"].astype(np.float32)
        rates = []
        for _ in range(repeats):
            steps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                q = (q + rng.normal(0.0, 2.0, q.shape)).clip(low, high).astype(np.float32)
                obs, _, term, trunc, _ = venv.step(q)
                done = term | trunc
                q[done] = obs["agent_pos"][done]  # autoreset: the next step resets; restart the walk from there
                steps += n_envs
            rates.append(steps / (time.perf_counter() - t0))
        return statistics.median(rates)
    finally:
        venv.close()


def profile_ours_step(env, steps: int, seed: int) -> dict:
    """Milliseconds per camera step of ours: the wall time without a profiler, and the main parts
    (from cProfile) inside it."""
    import numpy as np

    policy = RandomJointWalk(env.action_space, np.random.default_rng(seed))

    def actions():
        obs, _ = env.reset(seed=seed)
        policy.reset(obs)
        return [policy.act(obs) for _ in range(steps)]

    acts = actions()
    t0 = time.perf_counter()
    for a in acts:
        env.step(a)
    wall = 1000 * (time.perf_counter() - t0) / steps

    acts = actions()
    prof = cProfile.Profile()
    prof.enable()
    for a in acts:
        env.step(a)
    prof.disable()
    by_name: dict[str, list[float]] = {}
    for (filename, _, func), (_, _, tottime, cumtime, _) in pstats.Stats(prof).stats.items():
        entry = by_name.setdefault(f"{os.path.basename(filename)}:{func}", [0.0, 0.0])
        entry[0] += tottime
        entry[1] += cumtime

    def ms(name: str, column: int = 1) -> float:
        return round(1000 * by_name.get(name, [0.0, 0.0])[column] / steps, 3)

    parts = {
        "step_wall": round(wall, 3),
        "gl_mjr_render": ms("~:<built-in method mujoco._render.mjr_render>"),
        "gl_mjr_readPixels": ms("~:<built-in method mujoco._render.mjr_readPixels>"),
        "mjv_updateScene": ms("~:<built-in method mujoco._functions.mjv_updateScene>"),
        "physics_mj_step": ms("~:<built-in method mujoco._functions.mj_step>"),
        "renderer_python_overhead": round(ms("renderer.py:render") + ms("renderer.py:update_scene")
                                          - ms("~:<built-in method mujoco._render.mjr_render>")
                                          - ms("~:<built-in method mujoco._render.mjr_readPixels>")
                                          - ms("~:<built-in method mujoco._functions.mjv_updateScene>"), 3),
    }
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:10]
    log("profile, tottime ms/step: " + ", ".join(f"{k}={1000 * v[0] / steps:.2f}" for k, v in top))
    return parts


# --------------------------------------------------------------------------------------------- main
def _gl_info() -> str:
    try:
        import mujoco
        from OpenGL import GL

        m = mujoco.MjModel.from_xml_string("<mujoco/>")
        r = mujoco.Renderer(m, 8, 8)
        try:
            return GL.glGetString(GL.GL_RENDERER).decode()
        finally:
            r.close()
    except Exception as err:  # informational only
        return f"unknown ({type(err).__name__})"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=224, help="camera image side for ours and the 2-camera peer")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per repeat (render-only: half)")
    p.add_argument("--episode-steps", type=int, default=100, help="steps per episode before a reset")
    p.add_argument("--families", nargs="*", default=None, help="our task families (default: all)")
    p.add_argument("--policy", choices=("random", "expert"), default="random")
    p.add_argument("--vector-envs", type=int, default=2, help="worker processes for the vector measurement (0: skip)")
    p.add_argument("--no-peer", action="store_true", help="skip lerobot_env_so101")
    p.add_argument("--lp-threads", type=int, default=None,
                   help="set LP_NUM_THREADS (Mesa llvmpipe render threads) for this run before any GL context")
    p.add_argument("--what-if", default="", help=f"comma list of {sorted(WHAT_IFS)} or 'all': also measure ours "
                                                  "with these runtime patches")
    p.add_argument("--profile", action="store_true", help="cProfile breakdown of our camera step")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.lp_threads is not None:
        os.environ["LP_NUM_THREADS"] = str(args.lp_threads)
    what_ifs = tuple(sorted(WHAT_IFS)) if args.what_if == "all" else tuple(w for w in args.what_if.split(",") if w)
    unknown = set(what_ifs) - set(WHAT_IFS)
    if unknown:
        p.error(f"unknown --what-if {sorted(unknown)}; known: {sorted(WHAT_IFS)}")

    import numpy as np

    from lerobot_env_vst_vla import FAMILIES

    families = args.families or sorted(FAMILIES)
    rng = np.random.default_rng(args.seed)
    size, ep = args.size, args.episode_steps

    def ours_workload(name: str, cameras: bool, fixes: tuple[str, ...] = ()) -> Workload:
        envs = [make_ours(f, size, cameras, ep, fixes) for f in families]
        pols = [OursExpert(e) if args.policy == "expert" else RandomJointWalk(e.action_space, rng) for e in envs]
        return Workload(name, envs, pols, ep, args.seed)

    def peer_workload(name: str, cameras: int, peer_size: int | None) -> Workload:
        env = make_peer(cameras, peer_size)
        pol = PeerExpert(env) if args.policy == "expert" else PeerRandom(env.action_space, rng)
        return Workload(name, [env], [pol], ep, args.seed)

    log(f"building envs: families={families} size={size} episode_steps={ep} policy={args.policy}")
    work = [ours_workload("ours_cams", True), ours_workload("ours_nocam", False)]
    render_envs = [make_ours(f, size, True, ep) for f in families]
    work.append(RenderOnly("ours_render", [_ours_render_target(e, args.seed + i) for i, e in enumerate(render_envs)],
                           render_envs))
    if what_ifs:
        work += [ours_workload("whatif_cams", True, what_ifs), ours_workload("whatif_nocam", False, what_ifs)]
        fixed_envs = [make_ours(f, size, True, ep, what_ifs) for f in families]
        fixed_targets = [_ours_render_target(e, args.seed + i) for i, e in enumerate(fixed_envs)]
        work.append(RenderOnly("whatif_render", fixed_targets, fixed_envs))
    if not args.no_peer:
        work += [peer_workload("peer_shipped", 1, None), peer_workload("peer_nocam", 0, None),
                 peer_workload("peer_2cam", 2, size)]
        peer_r = make_peer(2, size)
        work.append(RenderOnly("peer_render", [_peer_render_target(peer_r)], [peer_r]))

    rates: dict[str, list[float]] = {w.name: [] for w in work}
    cpu_rates: dict[str, list[float]] = {w.name: [] for w in work}
    for w in work:  # warm-up: GL contexts, first resets
        w.run(0.0)
    for r in range(args.repeats):
        for w in work:
            seconds = args.seconds if "render" not in w.name else args.seconds / 2
            wall, cpu = w.run(seconds, min_steps=2)
            rates[w.name].append(wall)
            cpu_rates[w.name].append(cpu)
            log(f"repeat {r + 1}/{args.repeats} {w.name}: {wall:.1f}/s wall, {cpu:.1f}/s CPU")
    med = {k: round(statistics.median(v), 2) for k, v in rates.items()}
    cpu_med = {k: round(statistics.median(v), 2) for k, v in cpu_rates.items()}

    out: dict = {
        "ours_steps_per_s": med["ours_cams"],
        "ours_nocam_steps_per_s": med["ours_nocam"],
        "ours_render_limit_fps": med["ours_render"],
        "fraction_of_render_limit": round(med["ours_cams"] / med["ours_render"], 3),
    }
    if not args.no_peer:
        out.update({
            "peer_steps_per_s": med["peer_2cam"],
            "ratio_vs_peer": round(med["ours_cams"] / med["peer_2cam"], 2),
            "peer_shipped_steps_per_s": med["peer_shipped"],
            "ratio_vs_peer_shipped": round(med["ours_cams"] / med["peer_shipped"], 2),
            "peer_nocam_steps_per_s": med["peer_nocam"],
            "ratio_vs_peer_nocam": round(med["ours_nocam"] / med["peer_nocam"], 2),
            "peer_render_limit_fps": med["peer_render"],
        })
    # the same per CPU second of the measuring process (all its threads): far less sensitive to other
    # processes on a shared machine than wall-clock rates
    out["per_cpu_second"] = {
        "ours_steps": cpu_med["ours_cams"], "ours_nocam_steps": cpu_med["ours_nocam"],
        "ours_render_limit": cpu_med["ours_render"],
        "fraction_of_render_limit": round(cpu_med["ours_cams"] / cpu_med["ours_render"], 3)}
    if not args.no_peer:
        out["per_cpu_second"].update({
            "peer_steps": cpu_med["peer_2cam"], "ratio_vs_peer": round(cpu_med["ours_cams"] / cpu_med["peer_2cam"], 2),
            "peer_shipped_steps": cpu_med["peer_shipped"], "peer_nocam_steps": cpu_med["peer_nocam"],
            "peer_render_limit": cpu_med["peer_render"]})
    if what_ifs:
        out["per_cpu_second"].update({
            "whatif_steps": cpu_med["whatif_cams"], "whatif_nocam_steps": cpu_med["whatif_nocam"],
            "whatif_render_limit": cpu_med["whatif_render"],
            "whatif_fraction_of_render_limit": round(cpu_med["whatif_cams"] / cpu_med["whatif_render"], 3)})
    if args.vector_envs > 0:
        log(f"vector: {args.vector_envs} worker processes")
        out[f"ours_vector{args.vector_envs}_steps_per_s"] = round(measure_vector(
            families, args.vector_envs, size, ep, args.seconds, args.repeats, (), args.seed), 2)
        if what_ifs:
            out[f"whatif_vector{args.vector_envs}_steps_per_s"] = round(measure_vector(
                families, args.vector_envs, size, ep, args.seconds, args.repeats, what_ifs, args.seed), 2)
    if what_ifs:
        out.update({
            "what_if": list(what_ifs),
            "whatif_steps_per_s": med["whatif_cams"],
            "whatif_nocam_steps_per_s": med["whatif_nocam"],
            "whatif_render_limit_fps": med["whatif_render"],
            "whatif_fraction_of_render_limit": round(med["whatif_cams"] / med["whatif_render"], 3),
        })
        if not args.no_peer:
            out["whatif_ratio_vs_peer"] = round(med["whatif_cams"] / med["peer_2cam"], 2)
    if args.profile:
        env = make_ours(families[0], size, True, max(ep, 200))
        out["ours_profile_ms_per_step"] = profile_ours_step(env, 200, args.seed)
        env.close()
        if what_ifs:
            env = make_ours(families[0], size, True, max(ep, 200), what_ifs)
            out["whatif_profile_ms_per_step"] = profile_ours_step(env, 200, args.seed)
            env.close()
    for w in work:
        w.close()

    from lerobot_env_vst_vla import SpatialTabletopEnv

    probe = SpatialTabletopEnv(task=families[0], obs_type="agent_pos")
    # simulated seconds per wall second: the peer's step covers 0.1 s, ours 1/fps
    out["ours_nocam_realtime_factor"] = round(out["ours_nocam_steps_per_s"] / probe.fps, 2)
    if not args.no_peer:
        out["peer_nocam_realtime_factor"] = round(out["peer_nocam_steps_per_s"] * PEER_CONTROL_DT, 2)
    out["settings"] = {
        "size": size, "cameras": {"ours": ["front", "wrist"], "peer_steps_per_s": ["front", "free camera"],
                                  "peer_shipped": "front 128x128 (GymRenderingSpec default)"},
        "ours_control_dt": round(1.0 / probe.fps, 4), "ours_substeps": probe.n_substeps,
        "peer_control_dt": PEER_CONTROL_DT, "episode_steps": ep, "policy": args.policy, "families": families,
        "repeats": args.repeats, "seconds": args.seconds,
        "MUJOCO_GL": os.environ.get("MUJOCO_GL"), "LP_NUM_THREADS": os.environ.get("LP_NUM_THREADS", "default"),
        "gl_renderer": _gl_info(), "cpus": os.cpu_count(), "python": platform.python_version(),
    }
    probe.close()
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
