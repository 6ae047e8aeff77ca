"""Configuration of the VST-VLA policy (LeRobot policy type `vst_vla`).

A Qwen2.5-VL backbone (tiny preset, or a local Qwen2.5-VL / VST checkpoint) reads the cameras, an
optional robot state and the task, and one of two heads produces actions:

- `tokens` (the VST paper's VLA): 256 added `<|action_i|>` tokens, per-dimension q01/q99 → [-1, 1]
  normalisation, greedy decoding restricted to the action tokens.
- `flow` (beyond the paper, pi0/SmolVLA recipe): a smaller transformer expert that attends to the
  VLM prefix's per-layer key/value cache and is trained by flow matching.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs import NormalizationMode, PreTrainedConfig
from lerobot.optim import AdamWConfig, CosineDecayWithWarmupSchedulerConfig
from lerobot.policies.rtc.configuration_rtc import RTCConfig
from lerobot.utils.constants import ACTION, OBS_STATE

ACTION_HEADS = ("tokens", "flow")
# Qwen2.5-VL cuts images into 14-px patches and merges 2×2 of them into one LLM token.
VISION_STRIDE = 28
# Head-dependent defaults, applied where the user left a field at None.
DEFAULT_CHUNK_SIZE = {"tokens": 1, "flow": 10}  # tokens: single step, as in the paper
DEFAULT_ACTION_NORM = {
    "tokens": NormalizationMode.QUANTILES,  # q01/q99 → [-1, 1], then 256 uniform bins (paper/OpenVLA)
    "flow": NormalizationMode.MEAN_STD,  # pi0/SmolVLA
}


@PreTrainedConfig.register_subclass("vst_vla")
@dataclass
class VSTVLAConfig(PreTrainedConfig):
    # --- backbone (vst_vla.backbone) ---
    backbone_preset: str = "tiny"  # "tiny" | "small": built from a config, no download; ignored with backbone_path
    backbone_path: str | None = None  # local Qwen2.5-VL-*-Instruct or VST-*-SFT/RL checkpoint folder
    backbone_dtype: str = "auto"  # "auto" (float32 on CPU, bfloat16 on CUDA) | "float32" | "bfloat16" | "float16"
    backbone_seed: int = 0  # initialises preset weights
    # presets only: fixed 2-D sin/cos patch positions in the ViT (backbone/positions.py); a
    # backbone_path checkpoint's config.json decides for itself
    backbone_absolute_positions: bool = False
    attn_implementation: str = "sdpa"
    image_size: tuple[int, int] = (224, 224)  # (height, width) every camera is resized to; multiples of 28

    # --- actions ---
    action_head: str = "tokens"  # "tokens" (paper) | "flow"
    n_obs_steps: int = 1
    chunk_size: int | None = None  # actions predicted per call; None: 1 for tokens, 10 for flow
    n_action_steps: int | None = None  # actions executed per call; None: chunk_size
    # None: VISUAL identity, STATE mean/std, ACTION quantiles (tokens) or mean/std (flow)
    normalization_mapping: dict[str, NormalizationMode] | None = None
    # Relative actions (OpenPI's DeltaActions, LeRobot's relative_actions_processor): the model predicts
    # joint targets minus the joint state the chunk starts from; the postprocessor adds it back. A policy
    # from scratch then starts near "hold still" instead of "go to the mean pose" and learns much faster
    # (vst-vla's CPU recipe turns it on). Statistics must describe relative chunks, which
    # `vst-vla train-policy` computes; each chunk must be post-processed when it is predicted, as
    # `vst-vla eval-policy` and LeRobot's RTC engine do (LeRobot 0.6.1's sync rollout refuses such
    # pipelines, and select_action would add the state of the wrong step). Off by default, as in LeRobot.
    use_relative_actions: bool = False
    relative_exclude_joints: list[str] = field(default_factory=lambda: ["gripper"])  # kept absolute
    action_feature_names: list[str] | None = None  # filled from the dataset; None: every dimension relative

    # tokens head
    n_bins: int = 256

    # flow head: the expert reuses the VLM's head_dim and key/value heads, so it can attend to the cache
    expert_hidden_size: int | None = None  # None: half the VLM's hidden size
    expert_num_layers: int | None = None  # None: one expert layer per VLM layer
    expert_num_heads: int | None = None  # None: the VLM's number of attention heads
    num_steps: int = 10  # Euler steps from noise (t=1) to actions (t=0)
    # std of the starting noise at inference (training always draws N(0, 1)): 1 samples the learned
    # distribution; below 1 moves toward its mode (0: deterministic), steadier chunks from an underfit model
    inference_noise_scale: float = 1.0
    time_beta_alpha: float = 1.5  # t ~ Beta(alpha, beta) when training (pi0)
    time_beta_beta: float = 1.0
    # Training-time probability of hiding the robot state (its token's embedding set to zero): the
    # state alone tells where a moving arm is heading, a shortcut that lets a policy ignore the image.
    state_dropout: float = 0.0
    # (noise, time) draws per observation in training; > 1 reuses the VLM prefix, a cheap lower-variance gradient
    flow_samples_per_obs: int = 1
    use_prefix_cache: bool = True  # False: recompute the VLM prefix at every denoising step (for benchmarks)
    # Real-time chunking (flow head only, as pi0/SmolVLA): LeRobot's RTC guidance inpaints each new chunk
    # towards the unexecuted rest of the previous one. `lerobot-rollout --inference.type=rtc` sets it from
    # --inference.rtc.*; None or enabled=False: plain sampling (RTC arguments are then ignored, as in pi0).
    rtc_config: RTCConfig | None = None

    # --- fine-tuning ---
    freeze_vision: bool = False
    freeze_llm: bool = False  # LLM base weights; LoRA adapters (lora_rank > 0) still train
    lora_rank: int = 0  # > 0: LoRA (peft) on the LLM's attention and MLP projections, base weights frozen
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = False

    # --- optimiser (lerobot-train uses these presets unless told otherwise) ---
    optimizer_lr: float = 1e-4
    # The ViT's rate relative to the LLM's. None: 0.1 for pretrained weights (backbone_path, as VST's SFT),
    # 1.0 for a randomly initialised preset, whose ViT has everything to learn.
    vision_lr_scale: float | None = None
    optimizer_betas: tuple[float, float] = (0.9, 0.95)
    optimizer_eps: float = 1e-8
    optimizer_weight_decay: float = 1e-10
    optimizer_grad_clip_norm: float = 10.0
    # lerobot-train scales both down to runs shorter than the decay (CosineDecayWithWarmupSchedulerConfig);
    # `vst-vla train-policy` sizes its schedule as fractions of the run instead.
    scheduler_warmup_steps: int = 1_000
    scheduler_decay_steps: int = 30_000
    scheduler_decay_lr: float = 2.5e-6

    def __post_init__(self):
        super().__post_init__()
        if self.action_head not in ACTION_HEADS:
            raise ValueError(f"action_head must be one of {ACTION_HEADS}, got {self.action_head!r}")
        if self.n_obs_steps != 1:
            raise ValueError(f"vst_vla reads the current frame only: n_obs_steps must be 1, got {self.n_obs_steps}")
        if self.vision_lr_scale is None:
            self.vision_lr_scale = 0.1 if self.backbone_path else 1.0
        if self.chunk_size is None:
            self.chunk_size = DEFAULT_CHUNK_SIZE[self.action_head]
        if self.n_action_steps is None:
            self.n_action_steps = self.chunk_size
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(f"n_action_steps ({self.n_action_steps}) must be in [1, chunk_size={self.chunk_size}]")
        if self.normalization_mapping is None:
            self.normalization_mapping = {
                "VISUAL": NormalizationMode.IDENTITY,
                "STATE": NormalizationMode.MEAN_STD,
                "ACTION": DEFAULT_ACTION_NORM[self.action_head],
            }
        action_norm = self.normalization_mapping.get("ACTION")
        if self.action_head == "tokens" and action_norm not in (NormalizationMode.QUANTILES, NormalizationMode.MIN_MAX):
            raise ValueError("the tokens head bins actions in [-1, 1]: normalization_mapping['ACTION'] must be "
                             f"QUANTILES (paper) or MIN_MAX, got {action_norm}")
        height, width = self.image_size
        if height % VISION_STRIDE or width % VISION_STRIDE or height <= 0 or width <= 0:
            raise ValueError(f"image_size {tuple(self.image_size)} must be positive multiples of {VISION_STRIDE} "
                             "(14-px patches merged 2×2)")
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be at least 2, got {self.n_bins}")
        if not 0.0 <= self.state_dropout < 1.0:
            raise ValueError(f"state_dropout must be in [0, 1), got {self.state_dropout}")
        if self.flow_samples_per_obs < 1:
            raise ValueError(f"flow_samples_per_obs must be >= 1, got {self.flow_samples_per_obs}")
        if not 0.0 <= self.inference_noise_scale <= 1.0:
            raise ValueError(f"inference_noise_scale must be in [0, 1], got {self.inference_noise_scale}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {self.num_steps}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = off), got {self.lora_rank}")
        if self.action_head == "tokens" and self.rtc_config is not None and self.rtc_config.enabled:
            raise ValueError("real-time chunking needs the flow head: the tokens head decodes action bins "
                             "autoregressively and has no denoising steps to guide (set action_head='flow' or "
                             "rtc_config=None)")

    def validate_features(self) -> None:
        """The policy needs ≥ 1 camera and a flat action; the state is optional and flat."""
        if not self.image_features:
            raise ValueError("vst_vla needs at least one camera: no VISUAL feature (observation.images.*) in "
                             f"input_features {sorted(self.input_features or {})}")
        for key, feature in self.image_features.items():
            if len(feature.shape) != 3 or feature.shape[0] != 3:
                raise ValueError(f"camera feature '{key}' must have shape (3, H, W), got {tuple(feature.shape)}")
        if self.action_feature is None:
            raise ValueError(f"vst_vla needs an '{ACTION}' output feature, got output_features "
                             f"{sorted(self.output_features or {})}")
        if len(self.action_feature.shape) != 1:
            raise ValueError(f"'{ACTION}' must be a flat vector, got shape {tuple(self.action_feature.shape)}")
        state = self.robot_state_feature
        if state is not None and len(state.shape) != 1:
            raise ValueError(f"'{OBS_STATE}' must be a flat vector, got shape {tuple(state.shape)}")

    @property
    def action_dim(self) -> int:
        return self.action_feature.shape[0]

    @property
    def state_dim(self) -> int | None:
        state = self.robot_state_feature
        return None if state is None else state.shape[0]

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(
            lr=self.optimizer_lr,
            betas=self.optimizer_betas,
            eps=self.optimizer_eps,
            weight_decay=self.optimizer_weight_decay,
            grad_clip_norm=self.optimizer_grad_clip_norm,
        )

    def get_scheduler_preset(self) -> CosineDecayWithWarmupSchedulerConfig:
        return CosineDecayWithWarmupSchedulerConfig(
            peak_lr=self.optimizer_lr,
            decay_lr=self.scheduler_decay_lr,
            num_warmup_steps=self.scheduler_warmup_steps,
            num_decay_steps=self.scheduler_decay_steps,
        )

    @property
    def observation_delta_indices(self) -> None:
        return None  # the current frame only

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None
