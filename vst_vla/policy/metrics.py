"""Per-episode metrics that move before success does, and their per-family summary.

A policy that scores 0 % may still be learning: it may reach the right object and fail the grasp, or
grasp the wrong twin. Each rollout therefore records the closest approach of the grasp site to the
target, whether it reached it, which object it grasped first, whether that choice was the correct
one, whether it lifted the target, and success. Binary metrics are summarised with Wilson intervals.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

REACH_CM = 2.0  # the grasp site came this close to the target's centre
BINARY = ("success", "reached", "correct_object", "lifted")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


class EpisodeMetrics:
    """Updated after every env step; `result()` at the end of the episode."""

    def __init__(self, env):
        self.env = env
        ep = env.episode
        self.target = ep.target
        self.choices = env.family.lookalikes(ep)
        self.correct = next(i for i, c in enumerate(self.choices)
                            if c["target"] == ep.target and c["place_xy"] == ep.place_xy)
        self.closest = math.inf
        self.first_grasped: int | None = None

    def update(self) -> None:
        env = self.env
        d = float(np.linalg.norm(env.data.site("grasp").xpos - env.object_position(self.target)))
        self.closest = min(self.closest, d)
        if self.first_grasped is None:
            for k, obj in enumerate(env.episode.objects):
                if obj.shape not in ("bowl", "plate") and env.is_held(k):
                    self.first_grasped = k
                    break

    def _chosen(self) -> int | None:
        """Which look-alike choice the episode ended up making: by the object grasped first (pick the
        right twin), or by where the carried object came to rest (the right container, side or base)."""
        by_target = len({c["target"] for c in self.choices}) > 1
        if by_target:
            ids = [c["target"] for c in self.choices]
            return ids.index(self.first_grasped) if self.first_grasped in ids else None
        if self.first_grasped != self.target or not self.env.was_lifted(self.target):
            return None
        xy = self.env.object_position(self.target)[:2]
        dists = [np.linalg.norm(xy - np.asarray(c["place_xy"])) for c in self.choices]
        return int(np.argmin(dists))

    def result(self, success: bool) -> dict:
        return {"success": bool(success), "closest_cm": round(100 * self.closest, 2),
                "reached": bool(100 * self.closest <= REACH_CM), "first_grasped": self.first_grasped,
                "correct_object": self._chosen() == self.correct, "lifted": self.env.was_lifted(self.target)}


def summarise(episodes: list[dict], confidence: float = 0.95) -> dict:
    """Rates with Wilson intervals for the binary metrics, the mean closest approach, the episode count."""
    n = len(episodes)
    out: dict = {"n_episodes": n}
    for key in BINARY:
        k = sum(bool(e.get(key)) for e in episodes)
        low, high = wilson_interval(k, n, confidence)
        out[key] = {"rate": k / n if n else 0.0, "count": k, "ci95": [round(low, 4), round(high, 4)]}
    out["closest_cm_mean"] = round(float(np.mean([e["closest_cm"] for e in episodes])), 2) if n else None
    # the fields earlier reports had, kept for readers of eval.json
    out["successes"], out["success_rate"] = out["success"]["count"], out["success"]["rate"]
    out["ci_low"], out["ci_high"] = out["success"]["ci95"]
    return out
