"""`vst-vla viz`: one recorded episode → a Rerun recording (.rrd file, live viewer or web viewer).

What the recording holds, on a `frame` sequence timeline and a `time` timeline (seconds):

- `world/cameras/<cam>`: each camera as a frustum (`Pinhole` + `Transform3D` from the stored
  world_from_camera, OpenCV axes), the front camera static, the wrist camera moving with the arm;
  `world/cameras/<cam>/image`: the frames decoded from the LeRobotDataset videos. Because the images
  sit under their pinhole, a 2D view of `world/cameras/<cam>` shows the ground-truth boxes projected
  onto the image: a direct check that the scene ground truth and the pixels agree.
- `world/table` (static flat box), `world/objects` (`Boxes3D`, one instance per object: centre, full
  extents, orientation, colour, label), `world/gripper/path` (`LineStrips3D` growing over time) and
  `world/gripper/position`.
- `world/arm/<body>`: the SO-101's links (`vst_vla.viz.arm`, `robot_variant` picks primitives or
  meshes), posed every frame from the stored joint angles.
- `state/<motor>` and `action/<motor>`: one `Scalars` series per joint, named by motor.
- `instruction`: the episode's instruction (`TextDocument`, static); `outcome`: the expert's result
  at the last frame.

The layout is `vst_vla.viz.blueprint.episode_blueprint`, shared with policy evaluations.
`log_scene_ground_truth` logs one frame of scene ground truth; policy evaluation reuses it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rerun as rr
import rerun.blueprint as rrb

from vst_vla.viz.arm import arm_logger
from vst_vla.viz.blueprint import episode_blueprint, log_joint_series, log_outcome

log = logging.getLogger(__name__)

APPLICATION_ID = "vst_vla"
WORLD = "world"
DEFAULT_OUTPUT = "outputs/rerun/episode_{episode}.rrd"

# Fallbacks if tabletop.xml cannot be read: centre and half extents of the table box (metres).
_TABLE_CENTER = (0.2, 0.0, -0.02)
_TABLE_HALF_SIZE = (0.35, 0.4, 0.02)
_TABLE_RGB = (158, 128, 97)
_GRIPPER_RGB = (255, 210, 31)


@dataclass
class VizConfig:
    root: str = "outputs/datasets/vst_tabletop"  # LeRobotDataset recorded by `vst-vla collect`
    repo_id: str = "local/vst_tabletop"
    episode: int = 0
    # .rrd path; "{episode}" is replaced by the episode index. Empty: outputs/rerun/episode_<n>.rrd
    output: str = DEFAULT_OUTPUT
    spawn: bool = False  # also open the written recording in a native Rerun viewer on this machine
    serve: bool = False  # also serve a web viewer (gRPC + web ports) and block until Ctrl-C
    grpc_port: int = 9876
    web_port: int = 9090
    jpeg_quality: int = 90  # camera frames as JPEG (1..100, smaller .rrd); 0 logs raw pixels
    video_backend: str = "pyav"  # LeRobot video decoder: pyav or torchcodec
    image_plane_distance: float = 0.05  # frustum depth drawn in the 3D view (metres)
    robot_variant: str = "primitives"  # arm geometry in the 3D view: primitives, meshes or meshes_full


# ----------------------------------------------------------------------------------------- helpers
def _table_box() -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Centre and half extents of the `table` geom of the sim's tabletop.xml (kept in sync with the sim)."""
    try:
        from lerobot_env_vst_vla.scene import SCENE_XML

        for geom in ET.parse(SCENE_XML).getroot().iter("geom"):
            if geom.get("name") == "table":
                pos = tuple(float(v) for v in geom.get("pos").split())
                size = tuple(float(v) for v in geom.get("size").split())
                if len(pos) == 3 and len(size) == 3:
                    return pos, size
    except Exception:  # the sim package is optional for viewing recordings
        log.debug("could not read the table from tabletop.xml", exc_info=True)
    return _TABLE_CENTER, _TABLE_HALF_SIZE


def _object_colors() -> dict[str, tuple[float, float, float]]:
    try:
        from lerobot_env_vst_vla.scene import COLORS

        return dict(COLORS)
    except Exception:
        return {}


_COLORS = _object_colors()


def _rgb255(name: str) -> tuple[int, int, int]:
    rgb = _COLORS.get(name, (0.7, 0.7, 0.7))
    return tuple(int(round(255 * c)) for c in rgb)


def _scene_dict(scene_gt: Any) -> dict:
    if isinstance(scene_gt, dict):
        return scene_gt
    if hasattr(scene_gt, "to_dict"):
        return scene_gt.to_dict()
    raise TypeError(f"scene ground truth must be a dict or a SceneGT, got {type(scene_gt).__name__}")


