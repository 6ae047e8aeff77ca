"""Training data for policies: a LeRobotDataset with its videos decoded once, into a frame cache.

LeRobot decodes video frames per sample (seek to a keyframe, decode forward), which on a 2-core CPU
costs more than a training step of the tiny policy. Here every episode's video is decoded once, in
order, at the policy's image size, into `<dataset>/cache/frames_<H>x<W>.npy` (uint8, memory-mapped),
so the loader only slices arrays. Samples have exactly the keys and shapes LeRobot's own dataset
gives a policy with `action_delta_indices = range(chunk)`: cameras (3, H, W) float in [0, 1],
`observation.state`, `action` (T, A) padded past the episode's end with `action_is_pad`, and `task`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F  # noqa: N812

log = logging.getLogger(__name__)

CACHE_DIR = "cache"


@dataclass
class EpisodeTable:
    """The low-dimensional columns of every frame, in dataset order."""

    episode_index: np.ndarray  # (N,)
    frame_index: np.ndarray  # (N,)
    task_index: np.ndarray  # (N,)
    state: np.ndarray  # (N, S) float32
    action: np.ndarray  # (N, A) float32
    tasks: list[str]  # task_index -> instruction

    @property
    def episodes(self) -> np.ndarray:
        return np.unique(self.episode_index)


def read_episode_table(root: str | Path) -> EpisodeTable:
    root = Path(root)
    files = sorted((root / "data").glob("**/*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root}: no data/**/*.parquet files (not a LeRobotDataset v3 folder?)")
    cols = ("episode_index", "frame_index", "task_index", "observation.state", "action")
    parts = {c: [] for c in cols}
    for f in files:
        table = pq.read_table(f, columns=list(cols))
        for c in cols:
            parts[c].append(np.asarray(table.column(c).to_pylist()))
    data = {c: np.concatenate(v) for c, v in parts.items()}
    order = np.lexsort((data["frame_index"], data["episode_index"]))
    tasks_file = root / "meta" / "tasks.parquet"
    tasks_table = pq.read_table(tasks_file).to_pandas()
    # LeRobot v3 keeps the task string as the index and task_index as a column
    by_index = {int(i): str(t) for t, i in zip(tasks_table.index, tasks_table["task_index"], strict=True)}
    tasks = [by_index[i] for i in range(max(by_index) + 1)]
    return EpisodeTable(episode_index=data["episode_index"][order].astype(np.int64),
                        frame_index=data["frame_index"][order].astype(np.int64),
                        task_index=data["task_index"][order].astype(np.int64),
                        state=data["observation.state"][order].astype(np.float32),
                        action=data["action"][order].astype(np.float32), tasks=tasks)


def frame_cache_path(root: str | Path, size: tuple[int, int]) -> Path:
    return Path(root) / CACHE_DIR / f"frames_{size[0]}x{size[1]}.npy"


def build_frame_cache(root: str | Path, camera_keys: list[str], size: tuple[int, int]) -> np.ndarray:
    """(N, cameras, 3, H, W) uint8 of every frame, decoded once per episode and resized; memory-mapped.

    Written to a temporary file and renamed, so an interrupted build never leaves a half cache.
    """
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
    from lerobot.datasets.video_utils import decode_video_frames

    root = Path(root)
    path = frame_cache_path(root, size)
    meta = LeRobotDatasetMetadata("local/cache", root=root)
    n_frames = int(meta.total_frames)
    if path.is_file():
        frames = np.load(path, mmap_mode="r")
        if frames.shape == (n_frames, len(camera_keys), 3, *size):
            return frames
        log.warning("frame cache %s has shape %s, the dataset needs %s: rebuilding", path, frames.shape,
                    (n_frames, len(camera_keys), 3, *size))
    missing = [k for k in camera_keys if k not in meta.video_keys]
    if missing:
        raise KeyError(f"{root}: no video for {missing}; its video keys are {meta.video_keys}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n_frames, len(camera_keys), 3, *size))
    episodes = meta.episodes
    for ep_idx in range(meta.total_episodes):
        ep = episodes[ep_idx]
        start, stop = int(ep["dataset_from_index"]), int(ep["dataset_to_index"])
        for c, key in enumerate(camera_keys):
            t0 = float(ep[f"videos/{key}/from_timestamp"])
            stamps = [t0 + k / meta.fps for k in range(stop - start)]
            video = decode_video_frames(root / meta.get_video_file_path(ep_idx, key), stamps,
                                        tolerance_s=0.5 / meta.fps, return_uint8=True)  # (T, 3, h, w)
            if tuple(video.shape[-2:]) != tuple(size):
                video = F.interpolate(video.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
                video = video.round().clamp(0, 255).to(torch.uint8)
            out[start:stop, c] = video.numpy()
        if ep_idx % 50 == 0:
            log.info("frame cache: decoded %d/%d episodes", ep_idx + 1, meta.total_episodes)
    out.flush()
    del out
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


class ChunkDataset(torch.utils.data.Dataset):
    """Frames of the given episodes as LeRobot policy samples with an action chunk of `chunk` steps."""

    def __init__(self, table: EpisodeTable, frames: np.ndarray, camera_keys: list[str], chunk: int,
                 episodes: np.ndarray | list[int]):
        self.table, self.frames, self.camera_keys, self.chunk = table, frames, list(camera_keys), chunk
        keep = np.isin(table.episode_index, np.asarray(episodes))
        self.indices = np.flatnonzero(keep)
        # first frame and (exclusive) end of each frame's episode: chunks never cross into the next episode
        starts = np.zeros(len(table.episode_index), dtype=np.int64)
        ends = np.zeros_like(starts)
        boundaries = np.flatnonzero(np.diff(table.episode_index)) + 1
        for lo, hi in zip(np.r_[0, boundaries], np.r_[boundaries, len(ends)], strict=True):
            starts[lo:hi], ends[lo:hi] = lo, hi
        self.episode_start, self.episode_end = starts, ends

    def __len__(self) -> int:
        return len(self.indices)

    def frame_offsets(self) -> np.ndarray:
        """Each sample's frame number within its episode."""
        return self.indices - self.episode_start[self.indices]

    def __getitem__(self, i: int) -> dict:
        idx = int(self.indices[i])
        steps = idx + np.arange(self.chunk)
        is_pad = steps >= self.episode_end[idx]
        steps = np.minimum(steps, self.episode_end[idx] - 1)  # LeRobot repeats the last action as padding
        sample = {key: torch.from_numpy(np.array(self.frames[idx, c])).float().div_(255)
                  for c, key in enumerate(self.camera_keys)}
        sample["observation.state"] = torch.from_numpy(self.table.state[idx])
        sample["action"] = torch.from_numpy(self.table.action[steps])
        sample["action_is_pad"] = torch.from_numpy(is_pad)
        sample["task"] = self.table.tasks[int(self.table.task_index[idx])]
        return sample


def split_episodes(table: EpisodeTable, heldout_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train / held-out episodes: a seeded random `heldout_fraction` of all episodes held out."""
    rng = np.random.default_rng(seed)
    episodes = table.episodes
    if heldout_fraction <= 0:
        return episodes, episodes[:0]
    n_held = max(1, int(round(len(episodes) * heldout_fraction)))
    held = np.sort(rng.choice(episodes, size=n_held, replace=False))
    train = np.setdiff1d(episodes, held)
    if len(train) == 0:
        raise ValueError(f"heldout_fraction={heldout_fraction} leaves no training episode of {len(episodes)}")
    return train, held
