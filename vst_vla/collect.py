"""`vst-vla collect`: scripted-expert episodes of the sim tasks → a LeRobotDataset v3 on local disk.

Frames carry `observation.state` and `action` in so101_follower units (keys `<motor>.pos`), one video
per camera and the instruction as the task string, so the dataset trains any LeRobot policy and the
policy drives the real arm. Next to LeRobot's files, `meta/vst_scene/episode_XXXXXX.json.gz` keeps the
exact scene ground truth of every frame (object poses and sizes, both cameras' intrinsics and
extrinsics), which the spatial data engine turns into questions about the same episodes.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import av
import datasets
import numpy as np
from lerobot.configs import RGBEncoderConfig
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from tqdm import tqdm

from lerobot_env_vst_vla import FAMILIES, ScriptedExpert, SpatialTabletopEnv
from lerobot_env_vst_vla.env import ACTION_NAMES
from lerobot_env_vst_vla.robot import MOTOR_KEYS

from .atomic import write_json_gz_atomic
from .policy.stats import write_global_stats
from .seeds import COLLECT_SEED_BASE, episode_seed

log = logging.getLogger(__name__)
SCENE_DIR = Path("meta") / "vst_scene"
# LeRobot's default libsvtav1 preset is 12, which SVT-AV1 3.x runs as 10 (and says so on stderr):
# ask for what actually runs.
SVT_PRESET = 10


def quiet_video_encoding() -> None:
    """Keep LeRobot's video writes from flooding stderr, so a collect run prints progress and results.

    - SVT-AV1 prints its banner, its settings and warnings such as "Failed to set thread priority"
      (a nice level it may not take in a container) itself, not through libav; its `SVT_LOG`
      environment variable (1 = errors only; 2 warnings, 3 info, the default) is read when an encoder
      starts. A `SVT_LOG` set by the user wins.
    - LeRobot hands libav's logging back to FFmpeg's own printer after each encode, whose default
      level prints INFO lines such as "[mp4 @ …] Starting second pass" (episode videos concatenated
      with movflags=faststart): warnings and errors only.
    - `datasets` draws a "Map" progress bar for every episode LeRobot saves: off (ours stays).
    """
    os.environ.setdefault("SVT_LOG", "1")
    av.logging.set_libav_level(av.logging.WARNING)
    datasets.disable_progress_bars()


@dataclass
class CollectConfig:
    root: str = "outputs/datasets/vst_tabletop"
    repo_id: str = "local/vst_tabletop"
    tasks: list[str] = field(default_factory=lambda: list(FAMILIES))
    episodes_per_task: int = 2
    seed: int = COLLECT_SEED_BASE
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    image_size: int = 224
    fps: int = 30
    episode_length: int = 300
    action_space: str = "joint"
    # DART-style noise (Laskey et al. 2017): while the expert approaches its target, a smooth random
    # offset of this std (degrees) is added to the arm joints of the *executed* action; the recorded
    # action stays the expert's, so demonstrations also show how to get back on course. 0: clean demos.
    approach_noise_deg: float = 0.0
    approach_noise_steps: float = 10.0  # correlation time of the offset (control steps)
    descent_noise: float = 0.0  # the offset's share during the descent to the grasp, fading to 0 at the bottom
    # keep only episodes the expert solved; failed ones are discarded and another seed is tried
    only_successful: bool = True
    resume: bool = False  # append to an existing dataset at root, skipping episodes already there
    overwrite: bool = False  # delete an existing dataset at root first


def dataset_features(cfg: CollectConfig) -> dict:
    if cfg.action_space not in ACTION_NAMES:
        raise ValueError(f"unknown action_space {cfg.action_space!r}; known: {list(ACTION_NAMES)}")
    action_names = ACTION_NAMES[cfg.action_space]
    features = {
        "observation.state": {"dtype": "float32", "shape": (6,), "names": list(MOTOR_KEYS)},
        "action": {"dtype": "float32", "shape": (len(action_names),), "names": action_names},
    }
    for cam in cfg.cameras:
        features[f"observation.images.{cam}"] = {
            "dtype": "video", "shape": (cfg.image_size, cfg.image_size, 3), "names": ["height", "width", "channels"]}
    return features


def load_scene_ground_truth(root: str | Path, episode_index: int) -> dict:
    """The per-frame scene ground truth stored with episode `episode_index` of a collected dataset."""
    path = Path(root) / SCENE_DIR / f"episode_{episode_index:06d}.json.gz"
    if not path.is_file():
        raise FileNotFoundError(f"no scene ground truth for episode {episode_index}: {path} is missing "
                                "(was the dataset recorded with `vst-vla collect`?)")
    with gzip.open(path, "rt") as f:
        return json.load(f)


def _open_dataset(cfg: CollectConfig) -> tuple[LeRobotDataset, dict[str, tuple[int, int]]]:
    """The dataset to append to and, per family, (episodes kept, next attempt) already on disk."""
    root = Path(cfg.root)
    done: dict[str, tuple[int, int]] = {}
    if root.exists() and any(root.iterdir()):
        if cfg.overwrite:
            shutil.rmtree(root)
        elif cfg.resume:
            scene_files = sorted((root / SCENE_DIR).glob("episode_*.json.gz"))
            for path in scene_files:
                with gzip.open(path, "rt") as f:
                    meta = json.load(f)
                kept, attempt = done.get(meta["task_family"], (0, 0))
                done[meta["task_family"]] = (kept + 1, max(attempt, meta["attempt"] + 1))
            ds = LeRobotDataset.resume(cfg.repo_id, root=root, rgb_encoder=RGBEncoderConfig(preset=SVT_PRESET))
            if ds.meta.total_episodes != len(scene_files):
                raise RuntimeError(f"{root}: LeRobot episodes and {SCENE_DIR} files disagree; "
                                   "re-collect with overwrite=true")
            return ds, done
        else:
            raise FileExistsError(f"{root} already holds data: pass resume=true to append or overwrite=true to replace it")
    ds = LeRobotDataset.create(cfg.repo_id, fps=cfg.fps, features=dataset_features(cfg), root=root,
                               robot_type="so101_follower", use_videos=True,
                               rgb_encoder=RGBEncoderConfig(preset=SVT_PRESET))
    (root / SCENE_DIR).mkdir(parents=True, exist_ok=True)
    return ds, done


def collect(cfg: CollectConfig) -> Path:
    unknown = [t for t in cfg.tasks if t not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known task families: {sorted(FAMILIES)}")
    quiet_video_encoding()
    ds, done = _open_dataset(cfg)
    root = Path(cfg.root)
    stats = {}
    # SIGTERM (a job scheduler, `kill`) would skip `finally` and leave LeRobot's parquet files without
    # their footers: turn it into KeyboardInterrupt so the episodes saved so far are finalised and kept.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        for family in cfg.tasks:
            env = SpatialTabletopEnv(task=family, cameras=tuple(cfg.cameras), observation_width=cfg.image_size,
                                     observation_height=cfg.image_size, fps=cfg.fps,
                                     episode_length=cfg.episode_length, action_space=cfg.action_space)
            kept, attempt = done.get(family, (0, 0))
            bar = tqdm(total=cfg.episodes_per_task, initial=kept, desc=f"collect {family}")
            while kept < cfg.episodes_per_task:
                if attempt > 20 * cfg.episodes_per_task + 20:
                    raise RuntimeError(f"{family}: the expert failed too often ({attempt} attempts)")
                seed = episode_seed(cfg.seed, family, attempt)
                success, frames = _record_episode(env, ds, seed, cfg.approach_noise_deg, cfg.approach_noise_steps,
                                                  cfg.descent_noise)
                if success or not cfg.only_successful:
                    index = ds.meta.total_episodes
                    ds.save_episode()
                    write_json_gz_atomic(root / SCENE_DIR / f"episode_{index:06d}.json.gz", {
                        "episode_index": index, "task_family": family, "seed": seed, "attempt": attempt,
                        "instruction": env.task_description, "success": success, "fps": cfg.fps,
                        "episode": {"target": env.episode.target, "place_xy": env.episode.place_xy,
                                    "details": env.episode.details},
                        "frames": frames})
                    kept += 1
                    bar.update(1)
                else:
                    ds.clear_episode_buffer()
                attempt += 1
            bar.close()
            stats[family] = {"kept": kept, "attempts": attempt}
            env.close()
    finally:
        ds.finalize()
        if ds.meta.total_episodes:
            # LeRobot averages per-episode quantiles, far too narrow for our data: store exact global ones
            write_global_stats(root)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    log.info("collected %s into %s", stats, root)
    print(json.dumps({"dataset": str(root), "episodes": ds.meta.total_episodes, "per_task": stats}))
    return root


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class ApproachNoise:
    """An Ornstein-Uhlenbeck offset on the five arm joints (degrees), on while the expert approaches (stage 0,
    until it is above its target) and, with `descent_noise`, scaled down to 0 as it descends to the grasp, so
    the demonstrations show corrections where a policy's descent goes astray and grasps stay precise."""

    def __init__(self, std_deg: float, steps: float, seed: int):
        self.std, self.decay = std_deg, float(np.exp(-1.0 / max(steps, 1.0)))
        self.rng = np.random.default_rng([seed, 7])
        self.offset = np.zeros(5)

    def __call__(self, action: np.ndarray, approaching: bool | float) -> np.ndarray:
        """`approaching`: the share of the offset to apply (True = 1, False = 0: the offset restarts)."""
        if self.std <= 0:
            return action
        kick = self.rng.normal(0.0, self.std * np.sqrt(1 - self.decay**2), 5)
        scale = float(approaching)
        self.offset = self.decay * self.offset + kick if scale > 0 else np.zeros(5)
        out = action.copy()
        out[:5] += (scale * self.offset).astype(out.dtype)
        return out


