"""Pre/post-processing pipelines of the VST-VLA policy.

The policy itself turns cameras and the task string into Qwen inputs (it owns the backbone's
tokenizer and image geometry, so a checkpoint needs nothing else), hence the pipelines are LeRobot's
canonical steps: rename → batch → device → relative actions → normalise, and unnormalise → absolute
actions → cpu. The step names
(`rename_observations_processor`, `device_processor`, `normalizer_processor`,
`unnormalizer_processor`) are what the lerobot scripts override.
"""

from __future__ import annotations

import logging
from typing import Any

from lerobot.configs import NormalizationMode
from lerobot.processor import (
    AbsoluteActionsProcessorStep,
    PolicyAction,
    PolicyProcessorPipeline,
    RelativeActionsProcessorStep,
    make_default_policy_processor_steps,
    make_policy_processor_pipelines,
)

from .configuration_vst_vla import VSTVLAConfig

log = logging.getLogger(__name__)


def make_vst_vla_pre_post_processors(
    config: VSTVLAConfig,
    dataset_stats: dict[str, dict[str, Any]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    steps = make_default_policy_processor_steps(config, with_quantile_fallback(config, dataset_stats))
    # OpenPI's order: raw → relative → normalise → model → unnormalise → absolute
    relative = RelativeActionsProcessorStep(enabled=config.use_relative_actions,
                                            exclude_joints=list(config.relative_exclude_joints),
                                            action_names=config.action_feature_names)
    return make_policy_processor_pipelines(
        input_steps=[steps.rename_observations, steps.add_batch_dim, steps.to_device, relative, steps.normalize],
        output_steps=[steps.unnormalize, AbsoluteActionsProcessorStep(enabled=config.use_relative_actions,
                                                                      relative_step=relative), steps.to_cpu],
    )


def with_quantile_fallback(config: VSTVLAConfig, stats: dict | None) -> dict | None:
    """Quantile normalisation needs q01/q99; LeRobot ≥ 0.4 computes them, older datasets may lack them.

    Then min/max stand in (a wider range, so coarser bins) and we say so, rather than failing.
    """
    if stats is None:
        return None
    quantile_types = {t for t, mode in config.normalization_mapping.items() if mode is NormalizationMode.QUANTILES}
    features = {**config.input_features, **config.output_features}
    stats = dict(stats)
    for key, feature in features.items():
        s = stats.get(key)
        if feature.type.value in quantile_types and s is not None and not {"q01", "q99"} <= set(s):
            log.warning("dataset stats of %r have no q01/q99: normalising with min/max instead", key)
            stats[key] = {**s, "q01": s["min"], "q99": s["max"]}
    return stats

