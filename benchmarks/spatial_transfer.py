"""Spatial transfer: does a spatially tuned backbone make the same VLA recipe better at spatial tasks?

The paper's robotics result (VST, LIBERO): the same VLA recipe scores 53.1 on Qwen2.5-VL-3B and 61.7
on VST-3B (+8.6 points). This benchmark runs that experiment on our sim tasks, with everything but the
backbone held fixed:

- one recipe: the vst_vla flow-head CPU recipe of `benchmarks/policy.py` (`policy_spec("vst_vla_flow")`),
  one language-conditioned policy for all `--families`, the same wall-clock budget for every policy;
- backbones (folders written by `benchmarks/spatial_tuning.py`, read from `--backbones-from`):
  `untuned` (the preset's initialisation), `vst_sft` (stage 1), `vst_sft_cot_grpo` (stages 1-3), and
  the control `text_only_sft` (the same SFT on the same QA with every image blanked); `vst_sft_cot`
  (stages 1-2) on request;
- the same demonstrations: `--demos` sizes per family, collected once each (seeds 0, 1, ... per
  family; every smaller set is the first episodes of the larger one, checked), shared by every backbone
  and seed; 10 % of a set's episodes (drawn by the policy seed) are held out for the action error;
- `--seeds`: the policy seed (initialisation of everything the backbone does not bring, data order,
  held-out episodes); backbones are tuned once per kind;
- the same evaluation: `--episodes` per family on seeds disjoint from the demonstrations'
  (`vst-vla eval-policy`'s, checked), next to the spatially blind expert on the same seeds.

Every (backbone, demos, seed) cell is cached in `<out>/<backbone>/<demos>/seed<k>/result.json` with
the settings it ran with (backbone weights fingerprinted): a rerun skips finished cells, and a cell
whose settings changed is moved to `result.stale.json` and rerun. `<out>/table.md`,
`<out>/success_vs_demos.png` and `<out>/report.json` are rewritten at the end of every call.

    python benchmarks/spatial_transfer.py --plan       # what would run, and the estimated time
    python benchmarks/spatial_transfer.py              # CPU scale (see the defaults; about 90 min on 2 cores)
    python benchmarks/spatial_transfer.py --backbones untuned vst_sft --seeds 0   # a part; cached per cell
    python benchmarks/spatial_transfer.py --config spatial_transfer_paper        # paper scale (GPU, 3B)

`--config` reads a YAML file (a path, or a name under vst_vla/configs/ without .yaml) whose keys are
this script's options (`budget_min`, `episodes`, `device`, ...) plus `backbone_paths` {name: folder},
`policy_overrides` {field: value} for the recipe and `lr`; options given on the command line win.

CPU-scale defaults are far smaller than `benchmarks/policy.py`'s (20 min, 50 episodes): 1 min of
training per policy (about 140 steps of batch 16) and 8 evaluation episodes per family, so that
4 backbones x 3 seeds x 2 sizes, and collecting the 300 demonstrations, fit 90 minutes (`--plan`
estimates about 82); `--budget-min` and `--episodes` scale them up.

The LAST line of stdout is one JSON object: `success` and `correct_object_rate`
{backbone: {demos: {family: {mean, std, per_seed}}}} (std: sample std over seeds), `ci95` /
`correct_object_ci95` (Wilson 95 %, episodes pooled over seeds), `success_mean_over_families`,
`gain_points` {demos: (best VST-tuned - untuned) x 100, mean over families, the best backbone picked
by that mean}, `per_seed_gain`, `sign_consistent`, `best_tuned`, `gain_points_by_backbone`,
`blind_expert` {family: rate} (+ `blind_expert_ci95`), `goals` and `protocol`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/spatial_transfer.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.policy import cached, family_metrics, policy_spec, train_result  # noqa: E402
from vst_vla.policy.metrics import wilson_interval  # noqa: E402

# name -> folder under --backbones-from, as benchmarks/spatial_tuning.py writes them
BACKBONES = {
    "untuned": "untuned",
    "vst_sft": "stage1_sft/final",
    "vst_sft_cot": "stage2_cot/final",
    "vst_sft_cot_grpo": "stage3_grpo/final",
    "text_only_sft": "blind_sft/final",
}
DEFAULT_BACKBONES = ["untuned", "vst_sft", "vst_sft_cot_grpo", "text_only_sft"]
TUNED = ("vst_sft", "vst_sft_cot", "vst_sft_cot_grpo")  # VST-tuned: the candidates for "best tuned"
UNTUNED, CONTROL = "untuned", "text_only_sft"
SPATIAL_FAMILIES = ["pick_relation", "pick_extreme", "place_relative"]
PAPER_GAIN = 8.6  # LIBERO points, VST-3B over Qwen2.5-VL-3B with the same VLA recipe
POLICY = "vst_vla_flow"

# --plan's costs, measured on this 2-core CPU (112 px, two cameras, nothing else running): the scripted
# expert's mean episode length per family (benchmarks/policy.py's demonstrations), seconds per recorded
# frame (DART collection with video encoding), per decoded frame (frame cache), per evaluated step of the
# tiny flow policy (a chunk of 10 every 10 steps) and of the blind expert, and a policy's fixed cost
# (building it on the backbone, statistics, final held-out error, saving, loading for evaluation).
EXPERT_STEPS = {"pick_relation": 118, "pick_extreme": 115, "place_relative": 176, "put_in_container": 176,
                "stack": 149}
COST_S = {"collect_frame": 0.028, "cache_frame": 0.010, "eval_step": 0.010, "blind_step": 0.0024, "cell": 15.0}


# ----------------------------------------------------------------------------------------- options
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML of defaults (path, or a name under vst_vla/configs/)")
    p.add_argument("--backbones-from", default="outputs/bench/spatial_tuning",
                   help="benchmarks/spatial_tuning.py's --out: untuned/, stage1_sft/final, ...")
    p.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES), choices=list(BACKBONES))
    p.add_argument("--families", nargs="+", default=list(SPATIAL_FAMILIES))
    p.add_argument("--demos", nargs="+", type=int, default=[25, 100], help="demonstrations per family")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="policy seeds")
    p.add_argument("--budget-min", type=float, default=1.0, help="training minutes per policy")
    p.add_argument("--max-steps", type=int, default=100_000, help="training steps per policy, if the budget allows")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    p.add_argument("--image-size", type=int, default=112, help="camera size, demonstrations and policy (x28)")
    p.add_argument("--chunk", type=int, default=10)
    p.add_argument("--heldout-fraction", type=float, default=0.1)
    p.add_argument("--heldout-frames", type=int, default=128)
    p.add_argument("--episodes", type=int, default=8, help="evaluation episodes per family")
    p.add_argument("--eval-episode-length", type=int, default=250)
    p.add_argument("--recordings", type=int, default=0, help="mp4 + .rrd of the first N evaluation episodes per family")
    p.add_argument("--approach-noise-deg", type=float, default=5.0, help="DART noise of the demonstrations (0: clean)")
    p.add_argument("--demo-episode-length", type=int, default=300)
    p.add_argument("--keep-failed-demos", action="store_true", help="keep episodes the expert failed (smoke tests)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--drop-checkpoints", action="store_true",
                   help="delete each policy's weights once evaluated (optimizer states are always deleted)")
    p.add_argument("--out", default="outputs/bench/spatial_transfer")
    p.add_argument("--plan", action="store_true", help="print what would run and the estimated time, then exit")
    p.set_defaults(backbone_paths={}, policy_overrides={})
    return p


def read_config(name: str) -> dict:
    import yaml

    path = Path(name)
    if not path.is_file():
        path = REPO / "vst_vla" / "configs" / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        raise SystemExit(f"--config {name}: no such file, nor {path}")
    cfg = yaml.safe_load(path.read_text()) or {}
    if not isinstance(cfg, dict):
        raise SystemExit(f"--config {path}: expected a mapping of options")
    return cfg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    first = parser.parse_args(argv)
    if first.config:
        cfg = read_config(first.config)
        known = {a.dest for a in parser._actions} | {"backbone_paths", "policy_overrides"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise SystemExit(f"--config {first.config}: unknown keys {unknown}; known: {sorted(known - {'help'})}")
        unknown_backbones = sorted(set(cfg.get("backbone_paths") or {}) - set(BACKBONES))
        if unknown_backbones:
            raise SystemExit(f"--config {first.config}: backbone_paths {unknown_backbones}; known: {list(BACKBONES)}")
        parser.set_defaults(**cfg)
    args = parser.parse_args(argv)
    from lerobot_env_vst_vla import FAMILIES

    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        raise SystemExit(f"unknown families {unknown}; known: {sorted(FAMILIES)}")
    bad = [b for b in args.backbones if b not in BACKBONES]
    if bad:
        raise SystemExit(f"unknown backbones {bad}; known: {list(BACKBONES)}")
    args.demos, args.seeds = sorted(set(args.demos)), sorted(set(args.seeds))
    args.backbones = [b for b in BACKBONES if b in args.backbones]  # canonical order
    return args


# ----------------------------------------------------------------------------------------- backbones
def backbone_paths(args) -> dict[str, Path]:
    given = args.backbone_paths or {}
    return {name: Path(given.get(name) or Path(args.backbones_from) / BACKBONES[name])
            for name in args.backbones}


def missing_backbones(paths: dict[str, Path]) -> dict[str, Path]:
    return {name: p for name, p in paths.items() if not (p / "config.json").is_file()}


def check_backbones(paths: dict[str, Path], args) -> None:
    """Refuse to start (and say which command makes them) when a backbone folder is missing: this
    benchmark compares backbones, it never trains them itself."""
    missing = missing_backbones(paths)
    if not missing:
        return
    lines = [f"  {name}: {p} (no config.json)" for name, p in missing.items()]
    from_dir = [n for n in missing if n not in (args.backbone_paths or {})]
    hint = []
    if from_dir:
        hint.append(f"`python benchmarks/spatial_tuning.py --out {args.backbones_from}` writes "
                    + ", ".join(f"{BACKBONES[n]}/" for n in from_dir) + " (about 60 min on 2 CPU cores)")
    if len(from_dir) < len(missing):
        hint.append("point backbone_paths.<name> in the --config at a local Qwen2.5-VL checkpoint folder")
    hint.append(f"or leave them out with --backbones (present: {[n for n in paths if n not in missing]})")
    raise SystemExit("spatial_transfer: backbone folders missing:\n" + "\n".join(lines) + "\n" + "; ".join(hint))


def fingerprint(path: Path, edge: int = 1 << 16) -> str:
    """A cheap content fingerprint of a checkpoint folder: its config and, of every weight file, the size
    and the first and last 64 KiB (a retrained backbone changes it; a copied or moved one does not)."""
    h = hashlib.sha1((path / "config.json").read_bytes())
    for f in sorted(list(path.glob("*.safetensors")) + list(path.glob("*.bin"))):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(edge))
            fh.seek(max(0, size - edge))
            h.update(fh.read(edge))
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------- demonstrations
def demo_settings(args, n: int) -> dict:
    return {"families": list(args.families), "per_family": n, "image_size": args.image_size,
            "approach_noise_deg": args.approach_noise_deg, "episode_length": args.demo_episode_length,
            "only_successful": not args.keep_failed_demos, "seed": 0}


def demo_seeds(root: Path) -> dict[str, list[int]]:
    """Per family, the collection seeds of a dataset's episodes in episode order."""
    import gzip

    out: dict[str, list[int]] = {}
    for f in sorted((root / "meta" / "vst_scene").glob("episode_*.json.gz")):
        with gzip.open(f, "rt") as fh:
            meta = json.load(fh)
        out.setdefault(meta["task_family"], []).append(int(meta["seed"]))
    return out


