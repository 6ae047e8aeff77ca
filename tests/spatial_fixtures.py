"""A tiny dataset in the project's schema, made without the sim: is the picture red or blue, asked as
multiple choice (direct and chain-of-thought answers). Trivial on purpose: a randomly initialised tiny
VLM learns it in a few dozen steps, so tests can check that training really trains."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from vst_vla.spatial.schema import FEATURES, SpatialSample


def make_side_dataset(folder: Path, n_train: int = 32, n_test: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            colour = "red" if i % 2 == 0 else "blue"
            base = np.array((200, 30, 30) if colour == "red" else (30, 30, 200))
            img = np.clip(base + rng.integers(-30, 30, (28, 28, 3)), 0, 255).astype(np.uint8)
            rel = f"images/{split}_{i}.png"
            Image.fromarray(img).save(folder / rel)
            letter = "A" if colour == "red" else "B"
            cot = i % 4 == 3
            answer = f"<think>Most pixels are {colour}.</think>{letter}" if cot else letter
            rows.append(SpatialSample(
                id=f"{split}_{i}", skill="colour", scenario="single_image", images=[rel],
                question="What colour is the picture? A. red B. blue",
                answer=answer, answer_type="multiple_choice",
                ground_truth=json.dumps({"choice": letter}), cot=cot).to_row())
        splits[split] = datasets.Dataset.from_list(rows, features=FEATURES)
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder
