"""`vst-vla <stage> [hydra overrides...]` — one subcommand per pipeline stage.

Each stage reads `vst_vla/configs/<stage>.yaml` (see vst_vla/config.py) and runs one function with the
typed config. `vst-vla <stage> --help` prints the composed config; `--cfg` prints it and exits.
"""

from __future__ import annotations

import importlib
import logging
import sys

from omegaconf import OmegaConf

# stage -> (config name, "module:function", "module:ConfigDataclass", one-line help)
STAGES: dict[str, tuple[str, str, str, str]] = {
    "collect": ("collect", "vst_vla.collect:collect", "vst_vla.collect:CollectConfig",
                "record scripted-expert episodes of the sim tasks into a LeRobotDataset v3"),
    "viz": ("viz", "vst_vla.viz.episode:visualize_episode", "vst_vla.viz.episode:VizConfig",
            "turn a recorded episode into a Rerun recording (.rrd) or a live viewer"),
    "spatial-data": ("spatial_data", "vst_vla.spatial.dataset:generate_dataset",
                     "vst_vla.spatial.dataset:SpatialDataConfig",
                     "VST-P / VST-R style spatial QA from the sim (train + held-out sim spatial benchmark)"),
    "sft": ("tuning/stage1_sft", "vst_vla.tuning.sft:train_sft", "vst_vla.tuning.sft:SFTConfig",
            "backbone stage 1: SFT on perception data (full or LoRA)"),
    "cot-sft": ("tuning/stage2_cot", "vst_vla.tuning.sft:train_sft", "vst_vla.tuning.sft:SFTConfig",
                "backbone stage 2: chain-of-thought SFT on reasoning data"),
    "grpo": ("tuning/stage3_grpo", "vst_vla.tuning.grpo:train_grpo", "vst_vla.tuning.grpo:GRPOConfig",
             "backbone stage 3: GRPO with VST's rewards on rule-checkable questions"),
    "ground": ("tuning/grounding", "vst_vla.tuning.grounding:train_grounding",
               "vst_vla.tuning.grounding:GroundingConfig",
               "backbone: locate the instructed object in thousands of sim first frames (the policy's prompt)"),
    "spatial-eval": ("spatial_eval", "vst_vla.spatial.evaluate:run_eval", "vst_vla.spatial.evaluate:SpatialEvalConfig",
                     "score model answers per skill on the sim spatial benchmark or a VSI/MMSI/CV-Bench file"),
    "train-policy": ("policy/train", "vst_vla.policy.train:train_policy", "vst_vla.policy.train:TrainPolicyConfig",
                     "train a LeRobot policy (vst_vla tokens/flow head, act, ...) with lerobot-train's loop"),
    "eval-policy": ("policy/eval", "vst_vla.policy.evaluate:evaluate_policy", "vst_vla.policy.evaluate:EvalPolicyConfig",
                    "roll a policy checkpoint out in the sim: success per family (Wilson CI), videos, .rrd"),
    "dagger": ("policy/dagger", "vst_vla.policy.dagger:run_dagger", "vst_vla.policy.dagger:DaggerConfig",
               "DAgger: roll the policy out, label its states with the scripted expert, fine-tune; rounds"),
    "serve": ("deploy/serve", "vst_vla.deploy.server:serve", "vst_vla.deploy.server:ServeConfig",
              "serve one policy checkpoint over an authenticated WebSocket (msgpack, no pickle)"),
    "remote-policy": ("deploy/remote_policy", "vst_vla.deploy.remote:write_remote_policy",
                      "vst_vla.deploy.remote:RemotePolicyConfig",
                      "write a vst_vla_remote folder (lerobot-rollout --policy.path) from a server's hello"),
    "deploy": ("deploy", "vst_vla.deploy.run:deploy", "vst_vla.deploy.run:DeployConfig",
               "run a checkpoint on the sim or guarded arm via lerobot-rollout (local or remote): telemetry + .rrd"),
    "pipeline": ("pipeline", "vst_vla.pipeline:run_pipeline", "vst_vla.pipeline:PipelineConfig",
                 "the end-to-end default: every built stage in order, small and offline"),
}


def resolve(ref: str):
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def _usage() -> str:
    lines = ["usage: vst-vla <stage> [key=value ...] [--config NAME] [--cfg]", "", "stages:"]
    lines += [f"  {name:<14} {spec[3]}" for name, spec in STAGES.items()]
    lines += ["", "Overrides use hydra syntax, e.g. `vst-vla collect episodes_per_task=2 tasks=[stack]`;",
              "LeRobot-style flags mean the same: `--policy.path=X` or `--port 8765` is `policy.path=X`, `port=8765`.",
              "--config NAME  another YAML for the stage, by its name under the package's vst_vla/configs/",
              "               without .yaml (e.g. `vst-vla sft --config tuning/stage1_sft_vst3b`)",
              "--cfg          print the composed config and exit"]
    return "\n".join(lines)


OWN_FLAGS = {"--config", "--cfg", "--help", "-h"}


def dashed_to_overrides(args: list[str]) -> list[str]:
    """`--key=value` and `--key value` (LeRobot/draccus style) -> hydra's `key=value`; other args unchanged."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and arg not in OWN_FLAGS and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise SystemExit(f"vst-vla: {arg} needs a value ({arg}=VALUE or {arg} VALUE)")
                value, i = args[i + 1], i + 1
            out.append(f"{key}={value}")
        else:
            out.append(arg)
        i += 1
    return out


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return
    stage, args = argv[0], argv[1:]
    if stage not in STAGES:
        raise SystemExit(f"vst-vla: unknown stage {stage!r}\n\n{_usage()}")
    config_name, fn_ref, schema_ref, _ = STAGES[stage]
    if "--config" in args:  # another YAML for the same stage, e.g. --config tuning/stage1_sft_vst7b
        k = args.index("--config")
        if k + 1 >= len(args):
            raise SystemExit("vst-vla: --config needs a config name under vst_vla/configs/ (no .yaml), "
                             "e.g. tuning/stage1_sft_vst3b")
        config_name, args = args[k + 1], args[:k] + args[k + 2:]
    args = dashed_to_overrides(args)
    show_only = "--cfg" in args or "--help" in args or "-h" in args
    overrides = [a for a in args if a not in {"--cfg", "--help", "-h"}]
    from vst_vla.config import load_config

    try:
        cfg = load_config(config_name, resolve(schema_ref), overrides)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"vst-vla {stage}: {err}") from err
    if show_only:
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return
    # Progress of long stages (training, evaluation, LeRobot's rollout loop) on stderr at INFO. `force`:
    # an import may already have given the root logger a WARNING-level default handler (a module-level
    # `logging.warning` does), which would otherwise silence every INFO line of the stage.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
    resolve(fn_ref)(cfg)


if __name__ == "__main__":
    main()
