"""Real-time chunking (RTC) of the vst_vla flow head through LeRobot's RTCProcessor and euler_integrate.

What LeRobot 0.6.1's RTC promises (policies/rtc/modeling_rtc.py): no left-over, no guidance; with one,
the new chunk is inpainted onto it with weight 1 for the first `inference_delay` steps, falling linearly
to 0 at `execution_horizon`, 0 after. The tokens head has no denoising steps and refuses RTC.
"""

import pytest
import torch
from lerobot.configs import PreTrainedConfig
from lerobot.policies.common.flow_matching import euler_integrate
from lerobot.policies.rtc.configuration_rtc import RTCConfig
from lerobot.rollout.inference.rtc import supports_rtc_inference
from test_policy import ACTION_DIM, make_batch, make_config

from lerobot_policy_vst_vla import VSTVLAPolicy

CHUNK = 8
HORIZON = 6


def observation(cfg, seed: int = 0) -> dict:
    batch = make_batch(cfg, seed=seed)
    batch.pop("action")
    return batch


def fixed_noise(batch_size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch_size, CHUNK, ACTION_DIM, generator=torch.Generator().manual_seed(seed))


def with_rtc(policy: VSTVLAPolicy, rtc: RTCConfig | None) -> VSTVLAPolicy:
    """What lerobot-rollout does for --inference.type=rtc (rollout/context.py)."""
    policy.config.rtc_config = rtc
    policy.init_rtc_processor()
    return policy


@pytest.fixture(scope="module")
def flow():
    torch.manual_seed(0)
    return VSTVLAPolicy(make_config("flow", chunk_size=CHUNK)).eval()


@pytest.fixture(scope="module")
def tokens():
    torch.manual_seed(0)
    return VSTVLAPolicy(make_config("tokens")).eval()


@torch.no_grad()
def reference_chunk(policy: VSTVLAPolicy, batch: dict, noise: torch.Tensor) -> torch.Tensor:
    """The flow head's sampling before RTC existed: plain Euler on the cached prefix."""
    prefix = policy._encode_prefix(batch)
    mask, rope = policy._expert_inputs(prefix)
    kv = policy._prefix_kv(prefix)
    return euler_integrate(lambda x_t, t: policy.expert(x_t, t, kv, mask, rope), noise.float(),
                           policy.config.num_steps)


def test_without_a_left_over_rtc_is_bit_identical_to_the_plain_path(flow):
    batch, noise = observation(flow.config), fixed_noise(2)
    with_rtc(flow, None)
    plain = flow.predict_action_chunk(batch, noise=noise)
    assert torch.equal(plain, reference_chunk(flow, batch, noise))
    with_rtc(flow, RTCConfig(execution_horizon=HORIZON))
    assert torch.equal(flow.predict_action_chunk(batch, noise=noise), plain)
    # the first RTC call of a rollout: a delay but nothing left over yet
    assert torch.equal(flow.predict_action_chunk(batch, noise=noise, inference_delay=3, prev_chunk_left_over=None),
                       plain)
    # --inference.rtc.enabled=false: the engine still passes a left-over, which is ignored (as pi0 does)
    with_rtc(flow, RTCConfig(enabled=False, execution_horizon=HORIZON))
    leftover = fixed_noise(2, seed=2)
    assert torch.equal(flow.predict_action_chunk(batch, noise=noise, inference_delay=3,
                                                 prev_chunk_left_over=leftover), plain)
    flow.select_action(batch)  # the sync path is untouched


@pytest.mark.parametrize("delay", [0, 2, 4])
def test_with_a_left_over_the_first_delay_actions_follow_it(flow, delay):
    batch, noise = observation(flow.config), fixed_noise(2)
    leftover = fixed_noise(2, seed=2)  # far from what this noise samples on its own
    with_rtc(flow, None)
    plain = flow.predict_action_chunk(batch, noise=noise)
    with_rtc(flow, RTCConfig(execution_horizon=HORIZON))
    guided = flow.predict_action_chunk(batch, noise=noise, inference_delay=delay, prev_chunk_left_over=leftover)
    per_step = lambda x: x.abs().amax(dim=(0, 2))  # noqa: E731  (B, T, A) -> (T,) worst error over batch and joints
    to_leftover, plain_to_leftover, moved = per_step(guided - leftover), per_step(plain - leftover), per_step(guided - plain)
    assert (plain_to_leftover > 1).all()  # the test means something: unguided, the chunk is elsewhere
    # weight 1: the executed-while-inferring steps land on the left-over (a small fraction of the plain gap)
    assert (to_leftover[:delay] <= 0.05 * plain_to_leftover[:delay]).all(), to_leftover
    # the ramp from the delay to the horizon is pulled, but not all the way at its end
    assert (to_leftover[delay:HORIZON] < plain_to_leftover[delay:HORIZON]).all()
    assert to_leftover[HORIZON - 1] > to_leftover[: max(delay, 1)].max()
    # weight 0 past the horizon: guidance leaves those steps where the plain sample puts them (they only
    # move through the expert's attention to the guided steps)
    assert (moved[HORIZON:] <= 0.1 * plain_to_leftover[HORIZON:]).all(), moved