def check_prefixes(seeds: dict[int, dict[str, list[int]]], families: list[str]) -> None:
    """Every size has exactly its count per family, and each smaller set is the start of every larger one."""
    sizes = sorted(seeds)
    for n in sizes:
        counts = {f: len(seeds[n].get(f, [])) for f in families}
        if any(c != n for c in counts.values()) or set(seeds[n]) - set(families):
            raise RuntimeError(f"demonstrations of size {n}: episodes per family {counts}, expected {n} each")
    for small, large in zip(sizes, sizes[1:]):
        for f in families:
            if seeds[large][f][:small] != seeds[small][f]:
                raise RuntimeError(f"{f}: the {small} demonstrations are not the first {small} of the {large}")


def prepare_demos(args, out: Path) -> dict[int, Path]:
    """One dataset per size under `<out>/demos/<n>`, each grown from the next smaller one (copied, then
    resumed by `vst-vla collect`, whose seeds are fixed per family and attempt), so the sets are nested."""
    from vst_vla.collect import CollectConfig, collect

    root = out / "demos"
    roots: dict[int, Path] = {}
    previous: Path | None = None
    for n in args.demos:
        ds, settings_file = root / str(n), root / f"{n}.json"
        mine = demo_settings(args, n)
        if ds.exists():
            stored = json.loads(settings_file.read_text()) if settings_file.is_file() else None
            if stored != mine:
                raise SystemExit(f"{ds} holds demonstrations collected with other settings ({stored} vs {mine}); "
                                 "use another --out or delete that folder")
        else:
            tmp = root / f".{n}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)  # an interrupted collection: start this size again
            if previous is not None:
                shutil.copytree(previous, tmp, ignore=shutil.ignore_patterns("cache"))
            collect(CollectConfig(root=str(tmp), tasks=list(args.families), episodes_per_task=n,
                                  image_size=args.image_size, approach_noise_deg=args.approach_noise_deg,
                                  episode_length=args.demo_episode_length,
                                  only_successful=not args.keep_failed_demos, resume=previous is not None))
            tmp.replace(ds)
            settings_file.write_text(json.dumps(mine, indent=2))
        roots[n] = previous = ds
    check_prefixes({n: demo_seeds(r) for n, r in roots.items()}, list(args.families))
    return roots


