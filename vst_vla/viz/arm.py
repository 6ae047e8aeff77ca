"""The SO-101 in Rerun's 3D view: each link's visual geometry from the MJCF, posed every frame.

`ArmLogger(model)` reads the robot's visible geoms (boxes, capsules, cylinders, spheres or the STL
meshes of `robot_variant=meshes`) from a compiled MuJoCo model and logs them once, static, in their
body's frame under `world/arm/<body>`. Each frame then costs one `Transform3D` per body (7 for the
SO-101): from a live `MjData` (`log_pose`, an evaluation or a deployment run) or from joint angles
through forward kinematics on a scratch `MjData` (`log_joints`, a recorded episode).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np
import rerun as rr
from lerobot_env_vst_vla.robot import JOINT_NAMES

WORLD = "world"
ARM = "arm"  # the arm's entities: <world>/arm/<body>/<shape>
ROOT_BODY = "base"  # the SO-101's root body in so101.xml
_G = mujoco.mjtGeom


@dataclass
class _BodyShapes:
    """One body's visible geoms, grouped into Rerun archetypes, in the body's frame."""

    boxes: list[tuple] = field(default_factory=list)  # (centre, half size, xyzw, rgba)
    capsules: list[tuple] = field(default_factory=list)  # (one end, length, radius, xyzw, rgba)
    cylinders: list[tuple] = field(default_factory=list)  # (centre, length, radius, xyzw, rgba)
    spheres: list[tuple] = field(default_factory=list)  # (centre, radius, rgba)
    meshes: list[tuple] = field(default_factory=list)  # (vertices, faces, normals, rgba)


def _subtree(model: mujoco.MjModel, root: int) -> list[int]:
    """Body ids of `root` and its descendants (parents come before children in MuJoCo's order)."""
    ids = [root]
    for b in range(root + 1, model.nbody):
        if model.body_parentid[b] in ids:
            ids.append(b)
    return ids


def _rgba(model: mujoco.MjModel, g: int) -> np.ndarray:
    mat = model.geom_matid[g]
    rgba = model.mat_rgba[mat] if mat >= 0 else model.geom_rgba[g]
    return np.round(255 * np.clip(rgba, 0, 1)).astype(np.uint8)


def _xyzw(wxyz: np.ndarray) -> np.ndarray:
    return np.array([wxyz[1], wxyz[2], wxyz[3], wxyz[0]])


def _vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals: without them Rerun draws meshes flat and unlit."""
    face_n = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    normals = np.zeros_like(verts)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_n)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def _mesh_in_body(model: mujoco.MjModel, g: int) -> tuple[np.ndarray, np.ndarray]:
    m = model.geom_dataid[g]
    v0, nv = model.mesh_vertadr[m], model.mesh_vertnum[m]
    f0, nf = model.mesh_faceadr[m], model.mesh_facenum[m]
    verts = model.mesh_vert[v0:v0 + nv].astype(np.float64)
    faces = model.mesh_face[f0:f0 + nf].astype(np.uint32)
    R = np.zeros(9)
    mujoco.mju_quat2Mat(R, model.geom_quat[g])
    return (verts @ R.reshape(3, 3).T + model.geom_pos[g]).astype(np.float32), faces


def arm_shapes(model: mujoco.MjModel, root_body: str = ROOT_BODY) -> dict[str, _BodyShapes]:
    """Body name -> its visible geoms (alpha > 0, so hidden collision primitives are left out)."""
    shapes: dict[str, _BodyShapes] = {}
    for b in _subtree(model, model.body(root_body).id):
        s = _BodyShapes()
        for g in np.flatnonzero(model.geom_bodyid == b):
            rgba = _rgba(model, g)
            if rgba[3] == 0:
                continue
            pos, quat, size, kind = model.geom_pos[g], model.geom_quat[g], model.geom_size[g], model.geom_type[g]
            if kind == _G.mjGEOM_BOX:
                s.boxes.append((pos, size, _xyzw(quat), rgba))
            elif kind == _G.mjGEOM_CAPSULE:  # MuJoCo: centred, half-length size[1]; Rerun: from one end along +z
                R = np.zeros(9)
                mujoco.mju_quat2Mat(R, quat)
                s.capsules.append((pos - R.reshape(3, 3)[:, 2] * size[1], 2 * size[1], size[0], _xyzw(quat), rgba))
            elif kind == _G.mjGEOM_CYLINDER:
                s.cylinders.append((pos, 2 * size[1], size[0], _xyzw(quat), rgba))
            elif kind == _G.mjGEOM_SPHERE:
                s.spheres.append((pos, size[0], rgba))
            elif kind == _G.mjGEOM_MESH:
                verts, faces = _mesh_in_body(model, g)
                s.meshes.append((verts, faces, _vertex_normals(verts, faces), rgba))
        shapes[model.body(b).name] = s
    return shapes


class ArmLogger:
    """Logs the arm's geometry once and its link poses per frame (see the module docstring).

    `root` is the 3D scene's entity (default "world"): the arm goes under `<root>/arm/<body>`.
    """

    def __init__(self, model: mujoco.MjModel, root_body: str = ROOT_BODY):
        self.model = model
        self.shapes = arm_shapes(model, root_body)
        self.body_ids = np.array([model.body(name).id for name in self.shapes])
        self._names = [rr.escape_entity_path_part(name) for name in self.shapes]
        self._data = mujoco.MjData(model)  # scratch state for forward kinematics from joint angles
        self._qadr = np.array([model.joint(j).qposadr[0] for j in JOINT_NAMES])

    def paths(self, root: str = WORLD) -> list[str]:
        return [f"{root}/{ARM}/{name}" for name in self._names]

    def log_geometry(self, rec: rr.RecordingStream, root: str = WORLD) -> None:
        """The link shapes, static, each in its body's frame (once per recording)."""
        for path, s in zip(self.paths(root), self.shapes.values(), strict=True):
            if s.boxes:
                c, h, q, col = zip(*s.boxes, strict=True)
                rec.log(f"{path}/boxes", rr.Boxes3D(centers=c, half_sizes=h, quaternions=q, colors=col,
                                                     fill_mode="solid"), static=True)
            if s.capsules:
                t, length, r, q, col = zip(*s.capsules, strict=True)
                rec.log(f"{path}/capsules", rr.Capsules3D(translations=t, lengths=length, radii=r, quaternions=q,
                                                          colors=col, fill_mode="solid"), static=True)
            if s.cylinders:
                c, length, r, q, col = zip(*s.cylinders, strict=True)
                rec.log(f"{path}/cylinders", rr.Cylinders3D(centers=c, lengths=length, radii=r, quaternions=q,
                                                            colors=col, fill_mode="solid"), static=True)
            if s.spheres:
                c, r, col = zip(*s.spheres, strict=True)
                rec.log(f"{path}/spheres", rr.Ellipsoids3D(centers=c, radii=r, colors=col, fill_mode="solid"),
                        static=True)
            for k, (verts, faces, normals, col) in enumerate(s.meshes):
                rec.log(f"{path}/mesh_{k}", rr.Mesh3D(vertex_positions=verts, triangle_indices=faces,
                                                      vertex_normals=normals, albedo_factor=col), static=True)

    def log_pose(self, rec: rr.RecordingStream, data: mujoco.MjData, root: str = WORLD) -> None:
        """Every link's world pose from a simulation state (kinematics already computed), at the current time."""
        for path, b in zip(self.paths(root), self.body_ids, strict=True):
            rec.log(path, rr.Transform3D(translation=data.xpos[b], mat3x3=data.xmat[b].reshape(3, 3)))

    def log_joints(self, rec: rr.RecordingStream, joint_positions, root: str = WORLD) -> None:
        """Every link's world pose for the six joint angles (radians, so101 order), at the current time."""
        self._data.qpos[self._qadr] = joint_positions
        mujoco.mj_kinematics(self.model, self._data)
        self.log_pose(rec, self._data, root)


def arm_logger(robot_variant: str = "primitives") -> ArmLogger:
    """An ArmLogger for the sim's own model of `robot_variant` (primitives, meshes, meshes_full)."""
    from lerobot_env_vst_vla.scene import build_model

    return ArmLogger(build_model(robot_variant))
