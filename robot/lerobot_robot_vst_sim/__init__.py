"""LeRobot robot plugin of vst-vla (the lerobot CLIs import it by its distribution name).

- `vst_sim_so101`: the MuJoCo SO-101 tabletop of lerobot_env_vst_vla behind LeRobot's Robot contract.
- `vst_so101_follower`: a real SO-101 follower (subclass of LeRobot's) guarded by the same layer.
- `SafetyGuard`: the safety layer (validation, limits, rate limits, watchdog, stale inputs, e-stop).
"""

from .config_vst_sim_so101 import VstSimCameraConfig, VstSimSO101Config
from .safety import Decision, EStop, JsonlLog, SafetyConfig, SafetyGuard
from .vst_sim_so101 import VstSimSO101, instruction_for
from .config_vst_so101_follower import VstSO101FollowerConfig  # noqa: E402  (registers the real arm type)
from .vst_so101_follower import VstSO101Follower  # noqa: E402

__all__ = ["Decision", "EStop", "JsonlLog", "SafetyConfig", "SafetyGuard", "VstSimCameraConfig",
           "VstSimSO101", "VstSimSO101Config", "VstSO101Follower", "VstSO101FollowerConfig", "instruction_for"]
