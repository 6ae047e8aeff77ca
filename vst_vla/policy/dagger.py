"""`vst-vla dagger`: DAgger with the scripted expert as the teacher, for the errors that compound in closed loop.

A policy trained on demonstrations only ever sees the expert's states. Its per-step error on them is small
(1-3 degrees per joint on held-out frames), yet in closed loop the arm drifts a few centimetres, hovers
between look-alikes or closes above a tall object, and from those states it has no data to recover
(`benchmarks/policy_handoff.py`: the later the expert hands over, the higher the success). DAgger (Ross et
al. 2011) rolls the current policy out, asks the expert what it would do from every state the policy
visited (`ScriptedExpert.take_over`, exact sim state), adds those frames to the training set and trains
again; the states it learns on become the states it reaches.

Each round: roll out `episodes` new scenes per family (seeds from the DAgger range of `vst_vla/seeds.py`,
never a demonstration or evaluation scene), a frame every `label_every` steps with the expert's next
`chunk` actions as its label -> `round_<k>/frames.npz` (the decision scenes' format); then `train-policy`
from the last checkpoint (`init_from`) on the demonstrations plus every round's frames so far
(`dagger_data`, `dagger_fraction` of each batch); then success on held-out seeds (`eval_episodes`), so the
rounds form a learning curve (`rounds.json`, one line per round). An interrupted run resumes at the first
round without a `done.json`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import save_npz_atomic, write_text_atomic
from ..seeds import DAGGER_SEED_BASE, scene_seed
from .train import TrainPolicyConfig

log = logging.getLogger(__name__)


@dataclass
class DaggerConfig:
    policy_path: str = "outputs/policy/train/checkpoints/last/pretrained_model"  # round 0's policy
    families: list[str] = field(default_factory=lambda: ["pick_extreme"])
    rounds: int = 2
    episodes: int = 100  # new rollouts per family per round
    episode_length: int = 200
    label_every: int = 5  # a labelled frame every N steps of a rollout
    expert_mix: float = 0.0  # chance that the expert, not the policy, drives a chunk of the rollout (DAgger's beta)
    eval_episodes: int = 16  # held-out success per family after each round (0: none)
    # the nulls a round must beat, on the same held-out seeds (in each round's done.json and rounds.json)
    compare_baselines: list[str] = field(default_factory=lambda: ["do_nothing", "random", "blind_expert"])
    output_dir: str = "outputs/policy/dagger"
    # the training of each round: the recipe's fields; init_from / dagger_data / output_dir are set per round
    train: TrainPolicyConfig = field(default_factory=TrainPolicyConfig)


class LabellingAgent:
    """The policy (or, for a chunk at a time with chance `expert_mix`, the expert) drives; every `label_every`
    steps the frame, the state and the expert's next `chunk` actions from there are recorded. Behind
    `run_episode`'s agent interface, so a rollout is the evaluation's own loop."""

    needs_pixels = True

    def __init__(self, policy_agent, cameras: list[str], chunk: int, n_action_steps: int, label_every: int,
                 expert_mix: float, rng: np.random.Generator):
        self.policy, self.cameras, self.n_chunk, self.n_exec = policy_agent, list(cameras), chunk, n_action_steps
        self.label_every, self.expert_mix, self.rng = label_every, expert_mix, rng
        self.rows: dict[str, list] = {"images": [], "state": [], "action": [], "task": [], "episode": [], "step": []}
        self.chunk, self.scene = None, 0

    def reset(self, env, seed: int) -> None:
        self.policy.reset(env, seed)
        self.t, self.last, self.expert_queue, self.chunk = 0, None, [], None

    def _label(self, env) -> np.ndarray:
        from lerobot_env_vst_vla.expert import ScriptedExpert

        teacher = ScriptedExpert(env)
        teacher.take_over(self.last)
        return teacher.chunk(self.n_chunk).astype(np.float32)

    def act(self, obs: dict, env) -> np.ndarray:
        choose = self.expert_mix > 0 and not self.policy.queue and not self.expert_queue  # a chunk boundary
        label = self._label(env) if self.t % self.label_every == 0 or choose else None
        if self.t % self.label_every == 0:
            r = self.rows
            r["images"].append(np.stack([obs["pixels"][c].transpose(2, 0, 1) for c in self.cameras]))
            r["state"].append(np.asarray(obs["agent_pos"], dtype=np.float32))
            r["action"].append(label)
            r["task"].append(env.task_description)
            r["episode"].append(self.scene)
            r["step"].append(self.t)
        if choose and self.rng.random() < self.expert_mix:
            self.expert_queue = list(label[: self.n_exec])
        if self.expert_queue:
            action, self.chunk = self.expert_queue.pop(0), None
        else:
            action = self.policy.act(obs, env)
            self.chunk = self.policy.chunk
        self.last, self.t = np.asarray(action, dtype=np.float64), self.t + 1
        return action


def collect_frames(policy_path: str | Path, family: str, episodes: int, first_scene: int, label_every: int,
                   episode_length: int, expert_mix: float = 0.0, seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """Roll the policy out on `episodes` DAgger scenes of `family`; every `label_every` steps keep the frame
    (the policy's cameras at its size), the state, and the expert's next `chunk` actions from there.
    Returns the samples (images (M, cams, 3, H, W) uint8, state, action (M, chunk, 6), task, plus episode
    (the scene's index) and step) and a summary of the rollouts (success, steps, closest approach)."""
    from lerobot_env_vst_vla import SpatialTabletopEnv

    from .evaluate import PolicyAgent, load_policy, run_episode

    loaded = load_policy(policy_path)
    chunk = len(loaded.policy.config.action_delta_indices or [0])
    h, w = loaded.image_hw
    env = SpatialTabletopEnv(task=family, cameras=tuple(loaded.cameras), observation_height=h, observation_width=w,
                             episode_length=episode_length)
    agent = LabellingAgent(PolicyAgent(loaded, family, episode_length), loaded.cameras, chunk,
                           int(getattr(loaded.policy.config, "n_action_steps", None) or chunk), label_every,
                           expert_mix, np.random.default_rng(seed))
    results = []
    try:
        for e in range(episodes):
            agent.scene = first_scene + e  # recorded with each frame: the scene's index in the DAgger range
            results.append(run_episode(agent, env, scene_seed(DAGGER_SEED_BASE, family, agent.scene)))
            if (e + 1) % 20 == 0:
                log.info("dagger %s: %d/%d rollouts, %d frames, success so far %d", family, e + 1, episodes,
                         len(agent.rows["task"]), sum(r["success"] for r in results))
    finally:
        env.close()
    data = {k: np.array(v) if k == "task" else np.stack(v) for k, v in agent.rows.items()}
    return data, {"rollout_success": float(np.mean([r["success"] for r in results])),
                  "rollout_steps_mean": float(np.mean([r["steps"] for r in results])),
                  "rollout_closest_cm": float(np.mean([r["closest_cm"] for r in results])), "frames": len(data["task"])}


def run_dagger(cfg: DaggerConfig) -> Path:
    """All rounds (resuming after the last finished one); returns the last round's checkpoint."""
    from .evaluate import EvalPolicyConfig, evaluate_policy
    from .train import LAST_CHECKPOINT, train_policy

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "dagger_config.json", json.dumps(asdict(cfg), indent=2, default=str))
    policy, data, history = str(cfg.policy_path), [], []
    if not (Path(policy) / "config.json").is_file():
        raise FileNotFoundError(f"policy_path {policy}: no config.json (a `vst-vla train-policy` checkpoint's "
                                "pretrained_model folder)")
    for k in range(cfg.rounds):
        rdir = out / f"round_{k}"
        if (rdir / "done.json").is_file():
            done = json.loads((rdir / "done.json").read_text())
            policy, data = done["checkpoint"], data + done["frames"]
            history.append(done)
            log.info("round %d done before (%s): resuming after it", k, done["checkpoint"])
            continue
        t0 = time.perf_counter()
        frames, rollouts = [], {}
        for family in cfg.families:
            path = rdir / f"frames_{family}.npz"
            if not path.is_file():
                samples, rollouts[family] = collect_frames(policy, family, cfg.episodes, k * cfg.episodes,
                                                           cfg.label_every, cfg.episode_length, cfg.expert_mix, seed=k)
                save_npz_atomic(path, samples)
                log.info("round %d %s: %d frames from %d rollouts (rollout success %.2f)", k, family,
                         rollouts[family]["frames"], cfg.episodes, rollouts[family]["rollout_success"])
            frames.append(str(path))
        data = data + frames
        collect_s = time.perf_counter() - t0
        train_cfg = TrainPolicyConfig(**{**asdict(cfg.train), "init_from": policy, "dagger_data": list(data),
                                         "output_dir": str(rdir / "train"), "resume": (rdir / "train" / "checkpoints" / "last").exists()})
        train_policy(train_cfg)
        policy = str(rdir / "train" / LAST_CHECKPOINT)
        done = {"round": k, "checkpoint": policy, "frames": frames, "rollouts": rollouts,
                "collect_seconds": round(collect_s, 1)}
        if cfg.eval_episodes:
            report = evaluate_policy(EvalPolicyConfig(policy_path=policy, tasks=list(cfg.families),
                                                      episodes_per_family=cfg.eval_episodes,
                                                      episode_length=cfg.episode_length,
                                                      output_dir=str(rdir / "eval"), videos_per_family=1,
                                                      compare_baselines=list(cfg.compare_baselines)))
            done["eval"] = {f: {"success": r["success"], "closest_cm": r["closest_cm_mean"],
                                "reached": r["reached"]["rate"], "correct_object": r["correct_object"]["rate"],
                                "baselines": {n: b[f] for n, b in report.get("baselines", {}).items()},
                                "learned": report.get("learned", {}).get(f)}
                            for f, r in report["per_family"].items()}
        write_text_atomic(rdir / "done.json", json.dumps(done, indent=2, default=str))
        history.append(done)
        log.info("round %d: %s", k, json.dumps(done.get("eval", {})))
    write_text_atomic(out / "rounds.json", json.dumps(history, indent=2, default=str))
    print(f"dagger checkpoint: {policy}")
    return Path(policy)
