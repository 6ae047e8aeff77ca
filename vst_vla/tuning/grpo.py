"""Stage 3 — GRPO on the rule-checkable subset with VST's reward (0.5 accuracy + 0.5 format).

Per step: sample `group_size` answers for each of `prompts_per_step` questions, score them, normalise
rewards within each group (the advantage), drop groups whose rewards are all alike (DAPO's online
filtering: keep groups whose mean is inside (filter_low, filter_high)), then maximise the clipped
surrogate with DAPO's clip-higher (1 − clip_low, 1 + clip_high), token-averaged, with an optional
KL penalty (k3 estimator) to the frozen starting model.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed
from tqdm import tqdm

from vst_vla.backbone import BackboneConfig, build_backbone, encode_for_generation
from vst_vla.spatial.rewards import reward
from vst_vla.tuning.common import (RULE_CHECKABLE, Curves, LoraSettings, RunSettings, backbone_config,
                                   latest_checkpoint, load_checkpoint, load_rows, make_accelerator,
                                   param_groups, save_checkpoint, save_final)
from vst_vla.tuning.sft import apply_lora


@dataclass
class GRPOConfig:
    data: str = "outputs/spatial_data"
    split: str = "train"
    cot: str = "include"  # questions only: the sampled answers are what is trained
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    run: RunSettings = field(default_factory=RunSettings)
    group_size: int = 5  # rollouts per question (n)
    prompts_per_step: int = 4  # per process
    max_new_tokens: int = 64
    temperature: float = 1.0
    lr: float = 1e-6
    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_coef: float = 0.0  # VST's launch line uses none
    updates_per_batch: int = 1  # > 1 reuses the rollouts; the clip then matters
    filter_low: float = 0.01
    filter_high: float = 0.99
    require_think: bool = True
    max_grad_norm: float = 1.0


def completion_logprobs(model, prompt: dict, completions: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of each completion (G × L) after one shared prompt, and their mask."""
    g = completions.shape[0]
    mask = (completions != pad_id).long()
    ids = torch.cat([prompt["input_ids"].expand(g, -1), completions], dim=1)
    attn = torch.cat([prompt["attention_mask"].expand(g, -1), mask], dim=1)
    extra = {"mm_token_type_ids": torch.cat([prompt["mm_token_type_ids"].expand(g, -1), torch.zeros_like(completions)], 1)}
    if "pixel_values" in prompt:  # every rollout sees the same images
        extra["pixel_values"] = prompt["pixel_values"].repeat(g, 1)
        extra["image_grid_thw"] = prompt["image_grid_thw"].repeat(g, 1)
    logits = model(input_ids=ids, attention_mask=attn, **extra).logits[:, prompt["input_ids"].shape[1] - 1:-1]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, completions.unsqueeze(-1)).squeeze(-1)
    return logp, mask


def sample_group(model, backbone, row: dict, root: str, cfg: GRPOConfig) -> tuple[dict, torch.Tensor, list[str]]:
    prompt = encode_for_generation(backbone, [row], root)
    out = model.generate(**prompt, do_sample=True, temperature=cfg.temperature, top_p=1.0, top_k=0,
                         num_return_sequences=cfg.group_size, max_new_tokens=cfg.max_new_tokens,
                         pad_token_id=backbone.tokenizer.pad_token_id)
    completions = out[:, prompt["input_ids"].shape[1]:]
    # everything after the first end-of-turn is padding
    eos = backbone.tokenizer.convert_tokens_to_ids("<|im_end|>")
    ended = (completions == eos).long().cumsum(1)
    completions = torch.where((ended - (completions == eos).long()) > 0, backbone.tokenizer.pad_token_id, completions)
    texts = backbone.tokenizer.batch_decode(completions, skip_special_tokens=True)
    return prompt, completions, texts


