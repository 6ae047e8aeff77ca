"""Scenes from collected episodes (`vst-vla collect`): real expert rollouts, video frames, exact ground truth.

A scene is one episode at a random frame t: `front` / `wrist` are that frame's camera images (decoded
from the dataset's videos), `wrist2` the wrist image at another frame (the arm moved in between), the
`pick_place` clip is 7 front frames spread over the episode (the expert moves its target object),
and the `tour` clip's wrist frames are the wrist camera over the episode (no visits: route order is
not asked). Depth and segmentation are not stored with episodes: the sim is put back into the
frame's state (objects, arm joints, front camera pose) and rendered, which matches the video's
geometry exactly. Every 5th episode is held out for the test split (with fewer than 5 episodes the
splits share episodes, with a warning).
"""

from __future__ import annotations

import sys
from functools import lru_cache

import mujoco
import numpy as np

from lerobot_env_vst_vla import SpatialTabletopEnv
from lerobot_env_vst_vla.robot import JOINT_NAMES
from lerobot_env_vst_vla.scene import ObjectSpec, SceneOptions
from lerobot_env_vst_vla.tasks.base import Episode
from vst_vla.collect import load_scene_ground_truth

from .context import Balancer, Camera, Clip, Obj, SceneContext, View

CLIP_FRAMES = 7
TEST_EVERY = 5  # episodes k with k % TEST_EVERY == TEST_EVERY - 1 form the test split's pool


