"""Generation with a budget sized from the data, and honest accounting of what the budget cut off.

A rollout or an evaluation answer cut before its stop token scores nothing (no `</think>`, half a JSON
list), so the budget must cover the answers the model is taught: `answer_budgets` takes a quantile
of the reference answers' token lengths per answer type, and `generate` reports which outputs hit it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from vst_vla.backbone import encode_for_generation
from lerobot_policy_vst_vla.backbone.qwen_format import EOS_TOKEN


@dataclass
class Generated:
    prompt: dict  # the encoded prompt(s)
    tokens: torch.Tensor  # (N, T) new tokens, `pad_id` after each stop token
    lengths: torch.Tensor  # (N,) tokens up to and including the stop token; T when truncated
    truncated: torch.Tensor  # (N,) bool: no stop token within the budget
    texts: list[str]


def stop_ids(backbone) -> list[int]:
    """Every id that ends a turn: `<|im_end|>` and whatever the generation config counts as EOS."""
    eos = backbone.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    ids.add(backbone.tokenizer.convert_tokens_to_ids(EOS_TOKEN))
    return sorted(ids)


def cut_at_stop(new_tokens: torch.Tensor, stops: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens with pad after the first stop, lengths including the stop, truncated flags).

    The mask of a completion comes from these lengths, never from `tokens != pad_id`: the pad id may
    be a stop id too, and the stop token must be trained (it is what ends the answer)."""
    is_stop = torch.isin(new_tokens, torch.tensor(stops, device=new_tokens.device))
    seen = is_stop.long().cumsum(1)
    after = (seen - is_stop.long()) > 0  # strictly after the first stop
    truncated = seen[:, -1] == 0
    lengths = torch.where(truncated, torch.full_like(seen[:, -1], new_tokens.shape[1]),
                          (~after).sum(1))
    return torch.where(after, torch.full_like(new_tokens, pad_id), new_tokens), lengths, truncated


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).long()


def answer_budgets(tokenizer, rows, quantile: float = 0.95, margin: float = 1.25, minimum: int = 8,
                   cap: int | None = None) -> dict[str, int]:
    """Per answer type, `margin` x the `quantile` of the reference answers' token lengths (with the stop)."""
    lengths = defaultdict(list)
    for row in rows:
        lengths[row["answer_type"]].append(len(tokenizer(row["answer"] + EOS_TOKEN, add_special_tokens=False)["input_ids"]))
    out = {}
    for kind, ls in lengths.items():
        budget = max(minimum, math.ceil(float(np.quantile(ls, quantile)) * margin))
        out[kind] = min(budget, cap) if cap else budget
    return out


def vision_token_ids(model) -> list[int]:
    """Ids that only the processor may place (image/video pads, vision start/end). A sampled one breaks
    every later forward over prompt + answer ("Image features and image tokens do not match")."""
    config = getattr(model, "config", None)
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return sorted({i for n in names if isinstance(i := getattr(config, n, None), int)})


@torch.no_grad()
def generate(model, backbone, rows: list[dict], root: str, max_new_tokens: int, num_return_sequences: int = 1,
             **sampling) -> Generated:
    """Answers to `rows` (one batch, left-padded), cut at their stop token, with truncation flags."""
    prompt = encode_for_generation(backbone, rows, root)
    pad = backbone.tokenizer.pad_token_id
    out = model.generate(**prompt, max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
                         pad_token_id=pad, eos_token_id=stop_ids(backbone),
                         suppress_tokens=vision_token_ids(backbone.model), **sampling)
    tokens, lengths, truncated = cut_at_stop(out[:, prompt["input_ids"].shape[1]:], stop_ids(backbone), pad)
    texts = backbone.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return Generated(prompt, tokens, lengths, truncated, texts)
