"""`vst-vla spatial-eval`: score model answers on the sim spatial benchmark or a VSI / MMSI / CV-Bench file.

The core is `evaluate(dataset, predictions, scoring) -> dict`: per skill, the accuracy and, for numeric
answers, VSI-Bench's MRA. `scoring="official"` (the default) follows VST's evaluation code exactly
(`official.py`: first word must be the letter, `float()` of the first word, MRA with `<=`);
`scoring="lenient"` uses the training reward's parsing (`rewards.accuracy`: "(B)", option text,
units converted), useful to see what a model means when its format is off; a skill's `score` is MRA for numeric skills and accuracy otherwise, and the
overall `score` is the mean over skills (VSI-Bench's average over question types). Predictions come
from a JSONL file of `{"id": ..., "prediction": ...}`, or from `answer_fn(rows) -> list[str]` (what a
`--model` option plugs in: `run_eval(cfg, answer_fn=...)`). Missing predictions score 0.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from vst_vla.spatial import official
from vst_vla.spatial.rewards import accuracy, check_ground_truth, extract_answer, mra, parse_number

AnswerFn = Callable[[list[dict]], list[str]]
SCORINGS = ("official", "lenient")


@dataclass
class SpatialEvalConfig:
    dataset: str = "outputs/datasets/vst_spatial"  # a spatial-data folder, or a benchmark question file
    split: str = "test"  # for a spatial-data folder
    benchmark: str | None = None  # vsi_bench | mmsi_bench | cv_bench: read `dataset` as that benchmark's file
    media_root: str | None = None  # where a benchmark file's images/videos live (default: next to it)
    predictions: str = "outputs/eval/spatial_predictions.jsonl"  # JSONL of {"id", "prediction"}
    output: str | None = None  # also write the results JSON here
    batch_size: int = 8  # rows per answer_fn call
    # a Qwen2.5-VL checkpoint folder (e.g. a tuning stage's final/): generate the answers with it
    # (greedy) instead of reading `predictions`, which then receives them
    model: str | None = None
    # None: sized per answer type from the evaluated reference answers and, for a model that thinks
    # first, the chain-of-thought answers (`think_tokens`)
    max_new_tokens: int | None = None
    # Room for a `<think>…</think>` block. The evaluated references are direct answers ("A"), so a
    # budget sized from them alone cuts a CoT-tuned model after its first words. None: the budget of
    # the spatial-data folder's CoT answers (any split, per answer type), else DEFAULT_THINK_TOKENS;
    # 0: direct answers only.
    think_tokens: int | None = None
    scoring: str = "official"  # official (VST's eval code) | lenient (the training reward's parsing)
    # Ask for reasoning, as a CoT / GRPO-tuned model is used: VST-R's think prompt follows each question
    # (as in its CoT and RL rows) and the answer after `</think>` is scored (VST scores its reasoning
    # models on post-processed answers); an unclosed block scores 0. Off: the questions as given, and
    # the response scored as generated (VST's VSI-Bench code).
    think: bool = False


def load_eval_dataset(cfg: SpatialEvalConfig) -> datasets.Dataset:
    if cfg.benchmark:
        from vst_vla.spatial.vst_format import load_benchmark_file

        return load_benchmark_file(cfg.dataset, cfg.benchmark, cfg.media_root)
    data = datasets.load_from_disk(cfg.dataset)
    if isinstance(data, datasets.DatasetDict):
        if cfg.split not in data:
            raise KeyError(f"{cfg.dataset}: no split {cfg.split!r}; splits: {list(data)}")
        data = data[cfg.split]
    return data


def blind_prior(train: list[dict], test: list[dict]) -> tuple[float, float, int]:
    """How far a blind answerer gets: on the test multiple-choice rows, always answer the letter most often
    correct for that skill in train ("A" for a skill train never asks). Returns (its accuracy, chance
    accuracy, number of test multiple-choice rows); balanced letters put the two together."""
    letters: dict[str, Counter] = defaultdict(Counter)
    for row in train:
        if row["answer_type"] == "multiple_choice":
            letters[row["skill"]][json.loads(row["ground_truth"])["choice"]] += 1
    hits, chance = [], []
    for row in test:
        if row["answer_type"] != "multiple_choice":
            continue
        gt = json.loads(row["ground_truth"])
        guess = letters[row["skill"]].most_common(1)[0][0] if letters[row["skill"]] else "A"
        hits.append(guess == gt["choice"])
        chance.append(1.0 / len(gt["options"]))
    if not hits:
        return float("nan"), float("nan"), 0
    return float(np.mean(hits)), float(np.mean(chance)), len(hits)


def load_predictions(path: str | Path) -> dict[str, str]:
    """{id: prediction} from JSONL; a malformed line is an error naming the file and line."""
    preds = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                preds[str(item["id"])] = str(item["prediction"])
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{n}: expected a JSON object with 'id' and 'prediction' ({err})") from err
    return preds


def predict(dataset: datasets.Dataset, answer_fn: AnswerFn, batch_size: int = 8) -> dict[str, str]:
    """Answers of `answer_fn` (a VLM, a baseline) for every row, batched."""
    from tqdm import tqdm

    preds = {}
    for start in tqdm(range(0, len(dataset), batch_size), desc="answering", unit="batch"):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset)))).to_list()
        answers = answer_fn(rows)
        if len(answers) != len(rows):
            raise ValueError(f"answer_fn returned {len(answers)} answers for {len(rows)} rows")
        preds.update({row["id"]: str(a) for row, a in zip(rows, answers, strict=True)})
    return preds


def score_row(row: dict, prediction: str | None, scoring: str = "official", think: bool = False) -> dict:
    """accuracy (and mra for numeric answers) of one prediction; a missing one scores 0. `think`:
    the prediction is a reasoning answer, scored on its part after `</think>` (`SpatialEvalConfig.think`).

    Never raises on the prediction; raises `rewards.GroundTruthError` on a malformed ground truth."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    gt = check_ground_truth(row["answer_type"], row["ground_truth"])
    if prediction is None:
        return {"accuracy": 0.0, **({"mra": 0.0} if row["answer_type"] == "number" else {})}
    if think:
        prediction = extract_answer(prediction) if "</think>" in str(prediction) else ""
    if scoring == "official":
        return official.score(prediction, row["answer_type"], gt)
    out = {"accuracy": accuracy(prediction, row["answer_type"], gt)}
    if row["answer_type"] == "number":
        value = parse_number(extract_answer(prediction), gt.get("unit"))
        out["mra"] = 0.0 if value is None else mra(value, float(gt["value"]))
    return out


def evaluate(dataset: datasets.Dataset | list[dict], predictions: dict[str, str], scoring: str = "official",
             think: bool = False) -> dict:
    """Per-skill and overall scores of `predictions` ({id: text}) on `dataset`'s rows."""
    per = defaultdict(lambda: {"n": 0, "answered": 0, "accuracy": [], "mra": [], "scenario": ""})
    for row in dataset:
        s = per[row["skill"]]
        s["scenario"] = row["scenario"]
        pred = predictions.get(str(row["id"]))
        scores = score_row(row, pred, scoring, think)
        s["n"] += 1
        s["answered"] += pred is not None
        s["accuracy"].append(scores["accuracy"])
        if "mra" in scores:
            s["mra"].append(scores["mra"])
    skills = {}
    for name, s in sorted(per.items()):
        acc = float(np.mean(s["accuracy"]))
        m = float(np.mean(s["mra"])) if s["mra"] else None
        numeric = len(s["mra"]) == s["n"]  # VSI-Bench: numeric question types are scored by MRA
        skills[name] = {"scenario": s["scenario"], "n": s["n"], "answered": s["answered"], "accuracy": acc,
                        "mra": m, "score": m if numeric else acc}
    n = sum(s["n"] for s in skills.values())
    return {
        "n": n,
        "answered": sum(s["answered"] for s in skills.values()),
        "scoring": scoring,
        "accuracy": float(np.mean([a for s in per.values() for a in s["accuracy"]])) if n else 0.0,
        "score": float(np.mean([s["score"] for s in skills.values()])) if skills else 0.0,
        "skills": skills,
    }


