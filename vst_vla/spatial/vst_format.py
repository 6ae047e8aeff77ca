"""Loaders for VST's released data (`rayruiyang/vst_500k`) and spatial benchmark question files.

Every loader returns a `datasets.Dataset` in `schema.FEATURES`. Image (and video) paths are stored
**relative to the dataset folder** (`path` for VST, `media_root` for benchmarks) when the file lies
inside it, and **absolute** otherwise. Images embedded as bytes are written once under
`<folder>/images/<subset>/`.

VST layouts read (sources: Yangr116/vst `prepare_data/sft/convert_json_parquet.py` and
`vst/preprocess.py`, and the community `vst_500k` extraction script that globs `**/*.parquet`):
- the Hugging Face release: one folder per subset (`si_depth_comparison/`, `mi_camera_motion/`, ...,
  `video/`) of parquet files with columns `id`, `conversations` (list of `{"from": "human"|"gpt",
  "value"}`; image places marked `<|image_pad|>` / `<|video_pad|>`), `images` (list of
  `{"bytes", "path"}`), `type`, `data_source`, `meta_info` (JSON string);
- the same rows as JSON / JSONL (a list of objects, or one per line), in subset folders or flat
  (e.g. the extracted `vst_500k.json` + `images/`), with `images` or `image` holding file paths
  (a string or a list), resolved next to the JSON file first and then under the dataset folder.
Multi-turn rows (si_measurement asks about three objects) become one sample per question/answer turn.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import datasets

from vst_vla.spatial.rewards import extract_answer, extract_choice, parse_boxes
from vst_vla.spatial.schema import FEATURES, SpatialSample

# The subset folders of the rayruiyang/vst_500k release.
VST_SUBSETS = (
    "mi_camera_motion",
    "mi_correspondence",
    "mi_object_object_relation",
    "mi_scene_caption",
    "si_depth_comparison",
    "si_distance",
    "si_measurement",
    "si_scene_caption",
    "video",
)
_MEDIA_TOKENS = re.compile(r"<\|image_pad\|>|<\|video_pad\|>|<image>|<video>")
_OPTION_MARK = re.compile(r"(?:^|(?<=\s))\(?([A-H])(?:\)|[.:])\s+", re.MULTILINE)
_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))"
_LENGTH_UNIT = r"(mm|cm|m|millimet(?:er|re)s?|centimet(?:er|re)s?|met(?:er|re)s?)"
_NUMBER_ANSWER = re.compile(rf"\s*{_NUMBER}\s*{_LENGTH_UNIT}?\s*\.?\s*", re.IGNORECASE)
_MEASURE_IN_TEXT = re.compile(rf"{_NUMBER}\s*{_LENGTH_UNIT}\b", re.IGNORECASE)
_UNIT_NAMES = {"mm": "mm", "cm": "cm", "m": "m", "millimet": "mm", "centimet": "cm", "met": "m"}
# VSI-Bench prompts as VST evaluates them (Yangr116/vst benchmark/eval_vsibench.py, lmms-eval defaults).
_VSI_PRE = "These are frames of a video."
_VSI_MC_POST = "Answer with the option's letter from the given choices directly."
_VSI_NUM_POST = "Please answer the question using a single word or phrase."


class VSTFormatError(ValueError):
    """A file does not follow the layout it was read as; the message names the file, row and key."""


# --- answers --------------------------------------------------------------------------------------


def parse_options(question: str) -> dict[str, str]:
    """Options "A. x" / "(A) x" / "A: x", one per line or inline, lettered from A; {} if none."""
    marks = list(_OPTION_MARK.finditer(question))
    start = next((i for i, m in enumerate(marks) if m.group(1) == "A"), None)
    if start is None:
        return {}
    run = [marks[start]]
    for m in marks[start + 1 :]:
        if ord(m.group(1)) == ord(run[-1].group(1)) + 1:
            run.append(m)
    if len(run) < 2:
        return {}
    options = {}
    for m, nxt in zip(run, run[1:] + [None], strict=True):
        text = question[m.end() : nxt.start() if nxt else len(question)]
        options[m.group(1)] = text.split("\n")[0].strip().rstrip(",;").strip()
    return options


def infer_answer(question: str, answer: str) -> tuple[str, dict]:
    """(answer_type, ground_truth) of a VST question/answer pair, from the final answer's shape."""
    final = extract_answer(answer)
    if "bbox_3d" in final:
        boxes = parse_boxes(final)
        if boxes:
            return "boxes_3d", {"boxes": boxes}
    options = parse_options(question)
    if options:
        choice = extract_choice(final, options)
        if choice is not None:
            return "multiple_choice", {"choice": choice, "options": options}
    # "0.9", "97 cm", or a sentence with a single length in it ("The chair is 0.9 meters tall.").
    m = _NUMBER_ANSWER.fullmatch(final)
    if m is None and len(re.findall(r"\d+(?:\.\d+)?", final)) == 1:
        m = _MEASURE_IN_TEXT.search(final)
    if m:
        gt: dict = {"value": float(m.group(1))}
        if m.group(2):
            gt["unit"] = _UNIT_NAMES[re.sub(r"(er|re)?s?$", "", m.group(2).lower())]
        return "number", gt
    return "text", {"text": final}


