"""Backbone settings: the YAML-facing `BackboneConfig` and the sizes of the offline presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# A 224×224 image is 16×16 patches of 14 px → 8×8 = 64 tokens after the 2×2 merge; the cap keeps
# tiny-model batches small whatever the camera resolution.
PRESET_MIN_PIXELS = 28 * 28 * 4
PRESET_MAX_PIXELS = 224 * 224


@dataclass
class BackboneConfig:
    """What `build_backbone` builds. Only OmegaConf-friendly types, so hydra YAML maps onto it."""

    preset: str = "tiny"  # "tiny" | "small": random init from a config; ignored when pretrained_path is set
    pretrained_path: Optional[str] = None  # local Qwen2.5-VL / VST checkpoint folder
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:1" | "auto" (cuda when available)
    dtype: str = "auto"  # "auto" = float32 on CPU, bfloat16 on CUDA | "float32" | "bfloat16" | "float16"
    attn_implementation: str = "sdpa"
    action_tokens: int = 0  # > 0: add <|action_0|>…<|action_{n-1}|> (OpenVLA-style discrete actions)
    seed: int = 0  # initialises preset weights
    min_pixels: Optional[int] = None  # None: the preset's, or the checkpoint's preprocessor_config.json
    max_pixels: Optional[int] = None
    # presets only: add fixed 2-D sin/cos patch positions to the ViT (backbone/positions.py); a
    # checkpoint's config.json decides for itself
    absolute_positions: bool = False


@dataclass(frozen=True)
class Preset:
    """Sizes of a randomly initialised Qwen2.5-VL; the vocabulary comes from the tiny tokenizer."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_depth: int
    vision_num_heads: int


PRESETS: dict[str, Preset] = {
    "tiny": Preset(128, 768, 6, 4, 2, 128, 512, 2, 4),
    "small": Preset(256, 1024, 10, 4, 2, 384, 1536, 4, 6),
}
