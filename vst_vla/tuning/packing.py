"""SFT batches: per-sample loss, and sequence packing that keeps each sample's own attention and mRoPE.

Loss. A token mean lets a 3D-box answer (~150 tokens) outweigh a multiple-choice letter (2 tokens)
75 to 1; `sample_losses` averages the answer tokens of each sample first, then the samples.

Packing. Padding a batch to its longest sample wastes most of the compute on pad tokens. A pack
concatenates whole samples into one row with `position_ids` of shape (4, 1, L): row 0 the text
positions restarting at 0 for every sample, rows 1-3 each sample's own 3-D mRoPE positions
(`get_rope_index` on the sample alone). With no `attention_mask`, transformers (5.5,
`masking_utils.find_packed_sequence_indices`) reads the restarts in row 0 and makes the attention
block-diagonal (a mask for sdpa, varlen for flash attention), so every sample attends only to itself
and sees exactly the positions it has unpacked. The images of all samples go in, in order.
Several packs go through one forward as rows of a batch (`packs_per_forward`): the tail of a shorter
pack is padding whose positions restart at 0, so it is a sequence of its own that nothing attends to
and that carries no labels. One pack per forward keeps the memory of long (16 384-token) packs low.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vst_vla.backbone import IGNORE_INDEX, encode_for_training


def encode_padded(backbone, rows: list[dict], root: str) -> dict[str, torch.Tensor]:
    """The right-padded batch of `encode_for_training`, with `sample_ids` (-1 on padding)."""
    batch = encode_for_training(backbone, rows, root)
    ids = torch.arange(len(rows), device=batch["input_ids"].device)[:, None].expand_as(batch["input_ids"])
    batch["sample_ids"] = torch.where(batch["attention_mask"].bool(), ids, -1)
    return batch


def _rope_module(model):
    for module in model.modules():  # the Qwen2.5-VL core, also under DDP / peft wrappers
        if hasattr(module, "get_rope_index") and hasattr(module, "language_model"):
            return module
    raise TypeError(f"{type(model).__name__} has no Qwen2.5-VL get_rope_index")


def encode_packs(backbone, model, rows: list[dict], root: str, max_tokens: int,
                 packs_per_forward: int = 0) -> list[dict[str, torch.Tensor]]:
    """`rows` as packs of whole samples of at most `max_tokens` tokens (a longer sample is a pack alone),
    stacked `packs_per_forward` to a forward (0: all of them in one)."""
    core = _rope_module(model)
    samples = [encode_for_training(backbone, [row], root) for row in rows]
    # first-fit decreasing: the longest samples open the packs, the short ones fill their gaps
    lengths = [s["input_ids"].shape[1] for s in samples]
    groups, room = [], []
    for i in sorted(range(len(samples)), key=lambda i: -lengths[i]):
        fits = next((g for g, free in enumerate(room) if lengths[i] <= free), None)
        if fits is None:
            groups.append([i])
            room.append(max_tokens - lengths[i])
        else:
            groups[fits].append(i)
            room[fits] -= lengths[i]
    packs = [_pack([samples[i] for i in g], core, ids=g) for g in groups]
    per = packs_per_forward or len(packs)
    return [_stack(packs[i:i + per], backbone.tokenizer.pad_token_id) for i in range(0, len(packs), per)]


def _stack(packs: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Packs as the rows of one batch, each padded to the longest with a label-free tail of its own."""
    if len(packs) == 1:
        return packs[0]
    length = max(p["input_ids"].shape[1] for p in packs)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "mm_token_type_ids": 0, "sample_ids": -1}
    out = {key: torch.cat([F.pad(p[key], (0, length - p[key].shape[1]), value=v) for p in packs])
           for key, v in fill.items()}
    rows = []
    for p in packs:
        n = length - p["position_ids"].shape[2]
        tail = torch.arange(n, dtype=p["position_ids"].dtype, device=p["position_ids"].device).view(1, 1, n)
        rows.append(torch.cat([p["position_ids"], tail.expand(p["position_ids"].shape[0], 1, n)], dim=2))
    out["position_ids"] = torch.cat(rows, dim=1)
    return {**out, **_images(packs)}


@torch.no_grad()
def _positions(core, s: dict) -> torch.Tensor:
    n = s["input_ids"].shape[1]
    text = torch.arange(n, device=s["input_ids"].device).view(1, 1, n)
    rope, _ = core.get_rope_index(s["input_ids"], s["mm_token_type_ids"], image_grid_thw=s.get("image_grid_thw"))
    return torch.cat([text, rope.to(text.dtype)], dim=0)


def _pack(samples: list[dict], core, ids: list[int]) -> dict[str, torch.Tensor]:
    """One row of `samples` back to back; `ids` are their indices in the batch (for `sample_ids`)."""
    out = {key: torch.cat([s[key] for s in samples], dim=1) for key in ("input_ids", "labels", "mm_token_type_ids")}
    out["position_ids"] = torch.cat([_positions(core, s) for s in samples], dim=2)
    out["sample_ids"] = torch.cat([torch.full_like(s["input_ids"], i) for i, s in zip(ids, samples, strict=True)], dim=1)
    return {**out, **_images(samples)}


def _images(parts: list[dict]) -> dict[str, torch.Tensor]:
    """The images of `parts` (samples or packs), in their order: the order of their image tokens."""
    with_images = [p for p in parts if "pixel_values" in p]
    if not with_images:
        return {}
    return {"pixel_values": torch.cat([p["pixel_values"] for p in with_images]),
            "image_grid_thw": torch.cat([p["image_grid_thw"] for p in with_images])}


def sample_losses(model, batch: dict[str, torch.Tensor], n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over samples of each one's mean answer-token loss, a mask of the samples present) for a
    padded batch or a pack."""
    losses, present = per_sample_losses(model, batch, n_samples)
    return losses[present].sum(), present


def per_sample_losses(model, batch: dict[str, torch.Tensor], n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(each sample's mean answer-token loss (n_samples,), a mask of the samples in `batch`); logits are
    computed only where a label follows (`logits_to_keep`)."""
    batch = dict(batch)
    labels, sample_ids = batch.pop("labels"), batch.pop("sample_ids")
    target, owner = labels[:, 1:], sample_ids[:, 1:]
    valid = target != IGNORE_INDEX
    keep = valid.any(0).nonzero().squeeze(1)
    logits = model(**batch, use_cache=False, logits_to_keep=keep).logits
    target, owner, valid = target[:, keep], owner[:, keep], valid[:, keep]
    token_loss = F.cross_entropy(logits.float().flatten(0, 1), target.clamp_min(0).flatten(),
                                 reduction="none").view_as(target)
    sums = torch.zeros(n_samples, device=logits.device).index_add(0, owner[valid], token_loss[valid])
    counts = torch.zeros(n_samples, device=logits.device).index_add(0, owner[valid], torch.ones_like(token_loss[valid]))
    present = counts > 0
    return sums / counts.clamp_min(1), present


def token_losses(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token losses, their count): the token-mean alternative to `sample_losses`."""
    batch = dict(batch)
    labels = batch.pop("labels")
    batch.pop("sample_ids")
    target = labels[:, 1:]
    valid = target != IGNORE_INDEX
    keep = valid.any(0).nonzero().squeeze(1)
    logits = model(**batch, use_cache=False, logits_to_keep=keep).logits
    target, valid = target[:, keep], valid[:, keep]
    loss = F.cross_entropy(logits.float().flatten(0, 1), target.clamp_min(0).flatten(), reduction="none")
    return (loss.view_as(target) * valid).sum(), valid.sum()
