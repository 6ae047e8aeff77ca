"""Policy training learns, on real collected episodes: statistics cover the data, held-out action error
falls well below predicting the mean action, baselines behave as their definitions say."""

import json

import numpy as np
import pytest
import torch

from vst_vla.collect import CollectConfig, collect
from vst_vla.policy.data import ChunkDataset, build_frame_cache, read_episode_table
from vst_vla.policy.evaluate import EvalPolicyConfig, evaluate_policy
from vst_vla.policy.stats import coverage_problems, ensure_global_stats, fraction_outside, load_stats_json, read_low_dim
from vst_vla.policy.train import TrainPolicyConfig, train_policy

IMAGE = 56


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Eight real pick_extreme demonstrations: the target's position sets the pan angle, so episodes
    cover different ranges, which is where LeRobot's averaged quantiles go wrong."""
    root = tmp_path_factory.mktemp("learn") / "ds"
    collect(CollectConfig(root=str(root), tasks=["pick_extreme"], episodes_per_task=8, image_size=IMAGE))
    return root


def test_collected_statistics_cover_the_actions(dataset):
    values = read_low_dim(dataset)
    stats = load_stats_json(dataset)
    outside = fraction_outside(values["action"], stats["action"]["q01"], stats["action"]["q99"])
    assert outside.max() < 0.03  # exact quantiles: ~1 % on each side
    assert coverage_problems(stats, values) == {}


def test_statistics_that_miss_the_data_are_repaired(dataset, tmp_path, caplog):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    stats = load_stats_json(root)
    narrow = np.asarray(stats["action"]["q50"])  # what averaged per-episode quantiles look like at worst
    stats["action"]["q01"], stats["action"]["q99"] = (narrow - 1).tolist(), (narrow + 1).tolist()
    (root / "meta" / "stats.json").write_text(json.dumps(stats))
    assert "action" in coverage_problems(stats, read_low_dim(root))
    repaired = ensure_global_stats(root)
    assert "recomputing them over all frames" in caplog.text
    normalised = (read_low_dim(root)["action"] - np.asarray(repaired["action"]["q01"]))
    normalised = 2 * normalised / (np.asarray(repaired["action"]["q99"]) - np.asarray(repaired["action"]["q01"])) - 1
    assert np.mean(np.abs(normalised) > 1) < 0.02


def test_frame_cache_matches_lerobot_decoding(dataset):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    keys = ["observation.images.front", "observation.images.wrist"]
    frames = build_frame_cache(dataset, keys, (IMAGE, IMAGE))
    table = read_episode_table(dataset)
    ds = LeRobotDataset("local/x", root=dataset, delta_timestamps={"action": [k / 30 for k in range(4)]})
    ours = ChunkDataset(table, frames, keys, chunk=4, episodes=table.episodes)
    for i in (0, 57, len(ds) - 1):
        ref, mine = ds[i], ours[i]
        for k in keys:  # both decode the same video: at most rounding apart
            assert (ref[k] - mine[k]).abs().max() <= 1 / 255 + 1e-6
        torch.testing.assert_close(mine["action"], ref["action"])
        assert torch.equal(mine["action_is_pad"], ref["action_is_pad"])
        assert mine["task"] == ref["task"]


def test_start_frames_are_oversampled(dataset):
    """`start_weight` draws the first `start_frames` of each episode that much more often (where the
    target is chosen), from the right frame offsets of every episode."""
    table = read_episode_table(dataset)
    frames = np.zeros((len(table.episode_index), 1, 3, 1, 1), dtype=np.uint8)
    ds = ChunkDataset(table, frames, ["observation.images.front"], chunk=2, episodes=table.episodes[1:])
    offsets = ds.frame_offsets()
    assert offsets.min() == 0 and (offsets == 0).sum() == len(table.episodes) - 1
    assert np.all(table.frame_index[ds.indices] == offsets)
    weights = np.where(offsets < 20, 4.0, 1.0)
    draws = np.asarray(list(torch.utils.data.WeightedRandomSampler(torch.from_numpy(weights), 20000,
                                                                   generator=torch.Generator().manual_seed(0))))
    share = np.mean(offsets[draws] < 20)
    expected = weights[offsets < 20].sum() / weights.sum()
    assert abs(share - expected) < 0.02 and share > 2 * np.mean(offsets < 20)


