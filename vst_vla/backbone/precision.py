"""Training precision: fp32 master weights, bf16/fp16 only as autocast.

AdamW on bf16 weights loses small updates: bf16 keeps 8 mantissa bits, so an update of 1e-6 (GRPO's
lr) changes only ~2 % of N(0, 0.02) weights and 5e-5 (SFT's) ~57 %. Anything that
trains a backbone loads it in float32 and lets autocast (accelerate `mixed_precision`, or FSDP's
mixed-precision policy, which accelerate builds from the same setting) run the matmuls in bf16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lerobot_policy_vst_vla.backbone.build import resolve_dtype

_AUTOCAST = {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class TrainingPrecision:
    param_dtype: str  # what the weights (and so the optimiser state) are stored in: always "float32"
    mixed_precision: str  # accelerate's setting: "no" | "bf16" | "fp16"


def training_precision(dtype: str, device: torch.device | str) -> TrainingPrecision:
    """The precision to train a backbone whose config asks for `dtype` ("auto", "bfloat16", ...)."""
    compute = resolve_dtype(dtype, torch.device(device))
    return TrainingPrecision(param_dtype="float32", mixed_precision=_AUTOCAST[compute])
