"""The VLM backbone: Qwen2.5-VL-family models (tiny offline presets or local VST/Qwen checkpoints).

    backbone = build_backbone(BackboneConfig(preset="tiny"))
    batch = encode_for_training(backbone, rows, root)     # rows in vst_vla.spatial.schema format
    loss = backbone.model(**batch).loss
"""

from vst_vla.backbone.actions import action_token, add_action_tokens
from vst_vla.backbone.build import Backbone, build_backbone, build_processor, resolve_device, resolve_dtype
from vst_vla.backbone.chat import encode_for_generation, encode_for_training, generate_answers
from vst_vla.backbone.config import PRESETS, BackboneConfig

__all__ = [
    "PRESETS",
    "Backbone",
    "BackboneConfig",
    "action_token",
    "add_action_tokens",
    "build_backbone",
    "build_processor",
    "encode_for_generation",
    "encode_for_training",
    "generate_answers",
    "resolve_device",
    "resolve_dtype",
]
