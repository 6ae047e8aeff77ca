"""Scripted-expert success rate per task family.

Runs `run_expert_episode` on seeds `seed_start .. seed_start + seeds - 1` of every family with
agent_pos observations (no rendering), prints progress and every failing seed (with its instruction
and step count) to stderr, and prints one JSON object `{"<family>": success_rate, ...}` as the last
line of stdout. `--failures-out PATH` also writes the failing seeds as JSON for whoever fixes the expert.

    python benchmarks/expert_success.py --seeds 100
    python benchmarks/expert_success.py --seeds 20 --families stack pick_relation --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("MUJOCO_GL", "egl")


def _run_family_chunk(family: str, seeds: list[int], episode_length: int | None) -> list[dict]:
    from lerobot_env_vst_vla import SpatialTabletopEnv, run_expert_episode

    env = SpatialTabletopEnv(task=family, obs_type="agent_pos")
    out = []
    try:
        for seed in seeds:
            t0 = time.perf_counter()
            try:
                r = run_expert_episode(env, seed, max_steps=episode_length)
            except Exception as err:  # an expert or env crash is a failure to report, not a benchmark crash
                r = {"success": False, "steps": 0, "instruction": env.task_description, "error": repr(err)}
            r.update(family=family, seed=seed, seconds=round(time.perf_counter() - t0, 3))
            out.append(r)
    finally:
        env.close()
    return out


def main(argv: list[str] | None = None) -> dict:
    from lerobot_env_vst_vla import FAMILIES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=100, help="episodes (seeds) per family")
    p.add_argument("--seed-start", type=int, default=0, help="first seed")
    p.add_argument("--families", nargs="*", default=sorted(FAMILIES), help="task families (default: all)")
    p.add_argument("--episode-length", type=int, default=None, help="max steps per episode (default: the env's)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--chunk", type=int, default=10, help="seeds per work item when --workers > 1")
    p.add_argument("--failures-out", default=None, help="write failing seeds as JSON to this path")
    args = p.parse_args(argv)
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}; known: {sorted(FAMILIES)}")

    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    jobs = [(f, seeds[i: i + args.chunk]) for f in args.families for i in range(0, len(seeds), args.chunk)]
    results: list[dict] = []
    t0 = time.perf_counter()
    total = len(args.families) * len(seeds)

    def report(batch: list[dict]) -> None:
        results.extend(batch)
        for r in batch:
            if not r["success"]:
                extra = f" error={r['error']}" if "error" in r else ""
                print(f"FAIL {r['family']} seed={r['seed']} steps={r['steps']}: {r['instruction']!r}{extra}",
                      file=sys.stderr, flush=True)
        done = len(results)
        print(f"[{done}/{total}] {batch[-1]['family']} {time.perf_counter() - t0:.0f}s elapsed",
              file=sys.stderr, flush=True)

    if args.workers <= 1:
        for family, chunk in jobs:
            report(_run_family_chunk(family, chunk, args.episode_length))
    else:
        with ProcessPoolExecutor(args.workers) as pool:
            futures = [pool.submit(_run_family_chunk, f, c, args.episode_length) for f, c in jobs]
            for fut in futures:
                report(fut.result())

    rates = {}
    for family in args.families:
        rs = [r for r in results if r["family"] == family]
        rates[family] = round(sum(r["success"] for r in rs) / len(rs), 4)
        steps = sorted(r["steps"] for r in rs)
        print(f"{family}: {rates[family]:.2%} over {len(rs)} seeds, median {steps[len(steps) // 2]} steps",
              file=sys.stderr, flush=True)
    failures = [{k: r[k] for k in ("family", "seed", "steps", "instruction", *(["error"] if "error" in r else []))}
                for r in results if not r["success"]]
    if args.failures_out:
        with open(args.failures_out, "w") as f:
            json.dump({"rates": rates, "seeds": [seeds[0], seeds[-1]], "failures": failures}, f, indent=1)
    print(f"total {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    print(json.dumps(rates), flush=True)
    return rates


if __name__ == "__main__":
    main()
