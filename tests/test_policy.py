"""The vst_vla policy plugin on tiny offline backbones: both heads learn, decode, save and fail clearly."""

import json
import shutil

import numpy as np
import pytest
import torch
from lerobot.configs import FeatureType, NormalizationMode, PolicyFeature
from lerobot.policies.act.configuration_act import ACTConfig
from lerobot.policies.factory import get_policy_class, make_pre_post_processors
from PIL import Image

from lerobot_policy_vst_vla import VSTVLAConfig, VSTVLAPolicy
from lerobot_policy_vst_vla.modeling_vst_vla import check_dataset_features, dequantize, quantize
from vst_vla.backbone import BackboneConfig, build_backbone

CAMERAS = ("observation.images.front", "observation.images.wrist")
ACTION_DIM = 6
TASKS = ["stack the red cube on the blue cube", "put the green sphere to the left of the orange cube, gently"]


def make_config(head: str, **overrides) -> VSTVLAConfig:
    features = {cam: PolicyFeature(FeatureType.VISUAL, (3, 96, 96)) for cam in CAMERAS}
    features["observation.state"] = PolicyFeature(FeatureType.STATE, (6,))
    kwargs = dict(input_features=features, output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
                  action_head=head, device="cpu", image_size=(56, 56), chunk_size=3 if head == "flow" else 2)
    return VSTVLAConfig(**{**kwargs, **overrides})


def make_batch(cfg: VSTVLAConfig, seed: int = 0, tasks=TASKS) -> dict:
    g = torch.Generator().manual_seed(seed)
    b = len(tasks)
    batch = {cam: torch.rand(b, 3, 96, 96, generator=g) for cam in CAMERAS}
    batch["observation.state"] = torch.randn(b, 6, generator=g)
    batch["action"] = torch.rand(b, cfg.chunk_size, ACTION_DIM, generator=g) * 1.6 - 0.8
    batch["task"] = list(tasks)
    return batch


@pytest.fixture(scope="module")
def policies():
    torch.manual_seed(0)
    return {head: VSTVLAPolicy(make_config(head)).eval() for head in ("tokens", "flow")}


def test_config_defaults_follow_the_head():
    tokens, flow = make_config("tokens", chunk_size=None), make_config("flow", chunk_size=None)
    assert (tokens.chunk_size, tokens.n_action_steps) == (1, 1)  # the paper: one step, no chunking
    assert tokens.normalization_mapping["ACTION"] is NormalizationMode.QUANTILES
    assert (flow.chunk_size, flow.n_action_steps) == (10, 10)
    assert flow.normalization_mapping["ACTION"] is NormalizationMode.MEAN_STD
    assert tokens.action_delta_indices == [0] and tokens.observation_delta_indices is None
    with pytest.raises(ValueError, match="multiples of 28"):
        make_config("flow", image_size=(60, 56))
    with pytest.raises(ValueError, match="QUANTILES"):
        make_config("tokens", normalization_mapping={"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"})
    with pytest.raises(ValueError, match="n_action_steps"):
        make_config("flow", n_action_steps=5)
    assert get_policy_class("vst_vla") is VSTVLAPolicy  # lerobot's factory finds the class by convention


def test_quantization_round_trip_is_within_half_a_bin():
    n_bins = 256
    actions = torch.rand(10_000) * 2 - 1
    assert (dequantize(quantize(actions, n_bins), n_bins) - actions).abs().max() <= 1 / n_bins + 1e-6
    edges = torch.tensor([-1.0, 1.0, -5.0, 5.0])  # the ends and clipped outliers land in the end bins
    assert quantize(edges, n_bins).tolist() == [0, n_bins - 1, 0, n_bins - 1]
    # In robot units, through the policy's real (un)normalisers built from dataset-style q01/q99 stats.
    cfg = make_config("tokens")
    q01, q99 = np.array([-30.0, -10, 0, 60, -22, 1]), np.array([10.0, 8, 50, 95, -19, 61])
    stats = {"action": {"q01": q01, "q99": q99, "min": q01 - 1, "max": q99 + 1, "mean": (q01 + q99) / 2,
                        "std": np.ones(6)}}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    raw = torch.from_numpy(q01 + np.random.default_rng(0).random((500, 6)) * (q99 - q01)).float()
    normalised = pre({"observation.state": torch.zeros(500, 6), "action": raw, "task": "stack"})["action"]
    assert normalised.abs().max() <= 1
    restored = post(dequantize(quantize(normalised, n_bins), n_bins))
    half_bin = torch.from_numpy((q99 - q01) / (2 * n_bins)).float()
    assert ((restored - raw).abs() <= half_bin + 1e-4).all()