# --- files and media ------------------------------------------------------------------------------


def _read_rows(path: Path) -> list[dict]:
    """Rows of a .parquet, .json (list), .jsonl, .tsv or .csv file."""
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".jsonl", ".json", ".tsv", ".csv"):
        raise VSTFormatError(f"{path}: unsupported file type {suffix!r}")
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        elif suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
        elif suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
        else:
            csv.field_size_limit(sys.maxsize)  # benchmark TSVs carry base64 images in one field
            with path.open(encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    except (ValueError, OSError) as e:
        raise VSTFormatError(f"{path}: cannot read: {e}") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise VSTFormatError(f"{path}: expected a list of objects (one per sample)")
    return rows


def _sniff_suffix(data: bytes) -> str:
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data[4:8] == b"ftyp":
        return ".mp4"
    return ".bin"


class _Media:
    """Resolves image references (paths or bytes) to paths stored relative to `root` when inside it."""

    def __init__(self, root: Path, image_dir: Path):
        self.root, self.image_dir = root.resolve(), image_dir.resolve()

    def store(self, path: Path) -> str:
        path = path.resolve()
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)

    def write(self, data: bytes, group: str, stem: str, hint: str | None) -> str:
        suffix = Path(hint).suffix.lower() if hint and Path(hint).suffix else _sniff_suffix(data)
        dest = self.image_dir / group / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', stem)}{suffix}"
        if not (dest.is_file() and dest.stat().st_size == len(data)):
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        return self.store(dest)

    def find(self, ref: str, near: Path, where: str) -> str:
        candidates = [Path(ref)] if Path(ref).is_absolute() else [near / ref, self.root / ref]
        for c in candidates:
            if c.is_file():
                return self.store(c)
        raise FileNotFoundError(f"{where}: image file missing: {ref!r} (looked for {', '.join(map(str, candidates))})")

    def resolve(self, refs: object, group: str, stem: str, near: Path, where: str) -> list[str]:
        """Paths for one sample's media: a path, bytes, {"bytes", "path"}, base64, or a list of them."""
        if refs is None:
            return []
        if isinstance(refs, str) and refs.startswith("["):
            try:
                refs = json.loads(refs)
            except ValueError:
                pass
        items = refs if isinstance(refs, list) else [refs]
        out = []
        for k, item in enumerate(items):
            data, ref = None, None
            if isinstance(item, dict):
                data, ref = item.get("bytes") or item.get("byres"), item.get("path")  # "byres": a typo seen in the wild
            elif isinstance(item, (bytes, bytearray)):
                data = bytes(item)
            elif isinstance(item, str):
                ref = item
            else:
                raise VSTFormatError(f"{where}: unsupported image entry of type {type(item).__name__}")
            if data:
                out.append(self.write(data, group, f"{stem}_{k}", ref))
            elif ref and len(ref) > 1024:  # far longer than any path: base64 (VLMEvalKit TSVs)
                out.append(self.write(_b64(ref, where), group, f"{stem}_{k}", None))
            elif ref:
                out.append(self.find(ref, near, where))
            # an entry with neither bytes nor path is VST's placeholder for text-only samples
        return out


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise VSTFormatError(f"{where}: image is neither an existing file nor base64") from e


# --- VST ------------------------------------------------------------------------------------------


def _subset_scenario_skill(subset: str | None, vst_type: str, n_images: int) -> tuple[str, str]:
    if subset and subset.startswith("si_"):
        return "single_image", subset[3:]
    if subset and subset.startswith("mi_"):
        return "multi_image", subset[3:]
    if subset == "video" or "video" in vst_type:
        return "video", vst_type if vst_type and vst_type != "video" else "video"
    scenario = "multi_image" if n_images > 1 else "single_image"
    return scenario, vst_type if vst_type and vst_type != "unknow" else "unknown"  # "unknow": VST's default


def _turns(conversations: object, where: str) -> list[tuple[str, str]]:
    """(human, gpt) pairs of a LLaVA-style conversation; leading non-human turns are skipped."""
    if not isinstance(conversations, list) or not all(
        isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str)
        for t in conversations
    ):
        raise VSTFormatError(f"{where}: key 'conversations' must be a list of {{'from', 'value'}} strings")
    pairs, question = [], None
    for turn in conversations:
        if turn["from"] == "human":
            question = turn["value"]
        elif turn["from"] == "gpt" and question is not None and turn["value"].strip():
            pairs.append((question, turn["value"]))
            question = None
    if not pairs:
        raise VSTFormatError(f"{where}: key 'conversations' has no human question followed by a gpt answer")
    return pairs


