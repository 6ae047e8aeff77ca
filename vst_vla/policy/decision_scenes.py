"""Decision scenes: the start of thousands of extra scenes, rendered without video, mixed into policy training.

A policy reads from its first frames where to go; a hundred demonstrations are a hundred such decisions,
and a from-scratch VLM learns no spatial rule from so few: on held-out frames its chunk's shoulder_pan
(the joint that points the arm at the target) has a correlation of ~0 with the expert's, while the lift,
elbow and gripper track it at 0.8-0.9 (`benchmarks/policy_phase_error.py`). An approach costs little to
simulate and two renders to observe, so `train-policy decision_scenes=N` adds N scenes per family: the
frames at `decision_steps` (the chunks that turn the arm) with the clean expert's next actions as labels,
drawn as `decision_fraction` of every batch. Seeds come from the decision range of
`vst_vla/seeds.py`, disjoint from demonstrations and evaluation, so no scene is ever an evaluation scene.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import torch

from vst_vla.atomic import save_npz_atomic
from vst_vla.seeds import DECISION_SEED_BASE, family_index, scene_seed

log = logging.getLogger(__name__)


def dataset_families(root: str | Path) -> list[str]:
    """The task families a collected dataset holds (from its `meta/vst_scene` files)."""
    families = set()
    for f in sorted((Path(root) / "meta" / "vst_scene").glob("episode_*.json.gz")):
        with gzip.open(f, "rt") as fh:
            families.add(json.load(fh)["task_family"])
    if not families:
        raise FileNotFoundError(f"{root}: no meta/vst_scene/episode_*.json.gz (a `vst-vla collect` dataset?); "
                                "name the families with decision_families=[...]")
    return sorted(families)


def render_decision_scenes(family: str, n: int, size: tuple[int, int], cameras: list[str], chunk: int,
                           steps: list[int], cache: Path) -> dict[str, np.ndarray]:
    """(n·len(steps)) samples: images (M, cameras, 3, H, W) uint8, state (M, 6), action (M, chunk, 6), task (M,)."""
    if cache.is_file():
        data = dict(np.load(cache))
        if len(data["task"]) == n * len(steps) and data["action"].shape[1] == chunk:
            return data
    from lerobot_env_vst_vla import SpatialTabletopEnv
    from lerobot_env_vst_vla.expert import ScriptedExpert

    family_index(family)  # an unknown family fails here, before an env is built
    cams = [c.removeprefix("observation.images.") for c in cameras]
    env = SpatialTabletopEnv(task=family, obs_type="agent_pos", cameras=tuple(cams), observation_height=size[0],
                             observation_width=size[1])
    rows: dict[str, list] = {"images": [], "state": [], "action": [], "task": []}
    horizon = max(steps) + chunk
    try:
        for s in range(n):
            obs, _ = env.reset(seed=scene_seed(DECISION_SEED_BASE, family, s))
            expert, seen, actions = ScriptedExpert(env), {}, []
            for t in range(horizon):
                if t in steps:
                    seen[t] = (np.stack([env.render_camera(c).transpose(2, 0, 1) for c in cams]), obs["agent_pos"])
                actions.append(expert.act())
                obs, _, terminated, truncated, _ = env.step(actions[-1])
                if terminated or truncated:
                    break
            actions = np.stack(actions)
            for t in steps:
                if t not in seen:
                    continue
                window = actions[np.minimum(np.arange(t, t + chunk), len(actions) - 1)]
                rows["images"].append(seen[t][0])
                rows["state"].append(np.asarray(seen[t][1], dtype=np.float32))
                rows["action"].append(window.astype(np.float32))
                rows["task"].append(env.task_description)
            if (s + 1) % 500 == 0:
                log.info("decision scenes %s: %d/%d rendered", family, s + 1, n)
    finally:
        env.close()
    data = {k: np.array(v) if k == "task" else np.stack(v) for k, v in rows.items()}
    save_npz_atomic(cache, data)
    return data


class DecisionScenes(torch.utils.data.Dataset):
    """Decision-scene samples with exactly `ChunkDataset`'s keys and shapes."""

    def __init__(self, data: dict[str, np.ndarray], camera_keys: list[str]):
        self.data, self.camera_keys = data, list(camera_keys)

    def __len__(self) -> int:
        return len(self.data["task"])

    def __getitem__(self, i: int) -> dict:
        d = self.data
        sample = {key: torch.from_numpy(d["images"][i, c]).float().div_(255) for c, key in enumerate(self.camera_keys)}
        sample["observation.state"] = torch.from_numpy(d["state"][i])
        sample["action"] = torch.from_numpy(d["action"][i])
        sample["action_is_pad"] = torch.zeros(d["action"].shape[1], dtype=torch.bool)
        sample["task"] = str(d["task"][i])
        return sample


def load_decision_scenes(root: str | Path, families: list[str] | None, n: int, size: tuple[int, int],
                         camera_keys: list[str], chunk: int, steps: list[int]) -> DecisionScenes:
    families = families or dataset_families(root)
    parts = []
    for family in families:
        cache = Path(root) / "cache" / f"decision_{family}_{n}x{'-'.join(map(str, steps))}_{size[0]}x{size[1]}_c{chunk}.npz"
        log.info("decision scenes: %d of %s at steps %s (cached in %s)", n, family, steps, cache)
        parts.append(render_decision_scenes(family, n, size, camera_keys, chunk, steps, cache))
    return DecisionScenes({k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, camera_keys)


def load_labelled_frames(paths: list[str], camera_keys: list[str], size: tuple[int, int], chunk: int) -> DecisionScenes:
    """Expert-labelled frames saved by `dagger.py` (npz files in the decision scenes' format), checked against
    the policy they train: the same cameras, image size and chunk, or an error that names the file."""
    keys = ("images", "state", "action", "task")
    parts = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"dagger_data {path}: no such file (a `vst-vla dagger` round_<k>/frames_*.npz)")
        data = dict(np.load(path))
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(f"dagger_data {path}: missing arrays {missing} (has {sorted(data)})")
        want = (len(camera_keys), 3, *size)
        if data["images"].shape[1:] != want:
            raise ValueError(f"dagger_data {path}: images {data['images'].shape[1:]} but the policy reads {want} "
                             f"(cameras {camera_keys}); collect the frames with this policy's image size")
        if data["action"].shape[1] != chunk:
            raise ValueError(f"dagger_data {path}: action chunks of {data['action'].shape[1]} but the policy's chunk is {chunk}")
        parts.append({k: data[k] for k in keys})
    return DecisionScenes({k: np.concatenate([p[k] for p in parts]) for k in keys}, camera_keys)
