"""Can the policy's VLM learn *where the target is* from the first frame? A probe of the decision phase.

The vst_vla policy reads its target from the image only at the start of an episode (later the arm's
own heading says where it is going). This probe trains the policy's VLM, from its initialisation, with
a linear head on the prefix's last hidden state, to regress the target object's table position (x, y)
from the first frame (front + wrist cameras, the instruction) of many distinct scenes — far more
scenes than demonstrations give it — and scores held-out scenes every `--eval-every` steps:

- `error_cm`: mean distance of the predicted position to the target;
- `decision`: how often the prediction is nearer the target than its look-alike (pick_relation's twin;
  0.5 is a model that cannot tell them apart);
- the references: predicting the mean position, and predicting the midpoint of target and twin (what a
  model that finds the look-alikes but cannot resolve the relation converges to).

    python benchmarks/policy_target_probe.py --policy CKPT --scenes 5000 --steps 600
    python benchmarks/policy_target_probe.py --policy CKPT --train-scenes 100     # as few as 100 demos give

`--policy` is a checkpoint's pretrained_model folder; by default only its config is used (cameras,
image size, and the backbone it was built from: its `backbone_path` or the preset), so the probe starts
where that policy's training started; `--keep-weights` probes the trained weights instead. Scenes are cached
in `--cache`. The LAST line of stdout is one JSON object with the curve and the references.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROBE_SEED_BASE = 900_000  # disjoint from collection (0...) and evaluation seeds


def render_scenes(family: str, n: int, size: int, cache: Path) -> dict:
    """First frames of `n` scenes: front/wrist images, instruction, target and twin (x, y)."""
    if cache.is_file():
        data = dict(np.load(cache))
        if len(data["task"]) >= n:
            return {k: v[:n] for k, v in data.items()}
    from lerobot_env_vst_vla import SpatialTabletopEnv

    env = SpatialTabletopEnv(task=family, observation_width=size, observation_height=size)
    rows = {"front": [], "wrist": [], "task": [], "target": [], "twin": []}
    for s in range(n):
        obs, _ = env.reset(seed=PROBE_SEED_BASE + s)
        episode = env.episode
        twin = (episode.details or {}).get("twin")
        rows["front"].append(obs["pixels"]["front"])
        rows["wrist"].append(obs["pixels"]["wrist"])
        rows["task"].append(env.task_description)
        rows["target"].append(env.object_position(episode.target)[:2])
        rows["twin"].append(env.object_position(twin)[:2] if twin is not None else np.full(2, np.nan))
    env.close()
    data = {k: np.stack(v) if k != "task" else np.array(v) for k, v in rows.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(cache)
    return data


def main(argv: list[str] | None = None) -> dict:
    from lerobot_policy_vst_vla.configuration_vst_vla import VSTVLAConfig
    from lerobot_policy_vst_vla.modeling_vst_vla import VSTVLAPolicy

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="a vst_vla checkpoint's pretrained_model folder (its config)")
    p.add_argument("--keep-weights", action="store_true", help="probe the checkpoint's weights, not a fresh init")
    p.add_argument("--family", default="pick_relation")
    p.add_argument("--scenes", type=int, default=5000, help="rendered scenes; the last --test of them are held out")
    p.add_argument("--train-scenes", type=int, default=None, help="train on the first N only (default: all but --test)")
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--cache", default="outputs/bench/policy_target_probe")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (Path(args.policy) / "config.json").is_file():
        raise SystemExit(f"--policy {args.policy}: no config.json (a vst_vla checkpoint's pretrained_model folder; "
                         "`bash scripts/run.sh main` writes outputs/pipeline/policy/train/checkpoints/last/pretrained_model)")
    config = VSTVLAConfig.from_pretrained(args.policy)
    size = int(config.image_size[0])
    data = render_scenes(args.family, args.scenes, size, Path(args.cache) / f"{args.family}_{size}px.npz")
    n_train = args.train_scenes or args.scenes - args.test
    if n_train > args.scenes - args.test:
        raise SystemExit(f"--train-scenes {n_train} overlaps the {args.test} held-out scenes of {args.scenes}")
    test = np.arange(args.scenes - args.test, args.scenes)

    torch.manual_seed(args.seed)
    policy = VSTVLAPolicy.from_pretrained(args.policy) if args.keep_weights else VSTVLAPolicy(config)
    policy.train()
    head = torch.nn.Linear(policy.vlm.config.text_config.hidden_size, 2)
    params = [q for q in policy.parameters() if q.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, args.steps) / args.steps)))
    mean, std = data["target"][:n_train].mean(0), data["target"][:n_train].std(0)
    cameras = list(policy.image_keys)

    def batch(idx):
        images = {"front": data["front"][idx], "wrist": data["wrist"][idx]}
        out = {key: torch.from_numpy(images[key.rsplit(".", 1)[-1]]).permute(0, 3, 1, 2).float() / 255
               for key in cameras}
        out["task"] = [str(t) for t in data["task"][idx]]
        out["observation.state"] = torch.zeros(len(idx), 6)  # the arm is at home in every first frame
        return out

    def predict(idx):
        prefix = policy._encode_prefix(batch(idx))
        return head(policy._run_vlm(prefix).last_hidden_state[:, -1])

    def score() -> dict:
        policy.eval()
        with torch.no_grad():
            pred = np.concatenate([predict(test[i:i + 50]).numpy() for i in range(0, len(test), 50)]) * std + mean
        policy.train()
        target, twin = data["target"][test], data["twin"][test]
        d_target = np.linalg.norm(pred - target, axis=1)
        has_twin = ~np.isnan(twin[:, 0])
        decision = float((d_target < np.linalg.norm(pred - twin, axis=1))[has_twin].mean()) if has_twin.any() else None
        return {"error_cm": round(float(d_target.mean()) * 100, 2),
                "decision": None if decision is None else round(decision, 3)}

    target, twin = data["target"][test], data["twin"][test]
    references = {"mean_position_cm": round(float(np.linalg.norm(target - mean, axis=1).mean()) * 100, 2)}
    if not np.isnan(twin).any():
        references["twin_midpoint_cm"] = round(float(np.linalg.norm(target - (target + twin) / 2, axis=1).mean()) * 100, 2)
    rng = np.random.default_rng(args.seed)
    curve, start = [], time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            curve.append({"step": step, **score(), "s": round(time.perf_counter() - start)})
            print(json.dumps(curve[-1]), file=sys.stderr, flush=True)
        if step == args.steps:
            break
        idx = rng.choice(n_train, args.batch_size)
        y = torch.from_numpy((data["target"][idx] - mean) / std).float()
        loss = ((predict(idx) - y) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
    result = {"family": args.family, "train_scenes": n_train, "test_scenes": args.test, "steps": args.steps,
              "batch_size": args.batch_size, "lr": args.lr, "image_size": size, "trained_weights": args.keep_weights,
              "references": references, "curve": curve, "final": curve[-1]}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
