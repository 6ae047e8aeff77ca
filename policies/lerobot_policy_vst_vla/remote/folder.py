"""Make a `vst_vla_remote` policy folder from a running server's hello, checked against a robot.

`lerobot-rollout` needs `--policy.path`: this writes one (config.json of type `vst_vla_remote` with
the served policy's features, action names, chunk size and fps, plus identity processors). With
`robot_type`, the hello is first checked against that robot's features (state size, cameras, action
keys and their order), so a mismatch fails here, before any motion. The token is never written.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lerobot.configs.types import FeatureType, PolicyFeature

from .client import PolicyClient
from .configuration_vst_vla_remote import VSTVLARemoteConfig
from .processor_vst_vla_remote import make_vst_vla_remote_pre_post_processors
from .protocol import TOKEN_ENV, check_hello_against_robot

logger = logging.getLogger(__name__)


def robot_features(robot_type: str) -> tuple[dict, dict]:
    """(observation_features, action_features) of a robot type with its default config, not connected."""
    from lerobot.robots import RobotConfig, make_robot_from_config
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()
    try:
        robot = make_robot_from_config(RobotConfig.get_choice_class(robot_type)())
    except TypeError as err:
        raise ValueError(f"robot type {robot_type!r} needs arguments to be built ({err}); check its features "
                         "with lerobot_policy_vst_vla.remote.protocol.check_hello_against_robot instead") from None
    return robot.observation_features, robot.action_features


def config_from_hello(hello: dict, host: str, port: int, robot_type: str | None = None, **fields) -> VSTVLARemoteConfig:
    def feats(group: dict) -> dict:
        return {k: PolicyFeature(FeatureType(v["type"]), tuple(v["shape"])) for k, v in group.items()}

    return VSTVLARemoteConfig(host=host, port=port, input_features=feats(hello["input_features"]),
                              output_features=feats(hello["output_features"]),
                              action_feature_names=hello.get("action_names"), chunk_size=hello["chunk_size"],
                              n_action_steps=hello["n_action_steps"], fps=hello["fps"],
                              server_policy_type=hello["policy_type"], robot_type=robot_type, device="cpu",
                              push_to_hub=False, **fields)


def write_remote_policy_folder(out: str | Path, host: str, port: int, token: str, robot_type: str | None = None,
                               robot_feature_dicts: tuple[dict, dict] | None = None, **fields) -> Path:
    """Ask the server for its hello, check it against the robot, write the folder; returns its path."""
    client = PolicyClient(host, port, token, connect_timeout_s=fields.get("connect_timeout_s", 5.0))
    try:
        hello = client.connect()
    finally:
        client.close()
    if robot_feature_dicts is None and robot_type:
        robot_feature_dicts = robot_features(robot_type)
    if robot_feature_dicts is not None:
        problems = check_hello_against_robot(hello, *robot_feature_dicts)
        if problems:
            raise ValueError(f"the policy served at {host}:{port} does not fit robot {robot_type!r}:\n  "
                             + "\n  ".join(problems))
    else:
        logger.warning("no robot type given: the served policy's features were not checked against a robot")
    config = config_from_hello(hello, host, port, robot_type, **fields)
    config.token = None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config._save_pretrained(out)
    pre, post = make_vst_vla_remote_pre_post_processors(config)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse
    import os

    parser = argparse.ArgumentParser(prog="python -m lerobot_policy_vst_vla.remote", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", required=True, help="the folder to write (pass it as --policy.path)")
    parser.add_argument("--robot_type", default=None, help="check the server's hello against this robot type")
    parser.add_argument("--token_env", default=TOKEN_ENV, help="environment variable holding the token")
    args = parser.parse_args(argv)
    token = os.environ.get(args.token_env, "")
    if not token:
        raise SystemExit(f"set ${args.token_env} to the server's token")
    print(write_remote_policy_folder(args.out, args.host, args.port, token, args.robot_type))
