"""Policy benchmark: vst_vla tokens head vs vst_vla flow head vs LeRobot's ACT, all in one run.

1. Collect `--collect-per-family` scripted-expert episodes per family (`vst_vla.collect`).
2. Train each policy with LeRobot's own loop (`vst_vla.policy.train`) for the same wall-clock budget:
   two short warm-up runs (W and W+K steps) give the time per step and the fixed start-up cost, and
   the real run gets `steps = (budget - start-up) / time per step`.
3. Evaluate each on the same seeds per family (`vst_vla.policy.evaluate`).
4. On one CPU thread: `select_action` latency p50/p95/mean (the mean is the control step amortised
   over the chunk) and the flow head's per-chunk time with and without the cached VLM prefix.

The LAST line of stdout is one JSON object. Reduced run that fits a short session:

    python benchmarks/policy.py --budget-min 6 --episodes-per-family 5 --collect-per-family 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # LeRobot's per-step progress bars would flood the log

import numpy as np  # noqa: E402
import torch  # noqa: E402

POLICIES = ("vst_vla_tokens", "vst_vla_flow", "act")
SPATIAL_FAMILIES = ("pick_relation", "pick_extreme", "place_relative")  # instructions that hinge on relations


def policy_spec(name: str, vlm_image: int, lr: float) -> tuple[str, dict]:
    """(policy type, --policy.* overrides) for each benchmarked policy."""
    if name.startswith("vst_vla"):
        head = name.split("_")[-1]
        return "vst_vla", {"action_head": head, "backbone_preset": "tiny", "image_size": [vlm_image, vlm_image],
                           "chunk_size": 1 if head == "tokens" else 10, "optimizer_lr": lr}
    # A tiny ACT (no torchvision download: pretrained_backbone_weights=None), chunk 10 like the flow head.
    return "act", {"pretrained_backbone_weights": None, "dim_model": 256, "n_heads": 4, "dim_feedforward": 1024,
                   "n_encoder_layers": 2, "n_decoder_layers": 1, "chunk_size": 10, "n_action_steps": 10,
                   "use_vae": False, "optimizer_lr": lr, "optimizer_lr_backbone": lr}


def _train(dataset: Path, out: Path, name: str, steps: int, args) -> tuple[Path, float]:
    from vst_vla.policy.train import TrainPolicyConfig, train_policy

    shutil.rmtree(out, ignore_errors=True)
    ptype, overrides = policy_spec(name, args.vlm_image_size, args.lr)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    extra = ["--policy.pretrained_backbone_weights=null"] if ptype == "act" else []
    cfg = TrainPolicyConfig(dataset_root=str(dataset), policy_type=ptype, policy_overrides=overrides, steps=steps,
                            batch_size=args.batch_size, output_dir=str(out), save_freq=steps,
                            log_freq=max(1, steps // 20), seed=args.seed, extra_args=extra)
    t0 = time.perf_counter()
    checkpoint = train_policy(cfg)
    return checkpoint, time.perf_counter() - t0


def train_for_budget(dataset: Path, work: Path, name: str, budget_s: float, args) -> dict:
    """Warm up twice to measure per-step time and start-up, then train for the budget."""
    w, k = 1, args.warmup_steps
    _train(dataset, work / f"{name}_warmup_0", name, w, args)  # imports and caches: not part of the timing
    _, t_a = _train(dataset, work / f"{name}_warmup_a", name, w, args)
    _, t_b = _train(dataset, work / f"{name}_warmup_b", name, w + k, args)
    # start-up time varies by a second or two; the floor keeps that noise from inflating the step count
    per_step = max((t_b - t_a) / k, 0.5 * t_b / (w + k))
    startup = max(t_a - w * per_step, 0.0)
    steps = max(1, int((budget_s - startup) / per_step))
    print(f"[{name}] {per_step:.3f} s/step, start-up {startup:.1f} s -> {steps} steps", file=sys.stderr)
    checkpoint, seconds = _train(dataset, work / name, name, steps, args)
    for tag in ("0", "a", "b"):
        shutil.rmtree(work / f"{name}_warmup_{tag}", ignore_errors=True)
    return {"checkpoint": str(checkpoint), "steps": steps, "train_seconds": round(seconds, 1),
            "s_per_step_warmup": round(per_step, 4), "startup_s": round(startup, 1)}


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def measure_latency(checkpoint: str, n_calls: int) -> dict:
    """select_action latency (ms) on one thread over n_calls consecutive steps of a real observation."""
    from lerobot.envs.utils import preprocess_observation

    from lerobot_env_vst_vla import SpatialTabletopEnv
    from vst_vla.policy.evaluate import _batched, load_policy

    loaded = load_policy(checkpoint)
    h, w = loaded.image_hw
    env = SpatialTabletopEnv(task="pick_relation", cameras=tuple(loaded.cameras), observation_width=w,
                             observation_height=h)
    obs, _ = env.reset(seed=123)
    batch = preprocess_observation(_batched(obs))
    batch["task"] = [env.task_description]
    batch = loaded.preprocessor(batch)
    env.close()
    policy = loaded.policy
    policy.reset()
    with torch.inference_mode():
        policy.select_action(batch)  # warm-up (allocations, first chunk)
        policy.reset()
        times = []
        for _ in range(n_calls):
            t0 = time.perf_counter()
            policy.select_action(batch)
            times.append(1000 * (time.perf_counter() - t0))
    out = {"p50": round(_percentile(times, 50), 3), "p95": round(_percentile(times, 95), 3),
           "mean_amortised": round(statistics.fmean(times), 3), "calls": n_calls}
    if getattr(policy.config, "action_head", None) == "flow":
        out["flow_chunk_ms"] = flow_chunk_times(policy, batch)
    return out


def flow_chunk_times(policy, batch: dict, reps: int = 7) -> dict:
    """Median per-chunk time with the cached prefix and with the prefix recomputed each Euler step."""
    cfg = policy.config
    noise = torch.randn(1, cfg.chunk_size, cfg.action_dim)
    result = {}
    with torch.inference_mode():
        for cached in (True, False):
            cfg.use_prefix_cache = cached
            policy.predict_action_chunk(batch, noise=noise)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                policy.predict_action_chunk(batch, noise=noise)
                times.append(1000 * (time.perf_counter() - t0))
            result["cached" if cached else "uncached"] = round(statistics.median(times), 3)
    cfg.use_prefix_cache = True
    return result


def main(argv: list[str] | None = None) -> dict:
    from lerobot_env_vst_vla import FAMILIES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-min", type=float, default=60.0, help="training wall-clock budget per policy (minutes)")
    p.add_argument("--episodes-per-family", type=int, default=10, help="evaluation episodes per family")
    p.add_argument("--collect-per-family", type=int, default=20, help="expert episodes per family to train on")
    p.add_argument("--families", nargs="*", default=list(FAMILIES))
    p.add_argument("--policies", nargs="*", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--image-size", type=int, default=96, help="collected camera size")
    p.add_argument("--vlm-image-size", type=int, default=84, help="vst_vla input size (multiple of 28)")
    p.add_argument("--eval-episode-length", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate, the same for every policy")
    p.add_argument("--warmup-steps", type=int, default=10, help="K of the per-step timing warm-up")
    p.add_argument("--latency-calls", type=int, default=40)
    p.add_argument("--threads", type=int, default=1, help="torch threads for training and evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/benchmarks/policy")
    p.add_argument("--dataset", default=None, help="reuse a collected dataset instead of collecting")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    from vst_vla.collect import CollectConfig, collect

    if args.dataset:
        dataset = Path(args.dataset)
    else:
        dataset = work / "dataset"
        collect(CollectConfig(root=str(dataset), tasks=args.families, episodes_per_task=args.collect_per_family,
                              image_size=args.image_size, overwrite=True))
    info = json.loads((dataset / "meta" / "info.json").read_text())

    from vst_vla.policy.evaluate import EvalPolicyConfig, evaluate_policy

    result: dict = {"budget_min": args.budget_min, "threads": args.threads, "batch_size": args.batch_size,
                    "lr": args.lr, "dataset": {"episodes": info["total_episodes"], "frames": info["total_frames"],
                                               "image_size": args.image_size, "families": args.families},
                    "eval": {"episodes_per_family": args.episodes_per_family,
                             "episode_length": args.eval_episode_length},
                    "steps": {}, "train": {}, "success": {}, "success_ci95": {}, "latency_ms": {}}
    for name in args.policies:
        trained = train_for_budget(dataset, work, name, 60 * args.budget_min, args)
        result["steps"][name] = trained["steps"]
        result["train"][name] = trained
        report = evaluate_policy(EvalPolicyConfig(
            policy_path=trained["checkpoint"], tasks=args.families, episodes_per_family=args.episodes_per_family,
            episode_length=args.eval_episode_length, output_dir=str(work / f"eval_{name}"),
            videos_per_family=1, rerun_per_family=0))
        result["success"][name] = {f: r["success_rate"] for f, r in report["per_family"].items()}
        result["success_ci95"][name] = {f: [round(r["ci_low"], 3), round(r["ci_high"], 3)]
                                        for f, r in report["per_family"].items()}
        torch.set_num_threads(1)  # latency is specified on one CPU thread
        result["latency_ms"][name] = measure_latency(trained["checkpoint"], args.latency_calls)
        torch.set_num_threads(args.threads)
        print(json.dumps({name: result["latency_ms"][name], "success": result["success"][name]}), file=sys.stderr)

    flow = result["latency_ms"].get("vst_vla_flow", {}).get("flow_chunk_ms")
    if flow:
        result["flow_cache_speedup"] = round(flow["uncached"] / flow["cached"], 2)
    spatial = [f for f in args.families if f in SPATIAL_FAMILIES]
    result["goals"] = {
        "flow_cache_speedup_ge_3x": bool(flow) and result["flow_cache_speedup"] >= 3.0,
        "vst_vla_ge_act_on_spatial": {
            name: all(result["success"][name][f] >= result["success"]["act"][f] for f in spatial)
            for name in ("vst_vla_tokens", "vst_vla_flow")
            if name in result["success"] and "act" in result["success"]},
        "control_step_le_20ms_amortised": {name: v["mean_amortised"] <= 20.0 for name, v in result["latency_ms"].items()},
    }
    result["total_minutes"] = round((time.perf_counter() - t_start) / 60, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
