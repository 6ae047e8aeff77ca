"""`vst_vla_remote`: a LeRobot policy type served over the network by `vst-vla serve`.

`protocol` (msgpack over WebSocket, no pickle), `client` (blocking client with timeouts),
`configuration_/modeling_/processor_vst_vla_remote` (the LeRobot policy), `folder` (a `--policy.path`
folder from a server's hello: `python -m lerobot_policy_vst_vla.remote --out DIR ...`).
"""

from .configuration_vst_vla_remote import VSTVLARemoteConfig
from .modeling_vst_vla_remote import VSTVLARemotePolicy
from .processor_vst_vla_remote import make_vst_vla_remote_pre_post_processors

__all__ = ["VSTVLARemoteConfig", "VSTVLARemotePolicy", "make_vst_vla_remote_pre_post_processors"]
