"""Hydra configs → typed dataclasses.

Every stage has a YAML file under `vst_vla/configs/`, shipped inside the package (hydra syntax, defaults lists allowed) and a dataclass
schema next to its code. `load_config` composes the YAML with command-line overrides
(`key=value`, `+new=value`, `group=option`) and validates the result against the schema, so a typo
in a key is an error that names the key, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import is_dataclass
from pathlib import Path
from typing import TypeVar

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # package data: found the same from a wheel

T = TypeVar("T")


def load_config(name: str, schema: type[T], overrides: list[str] | None = None) -> T:
    """Compose `vst_vla/configs/<name>.yaml` with `overrides` and return it as an instance of `schema`."""
    if not is_dataclass(schema):
        raise TypeError(f"schema for config {name!r} must be a dataclass, got {schema!r}")
    if not (CONFIG_DIR / f"{name}.yaml").is_file():
        raise FileNotFoundError(f"no config {name!r}: expected {CONFIG_DIR / (name + '.yaml')}")
    overrides = free_form_overrides(schema, list(overrides or []))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    structured = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(structured, cfg)
    except (ConfigKeyError, ValidationError) as err:
        raise ValueError(f"config {name!r}: {err}") from err
    obj = OmegaConf.to_object(merged)
    for field in _free_form_fields(schema):  # the YAML's dict is the value: never a union with the schema default
        if field in cfg:
            setattr(obj, field, OmegaConf.to_container(cfg[field], resolve=True))
    return obj


def _free_form_fields(schema: type) -> set[str]:
    hints = typing.get_type_hints(schema)
    return {f.name for f in dataclasses.fields(schema) if typing.get_origin(hints.get(f.name)) is dict}


def free_form_overrides(schema: type, overrides: list[str]) -> list[str]:
    """Dict-typed fields (e.g. train-policy's `policy_overrides`) are free-form: `field={...}` replaces the
    YAML's dict and `field.key=value` sets or adds one key. Hydra's struct mode refuses new keys there,
    so those overrides are rewritten to hydra's delete-then-add (`~field`, `+field=...`) and `++` forms."""
    free = _free_form_fields(schema)
    out = []
    for item in overrides:
        key, eq, value = item.partition("=")
        bare = key.lstrip("+~")
        if not eq or key != bare:  # deletions and explicit +/++ forms are the user's own
            out.append(item)
        elif bare in free:
            out += [f"~{bare}", f"+{bare}={value}"]
        elif bare.split(".")[0] in free:
            out.append(f"++{item}")
        else:
            out.append(item)
    return out