# ----------------------------------------------------------------------------------------- one cell
def recipe(args) -> dict:
    """The policy recipe every backbone gets: benchmarks/policy.py's vst_vla flow head (+ --config's overrides)."""
    ptype, fields, settings = policy_spec(POLICY, args.image_size, args.chunk)
    fields = {**fields, **(args.policy_overrides or {})}
    settings = {**settings, **({"lr": args.lr} if args.lr is not None else {})}
    return json.loads(json.dumps({"policy_type": ptype, "fields": fields, "train": settings}))


def eval_settings(args) -> dict:
    from vst_vla.seeds import EVAL_SEED_BASE

    return {"families": list(args.families), "episodes_per_family": args.episodes,
            "episode_length": args.eval_episode_length, "seed": EVAL_SEED_BASE, "image_size": args.image_size}


def cell_settings(args, backbone: str, fp: str, n: int, seed: int) -> dict:
    """What a cell's result depends on; a cached cell with other settings is rerun (threads, paths and
    the number of recordings do not count)."""
    return {"backbone": backbone, "backbone_fingerprint": fp, "recipe": recipe(args), "seed": seed,
            "demos": demo_settings(args, n), "heldout_fraction": args.heldout_fraction,
            "heldout_frames": args.heldout_frames,
            "training": {"budget_min": args.budget_min, "max_steps": args.max_steps, "batch_size": args.batch_size,
                         "device": args.device},
            "evaluation": eval_settings(args)}


