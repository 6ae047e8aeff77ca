"""`vst-vla eval-policy`: roll a LeRobot policy checkpoint out in the sim, per task family.

The checkpoint is loaded with LeRobot's own loaders (`PreTrainedConfig.from_pretrained`, `make_policy`,
`make_pre_post_processors(pretrained_path=...)`) and each step goes through the same preprocessing
`lerobot-eval` uses (`preprocess_observation`, the task string, the env processors). Seeds are fixed
per family and disjoint from `vst-vla collect`'s, so two checkpoints meet the same scenes.

Outputs under `output_dir`: `eval.json` (success per family with a Wilson interval), a rich table on
stdout, `videos/<family>_<k>.mp4` (front | wrist) and `rerun/<family>_<k>.rrd` showing the cameras,
the scene ground truth and the arm, every predicted action chunk as a 3D gripper path (forward
kinematics of the joint targets) next to the path the gripper actually took, commanded vs reached
joints and the episode's outcome, in the layout `vst-vla viz` episodes use (vst_vla/viz/blueprint.py).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mujoco
import numpy as np
import torch

from lerobot_env_vst_vla import FAMILIES, SpatialTabletopEnv
from lerobot_env_vst_vla.robot import JOINT_NAMES, from_so101_units

from ..atomic import write_text_atomic
from ..seeds import EVAL_SEED_BASE, episode_seed
from .metrics import wilson_interval  # noqa: F401  (re-exported: callers import it from here)

log = logging.getLogger(__name__)

PREDICTED_ENTITY = "world/policy/predicted_chunk"
EXECUTED_ENTITY = "world/policy/executed_path"


@dataclass
class EvalPolicyConfig:
    policy_path: str = "outputs/policy/train/checkpoints/last/pretrained_model"
    tasks: list[str] = field(default_factory=lambda: list(FAMILIES))
    episodes_per_family: int = 10
    seed: int = EVAL_SEED_BASE
    episode_length: int = 300
    device: str = "cpu"
    output_dir: str = "outputs/policy/eval"
    videos_per_family: int = 2  # first k episodes of each family as mp4 (0: none)
    rerun_per_family: int = 1  # first k episodes of each family as .rrd (0: none)
    confidence: float = 0.95
    baseline: str | None = None  # do_nothing | random | blind_expert instead of policy_path
    # baselines rolled out on the same seeds after the policy, in one comparison table
    compare_baselines: list[str] = field(default_factory=list)
    image_size: int = 112  # camera size for baselines (a policy's own size is read from its checkpoint)
    # inference-time fields of the checkpoint's config, e.g. {n_action_steps: 5, inference_noise_scale: 0}
    policy_overrides: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- loading
@dataclass
class LoadedPolicy:
    policy: torch.nn.Module | None
    preprocessor: object
    postprocessor: object
    cameras: list[str]
    image_hw: tuple[int, int]


def load_policy(path: str | Path, device: str = "cpu", overrides: dict | None = None) -> LoadedPolicy:
    """A checkpoint folder (`.../pretrained_model`) through LeRobot's loaders, as lerobot-eval does.

    `overrides` sets fields of the checkpoint's config before the policy is built (inference-time knobs
    such as `n_action_steps` or `inference_noise_scale`); the config's own checks run again on them.
    """
    import dataclasses

    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.factory import make_policy, make_pre_post_processors
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()  # policy types from plugins (vst_vla) must be registered before loading
    cfg = PreTrainedConfig.from_pretrained(path)
    cfg.pretrained_path = Path(path)
    cfg.device = device
    if overrides:
        names = {f.name for f in dataclasses.fields(cfg)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"policy_overrides {unknown} are not fields of {type(cfg).__name__} (checkpoint {path})")
        for key, value in overrides.items():
            setattr(cfg, key, value)
        cfg.__post_init__()  # the config's own range checks, on the overridden values
    prefix = "observation.images."
    cameras = [k[len(prefix):] for k in cfg.input_features if k.startswith(prefix)]
    if not cameras:
        raise ValueError(f"{path}: the policy reads no camera (observation.images.*); the sim eval needs one")
    _, height, width = cfg.input_features[prefix + cameras[0]].shape
    loaded = LoadedPolicy(None, None, None, cameras, (int(height), int(width)))
    # As lerobot-eval: the env config supplies the action feature, the checkpoint its input features.
    loaded.policy = make_policy(cfg, env_cfg=env_config(loaded, next(iter(FAMILIES))))
    loaded.policy.eval()
    loaded.preprocessor, loaded.postprocessor = make_pre_post_processors(
        cfg, pretrained_path=str(path), preprocessor_overrides={"device_processor": {"device": device}})
    return loaded


def env_config(loaded: LoadedPolicy, family: str, episode_length: int = 300):
    """Our LeRobot env config (`vst_tabletop`) matching the policy's cameras and image size."""
    from lerobot_env_vst_vla.lerobot_config import VstTabletopEnv

    return VstTabletopEnv(task=family, episode_length=episode_length, cameras=list(loaded.cameras),
                          observation_height=loaded.image_hw[0], observation_width=loaded.image_hw[1])