def _vst_samples(path: Path, root: Path, subset: str | None, media: _Media) -> Iterator[SpatialSample]:
    for i, row in enumerate(_read_rows(path)):
        vst_id = str(row.get("id", row.get("uuid", f"{path.stem}-{i}")))
        where = f"{path}: row {i} (id {vst_id!r})"
        if "conversations" not in row:
            raise VSTFormatError(f"{where}: missing key 'conversations'")
        pairs = _turns(row["conversations"], where)
        vst_type = str(row.get("type") or "")
        key = "images" if "images" in row else "image"
        images = (
            []
            if vst_type == "text"
            else media.resolve(row.get(key), subset or "vst", vst_id, path.parent, f"{where}: key {key!r}")
        )
        scenario, skill = _subset_scenario_skill(subset, vst_type, len(images))
        meta_info = row.get("meta_info")
        if isinstance(meta_info, str):
            try:
                meta_info = json.loads(meta_info)
            except ValueError:
                pass
        base_id = f"{subset}/{vst_id}" if subset else vst_id
        for k, (question, answer) in enumerate(pairs):
            question = _MEDIA_TOKENS.sub("", question).strip()
            answer_type, gt = infer_answer(question, answer)
            metadata = {
                "source": "vst_500k",
                "file": path.relative_to(root).as_posix(),
                "subset": subset,
                "vst_id": vst_id,
                "vst_type": vst_type,
                "data_source": row.get("data_source"),
                "meta_info": meta_info,
                "turn": k,
                "num_turns": len(pairs),
            }
            yield SpatialSample(
                id=base_id if len(pairs) == 1 else f"{base_id}#{k}",
                skill=skill,
                scenario=scenario,
                images=images,
                question=question,
                answer=answer.strip(),
                answer_type=answer_type,
                ground_truth=json.dumps(gt),
                metadata=json.dumps(metadata, default=str),
                cot="thought" in vst_type or "<think>" in answer,
            )


def load_vst_folder(
    path: str | Path, subsets: list[str] | None = None, image_dir: str | Path | None = None
) -> datasets.Dataset:
    """All VST samples under `path` (any of the layouts in the module docstring) in our schema.

    `subsets` keeps only files inside those subset folders (flat files are then skipped).
    Embedded image bytes are written under `image_dir` (default `<path>/images`).
    """
    root = Path(path).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"VST folder not found: {root}")
    image_root = Path(image_dir).resolve() if image_dir else root / "images"
    media = _Media(root, image_root)
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in (".parquet", ".json", ".jsonl") and p.is_file() and not p.is_relative_to(image_root)
    )
    rows = []
    for file in files:
        rel = file.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):  # e.g. huggingface-cli's .cache/
            continue
        subset = rel.parts[0] if len(rel.parts) > 1 else None
        if subsets is not None and subset not in subsets:
            continue
        rows.extend(s.to_row() for s in _vst_samples(file, root, subset, media))
    if not rows:
        wanted = f" for subsets {subsets} (VST's subsets: {', '.join(VST_SUBSETS)})" if subsets is not None else ""
        raise VSTFormatError(f"{root}: no VST samples (.parquet/.json/.jsonl){wanted}")
    return datasets.Dataset.from_list(rows, features=FEATURES)


# --- benchmarks -----------------------------------------------------------------------------------


def _field(row: dict, key: str, where: str) -> object:
    if row.get(key) is None:
        raise VSTFormatError(f"{where}: missing key {key!r}")
    return row[key]


def _list_field(value: object) -> list:
    if isinstance(value, str):
        value = json.loads(value) if value.strip().startswith("[") else [value]
    return list(value or [])


def _vsi_sample(row: dict, i: int, where: str, media: _Media, near: Path) -> SpatialSample:
    """nyu-visionx/VSI-Bench: id, dataset, scene_name, question_type, question, options, ground_truth."""
    question, qtype = str(_field(row, "question", where)), str(_field(row, "question_type", where))
    truth = str(_field(row, "ground_truth", where)).strip()
    video = f"{_field(row, 'dataset', where)}/{_field(row, 'scene_name', where)}.mp4"
    options = _list_field(row.get("options"))
    if options:
        text = "\n".join([_VSI_PRE, question, "Options:\n" + "\n".join(map(str, options)), _VSI_MC_POST])
        answer_type, gt = "multiple_choice", {"choice": truth, "options": parse_options("\n".join(map(str, options)))}
    else:
        text = "\n".join([_VSI_PRE, question, _VSI_NUM_POST])
        answer_type, gt = "number", {"value": float(truth)}
    meta = {"source": "vsi_bench", "question_type": qtype, "dataset": row["dataset"], "scene_name": row["scene_name"]}
    meta["metric"] = "accuracy" if options else "mra"
    return SpatialSample(
        id=str(row.get("id", i)),
        skill=qtype,
        scenario="video",
        images=[media.find(video, near, f"{where}: keys 'dataset'/'scene_name'")],
        question=text,
        answer=truth,
        answer_type=answer_type,
        ground_truth=json.dumps(gt),
        metadata=json.dumps(meta, default=str),
    )


