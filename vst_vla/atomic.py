"""Atomic writes: every file or folder vst-vla writes appears whole or not at all.

Each helper writes into a sibling temporary and swaps it in with `os.replace`, so an interrupted run
(Ctrl-C, OOM, a full disk) never leaves a half-written cache, checkpoint or dataset file behind.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_gz_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with gzip.open(tmp, "wt") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """`np.savez` to `path` (parents created); the temporary keeps the `.npz` suffix numpy insists on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def save_atomic(write: Callable[[str], object], dest: Path) -> None:
    """`write(folder)` into a hidden sibling, then swap it in: an interrupted save never leaves half a `dest`."""
    tmp = dest.with_name("." + dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(str(tmp))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