def _resolve_target(rec_or_prefix, prefix: str | None, recording: rr.RecordingStream | None):
    if isinstance(rec_or_prefix, rr.RecordingStream):
        return rec_or_prefix, (prefix or WORLD).rstrip("/")
    if isinstance(rec_or_prefix, str):
        return recording, rec_or_prefix.rstrip("/") or WORLD
    if rec_or_prefix is None:
        return recording, (prefix or WORLD).rstrip("/")
    raise TypeError(f"expected a rerun.RecordingStream, an entity path prefix or None, got {rec_or_prefix!r}")


def log_scene_ground_truth(
    rec_or_prefix: rr.RecordingStream | str | None,
    scene_gt: dict | Any,
    *,
    prefix: str | None = None,
    recording: rr.RecordingStream | None = None,
    static_cameras: Sequence[str] = ("front",),
    gripper_trail: np.ndarray | Sequence[Sequence[float]] | None = None,
    images: dict[str, np.ndarray] | None = None,
    jpeg_quality: int = 0,
    log_static: bool = True,
    image_plane_distance: float = 0.05,
    arm: Any = None,
) -> None:
    """Log one frame of scene ground truth (a `SceneGT` or its `to_dict()`) at the current time.

    `rec_or_prefix` is a RecordingStream (entities go under `prefix`, default "world") or an entity
    path prefix used with `recording` (default: the global/thread-local recording). The caller sets
    the time (`rec.set_time(...)`) before calling. Logged under the prefix:

    - `table`, the world's view coordinates (z up) and the cameras in `static_cameras`, all static,
      when `log_static` (once per episode is enough: static data never changes with time);
    - `objects`: one `Boxes3D` instance per object (so objects of a previous episode disappear);
    - `gripper/position`, and `gripper/path` when `gripper_trail` (N×3 past positions) is given;
    - `cameras/<cam>`: `Transform3D` + `Pinhole` of every other camera, at the current time;
    - `cameras/<cam>/image` for every `images[cam]` (HxWx3 uint8), JPEG-compressed if `jpeg_quality`.
      If an image's size differs from the stored camera size the intrinsics are scaled to match;
    - `arm/<body>` with an `arm` (`vst_vla.viz.arm.ArmLogger`): the links posed from the stored joint
      angles, their geometry (static) when `log_static`.
    """
    rec, root = _resolve_target(rec_or_prefix, prefix, recording)
    gt = _scene_dict(scene_gt)
    kw = {"recording": rec}

    if log_static:
        rr.log(root, rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True, **kw)
        center, half = _table_box()
        rr.log(f"{root}/table", rr.Boxes3D(centers=[center], half_sizes=[half], colors=[_TABLE_RGB],
                                             fill_mode="solid", labels=["table"], show_labels=False),
               static=True, **kw)

    objects = gt.get("objects", [])
    if objects:
        rr.log(f"{root}/objects", rr.Boxes3D(
            centers=[o["position"] for o in objects],
            half_sizes=[[s / 2 for s in o["size"]] for o in objects],
            quaternions=[rr.Quaternion(xyzw=[*o["quaternion"][1:], o["quaternion"][0]]) for o in objects],
            colors=[_rgb255(o.get("color", "")) for o in objects],
            labels=[o.get("label", o.get("name", "")) for o in objects],
            fill_mode="solid"), **kw)
    else:
        rr.log(f"{root}/objects", rr.Clear(recursive=False), **kw)

    joints = gt.get("joint_positions")
    if arm is not None:
        if log_static:
            arm.log_geometry(rec, root)
        if joints:
            arm.log_joints(rec, joints, root)

    grip = gt.get("gripper_position")
    if grip is not None:
        rr.log(f"{root}/gripper/position", rr.Points3D([grip], radii=[0.006], colors=[_GRIPPER_RGB]), **kw)
    if gripper_trail is not None and len(gripper_trail) > 0:
        rr.log(f"{root}/gripper/path", rr.LineStrips3D([np.asarray(gripper_trail, dtype=np.float32)],
                                                        radii=[0.002], colors=[_GRIPPER_RGB]), **kw)

    images = images or {}
    for name, cam in gt.get("cameras", {}).items():
        T = np.asarray(cam["world_from_camera"], dtype=np.float64)
        K = np.asarray(cam["intrinsics"], dtype=np.float64)
        width, height = int(cam["width"]), int(cam["height"])
        img = images.get(name)
        if img is not None and (img.shape[1], img.shape[0]) != (width, height):
            sx, sy = img.shape[1] / width, img.shape[0] / height
            K = np.diag([sx, sy, 1.0]) @ K
            width, height = img.shape[1], img.shape[0]
        static = name in static_cameras
        path = f"{root}/cameras/{name}"
        if log_static or not static:
            rr.log(path, rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3]),
                   rr.Pinhole(image_from_camera=K, resolution=[width, height], camera_xyz=rr.ViewCoordinates.RDF,
                              image_plane_distance=image_plane_distance), static=static, **kw)
        if img is not None:
            entity = rr.Image(np.ascontiguousarray(img))
            rr.log(f"{path}/image", entity.compress(jpeg_quality=jpeg_quality) if jpeg_quality else entity, **kw)


