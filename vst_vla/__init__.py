"""vst-vla: Visual Spatial Tuning for vision-language-action policies."""

# The sim package picks MuJoCo's EGL backend on a headless machine, which must happen before mujoco is
# first imported; several vst_vla modules import mujoco directly, so the sim is imported first here.
import lerobot_env_vst_vla  # noqa: E402,F401
