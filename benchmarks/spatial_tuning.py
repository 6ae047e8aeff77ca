"""The CPU preset of VST's three stages end to end, measured on the held-out sim spatial benchmark.

build tiny -> SFT (perception) -> CoT SFT (reasoning) -> GRPO (rule-checkable, VST reward), and the
untuned model, the model after SFT and after GRPO answer the test split. Prints one JSON object as its
last line: per-skill-group (scenario) and per-skill accuracy for each model, the blind-prior accuracy
(most frequent train answer per skill) on the multiple-choice questions, the mean GRPO reward over the
first and last 10 % of steps, and wall time. Goal (issue): MC accuracy after SFT >= blind prior + 15
points averaged over skills; GRPO raises the mean reward.

    python benchmarks/spatial_tuning.py                    # the CPU preset (about 30 min on 2 cores)
    python benchmarks/spatial_tuning.py --sft-steps 100    # shorter
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from vst_vla.backbone import BackboneConfig, build_backbone  # noqa: E402
from vst_vla.spatial.dataset import SpatialDataConfig, generate_dataset, load_dataset  # noqa: E402
from vst_vla.spatial.evaluate import SpatialEvalConfig, run_eval  # noqa: E402
from vst_vla.tuning.common import RunSettings  # noqa: E402
from vst_vla.tuning.grpo import GRPOConfig, reward_summary, train_grpo  # noqa: E402
from vst_vla.tuning.sft import SFTConfig, train_sft  # noqa: E402


def blind_prior(data: Path) -> float:
    """Accuracy of always giving the most frequent train answer of the question's skill (MC only)."""
    ds = load_dataset(data)
    train = [r for r in ds["train"] if r["answer_type"] == "multiple_choice" and not r["cot"]]
    test = [r for r in ds["test"] if r["answer_type"] == "multiple_choice"]
    most = {s: Counter(json.loads(r["ground_truth"])["choice"] for r in train if r["skill"] == s).most_common(1)
            for s in {r["skill"] for r in test}}
    per_skill = defaultdict(list)
    for r in test:
        guess = most[r["skill"]][0][0] if most[r["skill"]] else "A"
        per_skill[r["skill"]].append(guess == json.loads(r["ground_truth"])["choice"])
    return sum(sum(v) / len(v) for v in per_skill.values()) / len(per_skill)


def summarize(result: dict, data: Path) -> dict:
    ds = load_dataset(data)["test"]
    scenario = {r["skill"]: r["scenario"] for r in ds}
    mc_skills = {r["skill"] for r in ds if r["answer_type"] == "multiple_choice"}
    skills = result["skills"]
    groups = defaultdict(list)
    for s, v in skills.items():
        groups[scenario[s]].append(v["score"])
    mc = [skills[s]["accuracy"] for s in mc_skills if s in skills]
    return {"score": round(result["score"], 4),
            "mc_accuracy": round(sum(mc) / len(mc), 4) if mc else None,
            "groups": {g: round(sum(v) / len(v), 4) for g, v in groups.items()},
            "skills": {s: round(v["score"], 4) for s, v in skills.items()}}


def evaluate(model: Path, data: Path, out: Path, name: str, max_new_tokens: int) -> dict:
    result = run_eval(SpatialEvalConfig(dataset=str(data), split="test", model=str(model),
                                        max_new_tokens=max_new_tokens, batch_size=16,
                                        predictions=str(out / f"pred_{name}.jsonl"), output=str(out / f"eval_{name}.json")))
    return summarize(result, data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/bench/spatial_tuning")
    ap.add_argument("--train-per-skill", type=int, default=120)
    ap.add_argument("--test-per-skill", type=int, default=20)
    ap.add_argument("--image", type=int, nargs=2, default=[160, 120])
    ap.add_argument("--sft-steps", type=int, default=600)
    ap.add_argument("--cot-steps", type=int, default=100)
    ap.add_argument("--grpo-steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    generate_dataset(SpatialDataConfig(output=str(data), samples_per_skill=args.train_per_skill,
                                       test_samples_per_skill=args.test_per_skill, image_width=args.image[0],
                                       image_height=args.image[1], overwrite=True))
    t_data = time.perf_counter() - start
    untuned = out / "untuned"
    build_backbone(BackboneConfig(preset="tiny")).save_pretrained(untuned)

    lr = dict(lr_llm=1e-3, lr_vision=1e-3)
    sft = train_sft(SFTConfig(data=str(data), cot="exclude", batch_size=args.batch_size, **lr,
                              run=RunSettings(output_dir=str(out / "stage1_sft"), max_steps=args.sft_steps,
                                              save_every=args.sft_steps, log_every=10)))
    cot = train_sft(SFTConfig(data=str(data), cot="only", batch_size=args.batch_size, lr_llm=3e-4, lr_vision=3e-4,
                              run=RunSettings(output_dir=str(out / "stage2_cot"), init_from=str(sft),
                                              max_steps=args.cot_steps, save_every=args.cot_steps, log_every=10)))
    grpo = train_grpo(GRPOConfig(data=str(data), lr=1e-4, prompts_per_step=4, group_size=5, max_new_tokens=96,
                                 run=RunSettings(output_dir=str(out / "stage3_grpo"), init_from=str(cot),
                                                 max_steps=args.grpo_steps, save_every=args.grpo_steps, log_every=1)))
    t_train = time.perf_counter() - start - t_data
    results = {name: evaluate(path, data, out, name, 96) for name, path in
               (("untuned", untuned), ("sft", sft), ("grpo", grpo))}
    rewards = reward_summary(out / "stage3_grpo", 0.1)
    prior = blind_prior(data)
    print(json.dumps({
        "accuracy": results, "blind_prior_mc_accuracy": round(prior, 4),
        "sft_mc_minus_blind_points": round(100 * (results["sft"]["mc_accuracy"] - prior), 2),
        "grpo_reward_first_10pct": round(rewards["first"], 4), "grpo_reward_last_10pct": round(rewards["last"], 4),
        "steps": {"sft": args.sft_steps, "cot": args.cot_steps, "grpo": args.grpo_steps},
        "train_per_skill": args.train_per_skill, "test_per_skill": args.test_per_skill,
        "wall_s": {"data": round(t_data, 1), "train": round(t_train, 1), "total": round(time.perf_counter() - start, 1)},
    }))


if __name__ == "__main__":
    sys.exit(main())
