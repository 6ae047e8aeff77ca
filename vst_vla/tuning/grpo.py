"""Stage 3 — GRPO on the VST-R RL subset with VST's reward (0.5 accuracy + 0.5 format).

Per step: sample `group_size` answers for each of `prompts_per_step` questions, score them, normalise
rewards within each group (the advantage), drop groups whose rewards are all alike (DAPO's online
filtering: keep groups whose mean is inside (filter_low, filter_high)), then maximise the clipped
surrogate with DAPO's clip-higher (1 − clip_low, 1 + clip_high), token-averaged over every kept
token of every process, with an optional KL penalty (k3 estimator) to the frozen starting model.

What keeps it right:
- the token budget per answer type covers the reference answers (`rollouts.answer_budgets`), and the
  truncation rate is logged: a rollout cut before `</think>` scores 0 and teaches nothing;
- log-probabilities use the sampling temperature (logits / T), old and new ones in the same (train)
  mode, and the completion mask comes from the stop position (the pad id is an EOS id too);
- every process runs the same number of backward passes (zero-weight passes where it kept fewer
  groups), so DDP's all-reduces line up; when no process kept a group there is no optimiser step.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import DistributedType, set_seed
from tqdm import tqdm

from vst_vla.backbone import BackboneConfig, build_backbone
from vst_vla.spatial.rewards import reward
from vst_vla.tuning.common import (RULE_CHECKABLE, Curves, LoraSettings, RunSettings, backbone_config,
                                   latest_checkpoint, load_checkpoint, load_rows, make_accelerator,
                                   param_groups, save_checkpoint, save_final, smoke_note)
from vst_vla.tuning.rollouts import answer_budgets, generate, length_mask
from vst_vla.tuning.sft import apply_lora


@dataclass
class GRPOConfig:
    data: str = "outputs/spatial_data"
    split: str = "train"
    subset: str = "rl"  # the VST-R RL subset (questions only: the sampled answers are what is trained)
    answer_types: list[str] = field(default_factory=lambda: list(RULE_CHECKABLE))
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    run: RunSettings = field(default_factory=RunSettings)
    group_size: int = 5  # rollouts per question (n)
    prompts_per_step: int = 4  # per process
    # None: per answer type, budget_margin x the budget_quantile of the reference answers' token lengths
    max_new_tokens: int | None = None
    budget_quantile: float = 0.95
    budget_margin: float = 1.25
    max_new_tokens_cap: int = 4096
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


@dataclass
class Group:
    """One question's rollouts, ready for the policy update."""

    prompt: dict
    completions: torch.Tensor  # (G, T), pad after the stop token
    mask: torch.Tensor  # (G, T): 1 up to and including the stop token
    advantages: torch.Tensor  # (G,)
    old_logp: torch.Tensor | None = None  # (G, T), filled by `score_old`
    ref_logp: torch.Tensor | None = None


def completion_logprobs(model, prompt: dict, completions: torch.Tensor, mask: torch.Tensor,
                        temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probabilities (G × T) of each completion after one shared prompt, under the
    sampling distribution (logits / temperature)."""
    g = completions.shape[0]
    ids = torch.cat([prompt["input_ids"].expand(g, -1), completions], dim=1)
    attn = torch.cat([prompt["attention_mask"].expand(g, -1), mask], dim=1)
    extra = {"mm_token_type_ids": torch.cat([prompt["mm_token_type_ids"].expand(g, -1), torch.zeros_like(completions)], 1)}
    if "pixel_values" in prompt:  # every rollout sees the same images
        extra["pixel_values"] = prompt["pixel_values"].repeat(g, 1)
        extra["image_grid_thw"] = prompt["image_grid_thw"].repeat(g, 1)
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False, **extra).logits
    logits = logits[:, prompt["input_ids"].shape[1] - 1:-1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, completions.unsqueeze(-1)).squeeze(-1)


def group_loss(model, group: Group, cfg: GRPOConfig, n_tokens: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the group's share of the token-mean clipped surrogate, max |ratio − 1|)."""
    logp = completion_logprobs(model, group.prompt, group.completions, group.mask, cfg.temperature)
    ratio = torch.exp(logp - group.old_logp)
    adv = group.advantages[:, None]
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high) * adv)
    per_token = -surrogate
    if group.ref_logp is not None:
        per_token = per_token + cfg.kl_coef * (torch.exp(group.ref_logp - logp) - (group.ref_logp - logp) - 1)
    deviation = ((ratio - 1).abs() * group.mask).max().detach()
    return (per_token * group.mask).sum() / n_tokens, deviation


