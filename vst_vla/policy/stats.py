"""Dataset-global statistics for the low-dimensional features (`observation.state`, `action`).

LeRobot 0.6.1 stores a dataset's quantiles as the count-weighted mean of per-episode quantiles
(`lerobot/datasets/compute_stats.py`, `aggregate_feature_stats`). When episodes cover different
ranges, as ours do (the target's position sets the pan angle), that range is far too narrow: a third
to two thirds of the arm's actions fell outside the stored q01/q99, and the tokens head, which clamps
normalised actions to [-1, 1], could never command them. Here the statistics are computed exactly,
over every frame, and written back to `meta/stats.json`: by `vst-vla collect` when it finishes, and
by `ensure_global_stats` (training calls it) for any dataset whose stored quantiles miss its data.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from vst_vla.atomic import write_text_atomic

log = logging.getLogger(__name__)

LOW_DIM_KEYS = ("observation.state", "action")
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STATS_FILE = Path("meta") / "stats.json"
# q01/q99 leave 1 % out on each side by definition; more than this outside means the stats are wrong.
MAX_OUTSIDE = 0.05


def read_low_dim(root: str | Path, keys: tuple[str, ...] = LOW_DIM_KEYS) -> dict[str, np.ndarray]:
    """Every frame's values of `keys`, (N, D) float64, from the dataset's parquet files."""
    files = sorted((Path(root) / "data").glob("**/*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root}: no data/**/*.parquet files (not a LeRobotDataset v3 folder?)")
    columns: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for f in files:
        table = pq.read_table(f, columns=list(keys))
        for k in keys:
            columns[k].append(np.asarray(table.column(k).to_pylist(), dtype=np.float64))
    return {k: np.concatenate(v) for k, v in columns.items()}


def exact_stats(values: np.ndarray) -> dict[str, list[float]]:
    """min/max/mean/std/count and exact quantiles over all frames, in LeRobot's stats.json layout."""
    out = {"min": values.min(0), "max": values.max(0), "mean": values.mean(0), "std": values.std(0),
           "count": np.array([len(values)])}
    out.update({name: np.quantile(values, q, axis=0) for name, q in QUANTILES.items()})
    return {k: v.tolist() for k, v in out.items()}


def fraction_outside(values: np.ndarray, low, high) -> np.ndarray:
    """Per dimension, the share of frames outside [low, high]."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    return ((values < low - 1e-9) | (values > high + 1e-9)).mean(0)


def coverage_problems(stats: dict, values: dict[str, np.ndarray]) -> dict[str, str]:
    """Which low-dim features the stored statistics fail to describe, and how."""
    problems = {}
    for key, v in values.items():
        s = stats.get(key)
        if s is None:
            problems[key] = "no statistics"
            continue
        missing = [name for name in ("min", "max", "mean", "std", "q01", "q99") if name not in s]
        if missing:
            problems[key] = f"missing {missing}"
            continue
        outside = fraction_outside(v, s["q01"], s["q99"])
        if outside.max() > MAX_OUTSIDE:
            problems[key] = (f"{100 * outside.max():.0f}% of frames outside the stored q01/q99 in dimension "
                             f"{int(outside.argmax())} (expected ≈2%)")
    return problems


def load_stats_json(root: str | Path) -> dict:
    path = Path(root) / STATS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_stats_json(root: str | Path, stats: dict) -> None:
    """Atomic: a crash mid-write leaves the old file, never half a file."""
    write_text_atomic(Path(root) / STATS_FILE, json.dumps(stats, indent=2))


def write_global_stats(root: str | Path) -> dict:
    """Replace the low-dim statistics in meta/stats.json by exact dataset-global ones (images untouched)."""
    values = read_low_dim(root)
    stats = load_stats_json(root)
    for key, v in values.items():
        stats[key] = exact_stats(v)
    write_stats_json(root, stats)
    return stats


def ensure_global_stats(root: str | Path) -> dict:
    """Check the stored statistics against the data; repair (and say so) when they do not cover it."""
    values = read_low_dim(root)
    stats = load_stats_json(root)
    problems = coverage_problems(stats, values)
    if problems:
        for key, why in problems.items():
            log.warning("dataset %s: statistics of %r are wrong (%s): recomputing them over all frames", root, key, why)
        stats = write_global_stats(root)
        still = coverage_problems(stats, values)
        if still:  # exact quantiles always cover all but 2 %: anything else is a bug, not bad data
            raise RuntimeError(f"{root}: statistics still do not cover the data after repair: {still}")
    return stats


def relative_action_stats(state: np.ndarray, action: np.ndarray, episode: np.ndarray, chunk: int,
                          relative_mask: list[bool]) -> dict[str, list[float]]:
    """Statistics of relative action chunks (action[t+k] − state[t] where the mask is set, k < chunk,
    within an episode): what a policy with `use_relative_actions` normalises. Exact, over every chunk.
    Frames must be in dataset order (episode, then frame), as `data.read_episode_table` gives them."""
    mask = np.zeros(action.shape[1], dtype=bool)
    mask[: len(relative_mask)] = relative_mask
    rows = []
    for k in range(chunk):
        same = np.r_[episode[k:] == episode[: len(episode) - k], np.zeros(k, dtype=bool)]
        t = np.flatnonzero(same)
        rel = action[t + k].astype(np.float64)
        rel[:, mask] -= state[t][:, mask]
        rows.append(rel)
    return exact_stats(np.concatenate(rows))
