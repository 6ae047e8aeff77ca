"""vst-vla: Visual Spatial Tuning for vision-language-action policies."""

import os
import sys

# Headless Linux: MuJoCo's EGL backend, chosen before any vst_vla module imports mujoco (it reads
# MUJOCO_GL at import). The same rule as lerobot_env_vst_vla/__init__.py, kept here rather than
# importing the sim, which would put torch and lerobot (~6 s) in front of every `vst-vla` call.
if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