def test_left_over_as_the_rollout_engine_passes_it(flow):
    """LeRobot's RTC engine passes a (T, A) left-over zero-padded to execution_horizon, which may exceed the chunk."""
    batch, noise = observation(flow.config, seed=3), fixed_noise(2)
    batch = {k: v[:1] for k, v in batch.items()}
    noise = noise[:1]
    leftover = fixed_noise(1, seed=2)[0, :5]  # 5 steps left of the previous chunk
    engine_view = torch.cat([leftover, torch.zeros(CHUNK + 4 - 5, ACTION_DIM)])  # horizon CHUNK+4 > chunk
    with_rtc(flow, RTCConfig(execution_horizon=CHUNK + 4))
    assert supports_rtc_inference(flow)  # lerobot-rollout's own check: supports_rtc and the call signature
    guided = flow.predict_action_chunk(batch, noise=noise, inference_delay=2, prev_chunk_left_over=engine_view)
    trimmed = flow.predict_action_chunk(batch, noise=noise, inference_delay=2,
                                        prev_chunk_left_over=engine_view[None, :CHUNK])
    assert guided.shape == (1, CHUNK, ACTION_DIM) and torch.equal(guided, trimmed)
    assert (guided[0, :2] - leftover[:2]).abs().max() < 0.05
    # an explicit execution_horizon overrides the config's, as in LeRobot's RTCProcessor
    explicit = flow.predict_action_chunk(batch, noise=noise, inference_delay=2, prev_chunk_left_over=engine_view,
                                         execution_horizon=3)
    with_rtc(flow, RTCConfig(execution_horizon=3))
    assert torch.equal(explicit, flow.predict_action_chunk(batch, noise=noise, inference_delay=2,
                                                           prev_chunk_left_over=engine_view))
    assert not torch.equal(explicit, guided)
    with pytest.raises(ValueError, match="inference_delay"):
        flow.predict_action_chunk(batch, noise=noise, prev_chunk_left_over=engine_view)
    with pytest.raises(ValueError, match="prev_chunk_left_over must have shape"):
        flow.predict_action_chunk(batch, noise=noise, inference_delay=1, prev_chunk_left_over=leftover[:, :3])
    with_rtc(flow, None)


def test_tokens_head_stays_synchronous(tokens, flow):
    assert flow.supports_rtc() and not tokens.supports_rtc()
    assert not supports_rtc_inference(tokens)  # lerobot-rollout --inference.type=rtc refuses it up front
    batch = observation(tokens.config)
    for rtc in ({"prev_chunk_left_over": torch.zeros(2, ACTION_DIM)}, {"inference_delay": 1},
                {"execution_horizon": 4}):
        with pytest.raises(ValueError, match="tokens head does not support real-time chunking"):
            tokens.predict_action_chunk(batch, **rtc)
    assert tokens.predict_action_chunk(batch).shape == (2, tokens.config.chunk_size, ACTION_DIM)
    with pytest.raises(ValueError, match="real-time chunking needs the flow head"):
        make_config("tokens", rtc_config=RTCConfig())
    make_config("tokens", rtc_config=RTCConfig(enabled=False))  # disabled is harmless


def test_rtc_config_survives_a_checkpoint(tmp_path):
    cfg = make_config("flow", rtc_config=RTCConfig(execution_horizon=5, max_guidance_weight=3.0))
    cfg.save_pretrained(tmp_path)
    loaded = PreTrainedConfig.from_pretrained(tmp_path)
    assert loaded.rtc_config == cfg.rtc_config
    assert make_config("flow").rtc_config is None  # checkpoints without the field load as before