def test_patches_match_qwen_image_processor(policies):
    """The policy cuts images into patches in torch; Qwen's own processor must agree exactly."""
    policy = policies["tokens"]
    image = np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    ours, grid = policy._pixel_values({CAMERAS[0]: torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
                                       CAMERAS[1]: torch.zeros(1, 3, 56, 56)})
    ref = policy.processor.image_processor(images=[Image.fromarray(image)], return_tensors="pt")
    n = ref["pixel_values"].shape[0]
    torch.testing.assert_close(ours[:n], ref["pixel_values"], atol=1e-5, rtol=0)
    assert grid[0].tolist() == ref["image_grid_thw"][0].tolist()


@pytest.mark.parametrize("head", ["tokens", "flow"])
def test_overfits_one_batch(head):
    torch.manual_seed(0)
    policy = VSTVLAPolicy(make_config(head)).train()
    batch = make_batch(policy.config)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        torch.manual_seed(1)  # the same flow time and noise every step: a fixed objective
        loss, info = policy.forward(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and info["loss"] == pytest.approx(losses[-1])
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("head", ["tokens", "flow"])
def test_chunk_shapes_and_action_queue(policies, head, monkeypatch):
    policy = policies[head]
    cfg = policy.config
    batch = make_batch(cfg)
    chunk = policy.predict_action_chunk(batch)
    assert chunk.shape == (2, cfg.chunk_size, ACTION_DIM) and torch.isfinite(chunk).all()
    if head == "tokens":  # bin centres in [-1, 1]
        assert chunk.abs().max() < 1

    calls = []

    def numbered_chunk(batch, noise=None):  # action k of every chunk is k
        calls.append(1)
        return torch.arange(cfg.chunk_size).float().view(1, -1, 1).expand(2, -1, ACTION_DIM)

    monkeypatch.setattr(policy, "predict_action_chunk", numbered_chunk)
    policy.reset()
    steps = [policy.select_action(batch) for _ in range(cfg.n_action_steps + 1)]
    assert all(s.shape == (2, ACTION_DIM) for s in steps)
    assert [s[0, 0].item() for s in steps] == [*range(cfg.n_action_steps), 0]  # queue drained, then refilled
    assert len(calls) == 2
    policy.reset()
    policy.select_action(batch)
    assert len(calls) == 3  # reset() drops the queued actions


def test_flow_cache_gives_the_same_actions_as_recomputing_the_prefix(policies, monkeypatch):
    policy = policies["flow"]
    batch = make_batch(policy.config)
    noise = torch.randn(2, policy.config.chunk_size, ACTION_DIM, generator=torch.Generator().manual_seed(3))
    cached = policy.predict_action_chunk(batch, noise=noise)
    calls = []
    run_vlm = policy._run_vlm

    def counted_run_vlm(*args, **kwargs):
        calls.append(1)
        return run_vlm(*args, **kwargs)

    monkeypatch.setattr(policy, "_run_vlm", counted_run_vlm)
    monkeypatch.setattr(policy.config, "use_prefix_cache", False)
    uncached = policy.predict_action_chunk(batch, noise=noise)
    assert len(calls) == policy.config.num_steps  # the VLM ran at every denoising step…
    policy.config.use_prefix_cache = True
    calls.clear()
    torch.testing.assert_close(policy.predict_action_chunk(batch, noise=noise), cached, atol=0, rtol=0)
    assert len(calls) == 1  # …and once per chunk with the cache
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)


def test_inference_noise_scale_zero_is_deterministic(policies, monkeypatch):
    policy = policies["flow"]
    batch = make_batch(policy.config)
    drawn = [policy.predict_action_chunk(batch) for _ in range(2)]
    assert not torch.allclose(drawn[0], drawn[1])  # scale 1 samples: two calls differ
    monkeypatch.setattr(policy.config, "inference_noise_scale", 0.0)
    zero = policy.predict_action_chunk(batch)
    torch.testing.assert_close(policy.predict_action_chunk(batch), zero, atol=0, rtol=0)
    torch.testing.assert_close(zero, policy.predict_action_chunk(batch, noise=torch.zeros_like(zero)), atol=0, rtol=0)
    with pytest.raises(ValueError, match="inference_noise_scale"):
        make_config("flow", inference_noise_scale=1.5)