# ----------------------------------------------------------------------------------------- episode
@dataclass
class _EpisodeData:
    instruction: str
    meta: dict
    fps: float
    timestamps: np.ndarray  # (T,) seconds from the episode start
    state: np.ndarray | None  # (T, D)
    state_names: list[str]
    action: np.ndarray | None
    action_names: list[str]
    images: dict[str, np.ndarray]  # camera short name -> (T, H, W, 3) uint8
    frames: list[dict]  # scene ground truth per frame


def _feature_names(ds, key: str, dim: int) -> list[str]:
    names = ds.meta.features.get(key, {}).get("names")
    if isinstance(names, dict):  # older datasets: {"motors": [...]}
        names = next(iter(names.values()), None)
    if not names or len(names) != dim:
        names = [f"{i}" for i in range(dim)]
    return [str(n).removesuffix(".pos") for n in names]


def _load_episode(cfg: VizConfig) -> _EpisodeData:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from vst_vla.collect import load_scene_ground_truth

    root = Path(cfg.root)
    gt = load_scene_ground_truth(root, cfg.episode)
    ds = LeRobotDataset(cfg.repo_id, root=root, episodes=[cfg.episode], video_backend=cfg.video_backend)
    hf = ds.hf_dataset.with_format("numpy")
    ep_col = np.asarray(hf["episode_index"])
    rows = np.flatnonzero(ep_col == cfg.episode)
    if len(rows) == 0:
        raise ValueError(f"{root}: episode {cfg.episode} has no frames (episodes: {sorted(set(ep_col.tolist()))})")
    order = rows[np.argsort(np.asarray(hf["frame_index"])[rows], kind="stable")]
    timestamps = np.asarray(hf["timestamp"], dtype=np.float64)[order]

    def column(key: str) -> tuple[np.ndarray | None, list[str]]:
        if key not in hf.column_names:
            return None, []
        values = np.stack(np.asarray(hf[key])[order]).astype(np.float64)
        return values, _feature_names(ds, key, values.shape[1])

    state, state_names = column("observation.state")
    action, action_names = column("action")
    images = {key.rsplit(".", 1)[-1]: _decode_camera(ds, key, cfg.episode, timestamps, order, cfg.video_backend)
              for key in ds.meta.camera_keys}

    frames = gt["frames"]
    n = len(timestamps)
    if len(frames) != n:
        log.warning("episode %d: %d dataset frames but %d ground-truth frames; showing the first %d",
                    cfg.episode, n, len(frames), min(n, len(frames)))
    return _EpisodeData(instruction=gt.get("instruction", ""),
                        meta={k: gt.get(k) for k in ("task_family", "seed", "success", "episode_index")},
                        fps=float(ds.fps), timestamps=timestamps, state=state, state_names=state_names,
                        action=action, action_names=action_names, images=images, frames=frames)


def _decode_camera(ds, key: str, episode: int, timestamps: np.ndarray, order: np.ndarray,
                   backend: str = "pyav") -> np.ndarray:
    """All frames of one camera of the episode as (T, H, W, 3) uint8."""
    if key in ds.meta.video_keys:
        try:  # one pass over the episode's segment of the video file: ~40x faster than per-frame ds[i]
            from lerobot.datasets.video_utils import decode_video_frames

            ep = ds.meta.episodes[episode]
            offset = float(ep[f"videos/{key}/from_timestamp"])
            path = Path(ds.root) / ds.meta.get_video_file_path(episode, key)
            frames = decode_video_frames(path, (timestamps + offset).tolist(), ds.tolerance_s, backend,
                                         return_uint8=True)
            return frames.permute(0, 2, 3, 1).contiguous().numpy()
        except Exception:
            log.warning("batched decoding of %s failed; decoding frame by frame", key, exc_info=True)
    out = []
    for i in range(len(order)):
        item = ds[int(i)]
        img = item[key]
        arr = img.numpy() if hasattr(img, "numpy") else np.asarray(img)
        if arr.dtype != np.uint8:
            arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
        out.append(np.transpose(arr, (1, 2, 0)) if arr.shape[0] in (1, 3) and arr.ndim == 3 else arr)
    return np.stack(out)


