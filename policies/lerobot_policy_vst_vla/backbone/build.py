"""Build a Qwen2.5-VL backbone: a small random one from a preset (offline), or a local checkpoint.

Presets exist because no small pretrained VLM can be downloaded here: they have the real
architecture (ViT with window attention + patch merger, 3-D mRoPE decoder) at toy sizes, and the
tiny tokenizer in `lerobot_policy_vst_vla/assets/tiny_tokenizer/`, so every stage runs end to end on a CPU.
Real runs point `pretrained_path` at Qwen2.5-VL-3B/7B-Instruct or VST-3B/7B-SFT/RL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from lerobot_policy_vst_vla.backbone.actions import add_action_tokens
from lerobot_policy_vst_vla.backbone.config import PRESET_MAX_PIXELS, PRESET_MIN_PIXELS, PRESETS, BackboneConfig, Preset
from lerobot_policy_vst_vla.backbone.positions import install_absolute_positions, uses_absolute_positions
from lerobot_policy_vst_vla.backbone.qwen_format import (
    CHAT_TEMPLATE,
    EOS_TOKEN,
    IMAGE_TOKEN,
    PAD_TOKEN,
    VIDEO_TOKEN,
    VISION_END_TOKEN,
    VISION_START_TOKEN,
)

TINY_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"
MODEL_TYPE = "qwen2_5_vl"
PATCH_SIZE, MERGE_SIZE, TEMPORAL_PATCH_SIZE = 14, 2, 2
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Backbone:
    model: Qwen2_5_VLForConditionalGeneration
    processor: Qwen2_5_VLProcessor
    action_token_ids: list[int] = field(default_factory=list)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.device

    def save_pretrained(self, path: str | Path) -> None:
        """Write the checkpoint layout that `BackboneConfig.pretrained_path` loads."""
        self.model.save_pretrained(str(path))
        self.processor.save_pretrained(str(path))


def build_backbone(cfg: BackboneConfig) -> Backbone:
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    # Seeded random init (preset weights, new action-token rows) without touching the caller's RNG.
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        if cfg.pretrained_path:
            model, processor = _load_pretrained(Path(cfg.pretrained_path).expanduser(), cfg, device, dtype)
        else:
            model, processor = _build_preset(cfg, device, dtype)
        action_ids = add_action_tokens(model, processor, cfg.action_tokens) if cfg.action_tokens > 0 else []
    return Backbone(model=model, processor=processor, action_token_ids=action_ids)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"backbone dtype {name!r} not one of {['auto', *_DTYPES]}")
    return _DTYPES[name]


# --- presets -----------------------------------------------------------------------------------------


def build_processor(min_pixels: int = PRESET_MIN_PIXELS,
                    max_pixels: int = PRESET_MAX_PIXELS) -> Qwen2_5_VLProcessor:
    """The tiny tokenizer with Qwen2.5-VL's image/video processors (patch 14, merge 2)."""
    tokenizer = AutoTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), local_files_only=True)
    # A fresh `size` dict for each: Qwen2VLImageProcessor writes min/max_pixels into its class default.
    def vision() -> dict:
        return dict(size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, patch_size=PATCH_SIZE,
                    merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE)

    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**vision()),
        video_processor=Qwen2VLVideoProcessor(**vision()),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def preset_config(preset: Preset, tokenizer) -> Qwen2_5_VLConfig:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PAD_TOKEN, EOS_TOKEN, IMAGE_TOKEN, VIDEO_TOKEN,
                                                           VISION_START_TOKEN, VISION_END_TOKEN)}
    head_dim = preset.hidden_size // preset.num_attention_heads
    if head_dim % 16:
        raise ValueError(f"text head dim {head_dim} must be a multiple of 16 for mRoPE sections")
    # Qwen2.5-VL splits the rotary frequencies [16, 24, 24] (t, h, w) for head dim 128; keep the ratio.
    mrope_section = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=preset.hidden_size,
            intermediate_size=preset.intermediate_size,
            num_hidden_layers=preset.num_hidden_layers,
            num_attention_heads=preset.num_attention_heads,
            num_key_value_heads=preset.num_key_value_heads,
            max_position_embeddings=tokenizer.model_max_length,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_section},
            bos_token_id=ids[PAD_TOKEN],
            eos_token_id=ids[EOS_TOKEN],
            pad_token_id=ids[PAD_TOKEN],
        ),
        vision_config=dict(
            depth=preset.vision_depth,
            hidden_size=preset.vision_hidden_size,
            intermediate_size=preset.vision_intermediate_size,
            num_heads=preset.vision_num_heads,
            patch_size=PATCH_SIZE,
            spatial_merge_size=MERGE_SIZE,
            temporal_patch_size=TEMPORAL_PATCH_SIZE,
            out_hidden_size=preset.hidden_size,
            window_size=112,
            fullatt_block_indexes=[preset.vision_depth - 1],
            tokens_per_second=2,
        ),
        image_token_id=ids[IMAGE_TOKEN],
        video_token_id=ids[VIDEO_TOKEN],
        vision_start_token_id=ids[VISION_START_TOKEN],
        vision_end_token_id=ids[VISION_END_TOKEN],
    )


