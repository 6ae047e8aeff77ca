"""vst-vla sim: MuJoCo SO-101 tabletop tasks whose instructions need spatial understanding.

Importing the package registers one gymnasium id per task family (`vst_vla/<family>-v0`) and the
LeRobot env type `vst_tabletop` (the lerobot CLIs import this package by its distribution name).
"""

import os
import sys

# Headless Linux (no X or Wayland display): MuJoCo's default GLFW backend cannot make a context, and
# rendering would fail at the first camera with "an OpenGL platform library has not been loaded".
# Offscreen EGL works there; it must be chosen before mujoco is first imported. A user's setting wins.
if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import gymnasium as gym  # noqa: E402

from .env import SpatialTabletopEnv  # noqa: E402
from .expert import ScriptedExpert, run_expert_episode  # noqa: E402
from .tasks import FAMILIES  # noqa: E402

for _family in FAMILIES:
    if f"vst_vla/{_family}-v0" not in gym.registry:
        gym.register(id=f"vst_vla/{_family}-v0", entry_point="lerobot_env_vst_vla.env:SpatialTabletopEnv",
                     kwargs={"task": _family})

from .lerobot_config import VstTabletopEnv  # noqa: E402  (registers the LeRobot env type)

__all__ = ["FAMILIES", "ScriptedExpert", "SpatialTabletopEnv", "VstTabletopEnv", "run_expert_episode"]
