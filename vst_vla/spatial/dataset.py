"""`vst-vla spatial-data`: VST-P / VST-R style spatial QA from the sim, written as a HF dataset.

Layout of `output/` (a `datasets.DatasetDict` saved with `save_to_disk`):
    dataset_dict.json, train/, test/      the two splits in `schema.FEATURES`
    images/<split>/*.png                  every image a sample shows (paths in `images` are relative)
    spatial_data.json                     the config and per-skill counts
`test` is generated from its own fixed seed (`test_seed`), independent of the train settings: it is
the sim spatial benchmark. The folder is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import datasets
from tqdm import tqdm

from vst_vla.spatial.draw import MarkStyle
from vst_vla.spatial.generate import SceneSource, generate_samples
from vst_vla.spatial.perception import SKILLS, GeneratedSample, SceneContext
from vst_vla.spatial.schema import FEATURES


@dataclass
class SpatialDataConfig:
    output: str = "outputs/datasets/vst_spatial"
    skills: list[str] = field(default_factory=lambda: list(SKILLS))
    samples_per_skill: int = 100  # train
    test_samples_per_skill: int = 30  # the held-out sim spatial benchmark
    image_width: int = 320
    image_height: int = 240
    seed: int = 0
    test_seed: int = 1234
    cot_fraction: float = 0.2  # of rule-checkable train samples: CoT answers (VST-R cold start)
    rl_fraction: float = 0.1  # of rule-checkable train samples: the RL subset
    max_per_scene: int = 3  # questions per skill asked of one rendered scene
    families: list[str] | None = None  # sim task families whose layouts are used (None: all)
    episodes_root: str | None = None  # take scenes from a `vst-vla collect` dataset instead of the sim
    episodes_repo_id: str = "local/vst_tabletop"
    png_compression: int = 1  # 0-9: 1 is ~2x faster to write than the default (3) and barely larger
    mark_scale: float = 1.0  # visual prompts (marked points, numbered boxes): size relative to VST's look
    mark_colors: bool = False  # each label its own marker colour too (vst_vla/spatial/draw.py: for tiny ViTs)
    overwrite: bool = False


def make_source(cfg: SpatialDataConfig) -> SceneSource:
    if cfg.episodes_root:
        from vst_vla.spatial.perception.episodes import EpisodeScenes

        return EpisodeScenes(cfg.episodes_root, cfg.episodes_repo_id)
    from vst_vla.spatial.perception.sim import SimScenes

    return SimScenes(cfg.image_width, cfg.image_height, cfg.families)


def png_params(compression: int = 1) -> list[int]:
    """OpenCV PNG options; the run-length strategy makes the sim's flat-shaded images ~30 % smaller
    at the same speed."""
    return [cv2.IMWRITE_PNG_COMPRESSION, int(compression), cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


class ImageWriter:
    """Writes a sample's images as PNG under `root/images/<split>/`; images shared by the samples of
    one scene (the unprompted views and video frames) are written once."""

    def __init__(self, root: Path, split: str, compression: int = 1):
        self.root, self.split = root, split
        self.folder = root / "images" / split
        self.folder.mkdir(parents=True, exist_ok=True)
        self.params = png_params(compression)
        self._written: dict[tuple[str, str], str] = {}

    def write(self, sample: GeneratedSample, ctx: SceneContext) -> dict:
        paths = []
        for i, img in enumerate(sample.pixels):
            key = (ctx.scene_id, img.key) if img.key else None
            if key in self._written:
                paths.append(self._written[key])
                continue
            name = f"{ctx.scene_id}_{img.key}.png" if key else f"{sample.id}_{i}.png"
            rel = f"images/{self.split}/{name}"
            if not cv2.imwrite(str(self.root / rel), img.array[:, :, ::-1], self.params):
                raise OSError(f"could not write {self.root / rel}")
            if key:
                self._written[key] = rel
            paths.append(rel)
        row = sample.to_row()
        row["images"] = paths
        return row


def generate_split(cfg: SpatialDataConfig, source: SceneSource, root: Path, split: str) -> datasets.Dataset:
    per_skill, seed = (cfg.samples_per_skill, cfg.seed) if split == "train" else (cfg.test_samples_per_skill, cfg.test_seed)
    cot, rl = (cfg.cot_fraction, cfg.rl_fraction) if split == "train" else (0.0, 0.0)  # the benchmark stays plain
    writer = ImageWriter(root, split, cfg.png_compression)
    rows = []
    with tqdm(total=per_skill * len(cfg.skills), desc=f"spatial-data {split}", unit="sample") as bar:
        for sample, ctx in generate_samples(source, cfg.skills, per_skill, seed, split, cfg.max_per_scene,
                                            cot_fraction=cot, rl_fraction=rl,
                                            marks=MarkStyle(cfg.mark_scale, cfg.mark_colors)):
            rows.append(writer.write(sample, ctx))
            bar.update()
    return datasets.Dataset.from_list(rows, features=FEATURES)


def generate_dataset(cfg: SpatialDataConfig, source: SceneSource | None = None) -> Path:
    """Generate both splits into `cfg.output` (atomically; refuses to replace it unless `overwrite`).

    `source` reuses an existing scene source (e.g. a `SimScenes` of the same image size) instead of
    making one from the config."""
    out = Path(cfg.output)
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} already exists: pass overwrite=true to replace it")
    unknown = [s for s in cfg.skills if s not in SKILLS]
    if unknown:
        raise ValueError(f"unknown skills {unknown}; known: {sorted(SKILLS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    start = time.perf_counter()
    own = source is None
    source = make_source(cfg) if own else source
    skipped = sorted(set(cfg.skills) & set(getattr(source, "unsupported_skills", ())))
    if skipped:
        print(f"spatial-data: skipping {skipped}: {type(source).__name__} scenes cannot pose them", file=sys.stderr)
        cfg = dataclasses.replace(cfg, skills=[s for s in cfg.skills if s not in skipped])
    try:
        splits = datasets.DatasetDict({split: generate_split(cfg, source, tmp, split) for split in ("train", "test")})
        splits.save_to_disk(str(tmp))
        summary = {
            "config": asdict(cfg),
            "splits": {name: dict(Counter(ds["skill"])) for name, ds in splits.items()},
            "seconds": round(time.perf_counter() - start, 1),
        }
        (tmp / "spatial_data.json").write_text(json.dumps(summary, indent=2))
        if out.exists():  # overwrite: swap the complete new folder in, then drop the old one
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, trash)
            os.rename(tmp, out)
            shutil.rmtree(trash)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if own and hasattr(source, "close"):
            source.close()
    print(json.dumps({"dataset": str(out), **{f"{k}_samples": sum(v.values()) for k, v in summary["splits"].items()},
                      "seconds": summary["seconds"]}))
    return out


def load_dataset(path: str | Path) -> datasets.DatasetDict:
    """The DatasetDict written by `generate_dataset` (images resolve under `path`)."""
    return datasets.load_from_disk(str(path))


def blank_images_copy(src: str | Path, dst: str | Path, grey: int = 128) -> Path:
    """A copy of a saved spatial dataset with every image replaced by a uniform grey one of the same size.

    The text-only ("blind") baseline trains and is evaluated on it with the same model and recipe: it
    sees the same prompts, the same number of image tokens, the same answers, only no pixels, so what
    it scores is what the questions and options alone give away."""
    import numpy as np
    from PIL import Image

    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.png", "*.jpg", "*.jpeg"))
    for path in src.rglob("*"):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            with Image.open(path) as img:
                width, height = img.size
            out = dst / path.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out.with_suffix(".png")) if path.suffix.lower() == ".png" else str(out),
                        np.full((height, width, 3), grey, np.uint8))
    return dst
