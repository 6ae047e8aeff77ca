"""vst-vla sim: MuJoCo SO-101 tabletop tasks whose instructions need spatial understanding.

Importing the package registers one gymnasium id per task family (`vst_vla/<family>-v0`) and the
LeRobot env type `vst_tabletop` (the lerobot CLIs import this package by its distribution name).
"""

import gymnasium as gym

from .env import SpatialTabletopEnv
from .expert import ScriptedExpert, run_expert_episode
from .tasks import FAMILIES

for _family in FAMILIES:
    if f"vst_vla/{_family}-v0" not in gym.registry:
        gym.register(id=f"vst_vla/{_family}-v0", entry_point="lerobot_env_vst_vla.env:SpatialTabletopEnv",
                     kwargs={"task": _family})

from .lerobot_config import VstTabletopEnv  # noqa: E402  (registers the LeRobot env type)

__all__ = ["FAMILIES", "ScriptedExpert", "SpatialTabletopEnv", "VstTabletopEnv", "run_expert_episode"]
