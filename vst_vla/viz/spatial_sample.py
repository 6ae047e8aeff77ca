"""Rerun view of spatial QA samples: images with their visual prompts, cameras, ground-truth 3D boxes.

Per sample, under `samples/<skill>/<id>/`:
    world/objects                 every object's ground-truth box (rr.Boxes3D, world frame, labelled)
    world/camera_<i>              the camera of image i (rr.Transform3D + rr.Pinhole, OpenCV axes)
    world/camera_<i>/image        image i as the model sees it (prompts drawn in)
    world/camera_<i>/image/boxes  the object boxes projected into image i (rr.LineStrips2D)
    world/answer_frame/boxes      for 3D detection / grounding: the answer's boxes in camera 0's frame
                                  (a transform without the pinhole: 3D content under a pinhole is 2D)
    qa                            question, answer and ground truth (rr.TextDocument, markdown)
The recording's layout has one tab per sample: the 3D scene framed on the workspace, the images, the QA.
`python -m vst_vla.viz.spatial_sample <dataset folder> [--split test] [--out x.rrd] [--per-skill 1]`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import rerun as rr
import rerun.blueprint as rrb
from scipy.spatial.transform import Rotation

from vst_vla.spatial.boxes import box_corners, box_rotation, project_points
from vst_vla.spatial.perception.context import Camera, Obj
from vst_vla.viz.blueprint import WORKSPACE_EYE, WORKSPACE_TARGET

_EDGES = [(i, i | bit) for bit in (1, 2, 4) for i in range(8) if not i & bit]


def _strips(corners_cam: np.ndarray, K: np.ndarray, width: int, height: int) -> list[np.ndarray]:
    """The 12 projected edges of a box given by its 8 camera-frame corners (none if behind the camera)."""
    if np.any(corners_cam[:, 2] <= 1e-3):
        return []
    cam = Camera(K, np.eye(4), width, height)
    uv = project_points(corners_cam, cam.intrinsics)
    return [uv[[a, b]] for a, b in _EDGES]


def log_sample(rec: rr.RecordingStream, row: dict, root: str | Path) -> str:
    """Log one dataset row (its images resolved under `root`); returns its entity path."""
    root = Path(root)
    meta = json.loads(row["metadata"])
    base = f"samples/{row['skill']}/{rr.escape_entity_path_part(str(row['id']))}"
    objects = [Obj(o["label"], o["shape"], o["color"], o["size_class"], np.asarray(o["size"]),
                   np.asarray(o["position"]), np.asarray(o["rotation"])) for o in meta.get("objects", [])]
    rec.log(f"{base}/world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
    if objects:
        quats = [Rotation.from_matrix(o.rotation).as_quat() for o in objects]  # x, y, z, w
        rec.log(f"{base}/world/objects", rr.Boxes3D(
            centers=[o.position for o in objects], half_sizes=[o.size / 2 for o in objects],
            quaternions=[rr.Quaternion(xyzw=q) for q in quats], labels=[o.label for o in objects]), static=True)
    cameras = meta.get("cameras") or [None] * len(row["images"])
    for i, (rel, cam_dict) in enumerate(zip(row["images"], cameras, strict=True)):
        image = cv2.imread(str(root / rel), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"sample {row['id']!r}: image file missing: {root / rel}")
        path = f"{base}/world/camera_{i}"
        if cam_dict is None:
            rec.log(f"{path}/image", rr.Image(image[:, :, ::-1]), static=True)
            continue
        cam = Camera.from_gt(cam_dict)
        rec.log(path, rr.Transform3D(translation=cam.position, mat3x3=cam.rotation), static=True)
        rec.log(path, rr.Pinhole(image_from_camera=cam.K, width=cam.width, height=cam.height,
                                 camera_xyz=rr.ViewCoordinates.RDF, image_plane_distance=0.05), static=True)
        rec.log(f"{path}/image", rr.Image(image[:, :, ::-1]), static=True)
        strips, labels = [], []
        for o in objects:
            edges = _strips(cam.to_camera(o.corners()), cam.K, cam.width, cam.height)
            strips += edges
            labels += [o.label] + [""] * (len(edges) - 1)  # one label per box, not one per edge
        if strips:
            rec.log(f"{path}/image/boxes", rr.LineStrips2D(strips, labels=labels), static=True)
    if row["answer_type"] == "boxes_3d" and cameras and cameras[0] is not None:
        boxes = [b for b in json.loads(row["ground_truth"]).get("boxes", []) if len(b["bbox_3d"]) == 9]
        if boxes:
            quats = [Rotation.from_matrix(box_rotation(b["bbox_3d"])).as_quat() for b in boxes]
            cam = Camera.from_gt(cameras[0])
            rec.log(f"{base}/world/answer_frame", rr.Transform3D(translation=cam.position, mat3x3=cam.rotation),
                    static=True)
            rec.log(f"{base}/world/answer_frame/boxes", rr.Boxes3D(
                centers=[b["bbox_3d"][:3] for b in boxes], half_sizes=[np.asarray(b["bbox_3d"][3:6]) / 2 for b in boxes],
                quaternions=[rr.Quaternion(xyzw=q) for q in quats], labels=[b["label"] for b in boxes]), static=True)
            strips = [s for b in boxes for s in _strips(box_corners(b["bbox_3d"]), cam.K, cam.width, cam.height)]
            if strips:
                rec.log(f"{base}/world/camera_0/image/answer_boxes", rr.LineStrips2D(strips), static=True)
    text = (f"**{row['skill']}** ({row['scenario']}, {row['answer_type']}{', CoT' if row['cot'] else ''})\n\n"
            f"**Question**\n\n{row['question']}\n\n**Answer**\n\n{row['answer']}\n\n"
            f"**Ground truth**\n\n```json\n{row['ground_truth']}\n```")
    rec.log(f"{base}/qa", rr.TextDocument(text, media_type=rr.MediaType.MARKDOWN), static=True)
    return base


def sample_view(base: str, n_images: int, name: str) -> rrb.Container:
    """One sample's tab: the 3D scene on the workspace | its images over the question and answer."""
    scene = rrb.Spatial3DView(origin=f"{base}/world", name="scene", eye_controls=rrb.EyeControls3D(
        position=WORKSPACE_EYE, look_target=WORKSPACE_TARGET, eye_up=(0, 0, 1)))
    images = [rrb.Spatial2DView(origin=f"{base}/world/camera_{i}", name=f"image {i}") for i in range(n_images)]
    qa = rrb.TextDocumentView(origin=f"{base}/qa", name="question / answer")
    return rrb.Horizontal(scene, rrb.Vertical(rrb.Horizontal(*images), qa), column_shares=[1, 1], name=name)