def policy_update(model, optimizer, accelerator, kept: list[Group], fallback: Group, cfg: GRPOConfig) -> dict:
    """One optimiser step on the kept groups of every process (or none when no process kept one).

    The loss is the mean over all kept tokens of all processes: each process divides its token sum by
    the global token count and multiplies by the world size, which DDP's gradient mean undoes. Every
    process runs as many backward passes as the process with the most groups; the extra ones are
    zero-weight passes over `fallback` (any group of this process), so the all-reduces line up."""
    counts = accelerator.gather(torch.tensor([len(kept), sum(float(g.mask.sum()) for g in kept)],
                                             device=accelerator.device)[None]).view(-1, 2)
    n_micro, n_tokens = int(counts[:, 0].max()), float(counts[:, 1].sum())
    if n_micro == 0:  # nothing to learn anywhere: Adam would still move the weights
        optimizer.zero_grad()
        return {"stepped": 0.0, "loss": 0.0, "ratio_dev": 0.0}
    scale = accelerator.num_processes / n_tokens
    loss_value, deviation = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    for i in range(n_micro):
        group, weight = (kept[i], 1.0) if i < len(kept) else (fallback, 0.0)
        if weight == 0.0 and group.old_logp is None:
            group.old_logp = torch.zeros_like(group.mask, dtype=torch.float32)
        sync = contextlib.nullcontext() if i == n_micro - 1 else accelerator.no_sync(model)
        with sync:
            loss, dev = group_loss(model, group, cfg, 1.0)
            loss = loss * (scale * weight)
            accelerator.backward(loss)
        loss_value += loss.detach() / accelerator.num_processes
        deviation = torch.maximum(deviation, dev * weight)
    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()
    return {"stepped": 1.0, "loss": accelerator.gather(loss_value[None]).sum().item(),
            "ratio_dev": accelerator.gather(deviation[None]).max().item()}


@torch.no_grad()
def score_old(model, reference, groups: list[Group], cfg: GRPOConfig) -> None:
    """Old (and reference) log-probs, in the mode the update runs in (train), without gradients."""
    for g in groups:
        g.old_logp = completion_logprobs(model, g.prompt, g.completions, g.mask, cfg.temperature)
        if reference is not None:
            g.ref_logp = completion_logprobs(reference, g.prompt, g.completions, g.mask, cfg.temperature)


