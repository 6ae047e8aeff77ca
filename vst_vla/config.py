"""Hydra configs → typed dataclasses.

Every stage has a YAML file under `configs/` (hydra syntax, defaults lists allowed) and a dataclass
schema next to its code. `load_config` composes the YAML with command-line overrides
(`key=value`, `+new=value`, `group=option`) and validates the result against the schema, so a typo
in a key is an error that names the key, not a silently ignored setting.
"""

from __future__ import annotations

from dataclasses import is_dataclass
from pathlib import Path
from typing import TypeVar

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

T = TypeVar("T")


def load_config(name: str, schema: type[T], overrides: list[str] | None = None) -> T:
    """Compose `configs/<name>.yaml` with `overrides` and return it as an instance of `schema`."""
    if not is_dataclass(schema):
        raise TypeError(f"schema for config {name!r} must be a dataclass, got {schema!r}")
    if not (CONFIG_DIR / f"{name}.yaml").is_file():
        raise FileNotFoundError(f"no config {name!r}: expected {CONFIG_DIR / (name + '.yaml')}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides or []))
    structured = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(structured, cfg)
    except (ConfigKeyError, ValidationError) as err:
        raise ValueError(f"config {name!r}: {err}") from err
    return OmegaConf.to_object(merged)
