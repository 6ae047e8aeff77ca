"""Absolute 2-D patch positions for Qwen2.5-VL's ViT (an option of the from-scratch presets).

Qwen2.5-VL's ViT and its mRoPE decoder carry image positions only as rotations: they steer which
token attends to which, but never put a position into a token's content. A pretrained model reads
positions fine through them; a tiny model trained from scratch on a few thousand images does not:
asked which of two marked points is lower, the tiny preset stayed at chance after 400 SFT steps and
reached 0.725 with these positions (README section 3). So a preset can add a fixed (parameter-free)
2-D sin/cos of each patch's (row, column) / grid size to the patch embeddings.

The switch is stored in the checkpoint's `config.json` (`vision_config.absolute_positions`), and
`build_backbone` re-installs the hook when it loads one, so every stage and the policy see the same
model. A plain `Qwen2_5_VLForConditionalGeneration.from_pretrained` does not: call
`install_absolute_positions(model)` after it.
"""

from __future__ import annotations

import math

import torch

CONFIG_KEY = "absolute_positions"
_HOOKED = "_vst_absolute_positions"


def patch_positions(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """(row / height, column / width) of every patch, in the processor's order: 2×2 merge blocks of
    patches, blocks row-major, frames one after another (the order `rot_pos_emb` uses)."""
    pos = []
    for t, h, w in grid_thw.tolist():
        rows = torch.arange(h)[:, None].expand(h, w)
        cols = torch.arange(w)[None].expand(h, w)
        blocks = [x.reshape(h // merge, merge, w // merge, merge).permute(0, 2, 1, 3).flatten() for x in (rows, cols)]
        pos.append(torch.stack([blocks[0] / h, blocks[1] / w], -1).repeat(t, 1))
    return torch.cat(pos).float()


def sincos(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """`dim` features: sin and cos of each coordinate at dim/4 frequencies, 1 to 32 turns per image."""
    freqs = math.pi * 2.0 ** torch.linspace(0, 5, dim // 4, device=pos.device)
    angles = torch.cat([pos[:, :1] * freqs, pos[:, 1:] * freqs], -1)
    return torch.cat([angles.sin(), angles.cos()], -1)


def install_absolute_positions(model) -> None:
    """Add the fixed 2-D position to `model`'s ViT patch embeddings (idempotent) and record it in
    `model.config.vision_config` so that a saved checkpoint keeps the switch."""
    visual = model.model.visual
    setattr(model.config.vision_config, CONFIG_KEY, True)
    if getattr(visual, _HOOKED, False):
        return
    dim, merge = visual.config.hidden_size, visual.spatial_merge_size
    if dim % 4:
        raise ValueError(f"vision hidden size {dim} must be a multiple of 4 for 2-D sin/cos positions")
    grid: dict[str, torch.Tensor] = {}

    def remember_grid(module, args, kwargs):
        grid["thw"] = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]

    def add_positions(module, inputs, out):
        pos = patch_positions(grid["thw"], merge).to(out.device)
        return out + sincos(pos, dim).to(out.dtype)

    visual.register_forward_pre_hook(remember_grid, with_kwargs=True)
    visual.patch_embed.register_forward_hook(add_positions)
    setattr(visual, _HOOKED, True)


def uses_absolute_positions(model) -> bool:
    return bool(getattr(model.config.vision_config, CONFIG_KEY, False))