def generation_context(accelerator, model):
    """Whole weights for `generate`: FSDP1 gathers them for the rollouts; FSDP2 (DTensor) cannot."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return contextlib.nullcontext()
    if getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) != 1:
        raise NotImplementedError("GRPO rollouts need whole weights: use DDP or FSDP1 (fsdp_version: 1), "
                                  "FSDP2's sharded parameters do not support generate")
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP.summon_full_params(model, writeback=False, recurse=True)


def train_grpo(cfg: GRPOConfig) -> Path:
    run = cfg.run
    accelerator = make_accelerator(run, backbone=cfg.backbone)
    set_seed(run.seed + accelerator.process_index)  # different rollouts on every process
    backbone = build_backbone(backbone_config(cfg.backbone, run, accelerator))
    reference = copy.deepcopy(backbone.model).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    if cfg.lora.rank > 0:
        backbone.model = apply_lora(backbone.model, cfg.lora)
    rows = load_rows(cfg.data, cfg.split, cfg.subset, answer_types=tuple(cfg.answer_types))
    budgets = answer_budgets(backbone.tokenizer, rows, cfg.budget_quantile, cfg.budget_margin,
                             cap=cfg.max_new_tokens_cap)
    if cfg.max_new_tokens:
        budgets = dict.fromkeys(budgets, cfg.max_new_tokens)
    if accelerator.is_main_process:
        print(f"grpo: {len(rows)} questions of subset {cfg.subset!r}; token budgets {budgets}")
        note = smoke_note("grpo", run.max_steps, cfg.prompts_per_step * accelerator.num_processes, len(rows))
        if note:
            print(note)
    optimizer = torch.optim.AdamW(param_groups(backbone.model, cfg.lr, cfg.lr, 0.0))
    model, optimizer = accelerator.prepare(backbone.model, optimizer)

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
        kept, fallback, all_rewards, truncated = [], None, [], []
        with generation_context(accelerator, model):
            for _ in range(cfg.prompts_per_step):
                row = rows[next(questions)]
                out = generate(unwrapped, backbone, [row], cfg.data, budgets[row["answer_type"]],
                               num_return_sequences=cfg.group_size, do_sample=True, temperature=cfg.temperature,
                               top_p=1.0, top_k=0)
                r = torch.tensor([reward(t, row["answer_type"], row["ground_truth"], require_think=cfg.require_think)
                                  for t in out.texts], device=accelerator.device)
                all_rewards.append(r)
                truncated.append(out.truncated.float())
                group = Group(out.prompt, out.tokens, length_mask(out.lengths, out.tokens.shape[1]),
                              (r - r.mean()) / (r.std() + 1e-6))
                fallback = group if fallback is None else fallback
                # 2. online filtering: a group whose answers all score alike teaches nothing
                if cfg.filter_low < r.mean().item() < cfg.filter_high and r.std() > 0:
                    kept.append(group)
        # 3. clipped policy-gradient update(s), old and new log-probs both in train mode
        unwrapped.train()
        score_old(unwrapped, reference, kept, cfg)
        stats = {}
        for _ in range(cfg.updates_per_batch):
            stats = policy_update(model, optimizer, accelerator, kept, fallback, cfg)
        step += 1
        bar.update(1)
        mean = lambda t: accelerator.gather(t.mean()[None]).mean().item()  # noqa: E731
        n_kept = accelerator.gather(torch.tensor([len(kept)], device=accelerator.device).float()).sum().item()
        mean_reward = mean(torch.cat(all_rewards))
        curves.log(step, reward=mean_reward, kept_groups=n_kept,
                   kept_fraction=n_kept / (cfg.prompts_per_step * accelerator.num_processes),
                   truncation_rate=mean(torch.cat(truncated)), **stats)
        bar.set_postfix(reward=f"{mean_reward:.3f}", kept=int(n_kept))
        if step % run.save_every == 0 or step == run.max_steps:
            save_checkpoint(accelerator, run.output_dir, step, {})
    bar.close()
    curves.finish("grpo")
    return save_final(accelerator, model, backbone, run.output_dir, cfg.lora)


def reward_summary(output_dir: str | Path, fraction: float = 0.1) -> dict:
    """Mean reward over the first and last `fraction` of steps, and the run's mean truncation rate and
    kept-group fraction, from metrics.jsonl."""
    rows = [r for r in Curves(output_dir, enabled=False).read() if "reward" in r]
    k = max(1, int(len(rows) * fraction))
    mean = lambda key: sum(r.get(key, 0.0) for r in rows) / max(len(rows), 1)  # noqa: E731
    return {"first": sum(r["reward"] for r in rows[:k]) / k, "last": sum(r["reward"] for r in rows[-k:]) / k,
            "truncation_rate": mean("truncation_rate"), "kept_fraction": mean("kept_fraction")}
