"""Every kind of recording we write, opened in the real Rerun viewer (Vulkan on Mesa's lavapipe, under
Xvfb): the screenshot must show content where the 3D view and the camera images are. A recording the
viewer cannot open, or shows empty, fails.

Set VIEWER_SCREENSHOTS=<folder> to keep the screenshots.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vst_vla.cli import main as cli
from vst_vla.collect import CollectConfig, collect
from vst_vla.viz.episode import VizConfig, visualize_episode
from vst_vla.viz.screenshot import screenshot

pytestmark = pytest.mark.skipif(
    shutil.which("Xvfb") is None or not glob.glob("/usr/share/vulkan/icd.d/lvp_icd*.json"),
    reason="needs Xvfb and Mesa's Vulkan driver (apt-get install xvfb mesa-vulkan-drivers libvulkan1)")

SIZE = (1024, 768)  # viewer window in points (the viewer writes twice that; kept at this size)
IMAGE = 96


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("viewer")


@pytest.fixture(scope="module")
def dataset(work) -> Path:
    collect(CollectConfig(root=str(work / "ds"), tasks=["pick_relation"], episodes_per_task=1, image_size=IMAGE,
                          episode_length=60, only_successful=False))
    return work / "ds"


def _shot(rrd: Path, name: str) -> np.ndarray:
    keep = os.environ.get("VIEWER_SCREENSHOTS")
    out = Path(keep) / f"{name}.png" if keep else rrd.with_suffix(".png")
    screenshot(rrd, out, SIZE, scale=0.5)  # the region checks are in fractions of the picture
    with Image.open(out) as im:
        return np.asarray(im.convert("RGB")).astype(np.int32)


def _region(img: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    h, w = img.shape[:2]
    return img[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)]


def _fraction(region: np.ndarray, lo, hi) -> float:
    """Share of the region's pixels whose RGB lies in [lo, hi]."""
    return float(np.all((region >= lo) & (region <= hi), axis=-1).mean())


# Colours the sim draws with (the viewer shades them): the arm's yellow and the table's wood.
ARM_YELLOW = ((170, 120, 0), (255, 230, 90))
TABLE_WOOD = ((90, 60, 30), (220, 180, 140))


def _assert_image_like(region: np.ndarray, what: str) -> None:
    """An image, not an empty panel: varied pixels, many distinct colours."""
    colours = len(np.unique(region.reshape(-1, 3) // 8, axis=0))
    assert region.std() > 20 and colours > 50, f"{what} looks blank (std {region.std():.1f}, {colours} colours)"


def _assert_episode_layout(img: np.ndarray, name: str) -> None:
    """The shared blueprint: 3D scene left (3/5 wide, top 5/7), cameras side by side top right."""
    scene = _region(img, 0.02, 0.58, 0.08, 0.65)
    assert _fraction(scene, *ARM_YELLOW) > 0.01, f"{name}: no arm in the 3D view"
    assert _fraction(scene, *TABLE_WOOD) > 0.15, f"{name}: no table in the 3D view (the view is not on the workspace)"
    _assert_image_like(_region(img, 0.62, 0.78, 0.08, 0.38), f"{name}: front camera")
    _assert_image_like(_region(img, 0.82, 0.98, 0.08, 0.38), f"{name}: wrist camera")


def test_episode_recording_in_the_viewer(dataset, work):
    rrd = visualize_episode(VizConfig(root=str(dataset), episode=0, output=str(work / "episode.rrd")))
    _assert_episode_layout(_shot(rrd, "rerun_episode"), "episode")


def _untrained_act(dataset: Path, out: Path) -> Path:
    """A small, untrained LeRobot ACT checkpoint for the dataset (the viewer test needs a rollout, not skill)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    meta = LeRobotDatasetMetadata("local/vst_tabletop", root=dataset)
    cfg = ACTConfig(pretrained_backbone_weights=None, chunk_size=4, n_action_steps=4, dim_model=64, n_heads=2,
                    dim_feedforward=128, n_encoder_layers=1, n_decoder_layers=1, use_vae=False, device="cpu")
    policy = make_policy(cfg, ds_meta=meta)
    pre, post = make_pre_post_processors(cfg, dataset_stats=meta.stats)
    for part in (policy, pre, post):
        part.save_pretrained(out)
    return out


def test_evaluation_recording_in_the_viewer(dataset, work):
    checkpoint = _untrained_act(dataset, work / "act")
    cli(["eval-policy", f"policy_path={checkpoint}", f"output_dir={work / 'eval'}", "tasks=[pick_relation]",
         "episodes_per_family=1", "episode_length=12", "videos_per_family=0", "rerun_per_family=1"])
    report = json.loads((work / "eval" / "eval.json").read_text())
    [rrd] = report["recordings"]
    _assert_episode_layout(_shot(Path(rrd), "rerun_evaluation"), "evaluation")


def test_spatial_sample_recording_in_the_viewer(work):
    import datasets

    from vst_vla.spatial.dataset import SpatialDataConfig, generate_dataset
    from vst_vla.viz.spatial_sample import visualize_samples

    out = generate_dataset(SpatialDataConfig(output=str(work / "spatial"), skills=["3d_detection"],
                                             samples_per_skill=1, test_samples_per_skill=1, image_width=160,
                                             image_height=120, families=["place_relative"]))
    rows = list(datasets.load_from_disk(str(out))["test"])
    img = _shot(visualize_samples(rows, out, work / "spatial.rrd"), "rerun_spatial_sample")
    body = _region(img, 0.0, 1.0, 0.06, 0.94)
    assert _fraction(body, *TABLE_WOOD) > 0.05, "spatial sample: no sim image or 3D scene on screen"
    _assert_image_like(body, "spatial sample")


def test_training_curves_recording_in_the_viewer(work):
    from vst_vla.tuning.common import Curves

    curves = Curves(work / "curves", enabled=True)
    curves.path.parent.mkdir(parents=True, exist_ok=True)
    for step in range(1, 41):
        curves.log(step, loss=2.0 / step + 0.1 * np.sin(step), reward=1 - 1 / step)
    curves.finish("sft")
    img = _shot(work / "curves" / "curves.rrd", "rerun_training_curves")
    plot = _region(img, 0.05, 0.95, 0.1, 0.9)
    # the plotted lines: saturated pixels that the viewer's grey chrome and dark background never have
    saturated = (plot.max(-1) - plot.min(-1)) > 80
    assert saturated.mean() > 0.001, "training curves: no curve drawn"
