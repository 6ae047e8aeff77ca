"""VST box convention, cameras and oriented 3D IoU, checked against independent computations."""

import math

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vst_vla.spatial.boxes import (
    BASE_FOCAL,
    Intrinsics,
    box_corners,
    box_iou_3d,
    box_rotation,
    camera_prompt,
    intrinsics_from_fov,
    pose_from_mujoco,
    project_points,
    unified_fov,
    unify_image_fov,
    world_box_to_camera,
)


def _sorted_rows(points: np.ndarray) -> np.ndarray:
    return points[np.lexsort(np.round(points, 9).T[::-1])]


def test_base_focal_is_vsts_virtual_camera():
    # 960 px wide image with a 69.16° horizontal FoV.
    assert BASE_FOCAL == pytest.approx(696.3195, abs=1e-3)
    assert math.degrees(2 * math.atan(480 / BASE_FOCAL)) == pytest.approx(69.16)


def test_axis_aligned_corners_span_the_box():
    corners = box_corners([1.0, -0.5, 3.0, 0.4, 0.2, 0.6, 0, 0, 0])
    assert corners.shape == (8, 3)
    np.testing.assert_allclose(corners.min(0), [0.8, -0.6, 2.7])
    np.testing.assert_allclose(corners.max(0), [1.2, -0.4, 3.3])


def test_angles_are_degrees_over_180_about_xyz():
    # yaw = 0.5 -> 90° about the camera Y axis: the box's x extent now lies along Z.
    corners = box_corners([0, 0, 5, 2.0, 1.0, 0.5, 0, 0.5, 0])
    np.testing.assert_allclose(corners.max(0) - corners.min(0), [0.5, 1.0, 2.0], atol=1e-12)
    # The rotation matches scipy's extrinsic "xyz" sequence in degrees.
    box = [0, 0, 0, 1, 1, 1, 0.1, -0.2, 0.3]
    expected = Rotation.from_euler("xyz", [18, -36, 54], degrees=True).as_matrix()
    np.testing.assert_allclose(box_rotation(box), expected)


def test_rotated_corners_keep_edge_lengths():
    box = np.array([0.3, 0.1, 2.0, 0.5, 0.3, 0.2, 0.2, -0.4, 0.7])
    c = box_corners(box)
    np.testing.assert_allclose(c.mean(0), box[:3])
    # Corner i and i ^ bit differ along one box axis by that axis' size.
    for bit, size in zip((4, 2, 1), box[3:6], strict=True):
        np.testing.assert_allclose(np.linalg.norm(c[0] - c[bit]), size)


def test_projection_matches_opencv():
    intr = Intrinsics(fx=500.0, fy=480.0, cx=320.0, cy=240.0, width=640, height=480)
    pts = np.array([[0.1, -0.2, 2.0], [0.0, 0.0, 1.0], [-0.5, 0.3, 4.0]])
    expected, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), intr.matrix, None)
    np.testing.assert_allclose(project_points(pts, intr), expected.reshape(-1, 2))
    assert np.isnan(project_points([[0, 0, -1.0]], intr)).all()


def test_intrinsics_from_fov_and_back():
    intr = intrinsics_from_fov(90.0, 60.0, 640, 480)
    assert intr.fx == pytest.approx(320.0)
    assert intr.fy == pytest.approx(240.0 / math.tan(math.radians(30)))
    assert (intr.cx, intr.cy) == (320.0, 240.0)
    assert intr.hfov_deg == pytest.approx(90.0) and intr.vfov_deg == pytest.approx(60.0)
    assert "hfov=90.00, and vertical fov, vfov=60.00. Image width=640 and height=480." in camera_prompt(intr)


def test_unified_fov_reaches_base_focal_and_keeps_fov():
    intr = intrinsics_from_fov(90.0, 73.74, 640, 480)  # fx = 320
    scale, new = unified_fov(intr)
    assert scale == pytest.approx(BASE_FOCAL / 320.0)
    # VST truncates the new size to int; intrinsics follow the size actually used.
    assert (new.width, new.height) == (int(640 * scale), int(480 * scale)) == (1392, 1044)
    assert new.fx == pytest.approx(BASE_FOCAL, rel=1.0 / 640)
    assert new.hfov_deg == pytest.approx(90.0)
    assert (new.cx, new.cy) == pytest.approx((new.width / 2, new.height / 2))


def test_unify_image_fov_resizes_image():
    intr = Intrinsics(fx=1400.0, fy=1400.0, cx=100.0, cy=50.0, width=200, height=100)
    image = np.zeros((100, 200, 3), np.uint8)
    out, scale, new = unify_image_fov(image, intr)
    assert out.shape == (new.height, new.width, 3) == (49, 99, 3)
    assert scale == pytest.approx(BASE_FOCAL / 1400.0)
    with pytest.raises(ValueError, match="200x100"):
        unify_image_fov(np.zeros((10, 10, 3), np.uint8), intr)


def test_world_box_to_camera_for_mujoco_camera_looking_down():
    # MuJoCo camera with identity orientation looks along world -Z with +Y up; it hangs 1 m high.
    pose = pose_from_mujoco([0.0, 0.0, 1.0], np.eye(3).ravel())
    box = world_box_to_camera([0.1, 0.2, 0.0], np.eye(3), [0.3, 0.2, 0.1], pose)
    # Camera frame (X right, Y down, Z forward): world +Y is image-up, i.e. camera -Y; depth 1 m.
    np.testing.assert_allclose(box[:3], [0.1, -0.2, 1.0], atol=1e-12)
    # Gravity-aligned (VST): the object's height (0.1, world z) is y_size; it points along the view here.
    np.testing.assert_allclose(box[3:6], [0.3, 0.1, 0.2])
    assert np.all(np.abs(box[6:]) <= 1.0)
    np.testing.assert_allclose(box_rotation(box)[:, 1], [0.0, 0.0, 1.0], atol=1e-12)
    # Pixel of the centre by MuJoCo's pinhole (u right, v down, f from fovy): independent formula.
    intr = intrinsics_from_fov(90.0, 90.0, 200, 200)
    u = intr.cx + intr.fx * 0.1 / 1.0
    v = intr.cy - intr.fy * 0.2 / 1.0
    np.testing.assert_allclose(project_points(box[:3], intr)[0], [u, v])


@pytest.mark.parametrize("yaw_deg", [0.0, 30.0, 80.0, 135.0])
def test_upright_object_seen_by_a_level_camera_has_its_height_in_y_size(yaw_deg):
    # VST's parametrisation (vst/prerpocess_box3d.py): sizes along the camera-frame axes at zero angles,
    # Y down, so a level camera sees an upright object's height in y_size with near-zero pitch and roll.
    # A level MuJoCo camera looking along world +X: camera -Z = world +X, camera +Y = world +Z.
    cam_rot = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # columns: cam x, y, z in world
    pose = pose_from_mujoco([0.0, 0.0, 0.5], cam_rot.ravel())
    obj_rot = Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix()
    size = np.array([0.04, 0.08, 0.12])  # 12 cm tall
    box = world_box_to_camera([1.0, 0.1, 0.5], obj_rot, size, pose)
    assert box[4] == pytest.approx(0.12)
    assert sorted(box[[3, 5]]) == pytest.approx([0.04, 0.08])
    pitch, yaw, roll = box[6:]
    assert abs(pitch) < 1e-9 and abs(roll) < 1e-9
    assert abs(yaw) <= 0.25 + 1e-9  # the relabelling with the smallest turn: within ±45°
    np.testing.assert_allclose(box[:3], [-0.1, 0.0, 1.0], atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_world_box_to_camera_maps_the_same_corners(seed):
    rng = np.random.default_rng(seed)
    cam_rot = Rotation.random(random_state=seed).as_matrix()
    pose = pose_from_mujoco(rng.normal(size=3), cam_rot.ravel())
    obj_rot = Rotation.random(random_state=seed + 100).as_matrix()
    centre, size = rng.normal(size=3), rng.uniform(0.05, 1.0, size=3)
    box = world_box_to_camera(centre, obj_rot, size, pose)
    # World corners -> MuJoCo camera frame -> OpenCV frame (flip y and z).
    world_corners = (
        0.5 * np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * size
    ) @ obj_rot.T + centre
    cam = (world_corners - pose[:3, 3]) @ pose[:3, :3]
    cam[:, 1:] *= -1
    np.testing.assert_allclose(_sorted_rows(box_corners(box)), _sorted_rows(cam), atol=1e-9)


def test_iou_identical_and_disjoint_and_touching():
    a = [0, 0, 3, 1, 2, 0.5, 0.1, 0.2, -0.3]
    assert box_iou_3d(a, a) == pytest.approx(1.0)
    assert box_iou_3d(a, [5, 0, 3, 1, 2, 0.5, 0, 0, 0]) == 0.0
    assert box_iou_3d([0, 0, 0, 1, 1, 1, 0, 0, 0], [1, 0, 0, 1, 1, 1, 0, 0, 0]) == 0.0


@pytest.mark.parametrize(
    "a,b",
    [
        ([0, 0, 0, 1, 1, 1, 0, 0, 0], [0.5, 0, 0, 1, 1, 1, 0, 0, 0]),
        ([0, 0, 0, 2, 1, 3, 0, 0, 0], [0.3, -0.2, 0.5, 1, 2, 1, 0, 0, 0]),
        ([1, 2, 3, 1, 1, 1, 0, 0, 0], [1.2, 2.3, 3.4, 0.5, 0.5, 0.5, 0, 0, 0]),
    ],
)
def test_iou_axis_aligned_closed_form(a, b):
    a, b = np.array(a, float), np.array(b, float)
    lo = np.maximum(a[:3] - a[3:6] / 2, b[:3] - b[3:6] / 2)
    hi = np.minimum(a[:3] + a[3:6] / 2, b[:3] + b[3:6] / 2)
    inter = np.prod(np.clip(hi - lo, 0, None))
    expected = inter / (np.prod(a[3:6]) + np.prod(b[3:6]) - inter)
    assert box_iou_3d(a, b) == pytest.approx(expected, abs=1e-12)


def test_iou_rotated_closed_forms():
    cube = [0, 0, 0, 1, 1, 1, 0, 0, 0]
    # A cube turned 45° about Y: the overlap is a regular octagon prism, IoU = 1/sqrt(2).
    assert box_iou_3d(cube, [0, 0, 0, 1, 1, 1, 0, 0.25, 0]) == pytest.approx(1 / math.sqrt(2), abs=1e-9)
    # A 2x1x1 box turned 90° about Z overlaps itself in a unit cube: 1 / (2 + 2 - 1).
    assert box_iou_3d([0, 0, 0, 2, 1, 1, 0, 0, 0], [0, 0, 0, 2, 1, 1, 0, 0, 0.5]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", range(3))
def test_iou_rotated_matches_monte_carlo(seed):
    rng = np.random.default_rng(seed)
    a = np.r_[0, 0, 2, rng.uniform(0.5, 1.5, 3), rng.uniform(-1, 1, 3)]
    b = np.r_[rng.uniform(-0.3, 0.3, 3) + [0, 0, 2], rng.uniform(0.5, 1.5, 3), rng.uniform(-1, 1, 3)]
    # Sample uniformly in a (its own frame) and count points inside b (b's frame).
    n = 400_000
    local = (rng.random((n, 3)) - 0.5) * a[3:6]
    pts = local @ box_rotation(a).T + a[:3]
    in_b = np.all(np.abs((pts - b[:3]) @ box_rotation(b)) <= b[3:6] / 2, axis=1)
    vol_a, vol_b = np.prod(a[3:6]), np.prod(b[3:6])
    inter = in_b.mean() * vol_a
    expected = inter / (vol_a + vol_b - inter)
    assert expected > 0.05  # the case really overlaps
    assert box_iou_3d(a, b) == pytest.approx(expected, abs=0.01)
    assert box_iou_3d(b, a) == pytest.approx(box_iou_3d(a, b), abs=1e-9)


@pytest.mark.parametrize(
    "bad",
    [
        [0, 0, 0, 0, 1, 1, 0, 0, 0],  # zero size
        [0, 0, 0, -1, 1, 1, 0, 0, 0],  # negative size
        [0, 0, 0, 1, float("nan"), 1, 0, 0, 0],
        [0, 0, 0, float("inf"), 1, 1, 0, 0, 0],
        [0, 0, 0, 1e200, 1e200, 1e200, 0, 0, 0],  # volume overflows
        [0, 0, 0, 1, 1],  # wrong length
    ],
)
def test_iou_degenerate_boxes_are_zero(bad):
    assert box_iou_3d(bad, [0, 0, 0, 1, 1, 1, 0, 0, 0]) == 0.0
    assert box_iou_3d([0, 0, 0, 1, 1, 1, 0, 0, 0], bad) == 0.0


def test_iou_thin_box_inside_is_its_volume_ratio():
    thin = [0, 0, 0, 1, 1, 1e-6, 0.1, 0.2, 0.3]
    assert box_iou_3d(thin, [0, 0, 0, 1, 1, 1, 0.1, 0.2, 0.3]) == pytest.approx(1e-6, rel=1e-3)