# ----------------------------------------------------------------------------------------- rollout
class GripperFK:
    """Joint actions (so101 units) → grasp-site positions, on a scratch MjData so the sim is untouched."""

    def __init__(self, model: mujoco.MjModel):
        self.model, self.data = model, mujoco.MjData(model)
        joints = [model.joint(j) for j in JOINT_NAMES]
        self.qadr = np.array([j.qposadr[0] for j in joints])
        self.low, self.high = model.jnt_range[[j.id for j in joints]].T  # the env clips targets the same way
        self.site = model.site("grasp").id

    def __call__(self, actions: np.ndarray, qpos: np.ndarray) -> np.ndarray:
        out = np.empty((len(actions), 3))
        self.data.qpos[:] = qpos
        for i, a in enumerate(actions):
            self.data.qpos[self.qadr] = np.clip(from_so101_units(a), self.low, self.high)
            mujoco.mj_kinematics(self.model, self.data)
            out[i] = self.data.site_xpos[self.site]
        return out


def _batched(obs: dict) -> dict:
    """A single env's observation as a batch of one, the shape a vector env hands to lerobot-eval."""
    out = {"agent_pos": np.asarray(obs["agent_pos"])[None]}
    if "pixels" in obs:
        out["pixels"] = {cam: img[None] for cam, img in obs["pixels"].items()}
    return out


def _env_processors(family: str, loaded: LoadedPolicy, episode_length: int):
    """LeRobot's env pre/post processors for our env config (identity for vst_tabletop, kept for parity)."""
    from lerobot.envs.factory import make_env_pre_post_processors

    return make_env_pre_post_processors(env_config(loaded, family, episode_length), loaded.policy.config)


class PolicyAgent:
    """A LeRobot policy behind the same small interface as the baselines: `reset`, `act` (env units).

    Each chunk is post-processed when it is predicted, step by step, and its first `n_action_steps`
    actions are queued in env units. That is what relative actions need (every action of a chunk is an
    offset from the state the chunk was predicted at, not from the state at the step it runs), and it
    is the same as `select_action` for absolute ones.
    """

    needs_pixels = True

    def __init__(self, loaded: LoadedPolicy, family: str, episode_length: int):
        self.loaded = loaded
        self.env_pre, self.env_post = _env_processors(family, loaded, episode_length)
        self.queue: list[np.ndarray] = []
        self.chunk: np.ndarray | None = None  # the chunk predicted at the last step (env units), if one was

    def reset(self, env: SpatialTabletopEnv, seed: int) -> None:
        self.loaded.policy.reset()
        self.queue = []

    def act(self, obs: dict, env: SpatialTabletopEnv) -> np.ndarray:
        from lerobot.envs.utils import preprocess_observation

        self.chunk = None
        if not self.queue:
            batch = preprocess_observation(_batched(obs))
            batch["task"] = [env.task_description]
            batch = self.loaded.preprocessor(self.env_pre(batch))
            with torch.inference_mode():
                chunk = self.loaded.policy.predict_action_chunk(batch)
            n = int(getattr(self.loaded.policy.config, "n_action_steps", None) or chunk.shape[1])
            steps = [self.env_post({"action": self.loaded.postprocessor(chunk[:, t])})["action"].to("cpu").numpy()[0]
                     for t in range(chunk.shape[1])]
            self.chunk = np.stack(steps)
            self.queue = steps[:n]
        return self.queue.pop(0)

    def predicted_path(self, fk: GripperFK, env: SpatialTabletopEnv) -> np.ndarray | None:
        return None if self.chunk is None else fk(self.chunk, env.data.qpos)


