"""Deployment over the network: `vst-vla serve` (server.py) and `vst-vla remote-policy` (remote.py).

The wire protocol and the client live in the policy plugin (`lerobot_policy_vst_vla.remote`), which
must install and import without vst_vla; `protocol` here re-exports them.
"""
