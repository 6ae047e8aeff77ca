"""Rerun sample viewer: the .rrd written for spatial samples holds images, cameras, 2D/3D boxes and text."""

from __future__ import annotations

import datasets
from rerun.experimental import RrdReader

from vst_vla.spatial.dataset import SpatialDataConfig, generate_dataset
from vst_vla.viz.spatial_sample import visualize_samples


def test_rrd_has_images_cameras_boxes_and_text(tmp_path):
    skills = ["3d_detection", "correspondence", "route_order"]
    out = generate_dataset(SpatialDataConfig(output=str(tmp_path / "ds"), skills=skills, samples_per_skill=1,
                                             test_samples_per_skill=1, image_width=160, image_height=120,
                                             families=["place_relative"]))
    rows = list(datasets.load_from_disk(str(out))["test"])
    rrd = visualize_samples(rows, out, tmp_path / "samples.rrd")

    columns = list(RrdReader(rrd).store().schema().component_columns())
    kinds: dict[str, set[str]] = {}
    for c in columns:
        kinds.setdefault(c.entity_path, set()).add(c.archetype.rsplit(".", 1)[-1])
    for row in rows:
        base = f"/samples/{row['skill']}/{row['id']}"
        assert "TextDocument" in kinds[f"{base}/qa"]
        assert "Boxes3D" in kinds[f"{base}/world/objects"]
        for i in range(len(row["images"])):
            cam = f"{base}/world/camera_{i}"
            assert {"Pinhole", "Transform3D"} <= kinds[cam]
            assert "Image" in kinds[f"{cam}/image"]
            assert "LineStrips2D" in kinds[f"{cam}/image/boxes"]  # the ground-truth boxes, projected
    det = next(r for r in rows if r["skill"] == "3d_detection")
    assert "Boxes3D" in kinds[f"/samples/3d_detection/{det['id']}/world/answer_frame/boxes"]
    assert "Transform3D" in kinds[f"/samples/3d_detection/{det['id']}/world/answer_frame"]
    assert "LineStrips2D" in kinds[f"/samples/3d_detection/{det['id']}/world/camera_0/image/answer_boxes"]
