"""Can the policy's VLM learn *which* object to go for from a first frame? A probe of the decision phase.

A vst_vla policy reads its target from the image only at the start of an episode (later the arm's own
heading says where it is going). This probe is `vst-vla ground` (vst_vla/tuning/grounding.py) run from
the starting point of a policy: the same cameras, image size and backbone, the policy's prompt, a linear
head that regresses the target's table position from the first frame of many distinct scenes. It
reports, on held-out scenes, the error (cm), the *decision* (nearer the target than every look-alike:
about 0.5 for a model that finds two twins but cannot resolve the rule), the *commitment* (0 = the
centre of the look-alikes, 1 = the target), all per criterion ("leftmost", "nearest to", ...), and the
references (the mean position; the centre of the look-alikes).

    python benchmarks/policy_target_probe.py --family pick_extreme --scenes 5000 --steps 800
    python benchmarks/policy_target_probe.py --family pick_extreme --train-scenes 100   # as many as demos
    python benchmarks/policy_target_probe.py --policy CKPT/pretrained_model            # that policy's start

The LAST line of stdout is one JSON object: the curve, the final scores and the references.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vst_vla.tuning.grounding import GroundingConfig, train_grounding  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", help="a vst_vla pretrained_model folder: probe from its cameras, image size, backbone")
    p.add_argument("--family", nargs="+", default=["pick_relation"])
    p.add_argument("--scenes", type=int, default=5000, help="rendered scenes per family; the last --test are held out")
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--train-scenes", type=int, default=None, help="train on the first N only (default: all but --test)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--out", default="outputs/bench/policy_target_probe")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--abspos", action="store_true", help="the preset with 2-D sin/cos patch positions in its ViT")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    start = {}
    if args.policy:
        config_file = Path(args.policy) / "config.json"
        if not config_file.is_file():
            raise SystemExit(f"--policy {args.policy}: no config.json (a vst_vla checkpoint's pretrained_model folder)")
        config = json.loads(config_file.read_text())
        if config.get("type") != "vst_vla":
            raise SystemExit(f"--policy {args.policy}: type {config.get('type')!r}, not vst_vla")
        cameras = [k.rsplit(".", 1)[-1] for k, f in config["input_features"].items() if f["type"] == "VISUAL"]
        size = config["image_size"]
        if size[0] != size[1]:
            raise SystemExit(f"--policy {args.policy}: image_size {size} is not square (the probe renders squares)")
        start = dict(cameras=cameras, image_size=int(size[0]), backbone_preset=config["backbone_preset"],
                     backbone_path=config.get("backbone_path"), seed=int(config.get("backbone_seed", 0)))
    tag = f"{'_'.join(args.family)}_{args.train_scenes or 'all'}_{args.steps}{'_abspos' if args.abspos else ''}"
    cfg = GroundingConfig(families=list(args.family), scenes_per_family=args.scenes, test_per_family=args.test,
                          train_per_family=args.train_scenes, steps=args.steps, batch_size=args.batch_size,
                          lr=args.lr, eval_every=args.eval_every, output_dir=str(Path(args.out) / tag),
                          cache_dir=str(Path(args.out) / "scenes"), threads=args.threads,
                          backbone_absolute_positions=args.abspos,
                          **({"seed": args.seed} | start))
    train_grounding(cfg)
    result = json.loads((Path(cfg.output_dir) / "result.json").read_text())
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
