"""The VLM backbone: Qwen2.5-VL-family models (tiny offline presets or local VST/Qwen checkpoints).

    backbone = build_backbone(BackboneConfig(preset="tiny"))
    backbone.model, backbone.processor, backbone.tokenizer

It lives in the policy plugin because the policy is built on it; `vst_vla` (backbone tuning, spatial
evaluation) imports it from here, never the reverse. Encoding spatial-QA rows for training and
generation is vst_vla's (`vst_vla.backbone.chat`).
"""

from lerobot_policy_vst_vla.backbone.actions import action_token, add_action_tokens, add_special_tokens
from lerobot_policy_vst_vla.backbone.build import (
    TINY_TOKENIZER_DIR,
    Backbone,
    build_backbone,
    build_processor,
    resolve_device,
    resolve_dtype,
)
from lerobot_policy_vst_vla.backbone.config import PRESETS, BackboneConfig
from lerobot_policy_vst_vla.backbone.lora import LORA_TARGETS, add_lora, merge_lora, save_lora_adapters
from lerobot_policy_vst_vla.backbone.positions import install_absolute_positions, uses_absolute_positions
from lerobot_policy_vst_vla.backbone.qwen_format import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "LORA_TARGETS",
    "PRESETS",
    "TINY_TOKENIZER_DIR",
    "Backbone",
    "BackboneConfig",
    "action_token",
    "add_action_tokens",
    "add_lora",
    "add_special_tokens",
    "build_backbone",
    "build_processor",
    "install_absolute_positions",
    "merge_lora",
    "resolve_device",
    "resolve_dtype",
    "save_lora_adapters",
    "uses_absolute_positions",
]
