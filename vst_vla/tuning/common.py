"""What the three tuning stages share: data, optimiser groups, atomic checkpoints, curves.

Kept deliberately small: each stage's loop (sft.py, grpo.py) reads top to bottom and calls these.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration

from vst_vla.atomic import save_atomic, write_text_atomic
from vst_vla.backbone import LORA_TARGETS, BackboneConfig, merge_lora, resolve_device, save_lora_adapters
from vst_vla.backbone.precision import training_precision

RULE_CHECKABLE = ("multiple_choice", "number", "boxes_3d")


@dataclass
class LoraSettings:
    rank: int = 0  # 0: full fine-tune; > 0: LoRA adapters on the LLM's projections (peft)
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # of the language model
    merge_at_end: bool = True  # also write the merged full model next to the adapters


@dataclass
class RunSettings:
    output_dir: str = "outputs/tuning/run"
    init_from: Optional[str] = None  # a previous stage's `final/` folder; overrides backbone.pretrained_path
    seed: int = 0
    max_steps: int = 100
    save_every: int = 50
    log_every: int = 5
    resume: bool = False  # continue from output_dir/checkpoints/latest
    # auto: from backbone.dtype (bf16 on GPU, none on CPU) as autocast over fp32 master weights
    mixed_precision: str = "auto"


SUBSETS = ("perception", "cot", "rl", "all")


def row_subset(row: dict) -> str:
    """Which stage a row belongs to: "rl" (the VST-R RL subset, `metadata["vst_r"] == "rl"`), "cot"
    (other chain-of-thought rows: the cold start, VST's released think rows too) or "perception"."""
    from vst_vla.spatial.reasoning import vst_r_role

    if vst_r_role(row) == "rl":
        return "rl"
    return "cot" if row["cot"] else "perception"


def load_rows(path: str | Path, split: str, subset: str = "all", answer_types: tuple[str, ...] | None = None,
              max_samples: int | None = None) -> datasets.Dataset:
    """A split of a saved spatial dataset, one stage's subset of it, filtered by answer type.

    Stage 1 takes "perception", stage 2 "cot", GRPO "rl": the three never share a row, so GRPO is never
    rewarded for answers CoT SFT has already taught (`row_subset`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"spatial dataset not found: {path} (generate one with `vst-vla spatial-data`)")
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise KeyError(f"{path} has splits {list(ds)}, not {split!r}")
        ds = ds[split]
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    if subset != "all":
        ds = ds.filter(lambda r: row_subset(r) == subset)
    if answer_types is not None:
        ds = ds.filter(lambda r: r["answer_type"] in answer_types)
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    if len(ds) == 0:
        raise ValueError(f"{path}[{split}] has no rows in subset {subset!r} with answer types {answer_types}")
    return ds


# Below these many optimiser steps a stage is a smoke run: it checks the plumbing, it does not learn
# (the CPU benchmark preset, benchmarks/spatial_tuning.py, needs ~800 SFT and ~40 GRPO steps).
LEARNING_STEPS = {"sft": 200, "grpo": 20}


def smoke_note(stage: str, steps: int, samples_per_step: int, n_rows: int) -> str | None:
    """A plain sentence when the settings are too small to learn anything, else None."""
    if steps >= LEARNING_STEPS[stage]:
        return None
    return (f"{stage}: {steps} steps x {samples_per_step} samples ({steps * samples_per_step / n_rows:.1f} passes "
            f"over {n_rows} rows) are smoke settings, too few to learn; a stage that learns needs "
            f">= {LEARNING_STEPS[stage]} steps (see benchmarks/spatial_tuning.py)")


def make_accelerator(run: RunSettings, grad_accum: int = 1, backbone: BackboneConfig | None = None) -> Accelerator:
    mp = run.mixed_precision
    if mp == "auto":
        device = "cpu" if backbone is not None and backbone.device == "cpu" else resolve_device("auto")
        mp = training_precision(backbone.dtype if backbone else "auto", device).mixed_precision
    if os.environ.get("WORLD_SIZE", "1") == "1":
        # One process (the pipeline runs stage after stage in it): accelerate keeps a process-wide state
        # and refuses another precision for a later stage unless that state is reset.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()
    # a seedable sampler makes the data order a function of (seed, epoch), so a resumed run matches
    return Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision=mp,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))


def backbone_config(backbone: BackboneConfig, run: RunSettings, accelerator: Accelerator) -> BackboneConfig:
    """The stage's backbone: the previous stage's `final/` when `init_from` is set, on this process's
    device, with fp32 master weights whatever `dtype` says (bf16/fp16 become autocast: `precision.py`)."""
    overrides = {"device": str(accelerator.device), "dtype": "float32"}
    if run.init_from:
        overrides["pretrained_path"] = run.init_from
    return BackboneConfig(**{**backbone.__dict__, **overrides})


def param_groups(model: torch.nn.Module, lr_llm: float, lr_vision: float, weight_decay: float) -> list[dict]:
    """Separate learning rates for the vision tower and the rest, as VST trains them."""
    vision, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (vision if ".visual." in f".{name}" else rest).append(p)
    groups = [{"params": rest, "lr": lr_llm, "weight_decay": weight_decay}]
    if vision:
        groups.append({"params": vision, "lr": lr_vision, "weight_decay": weight_decay})
    return groups


# --- checkpoints -------------------------------------------------------------------------------------


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    pointer = Path(output_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = Path(output_dir) / "checkpoints" / pointer.read_text().strip()
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{pointer} points to {path}, which holds no complete checkpoint")
    return path


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, state: dict) -> Path:
    """Model, optimiser, scheduler and RNG states via accelerate, written to a temp folder then renamed,
    so a kill at any moment leaves the previous checkpoint intact."""
    ckpt_root = Path(output_dir) / "checkpoints"
    final = ckpt_root / f"step_{step:07d}"
    tmp = ckpt_root / f".tmp_step_{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_text_atomic(ckpt_root / "latest", final.name)
        for old in sorted(ckpt_root.glob("step_*"))[:-2]:  # keep the last two
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict:
    accelerator.load_state(str(path))
    return json.loads((path / "trainer_state.json").read_text())


def save_final(accelerator: Accelerator, prepared_model, backbone, output_dir: str | Path, lora: LoraSettings) -> Path:
    """`final/` is a plain Qwen2.5-VL checkpoint folder (model + processor) that the next stage or the
    policy loads with `pretrained_path`; LoRA runs also keep their adapters in `final_adapters/`."""
    state = accelerator.get_state_dict(prepared_model)  # gathers FSDP shards; every process must call it
    model = accelerator.unwrap_model(prepared_model)
    out = Path(output_dir)
    if accelerator.is_main_process:
        if lora.rank > 0:
            save_atomic(lambda d: save_lora_adapters(model, d, state_dict=state), out / "final_adapters")
            if lora.merge_at_end:
                model.load_state_dict(state)
                model = merge_lora(model)
            state = None
        if lora.rank == 0 or lora.merge_at_end:
            save_atomic(lambda d: (model.save_pretrained(d, state_dict=state), backbone.processor.save_pretrained(d)),
                         out / "final")
    accelerator.wait_for_everyone()
    return out / "final"


# --- curves ------------------------------------------------------------------------------------------


class Curves:
    """Scalars per step: JSONL while training (append, survives resume), PNG and Rerun at the end."""

    def __init__(self, output_dir: str | Path, enabled: bool):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled

    def log(self, step: int, **values: float) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")

    def read(self, after_step: int | None = None) -> list[dict]:
        if not self.path.is_file():
            return []
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [r for r in rows if after_step is None or r["step"] <= after_step]

    def truncate(self, step: int) -> None:
        """On resume, drop what was logged after the checkpoint: those steps are redone."""
        if self.enabled and self.path.is_file():
            rows = self.read(after_step=step)
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def finish(self, title: str) -> None:
        if not self.enabled:
            return
        rows = self.read()
        if not rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import rerun as rr

        keys = sorted({k for r in rows for k in r if k != "step"})
        fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), squeeze=False)
        for ax, key in zip(axes[:, 0], keys):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts])
            ax.set_ylabel(key)
        axes[-1, 0].set_xlabel("step")
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(self.path.with_name("curves.png"), dpi=90)
        plt.close(fig)
        rec = rr.RecordingStream(f"vst_vla_{title}")
        rec.save(str(self.path.with_name("curves.rrd")))
        for r in rows:
            rec.set_time("step", sequence=int(r["step"]))
            for key in keys:
                if key in r:
                    rec.log(f"curves/{key}", rr.Scalars(r[key]))
        rec.flush()