def print_results(result: dict, title: str = "spatial-eval") -> None:
    """A rich table per skill, then the results as one JSON line (for scripts)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("skill", "scenario", "n", "answered", "accuracy", "MRA", "score"):
        table.add_column(col, justify="left" if col in ("skill", "scenario") else "right")
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for name, s in result["skills"].items():
        table.add_row(name, s["scenario"], str(s["n"]), str(s["answered"]), pct(s["accuracy"]), pct(s["mra"]),
                      pct(s["score"]))
    table.add_row("overall", "", str(result["n"]), str(result["answered"]), pct(result["accuracy"]), "",
                  pct(result["score"]), style="bold")
    Console(stderr=True, width=None if sys.stderr.isatty() else 120).print(table)  # logs: no truncated names
    print(json.dumps(result))


DEFAULT_THINK_TOKENS = 512  # no CoT references to size it from (e.g. a benchmark question file)


def think_budgets(cfg: SpatialEvalConfig, tokenizer) -> dict[str, int]:
    """Per answer type, the tokens a thinking answer may take (see `SpatialEvalConfig.think_tokens`)."""
    from vst_vla.tuning.rollouts import answer_budgets

    if cfg.think_tokens is not None:
        return {"*": cfg.think_tokens}
    cot = []
    if not cfg.benchmark and (Path(cfg.dataset) / "dataset_dict.json").is_file():
        for split in datasets.load_from_disk(cfg.dataset).values():
            if "cot" in split.column_names:  # read two columns, not every row's metadata and image paths
                rows = split.select_columns(["answer", "answer_type", "cot"])
                cot.extend(rows.select(np.flatnonzero(rows["cot"])))
    if not cot:
        return {"*": DEFAULT_THINK_TOKENS}
    budgets = answer_budgets(tokenizer, cot)
    return {**budgets, "*": max(budgets.values())}


class ModelAnswers:
    """Greedy answers from a local checkpoint, images resolved under the evaluated dataset's folder.

    Each answer type gets its own token budget (`cfg.max_new_tokens`, or the larger of the evaluated
    rows' reference answers and the room a thinking answer needs, `think_budgets`), and the answers
    that hit it are counted: `truncation_rate`. A model that stops early costs nothing extra."""

    def __init__(self, cfg: SpatialEvalConfig, dataset: datasets.Dataset | None = None):
        from vst_vla.backbone import BackboneConfig, build_backbone
        from vst_vla.tuning.rollouts import answer_budgets

        self.backbone = build_backbone(BackboneConfig(pretrained_path=cfg.model, device="auto"))
        self.root = cfg.media_root or (str(Path(cfg.dataset).parent) if cfg.benchmark else cfg.dataset)
        self.fixed = cfg.max_new_tokens
        self.budgets = {} if cfg.max_new_tokens or dataset is None else answer_budgets(self.backbone.tokenizer, dataset)
        self.think = {} if cfg.max_new_tokens else think_budgets(cfg, self.backbone.tokenizer)
        self.answered = self.truncated = 0

    def budget(self, answer_type: str) -> int:
        if self.fixed:
            return self.fixed
        direct = self.budgets.get(answer_type) or max(self.budgets.values(), default=128)
        return max(direct, self.think.get(answer_type, self.think.get("*", 0)))

    def __call__(self, rows: list[dict]) -> list[str]:
        from vst_vla.tuning.rollouts import generate

        answers: list[str | None] = [None] * len(rows)
        by_type = defaultdict(list)
        for i, row in enumerate(rows):
            by_type[row["answer_type"]].append(i)
        for kind, idx in by_type.items():
            out = generate(self.backbone.model, self.backbone, [rows[i] for i in idx], self.root,
                           self.budget(kind), do_sample=False)
            for i, text in zip(idx, out.texts, strict=True):
                answers[i] = text
            self.answered += len(idx)
            self.truncated += int(out.truncated.sum())
        return answers

    @property
    def truncation_rate(self) -> float:
        return self.truncated / self.answered if self.answered else 0.0


def model_answer_fn(cfg: SpatialEvalConfig, dataset: datasets.Dataset | None = None) -> ModelAnswers:
    return ModelAnswers(cfg, dataset)


def run_eval(cfg: SpatialEvalConfig, answer_fn: AnswerFn | None = None) -> dict:
    """The CLI stage: load the questions, get predictions (file, model or `answer_fn`), score and report."""
    dataset = load_eval_dataset(cfg)
    if cfg.think:
        from vst_vla.spatial.reasoning import THINK_PROMPT

        dataset = dataset.map(lambda r: {"question": f"{r['question']}\n{THINK_PROMPT}"})
    if answer_fn is None and cfg.model:
        answer_fn = model_answer_fn(cfg, dataset)
    if answer_fn is not None:
        predictions = predict(dataset, answer_fn, cfg.batch_size)
        Path(cfg.predictions).parent.mkdir(parents=True, exist_ok=True)
        with open(cfg.predictions, "w") as f:
            for k, v in predictions.items():
                f.write(json.dumps({"id": k, "prediction": v}) + "\n")
    else:
        if not Path(cfg.predictions).is_file():
            raise FileNotFoundError(f"no predictions file {cfg.predictions}: write one JSON line "
                                    '{"id": ..., "prediction": ...} per question')
        predictions = load_predictions(cfg.predictions)
    unknown = set(predictions) - {str(i) for i in dataset["id"]}
    if unknown:
        print(f"spatial-eval: {len(unknown)} predictions have ids not in the dataset (ignored), "
              f"e.g. {sorted(unknown)[:3]}", file=sys.stderr)
    result = evaluate(dataset, predictions, cfg.scoring, cfg.think)
    result["think"] = cfg.think
    if isinstance(answer_fn, ModelAnswers):  # answers cut by the budget score 0: say how many
        result["truncation_rate"] = answer_fn.truncation_rate
        result["budgets"] = {k: answer_fn.budget(k) for k in sorted({r["answer_type"] for r in dataset})}
    result["dataset"] = cfg.dataset if cfg.benchmark else f"{cfg.dataset}:{cfg.split}"
    print_results(result, f"spatial-eval {result['dataset']}")
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(json.dumps(result, indent=2))
    return result