def _build_preset(cfg: BackboneConfig, device: torch.device, dtype: torch.dtype):
    if cfg.preset not in PRESETS:
        raise ValueError(f"unknown backbone preset {cfg.preset!r}; choose one of {sorted(PRESETS)} "
                         "or set pretrained_path")
    processor = build_processor(cfg.min_pixels or PRESET_MIN_PIXELS, cfg.max_pixels or PRESET_MAX_PIXELS)
    tokenizer = processor.tokenizer
    config = preset_config(PRESETS[cfg.preset], tokenizer)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.set_attn_implementation(cfg.attn_implementation)
    if cfg.absolute_positions:
        install_absolute_positions(model)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    return model.to(device=device, dtype=dtype).eval(), processor


# --- local checkpoints -------------------------------------------------------------------------------


def check_checkpoint(folder: Path) -> None:
    """Fail early, naming the file, when `folder` is not a Qwen2.5-VL checkpoint."""
    if not folder.is_dir():
        raise FileNotFoundError(f"backbone checkpoint folder not found: {folder}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {folder}: expected a Hugging Face Qwen2.5-VL checkpoint "
                                "(config.json, *.safetensors, tokenizer files, preprocessor_config.json)")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    if model_type != MODEL_TYPE:
        raise ValueError(f"{config_file}: model_type is {model_type!r} (architectures "
                         f"{config.get('architectures')}), but the backbone must be {MODEL_TYPE!r} "
                         "(Qwen2.5-VL-*-Instruct or VST-*-SFT/RL)")
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        raise FileNotFoundError(f"no tokenizer (tokenizer.json or vocab.json + merges.txt) in {folder}")
    # Hub checkpoints keep image settings in preprocessor_config.json; transformers 5 saves processor_config.json.
    if not any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        raise FileNotFoundError(f"no preprocessor_config.json or processor_config.json (image processor "
                                f"settings) in {folder}")


def _load_pretrained(folder: Path, cfg: BackboneConfig, device: torch.device, dtype: torch.dtype):
    check_checkpoint(folder)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(folder), dtype=dtype, attn_implementation=cfg.attn_implementation,
        local_files_only=True, device_map=str(device),
    )
    processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    if cfg.min_pixels or cfg.max_pixels:
        for proc in (processor.image_processor, processor.video_processor):
            proc.size = type(proc.size)(shortest_edge=cfg.min_pixels or proc.size["shortest_edge"],
                                        longest_edge=cfg.max_pixels or proc.size["longest_edge"])
    _check_vocab(folder, model, processor.tokenizer)
    if uses_absolute_positions(model):  # a preset trained with them: the hook is not in the weights
        install_absolute_positions(model)
    return model.eval(), processor


def _check_vocab(folder: Path, model, tokenizer) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:  # fewer tokens than rows is normal: Qwen pads its embedding matrix
        raise ValueError(f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has "
                         f"{rows} rows; tokenizer files and weights come from different checkpoints")
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id != model.config.image_token_id:
        raise ValueError(f"{folder}: tokenizer id of {IMAGE_TOKEN} is {image_id} but config.json says "
                         f"image_token_id={model.config.image_token_id}")