def run_episode(agent, env: SpatialTabletopEnv, seed: int, video_path: Path | None = None,
                rrd_path: Path | None = None) -> dict:
    """One rollout of `agent` (a policy or a baseline); returns success and the metrics of `metrics.py`."""
    from .metrics import EpisodeMetrics

    fk = GripperFK(env.model)
    rec = _open_recording(rrd_path, env) if rrd_path else None
    arm = _arm_logger(env) if rec is not None else None
    frames: list[np.ndarray] = []
    executed: list[np.ndarray] = []

    obs, info = env.reset(seed=seed)
    agent.reset(env, seed)
    metrics = EpisodeMetrics(env)
    success, steps, n_chunks, t0 = bool(info.get("is_success", False)), 0, 0, time.perf_counter()
    while True:
        executed.append(env.data.site("grasp").xpos.copy())
        if video_path is not None:
            frames.append(np.concatenate([obs["pixels"][c] for c in env.cameras], axis=1))
        action = agent.act(obs, env)
        predicted = agent.predicted_path(fk, env) if hasattr(agent, "predicted_path") else None
        n_chunks += getattr(agent, "chunk", None) is not None
        if rec is not None:
            _log_step(rec, env, obs, steps, action, np.array(executed), predicted,
                      log_static=steps == 0, arm=arm, success=success)
        obs, _, terminated, truncated, info = env.step(action)
        metrics.update()
        steps += 1
        success = bool(info["is_success"])
        if terminated or truncated:
            break
    if video_path is not None:
        from lerobot.utils.io_utils import write_video

        video_path.parent.mkdir(parents=True, exist_ok=True)
        write_video(video_path, frames, fps=env.fps)
    result = {"seed": seed, **metrics.result(success), "steps": steps, "chunks": n_chunks,
              "seconds": round(time.perf_counter() - t0, 3), "instruction": env.task_description}
    if rec is not None:
        _close_recording(rec, env, steps, result)
    return result


# ----------------------------------------------------------------------------------------- rerun
def _open_recording(path: Path, env: SpatialTabletopEnv):
    import rerun as rr

    from vst_vla.viz.blueprint import episode_blueprint

    path.parent.mkdir(parents=True, exist_ok=True)
    rec = rr.RecordingStream("vst_vla", recording_id=path.stem)
    rec.save(str(path), default_blueprint=episode_blueprint(env.cameras, JOINT_NAMES, timeline="step"))
    return rec


def _arm_logger(env: SpatialTabletopEnv):
    from vst_vla.viz.arm import ArmLogger

    return ArmLogger(env.model)  # the env's own model: primitives or meshes, as it renders


def _close_recording(rec, env: SpatialTabletopEnv, steps: int, result: dict) -> None:
    """The outcome (success and every metric in `result`) at the final step, then the file is closed."""
    from vst_vla.viz.blueprint import log_outcome

    rec.set_time("step", sequence=steps)
    rec.set_time("time", duration=steps / env.fps)
    log_outcome(rec, {k: v for k, v in result.items() if k not in ("instruction", "seconds")}, title="evaluation")
    rec.flush()
    rec.disconnect()


