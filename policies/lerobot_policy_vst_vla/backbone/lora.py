"""LoRA on a Qwen2.5-VL backbone, one way for every trainer (backbone tuning and the policy).

Adapters go on the language model's attention and MLP projections only; the vision tower keeps its
weights (it trains fully or stays frozen). They are injected in place (peft's `inject_adapter_in_model`):
module and parameter names stay those of the plain model plus `lora_A/lora_B`, so a LoRA model saves,
loads and is wrapped (accelerate, FSDP, a LeRobot policy) like the plain one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file

LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER = "default"


def lora_config(rank: int, alpha: float, dropout: float, targets: tuple[str, ...] | list[str] = LORA_TARGETS) -> LoraConfig:
    """The projections `targets` of the language model (names as in Qwen2_5_VLForConditionalGeneration)."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    pattern = rf"(.*\.)?language_model\..*\.({'|'.join(targets)})"
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern)


def add_lora(model: torch.nn.Module, rank: int, alpha: float, dropout: float,
             targets: tuple[str, ...] | list[str] = LORA_TARGETS) -> torch.nn.Module:
    """Inject LoRA adapters into `model` (in place; returned for chaining). Afterwards only the adapters
    require gradients; callers that train more (the vision tower) switch those parameters on again."""
    return inject_adapter_in_model(lora_config(rank, alpha, dropout, targets), model, adapter_name=ADAPTER)


def save_lora_adapters(model: torch.nn.Module, folder: str | Path, state_dict: dict | None = None) -> None:
    """The adapters alone in peft's layout (`adapter_config.json`, `adapter_model.safetensors`), so
    `peft.PeftModel.from_pretrained(plain_model, folder)` loads them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    adapters = get_peft_model_state_dict(model, state_dict=state_dict, adapter_name=ADAPTER)
    # PeftModel keeps the model under `base_model.model.`: its saved keys carry that prefix
    save_file({f"base_model.model.{k}": v.detach().cpu().contiguous() for k, v in adapters.items()},
              str(folder / "adapter_model.safetensors"))
    config = model.peft_config[ADAPTER].to_dict()
    config["target_modules"] = model.peft_config[ADAPTER].target_modules
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, default=sorted))


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every adapter into its base layer and put the base layer back (in place): a plain model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model
