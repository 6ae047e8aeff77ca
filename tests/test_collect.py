"""Collection writes a real LeRobotDataset v3 plus per-frame scene ground truth, and never clobbers data."""

import numpy as np
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from vst_vla.collect import CollectConfig, collect, load_scene_ground_truth


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("collect") / "ds"
    collect(CollectConfig(root=str(root), tasks=["pick_extreme", "stack"], episodes_per_task=1, image_size=96))
    return root


def test_dataset_is_a_loadable_lerobot_v3_dataset(dataset_root):
    ds = LeRobotDataset("local/vst_tabletop", root=dataset_root)
    assert ds.meta.total_episodes == 2
    assert ds.meta.info["codebase_version"].startswith("v3")
    assert ds.meta.features["observation.state"]["names"][0] == "shoulder_pan.pos"
    assert ds.meta.robot_type == "so101_follower"
    item = ds[0]
    assert item["observation.images.front"].shape == (3, 96, 96)
    assert item["observation.images.wrist"].shape == (3, 96, 96)
    assert item["action"].shape == (6,)
    assert "pick up" in item["task"] or "grab" in item["task"] or "lift" in item["task"] or "take" in item["task"]
    tasks = {ds[int(i)]["task"] for i in (0, len(ds) - 1)}
    assert len(tasks) == 2  # one instruction per episode


def test_scene_ground_truth_is_stored_per_frame(dataset_root):
    ds = LeRobotDataset("local/vst_tabletop", root=dataset_root)
    gt = load_scene_ground_truth(dataset_root, 1)
    assert gt["task_family"] == "stack" and gt["success"]
    n_frames = ds.meta.episodes[1]["length"]
    assert len(gt["frames"]) == n_frames
    first, last = gt["frames"][0], gt["frames"][-1]
    assert set(first["cameras"]) == {"front", "wrist"}
    # the stacked cube moved from the table onto another cube
    moved = np.linalg.norm(np.array(last["objects"][0]["position"]) - np.array(first["objects"][0]["position"]))
    assert moved > 0.03
    # the stored state is the recorded joint state (so101 units) of the same frame
    state = ds[int(ds.meta.episodes[1]["dataset_from_index"])]["observation.state"].numpy()
    np.testing.assert_allclose(np.degrees(first["joint_positions"][:5]), state[:5], atol=1e-3)


def test_existing_output_is_never_overwritten_silently(dataset_root):
    with pytest.raises(FileExistsError, match="resume=true"):
        collect(CollectConfig(root=str(dataset_root), tasks=["stack"], episodes_per_task=1, image_size=96))


def test_resume_appends_only_missing_episodes(dataset_root):
    collect(CollectConfig(root=str(dataset_root), tasks=["pick_extreme", "stack"], episodes_per_task=2,
                          image_size=96, resume=True))
    ds = LeRobotDataset("local/vst_tabletop", root=dataset_root)
    assert ds.meta.total_episodes == 4
    families = [load_scene_ground_truth(dataset_root, i)["task_family"] for i in range(4)]
    assert sorted(families) == ["pick_extreme", "pick_extreme", "stack", "stack"]
    seeds = [load_scene_ground_truth(dataset_root, i)["seed"] for i in range(4)]
    assert len(set(seeds)) == 4  # resumed episodes use new seeds, not repeats


def test_unknown_task_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown tasks"):
        collect(CollectConfig(root=str(tmp_path / "x"), tasks=["juggle"]))


