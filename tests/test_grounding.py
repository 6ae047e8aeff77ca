"""Target grounding: scores that tell a committed guess from a hedge, and a stage whose checkpoint a policy loads."""

import json

import numpy as np
import torch

from vst_vla.tuning.grounding import GroundingConfig, grounding_scores, render_first_frames, train_grounding

TARGET = np.array([[0.0, 0.10], [0.2, -0.1]])
LOOKALIKES = np.array([[[0.0, -0.10], [np.nan, np.nan], [np.nan, np.nan]],
                       [[0.2, 0.1], [0.2, 0.3], [np.nan, np.nan]]])
CRITERIA = np.array(["leftmost", "nearest to"])


def test_scores_separate_the_target_the_centre_and_a_lookalike():
    exact = grounding_scores(TARGET.copy(), TARGET, LOOKALIKES, CRITERIA)
    assert exact["error_cm"] == 0 and exact["decision"] == 1 and np.isclose(exact["commit"], 1)
    centre = np.array([[0.0, 0.0], [0.2, 0.1]])  # where a model that cannot resolve the rule lands
    hedge = grounding_scores(centre, TARGET, LOOKALIKES, CRITERIA)
    assert np.isclose(hedge["commit"], 0) and np.isclose(hedge["error_cm"], exact["centre_cm"])
    wrong = grounding_scores(LOOKALIKES[:, 0].copy(), TARGET, LOOKALIKES, CRITERIA)
    assert wrong["decision"] == 0 and wrong["commit"] < 0
    assert set(wrong["per_criterion"]) == {"leftmost", "nearest to"}


def test_first_frames_are_deterministic_and_name_the_lookalikes(tmp_path):
    a = render_first_frames("pick_relation", 3, 56, ["front"], tmp_path / "a.npz")
    b = render_first_frames("pick_relation", 3, 56, ["front"], tmp_path / "b.npz")
    assert a["front"].shape == (3, 56, 56, 3) and np.array_equal(a["front"], b["front"])
    assert not np.isnan(a["lookalikes"][:, 0]).any() and np.isnan(a["lookalikes"][:, 1]).all()  # one twin each
    assert (np.linalg.norm(a["target"] - a["lookalikes"][:, 0], axis=1) > 0.02).all()


def test_grounding_checkpoint_starts_a_policy(tmp_path):
    from lerobot.configs import FeatureType, PolicyFeature
    from lerobot_policy_vst_vla.configuration_vst_vla import VSTVLAConfig
    from lerobot_policy_vst_vla.modeling_vst_vla import VSTVLAPolicy

    torch.set_num_threads(1)
    cfg = GroundingConfig(families=["pick_extreme"], scenes_per_family=12, test_per_family=4, image_size=56,
                          steps=3, eval_every=3, batch_size=4, output_dir=str(tmp_path / "g"))
    final = train_grounding(cfg)
    result = json.loads((tmp_path / "g" / "result.json").read_text())
    assert [c["step"] for c in result["curve"]] == [0, 3] and "decision" in result["final"]
    assert (tmp_path / "g" / "curves.png").is_file()
    features = {f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, 56, 56)) for c in cfg.cameras}
    features["observation.state"] = PolicyFeature(FeatureType.STATE, (6,))
    policy = VSTVLAPolicy(VSTVLAConfig(input_features=features, image_size=(56, 56), action_head="flow",
                                       output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))},
                                       backbone_path=str(final), device="cpu", push_to_hub=False))
    from safetensors.torch import load_file

    saved = load_file(str(final / "model.safetensors"))
    key = next(k for k in saved if k.endswith("visual.patch_embed.proj.weight"))
    # the policy starts from the tuned weights, not from the preset's initialisation
    assert torch.equal(policy.vlm.model.visual.patch_embed.proj.weight, saved[key])
