"""VST-VLA: a (spatially tuned) Qwen2.5-VL backbone driving a robot, as a LeRobot policy.

Prefix (both heads): the Qwen chat prompt
    <|im_start|>user <image front> <image wrist> The robot's joint state is <|state|>.
    What action should the robot take to {task}?<|im_end|> <|im_start|>assistant
left-padded over the batch so every prefix ends at the same index. Camera images are resized and cut
into Qwen2.5-VL patches here, in torch; `<|state|>`'s embedding is replaced by a linear projection of
`observation.state`; positions are Qwen's 3-D mRoPE ones from `get_rope_index`, so anything after
the prefix starts at `attention_mask.sum(-1) + rope_deltas` (Qwen2.5-VL's `get_rope_index` contract).

Heads:
- `tokens` (VST paper, OpenVLA-style): each normalised action dimension becomes one of 256 action
  tokens; training is next-token cross-entropy over the T·A action tokens, inference decodes them
  greedily, one token at a time on the KV cache. The 256 tokens have their own input embeddings and
  output rows (`ActionTokens`): the loss is over exactly the rows that decoding chooses from, the
  vocabulary's embedding and `lm_head` stay frozen when the LLM is (≈311M parameters on a 3B
  backbone that otherwise trained), and every bin starts from a distinct row.
- `flow` (pi0 / SmolVLA recipe): an action expert, a smaller transformer whose layer i attends
  jointly to its own action tokens and to the cached keys/values of one VLM layer. The prefix runs
  once per chunk; the 10 Euler steps only run the expert. Real-time chunking (LeRobot's RTCProcessor,
  `lerobot-rollout --inference.type=rtc`) guides those same steps towards the previous chunk's
  unexecuted actions, with no extra network call.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from lerobot.configs import PreTrainedConfig
from lerobot.policies.common.flow_matching import euler_integrate, sample_noise, sample_time_beta
from lerobot.policies.common.vla_utils import create_sinusoidal_pos_embedding
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.policies.rtc.modeling_rtc import RTCProcessor
from lerobot.utils.constants import ACTION, OBS_STATE
from lerobot.utils.feature_utils import dataset_to_policy_features
from torch import Tensor, nn
from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_multimodal_rotary_pos_emb

from .backbone import Backbone, BackboneConfig, add_lora, add_special_tokens, build_backbone
from .backbone import install_absolute_positions, resolve_device, resolve_dtype, uses_absolute_positions
from .backbone.qwen_format import IGNORE_INDEX, IMAGE_TOKEN
from .configuration_vst_vla import VSTVLAConfig

BACKBONE_DIR = "backbone"  # inside a policy checkpoint: the Qwen config and processor, to rebuild offline
STATE_TOKEN = "<|state|>"
PROMPT = "What action should the robot take to {task}?"
STATE_PROMPT = f"The robot's joint state is {STATE_TOKEN}.\n"
TASK = "task"
ACTION_IS_PAD = "action_is_pad"
# pi0's time conventions: t in [0.001, 1] when training, sinusoidal embedding periods 4e-3…4.
TIME_SCALE, TIME_OFFSET = 0.999, 0.001
TIME_MIN_PERIOD, TIME_MAX_PERIOD = 4e-3, 4.0


@dataclass
class Prefix:
    """One observation batch as VLM inputs, left-padded so every sequence ends at the same index."""

    input_ids: Tensor  # (B, S)
    embeds: Tensor  # (B, S, D) token embeddings, state inserted; images are scattered in by the VLM
    attention_mask: Tensor  # (B, S) 1 = token, 0 = left padding
    position_ids: Tensor  # (3, B, S) mRoPE (temporal, height, width)
    next_position: Tensor  # (B,) position of the first token after the prefix
    pixel_values: Tensor  # (patches, 3·2·14·14)
    image_grid_thw: Tensor  # (B·cameras, 3)

    def positions_after(self, offset: int, n: int) -> Tensor:
        """(3, B, n) positions of n text tokens starting `offset` tokens after the prefix (t = h = w)."""
        return text_positions_after(self.next_position, offset, n)


def text_positions_after(next_position: Tensor, offset: int, n: int) -> Tensor:
    """(3, B, n) mRoPE positions of n text tokens starting `offset` tokens after prefixes ending at `next_position`."""
    pos = next_position[:, None] + offset + torch.arange(n, device=next_position.device)
    return pos[None].expand(3, -1, -1)


class VSTVLAPolicy(PreTrainedPolicy):
    config_class = VSTVLAConfig
    name = "vst_vla"

    def __init__(self, config: VSTVLAConfig, dataset_stats=None, dataset_meta=None,
                 backbone_dir: str | Path | None = None, **kwargs):
        """`dataset_stats` is unused (the processors normalise); `backbone_dir` is set by `from_pretrained`."""
        if not isinstance(config, VSTVLAConfig):
            raise TypeError(f"VSTVLAPolicy needs a VSTVLAConfig (policy type 'vst_vla'), got "
                            f"{type(config).__name__} (policy type {getattr(config, 'type', '?')!r})")
        super().__init__(config)
        config.validate_features()
        if dataset_meta is not None:
            check_dataset_features(config, dataset_meta.features)
            if config.action_feature_names is None:  # which dimension is the gripper, for relative actions
                names = dataset_meta.features.get(ACTION, {}).get("names")
                config.action_feature_names = list(names) if isinstance(names, list) else None
        self.config = config

        backbone = load_backbone(config, backbone_dir)
        self.vlm = backbone.model
        self.processor = backbone.processor
        text = self.vlm.config.text_config
        self.image_keys = list(config.image_features)

        self.state_token_id = None
        if config.state_dim is not None:
            # its embedding is always replaced by the state projection, so the new row's init is irrelevant
            self.state_token_id = add_special_tokens(self.vlm, self.processor, [STATE_TOKEN])[0]
            self.state_proj = nn.Linear(config.state_dim, text.hidden_size)

        if config.action_head == "tokens":
            self.action_tokens = ActionTokens(config.n_bins, self.vlm.get_input_embeddings().weight,
                                              seed=config.backbone_seed)
        else:
            self.expert = ActionExpert(
                action_dim=config.action_dim,
                width=config.expert_hidden_size or text.hidden_size // 2,
                num_layers=config.expert_num_layers or text.num_hidden_layers,
                num_heads=config.expert_num_heads or text.num_attention_heads,
                text_config=text,
            )

        image_proc = self.processor.image_processor
        self.patch_size, self.merge_size = image_proc.patch_size, image_proc.merge_size
        self.temporal_patch_size = image_proc.temporal_patch_size
        self.register_buffer("image_mean", torch.tensor(image_proc.image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_proc.image_std).view(3, 1, 1), persistent=False)
        self._prompt_ids: dict[str, list[int]] = {}  # task string → prompt token ids (tasks repeat)

        self._set_trainable()
        self.to(self.vlm.device)  # the new heads and buffers join the backbone
        self.init_rtc_processor()
        self.reset()

    # --- LeRobot policy API ------------------------------------------------------------------------

    def reset(self):
        self._action_queue: deque[Tensor] = deque(maxlen=self.config.n_action_steps)

    def supports_rtc(self) -> bool:
        """Real-time chunking guides denoising steps: the flow head has them, the tokens head does not."""
        return self.config.action_head == "flow"

    def init_rtc_processor(self) -> None:
        """LeRobot's RTC processor from `config.rtc_config` (lerobot-rollout sets that, then calls this)."""
        self.rtc_processor = None
        if self.supports_rtc() and self.config.rtc_config is not None:
            self.rtc_processor = RTCProcessor(self.config.rtc_config)

    def _rtc_enabled(self) -> bool:
        return self.rtc_processor is not None and self.config.rtc_config.enabled

    def get_optim_params(self) -> list[dict]:
        vision = [p for p in self.vlm.model.visual.parameters() if p.requires_grad]
        vision_ids = {id(p) for p in vision}
        groups = [{"params": [p for p in self.parameters() if p.requires_grad and id(p) not in vision_ids]}]
        if vision:
            groups.append({"params": vision, "lr": self.config.optimizer_lr * self.config.vision_lr_scale})
        return groups

    def forward(self, batch: dict, reduction: str = "mean") -> tuple[Tensor, dict]:
        """Training loss: cross-entropy on action tokens, or flow-matching MSE on the velocity."""
        self._check_batch(batch, with_action=True)
        actions = batch[ACTION]
        is_pad = batch.get(ACTION_IS_PAD)
        valid = torch.ones(actions.shape[:2], dtype=torch.bool, device=actions.device) if is_pad is None else ~is_pad
        prefix = self._encode_prefix(batch)
        if self.config.action_head == "tokens":
            per_sample, info = self._token_loss(prefix, actions, valid)
        else:
            per_sample, info = self._flow_loss(prefix, actions, valid)
        loss = per_sample.mean() if reduction == "mean" else per_sample
        return loss, {"loss": per_sample.mean().item(), **info}

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict, noise: Tensor | None = None, *, inference_delay: int | None = None,
                             prev_chunk_left_over: Tensor | None = None,
                             execution_horizon: int | None = None) -> Tensor:
        """(B, chunk_size, action_dim) normalised actions; `noise` (same shape) seeds the flow head.

        RTC (flow head, with `config.rtc_config` enabled, as pi0): `prev_chunk_left_over` ((T', A) or
        (B, T', A), normalised model outputs) is the previous chunk's unexecuted part; the new chunk's
        first `inference_delay` actions are pulled onto it, the weight falling linearly to 0 at
        `execution_horizon` (default `rtc_config.execution_horizon`). Without a left-over the result is
        exactly the plain one.
        """
        rtc = {"inference_delay": inference_delay, "prev_chunk_left_over": prev_chunk_left_over,
               "execution_horizon": execution_horizon}
        if not self.supports_rtc():
            given = sorted(k for k, v in rtc.items() if v is not None)
            if given:
                raise ValueError(f"the {self.config.action_head} head does not support real-time chunking (got "
                                 f"{', '.join(given)}): it decodes action bins autoregressively, with no denoising "
                                 "steps to guide. Use action_head='flow' or --inference.type=sync")
        self._check_batch(batch, with_action=False)
        prefix = self._encode_prefix(batch)
        if self.config.action_head == "tokens":
            return self._decode_tokens(prefix)
        return self._sample_flow(prefix, noise, **rtc)

    @torch.no_grad()
    def select_action(self, batch: dict, noise: Tensor | None = None) -> Tensor:
        """(B, action_dim): the next action of the current chunk; a new chunk when the queue runs dry."""
        if not self._action_queue:
            chunk = self.predict_action_chunk(batch, noise=noise)[:, : self.config.n_action_steps]
            self._action_queue.extend(chunk.transpose(0, 1))
        return self._action_queue.popleft()

    # --- prefix ------------------------------------------------------------------------------------

    def _prompt(self, task: str) -> list[int]:
        ids = self._prompt_ids.get(task)
        if ids is None:
            text = PROMPT.format(task=task.strip())
            if self.state_token_id is not None:
                text = STATE_PROMPT + text
            content = [{"type": "image"}] * len(self.image_keys) + [{"type": "text", "text": text}]
            chat = self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                      add_generation_prompt=True)
            height, width = self.config.image_size
            n_image_tokens = (height // self.patch_size) * (width // self.patch_size) // self.merge_size**2
            chat = chat.replace(IMAGE_TOKEN, IMAGE_TOKEN * n_image_tokens)
            ids = self._prompt_ids[task] = self.processor.tokenizer(chat, add_special_tokens=False)["input_ids"]
        return ids

    def _pixel_values(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Cameras → Qwen2.5-VL patches laid out as Qwen2VLImageProcessor does; images sample-major, then camera."""
        images = torch.stack([batch[key] for key in self.image_keys], dim=1)  # (B, cams, 3, H, W) in [0, 1]
        x = images.flatten(0, 1).to(self.image_mean.dtype)
        x = F.interpolate(x, size=tuple(self.config.image_size), mode="bicubic", antialias=True, align_corners=False)
        x = (x.clamp(0, 1) - self.image_mean) / self.image_std
        n, c, h, w = x.shape
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // p, w // p
        # A still image fills the temporal patch by repetition; patches are ordered in merge windows.
        x = x[:, None].expand(n, t, c, h, w).reshape(n, t, c, gh // m, m, p, gw // m, m, p)
        patches = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(n * gh * gw, c * t * p * p)
        grid = torch.tensor([1, gh, gw], device=x.device).repeat(n, 1)
        return patches.to(self.vlm.dtype), grid

    def _encode_prefix(self, batch: dict) -> Prefix:
        prompts = [self._prompt(task) for task in batch[TASK]]
        device = self.image_mean.device
        length = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), length), self.processor.tokenizer.pad_token_id, device=device)
        attention_mask = torch.zeros_like(input_ids)
        for i, ids in enumerate(prompts):  # left padding: the prefixes end together
            input_ids[i, length - len(ids):] = torch.tensor(ids, device=device)
            attention_mask[i, length - len(ids):] = 1

        embeds = self.vlm.get_input_embeddings()(input_ids)
        if self.state_token_id is not None:  # exactly one <|state|> per prompt, in sample order
            state = self.state_proj(batch[OBS_STATE].to(self.state_proj.weight.dtype)).to(embeds.dtype)
            if self.training and self.config.state_dropout > 0:
                keep = torch.rand(state.shape[0], 1, device=state.device) >= self.config.state_dropout
                state = state * keep.to(state.dtype)
            embeds = embeds.masked_scatter((input_ids == self.state_token_id)[..., None], state)

        pixel_values, grid = self._pixel_values(batch)
        mm_token_type_ids = (input_ids == self.vlm.config.image_token_id).int()  # get_rope_index needs it for mRoPE
        position_ids, rope_deltas = self.vlm.model.get_rope_index(
            input_ids, mm_token_type_ids, image_grid_thw=grid, attention_mask=attention_mask)
        return Prefix(input_ids=input_ids, embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                      next_position=attention_mask.sum(-1) + rope_deltas[:, 0], pixel_values=pixel_values,
                      image_grid_thw=grid)

    def _run_vlm(self, prefix: Prefix, suffix_embeds: Tensor | None = None, use_cache: bool = False):
        """The VLM over the prefix (vision tower included), optionally followed by (action) token embeddings."""
        input_ids, embeds = prefix.input_ids, prefix.embeds
        attention_mask, position_ids = prefix.attention_mask, prefix.position_ids
        if suffix_embeds is not None:
            n = suffix_embeds.shape[1]
            # placeholder ids (never the image token): the embeddings carry the content
            suffix_ids = torch.full(suffix_embeds.shape[:2], self.processor.tokenizer.pad_token_id,
                                    dtype=input_ids.dtype, device=input_ids.device)
            input_ids = torch.cat([input_ids, suffix_ids], dim=1)
            embeds = torch.cat([embeds, suffix_embeds], dim=1)
            attention_mask = torch.cat([attention_mask, torch.ones_like(suffix_ids)], dim=1)
            position_ids = torch.cat([position_ids, prefix.positions_after(0, n)], dim=2)
        # Explicit position_ids: the model then never falls back on its stateful rope_deltas.
        return self.vlm.model(input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask,
                              position_ids=position_ids, pixel_values=prefix.pixel_values,
                              image_grid_thw=prefix.image_grid_thw, use_cache=use_cache)

    # --- tokens head -------------------------------------------------------------------------------

    def _token_loss(self, prefix: Prefix, actions: Tensor, valid: Tensor) -> tuple[Tensor, dict]:
        b, t, a = actions.shape
        targets = quantize(actions, self.config.n_bins).flatten(1)  # (B, T·A) bins, step-major
        # Teacher forcing: the prefix's last position predicts the first action token, and so on.
        suffix = self.action_tokens.embed(targets[:, :-1]).to(prefix.embeds.dtype)
        hidden = self._run_vlm(prefix, suffix_embeds=suffix).last_hidden_state[:, -t * a:]
        logits = self.action_tokens.logits(hidden).float()  # over the 256 bins decoding chooses from
        labels = targets.masked_fill(~valid.repeat_interleave(a, dim=1), IGNORE_INDEX)
        ce = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        mask = labels != IGNORE_INDEX
        per_sample = (ce * mask).sum(1) / mask.sum(1).clamp(min=1)
        accuracy = ((logits.argmax(-1) == targets) & mask).sum() / mask.sum().clamp(min=1)
        return per_sample, {"action_token_accuracy": accuracy.item()}

    def _decode_tokens(self, prefix: Prefix) -> Tensor:
        """Greedy over the action tokens, one token per step on the KV cache: T·A steps."""
        t, a, n = self.config.chunk_size, self.config.action_dim, self.config.n_bins
        out = self._run_vlm(prefix, use_cache=True)
        cache, attention_mask = out.past_key_values, prefix.attention_mask
        bins = []
        for k in range(t * a):
            bins.append(self.action_tokens.logits(out.last_hidden_state[:, -1]).argmax(-1))
            if k == t * a - 1:
                break
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
            embeds = self.action_tokens.embed(bins[-1])[:, None].to(prefix.embeds.dtype)
            out = self.vlm.model(inputs_embeds=embeds, attention_mask=attention_mask,
                                 position_ids=prefix.positions_after(k, 1), past_key_values=cache, use_cache=True)
        return dequantize(torch.stack(bins, dim=1).view(-1, t, a), n)

    # --- flow head ---------------------------------------------------------------------------------

    def _prefix_kv(self, prefix: Prefix) -> list[tuple[Tensor, Tensor]]:
        """Keys/values (post-RoPE, (B, kv_heads, S, head_dim)) of the VLM layers the expert reads."""
        cache = self._run_vlm(prefix, use_cache=True).past_key_values
        return [(cache.layers[i].keys, cache.layers[i].values) for i in self.expert.vlm_layers]

    def _expert_inputs(self, prefix: Prefix) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Attention mask (valid prefix + the whole chunk) and RoPE of the chunk, which follows the prefix."""
        return self.expert_inputs(prefix.attention_mask, prefix.next_position)

    def expert_inputs(self, attention_mask: Tensor, next_position: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """`_expert_inputs` from a prefix's (B, S) attention mask and (B,) next position alone (a cached prefix)."""
        t = self.config.chunk_size
        chunk = torch.ones_like(attention_mask[:, :1]).expand(-1, t)
        mask = torch.cat([attention_mask, chunk], dim=1).bool()[:, None, None, :]
        # Same rotary tables as the VLM: the action tokens sit where the next text tokens would.
        dummy = torch.zeros(1, dtype=torch.float32, device=mask.device)
        rope = self.vlm.model.language_model.rotary_emb(dummy, text_positions_after(next_position, 0, t))
        return mask, rope

    @torch.no_grad()
    def prefix_features(self, batch: dict) -> dict[str, Tensor]:
        """What the flow expert reads of an observation batch (preprocessed): the K/V of the VLM layers it
        attends to, (B, layers, kv_heads, S, head_dim) each, the (B, S) attention mask and the (B,) next
        position. With the VLM frozen these are fixed per frame, so `vst-vla train-policy expert_steps=…`
        computes them once and trains the expert alone on them (`flow_loss_on_features`)."""
        if self.config.action_head != "flow":
            raise ValueError(f"prefix features feed the flow expert; this policy's action_head is "
                             f"{self.config.action_head!r}")
        self._check_batch(batch, with_action=False)
        prefix = self._encode_prefix(batch)
        kv = self._prefix_kv(prefix)
        return {"keys": torch.stack([key for key, _ in kv], 1), "values": torch.stack([value for _, value in kv], 1),
                "attention_mask": prefix.attention_mask, "next_position": prefix.next_position}

    def flow_loss_on_features(self, features: dict[str, Tensor], actions: Tensor, valid: Tensor) -> Tensor:
        """Per-sample flow loss from `prefix_features` (possibly cached): the same as `forward`'s for the
        same noise and times, without running the VLM."""
        mask, rope = self.expert_inputs(features["attention_mask"], features["next_position"])
        keys, values = features["keys"], features["values"]
        prefix_kv = [(keys[:, i], values[:, i]) for i in range(keys.shape[1])]
        return self._flow_loss_on_kv(prefix_kv, mask, rope, actions, valid)

    def _flow_loss(self, prefix: Prefix, actions: Tensor, valid: Tensor) -> tuple[Tensor, dict]:
        mask, rope = self._expert_inputs(prefix)
        return self._flow_loss_on_kv(self._prefix_kv(prefix), mask, rope, actions, valid), {}

    def _flow_loss_on_kv(self, prefix_kv: list[tuple[Tensor, Tensor]], mask: Tensor, rope: tuple[Tensor, Tensor],
                         actions: Tensor, valid: Tensor) -> Tensor:
        cfg = self.config
        k = cfg.flow_samples_per_obs
        if k > 1:  # several (noise, time) draws share one VLM pass: the expensive prefix is computed once
            rep = lambda x: x.repeat_interleave(k, dim=0)  # noqa: E731
            actions, valid, mask = rep(actions), rep(valid), rep(mask)
            rope = tuple(r.repeat_interleave(k, dim=r.dim() - 3) for r in rope)  # mRoPE: (3, B, T, d)
            prefix_kv = [(rep(key), rep(value)) for key, value in prefix_kv]
        actions = actions.float()
        noise = sample_noise(actions.shape, actions.device)
        time = sample_time_beta(actions.shape[0], actions.device, alpha=cfg.time_beta_alpha, beta=cfg.time_beta_beta,
                                scale=TIME_SCALE, offset=TIME_OFFSET)
        t = time[:, None, None]
        x_t = t * noise + (1 - t) * actions
        velocity = self.expert(x_t, time, prefix_kv, mask, rope)
        err = ((velocity - (noise - actions)) ** 2).mean(-1)  # (B·k, T)
        per_sample = (err * valid).sum(1) / valid.sum(1).clamp(min=1)
        return per_sample.view(-1, k).mean(1)

    def _sample_flow(self, prefix: Prefix, noise: Tensor | None, inference_delay: int | None = None,
                     prev_chunk_left_over: Tensor | None = None, execution_horizon: int | None = None) -> Tensor:
        """Euler from noise at t=1 to actions at t=0. With the cache the VLM runs once per chunk.

        LeRobot's `euler_integrate` with its RTC hook, as pi0/SmolVLA: with RTC enabled and a left-over,
        each step's velocity is RTCProcessor.denoise_step's guided one.
        """
        shape = (prefix.input_ids.shape[0], self.config.chunk_size, self.config.action_dim)
        if noise is None:
            noise = sample_noise(shape, prefix.input_ids.device) * self.config.inference_noise_scale
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape (B, chunk_size, action_dim) = {shape}, got {tuple(noise.shape)}")
        if prev_chunk_left_over is not None:
            if prev_chunk_left_over.ndim not in (2, 3) or prev_chunk_left_over.shape[-1] != shape[2]:
                raise ValueError(f"prev_chunk_left_over must have shape (T, {shape[2]}) or (B, T, {shape[2]}), got "
                                 f"{tuple(prev_chunk_left_over.shape)}")
            # LeRobot's RTC engine pads the left-over with zeros to execution_horizon, which may exceed our chunk;
            # steps past the chunk guide nothing, and RTCProcessor needs it no longer than the chunk.
            prev_chunk_left_over = prev_chunk_left_over[..., : shape[1], :].to(noise.device, torch.float32)
            if self._rtc_enabled() and inference_delay is None:
                raise ValueError("RTC needs inference_delay (actions executed while this chunk is computed) "
                                 "together with prev_chunk_left_over")
        mask, rope = self._expert_inputs(prefix)
        cached = self._prefix_kv(prefix) if self.config.use_prefix_cache else None

        def velocity(x_t: Tensor, time: Tensor) -> Tensor:
            # RTC's guidance runs this under enable_grad but differentiates only x_t - t·v_t with respect to
            # x_t (v_t is computed before x_t requires grad), so no graph through the network is needed.
            with torch.no_grad():
                # Without the cache the whole prefix (vision tower and LLM) is recomputed at every step.
                kv = cached if cached is not None else self._prefix_kv(prefix)
                return self.expert(x_t, time, kv, mask, rope)

        return euler_integrate(velocity, noise.float(), self.config.num_steps, rtc_processor=self.rtc_processor,
                               rtc_enabled=self._rtc_enabled(), inference_delay=inference_delay,
                               prev_chunk_left_over=prev_chunk_left_over, execution_horizon=execution_horizon)

    # --- training setup, checks, checkpoints -------------------------------------------------------

    def _set_trainable(self) -> None:
        cfg = self.config
        llm = self.vlm.model.language_model
        if cfg.lora_rank > 0:
            add_lora(self.vlm, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
        llm_trainable = not (cfg.freeze_llm or cfg.lora_rank > 0)
        for name, param in llm.named_parameters():
            param.requires_grad_(llm_trainable or "lora_" in name)
        # lm_head is never decoded from (the tokens head has its own rows, the flow head its expert); when it
        # is tied to the input embeddings it is that same tensor and follows the LLM
        if self.vlm.lm_head.weight is not self.vlm.get_input_embeddings().weight:
            self.vlm.lm_head.requires_grad_(False)
        self.vlm.model.visual.requires_grad_(not cfg.freeze_vision)
        if cfg.gradient_checkpointing:
            # The flow expert reads the LLM's KV cache, which HF drops under checkpointing: only the ViT then.
            target = self.vlm if cfg.action_head == "tokens" else self.vlm.model.visual
            target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _check_batch(self, batch: dict, with_action: bool) -> None:
        """Clear errors, naming the key and the expected shape, before anything reaches the VLM."""
        tasks = batch.get(TASK)
        if tasks is None or isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks):
            raise KeyError(f"batch['{TASK}'] must be a list of B instruction strings, got {type(tasks).__name__}")
        b = len(tasks)
        # Cameras are resized to image_size, so only their channel count is fixed.
        expected = {key: (b, 3, None, None) for key in self.config.image_features}
        if self.config.state_dim is not None:
            expected[OBS_STATE] = (b, self.config.state_dim)
        if with_action:
            expected[ACTION] = (b, self.config.chunk_size, self.config.action_dim)
        for key, shape in expected.items():
            shown = "(" + ", ".join("?" if n is None else str(n) for n in shape) + ")"
            if key not in batch:
                raise KeyError(f"batch is missing '{key}' (expected shape {shown}); it has {sorted(batch)}")
            value = batch[key]
            if value.ndim != len(shape) or any(n is not None and n != m for n, m in zip(shape, value.shape)):
                raise ValueError(f"batch['{key}'] has shape {tuple(value.shape)}, expected {shown}")
            if torch.isnan(value).any():
                raise ValueError(f"batch['{key}'] contains NaN")

    def _save_pretrained(self, save_directory: Path, state_dict: dict[str, Tensor] | None = None) -> None:
        """LeRobot's files plus the backbone's Qwen config and processor, so the folder rebuilds offline."""
        super()._save_pretrained(save_directory, state_dict=state_dict)
        self.vlm.config.save_pretrained(str(save_directory / BACKBONE_DIR))
        self.processor.save_pretrained(str(save_directory / BACKBONE_DIR))

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path: str | Path, *, config: PreTrainedConfig | None = None,
                        **kwargs) -> VSTVLAPolicy:
        """Load a local checkpoint folder; the backbone skeleton comes from its `backbone/` (weights from
        model.safetensors), so the original backbone_path is not needed."""
        folder = Path(pretrained_name_or_path)
        if not folder.is_dir():  # a hub id: LeRobot's loader; presets still rebuild from config.json alone
            return super().from_pretrained(pretrained_name_or_path, config=config, **kwargs)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {folder}: not a LeRobot policy checkpoint")
        saved = json.loads((folder / "config.json").read_text())
        if saved.get("type") != cls.name:
            raise ValueError(f"{folder} is not a vst_vla checkpoint: its config.json has type "
                             f"{saved.get('type')!r} (expected 'vst_vla')")
        if config is None:
            config = PreTrainedConfig.from_pretrained(folder)
        saved_action = saved.get("output_features", {}).get(ACTION, {}).get("shape")
        if saved_action is not None and config.action_feature is not None \
                and tuple(saved_action) != tuple(config.action_feature.shape):
            raise ValueError(f"{folder} predicts '{ACTION}' of shape {tuple(saved_action)}, but the dataset/config "
                             f"asks for {tuple(config.action_feature.shape)}")
        backbone_dir = folder / BACKBONE_DIR
        return super().from_pretrained(folder, config=config,
                                       backbone_dir=backbone_dir if backbone_dir.is_dir() else None, **kwargs)


class ActionExpert(nn.Module):
    """The flow head's transformer over the T noisy action tokens.

    It borrows the VLM's attention geometry (head_dim, key/value heads) so that its layer i can
    concatenate the cached prefix keys/values of VLM layer `vlm_layers[i]` in front of its own, as in
    pi0: the action tokens attend to the whole valid prefix and to each other (not causal); the
    prefix never attends to them, which is what lets it be computed once per chunk.
    """

    def __init__(self, action_dim: int, width: int, num_layers: int, num_heads: int, text_config):
        super().__init__()
        vlm_layers, kv_heads = text_config.num_hidden_layers, text_config.num_key_value_heads
        head_dim = text_config.hidden_size // text_config.num_attention_heads
        if not 1 <= num_layers <= vlm_layers:
            raise ValueError(f"expert_num_layers must be in [1, {vlm_layers}] (VLM layers), got {num_layers}")
        if num_heads % kv_heads:
            raise ValueError(f"expert_num_heads ({num_heads}) must be a multiple of the VLM's {kv_heads} "
                             "key/value heads")
        if width % 2:
            raise ValueError(f"expert_hidden_size must be even (sinusoidal time embedding), got {width}")
        # Spread the expert over the VLM's depth, always ending at its last layer.
        self.vlm_layers = [(i + 1) * vlm_layers // num_layers - 1 for i in range(num_layers)]
        self.mrope_section = text_config.rope_parameters["mrope_section"]
        self.width = width
        self.action_in = nn.Linear(action_dim, width)
        self.time_mlp = nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, width))
        self.layers = nn.ModuleList(
            ExpertLayer(width, num_heads, kv_heads, head_dim, text_config.rms_norm_eps) for _ in range(num_layers))
        self.norm = nn.RMSNorm(width, eps=text_config.rms_norm_eps)
        self.action_out = nn.Linear(width, action_dim)

    def forward(self, x_t: Tensor, time: Tensor, prefix_kv: list[tuple[Tensor, Tensor]], mask: Tensor,
                rope: tuple[Tensor, Tensor]) -> Tensor:
        """Velocity (B, T, A) at noisy actions x_t (B, T, A) and times (B,)."""
        tokens = self.action_in(x_t)
        time_emb = create_sinusoidal_pos_embedding(time, self.width, TIME_MIN_PERIOD, TIME_MAX_PERIOD,
                                                   device=time.device).to(tokens.dtype)
        h = self.time_mlp(torch.cat([tokens, time_emb[:, None].expand_as(tokens)], dim=-1))
        for layer, (keys, values) in zip(self.layers, prefix_kv, strict=True):
            h = layer(h, keys, values, mask, rope, self.mrope_section)
        return self.action_out(self.norm(h))


class ExpertLayer(nn.Module):
    """Pre-norm block: joint attention over [cached prefix K/V ; own K/V], then a SwiGLU MLP."""

    def __init__(self, width: int, num_heads: int, kv_heads: int, head_dim: int, eps: float):
        super().__init__()
        self.head_dim = head_dim
        self.input_norm = nn.RMSNorm(width, eps=eps)
        self.q_proj = nn.Linear(width, num_heads * head_dim)
        self.k_proj = nn.Linear(width, kv_heads * head_dim)
        self.v_proj = nn.Linear(width, kv_heads * head_dim)
        self.o_proj = nn.Linear(num_heads * head_dim, width, bias=False)
        self.post_norm = nn.RMSNorm(width, eps=eps)
        self.gate_proj = nn.Linear(width, 4 * width, bias=False)
        self.up_proj = nn.Linear(width, 4 * width, bias=False)
        self.down_proj = nn.Linear(4 * width, width, bias=False)

    def forward(self, h: Tensor, prefix_keys: Tensor, prefix_values: Tensor, mask: Tensor,
                rope: tuple[Tensor, Tensor], mrope_section: list[int]) -> Tensor:
        b, t, _ = h.shape
        x = self.input_norm(h)
        q = self.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        q, k = apply_multimodal_rotary_pos_emb(q, k, *rope, mrope_section)
        k = torch.cat([prefix_keys.to(k.dtype), k], dim=2)
        v = torch.cat([prefix_values.to(v.dtype), v], dim=2)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        h = h + self.o_proj(attn.transpose(1, 2).reshape(b, t, -1))
        x = self.post_norm(h)
        return h + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# --- helpers -----------------------------------------------------------------------------------------


class ActionTokens(nn.Module):
    """The tokens head's 256 action tokens: input embeddings and output rows of their own.

    Both start distinct: input rows at the scale of the vocabulary's embeddings (so they look like
    tokens to the LLM), output rows random, so no two bins begin with the same logit.
    """

    def __init__(self, n_bins: int, vocab_embeddings: Tensor, seed: int = 0):
        super().__init__()
        width = vocab_embeddings.shape[1]
        g = torch.Generator().manual_seed(seed + 17)
        ref = vocab_embeddings.detach().float().cpu()
        self.input = nn.Parameter(ref.mean(0) + ref.std() * torch.randn(n_bins, width, generator=g))
        self.output = nn.Parameter(torch.randn(n_bins, width, generator=g) / width**0.5)

    def embed(self, bins: Tensor) -> Tensor:
        return F.embedding(bins, self.input)

    def logits(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.output.to(hidden.dtype))


def quantize(actions: Tensor, n_bins: int) -> Tensor:
    """Normalised actions in [-1, 1] → uniform bin indices in [0, n_bins); values outside are clipped."""
    return ((actions.clamp(-1, 1) + 1) / 2 * n_bins).floor().long().clamp(0, n_bins - 1)


def dequantize(bins: Tensor, n_bins: int) -> Tensor:
    """Bin indices → bin centres in [-1, 1] (error ≤ half a bin, 1 / n_bins, inside [-1, 1])."""
    return -1 + (bins.float() + 0.5) * 2 / n_bins


def load_backbone(config: VSTVLAConfig, backbone_dir: str | Path | None) -> Backbone:
    """A fresh backbone from the config (preset or backbone_path), or the skeleton a checkpoint saved.

    The skeleton is randomly initialised: the policy's model.safetensors holds the trained weights.
    """
    # no vocabulary action tokens: the tokens head keeps its own rows (ActionTokens)
    if backbone_dir is None:
        return build_backbone(BackboneConfig(
            preset=config.backbone_preset, pretrained_path=config.backbone_path, device=config.device,
            dtype=config.backbone_dtype, attn_implementation=config.attn_implementation,
            action_tokens=0, seed=config.backbone_seed, absolute_positions=config.backbone_absolute_positions))
    device = resolve_device(config.device)
    qwen_config = Qwen2_5_VLConfig.from_pretrained(str(backbone_dir), local_files_only=True)
    model = Qwen2_5_VLForConditionalGeneration._from_config(
        qwen_config, dtype=resolve_dtype(config.backbone_dtype, device),
        attn_implementation=config.attn_implementation)
    processor = AutoProcessor.from_pretrained(str(backbone_dir), local_files_only=True)
    if uses_absolute_positions(model):  # the hook is code, not weights: re-install it on the skeleton
        install_absolute_positions(model)
    model = model.to(device).eval()
    return Backbone(model=model, processor=processor, action_token_ids=[])


def check_dataset_features(config: VSTVLAConfig, dataset_features: dict) -> None:
    """The dataset must provide every camera and the state the config reads, and the same action size."""
    features = dataset_to_policy_features(dataset_features)
    cameras = sorted(k for k, f in features.items() if k.startswith("observation.images."))
    for key, feature in config.image_features.items():
        if key not in features:
            raise ValueError(f"the policy reads camera '{key}' (shape {tuple(feature.shape)}), which the dataset "
                             f"lacks; its cameras are {cameras}")
    wanted = {OBS_STATE: config.robot_state_feature, ACTION: config.action_feature}
    for key, feature in wanted.items():
        if feature is None:
            continue
        if key not in features:
            raise ValueError(f"the policy needs '{key}' of shape {tuple(feature.shape)}, which the dataset lacks")
        if tuple(features[key].shape) != tuple(feature.shape):
            raise ValueError(f"'{key}' has shape {tuple(features[key].shape)} in the dataset but "
                             f"{tuple(feature.shape)} in the policy config")