def _log_step(rec, env: SpatialTabletopEnv, obs: dict, step: int, action: np.ndarray, executed: np.ndarray,
              predicted: np.ndarray | None, log_static: bool, arm=None, success: bool = False) -> None:
    import rerun as rr

    from vst_vla.viz.blueprint import log_joint_series
    from vst_vla.viz.episode import log_scene_ground_truth

    rec.set_time("step", sequence=step)
    rec.set_time("time", duration=step / env.fps)
    if log_static:
        rec.log("instruction", rr.TextDocument(env.task_description), static=True)
        log_joint_series(rec, JOINT_NAMES, state="reached", action="commanded")
    # Cameras (images under their pinholes), table, objects, gripper and arm: the viz stage's scene logger.
    log_scene_ground_truth(rec, env.ground_truth(), images=obs.get("pixels"), log_static=log_static, arm=arm)
    rec.log("outcome/success", rr.Scalars(float(success)))
    if len(executed) > 1:
        rec.log(EXECUTED_ENTITY, rr.LineStrips3D([executed.astype(np.float32)], radii=[0.002],
                                                 colors=[(40, 200, 80)], labels=["executed"]))
    if predicted is not None:  # only when a new chunk was predicted: it stays visible until the next one
        rec.log(PREDICTED_ENTITY, rr.LineStrips3D([predicted.astype(np.float32)], radii=[0.003],
                                                  colors=[(230, 60, 200)], labels=["predicted chunk"]),
                rr.Points3D(predicted.astype(np.float32), radii=[0.004], colors=[(230, 60, 200)]))
    for name, commanded, reached in zip(JOINT_NAMES, action, obs["agent_pos"], strict=False):
        rec.log(f"action/{name}", rr.Scalars(float(commanded)))
        rec.log(f"state/{name}", rr.Scalars(float(reached)))


# ----------------------------------------------------------------------------------------- report
def _summarise(per_family: dict[str, list[dict]], confidence: float) -> dict:
    from .metrics import summarise

    out = {family: {**summarise(episodes, confidence), "episodes": episodes} for family, episodes in per_family.items()}
    overall = summarise([e for episodes in per_family.values() for e in episodes], confidence)
    return {"per_family": out, "overall": overall}


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    pct = f"{100 * report['confidence']:.0f}%"
    table = Table(title=f"{report['agent']} — success and the metrics that move before it")
    for col in ("family", "episodes", "success", f"{pct} CI (Wilson)", "reached", "correct object", "lifted",
                "closest cm"):
        table.add_column(col, justify="left" if col == "family" else "right")
    rows = [*report["per_family"].items(), ("overall", report["overall"])]
    for name, r in rows:
        lo, hi = r["success"]["ci95"]
        table.add_row(name, str(r["n_episodes"]), f"{r['success']['rate']:.2f}", f"[{lo:.2f}, {hi:.2f}]",
                      f"{r['reached']['rate']:.2f}", f"{r['correct_object']['rate']:.2f}",
                      f"{r['lifted']['rate']:.2f}", f"{r['closest_cm_mean']:.1f}")
    Console(width=150).print(table)


def check_disjoint_seeds(policy_path: str | Path, eval_seeds: set[int]) -> None:
    """Evaluation seeds must not be scenes the policy was trained on (`vst-vla collect` records its seeds)."""
    train_cfg = Path(policy_path) / "train_config.json"
    if not train_cfg.is_file():
        return  # not trained by `vst-vla train-policy` (e.g. lerobot-train): nothing recorded to compare with
    root = Path(json.loads(train_cfg.read_text()).get("dataset_root", ""))
    scene_dir = root / "meta" / "vst_scene"
    if not scene_dir.is_dir():
        return
    import gzip

    seeds = set()
    for f in scene_dir.glob("episode_*.json.gz"):
        with gzip.open(f, "rt") as fh:
            head = fh.read(400)  # the seed is near the start of the header; avoid parsing every frame
        key = '"seed": '
        if key in head:
            seeds.add(int(head.split(key, 1)[1].split(",", 1)[0]))
    overlap = sorted(seeds & eval_seeds)
    if overlap:
        raise ValueError(f"evaluation seeds {overlap[:5]}… are training scenes of {policy_path} (dataset {root}); "
                         "pick eval `seed` far from the collection seeds")


def _check_action_space(loaded: LoadedPolicy, action_space: str) -> None:
    from lerobot_env_vst_vla.env import ACTION_NAMES

    shape = tuple(loaded.policy.config.output_features["action"].shape)
    if shape != (len(ACTION_NAMES[action_space]),):
        known = {k: len(v) for k, v in ACTION_NAMES.items()}
        raise ValueError(f"the policy predicts actions of shape {shape}, but the env's {action_space!r} action space "
                         f"has {len(ACTION_NAMES[action_space])} ({ACTION_NAMES[action_space]}); action sizes: {known}")