def test_tokens_cached_decoding_matches_a_full_forward(policies):
    """Greedy decoding on the KV cache (positions after the prefix = mask sum + rope delta) must pick
    the same tokens as one teacher-forced pass over prefix + decoded tokens."""
    policy = policies["tokens"]
    cfg = policy.config
    batch = make_batch(cfg)
    bins = quantize(policy.predict_action_chunk(batch), cfg.n_bins).flatten(1)
    with torch.no_grad():
        suffix = policy.action_tokens.embed(bins[:, :-1])
        hidden = policy._run_vlm(policy._encode_prefix(batch), suffix_embeds=suffix).last_hidden_state
    logits = policy.action_tokens.logits(hidden[:, -bins.shape[1]:])
    assert torch.equal(logits.argmax(-1), bins)


def test_tokens_head_trains_only_what_it_decodes():
    """Loss over the 256 action rows only; frozen LLM weights (embeddings, lm_head) stay frozen; rows distinct."""
    policy = VSTVLAPolicy(make_config("tokens", freeze_llm=True))
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert {"action_tokens.input", "action_tokens.output"} <= trainable
    assert not any(n.startswith("vlm.lm_head") or "embed_tokens" in n for n in trainable)
    rows = policy.action_tokens.output
    sims = torch.nn.functional.cosine_similarity(rows[:, None], rows[None], dim=-1) - torch.eye(len(rows))
    assert sims.abs().max() < 0.5  # no two bins start alike
    batch = make_batch(policy.config)
    loss, _ = policy.forward(batch)
    loss.backward()
    assert policy.action_tokens.output.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in policy.named_parameters() if not p.requires_grad)


def test_left_padding_does_not_change_a_sample(policies):
    policy = policies["flow"]
    batch = make_batch(policy.config)
    noise = torch.randn(2, policy.config.chunk_size, ACTION_DIM, generator=torch.Generator().manual_seed(4))
    together = policy.predict_action_chunk(batch, noise=noise)
    for i in range(2):
        alone = {k: v[i: i + 1] for k, v in batch.items()}
        torch.testing.assert_close(policy.predict_action_chunk(alone, noise=noise[i: i + 1]), together[i: i + 1],
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("head,overrides", [("tokens", {}), ("flow", {"lora_rank": 2})])
def test_save_and_load_gives_identical_actions(head, overrides, tmp_path):
    torch.manual_seed(0)
    policy = VSTVLAPolicy(make_config(head, **overrides)).eval()
    with torch.no_grad():  # move every weight off its initial value, so loading must restore them
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = make_batch(policy.config)
    noise = torch.randn(2, policy.config.chunk_size, ACTION_DIM)
    expected = policy.predict_action_chunk(batch, noise=noise)
    policy.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["type"] == "vst_vla" and (tmp_path / "ckpt" / "backbone" / "tokenizer.json").is_file()
    loaded = VSTVLAPolicy.from_pretrained(tmp_path / "ckpt")
    torch.testing.assert_close(loaded.predict_action_chunk(batch, noise=noise), expected, atol=0, rtol=0)
    if head == "tokens":  # a preset backbone also rebuilds from config.json alone
        shutil.rmtree(tmp_path / "ckpt" / "backbone")
        loaded = VSTVLAPolicy.from_pretrained(tmp_path / "ckpt")
        torch.testing.assert_close(loaded.predict_action_chunk(batch, noise=noise), expected, atol=0, rtol=0)


def test_checkpoint_of_a_local_backbone_is_self_contained(tmp_path):
    """backbone_path is read once; the policy checkpoint then rebuilds without it."""
    backbone = build_backbone(BackboneConfig(preset="tiny", seed=3))
    backbone.save_pretrained(tmp_path / "qwen")
    policy = VSTVLAPolicy(make_config("tokens", backbone_path=str(tmp_path / "qwen"))).eval()
    weight = "model.visual.patch_embed.proj.weight"
    torch.testing.assert_close(policy.vlm.state_dict()[weight], backbone.model.state_dict()[weight])
    batch = make_batch(policy.config)
    expected = policy.predict_action_chunk(batch)
    policy.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "qwen")
    loaded = VSTVLAPolicy.from_pretrained(tmp_path / "ckpt")
    torch.testing.assert_close(loaded.predict_action_chunk(batch), expected, atol=0, rtol=0)


