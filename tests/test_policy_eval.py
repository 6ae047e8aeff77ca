"""`vst-vla train-policy` → `vst-vla eval-policy`: LeRobot's loop trains, our rollout reports, records, films."""

import json
import math
from collections import defaultdict

import numpy as np
import pytest
from rerun.experimental import RrdReader

from vst_vla.cli import main as cli
from vst_vla.collect import CollectConfig, collect
from vst_vla.policy.evaluate import EXECUTED_ENTITY, PREDICTED_ENTITY, wilson_interval
from vst_vla.config import load_config
from vst_vla.policy.train import TrainPolicyConfig, lr_lambda, make_policy_config

IMAGE = 56


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (0, 10, 0.0, 0.2775),  # textbook values (z = 1.96)
    (5, 10, 0.2366, 0.7634),
    (10, 10, 0.7225, 1.0),
    (8, 20, 0.2188, 0.6134),
    (1, 1, 0.2065, 1.0),
])
def test_wilson_interval_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo90, hi90 = wilson_interval(5, 10, confidence=0.90)
    lo95, hi95 = wilson_interval(5, 10)
    assert lo95 < lo90 < 0.5 < hi90 < hi95


def test_train_config_builds_the_policy_config_and_names_bad_keys():
    cfg = make_policy_config(TrainPolicyConfig(
        policy_type="act", policy_overrides={"chunk_size": 10, "n_action_steps": 10, "use_vae": False,
                                             "pretrained_backbone_weights": None}))
    assert cfg.type == "act" and cfg.chunk_size == 10 and cfg.use_vae is False and cfg.pretrained_backbone_weights is None
    with pytest.raises(ValueError, match="not fields of ACTConfig"):
        make_policy_config(TrainPolicyConfig(policy_type="act", policy_overrides={"action_head": "flow"}))
    with pytest.raises(ValueError, match="vst_vla"):
        make_policy_config(TrainPolicyConfig(policy_type="act", policy_overrides={}, backbone_path="/nowhere"))


def test_policy_overrides_replace_or_extend_the_yaml_dict():
    """The README's `policy_type=act 'policy_overrides={...}'` must replace the vst_vla defaults, not merge."""
    cfg = load_config("policy/train", TrainPolicyConfig,
                      ["policy_type=act", "policy_overrides={pretrained_backbone_weights: null, chunk_size: 5}"])
    assert cfg.policy_overrides == {"pretrained_backbone_weights": None, "chunk_size": 5}
    cfg = load_config("policy/train", TrainPolicyConfig, ["policy_overrides.num_steps=3"])
    assert cfg.policy_overrides["num_steps"] == 3 and cfg.policy_overrides["action_head"] == "flow"


def test_schedule_is_sized_to_the_run():
    total = [100]
    f = lr_lambda(0.05, 0.1, total)
    assert f(0) == pytest.approx(0.2) and f(4) == pytest.approx(1.0)  # 5 warmup steps of 100
    assert f(99) == pytest.approx(0.1, abs=1e-3)  # decayed to the floor at the last step
    total[0] = 50  # a time budget shrank the run: the decay follows
    assert f(49) == pytest.approx(0.1, abs=1e-3)


def _entities(path) -> dict[str, list]:
    """entity path -> its temporal record batches, read back from the .rrd."""
    reader = RrdReader(path)
    assert len(reader.recordings()) == 1
    out = defaultdict(list)
    for chunk in reader.stream():
        if not chunk.is_static:
            out[chunk.entity_path.lstrip("/")].append(chunk.to_record_batch())
    return out