def evaluate_policy(cfg: EvalPolicyConfig) -> dict:
    """Roll a checkpoint (or, with `baseline`, a baseline) out per family; eval.json + a table."""
    from .baselines import make_baseline

    unknown = [t for t in cfg.tasks if t not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known task families: {sorted(FAMILIES)}")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = {family: [episode_seed(cfg.seed, family, k) for k in range(cfg.episodes_per_family)] for family in cfg.tasks}
    loaded = None
    if cfg.baseline is None:
        check_disjoint_seeds(cfg.policy_path, {s for v in seeds.values() for s in v})
        loaded = load_policy(cfg.policy_path, cfg.device, dict(cfg.policy_overrides))
        _check_action_space(loaded, "joint")
    per_family: dict[str, list[dict]] = {}
    videos, recordings = [], []
    for family in cfg.tasks:
        agent = make_baseline(cfg.baseline) if loaded is None else PolicyAgent(loaded, family, cfg.episode_length)
        cameras = tuple(loaded.cameras) if loaded else ("front", "wrist")
        height, width = loaded.image_hw if loaded else (cfg.image_size, cfg.image_size)
        pixels = agent.needs_pixels or cfg.videos_per_family > 0 or cfg.rerun_per_family > 0
        env = SpatialTabletopEnv(task=family, cameras=cameras, observation_width=width, observation_height=height,
                                 episode_length=cfg.episode_length, action_space="joint",
                                 obs_type="pixels_agent_pos" if pixels else "agent_pos")
        per_family[family] = []
        try:
            for k, seed in enumerate(seeds[family]):
                video = out / "videos" / f"{family}_{k}.mp4" if k < cfg.videos_per_family else None
                rrd = out / "rerun" / f"{family}_{k}.rrd" if k < cfg.rerun_per_family else None
                result = run_episode(agent, env, seed, video, rrd)
                per_family[family].append(result)
                videos += [str(video)] if video else []
                recordings += [str(rrd)] if rrd else []
                log.info("%s episode %d: success=%s closest=%.1f cm steps=%d", family, k, result["success"],
                         result["closest_cm"], result["steps"])
        finally:
            env.close()
            if hasattr(agent, "close"):
                agent.close()
    name = cfg.baseline or str(cfg.policy_path)
    report = {"agent": name, "policy_path": None if cfg.baseline else str(cfg.policy_path), "config": asdict(cfg),
              "confidence": cfg.confidence, **_summarise(per_family, cfg.confidence), "videos": videos,
              "recordings": recordings}
    _print_table(report)
    if cfg.compare_baselines and cfg.baseline is None:
        report["baselines"] = {}
        for name in cfg.compare_baselines:
            sub = evaluate_policy(EvalPolicyConfig(**{**asdict(cfg), "baseline": name, "compare_baselines": [],
                                                      "output_dir": str(out / "baselines" / name),
                                                      "videos_per_family": 0, "rerun_per_family": 0}))
            report["baselines"][name] = {f: r["success"] for f, r in sub["per_family"].items()}
        report["learned"] = _print_comparison(report)
    write_text_atomic(out / "eval.json", json.dumps(report, indent=2))
    print(f"eval report: {out / 'eval.json'}")
    return report


def _print_comparison(report: dict) -> dict:
    """Policy vs baselines per family; `learned` where the policy's 95 % interval lies above those of the
    do-nothing and random baselines (their rates are 0 by construction, so clearing the rate alone would
    pass with one lucky success in 20)."""
    from rich.console import Console
    from rich.table import Table

    names = list(report["baselines"])
    table = Table(title="policy vs baselines (same seeds): success [95 % CI]")
    for col in ("family", "policy", *names, "learned"):
        table.add_column(col, justify="left" if col == "family" else "right")
    learned = {}
    for family, r in report["per_family"].items():
        lo, hi = r["success"]["ci95"]
        base = {n: report["baselines"][n][family] for n in names}
        nulls = [base[n]["ci95"][1] for n in names if n != "blind_expert"]
        learned[family] = bool(nulls) and lo > max(nulls)
        table.add_row(family, f"{r['success']['rate']:.2f} [{lo:.2f}, {hi:.2f}]",
                      *[f"{b['rate']:.2f} [{b['ci95'][0]:.2f}, {b['ci95'][1]:.2f}]" for b in base.values()],
                      "yes" if learned[family] else "no")
    Console(width=150).print(table)
    return learned