def test_freezing_lora_and_param_groups():
    policy = VSTVLAPolicy(make_config("tokens", lora_rank=4, freeze_vision=True))
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and not any(".visual." in n for n in trainable)
    assert not any("layers.0.self_attn.q_proj.base_layer" in n for n in trainable)  # LLM base frozen
    assert "vlm.lm_head.weight" not in trainable and "action_tokens.output" in trainable  # only decoded rows
    assert "state_proj.weight" in trainable
    assert len(policy.get_optim_params()) == 1  # no trainable vision parameters, no vision group

    policy = VSTVLAPolicy(make_config("flow", freeze_llm=True))
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert not any(".language_model." in n for n in trainable) and any(n.startswith("expert.") for n in trainable)
    main, vision = policy.get_optim_params()
    assert vision["lr"] == pytest.approx(policy.config.optimizer_lr * policy.config.vision_lr_scale)
    assert all(p.requires_grad for p in main["params"])


def test_bad_inputs_raise_clear_errors(policies, tmp_path):
    policy = policies["flow"]
    batch = make_batch(policy.config)
    with pytest.raises(KeyError, match=r"observation\.images\.wrist.*\(2, 3, \?, \?\)"):
        policy.predict_action_chunk({k: v for k, v in batch.items() if k != CAMERAS[1]})
    with pytest.raises(ValueError, match=r"batch\['action'\] has shape \(2, 3, 7\), expected \(2, 3, 6\)"):
        policy.forward({**batch, "action": torch.zeros(2, 3, 7)})
    with pytest.raises(ValueError, match=r"observation\.state.*NaN"):
        policy.predict_action_chunk({**batch, "observation.state": torch.full((2, 6), float("nan"))})
    with pytest.raises(KeyError, match="task"):
        policy.predict_action_chunk({k: v for k, v in batch.items() if k != "task"})

    dataset = {cam: {"dtype": "video", "shape": (96, 96, 3), "names": ["height", "width", "channels"]}
               for cam in CAMERAS}
    dataset["observation.state"] = {"dtype": "float32", "shape": (6,), "names": None}
    dataset["action"] = {"dtype": "float32", "shape": (6,), "names": None}
    check_dataset_features(policy.config, dataset)
    with pytest.raises(ValueError, match=r"camera 'observation\.images\.wrist' \(shape \(3, 96, 96\)\)"):
        check_dataset_features(policy.config, {k: v for k, v in dataset.items() if k != CAMERAS[1]})
    with pytest.raises(ValueError, match=r"'action' has shape \(7,\) in the dataset but \(6,\)"):
        check_dataset_features(policy.config, {**dataset, "action": {**dataset["action"], "shape": (7,)}})

    act = ACTConfig(device="cpu", output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))})
    (tmp_path / "act").mkdir()
    act._save_pretrained(tmp_path / "act")
    with pytest.raises(ValueError, match="not a vst_vla checkpoint.*'act'"):
        VSTVLAPolicy.from_pretrained(tmp_path / "act")
    with pytest.raises(TypeError, match="VSTVLAConfig"):
        VSTVLAPolicy(act)
    with pytest.raises(ValueError, match="at least one camera"):
        VSTVLAPolicy(make_config("flow", input_features={"observation.state": PolicyFeature(FeatureType.STATE, (6,))}))


def test_processor_factory_and_quantile_fallback():
    cfg = make_config("tokens")
    stats = {"action": {"min": np.full(6, -2.0), "max": np.full(6, 2.0), "mean": np.zeros(6), "std": np.ones(6)},
             "observation.state": {"mean": np.zeros(6), "std": np.ones(6)}}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)  # lerobot's factory resolves ours by name
    names = [type(s).__name__ for s in pre.steps]
    assert names == ["RenameObservationsProcessorStep", "AddBatchDimensionProcessorStep", "DeviceProcessorStep",
                     "RelativeActionsProcessorStep", "NormalizerProcessorStep"]
    assert not pre.steps[3].enabled  # absolute actions unless asked for, as in LeRobot
    # No q01/q99 in these stats: min/max stand in, so max maps to the top of [-1, 1].
    out = post(torch.tensor([[1.0] * 6]))
    torch.testing.assert_close(out, torch.full((1, 6), 2.0))


def test_relative_actions_round_trip_through_the_processors():
    """Pre: action - state on the joints (gripper absolute), normalised; post: back to the absolute target."""
    cfg = make_config("flow", use_relative_actions=True,
                      action_feature_names=[f"{j}.pos" for j in ("a", "b", "c", "d", "e", "gripper")])
    stats = {"action": {"mean": np.zeros(6), "std": np.full(6, 2.0)},
             "observation.state": {"mean": np.zeros(6), "std": np.ones(6)}}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    state = torch.tensor([[10.0, 20, 30, 40, 50, 60]])
    action = torch.tensor([[[11.0, 22, 33, 44, 55, 66], [12.0, 24, 36, 48, 60, 72]]])  # a chunk of 2
    out = pre({"observation.state": state, "action": action, "task": ["x"]})
    expected = torch.tensor([[[1.0, 2, 3, 4, 5, 66], [2.0, 4, 6, 8, 10, 72]]]) / 2
    torch.testing.assert_close(out["action"], expected)
    back = torch.stack([post(out["action"][:, t]) for t in range(2)], dim=1)
    torch.testing.assert_close(back, action)


def test_vit_rate_follows_the_initialisation():
    """A random preset's ViT has everything to learn (1.0); pretrained weights keep VST's 0.1."""
    assert make_config("flow").vision_lr_scale == 1.0
    assert make_config("flow", backbone_path="/some/qwen").vision_lr_scale == 0.1
    assert make_config("flow", vision_lr_scale=0.3).vision_lr_scale == 0.3


def test_flow_draws_per_observation_share_one_prefix(monkeypatch):
    """k (noise, time) draws per observation give the loss of k separate single-draw samples, for one VLM pass."""
    import lerobot_policy_vst_vla.modeling_vst_vla as modeling

    torch.manual_seed(0)
    k = 3
    multi = VSTVLAPolicy(make_config("flow", flow_samples_per_obs=k)).train()
    single = VSTVLAPolicy(make_config("flow")).train()
    single.load_state_dict(multi.state_dict())
    batch = make_batch(multi.config)
    b, t = len(batch["task"]), multi.config.chunk_size
    g = torch.Generator().manual_seed(3)
    noise, time = torch.randn(b * k, t, ACTION_DIM, generator=g), torch.rand(b * k, generator=g) * 0.9 + 0.05
    monkeypatch.setattr(modeling, "sample_noise", lambda shape, device: noise)
    monkeypatch.setattr(modeling, "sample_time_beta", lambda n, device, **kw: time)
    calls = []
    monkeypatch.setattr(multi, "_run_vlm", lambda *a, _run=multi._run_vlm, **kw: calls.append(1) or _run(*a, **kw))
    per_draw_loss, _ = multi.forward(batch, reduction="none")
    assert per_draw_loss.shape == (b,) and len(calls) == 1  # one prefix pass for all b·k draws
    repeated = {key: (v.repeat_interleave(k, dim=0) if torch.is_tensor(v) else [x for x in v for _ in range(k)])
                for key, v in batch.items()}
    expected, _ = single.forward(repeated, reduction="none")
    torch.testing.assert_close(per_draw_loss, expected.view(b, k).mean(1), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="flow_samples_per_obs"):
        make_config("flow", flow_samples_per_obs=0)


def test_state_dropout_hides_the_state_in_training_only():
    torch.manual_seed(0)
    policy = VSTVLAPolicy(make_config("flow", state_dropout=0.999999))
    batch = make_batch(policy.config)
    other = {**batch, "observation.state": batch["observation.state"] + 5.0}
    policy.train()
    torch.testing.assert_close(policy._encode_prefix(batch).embeds, policy._encode_prefix(other).embeds)
    policy.eval()
    assert not torch.allclose(policy._encode_prefix(batch).embeds, policy._encode_prefix(other).embeds)
    with pytest.raises(ValueError, match="state_dropout"):
        make_config("flow", state_dropout=1.0)