def _blueprint(data: _EpisodeData) -> rrb.Blueprint:
    extra = [] if data.action is None or set(data.action_names) <= set(data.state_names) else ["action"]
    return episode_blueprint(list(data.images), data.state_names or data.action_names, "frame", extra_plots=extra)


def _log_episode(rec: rr.RecordingStream, data: _EpisodeData, cfg: VizConfig, arm=None) -> None:
    meta = data.meta
    rec.log("instruction", rr.TextDocument(
        f"## {data.instruction}\n\n"
        f"- task family: `{meta.get('task_family')}`\n- seed: `{meta.get('seed')}`\n"
        f"- expert success: `{meta.get('success')}`\n- episode: `{cfg.episode}` of `{cfg.root}`",
        media_type=rr.MediaType.MARKDOWN), static=True)

    n = min(len(data.timestamps), len(data.frames))
    frame_col = rr.TimeColumn("frame", sequence=np.arange(n))
    time_col = rr.TimeColumn("time", duration=data.timestamps[:n])
    log_joint_series(rec, sorted(set(data.state_names) | set(data.action_names)), "state", "expert action")
    for group, values, names in (("state", data.state, data.state_names), ("action", data.action, data.action_names)):
        if values is None:
            continue
        for j, name in enumerate(names):
            path = f"{group}/{rr.escape_entity_path_part(name)}"
            rec.send_columns(path, indexes=[frame_col, time_col], columns=rr.Scalars.columns(scalars=values[:n, j]))

    trail = np.asarray([f["gripper_position"] for f in data.frames[:n]], dtype=np.float32)
    for i in range(n):
        rec.set_time("frame", sequence=i)
        rec.set_time("time", duration=float(data.timestamps[i]))
        log_scene_ground_truth(rec, data.frames[i], gripper_trail=trail[: i + 1],
                               images={c: v[i] for c, v in data.images.items() if i < len(v)},
                               jpeg_quality=cfg.jpeg_quality, log_static=(i == 0),
                               image_plane_distance=cfg.image_plane_distance, arm=arm)
    if n:
        log_outcome(rec, {"success": bool(meta.get("success")), "frames": n,
                          "task family": meta.get("task_family"), "seed": meta.get("seed")}, title="expert episode")


def _output_path(cfg: VizConfig) -> Path:
    out = cfg.output or DEFAULT_OUTPUT
    return Path(out.replace("{episode}", str(cfg.episode)))


def _spawn_viewer(path: Path) -> None:
    """Open the native Rerun viewer on the written file, detached (the file holds the blueprint too).

    Opening the finished file rather than teeing the log stream to a viewer means a viewer that cannot
    start (no display, no binary) never costs the .rrd or fails the call.
    """
    local = Path(sys.executable).with_name("rerun")  # ships with rerun-sdk, also when the venv is not on PATH
    exe = str(local) if local.is_file() else shutil.which("rerun")
    if exe is None:
        log.warning("no Rerun viewer executable found; open %s with `rerun %s`", path, path)
        return
    subprocess.Popen([exe, str(path)], stdin=subprocess.DEVNULL, start_new_session=True)


def visualize_episode(cfg: VizConfig) -> Path:
    """Write episode `cfg.episode` of the dataset at `cfg.root` to a .rrd file; returns its path.

    With `spawn` a native viewer opens the file; with `serve` the recording is also served to a web
    viewer (http://localhost:<web_port>) and the call blocks until Ctrl-C.
    """
    t0 = time.perf_counter()
    data = _load_episode(cfg)
    out = _output_path(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    blueprint = _blueprint(data)
    recording_id = f"{cfg.repo_id}/episode_{cfg.episode}"
    rec = rr.RecordingStream(APPLICATION_ID, recording_id=recording_id)
    rec.set_sinks(rr.FileSink(str(out)), default_blueprint=blueprint)
    rec.send_recording_name(f"{data.meta.get('task_family')} episode {cfg.episode}")
    arm = arm_logger(cfg.robot_variant)
    _log_episode(rec, data, cfg, arm)
    rec.flush()
    rec.disconnect()
    log.info("wrote %s (%d frames) in %.1fs", out, len(data.timestamps), time.perf_counter() - t0)
    print(f"rerun recording: {out}  (open with `rerun {out}`)")
    if cfg.spawn:
        _spawn_viewer(out)

    if cfg.serve:
        served = rr.RecordingStream(APPLICATION_ID, recording_id=recording_id)
        uri = served.serve_grpc(grpc_port=cfg.grpc_port, default_blueprint=blueprint)
        rr.serve_web_viewer(web_port=cfg.web_port, open_browser=False, connect_to=uri)
        _log_episode(served, data, cfg, arm)
        print(f"serving the web viewer on http://localhost:{cfg.web_port} (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            served.disconnect()
    return out
