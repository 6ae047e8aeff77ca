"""The VLM backbone as vst_vla uses it: the model from the policy plugin, and spatial-QA rows as its inputs.

    backbone = build_backbone(BackboneConfig(preset="tiny"))
    batch = encode_for_training(backbone, rows, root)     # rows in vst_vla.spatial.schema format
    loss = backbone.model(**batch).loss

The builder, presets, tokenizer and action tokens live in `lerobot_policy_vst_vla.backbone` (the
policy plugin is built on them and must install without vst_vla); they are re-exported here so
`from vst_vla.backbone import build_backbone` keeps working. `chat` (row encoding) and `precision`
(training precision) are vst_vla's own.
"""

from lerobot_policy_vst_vla.backbone import (
    IGNORE_INDEX,
    LORA_TARGETS,
    PRESETS,
    Backbone,
    BackboneConfig,
    action_token,
    add_action_tokens,
    add_lora,
    build_backbone,
    build_processor,
    merge_lora,
    resolve_device,
    resolve_dtype,
    save_lora_adapters,
)
from vst_vla.backbone.chat import encode_for_generation, encode_for_training, generate_answers

__all__ = [
    "IGNORE_INDEX",
    "LORA_TARGETS",
    "PRESETS",
    "Backbone",
    "BackboneConfig",
    "action_token",
    "add_action_tokens",
    "add_lora",
    "build_backbone",
    "build_processor",
    "encode_for_generation",
    "encode_for_training",
    "generate_answers",
    "merge_lora",
    "resolve_device",
    "resolve_dtype",
    "save_lora_adapters",
]
