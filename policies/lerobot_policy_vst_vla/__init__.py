"""VST-VLA LeRobot policy plugin (policy type `vst_vla`).

Importing the package registers the type, so `lerobot-train --policy.type=vst_vla` and
`lerobot-eval --policy.path=<checkpoint>` find it (the CLIs import every installed `lerobot_policy_*`).
It also registers `vst_vla_remote` (remote/): a policy served over the network by `vst-vla serve`.
"""

from .configuration_vst_vla import VSTVLAConfig
from .modeling_vst_vla import VSTVLAPolicy
from .processor_vst_vla import make_vst_vla_pre_post_processors
from .remote import VSTVLARemoteConfig, VSTVLARemotePolicy, make_vst_vla_remote_pre_post_processors

__all__ = ["VSTVLAConfig", "VSTVLAPolicy", "VSTVLARemoteConfig", "VSTVLARemotePolicy",
           "make_vst_vla_pre_post_processors", "make_vst_vla_remote_pre_post_processors"]
