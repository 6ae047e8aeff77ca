"""The one sample format every spatial dataset in vst-vla uses (generated, or loaded from VST's release).

A dataset is a Hugging Face `datasets.Dataset` saved with `save_to_disk(<folder>)`; image files live
under `<folder>/images/` and `images` holds paths relative to `<folder>`.
`to_messages` turns a row into the Qwen2.5-VL chat form used by training and evaluation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets

ANSWER_TYPES = ("multiple_choice", "number", "boxes_3d", "text")
SCENARIOS = ("single_image", "multi_image", "video")


@dataclass
class SpatialSample:
    id: str
    skill: str  # e.g. "depth_comparison_points", "3d_detection", "camera_motion"
    scenario: str  # one of SCENARIOS
    images: list[str]  # relative to the dataset folder, in the order the model sees them
    question: str  # user text; the images come before it in the chat
    answer: str  # assistant target; CoT samples use "<think>...</think>final answer"
    answer_type: str  # one of ANSWER_TYPES
    # JSON, what a scorer needs: {"choice": "B", "options": {...}} | {"value": 0.31, "unit": "m"}
    # | {"boxes": [{"label": str, "bbox_3d": [x, y, z, xs, ys, zs, pitch, yaw, roll]}]} | {"text": str}
    ground_truth: str
    metadata: str = "{}"  # JSON: scene seed, camera hfov/vfov/width/height, source, ...
    cot: bool = False

    def __post_init__(self):
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"sample {self.id!r}: answer_type {self.answer_type!r} not in {ANSWER_TYPES}")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"sample {self.id!r}: scenario {self.scenario!r} not in {SCENARIOS}")

    def to_row(self) -> dict:
        return asdict(self)


FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "skill": datasets.Value("string"),
        "scenario": datasets.Value("string"),
        "images": datasets.Sequence(datasets.Value("string")),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "answer_type": datasets.Value("string"),
        "ground_truth": datasets.Value("string"),
        "metadata": datasets.Value("string"),
        "cot": datasets.Value("bool"),
    }
)


def to_messages(row: dict, root: str | Path, with_answer: bool = True) -> list[dict]:
    """Qwen2.5-VL chat messages for one row; image entries carry absolute paths under `root`."""
    root = Path(root)
    content = []
    for rel in row["images"]:
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"sample {row.get('id')!r}: image file missing: {path}")
        content.append({"type": "image", "image": str(path)})
    content.append({"type": "text", "text": row["question"]})
    messages = [{"role": "user", "content": content}]
    if with_answer:
        if not str(row.get("answer", "")).strip():
            raise ValueError(f"sample {row.get('id')!r}: conversation has no answer")
        messages.append({"role": "assistant", "content": [{"type": "text", "text": row["answer"]}]})
    return messages


def ground_truth(row: dict) -> dict:
    return json.loads(row["ground_truth"])
