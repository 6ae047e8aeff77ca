"""`vst-vla viz`: a recorded episode becomes a Rerun recording with every stream, read back from the .rrd."""

from collections import defaultdict

import numpy as np
import pytest
import rerun as rr
from rerun.experimental import RrdReader

from vst_vla.collect import CollectConfig, collect, load_scene_ground_truth
from vst_vla.viz.episode import VizConfig, log_scene_ground_truth, visualize_episode

MOTORS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")


def _read_rrd(path):
    """entity path -> list of (record batch, is_static) for the single recording in `path`."""
    reader = RrdReader(path)
    assert len(reader.recordings()) == 1
    chunks = defaultdict(list)
    for chunk in reader.stream():
        chunks[chunk.entity_path.lstrip("/")].append((chunk.to_record_batch(), chunk.is_static))
    return chunks


def _column(batches, name):
    """All values of one column over an entity's temporal chunks, sorted by the `frame` timeline."""
    rows = []
    for batch, static in batches:
        if static or name not in batch.schema.names:
            continue
        frames = batch.column("frame").to_pylist()
        rows += zip(frames, batch.column(name).to_pylist(), strict=True)
    rows.sort(key=lambda r: r[0])
    return [f for f, _ in rows], [v for _, v in rows]


def _static_columns(batches):
    return {n for batch, static in batches if static for n in batch.schema.names}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("viz") / "ds"
    collect(CollectConfig(root=str(root), tasks=["pick_relation"], episodes_per_task=1, image_size=96))
    return root


def test_visualize_episode_writes_every_stream(dataset, tmp_path):
    out = visualize_episode(VizConfig(root=str(dataset), episode=0, output=str(tmp_path / "ep_{episode}.rrd")))
    assert out == tmp_path / "ep_0.rrd" and out.is_file() and out.stat().st_size > 0

    gt = load_scene_ground_truth(dataset, 0)
    n = len(gt["frames"])
    n_objects = len(gt["frames"][0]["objects"])
    chunks = _read_rrd(out)
    every_frame = list(range(n))

    # camera streams decoded from the dataset videos, one image per frame, under their pinholes
    for cam in ("front", "wrist"):
        frames, blobs = _column(chunks[f"world/cameras/{cam}/image"], "EncodedImage:blob")
        assert frames == every_frame and all(len(b[0]) > 100 for b in blobs)  # one JPEG per row
    # frustums: the front camera static, the wrist camera moving every frame
    assert {"Pinhole:image_from_camera", "Transform3D:translation"} <= _static_columns(chunks["world/cameras/front"])
    frames, res = _column(chunks["world/cameras/wrist"], "Pinhole:resolution")
    assert frames == every_frame and res[0] == [[96.0, 96.0]]
    frames, _ = _column(chunks["world/cameras/wrist"], "Transform3D:translation")
    assert frames == every_frame

    # one scalar series per motor for state and action, on both timelines
    for group in ("state", "action"):
        for motor in MOTORS:
            batches = chunks[f"{group}/{motor}"]
            frames, values = _column(batches, "Scalars:scalars")
            assert frames == every_frame and all(np.isfinite(v).all() for v in values)
            assert all("time" in b.schema.names for b, s in batches if not s)
            assert "SeriesLines:names" in _static_columns(batches)

    # the 3D scene: every object as a box each frame, a table, a gripper path that grows
    frames, centers = _column(chunks["world/objects"], "Boxes3D:centers")
    assert frames == every_frame and all(len(c) == n_objects for c in centers)
    np.testing.assert_allclose(centers[0], [o["position"] for o in gt["frames"][0]["objects"]], atol=1e-5)
    _, labels = _column(chunks["world/objects"], "Boxes3D:labels")
    assert labels[0] == [o["label"] for o in gt["frames"][0]["objects"]]
    assert "Boxes3D:half_sizes" in _static_columns(chunks["world/table"])
    frames, strips = _column(chunks["world/gripper/path"], "LineStrips3D:strips")
    assert frames == every_frame
    assert [len(s[0]) for s in strips] == [i + 1 for i in every_frame]
    np.testing.assert_allclose(strips[-1][0][-1], gt["frames"][-1]["gripper_position"], atol=1e-5)

    # the arm: link geometry once, every link posed on every frame
    assert "Boxes3D:half_sizes" in _static_columns(chunks["world/arm/gripper/boxes"])
    for body in ("base", "shoulder", "upper_arm", "lower_arm", "wrist", "gripper", "moving_jaw"):
        frames, _ = _column(chunks[f"world/arm/{body}"], "Transform3D:translation")
        assert frames == every_frame

    frames, success = _column(chunks["outcome/success"], "Scalars:scalars")
    assert frames == [n - 1] and success == [[float(gt["success"])]]
    assert "TextDocument:text" in _static_columns(chunks["instruction"])
    text = next(b.column("TextDocument:text").to_pylist()[0] for b, s in chunks["instruction"] if s)
    assert gt["instruction"] in text[0]


def test_log_scene_ground_truth_with_a_prefix(tmp_path):
    from lerobot_env_vst_vla import SpatialTabletopEnv

    env = SpatialTabletopEnv(task="stack", obs_type="agent_pos", observation_width=64, observation_height=48)
    try:
        env.reset(seed=3)
        scene = env.ground_truth()  # a SceneGT, not a dict
    finally:
        env.close()
    rec = rr.RecordingStream("vst_vla_test")
    path = tmp_path / "scene.rrd"
    rec.save(str(path))
    rec.set_time("step", sequence=0)
    image = np.zeros((24, 32, 3), np.uint8)  # half the stored camera size: intrinsics are scaled to match
    log_scene_ground_truth("eval/scene", scene, recording=rec, images={"wrist": image})
    rec.flush()
    rec.disconnect()

    chunks = _read_rrd(path)
    assert {"eval/scene/table", "eval/scene/objects", "eval/scene/gripper/position",
            "eval/scene/cameras/front", "eval/scene/cameras/wrist", "eval/scene/cameras/wrist/image"} <= set(chunks)
    k = [b.column("Pinhole:image_from_camera").to_pylist()[0] for b, s in chunks["eval/scene/cameras/wrist"]
         if "Pinhole:image_from_camera" in b.schema.names][0]
    # rerun stores Mat3x3 column-major: element 6 is K[0, 2], the principal point x
    assert np.asarray(k, dtype=float).reshape(-1)[6] == pytest.approx(16.0)
    assert len(scene.objects) == len(chunks["eval/scene/objects"][0][0].column("Boxes3D:centers").to_pylist()[0])