def visualize_samples(rows: list[dict], root: str | Path, output: str | Path, spawn: bool = False) -> Path:
    """Write the rows into a Rerun recording at `output` (.rrd); optionally open a viewer too."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tabs = [sample_view(f"samples/{r['skill']}/{rr.escape_entity_path_part(str(r['id']))}", len(r["images"]),
                        r["skill"]) for r in rows]
    blueprint = rrb.Blueprint(rrb.Tabs(*tabs), collapse_panels=True) if tabs else None
    rec = rr.RecordingStream("vst_vla_spatial_samples")
    rec.save(str(output), default_blueprint=blueprint)
    if spawn:
        rec.spawn(connect=False)
    for row in rows:
        log_sample(rec, row, root)
    rec.flush()
    rec.disconnect()
    return output


def main(argv: list[str] | None = None) -> None:
    import datasets

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", help="a `vst-vla spatial-data` folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--per-skill", type=int, default=1, help="samples shown per skill")
    ap.add_argument("--out", default="outputs/viz/spatial_samples.rrd")
    ap.add_argument("--spawn", action="store_true", help="also open the Rerun viewer")
    args = ap.parse_args(argv)
    ds = datasets.load_from_disk(args.dataset)[args.split]
    seen: dict[str, int] = {}
    rows = []
    for row in ds:
        if seen.get(row["skill"], 0) < args.per_skill:
            seen[row["skill"]] = seen.get(row["skill"], 0) + 1
            rows.append(row)
    print(visualize_samples(rows, args.dataset, args.out, args.spawn))


if __name__ == "__main__":
    main()