def _values(batches, column) -> list:
    return [v for b in batches if column in b.schema.names for v in b.column(column).to_pylist() if v is not None]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny flow-head vst_vla trained for 2 steps through the CLI stage on two short episodes."""
    tmp = tmp_path_factory.mktemp("policy_eval")
    collect(CollectConfig(root=str(tmp / "ds"), tasks=["stack"], episodes_per_task=2, image_size=IMAGE,
                          episode_length=30, only_successful=False))
    cli(["train-policy", f"dataset_root={tmp / 'ds'}", f"output_dir={tmp / 'train'}", "steps=2", "batch_size=2",
         "save_freq=2", "log_freq=1", f"policy_overrides.image_size=[{IMAGE},{IMAGE}]",
         "policy_overrides.chunk_size=4", "+policy_overrides.num_steps=2"])
    path = tmp / "train" / "checkpoints" / "last" / "pretrained_model"
    assert json.loads((path / "config.json").read_text())["action_head"] == "flow"
    return path


def test_eval_policy_reports_records_and_films(checkpoint, tmp_path):
    out = tmp_path / "eval"
    cli(["eval-policy", f"policy_path={checkpoint}", f"output_dir={out}", "tasks=[stack]", "episodes_per_family=1",
         "episode_length=9", "videos_per_family=1", "rerun_per_family=1"])

    report = json.loads((out / "eval.json").read_text())
    stack = report["per_family"]["stack"]
    assert stack["n_episodes"] == 1 and stack["episodes"][0]["steps"] == 9
    assert 0.0 <= stack["ci_low"] <= stack["success_rate"] <= stack["ci_high"] <= 1.0
    assert stack["episodes"][0]["chunks"] == 3  # 9 steps, a new chunk of 4 at steps 0, 4, 8

    video = out / "videos" / "stack_0.mp4"
    assert video.is_file() and video.stat().st_size > 1000

    entities = _entities(out / "rerun" / "stack_0.rrd")
    predicted = _values(entities[PREDICTED_ENTITY], "LineStrips3D:strips")
    assert len(predicted) == 3  # one strip per predicted chunk
    assert all(len(strip) == 4 for [strip] in predicted)  # chunk_size points each, forward kinematics in metres
    assert all(np.isfinite(p).all() and math.dist(p, (0, 0, 0)) < 1.0 for [strip] in predicted for p in strip)
    executed = _values(entities[EXECUTED_ENTITY], "LineStrips3D:strips")
    assert [len(s) for [s] in executed] == list(range(2, 10))  # grows by one point per step
    assert _values(entities["world/cameras/front/image"], "Image:buffer")  # camera streams are in the recording
    assert _values(entities["world/objects"], "Boxes3D:centers")  # and the scene


def test_eval_policy_overrides_inference_fields_of_the_checkpoint(checkpoint, tmp_path):
    """`policy_overrides` changes how a checkpoint is run (here 2 of each 4-step chunk executed), and names bad keys."""
    from vst_vla.policy.evaluate import load_policy

    out = tmp_path / "eval"
    cli(["eval-policy", f"policy_path={checkpoint}", f"output_dir={out}", "tasks=[stack]", "episodes_per_family=1",
         "episode_length=9", "videos_per_family=0", "rerun_per_family=0",
         "+policy_overrides.n_action_steps=2", "+policy_overrides.inference_noise_scale=0.0"])
    report = json.loads((out / "eval.json").read_text())
    assert report["per_family"]["stack"]["episodes"][0]["chunks"] == 5  # new chunks at steps 0, 2, 4, 6, 8
    assert report["config"]["policy_overrides"] == {"n_action_steps": 2, "inference_noise_scale": 0.0}
    with pytest.raises(ValueError, match="not_a_field"):
        load_policy(checkpoint, overrides={"not_a_field": 1})
    with pytest.raises(ValueError, match="n_action_steps"):
        load_policy(checkpoint, overrides={"n_action_steps": 5})  # > chunk_size 4


def test_train_policy_on_a_tuned_backbone_run_folder(checkpoint, tmp_path):
    """`backbone_path` takes a `vst-vla sft/grpo` run folder and trains on its `final/` checkpoint."""
    from lerobot_policy_vst_vla.backbone import BackboneConfig, build_backbone

    build_backbone(BackboneConfig(preset="tiny", device="cpu")).save_pretrained(tmp_path / "sft_run" / "final")
    dataset = checkpoint.parents[3] / "ds"  # the module fixture's dataset
    cli(["train-policy", f"dataset_root={dataset}", f"output_dir={tmp_path / 'train'}", "steps=1", "batch_size=2",
         "save_freq=1", f"backbone_path={tmp_path / 'sft_run'}", f"policy_overrides.image_size=[{IMAGE},{IMAGE}]",
         "policy_overrides.chunk_size=2", "+policy_overrides.num_steps=1"])
    config = json.loads((tmp_path / "train" / "checkpoints" / "last" / "pretrained_model" / "config.json").read_text())
    assert config["backbone_path"] == str(tmp_path / "sft_run" / "final")


def test_learned_needs_an_interval_above_the_null_baselines():
    """One success in 20 clears a baseline *rate* of 0 but not its interval: that must not count as learned."""
    from vst_vla.policy.evaluate import _print_comparison
    from vst_vla.policy.metrics import wilson_interval

    def entry(k, n=20):
        return {"rate": k / n, "ci95": list(wilson_interval(k, n))}

    def report(k):
        return {"per_family": {"pick_relation": {"success": entry(k)}},
                "baselines": {"do_nothing": {"pick_relation": entry(0)}, "random": {"pick_relation": entry(0)},
                              "blind_expert": {"pick_relation": entry(11)}}}

    assert _print_comparison(report(1)) == {"pick_relation": False}
    assert _print_comparison(report(8)) == {"pick_relation": True}
