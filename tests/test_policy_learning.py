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
    from vst_vla.collect import episode_seed

    with pytest.raises(ValueError, match="training scenes"):
        check_disjoint_seeds(ckpt, {episode_seed(0, "pick_extreme", 0)})