def test_approach_noise_perturbs_the_arm_but_records_the_experts_actions():
    """DART-style collection: the executed approach is perturbed (the states differ from a clean run of the
    same seed) while the recorded actions are the expert's own, identical to the clean run's there."""
    from lerobot_env_vst_vla import SpatialTabletopEnv
    from lerobot_env_vst_vla.expert import ScriptedExpert

    from vst_vla.collect import ApproachNoise

    def run(noise_deg: float):
        env = SpatialTabletopEnv(task="pick_relation", obs_type="agent_pos", episode_length=60)
        obs, _ = env.reset(seed=5)
        expert, noise = ScriptedExpert(env), ApproachNoise(noise_deg, 10.0, seed=5)
        states, actions, stages = [], [], []
        for _ in range(40):
            action = expert.act()
            states.append(obs["agent_pos"].copy()), actions.append(action), stages.append(expert.stage)
            obs, *_ = env.step(noise(action, approaching=expert.stage == 0))
        env.close()
        return np.array(states), np.array(actions), np.array(stages)

    clean_s, clean_a, stages = run(0.0)
    noisy_s, noisy_a, _ = run(6.0)
    approach = stages == 0
    assert approach.sum() > 10
    np.testing.assert_array_equal(noisy_a[approach], clean_a[approach])  # labels: the expert's, unperturbed
    assert np.abs(noisy_s[approach][:, :5] - clean_s[approach][:, :5]).max() > 2.0  # the arm was pushed off course
    assert np.array_equal(ApproachNoise(6.0, 10.0, 1)(clean_a[0], approaching=False), clean_a[0])


def test_descent_noise_fades_to_nothing_at_the_grasp():
    """With `descent_noise` the offset's share is 1 while approaching, falls with the commanded height
    during the descent, and is 0 at the grasp and after, so grasps stay the expert's."""
    from lerobot_env_vst_vla import SpatialTabletopEnv
    from lerobot_env_vst_vla.expert import ScriptedExpert

    from vst_vla.collect import noise_share

    env = SpatialTabletopEnv(task="pick_extreme", obs_type="agent_pos", episode_length=120)
    env.reset(seed=3)
    expert, shares, stages = ScriptedExpert(env), [], []
    for _ in range(100):
        shares.append(noise_share(expert, 0.5)), stages.append(expert.stage)
        assert noise_share(expert, 0.0) == float(expert.stage == 0)
        env.step(expert.act())
    env.close()
    shares, stages = np.array(shares), np.array(stages)
    assert np.all(shares[stages == 0] == 1.0) and np.all(shares[stages >= 2] == 0.0)
    descent = shares[stages == 1]
    assert len(descent) > 5 and descent.max() <= 0.5 and descent.min() < 0.05
    assert np.all(np.diff(descent) <= 1e-9)  # falls as the jaws go down


def test_scene_seed_ranges_of_every_use_are_disjoint():
    """Demonstrations, decision scenes, grounding scenes and evaluation never draw the same layout: the
    default ranges do not overlap, and a count that would spill into the next family is refused."""
    from vst_vla.seeds import (COLLECT_SEED_BASE, EPISODE_STRIDE, EVAL_SEED_BASE, SCENE_STRIDE, episode_seed,
                               scene_seed, seed_ranges)
    from lerobot_env_vst_vla import FAMILIES

    ranges = sorted(seed_ranges().items(), key=lambda kv: kv[1].start)
    for (a, ra), (b, rb) in zip(ranges, ranges[1:]):
        assert ra.stop <= rb.start, f"{a} seeds {ra} overlap {b} seeds {rb}"
    seeds = {episode_seed(COLLECT_SEED_BASE, f, k) for f in FAMILIES for k in (0, EPISODE_STRIDE - 1)}
    assert len(seeds) == 2 * len(FAMILIES)
    assert min(episode_seed(EVAL_SEED_BASE, f, 0) for f in FAMILIES) == EVAL_SEED_BASE
    with pytest.raises(ValueError, match="outside"):
        episode_seed(COLLECT_SEED_BASE, "pick_extreme", EPISODE_STRIDE)
    with pytest.raises(ValueError, match="outside"):
        scene_seed(0, "stack", SCENE_STRIDE)
    with pytest.raises(ValueError, match="unknown family"):
        episode_seed(0, "pick_nothing", 0)
