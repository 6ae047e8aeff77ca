"""Spatial data engine: throughput over mixed skills, and the answer balance of the held-out split.

    MUJOCO_GL=egl LP_NUM_THREADS=1 python benchmarks/spatial_data.py [--per-skill 30] [--test-per-skill 30]

(LP_NUM_THREADS=1 keeps Mesa's llvmpipe renderer on one thread: a strict one-core measurement.)

One process, one reused env per task family, start-up (env and GL context creation, wrist IK poses)
excluded. `samples_per_s` is wall-clock generation (render + questions + prompts + CoT) with every new
image PNG-encoded in memory; `samples_per_cpu_s` divides by the process's CPU time instead (all
threads, llvmpipe's included): samples per CPU-second, less sensitive to other load on the machine.
`blind_prior_accuracy`: on the test split's multiple-choice questions, always answer the letter that is
most often correct for that skill in the train split; `chance_accuracy` = mean of 1 / #options.
The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402

from vst_vla.spatial.dataset import png_params  # noqa: E402
from vst_vla.spatial.evaluate import blind_prior  # noqa: E402
from vst_vla.spatial.generate import generate_samples  # noqa: E402
from vst_vla.spatial.perception import SKILLS  # noqa: E402
from vst_vla.spatial.perception.sim import SimScenes  # noqa: E402


PNG = png_params(1)  # what `vst-vla spatial-data` writes with


def run_split(source, split: str, per_skill: int, seed: int) -> tuple[list, float, float]:
    """Generate a split in memory, PNG-encoding each new image; returns (samples, wall s, cpu s)."""
    samples, written = [], set()
    wall, cpu = time.perf_counter(), time.process_time()
    for sample, ctx in generate_samples(source, list(SKILLS), per_skill, seed, split, max_per_scene=3,
                                        cot_fraction=0.2 if split == "train" else 0.0):
        for img in sample.pixels:
            key = (ctx.scene_id, img.key)
            if img.key is None or key not in written:
                ok, _ = cv2.imencode(".png", img.array[:, :, ::-1], PNG)
                assert ok
                written.add(key)
        samples.append(sample)
    return samples, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-skill", type=int, default=30)
    ap.add_argument("--test-per-skill", type=int, default=30)
    ap.add_argument("--size", default="320x240")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    t0 = time.perf_counter()
    source = SimScenes(width, height)
    source.warm_up()
    startup = time.perf_counter() - t0

    train, wall, cpu = run_split(source, "train", args.per_skill, seed=0)
    test, test_wall, test_cpu = run_split(source, "test", args.test_per_skill, seed=1234)
    prior, chance, n_mc = blind_prior(*([{"skill": s.skill, "answer_type": s.answer_type, "ground_truth": s.ground_truth}
                                          for s in split] for split in (train, test)))
    n = len(train) + len(test)
    result = {
        "samples_per_s": round(n / (wall + test_wall), 1),
        "samples_per_cpu_s": round(n / (cpu + test_cpu), 1),
        "samples": n,
        "skills": len({s.skill for s in train + test}),
        "scenarios": sorted({s.scenario for s in train + test}),
        "blind_prior_accuracy": round(prior, 4),
        "chance_accuracy": round(chance, 4),
        "blind_minus_chance_points": round(100 * (prior - chance), 2),
        "test_multiple_choice": n_mc,
        "image_size": [width, height],
        "startup_s": round(startup, 1),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
