"""A tiny dataset in the project's schema, made without the sim: is the picture red or blue, asked as
multiple choice (direct and chain-of-thought answers). Trivial on purpose: a randomly initialised tiny
VLM learns it in a few dozen steps, so tests can check that training really trains.

Train rows by i % 8: 0-3 perception (direct answers), 4-5 the VST-R CoT subset, 6-7 the RL subset
(think prompt, `metadata["vst_r"]`), each half red and half blue, as the data engine marks them."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from vst_vla.spatial.reasoning import THINK_PROMPT
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
            role = None if split == "test" or i % 8 < 4 else ("cot" if i % 8 < 6 else "rl")
            answer = f"<think>Most pixels are {colour}.</think>{letter}" if role else letter
            question = "What colour is the picture? A. red B. blue" + (f"\n{THINK_PROMPT}" if role else "")
            rows.append(SpatialSample(
                id=f"{split}_{i}", skill="colour", scenario="single_image", images=[rel],
                question=question, answer=answer, answer_type="multiple_choice",
                ground_truth=json.dumps({"choice": letter}), cot=role is not None,
                metadata=json.dumps({"vst_r": role} if role else {})).to_row())
        splits[split] = datasets.Dataset.from_list(rows, features=FEATURES)
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder
