"""VST's 3D box convention, pinhole cameras and FoV unification.

Camera frame (OpenCV / VST): X right, Y down, Z forward, origin at the camera.
A box is `[x, y, z, x_size, y_size, z_size, pitch, yaw, roll]`: centre and full sizes in metres, sizes
along the box's own X/Y/Z axes when the angles are zero. Angles are Euler angles about X, Y, Z in
**degrees divided by 180** (so in (-1, 1)), sequence `"xyz"` as in scipy — exactly what VST stores
(Yangr116/vst `vst/prerpocess_box3d.py`: `Rotation.from_euler(angles * 180, seq="xyz", degrees=True)`).

FoV unification (VST `vst/preprocess.py`): every image is resized so its focal length equals a virtual
camera's, `BASE_FOCAL = 960 / (2 tan(69.16° / 2)) ≈ 696.3 px`, keeping the field of view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.transform import Rotation

BASE_FOCAL = 960.0 / (2.0 * math.tan(math.radians(69.16) / 2.0))

# OpenCV/VST camera axes expressed in MuJoCo's camera frame (x right, y up, looking along -z):
# a 180° turn about X. It is its own inverse.
MUJOCO_FROM_OPENCV = np.diag([1.0, -1.0, -1.0])

# The box-format paragraph VST puts in its 3D detection prompts (vst/prerpocess_box3d.py, `xyz_prompt`).
BOX_FORMAT_PROMPT = (
    "3D bounding box format: [x_center, y_center, z_center, x_size, y_size, z_size, pitch, yaw, roll]\n"
    "* x_center, y_center, z_center: the center of the object in the camera coordinate, in meters. "
    "z_center is the depth of the object in space.\n"
    "* x_size, y_size, z_size: The dimensions of the object along the ( XYZ ) axes, in meters, "
    "when the rotation angles are zero.\n"
    "* pitch, yaw, roll: Euler angles representing rotations around the X, Y, and Z axes, respectively. "
    "Each angle is normalized to the range of (-1, 1) and is multiplied by 180 to convert it into degrees.\n"
)


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels, for an image `width` x `height`."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def hfov_deg(self) -> float:
        return math.degrees(2.0 * math.atan(self.width / (2.0 * self.fx)))

    @property
    def vfov_deg(self) -> float:
        return math.degrees(2.0 * math.atan(self.height / (2.0 * self.fy)))


def intrinsics_from_fov(hfov_deg: float, vfov_deg: float, width: int, height: int) -> Intrinsics:
    """Intrinsics of a centred pinhole camera with the given horizontal and vertical FoV (degrees)."""
    fx = width / (2.0 * math.tan(math.radians(hfov_deg) / 2.0))
    fy = height / (2.0 * math.tan(math.radians(vfov_deg) / 2.0))
    return Intrinsics(fx, fy, width / 2.0, height / 2.0, int(width), int(height))


def camera_prompt(intr: Intrinsics) -> str:
    """The camera paragraph VST puts before 3D questions (vst/prerpocess_box3d.py, FoV variant)."""
    return (
        "Here are the detailed camera parameters for the image.\n"
        f"Camera intrinsic parameters: Horizontal fov, hfov={intr.hfov_deg:.2f}, and vertical fov, "
        f"vfov={intr.vfov_deg:.2f}. Image width={intr.width} and height={intr.height}. "
        "We do not consider distortion parameters here. \n"
        "Camera coordinate: X-axis points rightward, Y-axis points downward, and Z-axis points forward. "
        "The origin point is the camera location.\n"
        "We take the camera coordinate system as the world coordinate system."
    )


def unified_fov(intr: Intrinsics, base_focal: float = BASE_FOCAL) -> tuple[float, Intrinsics]:
    """Scale and intrinsics after resizing an image so that its focal length is `base_focal`.

    Mirrors VST's `scale_image_to_new_fov`: the new size is `int(size * base_focal / fx)` (fx for both
    sides, so pixels stay square) and the intrinsics scale with the integer size actually used.
    """
    scale = base_focal / intr.fx
    new_w = max(1, int(intr.width * scale))
    new_h = max(1, int(intr.height * scale))
    sw, sh = new_w / intr.width, new_h / intr.height
    return scale, Intrinsics(intr.fx * sw, intr.fy * sh, intr.cx * sw, intr.cy * sh, new_w, new_h)


def unify_image_fov(
    image: np.ndarray, intr: Intrinsics, base_focal: float = BASE_FOCAL
) -> tuple[np.ndarray, float, Intrinsics]:
    """Resize an HxW(xC) image to the virtual camera's focal length; returns (image, scale, intrinsics)."""
    if image.shape[:2] != (intr.height, intr.width):
        raise ValueError(
            f"image is {image.shape[1]}x{image.shape[0]} but intrinsics are for {intr.width}x{intr.height}"
        )
    scale, new = unified_fov(intr, base_focal)
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, (new.width, new.height), interpolation=interp), scale, new


def box_rotation(box: np.ndarray | list[float]) -> np.ndarray:
    """3x3 rotation (box frame -> camera frame) of a VST box."""
    angles = np.asarray(box, dtype=float)[6:9] * 180.0
    return Rotation.from_euler("xyz", angles, degrees=True).as_matrix()


_UNIT_CORNERS = 0.5 * np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)


def box_corners(box: np.ndarray | list[float]) -> np.ndarray:
    """The 8 corners (8x3, camera frame) of a VST box; corner i has signs of bits (x, y, z) of i."""
    box = np.asarray(box, dtype=float)
    return (_UNIT_CORNERS * box[3:6]) @ box_rotation(box).T + box[:3]


def project_points(points: np.ndarray, intr: Intrinsics) -> np.ndarray:
    """Pixel coordinates (N x 2) of camera-frame points; NaN for points not in front of the camera."""
    points = np.atleast_2d(np.asarray(points, dtype=float))
    z = points[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([intr.fx * points[:, 0] / z + intr.cx, intr.fy * points[:, 1] / z + intr.cy], axis=1)
    uv[~(z > 1e-9)] = np.nan
    return uv


def pose_from_mujoco(cam_xpos: np.ndarray, cam_xmat: np.ndarray) -> np.ndarray:
    """World-from-camera 4x4 from MuJoCo's `data.cam_xpos[i]` and `data.cam_xmat[i]` (row-major 3x3)."""
    pose = np.eye(4)
    pose[:3, :3] = np.asarray(cam_xmat, dtype=float).reshape(3, 3)
    pose[:3, 3] = np.asarray(cam_xpos, dtype=float)
    return pose


# World "down" in MuJoCo (z up): VST's boxes are gravity-aligned, their y axis points along it.
WORLD_DOWN = np.array([0.0, 0.0, -1.0])


def _signed_permutations() -> list[np.ndarray]:
    """The 24 proper rotations that relabel and flip box axes (signed permutation matrices, det +1)."""
    out = []
    for perm in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
        for signs in np.ndindex(2, 2, 2):
            p = np.zeros((3, 3))
            for j, (i, s) in enumerate(zip(perm, signs, strict=True)):
                p[i, j] = -1.0 if s else 1.0
            if np.linalg.det(p) > 0:
                out.append(p)
    return out


_RELABELLINGS = _signed_permutations()


def gravity_aligned_axes(rot_cv: np.ndarray, size: np.ndarray, down_cv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same box with its axes relabelled as VST's data has them.

    VST's boxes (Yangr116/vst `vst/prerpocess_box3d.py`, from Omni3D-style annotations) give the sizes
    along the box axes "when the rotation angles are zero", in the camera frame (y down): an upright
    object seen by a level camera has its height in y_size and near-zero angles. So the box axis closest
    to gravity becomes +y (pointing down), and of the labellings left the one with the smallest rotation
    from the camera axes is used (yaw within ±45° for a level camera). The box itself does not change.
    """
    best, best_key = None, None
    for p in _RELABELLINGS:
        r = rot_cv @ p
        key = (round(float(r[:, 1] @ down_cv), 9), round(float(np.trace(r)), 9))
        if best_key is None or key > best_key:
            best, best_key = p, key
    return rot_cv @ best, np.abs(best.T) @ np.asarray(size, dtype=float)


def world_box_to_camera(
    center: np.ndarray, rotation: np.ndarray, size: np.ndarray, world_from_camera: np.ndarray,
    world_down: np.ndarray = WORLD_DOWN,
) -> np.ndarray:
    """A VST box (camera frame) for an object given in the world frame.

    `center` (3,); `rotation` (3x3, world-from-object: the object's axes as columns in world
    coordinates); `size` (3,) full extents along the object's own axes; `world_from_camera` is a 4x4
    pose in MuJoCo's camera convention (the camera looks along its -Z with +Y up). The box axes are
    relabelled gravity-aligned (`gravity_aligned_axes`), as in VST's released data.
    """
    pose = np.asarray(world_from_camera, dtype=float)
    world_from_cv = pose[:3, :3] @ MUJOCO_FROM_OPENCV
    center_cv = world_from_cv.T @ (np.asarray(center, dtype=float) - pose[:3, 3])
    rot_cv = world_from_cv.T @ np.asarray(rotation, dtype=float)
    down_cv = world_from_cv.T @ np.asarray(world_down, dtype=float)
    rot_cv, size = gravity_aligned_axes(rot_cv, size, down_cv / np.linalg.norm(down_cv))
    angles = Rotation.from_matrix(rot_cv).as_euler("xyz", degrees=True) / 180.0
    angles = np.where(angles >= 1.0, angles - 2.0, angles)  # keep the open interval (-1, 1)
    return np.concatenate([center_cv, size, angles])


# Corner index pairs of the 12 edges: corners differing in exactly one bit.
_EDGES = np.array([(i, i | bit) for bit in (1, 2, 4) for i in range(8) if not i & bit])


def box_volume(box: np.ndarray | list[float]) -> float:
    """Volume of a box; 0 unless all sizes are positive and the volume is finite."""
    sizes = np.asarray(box, dtype=float)[3:6]
    with np.errstate(over="ignore", invalid="ignore"):
        volume = float(np.prod(sizes))
    return volume if np.all(sizes > 0) and math.isfinite(volume) else 0.0


def _halfspaces(box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward normals (6x3) and offsets (6,) with the box = {p : normals @ p <= offsets}."""
    axes = box_rotation(box).T  # rows: the box axes in the camera frame
    normals = np.concatenate([axes, -axes])
    centre_proj = axes @ box[:3]
    half = box[3:6] / 2.0
    return normals, np.concatenate([centre_proj + half, -centre_proj + half])


def _clip_edges(corners: np.ndarray, normals: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """End points of the parts of the 12 edges (of `corners`) that lie inside the halfspaces."""
    p0, d = corners[_EDGES[:, 0]], corners[_EDGES[:, 1]] - corners[_EDGES[:, 0]]
    num = offsets[None, :] - p0 @ normals.T  # (12, 6): n·(p0 + t d) <= b  <=>  t (n·d) <= num
    den = d @ normals.T
    # Rounding slack, so that edges lying on a face (identical or touching boxes) count as inside.
    tol = 1e-9 * (1.0 + np.abs(corners).max())
    parallel = np.abs(den) <= 1e-12 * (1.0 + np.abs(d).max())
    with np.errstate(divide="ignore", invalid="ignore"):
        t = num / den
    t_lo = np.max(np.where(~parallel & (den < 0), t, 0.0), axis=1)
    t_hi = np.min(np.where(~parallel & (den > 0), t, 1.0), axis=1)
    parallel_outside = np.any(parallel & (num < -tol), axis=1)
    keep = (t_lo <= t_hi + 1e-9) & ~parallel_outside
    return np.concatenate([p0[keep] + t_lo[keep, None] * d[keep], p0[keep] + t_hi[keep, None] * d[keep]])


def box_iou_3d(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> float:
    """Exact IoU of two oriented VST boxes; 0 for degenerate (zero, negative or non-finite) boxes.

    The intersection of two convex polytopes is the convex hull of each one's edges clipped to the
    other (this covers corners inside the other box and edge/face crossings), so its volume is the
    hull volume of those clipped end points.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != (9,) or b.shape != (9,) or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return 0.0
    vol_a, vol_b = box_volume(a), box_volume(b)
    if vol_a == 0.0 or vol_b == 0.0:
        return 0.0
    with np.errstate(all="ignore"):  # absurd magnitudes end up as a 0 below, not as warnings
        # Bounding spheres apart: no overlap, skip the hull.
        if not np.linalg.norm(a[:3] - b[:3]) < (np.linalg.norm(a[3:6]) + np.linalg.norm(b[3:6])) / 2.0:
            return 0.0
        points = np.concatenate(
            [_clip_edges(box_corners(a), *_halfspaces(b)), _clip_edges(box_corners(b), *_halfspaces(a))]
        )
        if len(points) < 4 or not np.all(np.isfinite(points)):
            return 0.0
        try:
            inter = ConvexHull(points).volume
        except QhullError:  # flat or empty intersection (the boxes only touch)
            return 0.0
        iou = inter / (vol_a + vol_b - inter)
    return float(np.clip(iou, 0.0, 1.0)) if math.isfinite(iou) else 0.0
