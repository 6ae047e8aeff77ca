"""Sample rows (vst_vla.spatial.schema) → Qwen2.5-VL model inputs, for training and for generation.

The prompt (chat template up to `<|im_start|>assistant\\n`) goes through the processor, which
expands each `<|image_pad|>` to one token per merged patch; the answer is tokenized on its own and
appended. So the training tokens are exactly what the model would produce after the generation
prompt. Video samples are frame lists and enter as several images, like multi-image samples.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from lerobot_policy_vst_vla.backbone.build import Backbone
from lerobot_policy_vst_vla.backbone.qwen_format import EOS_TOKEN, IGNORE_INDEX
from vst_vla.spatial.schema import to_messages


def encode_for_training(backbone: Backbone, rows: list[dict], root: str | Path) -> dict[str, torch.Tensor]:
    """Prompt + answer + `<|im_end|>`, right-padded; `labels` are -100 except on answer and `<|im_end|>`."""
    tokenizer = backbone.tokenizer
    samples = []
    for row in rows:
        sample = _encode_prompt(backbone, row, root)
        answer = tokenizer(row["answer"] + EOS_TOKEN, add_special_tokens=False)["input_ids"]
        # The template's newline after <|im_end|>: part of the sequence, not of what the model must say.
        newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
        if {backbone.processor.image_token_id, backbone.processor.video_token_id} & set(answer):
            raise ValueError(f"sample {row.get('id')!r}: the answer contains an image/video placeholder token")
        prompt = sample["input_ids"]
        sample["labels"] = [IGNORE_INDEX] * len(prompt) + answer + [IGNORE_INDEX] * len(newline)
        sample["input_ids"] = prompt + answer + newline
        sample["mm_token_type_ids"] += [0] * (len(answer) + len(newline))
        samples.append(sample)
    return _collate(samples, tokenizer.pad_token_id, left_pad=False, device=backbone.device)


def encode_for_generation(backbone: Backbone, rows: list[dict], root: str | Path) -> dict[str, torch.Tensor]:
    """Prompts ending in the generation prompt, left-padded so new tokens line up across the batch."""
    samples = [_encode_prompt(backbone, row, root) for row in rows]
    return _collate(samples, backbone.tokenizer.pad_token_id, left_pad=True, device=backbone.device)


@torch.no_grad()
def generate_answers(backbone: Backbone, rows: list[dict], root: str | Path, max_new_tokens: int = 256,
                     **generate_kwargs) -> list[str]:
    """Greedy (unless told otherwise) answers as text; special tokens dropped, `<think>` kept."""
    inputs = encode_for_generation(backbone, rows, root)
    out = backbone.model.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return backbone.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def load_image(path: str | Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def _encode_prompt(backbone: Backbone, row: dict, root: str | Path) -> dict:
    processor = backbone.processor
    messages = to_messages(row, root, with_answer=False)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images = [load_image(item["image"]) for item in messages[0]["content"] if item["type"] == "image"]
    enc = processor(text=[text], images=images or None, return_tensors="pt", return_mm_token_type_ids=True)
    sample = {"input_ids": enc["input_ids"][0].tolist(), "mm_token_type_ids": enc["mm_token_type_ids"][0].tolist()}
    if images:
        sample["pixel_values"] = enc["pixel_values"]
        sample["image_grid_thw"] = enc["image_grid_thw"]
    return sample


def _collate(samples: list[dict], pad_id: int, left_pad: bool, device: torch.device) -> dict[str, torch.Tensor]:
    if not samples:
        raise ValueError("cannot encode an empty list of rows")
    length = max(len(s["input_ids"]) for s in samples)
    pad_values = {"input_ids": pad_id, "attention_mask": 0, "mm_token_type_ids": 0, "labels": IGNORE_INDEX}
    out = {}
    for key, pad_value in pad_values.items():
        if key == "labels" and "labels" not in samples[0]:
            continue
        padded = []
        for s in samples:
            seq = [1] * len(s["input_ids"]) if key == "attention_mask" else s[key]
            pad = [pad_value] * (length - len(seq))
            padded.append(pad + seq if left_pad else seq + pad)
        out[key] = torch.tensor(padded, dtype=torch.long)
    with_images = [s for s in samples if "pixel_values" in s]
    if with_images:  # patches of all images, in sample order, as the model's placeholder scan expects
        out["pixel_values"] = torch.cat([s["pixel_values"] for s in with_images])
        out["image_grid_thw"] = torch.cat([s["image_grid_thw"] for s in with_images])
    return {key: value.to(device) for key, value in out.items()}
