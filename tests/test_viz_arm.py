"""The arm in Rerun's 3D view: the MJCF's link geometry, posed by forward kinematics like the sim."""

from collections import defaultdict

import mujoco
import numpy as np
import pytest
import rerun as rr
from rerun.experimental import RrdReader

from lerobot_env_vst_vla.scene import build_model
from lerobot_env_vst_vla.robot import JOINT_NAMES
from vst_vla.viz.arm import ArmLogger


def _record(arm: ArmLogger, path, joints) -> dict:
    rec = rr.RecordingStream("vst_vla_test_arm")
    rec.save(str(path))
    arm.log_geometry(rec)
    for i, q in enumerate(joints):
        rec.set_time("frame", sequence=i)
        arm.log_joints(rec, q)
    rec.flush()
    rec.disconnect()
    out = defaultdict(list)
    for chunk in RrdReader(path).stream():
        out[chunk.entity_path.lstrip("/")].append((chunk.to_record_batch(), chunk.is_static))
    return out


def _static(chunks, entity, column):
    return next(b.column(column).to_pylist()[0] for b, s in chunks[entity] if s and column in b.schema.names)


def test_primitive_arm_geometry_and_poses_match_the_sim(tmp_path):
    model = build_model("primitives")
    arm = ArmLogger(model)
    assert list(arm.shapes) == ["base", "shoulder", "upper_arm", "lower_arm", "wrist", "gripper", "moving_jaw"]
    rng = np.random.default_rng(0)
    lo, hi = model.jnt_range[[model.joint(j).id for j in JOINT_NAMES]].T
    joints = rng.uniform(lo, hi, (3, 6))
    chunks = _record(arm, tmp_path / "arm.rrd", joints)

    # every link's pose on every frame equals MuJoCo's forward kinematics of the same joint angles
    data = mujoco.MjData(model)
    for name in arm.shapes:
        rows = sorted((f, t) for b, s in chunks[f"world/arm/{name}"] if not s
                      for f, t in zip(b.column("frame").to_pylist(), b.column("Transform3D:translation").to_pylist(),
                                      strict=True))
        assert [f for f, _ in rows] == [0, 1, 2]
        for (_, t), q in zip(rows, joints, strict=True):
            data.qpos[[model.joint(j).qposadr[0] for j in JOINT_NAMES]] = q
            mujoco.mj_kinematics(model, data)
            np.testing.assert_allclose(np.reshape(t, 3), data.body(name).xpos, atol=1e-5)

    # boxes and capsules, static, in the body frame; a capsule starts at one end of its MJCF fromto
    assert len(_static(chunks, "world/arm/gripper/boxes", "Boxes3D:half_sizes")) == 3
    start = np.array(_static(chunks, "world/arm/upper_arm/capsules", "Capsules3D:translations"))[0]
    length = _static(chunks, "world/arm/upper_arm/capsules", "Capsules3D:lengths")[0]
    ends = np.array([[-0.01, -0.005, 0.018], [-0.1, -0.022, 0.018]])  # so101.xml upper_arm_link fromto
    assert min(np.linalg.norm(ends - start, axis=1)) < 1e-6
    assert length == pytest.approx(np.linalg.norm(ends[1] - ends[0]), abs=1e-6)


def test_mesh_arm_logs_the_stl_links_and_hides_the_collision_primitives(tmp_path):
    arm = ArmLogger(build_model("meshes"))
    chunks = _record(arm, tmp_path / "arm.rrd", [np.zeros(6)])
    meshes = [e for e in chunks if "/mesh_" in e]
    assert len(meshes) >= 7
    verts = _static(chunks, meshes[0], "Mesh3D:vertex_positions")
    normals = _static(chunks, meshes[0], "Mesh3D:vertex_normals")
    assert len(verts) == len(normals) > 100
    # the invisible primitive links are not drawn; the jaw pads (visible in both variants) are
    assert not any(e.endswith("/capsules") for e in chunks)
    assert len(_static(chunks, "world/arm/gripper/boxes", "Boxes3D:half_sizes")) == 1