def train_grpo(cfg: GRPOConfig) -> Path:
    run = cfg.run
    accelerator = make_accelerator(run)
    set_seed(run.seed + accelerator.process_index)  # different rollouts on every process
    backbone = build_backbone(backbone_config(cfg.backbone, run, accelerator))
    reference = copy.deepcopy(backbone.model).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    if cfg.lora.rank > 0:
        backbone.model = apply_lora(backbone.model, cfg.lora)
    rows = load_rows(cfg.data, cfg.split, cfg.cot, answer_types=RULE_CHECKABLE)
    optimizer = torch.optim.AdamW(param_groups(backbone.model, cfg.lr, cfg.lr, 0.0))
    model, optimizer = accelerator.prepare(backbone.model, optimizer)
    pad = backbone.tokenizer.pad_token_id

    step, curves = 0, Curves(run.output_dir, accelerator.is_main_process)
    Path(run.output_dir).mkdir(parents=True, exist_ok=True)
    if run.resume and (ckpt := latest_checkpoint(run.output_dir)) is not None:
        step = load_checkpoint(accelerator, ckpt)["step"]
        curves.truncate(step)
    # question order: a fixed permutation per process, so a resumed run sees the same questions
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(run.seed + 7919 * accelerator.process_index))
    questions = itertools.cycle(order.tolist())
    for _ in range(step * cfg.prompts_per_step):
        next(questions)

    bar = tqdm(total=run.max_steps, initial=step, desc="grpo", disable=not accelerator.is_main_process)
    unwrapped = accelerator.unwrap_model(model)
    while step < run.max_steps:
        # 1. rollouts and rewards
        unwrapped.eval()
        groups, all_rewards = [], []
        with torch.no_grad():
            for _ in range(cfg.prompts_per_step):
                row = rows[next(questions)]
                prompt, completions, texts = sample_group(unwrapped, backbone, row, cfg.data, cfg)
                r = torch.tensor([reward(t, row["answer_type"], row["ground_truth"], require_think=cfg.require_think)
                                  for t in texts], device=accelerator.device)
                all_rewards.append(r)
                # 2. online filtering: a group whose answers all score alike teaches nothing
                if cfg.filter_low < r.mean().item() < cfg.filter_high and r.std() > 0:
                    adv = (r - r.mean()) / (r.std() + 1e-6)
                    old_logp, mask = completion_logprobs(unwrapped, prompt, completions, pad)
                    ref_logp = completion_logprobs(reference, prompt, completions, pad)[0] if reference is not None else None
                    groups.append((prompt, completions, adv, old_logp, mask, ref_logp))
        # 3. clipped policy-gradient update, token-level mean over all kept tokens (DAPO)
        unwrapped.train()
        loss_value = torch.zeros((), device=accelerator.device)
        for _ in range(cfg.updates_per_batch):
            n_tokens = sum(g[4].sum() for g in groups) if groups else torch.tensor(1.0)
            for prompt, completions, adv, old_logp, mask, ref_logp in groups:
                logp, _ = completion_logprobs(model, prompt, completions, pad)
                ratio = torch.exp(logp - old_logp)
                surrogate = torch.minimum(ratio * adv[:, None],
                                          torch.clamp(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high) * adv[:, None])
                per_token = -surrogate
                if ref_logp is not None:
                    per_token = per_token + cfg.kl_coef * (torch.exp(ref_logp - logp) - (ref_logp - logp) - 1)
                loss = (per_token * mask).sum() / n_tokens
                accelerator.backward(loss)
                loss_value = loss_value + loss.detach()
            if not groups:  # keep DDP's collective calls in step on every process
                accelerator.backward(sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad))
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        step += 1
        bar.update(1)
        mean_reward = accelerator.gather(torch.cat(all_rewards).mean()[None]).mean().item()
        kept = accelerator.gather(torch.tensor([len(groups)], device=accelerator.device).float()).sum().item()
        curves.log(step, reward=mean_reward, kept_groups=kept, loss=accelerator.gather(loss_value[None]).mean().item())
        bar.set_postfix(reward=f"{mean_reward:.3f}", kept=int(kept))
        if step % run.save_every == 0 or step == run.max_steps:
            save_checkpoint(accelerator, run.output_dir, step, {})
    bar.close()
    curves.finish("grpo")
    return save_final(accelerator, model, backbone, run.output_dir, cfg.lora)


def reward_summary(output_dir: str | Path, fraction: float = 0.1) -> dict:
    """Mean reward over the first and last `fraction` of steps, from metrics.jsonl."""
    rows = [r for r in Curves(output_dir, enabled=False).read() if "reward" in r]
    k = max(1, int(len(rows) * fraction))
    return {"first": sum(r["reward"] for r in rows[:k]) / k, "last": sum(r["reward"] for r in rows[-k:]) / k}