def evaluate(checkpoint: str | None, out: Path, args, baseline: str | None = None) -> dict:
    from vst_vla.policy.evaluate import EvalPolicyConfig, evaluate_policy

    e = eval_settings(args)
    k = args.recordings if checkpoint else 0
    report = evaluate_policy(EvalPolicyConfig(
        policy_path=checkpoint or "", baseline=baseline, tasks=e["families"], episodes_per_family=e["episodes_per_family"],
        episode_length=e["episode_length"], seed=e["seed"], device=args.device, output_dir=str(out),
        videos_per_family=k, rerun_per_family=k, image_size=args.image_size))
    return family_metrics(report)


def run_cell(backbone: Path, dataset: Path, cell: Path, seed: int, args) -> dict:
    """Train the recipe on `backbone` with policy seed `seed`, then roll it out; the cell's result."""
    from vst_vla.policy.train import TrainPolicyConfig, train_policy

    r = recipe(args)
    cfg = TrainPolicyConfig(dataset_root=str(dataset), policy_type=r["policy_type"], policy_overrides=r["fields"],
                            backbone_path=str(backbone), steps=args.max_steps, max_minutes=args.budget_min,
                            batch_size=args.batch_size, output_dir=str(cell / "train"), save_freq=args.max_steps + 1,
                            log_freq=50, eval_freq=0, heldout_fraction=args.heldout_fraction,
                            heldout_frames=args.heldout_frames, seed=seed, device=args.device, threads=args.threads,
                            **r["train"])
    result = train_result(train_policy(cfg), cell / "train")
    result["heldout_mae_ratio"] = result.pop("heldout").get("mae_ratio")
    result.update(evaluate(result["checkpoint"], cell / "eval", args))
    for state in (cell / "train" / "checkpoints").glob("*/training_state.pt"):
        state.unlink()  # optimizer states: only needed to resume training, which a cell never does
    if args.drop_checkpoints:
        shutil.rmtree(cell / "train" / "checkpoints", ignore_errors=True)
    return result


