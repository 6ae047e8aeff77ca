"""LeRobot env plugin: `lerobot-eval --env.type=vst_tabletop --env.task=<family>[,<family>...|all]`.

Each task family becomes its own suite in lerobot-eval's report ({family: {0: VectorEnv}}), so
success is reported per family, as LIBERO reports per suite.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

from .env import ACTION_NAMES
from .scene import CAMERAS
from .tasks import FAMILIES


def parse_families(task: str | None) -> list[str]:
    if not task or task == "all":
        return list(FAMILIES)
    names = [t.strip() for t in task.split(",") if t.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; known: {sorted(FAMILIES)} (or 'all')")
    return names


@EnvConfig.register_subclass("vst_tabletop")
@dataclass
class VstTabletopEnv(EnvConfig):
    task: str | None = "all"
    fps: int = 30
    episode_length: int = 300
    obs_type: str = "pixels_agent_pos"
    action_space: str = "joint"
    cameras: list[str] = field(default_factory=lambda: list(CAMERAS))
    observation_height: int = 224
    observation_width: int = 224
    robot_variant: str = "primitives"
    randomize: bool = True
    render_mode: str = "rgb_array"
    features: dict[str, PolicyFeature] = field(default_factory=dict)
    features_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        parse_families(self.task)
        self.features[ACTION] = PolicyFeature(type=FeatureType.ACTION, shape=(len(ACTION_NAMES[self.action_space]),))
        self.features["agent_pos"] = PolicyFeature(type=FeatureType.STATE, shape=(6,))
        self.features_map.update({ACTION: ACTION, "agent_pos": OBS_STATE})
        if self.obs_type == "pixels_agent_pos":
            for cam in self.cameras:
                self.features[f"pixels/{cam}"] = PolicyFeature(
                    type=FeatureType.VISUAL, shape=(self.observation_height, self.observation_width, 3))
                self.features_map[f"pixels/{cam}"] = f"{OBS_IMAGES}.{cam}"

    @property
    def package_name(self) -> str:
        return "lerobot_env_vst_vla"

    @property
    def gym_id(self) -> str:
        return f"vst_vla/{parse_families(self.task)[0]}-v0"

    @property
    def gym_kwargs(self) -> dict:
        return {"obs_type": self.obs_type, "action_space": self.action_space, "cameras": tuple(self.cameras),
                "observation_width": self.observation_width, "observation_height": self.observation_height,
                "fps": self.fps, "episode_length": self.episode_length, "robot_variant": self.robot_variant,
                "randomize": self.randomize, "render_mode": self.render_mode}

    def create_envs(self, n_envs: int, use_async_envs: bool = False) -> dict[str, dict[int, gym.vector.VectorEnv]]:
        envs = {}
        for family in parse_families(self.task):
            kwargs = {**self.gym_kwargs, "task": family}
            fns = [lambda kw=kwargs: gym.make(f"vst_vla/{family}-v0", disable_env_checker=True, **kw)
                   for _ in range(n_envs)]
            if use_async_envs and n_envs > 1:
                vec = gym.vector.AsyncVectorEnv(fns, context="forkserver",
                                                autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
            else:
                vec = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
            envs[family] = {0: vec}
        return envs
