"""Is it the decision or the manipulation? The scripted expert drives each held-out episode up to a
phase of its plan, then the policy takes over for the rest; success per hand-off point.

Phases (the expert's waypoints): `start` (the policy does everything), `above` (the jaws are over the
target: the decision is made), `grasp` (the jaws are around it, open), `closed` (it is held). A policy
that succeeds from `above` but not from `start` has learned to manipulate but not where to go; one that
fails from `above` has not learned the grasp itself, whatever its per-step error says.

    python benchmarks/policy_handoff.py --policy CKPT --family pick_extreme --episodes 20

The LAST line of stdout is one JSON object: {"success": {phase: rate}, "ci95": {...}, "closest_cm": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

PHASES = {"start": 0, "above": 1, "grasp": 2, "closed": 3}  # expert stage at which the policy takes over


class HandoffAgent:
    """The scripted expert until its plan reaches `stage`, then the policy (a fresh chunk queue)."""

    needs_pixels = True

    def __init__(self, policy_agent, stage: int):
        self.policy, self.stage = policy_agent, stage
        self.chunk = None

    def reset(self, env, seed: int) -> None:
        from lerobot_env_vst_vla.expert import ScriptedExpert

        self.expert = ScriptedExpert(env)
        self.policy.reset(env, seed)
        self.handed_over = self.stage == 0
        self.chunk = None

    def act(self, obs: dict, env) -> np.ndarray:
        if not self.handed_over and self.expert.stage < self.stage:
            self.chunk = None
            return self.expert.act()
        self.handed_over = True
        action = self.policy.act(obs, env)
        self.chunk = self.policy.chunk
        return action

    def predicted_path(self, fk, env):
        return self.policy.predicted_path(fk, env) if self.handed_over else None


def main(argv: list[str] | None = None) -> dict:
    from lerobot_env_vst_vla import SpatialTabletopEnv

    from vst_vla.seeds import EVAL_SEED_BASE, episode_seed
    from vst_vla.policy import evaluate as ev
    from vst_vla.policy.metrics import wilson_interval

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="a checkpoint's pretrained_model folder")
    p.add_argument("--family", default="pick_extreme")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    p.add_argument("--episode-length", type=int, default=200)
    p.add_argument("--seed-base", type=int, default=EVAL_SEED_BASE, help="0: the collection's (training) seeds")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="inference-time fields of the checkpoint's config, e.g. inference_noise_scale=0 n_action_steps=5")
    args = p.parse_args(argv)

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expected FIELD=VALUE")
        overrides[key] = yaml.safe_load(value)
    loaded = ev.load_policy(args.policy, overrides=overrides)
    if args.seed_base == EVAL_SEED_BASE:
        ev.check_disjoint_seeds(args.policy, {episode_seed(args.seed_base, args.family, k) for k in range(args.episodes)})
    h, w = loaded.image_hw
    env = SpatialTabletopEnv(task=args.family, cameras=tuple(loaded.cameras), observation_width=w,
                             observation_height=h, episode_length=args.episode_length)
    results: dict[str, list[dict]] = {}
    try:
        for phase in args.phases:
            agent = HandoffAgent(ev.PolicyAgent(loaded, args.family, args.episode_length), PHASES[phase])
            for k in range(args.episodes):
                r = ev.run_episode(agent, env, episode_seed(args.seed_base, args.family, k))
                results.setdefault(phase, []).append(r)
            ok = sum(r["success"] for r in results[phase])
            print(f"{phase:>7}: success {ok}/{args.episodes}, closest "
                  f"{np.mean([r['closest_cm'] for r in results[phase]]):.1f} cm", file=sys.stderr)
    finally:
        env.close()
    n = args.episodes
    report = {
        "policy": args.policy, "family": args.family, "episodes": n, "seed_base": args.seed_base, "overrides": overrides,
        "success": {ph: sum(r["success"] for r in rs) / n for ph, rs in results.items()},
        "ci95": {ph: list(wilson_interval(sum(r["success"] for r in rs), n)) for ph, rs in results.items()},
        "reached": {ph: sum(bool(r.get("reached")) for r in rs) / n for ph, rs in results.items()},
        "lifted": {ph: sum(bool(r.get("lifted")) for r in rs) / n for ph, rs in results.items()},
        "closest_cm": {ph: round(float(np.mean([r["closest_cm"] for r in rs])), 2) for ph, rs in results.items()},
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
