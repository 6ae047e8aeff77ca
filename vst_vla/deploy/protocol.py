"""The wire protocol v1 (defined in the policy plugin, which installs without vst_vla): re-exported."""

from lerobot_policy_vst_vla.remote.protocol import *  # noqa: F403
from lerobot_policy_vst_vla.remote.protocol import __doc__ as __doc__  # noqa: F401