def cached_cell(path: Path, settings: dict, make) -> dict:
    """A cell's result, rerun (the old one kept as result.stale.json) when its settings changed."""
    return cached(path, make, key="settings", value=settings)


def is_cached(path: Path, settings: dict) -> bool:
    return path.is_file() and json.loads(path.read_text()).get("settings") == settings


# ----------------------------------------------------------------------------------------- aggregation
def _stats(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "per_seed": [round(v, 4) for v in values]}


def _pooled_ci(cells: list[dict], count_key: str, family: str) -> list[float]:
    k = sum(c[count_key][family] for c in cells)
    n = sum(c["episodes"][family] for c in cells)
    return [round(x, 4) for x in wilson_interval(k, n)]


def aggregate(cells: dict[tuple[str, int, int], dict], blind: dict, backbones: list[str], demos: list[int],
              seeds: list[int], families: list[str]) -> dict:
    """The report's numbers from the cells (keyed (backbone, demos, seed)) and the blind expert's result.
    Demonstration counts are string keys (as JSON has them)."""
    out: dict = {k: {} for k in ("success", "correct_object_rate", "ci95", "correct_object_ci95",
                                 "success_mean_over_families", "heldout_mae_ratio", "closest_cm", "steps")}
    raw: dict[tuple[str, str], list[float]] = {}  # per seed, success averaged over families, unrounded
    for b in backbones:
        for key in out:
            out[key][b] = {}
        for n in demos:
            runs = [cells[(b, n, s)] for s in seeds]
            d = str(n)
            out["success"][b][d] = {f: _stats([r["success"][f] for r in runs]) for f in families}
            out["correct_object_rate"][b][d] = {f: _stats([r["correct_object_rate"][f] for r in runs]) for f in families}
            out["ci95"][b][d] = {f: _pooled_ci(runs, "success_count", f) for f in families}
            out["correct_object_ci95"][b][d] = {f: _pooled_ci(runs, "correct_object_count", f) for f in families}
            raw[(b, d)] = [statistics.fmean(r["success"][f] for f in families) for r in runs]
            out["success_mean_over_families"][b][d] = _stats(raw[(b, d)])
            out["closest_cm"][b][d] = {f: round(statistics.fmean(r["closest_cm"][f] for r in runs), 2) for f in families}
            held = [r["heldout_mae_ratio"] for r in runs if r.get("heldout_mae_ratio") is not None]
            out["heldout_mae_ratio"][b][d] = round(statistics.fmean(held), 4) if held else None
            out["steps"][b][d] = [r["steps"] for r in runs]
    def gain(b: str, d: str) -> tuple[float, list[float]]:
        diffs = [100 * (x - y) for x, y in zip(raw[(b, d)], raw[(UNTUNED, d)], strict=True)]
        return round(statistics.fmean(diffs), 2), [round(x, 2) for x in diffs]

    tuned = [b for b in TUNED if b in backbones]
    out.update(gain_points={}, per_seed_gain={}, sign_consistent={}, best_tuned={}, gain_points_by_backbone={})
    for n in demos:
        d = str(n)
        if UNTUNED not in backbones or not tuned:
            out["gain_points"][d] = out["best_tuned"][d] = out["sign_consistent"][d] = None
            out["per_seed_gain"][d] = []
            continue
        best = max(tuned, key=lambda b: statistics.fmean(raw[(b, d)]))  # ties: the earlier stage
        g, per_seed = gain(best, d)
        out["best_tuned"][d], out["gain_points"][d], out["per_seed_gain"][d] = best, g, per_seed
        out["sign_consistent"][d] = bool(g > 0 and all(x > 0 for x in per_seed) or
                                         g < 0 and all(x < 0 for x in per_seed))
    if UNTUNED in backbones:
        out["gain_points_by_backbone"] = {b: {str(n): gain(b, str(n))[0] for n in demos}
                                          for b in backbones if b != UNTUNED}
    out["blind_expert"] = {f: blind["success"][f] for f in families}
    out["blind_expert_ci95"] = {f: blind["ci95"][f] for f in families}
    out["blind_expert_correct_object"] = {f: blind["correct_object_rate"][f] for f in families}
    out["goals"] = goals(out, backbones, demos)
    return out


