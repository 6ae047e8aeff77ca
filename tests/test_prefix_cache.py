"""The frozen-VLM expert phase trains on cached prefix features: the same loss as end-to-end training."""

import pytest
import torch
from test_policy import make_batch, make_config

from lerobot_policy_vst_vla import VSTVLAPolicy
from vst_vla.policy.prefix_cache import PrefixCache, _left_pad, freeze_all_but_expert


@pytest.fixture(scope="module")
def flow():
    torch.manual_seed(0)
    return VSTVLAPolicy(make_config("flow", flow_samples_per_obs=2))


def test_cached_features_give_the_end_to_end_loss(flow):
    """For the same noise and times, the loss on `prefix_features` equals `forward`'s per-sample loss, also
    after a float16 round trip and left padding to a longer prefix (as the cache stores them)."""
    batch = make_batch(flow.config, seed=3)
    valid = torch.ones(batch["action"].shape[:2], dtype=torch.bool)  # make_batch pads nothing
    torch.manual_seed(7)
    reference, _ = flow.forward(batch, reduction="none")
    features = flow.prefix_features(batch)
    torch.manual_seed(7)
    exact = flow.flow_loss_on_features(features, batch["action"], valid)
    torch.testing.assert_close(exact, reference, rtol=1e-5, atol=1e-6)

    longer = features["attention_mask"].shape[1] + 5
    cache = PrefixCache(keys=_left_pad(features["keys"].half(), longer, 3),
                        values=_left_pad(features["values"].half(), longer, 3),
                        attention_mask=_left_pad(features["attention_mask"].bool(), longer, 1),
                        next_position=features["next_position"], action=batch["action"], valid=valid)
    cached, actions, cached_valid = cache.batch(torch.arange(len(cache)))
    torch.manual_seed(7)
    from_cache = flow.flow_loss_on_features(cached, actions, cached_valid)
    torch.testing.assert_close(from_cache, reference, rtol=2e-2, atol=2e-3)  # float16 keys and values


def test_tokens_head_has_no_prefix_features():
    policy = VSTVLAPolicy(make_config("tokens"))
    with pytest.raises(ValueError, match="flow expert"):
        policy.prefix_features(make_batch(policy.config))


def test_only_the_expert_trains():
    torch.manual_seed(0)
    policy = VSTVLAPolicy(make_config("flow"))
    params = freeze_all_but_expert(policy)
    trainable = {id(p) for p in policy.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in policy.expert.parameters()} == {id(p) for p in params}