def _cv_bench_sample(row: dict, i: int, where: str, media: _Media, near: Path) -> SpatialSample:
    """nyu-visionx/CV-Bench: idx, type (2D/3D), task, prompt, choices, answer "(A)", filename, image."""
    sid = str(row.get("idx", i))
    choices = [str(c) for c in _list_field(_field(row, "choices", where))]
    options = {chr(ord("A") + k): c for k, c in enumerate(choices)}
    prompt = str(row.get("prompt") or "")
    if "(A)" not in prompt:
        prompt = "\n".join([str(_field(row, "question", where))] + [f"({k}) {v}" for k, v in options.items()])
    choice = str(_field(row, "answer", where)).strip().strip("()")
    ref = row.get("filename")
    if (ref and (near / ref).is_file()) or not row.get("image"):
        images = [media.find(str(_field(row, "filename", where)), near, f"{where}: key 'filename'")]
    else:
        images = media.resolve(row["image"], "cv_bench", sid, near, f"{where}: key 'image'")
    meta = {
        "source": "cv_bench",
        "type": row.get("type"),
        "task": row.get("task"),
        "source_dataset": row.get("source_dataset"),
    }
    return SpatialSample(
        id=sid,
        skill=str(row.get("task") or "cv_bench").lower(),
        scenario="single_image",
        images=images,
        question=prompt,
        answer=choice,
        answer_type="multiple_choice",
        ground_truth=json.dumps({"choice": choice, "options": options}),
        metadata=json.dumps(meta, default=str),
    )


def _mmsi_sample(row: dict, i: int, where: str, media: _Media, near: Path) -> SpatialSample:
    """RunsenXu/MMSI-Bench: id, images, question_type, question (options inline), answer, thought.

    Also VLMEvalKit's MMSI_Bench.tsv: index, image (paths or base64, JSON list), category, ...
    """
    sid = str(row.get("id", row.get("index", i)))
    key = "images" if row.get("images") is not None else "image"
    images = media.resolve(_field(row, key, where), "mmsi_bench", sid, near, f"{where}: key {key!r}")
    question = str(_field(row, "question", where))
    choice = str(_field(row, "answer", where)).strip()
    meta = {"source": "mmsi_bench", "thought": row.get("thought"), "difficulty": row.get("difficulty")}
    return SpatialSample(
        id=sid,
        skill=str(row.get("question_type") or row.get("category") or "mmsi"),
        scenario="multi_image" if len(images) > 1 else "single_image",
        images=images,
        question=question,
        answer=choice,
        answer_type="multiple_choice",
        ground_truth=json.dumps({"choice": choice, "options": parse_options(question)}),
        metadata=json.dumps(meta, default=str),
    )


_BENCHMARK_READERS = {"vsi_bench": _vsi_sample, "cv_bench": _cv_bench_sample, "mmsi_bench": _mmsi_sample}
BENCHMARK_KINDS = tuple(_BENCHMARK_READERS)


def load_benchmark_file(path: str | Path, kind: str, media_root: str | Path | None = None) -> datasets.Dataset:
    """A local VSI-Bench / CV-Bench / MMSI-Bench question file (.parquet/.json/.jsonl/.tsv/.csv).

    Media paths in the file are looked up next to it and under `media_root` (default: the file's
    folder); embedded images are written under `<media_root>/images/<kind>/`.
    """
    if kind not in _BENCHMARK_READERS:
        raise ValueError(f"unknown benchmark kind {kind!r}; expected one of {BENCHMARK_KINDS}")
    path = Path(path).resolve()
    root = Path(media_root).resolve() if media_root else path.parent
    media = _Media(root, root / "images")
    read = _BENCHMARK_READERS[kind]
    rows = []
    for i, row in enumerate(_read_rows(path)):
        where = f"{path}: row {i}"
        try:
            rows.append(read(row, i, where, media, path.parent).to_row())
        except VSTFormatError:
            raise
        except (TypeError, ValueError) as e:  # e.g. a numeric ground truth that is not a number
            raise VSTFormatError(f"{where}: malformed {kind} row: {e}") from e
    if not rows:
        raise VSTFormatError(f"{path}: no rows")
    return datasets.Dataset.from_list(rows, features=FEATURES)