def goals(r: dict, backbones: list[str], demos: list[int]) -> dict:
    """The issue's goals, each a check that fails on equal numbers (0 vs 0 is no gain)."""
    small = str(min(demos))
    mean = r["success_mean_over_families"]
    tuned = [b for b in TUNED if b in backbones]
    g: dict = {"demos": small}
    gain = r["gain_points"].get(small)
    g[f"gain_ge_{PAPER_GAIN}"] = None if gain is None else bool(gain >= PAPER_GAIN)
    g["gain_positive_in_every_seed"] = None if gain is None else bool(gain > 0 and r["sign_consistent"][small])
    g["tuned_above_text_only"] = ({str(n): all(mean[b][str(n)]["mean"] > mean[CONTROL][str(n)]["mean"] for b in tuned)
                                   for n in demos} if tuned and CONTROL in backbones else None)
    parts = [g[f"gain_ge_{PAPER_GAIN}"], g["gain_positive_in_every_seed"],
             None if g["tuned_above_text_only"] is None else g["tuned_above_text_only"][small]]
    g["met"] = None if None in parts else all(parts)
    return g


# ----------------------------------------------------------------------------------------- outputs
def _fmt(s: dict, ci: list[float]) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def markdown_table(r: dict, families: list[str]) -> str:
    lines = ["Success: mean ± std over seeds [Wilson 95 % interval, episodes pooled over seeds]; correct object "
             "the same.", "",
             "| backbone | demos/family | " + " | ".join(families) + " | mean | correct object (" +
             ", ".join(families) + ") |",
             "|---|---|" + "---|" * len(families) + "---|---|"]
    for b, by_demos in r["success"].items():
        for d, fam in by_demos.items():
            m = r["success_mean_over_families"][b][d]
            co = ", ".join(f"{r['correct_object_rate'][b][d][f]['mean']:.2f}" for f in families)
            lines.append(f"| `{b}` | {d} | " + " | ".join(_fmt(fam[f], r["ci95"][b][d][f]) for f in families) +
                         f" | {m['mean']:.2f} ± {m['std']:.2f} | {co} |")
    blind = r["blind_expert"]
    lines.append("| blind expert | — | " + " | ".join(
        f"{blind[f]:.2f} [{r['blind_expert_ci95'][f][0]:.2f}, {r['blind_expert_ci95'][f][1]:.2f}]" for f in families) +
        f" | {statistics.fmean(blind.values()):.2f} | " +
        ", ".join(f"{r['blind_expert_correct_object'][f]:.2f}" for f in families) + " |")
    lines += ["", "| demos/family | best VST-tuned | gain (points) | per seed | same sign in every seed |",
              "|---|---|---|---|---|"]
    for d, g in r["gain_points"].items():
        lines.append(f"| {d} | {r['best_tuned'][d]} | {g} | {r['per_seed_gain'][d]} | {r['sign_consistent'][d]} |")
    lines += ["", f"Goals: `{json.dumps(r['goals'])}`", ""]
    return "\n".join(lines)


