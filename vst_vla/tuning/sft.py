"""Supervised fine-tuning: stage 1 (VST-P perception answers) and stage 2 (VST-R chain-of-thought).

Loss on answer tokens only, averaged per sample (so a 150-token box answer and a 2-token letter weigh
the same) and sequence packing (`packing.py`, as VST packs to 16 384 tokens); fp32 master weights with
bf16 autocast on GPU (`vst_vla/backbone/precision.py`); full fine-tune with separate vision / LLM learning rates, or LoRA (peft);
gradient accumulation, cosine schedule with warm-up, atomic checkpoints and exact resume through
accelerate (run it with `accelerate launch` for DDP / FSDP on several GPUs or nodes).
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from vst_vla.backbone import BackboneConfig, add_lora, build_backbone
from vst_vla.tuning.common import (Curves, LoraSettings, RunSettings, backbone_config, latest_checkpoint,
                                   load_checkpoint, load_rows, make_accelerator, param_groups, save_checkpoint,
                                   save_final, smoke_note)
from vst_vla.tuning.packing import encode_packs, encode_padded, sample_losses, token_losses


@dataclass
class SFTConfig:
    data: str = "outputs/spatial_data"  # a `vst-vla spatial-data` folder (or a loaded VST release)
    split: str = "train"
    # stage 1 trains on "perception" rows (direct answers), stage 2 on the "cot" subset; the "rl" subset
    # is GRPO's and never trained here (`common.load_rows`)
    subset: str = "perception"
    max_samples: Optional[int] = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    run: RunSettings = field(default_factory=RunSettings)
    batch_size: int = 8  # per process
    grad_accum: int = 1
    lr_llm: float = 5e-5
    lr_vision: float = 5e-6
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    loss_weighting: str = "sample"  # sample: mean per sample, then over samples | token: mean over tokens
    pack_tokens: int = 0  # > 0: pack each batch's samples into rows of at most this many tokens; 0: pad
    packs_per_forward: int = 0  # packs stacked into one forward (0: all of a batch's); 1 for long GPU packs


def apply_lora(model, lora: LoraSettings):
    """The backbone's LoRA (the policy's too): the language model's projections; the vision tower keeps its weights."""
    return add_lora(model, lora.rank, lora.alpha, lora.dropout, lora.target_modules)


def batch_loss(model, backbone, rows: list[dict], cfg: SFTConfig, accelerator) -> torch.Tensor:
    """Forward and backward of one batch (packed or padded); returns the batch loss (detached).

    With packing there is one backward per pack; all but the last skip DDP's gradient all-reduce, so
    every process reduces once per batch however many packs its rows made."""
    if cfg.loss_weighting not in ("sample", "token"):
        raise ValueError(f"loss_weighting must be sample or token, got {cfg.loss_weighting!r}")
    if cfg.pack_tokens > 0:
        parts = encode_packs(backbone, model, rows, cfg.data, cfg.pack_tokens, cfg.packs_per_forward)
    else:
        parts = [encode_padded(backbone, rows, cfg.data)]
    if cfg.loss_weighting == "token":
        n_tokens = sum(int((p["labels"][:, 1:] != -100).sum()) for p in parts)
    total = torch.zeros((), device=accelerator.device)
    for i, part in enumerate(parts):
        sync = contextlib.nullcontext() if i == len(parts) - 1 else accelerator.no_sync(model)
        with sync:
            if cfg.loss_weighting == "sample":
                loss = sample_losses(model, part, len(rows))[0] / len(rows)
            else:
                loss = token_losses(model, part)[0] / max(n_tokens, 1)
            accelerator.backward(loss)
        total += loss.detach()
    return total


def train_sft(cfg: SFTConfig) -> Path:
    run = cfg.run
    accelerator = make_accelerator(run, cfg.grad_accum, cfg.backbone)
    set_seed(run.seed)
    backbone = build_backbone(backbone_config(cfg.backbone, run, accelerator))
    if cfg.lora.rank > 0:
        backbone.model = apply_lora(backbone.model, cfg.lora)
    rows = load_rows(cfg.data, cfg.split, cfg.subset, max_samples=cfg.max_samples)
    loader = DataLoader(rows, batch_size=cfg.batch_size, shuffle=True, collate_fn=list)
    note = smoke_note("sft", run.max_steps, cfg.batch_size * cfg.grad_accum * accelerator.num_processes, len(rows))
    if note and accelerator.is_main_process:
        print(note)
    optimizer = torch.optim.AdamW(param_groups(backbone.model, cfg.lr_llm, cfg.lr_vision, cfg.weight_decay))
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * run.max_steps), run.max_steps)
    # the scheduler is stepped by hand once per optimiser step (accelerate would step it per process)
    model, optimizer, loader = accelerator.prepare(backbone.model, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)

    step, curves = 0, Curves(run.output_dir, accelerator.is_main_process)
    Path(run.output_dir).mkdir(parents=True, exist_ok=True)
    if run.resume and (ckpt := latest_checkpoint(run.output_dir)) is not None:
        step = load_checkpoint(accelerator, ckpt)["step"]
        curves.truncate(step)
    batches_done = step * cfg.grad_accum
    epoch, skip = divmod(batches_done, len(loader))

    model.train()
    bar = tqdm(total=run.max_steps, initial=step, desc=f"sft[{cfg.subset}]", disable=not accelerator.is_main_process)
    running = []
    while step < run.max_steps:
        loader.set_epoch(epoch)
        for batch_rows in accelerator.skip_first_batches(loader, skip) if skip else loader:
            with accelerator.accumulate(model):
                loss = batch_loss(model, backbone, batch_rows, cfg, accelerator)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
                if accelerator.sync_gradients:
                    scheduler.step()
            running.append(loss)
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            if step % run.log_every == 0 or step == run.max_steps:
                mean_loss = accelerator.gather(torch.stack(running).mean()[None]).mean().item()
                curves.log(step, loss=mean_loss, lr=scheduler.get_last_lr()[0])
                bar.set_postfix(loss=f"{mean_loss:.3f}")
                running = []
            if step % run.save_every == 0 or step == run.max_steps:
                save_checkpoint(accelerator, run.output_dir, step, {"epoch": epoch})
            if step >= run.max_steps:
                break
        epoch, skip = epoch + 1, 0
    bar.close()
    curves.finish(f"sft_{cfg.subset}")
    return save_final(accelerator, model, backbone, run.output_dir, cfg.lora)