def noise_share(expert: ScriptedExpert, descent_noise: float) -> float:
    """1 while the expert approaches; during the descent `descent_noise`, falling linearly to 0 at the grasp."""
    if expert.stage == 0:
        return 1.0
    if expert.stage == 1 and descent_noise > 0:
        top, bottom = expert.plan[0].xyz[2], expert.plan[1].xyz[2]
        return descent_noise * float(np.clip((expert.cmd[2] - bottom) / max(top - bottom, 1e-6), 0.0, 1.0))
    return 0.0


def _record_episode(env: SpatialTabletopEnv, ds: LeRobotDataset, seed: int, noise_deg: float = 0.0,
                    noise_steps: float = 10.0, descent_noise: float = 0.0) -> tuple[bool, list[dict]]:
    obs, _ = env.reset(seed=seed)
    expert = ScriptedExpert(env)
    noise = ApproachNoise(noise_deg, noise_steps, seed)
    frames, success = [], False
    while True:
        action = expert.act()
        frames.append(env.ground_truth().to_dict())
        frame = {"observation.state": obs["agent_pos"].astype(np.float32), "action": action,
                 "task": env.task_description}
        for cam, img in obs["pixels"].items():
            frame[f"observation.images.{cam}"] = img
        ds.add_frame(frame)  # the expert's action is the label, also when a perturbed one is executed
        obs, _, terminated, truncated, info = env.step(noise(action, approaching=noise_share(expert, descent_noise)))
        success = info["is_success"]
        if terminated or truncated:
            return success, frames
