"""Policy benchmark: vst_vla flow head, vst_vla tokens head and LeRobot's ACT against three baselines.

Protocol (the same for every policy): one language-conditioned policy for all five families, trained
with `vst-vla train-policy` on the same scripted demonstrations (frame cache, dataset-global statistics,
a schedule sized to a wall-clock budget, held-out action error), then rolled out on the same evaluation
seeds (disjoint from the demonstrations') next to `do_nothing`, `random` and the spatially blind
expert (the scripted expert sent to a random look-alike). Each policy's result is cached in
`<out>/<policy>/result.json`, so the run resumes, or runs one policy at a time (`--policies`).

    python benchmarks/policy.py                                   # 20 min per policy, 50 episodes/family
    python benchmarks/policy.py --policies vst_vla_flow --budget-min 20

The LAST line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import logging  # noqa: E402

from vst_vla.atomic import write_text_atomic  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

POLICIES = ("vst_vla_flow", "vst_vla_tokens", "act")
BASELINES = ("do_nothing", "random", "blind_expert")


# The CPU recipe of vst_vla from scratch (vst_vla/configs/policy/train.yaml): a tiny transformer from
# random weights wants lr 1e-3, its ViT at the same rate; 4 flow draws share each VLM pass.
VST_RECIPE = {"backbone_preset": "tiny", "use_relative_actions": True, "vision_lr_scale": 1.0}
VST_TRAIN = {"lr": 1e-3}


def policy_spec(name: str, image: int, chunk: int) -> tuple[str, dict, dict]:
    """(policy type, config fields, training settings) of each benchmarked policy. ACT: LeRobot's
    defaults (ResNet18 + a 512-wide transformer, VAE on) from scratch — nothing may be downloaded —
    with the same chunk, at lr 1e-4 (its 1e-5 default is for a pretrained ResNet)."""
    if name == "vst_vla_flow":
        return "vst_vla", {**VST_RECIPE, "action_head": "flow", "image_size": [image, image], "chunk_size": chunk,
                           "n_action_steps": chunk, "flow_samples_per_obs": 4}, VST_TRAIN
    if name == "vst_vla_tokens":  # a chunk of 5: the paper's single step would decode 6 tokens every control tick
        return "vst_vla", {**VST_RECIPE, "action_head": "tokens", "image_size": [image, image],
                           "chunk_size": 5, "n_action_steps": 5}, VST_TRAIN
    return "act", {"pretrained_backbone_weights": None, "chunk_size": chunk, "n_action_steps": chunk}, {"lr": 1e-4}


def train(name: str, dataset: Path, out: Path, args) -> dict:
    from vst_vla.policy.train import TrainPolicyConfig, train_policy

    ptype, fields, settings = policy_spec(name, args.image_size, args.chunk)
    settings = {**settings, **({"lr": args.lr} if args.lr is not None else {})}
    cfg = TrainPolicyConfig(dataset_root=str(dataset), policy_type=ptype, policy_overrides=fields,
                            steps=args.max_steps, max_minutes=args.budget_min, batch_size=args.batch_size,
                            output_dir=str(out), save_freq=500, log_freq=50, eval_freq=args.eval_freq,
                            seed=args.seed, threads=args.threads, **settings)
    return train_result(train_policy(cfg), out)


def train_result(checkpoint, out: Path) -> dict:
    """What a `train_policy` run in `out` reports: checkpoint, steps, minutes, samples/s, held-out error."""
    summary = json.loads((out / "train_summary.json").read_text())
    held_file = out / "heldout.json"
    return {"checkpoint": str(checkpoint), "steps": summary["steps"],
            "train_minutes": round(summary["train_seconds"] / 60, 2),
            "train_samples_per_s": summary["train_samples_per_s"],
            "heldout": json.loads(held_file.read_text()) if held_file.is_file() else {}}


def evaluate(name: str, checkpoint: str | None, out: Path, args) -> dict:
    from vst_vla.policy.evaluate import EvalPolicyConfig, evaluate_policy

    report = evaluate_policy(EvalPolicyConfig(
        policy_path=checkpoint or "", baseline=None if checkpoint else name, tasks=args.families,
        episodes_per_family=args.episodes_per_family, episode_length=args.eval_episode_length,
        output_dir=str(out / "eval"), videos_per_family=1 if checkpoint else 0,
        rerun_per_family=1 if checkpoint else 0, image_size=args.image_size))
    return {**family_metrics(report), "recordings": report["recordings"]}


def family_metrics(report: dict) -> dict:
    """Per-family rates, counts and Wilson intervals from an `evaluate_policy` report."""
    fam = report["per_family"]
    return {"episodes": {f: r["n_episodes"] for f, r in fam.items()},
            "success": {f: r["success"]["rate"] for f, r in fam.items()},
            "success_count": {f: r["success"]["count"] for f, r in fam.items()},
            "ci95": {f: r["success"]["ci95"] for f, r in fam.items()},
            "correct_object_rate": {f: r["correct_object"]["rate"] for f, r in fam.items()},
            "correct_object_count": {f: r["correct_object"]["count"] for f, r in fam.items()},
            "correct_object_ci95": {f: r["correct_object"]["ci95"] for f, r in fam.items()},
            "reached_rate": {f: r["reached"]["rate"] for f, r in fam.items()},
            "lifted_rate": {f: r["lifted"]["rate"] for f, r in fam.items()},
            "closest_cm": {f: r["closest_cm_mean"] for f, r in fam.items()}}


def control_latency(checkpoint: str, calls: int = 30) -> dict:
    """select_action latency (ms) on one thread; for the flow head also the chunk with/without the cached prefix."""
    from lerobot.envs.utils import preprocess_observation

    from lerobot_env_vst_vla import SpatialTabletopEnv
    from vst_vla.policy.evaluate import _batched, load_policy

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loaded = load_policy(checkpoint)
    h, w = loaded.image_hw
    env = SpatialTabletopEnv(task="pick_relation", cameras=tuple(loaded.cameras), observation_width=w, observation_height=h)
    obs, _ = env.reset(seed=123)
    batch = preprocess_observation(_batched(obs))
    batch["task"] = [env.task_description]
    batch = loaded.preprocessor(batch)
    env.close()
    policy = loaded.policy
    times = []
    with torch.inference_mode():
        policy.reset()
        policy.select_action(batch)
        policy.reset()
        for _ in range(calls):
            t0 = time.perf_counter()
            policy.select_action(batch)
            times.append(1000 * (time.perf_counter() - t0))
        out = {"mean_amortised_ms": round(statistics.fmean(times), 2), "p50_ms": round(statistics.median(times), 2)}
        if getattr(policy.config, "action_head", None) == "flow":
            chunk = {}
            for cached in (True, False):
                policy.config.use_prefix_cache = cached
                ts = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    policy.predict_action_chunk(batch)
                    ts.append(1000 * (time.perf_counter() - t0))
                chunk["cached" if cached else "uncached"] = round(statistics.median(ts), 2)
            policy.config.use_prefix_cache = True
            out["flow_chunk_ms"] = chunk
    torch.set_num_threads(threads)
    return out


def cached(path: Path, make, key: str | None = None, value=None) -> dict:
    """`path`'s result if it is there, else `make()`'s, written atomically. With `key`: a cached result
    whose `key` is not `value` (another recipe's) is kept aside as result.stale.json and made anew."""
    if key is not None:
        if path.is_file() and json.loads(path.read_text()).get(key) != value:
            stale = path.with_name("result.stale.json")
            path.replace(stale)
            print(f"{path.parent}: cached result has another {key}, moved to {stale}; rerunning", file=sys.stderr)
        make = (lambda make=make: {**make(), key: value})
    if path.is_file():
        return json.loads(path.read_text())
    result = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> dict:
    from lerobot_env_vst_vla import FAMILIES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", nargs="*", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES)
    p.add_argument("--families", nargs="*", default=sorted(FAMILIES))
    p.add_argument("--dataset", default="outputs/benchmarks/policy/demos")
    p.add_argument("--collect-per-family", type=int, default=40)
    p.add_argument("--image-size", type=int, default=112, help="camera size, for every policy (multiple of 28)")
    p.add_argument("--chunk", type=int, default=10)
    p.add_argument("--budget-min", type=float, default=20.0, help="training minutes per policy")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate for every policy (default: each one's recipe)")
    p.add_argument("--eval-freq", type=int, default=500)
    p.add_argument("--episodes-per-family", type=int, default=50)
    p.add_argument("--eval-episode-length", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/benchmarks/policy")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()

    dataset = Path(args.dataset)
    if not (dataset / "meta" / "info.json").is_file():
        from vst_vla.collect import CollectConfig, collect

        collect(CollectConfig(root=str(dataset), tasks=args.families, episodes_per_task=args.collect_per_family,
                              image_size=args.image_size))
    info = json.loads((dataset / "meta" / "info.json").read_text())

    results: dict[str, dict] = {}
    for name in args.baselines:
        results[name] = cached(out / name / "result.json", lambda name=name: evaluate(name, None, out / name, args))
        print(json.dumps({name: results[name]["success"]}), file=sys.stderr, flush=True)
    for name in args.policies:
        spec = json.loads(json.dumps(policy_spec(name, args.image_size, args.chunk)))
        def run(name=name):
            trained = train(name, dataset, out / name / "train", args)
            return {**trained, **evaluate(name, trained["checkpoint"], out / name, args),
                    "latency": control_latency(trained["checkpoint"])}
        results[name] = cached(out / name / "result.json", run, key="spec", value=spec)
        print(json.dumps({name: results[name]["success"]}), file=sys.stderr, flush=True)

    def table(key):
        return {n: r[key] for n, r in results.items() if key in r}

    report = {
        "protocol": (f"one language-conditioned policy for all {len(args.families)} families; "
                     f"{info['total_episodes']} scripted demonstrations ({info['total_frames']} frames, "
                     f"{args.image_size}px front+wrist, joint actions), 10% of episodes held out for action error; "
                     f"{args.budget_min:g} min of training per policy (batch {args.batch_size}, lr {args.lr or 'per recipe'}, "
                     f"cosine schedule sized to the budget, {args.threads} CPU threads); "
                     f"{args.episodes_per_family} evaluation episodes per family on seeds disjoint from the "
                     f"demonstrations, {args.eval_episode_length} steps max"),
        "success": table("success"), "ci95": table("ci95"), "correct_object_rate": table("correct_object_rate"),
        "reached_rate": table("reached_rate"), "lifted_rate": table("lifted_rate"), "closest_cm": table("closest_cm"),
        "train_samples_per_s": table("train_samples_per_s"), "train_minutes": table("train_minutes"),
        "steps": table("steps"),
        "heldout_mae_ratio": {n: r["heldout"]["mae_ratio"] for n, r in results.items() if "heldout" in r},
        "latency": table("latency"),
    }
    report["goals"] = goals(report, args.families)
    report["total_minutes_this_call"] = round((time.perf_counter() - t0) / 60, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return report


def goals(r: dict, families: list[str]) -> dict:
    """The issue's goals, each one a check a broken policy fails (no `>=` between two zeros)."""
    s, ci = r["success"], r["ci95"]
    g: dict = {}
    if "vst_vla_flow" in s:
        flow = s["vst_vla_flow"]
        g["flow_ge_0.8_pick"] = {f: flow[f] >= 0.8 for f in ("pick_extreme", "pick_relation") if f in flow}
        g["flow_ge_0.5_place"] = {f: flow[f] >= 0.5 for f in ("place_relative", "put_in_container", "stack") if f in flow}
        if "blind_expert" in ci and "pick_relation" in flow:
            g["flow_above_blind_pick_relation"] = ci["vst_vla_flow"]["pick_relation"][0] > ci["blind_expert"]["pick_relation"][1]
        nulls = [b for b in ("do_nothing", "random") if b in ci]
        g["flow_lower_bound_above_nulls"] = {f: all(ci["vst_vla_flow"][f][0] > ci[b][f][1] for b in nulls) for f in flow}
    heads = [h for h in ("vst_vla_flow", "vst_vla_tokens") if h in s]
    if heads and "act" in s:
        g["best_vst_vla_ge_act_and_nonzero"] = {
            f: max(s[h][f] for h in heads) >= s["act"][f] and max(s[h][f] for h in heads) > 0 for f in families}
    sps = r["train_samples_per_s"]
    if "vst_vla_flow" in sps and "act" in sps:
        g["flow_samples_per_s_ge_2x_act"] = sps["vst_vla_flow"] >= 2 * sps["act"]
    g["nulls_zero"] = {b: all(v == 0 for v in s[b].values()) for b in ("do_nothing", "random") if b in s}
    return g


if __name__ == "__main__":
    main()
