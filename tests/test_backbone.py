"""The Qwen2.5-VL backbone builder, tokenizer asset, chat encoding and action tokens (all offline, CPU)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)

from omegaconf import OmegaConf  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from vst_vla.backbone import (  # noqa: E402
    PRESETS,
    BackboneConfig,
    action_token,
    add_action_tokens,
    build_backbone,
    encode_for_generation,
    encode_for_training,
    generate_answers,
)
from lerobot_policy_vst_vla.backbone.build import TINY_TOKENIZER_DIR  # noqa: E402
from lerobot_policy_vst_vla.backbone.make_tokenizer import write_tokenizer  # noqa: E402
from lerobot_policy_vst_vla.backbone.qwen_format import IGNORE_INDEX, QWEN_ADDED_TOKENS, THINK_TOKENS  # noqa: E402

TOKENS_224 = 64  # 224² → 16×16 patches of 14 px → 8×8 after the 2×2 merge


def _row(id_: str, images: list[str], question: str, answer: str, scenario: str = "multi_image") -> dict:
    return {"id": id_, "skill": "test", "scenario": scenario, "images": images, "question": question,
            "answer": answer, "answer_type": "text", "ground_truth": "{}", "metadata": "{}", "cot": False}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("spatial")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a0": (224, 224), "a1": (224, 224), "b0": (224, 224), "b1": (240, 320)}
    sizes |= {f"f{i}": (112, 112) for i in range(4)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [
        _row("a", ["images/a0.png", "images/a1.png"], "Which point is closer to the camera, A or B?",
             "<think>Point A is 1.2 m away and point B 2.5 m.</think>A"),
        _row("b", ["images/b0.png", "images/b1.png"],
             "How far did the camera move between the two images, in meters?", "0.35"),
    ]


@pytest.fixture(scope="module")
def tiny():
    return build_backbone(BackboneConfig(preset="tiny"))


# --- tokenizer -----------------------------------------------------------------------------------------


def test_tokenizer_asset_regenerates_identically(tmp_path):
    write_tokenizer(tmp_path)
    shipped = sorted(p.name for p in TINY_TOKENIZER_DIR.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == shipped
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (TINY_TOKENIZER_DIR / name).read_bytes(), name
    assert sum((TINY_TOKENIZER_DIR / n).stat().st_size for n in shipped) < 1_000_000


def test_tokenizer_has_qwen_tokens_and_template():
    tok = AutoTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), local_files_only=True)
    assert 4000 <= len(tok) <= 8000
    ids = tok.convert_tokens_to_ids([t for t, _ in QWEN_ADDED_TOKENS] + list(THINK_TOKENS))
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # Qwen's order, right after the BPE vocabulary
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    text = "<think>The mug is 0.42 m left of the bowl.</think>B"
    enc = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(enc) == text and enc[0] == tok.convert_tokens_to_ids("<think>")
    assert tok.decode(enc, skip_special_tokens=True) == text  # think tokens are not special
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n")


# --- building ------------------------------------------------------------------------------------------


def test_presets_sizes_and_config(tiny):
    counts = {"tiny": sum(p.numel() for p in tiny.model.parameters())}
    small = build_backbone(BackboneConfig(preset="small"))
    counts["small"] = sum(p.numel() for p in small.model.parameters())
    assert 3e6 < counts["tiny"] < 7e6, counts
    assert 18e6 < counts["small"] < 32e6, counts
    for bb in (tiny, small):
        cfg = bb.model.config
        text = cfg.text_config
        assert text.vocab_size == len(bb.tokenizer) == bb.model.lm_head.out_features
        assert cfg.vision_config.out_hidden_size == text.hidden_size
        head_dim = text.hidden_size // text.num_attention_heads
        assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
        assert cfg.image_token_id == bb.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        assert bb.model.config._attn_implementation == "sdpa" and bb.model.dtype == torch.float32
    assert set(PRESETS) == {"tiny", "small"}


def test_seed_sets_weights():
    a, b, c = (build_backbone(BackboneConfig(seed=s, action_tokens=8)).model.lm_head.weight for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)  # new action rows included
    state = torch.random.get_rng_state()
    build_backbone(BackboneConfig(seed=3))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone


def test_config_is_omegaconf_structured():
    cfg = OmegaConf.merge(OmegaConf.structured(BackboneConfig),
                          {"preset": "small", "pretrained_path": "/x", "action_tokens": 256})
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, BackboneConfig) and obj.action_tokens == 256 and obj.max_pixels is None


def test_image_processor_224_gives_64_tokens(tiny, data_root, rows):
    batch = encode_for_training(tiny, rows[:1], data_root)
    assert batch["image_grid_thw"].tolist() == [[1, 16, 16], [1, 16, 16]]
    assert batch["pixel_values"].shape == (2 * 256, 3 * 2 * 14 * 14)
    image_id = tiny.processor.image_token_id
    assert int((batch["input_ids"] == image_id).sum()) == 2 * TOKENS_224
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == image_id).long())


# --- chat encoding, training, generation -----------------------------------------------------------------


def test_forward_backward_labels_only_answer(tiny, data_root, rows):
    batch = encode_for_training(tiny, rows, data_root)
    assert set(batch) == {"input_ids", "attention_mask", "mm_token_type_ids", "labels", "pixel_values",
                          "image_grid_thw"}
    tok = tiny.tokenizer
    for i, row in enumerate(rows):
        labels = batch["labels"][i]
        span = (labels != IGNORE_INDEX).nonzero().flatten()
        assert torch.equal(span, torch.arange(span[0], span[-1] + 1))  # one contiguous span
        assert tok.decode(labels[span]) == row["answer"] + "<|im_end|>"
        assert torch.equal(labels[span], batch["input_ids"][i, span])
        prompt = tok.decode(batch["input_ids"][i, :span[0]])
        assert prompt.endswith(row["question"] + "<|im_end|>\n<|im_start|>assistant\n")
    # right padding: padded positions are masked and unlabelled
    assert torch.all(batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX)

    model = tiny.model
    model.train()
    try:
        out = model(**batch)
        assert torch.isfinite(out.loss)
        out.loss.backward()
    finally:
        model.eval()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any("visual" in n and g.abs().sum() > 0 for n, g in grads.items())  # the image path trains too
    model.zero_grad(set_to_none=True)


def test_padding_does_not_change_logits(tiny, data_root, rows):
    with torch.no_grad():
        batch = tiny.model(**encode_for_training(tiny, rows, data_root)).logits
        for i in range(len(rows)):
            single = encode_for_training(tiny, rows[i:i + 1], data_root)
            n = single["input_ids"].shape[1]
            torch.testing.assert_close(batch[i, :n], tiny.model(**single).logits[0], atol=1e-4, rtol=1e-4)


def test_video_frames_and_mixed_batch(tiny, data_root, rows):
    video = _row("v", [f"images/f{i}.png" for i in range(4)], "How many cubes are in the video?", "3", "video")
    text_only = _row("t", [], "What is 2 + 2?", "4", "single_image")
    batch = encode_for_training(tiny, [video, rows[1], text_only], data_root)
    assert batch["image_grid_thw"].shape == (6, 3)  # 4 frames + 2 images, in row order
    assert batch["image_grid_thw"][:4].tolist() == [[1, 8, 8]] * 4
    with torch.no_grad():
        assert torch.isfinite(tiny.model(**batch).loss)


def test_generate(tiny, data_root, rows):
    inputs = encode_for_generation(tiny, rows, data_root)
    assert "labels" not in inputs
    assert torch.all(inputs["attention_mask"][:, -1] == 1)  # left padding
    prompt = tiny.tokenizer.decode(inputs["input_ids"][0])
    assert prompt.endswith(rows[0]["question"] + "<|im_end|>\n<|im_start|>assistant\n")
    with torch.no_grad():
        out = tiny.model.generate(**inputs, max_new_tokens=4, min_new_tokens=4)
        assert out.shape == (2, inputs["input_ids"].shape[1] + 4)
        for i in range(len(rows)):  # greedy decoding does not depend on the batch's padding
            alone = encode_for_generation(tiny, rows[i:i + 1], data_root)
            ref = tiny.model.generate(**alone, max_new_tokens=4, min_new_tokens=4)
            assert torch.equal(out[i, -4:], ref[0, -4:])
    answers = generate_answers(tiny, rows, data_root, max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


# --- checkpoints -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-vlm"
    tiny.save_pretrained(folder)
    return folder


def _same_logits(a, b, data_root, rows) -> None:
    with torch.no_grad():
        x, y = encode_for_training(a, rows, data_root), encode_for_training(b, rows, data_root)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        assert torch.equal(a.model(**x).logits, b.model(**y).logits)


def test_save_load_roundtrip(tiny, saved, data_root, rows):
    loaded = build_backbone(BackboneConfig(pretrained_path=str(saved)))
    assert type(loaded.model) is type(tiny.model) and type(loaded.processor) is type(tiny.processor)
    assert loaded.model.config._attn_implementation == "sdpa" and loaded.model.dtype == torch.float32
    _same_logits(tiny, loaded, data_root, rows)


def _to_hub_layout(saved: Path, hub: Path) -> None:
    """Rewrite a transformers-5 save into the layout of Qwen/Qwen2.5-VL-3B-Instruct and VST checkpoints:
    flat config.json with rope_scaling, `visual.*` weight names, preprocessor_config.json with
    min/max_pixels, chat_template.json."""
    shutil.copytree(saved, hub)
    new = json.loads((saved / "config.json").read_text())
    text, vision = new["text_config"], new["vision_config"]
    legacy = {k: text[k] for k in ("hidden_act", "hidden_size", "intermediate_size", "max_position_embeddings",
                                   "num_attention_heads", "num_hidden_layers", "num_key_value_heads",
                                   "rms_norm_eps", "vocab_size", "bos_token_id", "eos_token_id")}
    legacy |= {k: new[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    legacy |= {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "rope_theta": 1e6,
        "rope_scaling": {"type": "mrope", "mrope_section": text["rope_parameters"]["mrope_section"]},
        "sliding_window": 32768, "use_sliding_window": False, "max_window_layers": 70, "tie_word_embeddings": False,
        "vision_config": {**vision, "in_chans": 3, "spatial_patch_size": 14},
    }
    del legacy["vision_config"]["model_type"], legacy["vision_config"]["initializer_range"]
    (hub / "config.json").write_text(json.dumps(legacy))
    weights = load_file(hub / "model.safetensors")
    save_file({k.replace("model.visual.", "visual."): w for k, w in weights.items()}, hub / "model.safetensors",
              metadata={"format": "pt"})
    (hub / "processor_config.json").unlink()
    template = (hub / "chat_template.jinja").read_text()
    (hub / "chat_template.jinja").unlink()
    (hub / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    (hub / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}))


def test_loads_hub_layout(tiny, saved, tmp_path, data_root, rows):
    _to_hub_layout(saved, tmp_path / "hub")
    assert any(k.startswith("visual.") for k in load_file(tmp_path / "hub" / "model.safetensors"))
    loaded = build_backbone(BackboneConfig(pretrained_path=str(tmp_path / "hub")))
    assert loaded.processor.image_processor.size["longest_edge"] == 12845056
    assert loaded.processor.chat_template == tiny.processor.chat_template
    # max_pixels overrides the checkpoint's, so the 224² test images give the same tokens as the preset
    loaded = build_backbone(BackboneConfig(pretrained_path=str(tmp_path / "hub"), max_pixels=224 * 224))
    _same_logits(tiny, loaded, data_root, rows)


def test_checkpoint_errors(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found"):
        build_backbone(BackboneConfig(pretrained_path=str(tmp_path / "nope")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_backbone(BackboneConfig(pretrained_path=str(empty)))

    llama = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(llama)
    with pytest.raises(ValueError, match=r"llama/config\.json: model_type is 'llama'"):
        build_backbone(BackboneConfig(pretrained_path=str(llama)))

    no_weights = tmp_path / "no_weights"
    shutil.copytree(saved, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        build_backbone(BackboneConfig(pretrained_path=str(no_weights)))

    mismatched = tmp_path / "mismatched"
    shutil.copytree(saved, mismatched)
    tok = AutoTokenizer.from_pretrained(str(mismatched), local_files_only=True)
    tok.add_tokens([f"<extra_{i}>" for i in range(10)])
    tok.save_pretrained(str(mismatched))
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the model's embedding has \d+ rows"):
        build_backbone(BackboneConfig(pretrained_path=str(mismatched)))

    with pytest.raises(ValueError, match="unknown backbone preset"):
        build_backbone(BackboneConfig(preset="huge"))
    with pytest.raises(ValueError, match="dtype"):
        build_backbone(BackboneConfig(dtype="float8"))


# --- action tokens ---------------------------------------------------------------------------------------


def test_action_tokens(tmp_path, data_root, rows):
    bb = build_backbone(BackboneConfig(action_tokens=256))
    ids, tok, model = bb.action_token_ids, bb.tokenizer, bb.model
    assert len(ids) == 256 and ids == list(range(ids[0], ids[0] + 256))
    assert ids[-1] == len(tok) - 1
    assert model.get_input_embeddings().num_embeddings == model.lm_head.out_features == len(tok)
    assert model.config.text_config.vocab_size == len(tok)
    assert tok(action_token(0) + action_token(255), add_special_tokens=False)["input_ids"] == [ids[0], ids[-1]]

    assert add_action_tokens(model, bb.processor, 256) == ids  # idempotent: same ids, no growth
    assert len(tok) == model.lm_head.out_features == ids[-1] + 1

    act_row = {**rows[0], "answer": "".join(action_token(i) for i in (3, 128, 255))}
    batch = encode_for_training(bb, [act_row], data_root)
    labels = batch["labels"][0]
    assert labels[labels != IGNORE_INDEX].tolist()[:3] == [ids[3], ids[128], ids[255]]
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)

    bb.save_pretrained(tmp_path / "with_actions")
    loaded = build_backbone(BackboneConfig(pretrained_path=str(tmp_path / "with_actions"), action_tokens=256))
    assert loaded.action_token_ids == ids and len(loaded.tokenizer) == len(tok)


def test_action_tokens_use_spare_rows():
    """Real Qwen checkpoints have more embedding rows than tokens; action tokens go there, no resize."""
    bb = build_backbone(BackboneConfig())
    bb.model.resize_token_embeddings(len(bb.tokenizer) + 300, mean_resizing=False)
    before = bb.model.get_input_embeddings().weight.clone()
    ids = add_action_tokens(bb.model, bb.processor, 256)
    assert ids[0] == len(bb.tokenizer) - 256
    assert torch.equal(bb.model.get_input_embeddings().weight, before)


# --- absolute patch positions (a from-scratch preset option) -------------------------------------------


def test_patch_positions_follow_the_merge_block_order():
    from lerobot_policy_vst_vla.backbone.positions import patch_positions

    pos = patch_positions(torch.tensor([[1, 4, 6]]), merge=2)  # 4 rows × 6 columns of patches
    assert pos.shape == (24, 2)
    # the first 2×2 merge block, then the block to its right: rows and columns as fractions of the grid
    expect = [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3)]
    assert torch.allclose(pos[:8], torch.tensor([[r / 4, c / 6] for r, c in expect]))
    assert torch.equal(patch_positions(torch.tensor([[2, 4, 6]]), 2), pos.repeat(2, 1))  # frames repeat


def test_absolute_positions_change_the_vit_and_survive_save_load(tmp_path, data_root, rows):
    with_pos = build_backbone(BackboneConfig(preset="tiny", absolute_positions=True))
    without = build_backbone(BackboneConfig(preset="tiny"))
    batch = encode_for_training(with_pos, rows, data_root)
    with torch.no_grad():  # same weights (same seed), so only the positions can make them differ
        assert not torch.allclose(with_pos.model(**batch).logits, without.model(**batch).logits)
    from lerobot_policy_vst_vla.backbone import install_absolute_positions

    install_absolute_positions(with_pos.model)  # idempotent: a second hook would add the positions twice
    with_pos.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["vision_config"]["absolute_positions"] is True
    loaded = build_backbone(BackboneConfig(pretrained_path=str(tmp_path / "ckpt")))
    _same_logits(with_pos, loaded, data_root, rows)
