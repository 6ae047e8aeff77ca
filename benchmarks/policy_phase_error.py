"""Where in an episode does a policy go wrong? Drive the sim with the scripted expert and, every 10
steps, score the policy's chunk against the expert's next actions (mean |error| per joint, so101 units).

A policy that tracks the expert once under way but misses the first chunk (the only one where the
image alone says where to go) has not learned to locate its target. The rollouts only show the sum.
Per joint, the correlation of the chunk's motion (action minus the state it starts from) with the
expert's says which joints the policy has learned at all: a joint it predicts from nothing scores ~0
however small its mean error (shoulder_pan moves only while the arm turns to its target).

    python benchmarks/policy_phase_error.py --policy CKPT --family pick_relation --episodes 8
    python benchmarks/policy_phase_error.py --policy CKPT --seed-base 0      # training scenes

The LAST line of stdout is one JSON object: {"phase_error": {step: [per-joint error]}, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    from lerobot_env_vst_vla import SpatialTabletopEnv
    from lerobot_env_vst_vla.expert import ScriptedExpert

    from vst_vla.seeds import EVAL_SEED_BASE, episode_seed
    from vst_vla.policy import evaluate as ev

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="a checkpoint's pretrained_model folder")
    p.add_argument("--family", default="pick_relation")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--seed-base", type=int, default=EVAL_SEED_BASE, help="0: the collection's (training) seeds")
    p.add_argument("--every", type=int, default=10)
    args = p.parse_args(argv)

    loaded = ev.load_policy(args.policy)
    h, w = loaded.image_hw
    env = SpatialTabletopEnv(task=args.family, cameras=tuple(loaded.cameras), observation_width=w,
                             observation_height=h, episode_length=300)
    errors: dict[int, list[np.ndarray]] = {}
    moves: list[tuple[np.ndarray, np.ndarray]] = []  # (policy, expert) chunk motion from the chunk's start state
    try:
        for k in range(args.episodes):
            seed = episode_seed(args.seed_base, args.family, k)
            obs, _ = env.reset(seed=seed)
            expert, trajectory = ScriptedExpert(env), []
            while True:
                action = expert.act()
                trajectory.append((obs, action))
                obs, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    break
            actions = np.stack([a for _, a in trajectory])
            agent = ev.PolicyAgent(loaded, args.family, 300)
            for t in range(0, len(trajectory) - 1, args.every):
                agent.reset(env, seed)
                agent.act(trajectory[t][0], env)  # the chunk predicted from the expert's observation at t
                n = min(len(agent.chunk), len(actions) - t)
                errors.setdefault(t, []).append(np.abs(agent.chunk[:n] - actions[t:t + n]).mean(0))
                start = np.asarray(trajectory[t][0]["agent_pos"])
                moves.append((agent.chunk[:n] - start, actions[t:t + n] - start))
    finally:
        env.close()
    names = getattr(loaded.policy.config, "action_feature_names", None)
    phase = {t: np.mean(e, 0).round(2).tolist() for t, e in sorted(errors.items()) if len(e) >= max(1, args.episodes // 2)}
    for t, e in phase.items():
        print(f"step {t:3d}: " + " ".join(f"{x:6.2f}" for x in e), file=sys.stderr)
    pred, expert_moves = (np.concatenate([m[i] for m in moves]) for i in (0, 1))
    correlation = [round(float(np.corrcoef(pred[:, j], expert_moves[:, j])[0, 1]), 3) for j in range(pred.shape[1])]
    print("motion correlation with the expert per joint: " + " ".join(f"{c:6.2f}" for c in correlation), file=sys.stderr)
    report = {"policy": args.policy, "family": args.family, "episodes": args.episodes, "seed_base": args.seed_base,
              "joints": names, "phase_error": phase, "motion_correlation": correlation}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