@pytest.mark.slow
def test_flow_policy_learns_held_out_actions(dataset, tmp_path):
    """A short run on real episodes: the held-out error of the executed actions falls well below that of
    always predicting the mean action (a policy ignoring its inputs scores a ratio of about 1)."""
    torch.set_num_threads(1)
    train_policy(TrainPolicyConfig(
        dataset_root=str(dataset), output_dir=str(tmp_path / "train"), steps=150, batch_size=8, lr=1e-3,
        policy_overrides={"action_head": "flow", "backbone_preset": "tiny", "image_size": [IMAGE, IMAGE],
                          "chunk_size": 4, "num_steps": 5, "use_relative_actions": True},
        eval_freq=0, heldout_fraction=0.25, heldout_frames=64, log_freq=50, save_freq=10**6))
    held = json.loads((tmp_path / "train" / "heldout.json").read_text())
    assert held["mae_ratio"] < 0.5, held
    rows = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_frozen_vlm_expert_phase_learns_and_keeps_the_vlm(dataset, tmp_path):
    """`expert_steps` after a few end-to-end steps: the VLM's weights stay exactly as the end-to-end
    phase left them, the expert's change, and the held-out error falls (a phase that updated nothing, or
    trained on wrong cached targets, would leave it where it was)."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    out = tmp_path / "train"
    train_policy(TrainPolicyConfig(
        dataset_root=str(dataset), output_dir=str(out), steps=20, batch_size=8, lr=1e-3,
        policy_overrides={"action_head": "flow", "backbone_preset": "tiny", "image_size": [IMAGE, IMAGE],
                          "chunk_size": 4, "num_steps": 5, "use_relative_actions": True},
        eval_freq=0, heldout_fraction=0.25, heldout_frames=64, log_freq=50, save_freq=10**6,
        decision_scenes=2, decision_fraction=0.25,  # both phases mix them in (the cache holds them too)
        expert_steps=300, expert_batch_size=32))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["end_to_end_steps"] == 20 and summary["expert_steps"] == 300 and summary["steps"] == 320
    before = load_file(str(out / "checkpoints" / "000020" / "pretrained_model" / "model.safetensors"))
    after = load_file(str(out / "checkpoints" / "000320" / "pretrained_model" / "model.safetensors"))
    vlm = [k for k in before if not k.startswith("expert.")]
    assert vlm and all(torch.equal(before[k], after[k]) for k in vlm)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("expert."))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ratios = [(r["step"], r["heldout_mae_ratio"]) for r in rows if "heldout_mae_ratio" in r]
    assert [s for s, _ in ratios] == [20, 320], ratios
    assert ratios[1][1] < 0.9 * ratios[0][1], ratios  # measured 0.47 -> 0.39


def test_expert_phase_without_a_flow_expert_fails_before_training(dataset, tmp_path):
    with pytest.raises(ValueError, match="flow expert on a frozen VLM"):
        train_policy(TrainPolicyConfig(
            dataset_root=str(dataset), output_dir=str(tmp_path / "t"), steps=10**6, batch_size=2,
            policy_overrides={"action_head": "tokens", "backbone_preset": "tiny", "image_size": [IMAGE, IMAGE]},
            expert_steps=10))
    assert not (tmp_path / "t" / "checkpoints").exists()


def test_decision_scenes_are_policy_samples_with_the_experts_labels(dataset):
    """Extra scenes' frames have the dataset samples' keys and shapes, unseen seeds, and the clean expert's
    next actions as labels; mixed in, they replace the batch's tail and keep its size."""
    from lerobot_env_vst_vla import SpatialTabletopEnv
    from lerobot_env_vst_vla.expert import ScriptedExpert

    from vst_vla.policy.decision_scenes import dataset_families, load_decision_scenes
    from vst_vla.seeds import DECISION_SEED_BASE, scene_seed
    from vst_vla.policy.train import _collate, _with_extra_frames

    cams = ["observation.images.front", "observation.images.wrist"]
    assert dataset_families(dataset) == ["pick_extreme"]
    scenes = load_decision_scenes(dataset, None, 3, (IMAGE, IMAGE), cams, 4, [0, 10])
    assert len(scenes) == 6
    table = read_episode_table(dataset)
    real = ChunkDataset(table, build_frame_cache(dataset, cams, (IMAGE, IMAGE)), cams, 4, table.episodes)[0]
    sample = scenes[0]
    assert sample.keys() == real.keys()
    assert all(sample[k].shape == real[k].shape for k in real if k != "task")

    env = SpatialTabletopEnv(task="pick_extreme", obs_type="agent_pos", observation_width=IMAGE, observation_height=IMAGE)
    try:
        seed = scene_seed(DECISION_SEED_BASE, "pick_extreme", 0)
        obs, _ = env.reset(seed=seed)
        first_action, instruction = ScriptedExpert(env).act(), env.task_description
    finally:
        env.close()
    np.testing.assert_allclose(sample["observation.state"].numpy(), obs["agent_pos"], atol=1e-4)
    np.testing.assert_allclose(sample["action"][0].numpy(), first_action, atol=1e-4)
    assert sample["task"] == instruction

    batch = _collate([real] * 8)
    mixed = _with_extra_frames(batch, [(scenes, 0.25)], 8, torch.Generator().manual_seed(0))
    assert mixed["action"].shape == batch["action"].shape and len(mixed["task"]) == 8
    assert torch.equal(mixed["action"][:6], batch["action"][:6]) and not torch.equal(mixed["action"][6:], batch["action"][6:])
    # two sources (decision scenes, DAgger frames) each fill their own share of the tail, in order
    marked = load_decision_scenes(dataset, None, 3, (IMAGE, IMAGE), cams, 4, [0, 10])
    marked.data = {**marked.data, "state": np.full_like(marked.data["state"], -7.0)}
    mixed = _with_extra_frames(batch, [(scenes, 0.25), (marked, 0.25)], 8, torch.Generator().manual_seed(0))
    assert len(mixed["task"]) == 8 and torch.equal(mixed["action"][:4], batch["action"][:4])
    assert (mixed["observation.state"][6:] == -7).all() and not (mixed["observation.state"][:6] == -7).any()
    with pytest.raises(ValueError, match="whole batch"):
        _with_extra_frames(batch, [(scenes, 0.5), (marked, 0.5)], 8, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("baseline,expect", [("do_nothing", 0.0), ("random", 0.0), ("blind_expert", None)])
def test_baselines(baseline, expect, tmp_path):
    report = evaluate_policy(EvalPolicyConfig(baseline=baseline, tasks=["pick_relation"], episodes_per_family=8,
                                              episode_length=200 if baseline == "blind_expert" else 40,
                                              videos_per_family=0, rerun_per_family=0, output_dir=str(tmp_path)))
    fam = report["per_family"]["pick_relation"]
    if expect is not None:
        assert fam["success"]["rate"] == expect and fam["lifted"]["rate"] == 0
    else:  # sent to either twin: right about half of the time, and it always lifts what it picks
        assert 0 < fam["correct_object"]["rate"] < 1
        assert fam["success"]["count"] <= fam["correct_object"]["count"]


def test_eval_refuses_training_seeds(dataset, tmp_path):
    from vst_vla.policy.evaluate import check_disjoint_seeds

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "train_config.json").write_text(json.dumps({"dataset_root": str(dataset)}))
    check_disjoint_seeds(ckpt, {1_000_000})
    from vst_vla.seeds import episode_seed

    with pytest.raises(ValueError, match="training scenes"):
        check_disjoint_seeds(ckpt, {episode_seed(0, "pick_extreme", 0)})
