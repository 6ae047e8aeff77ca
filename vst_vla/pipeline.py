"""`vst-vla pipeline`: every stage in data-flow order, each with its own config plus small overrides.

The default (vst_vla/configs/pipeline.yaml) is the README's main job: small, offline, CPU-only, end to end —
expert episodes → Rerun recording → spatial QA data → SFT → CoT SFT → GRPO → spatial benchmark →
policy training on the episodes with the tuned backbone → policy evaluation in the sim.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console

from vst_vla.cli import STAGES, resolve
from vst_vla.config import load_config


@dataclass
class PipelineConfig:
    stages: list[str] = field(default_factory=list)
    # stage -> hydra overrides for that stage's own config, e.g. {"collect": ["episodes_per_task=1"]}
    overrides: dict[str, list[str]] = field(default_factory=dict)


def run_pipeline(cfg: PipelineConfig) -> None:
    console = Console()
    unknown = [s for s in [*cfg.stages, *cfg.overrides] if s not in STAGES or s == "pipeline"]
    if unknown:
        raise ValueError(f"pipeline: unknown stages {unknown}; known: {[s for s in STAGES if s != 'pipeline']}")
    timings = {}
    for stage in cfg.stages:
        config_name, fn_ref, schema_ref, help_text = STAGES[stage]
        console.rule(f"[bold]{stage}[/bold] — {help_text}")
        stage_cfg = load_config(config_name, resolve(schema_ref), cfg.overrides.get(stage, []))
        start = time.perf_counter()
        resolve(fn_ref)(stage_cfg)
        timings[stage] = time.perf_counter() - start
    console.rule("pipeline done")
    for stage, seconds in timings.items():
        console.print(f"  {stage:<14} {seconds:7.1f} s")
