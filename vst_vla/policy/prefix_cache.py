"""Frozen-VLM training of the flow expert on cached prefix features (`train-policy expert_steps=…`).

With the VLM frozen, what the flow expert reads of a frame (the keys/values of the VLM layers it attends
to, `VSTVLAPolicy.prefix_features`) never changes, so it is computed once per training frame and the
expert trains alone on it: no vision tower, no LLM, forward or backward, in the loop. On the tiny CPU
preset that is ~7x the samples/s of end-to-end training (22 -> 160 samples/s, 2-core CPU). The loss is
exactly the end-to-end one for the same noise and times (`tests/test_prefix_cache.py`).

The cache holds every frame's features in float16 in memory; its size is checked against `max_gb`
before anything is computed (a 3B backbone's 36 layers x ~600 tokens would need a small
`expert_num_layers` or a GPU-side variant of this).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class PrefixCache:
    keys: torch.Tensor  # (N, layers, kv_heads, S, head_dim) float16, left-padded to one length S
    values: torch.Tensor
    attention_mask: torch.Tensor  # (N, S) bool
    next_position: torch.Tensor  # (N,)
    action: torch.Tensor  # (N, T, A) normalised, as the policy's preprocessor gives it
    valid: torch.Tensor  # (N, T) bool: not padding past the episode's end

    def __len__(self) -> int:
        return len(self.next_position)

    def batch(self, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        features = {"keys": self.keys[idx].float(), "values": self.values[idx].float(),
                    "attention_mask": self.attention_mask[idx].long(), "next_position": self.next_position[idx]}
        return features, self.action[idx], self.valid[idx]


def _left_pad(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    pad = length - x.shape[dim]
    if pad == 0:
        return x
    shape = list(x.shape)
    shape[dim] = pad
    return torch.cat([torch.zeros(shape, dtype=x.dtype, device=x.device), x], dim=dim)


def cache_gb(policy, n_frames: int, prefix_len: int) -> float:
    text = policy.vlm.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    per_frame = 2 * len(policy.expert.vlm_layers) * text.num_key_value_heads * prefix_len * head_dim * 2  # fp16 K and V
    return n_frames * per_frame / 1e9


def build_prefix_cache(policy, pre, dataset, collate, tasks: list[str], batch_size: int = 64,
                       max_gb: float = 8.0) -> PrefixCache:
    """Features of every frame of `dataset` (`ChunkDataset`-style samples; `tasks`: every instruction in it)
    under the policy's frozen VLM."""
    longest = max(len(policy._prompt(t)) for t in set(tasks))
    size = cache_gb(policy, len(dataset), longest)
    if size > max_gb:
        raise MemoryError(f"the prefix cache would take {size:.1f} GB for {len(dataset)} frames (> expert_cache_max_gb="
                          f"{max_gb}); train fewer frames, or fewer expert layers (expert_num_layers)")
    was_training = policy.training
    policy.eval()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("keys", "values", "attention_mask", "next_position",
                                                           "action", "valid")}
    with torch.no_grad():
        for lo in range(0, len(dataset), batch_size):
            batch = pre(collate([dataset[i] for i in range(lo, min(len(dataset), lo + batch_size))]))
            features = policy.prefix_features(batch)
            parts["keys"].append(_left_pad(features["keys"].half().cpu(), longest, 3))
            parts["values"].append(_left_pad(features["values"].half().cpu(), longest, 3))
            parts["attention_mask"].append(_left_pad(features["attention_mask"].bool().cpu(), longest, 1))
            parts["next_position"].append(features["next_position"].cpu())
            parts["action"].append(batch["action"].float().cpu())
            parts["valid"].append(~batch["action_is_pad"].cpu())
    policy.train(was_training)
    cache = PrefixCache(**{k: torch.cat(v) for k, v in parts.items()})
    log.info("prefix cache: %d frames, keys %s (%.2f GB)", len(cache), tuple(cache.keys.shape), size)
    return cache


def freeze_all_but_expert(policy) -> list[torch.nn.Parameter]:
    for p in policy.parameters():
        p.requires_grad_(False)
    params = list(policy.expert.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def expert_step(policy, cache: PrefixCache, optimizer, batch_size: int, generator: torch.Generator,
                grad_clip: float, extras: list[tuple[int, float]] = ()) -> float:
    """One update of the expert on a random batch of cached frames; returns the loss. `extras` are (size,
    share) of the blocks at the cache's end (decision scenes, DAgger frames, in order): each fills its share
    of the batch, as in the end-to-end phase; the episodes' frames before them fill the rest."""
    n = len(cache) - sum(size for size, _ in extras)
    parts, start = [], n
    for size, share in extras:
        k = max(1, round(share * batch_size))
        parts.append(start + torch.randint(0, size, (k,), generator=generator))
        start += size
    k = sum(len(part) for part in parts)
    idx = torch.cat([torch.randint(0, n, (batch_size - k,), generator=generator), *parts])
    features, actions, valid = cache.batch(idx)
    device = next(policy.expert.parameters()).device
    features = {name: v.to(device) for name, v in features.items()}
    loss = policy.flow_loss_on_features(features, actions.to(device), valid.to(device)).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.expert.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.item())