def plot(r: dict, families: list[str], path: Path, title: str) -> None:
    """Success vs demonstrations per family and averaged over them, one line per backbone (error bars:
    std over seeds), the blind expert dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [*families, "mean over families"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), sharey=True, squeeze=False)
    backbones = list(r["success"])
    for ax, panel in zip(axes[0], panels, strict=True):
        for i, b in enumerate(backbones):
            demos = sorted(r["success"][b], key=int)
            stats = [r["success_mean_over_families"][b][d] if panel not in families else r["success"][b][d][panel]
                     for d in demos]
            x = [int(d) * 1.04 ** (i - (len(backbones) - 1) / 2) for d in demos]  # side by side on a log axis
            ax.errorbar(x, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], marker="o", capsize=3,
                        label=b, linestyle="-." if b == CONTROL else "-")
        blind = statistics.fmean(r["blind_expert"].values()) if panel not in families else r["blind_expert"][panel]
        ax.axhline(blind, color="black", linestyle="--", linewidth=1.2, label="blind expert")
        ax.set_xscale("log")
        ticks = sorted({int(d) for b in backbones for d in r["success"][b]})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_title(panel)
        ax.set_xlabel("demonstrations per family")
        ax.set_ylim(-0.05, 1.05)
    axes[0][0].set_ylabel("success rate")
    axes[0][-1].legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- plan
def plan(args, paths: dict[str, Path], out: Path) -> dict:
    """Cells to run (cached ones skipped) and the estimated minutes, from COST_S (this 2-core CPU)."""
    missing = missing_backbones(paths)
    steps = sum(EXPERT_STEPS.get(f, 150) for f in args.families)  # one demonstration of each family
    have = max([n for n in args.demos if (out / "demos" / str(n)).is_dir()], default=0)
    collect_s = (max(args.demos) - have) * steps * COST_S["collect_frame"] / 0.97  # ~3 % of expert episodes fail
    cache_s = sum(n for n in args.demos if not (out / "demos" / str(n) / "cache").is_dir()) * steps * COST_S["cache_frame"]
    cells, done = 0, 0
    for b in args.backbones:
        fp = None if b in missing else fingerprint(paths[b])
        for n in args.demos:
            for s in args.seeds:
                cells += 1
                done += fp is not None and is_cached(out / b / str(n) / f"seed{s}" / "result.json",
                                                     cell_settings(args, b, fp, n, s))
    todo = cells - done
    eval_s = len(args.families) * args.episodes * args.eval_episode_length
    blind_done = is_cached(out / "blind_expert" / "result.json", {"evaluation": eval_settings(args)})
    minutes = {"collect": collect_s / 60, "frame_cache": cache_s / 60, "train": todo * args.budget_min,
               "policy_overhead": todo * COST_S["cell"] / 60, "evaluate": todo * eval_s * COST_S["eval_step"] / 60,
               "blind_expert": 0 if blind_done else eval_s * COST_S["blind_step"] / 60}
    minutes["total"] = sum(minutes.values())
    return {"cells": cells, "cached": done, "to_run": todo, "minutes": {k: round(v, 1) for k, v in minutes.items()},
            "missing_backbones": {k: str(v) for k, v in missing.items()},
            "basis": f"costs of the CPU recipe measured on a 2-core CPU at 112 px with nothing else running "
                     f"(a shared CPU is slower, a larger image or backbone far slower); device={args.device}"}


# ----------------------------------------------------------------------------------------- main
def protocol(args, paths: dict[str, Path], demo_roots: dict[int, Path]) -> dict:
    from vst_vla.seeds import episode_seed

    e = eval_settings(args)
    return {
        "recipe": recipe(args),
        "backbones": {b: str(p) for b, p in paths.items()},
        "demonstrations": {"per_family": args.demos, "roots": {str(n): str(p) for n, p in demo_roots.items()},
                           **{k: v for k, v in demo_settings(args, 0).items() if k != "per_family"},
                           "nested": "each smaller set is the first episodes of every larger one (checked)",
                           "heldout_fraction": args.heldout_fraction},
        "seeds": args.seeds,
        "training": {"budget_min": args.budget_min, "max_steps": args.max_steps, "batch_size": args.batch_size,
                     "threads": args.threads, "device": args.device, "schedule": "cosine sized to the budget"},
        "evaluation": {**e, "seeds": {f: [episode_seed(e["seed"], f, 0), episode_seed(e["seed"], f, args.episodes - 1)]
                                      for f in args.families},
                       "same_for": "every backbone, seed and size, and the blind expert"},
        "std": "sample standard deviation over seeds", "ci95": "Wilson, episodes pooled over seeds",
        "gain": "mean over families of (best VST-tuned - untuned) x 100; best by that mean",
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    paths = backbone_paths(args)
    if args.plan:
        p = plan(args, paths, out)
        print(f"{p['to_run']} of {p['cells']} cells to run; about {p['minutes']['total']:.0f} min "
              f"({p['basis']})", file=sys.stderr)
        if p["missing_backbones"]:
            print(f"missing backbones: {p['missing_backbones']} (the run would refuse to start)", file=sys.stderr)
        print(json.dumps({"plan": p}))
        return {"plan": p}
    check_backbones(paths, args)
    t0 = time.perf_counter()
    fps = {b: fingerprint(p) for b, p in paths.items()}
    demo_roots = prepare_demos(args, out)

    blind = cached_cell(out / "blind_expert" / "result.json", {"evaluation": eval_settings(args)},
                        lambda: evaluate(None, out / "blind_expert" / "eval", args, baseline="blind_expert"))
    print(json.dumps({"blind_expert": blind["success"]}), file=sys.stderr, flush=True)
    cells: dict[tuple[str, int, int], dict] = {}
    for n in args.demos:  # smaller sets first: a partial run already has a whole size
        for s in args.seeds:
            for b in args.backbones:
                cell = out / b / str(n) / f"seed{s}"
                cells[(b, n, s)] = cached_cell(cell / "result.json", cell_settings(args, b, fps[b], n, s),
                                               lambda b=b, n=n, s=s, cell=cell: run_cell(paths[b], demo_roots[n],
                                                                                          cell, s, args))
                print(json.dumps({"cell": [b, n, s], "success": cells[(b, n, s)]["success"]}), file=sys.stderr,
                      flush=True)

    report = aggregate(cells, blind, args.backbones, args.demos, args.seeds, list(args.families))
    report["protocol"] = protocol(args, paths, demo_roots)
    report["minutes_this_call"] = round((time.perf_counter() - t0) / 60, 1)
    title = (f"{POLICY} recipe, {args.budget_min:g} min/policy, {len(args.seeds)} seeds, "
             f"{args.episodes} eval episodes/family/seed")
    plot(report, list(args.families), out / "success_vs_demos.png", title)
    (out / "table.md").write_text(f"# Spatial transfer ({title})\n\n" + markdown_table(report, list(args.families)))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    report["files"] = {"table": str(out / "table.md"), "plot": str(out / "success_vs_demos.png"),
                       "report": str(out / "report.json")}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
