"""Processors of `vst_vla_remote`: identity but for LeRobot's rename, batch and device steps.

Normalisation, relative actions and everything else of the served checkpoint run on the server, on
the raw frame, exactly as they would in-process. `lerobot-rollout` overrides the steps named
`rename_observations_processor` and `device_processor`, so both are here.
"""

from __future__ import annotations

from typing import Any

from lerobot.processor import (
    AddBatchDimensionProcessorStep,
    DeviceProcessorStep,
    PolicyAction,
    PolicyProcessorPipeline,
    RenameObservationsProcessorStep,
    make_policy_processor_pipelines,
)

from .configuration_vst_vla_remote import VSTVLARemoteConfig


def make_vst_vla_remote_pre_post_processors(
    config: VSTVLARemoteConfig,
    dataset_stats: dict[str, dict[str, Any]] | None = None,  # noqa: ARG001  (the server has the statistics)
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    return make_policy_processor_pipelines(
        input_steps=[RenameObservationsProcessorStep(rename_map={}), AddBatchDimensionProcessorStep(),
                     DeviceProcessorStep(device=config.device)],
        output_steps=[DeviceProcessorStep(device="cpu")],
    )