class EpisodeScenes:
    max_idle_scenes = 60  # few episodes: a skill they cannot support (e.g. no place task) fails sooner
    # No gripper tour in expert episodes (route order), and the wrist camera sees the objects from the
    # first frame on (appearance order is then never well-posed).
    unsupported_skills = frozenset({"route_order", "appearance_order"})

    def __init__(self, root: str, repo_id: str = "local/vst_tabletop"):
        from lerobot.datasets.lerobot_dataset import LeRobotDataset  # heavy: only in this mode

        self.root = root
        self.ds = LeRobotDataset(repo_id, root=root)
        n = self.ds.meta.total_episodes
        if n == 0:
            raise ValueError(f"{root}: the dataset has no episodes")
        test = [k for k in range(n) if k % TEST_EVERY == TEST_EVERY - 1]
        if not test:
            print(f"spatial-data: {root} has {n} < {TEST_EVERY} episodes, so the test split reuses the train "
                  "episodes (other frames and questions, not held out)", file=sys.stderr)
        self.pools = {"test": test or list(range(n)), "train": [k for k in range(n) if k not in test] or list(range(n))}
        shape = self.ds.meta.features["observation.images.front"]["shape"]
        self.height, self.width = int(shape[0]), int(shape[1])
        self.env = SpatialTabletopEnv(task="stack", obs_type="agent_pos", observation_width=self.width,
                                      observation_height=self.height)
        self.env.reset(seed=0)
        self.qadr = np.array([self.env.model.joint(j).qposadr[0] for j in JOINT_NAMES])
        self.gt = lru_cache(maxsize=8)(lambda k: load_scene_ground_truth(root, k))

    def close(self) -> None:
        self.env.close()

    def context(self, seed: int, balance: Balancer, scene_id: str | None = None, split: str = "train") -> SceneContext:
        rng = np.random.default_rng([seed, 11])
        pool = self.pools[split]
        episode = pool[seed % len(pool)]
        gt = self.gt(episode)
        n = len(gt["frames"])
        t, t2 = (int(x) for x in rng.choice(n, 2, replace=False))
        provider = _EpisodeScene(self, episode, gt, t, t2)
        meta = {"source": "episodes", "root": str(self.root), "episode": episode, "frame": t,
                "family": gt["task_family"], "instruction": gt["instruction"]}
        return SceneContext(scene_id or f"e{episode}f{t}", provider, balance, meta)

    # ---------------------------------------------------------------- restoring a frame in the sim
    def arrange(self, objects: list[dict]) -> None:
        """Put the episode's objects into the env (once per scene); returns nothing, sets env.episode."""
        env = self.env
        specs = [ObjectSpec(o["shape"], o["color"], o["size_class"], (0.0, 0.0)) for o in objects]
        env.scene.arrange(env.data, specs, SceneOptions())
        env.episode = Episode(specs, instruction="", target=0)

    def pose(self, frame: dict) -> None:
        """Set objects, arm and front camera to a recorded frame's ground truth."""
        env, m, d = self.env, self.env.model, self.env.data
        for spec, o in zip(env.episode.objects, frame["objects"], strict=True):
            adr = m.joint(spec.name).qposadr[0]
            pos, quat = np.asarray(o["position"]), np.asarray(o["quaternion"])
            if o["shape"] == "bowl":  # ground truth gives the bowl's middle, its body frame is at its base
                rot = np.zeros(9)
                mujoco.mju_quat2Mat(rot, quat)
                pos = pos - rot.reshape(3, 3) @ np.array([0.0, 0.0, o["size"][2] / 2])
            d.qpos[adr : adr + 3], d.qpos[adr + 3 : adr + 7] = pos, quat
        d.qpos[self.qadr] = frame["joint_positions"]
        cam = np.asarray(frame["cameras"]["front"]["world_from_camera"])
        cid = m.camera("front").id
        m.cam_pos[cid] = cam[:3, 3]
        mujoco.mju_mat2Quat(m.cam_quat[cid], (cam[:3, :3] @ np.diag([1.0, -1.0, -1.0])).ravel())
        mujoco.mj_forward(m, d)

    def rgb(self, episode: int, t: int, camera: str) -> np.ndarray:
        start = int(self.ds.meta.episodes[episode]["dataset_from_index"])
        chw = self.ds[start + t][f"observation.images.{camera}"]
        return (chw.permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


class _EpisodeScene:
    def __init__(self, scenes: EpisodeScenes, episode: int, gt: dict, t: int, t2: int):
        self.s, self.episode, self.gt, self.t, self.t2 = scenes, episode, gt, t, t2
        self.frames = gt["frames"]
        scenes.arrange(self.frames[t]["objects"])

    def objects(self) -> list[Obj]:
        return [Obj.from_gt(o) for o in self.frames[self.t]["objects"]]

    def _view(self, t: int, camera: str, key: str, depth: bool, seg: bool) -> View:
        frame = self.frames[t]
        if depth or seg:
            self.s.pose(frame)
        env = self.s.env
        return View(key=key, camera=Camera.from_gt(frame["cameras"][camera]), rgb=self.s.rgb(self.episode, t, camera),
                    objects=[Obj.from_gt(o) for o in frame["objects"]],
                    depth=env.render_camera(camera, "depth") if depth else None,
                    seg=env.render_camera(camera, "segmentation") if seg else None)

    def view(self, name: str) -> View:
        if name == "front":
            return self._view(self.t, "front", "front", True, True)
        if name == "wrist":
            return self._view(self.t, "wrist", "wrist", True, True)
        if name == "wrist2":
            return self._view(self.t2, "wrist", "wrist2", False, False)
        raise KeyError(f"unknown view {name!r}")

    def clip(self, name: str) -> Clip | None:
        ts = np.linspace(0, len(self.frames) - 1, CLIP_FRAMES).round().astype(int).tolist()
        if name == "pick_place":
            front = [self._view(t, "front", f"clip_front{i}", False, i in (0, len(ts) - 1)) for i, t in enumerate(ts)]
            return Clip(front, [], {"moved": int(self.gt["episode"]["target"]), "frames": ts})
        if name == "tour":
            wrist = [self._view(t, "wrist", f"clip_wrist{i}", False, True) for i, t in enumerate(ts)]
            return Clip([], wrist, {"visits": [], "stops": [], "frames": ts})
        raise KeyError(f"unknown clip {name!r}")
