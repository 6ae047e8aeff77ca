"""spatial-eval: per-skill accuracy and MRA, predictions from JSONL or an answer function, benchmark files."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from vst_vla.cli import main as cli_main
from vst_vla.spatial.evaluate import SpatialEvalConfig, evaluate, load_predictions, predict, run_eval, score_row
from vst_vla.spatial.schema import FEATURES, SpatialSample


def _row(i: int, skill: str, answer_type: str, answer: str, gt: dict, scenario: str = "single_image") -> dict:
    return SpatialSample(id=f"q{i}", skill=skill, scenario=scenario, images=[], question="?", answer=answer,
                         answer_type=answer_type, ground_truth=json.dumps(gt)).to_row()


@pytest.fixture
def rows():
    out = []
    for i in range(4):
        letter = "AB"[i % 2]
        out.append(_row(i, "depth_comparison_points", "multiple_choice", letter,
                        {"choice": letter, "options": {"A": "point A", "B": "point B"}}))
    for i in range(4, 8):
        out.append(_row(i, "measurement_distance", "number", "0.200 m", {"value": 0.2, "unit": "m"}))
    box = [0.1, 0.0, 0.5, 0.03, 0.03, 0.03, 0.0, 0.0, 0.0]
    out.append(_row(8, "3d_grounding", "boxes_3d", json.dumps([{"label": "red cube", "bbox_3d": box}]),
                    {"boxes": [{"label": "red cube", "bbox_3d": box}]}))
    return out


@pytest.fixture
def dataset_dir(tmp_path, rows):
    path = tmp_path / "ds"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows, features=FEATURES)}).save_to_disk(str(path))
    return path


def test_perfect_answers_score_one(rows):
    result = evaluate(rows, {r["id"]: r["answer"] for r in rows})
    assert result["n"] == 9 and result["answered"] == 9
    for skill in result["skills"].values():
        assert skill["accuracy"] == pytest.approx(1.0) and skill["score"] == pytest.approx(1.0)
    assert result["skills"]["measurement_distance"]["mra"] == 1.0


def test_missing_wrong_and_garbage_predictions_lenient(rows):
    preds = {"q0": "A", "q1": "A", "q4": "20 cm", "q5": "0.27 m", "q6": "<think>x</think>0.33", "q8": "not json {"}
    result = evaluate(rows, preds, scoring="lenient")
    dc = result["skills"]["depth_comparison_points"]
    assert dc["accuracy"] == 0.25 and dc["answered"] == 2 and dc["mra"] is None  # 1 right, 1 wrong, 2 missing
    md = result["skills"]["measurement_distance"]
    assert md["accuracy"] == 0.25  # 20 cm is 0.2 m; the others are off by more than 5 %
    # MRA: exact -> 1; 35 % off passes thresholds 0.50, 0.55, 0.60 -> 0.3; 65 % off -> 0; missing -> 0
    assert md["mra"] == pytest.approx(np.mean([1.0, 0.3, 0.0, 0.0]))
    assert md["score"] == md["mra"]  # numeric skills are scored by MRA, as in VSI-Bench
    assert result["skills"]["3d_grounding"]["accuracy"] == 0.0
    assert result["score"] == pytest.approx(np.mean([0.25, md["mra"], 0.0]))


def test_official_scoring_is_vsts_eval_code(rows):
    """VST's benchmark/eval_vsibench.py: first word (full stops stripped) must be the letter; float() of
    the first word, MRA with <=; no unit conversion, no think stripping."""
    mc, num = rows[0], rows[4]  # choice A; 0.2 m
    for pred, expected in (("A", 1), ("A.", 1), ("a", 1), ("A because", 1), ("(A)", 0), ("Option A", 0),
                           ("point A", 0), ("B", 0), ("<think>x</think>A", 0)):
        assert score_row(mc, pred)["accuracy"] == expected, pred
    assert score_row(mc, "(A)", scoring="lenient")["accuracy"] == 1.0  # the reward's reading stays lenient
    for pred, expected in (("0.2", 1.0), ("0.2 m", 1.0), ("20 cm", 0.0), ("0.3", 0.1), ("about 0.2", 0.0)):
        assert score_row(num, pred)["mra"] == pytest.approx(expected), pred
    assert score_row(num, "20 cm", scoring="lenient")["mra"] == 1.0
    # the example: 3 for 2 passes theta = 0.5 under "<=" (0.1), not 0.0 as with "<"
    three = _row(9, "counting", "number", "2", {"value": 2})
    assert score_row(three, "3")["mra"] == pytest.approx(0.1)


def test_official_mra_matches_vsi_bench_formula_exactly():
    from vst_vla.spatial.official import mean_relative_accuracy
    from vst_vla.spatial.rewards import mra

    rng = np.random.default_rng(0)
    for _ in range(300):  # same thresholds, same float comparisons, lenient or not
        gt = float(rng.choice([0.2, 2.0, 4.0, 10.0, 31.0]))
        pred = round(gt * float(rng.uniform(0.3, 1.7)), int(rng.integers(0, 3)))
        conf = np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))
        assert mean_relative_accuracy(pred, gt) == float((abs(pred - gt) / gt <= 1 - conf).mean())
        assert mra(pred, gt) == mean_relative_accuracy(pred, gt)


def test_score_row_never_raises_on_predictions_but_on_broken_ground_truth(rows):
    from vst_vla.spatial.rewards import GroundTruthError

    for scoring in ("official", "lenient"):
        for pred in (None, "", "\x00", "[[[", "1e999 m", "nan", "inf", "B" * 10_000):
            for row in rows:
                s = score_row(row, pred, scoring)
                assert 0.0 <= s["accuracy"] <= 1.0 and 0.0 <= s.get("mra", 0.0) <= 1.0
    broken = {**rows[0], "ground_truth": json.dumps({"options": {"A": "x"}})}
    with pytest.raises(GroundTruthError):
        score_row(broken, "A")


def test_run_eval_with_answer_fn_writes_predictions_and_json_line(dataset_dir, tmp_path, capsys):
    cfg = SpatialEvalConfig(dataset=str(dataset_dir), split="test", predictions=str(tmp_path / "p.jsonl"),
                            output=str(tmp_path / "r.json"), batch_size=3)
    seen = []

    def answer_fn(batch):  # a blind baseline: always "A", and 0.2 for numbers
        seen.append(len(batch))
        return ["A" if r["answer_type"] == "multiple_choice" else "0.2 m" for r in batch]

    result = run_eval(cfg, answer_fn=answer_fn)
    assert seen == [3, 3, 3]
    assert result["skills"]["depth_comparison_points"]["accuracy"] == 0.5
    assert load_predictions(cfg.predictions)["q0"] == "A"
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["n"] == 9
    assert json.loads((tmp_path / "r.json").read_text())["score"] == result["score"]


def test_cli_stage_reads_a_predictions_file(dataset_dir, rows, tmp_path, capsys):
    preds = tmp_path / "preds.jsonl"
    preds.write_text("\n".join(json.dumps({"id": r["id"], "prediction": r["answer"]}) for r in rows) + "\n")
    cli_main(["spatial-eval", f"dataset={dataset_dir}", f"predictions={preds}"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["accuracy"] == pytest.approx(1.0) and result["dataset"].endswith(":test")


def test_bad_predictions_file_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "q0", "prediction": "A"}\n{"id": "q1"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_predictions(path)
    with pytest.raises(FileNotFoundError):
        run_eval(SpatialEvalConfig(dataset=str(tmp_path), predictions=str(tmp_path / "none.jsonl")))


def test_benchmark_files_vsi_and_cv_bench(tmp_path):
    (tmp_path / "arkitscenes").mkdir()
    (tmp_path / "arkitscenes" / "s1.mp4").write_bytes(b"")
    vsi = tmp_path / "vsi.jsonl"
    vsi.write_text("\n".join(json.dumps(r) for r in [
        {"id": 1, "dataset": "arkitscenes", "scene_name": "s1", "question_type": "object_counting",
         "question": "How many chairs?", "options": None, "ground_truth": "4"},
        {"id": 2, "dataset": "arkitscenes", "scene_name": "s1", "question_type": "relative_direction",
         "question": "Where is the lamp?", "options": ["A. left", "B. right"], "ground_truth": "B"},
    ]) + "\n")
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "1", "prediction": "5"}) + "\n" + json.dumps({"id": "2", "prediction": "B"}) + "\n")
    result = run_eval(SpatialEvalConfig(dataset=str(vsi), benchmark="vsi_bench", predictions=str(preds)))
    assert result["skills"]["relative_direction"]["score"] == 1.0
    counting = result["skills"]["object_counting"]
    assert counting["accuracy"] == 0.0 and counting["score"] == pytest.approx(0.6)  # MRA of 5 for 4 (25 % off, <=)

    (tmp_path / "img.png").write_bytes(b"")
    cv = tmp_path / "cv.jsonl"
    cv.write_text(json.dumps({"idx": 0, "type": "3D", "task": "Depth", "prompt": "Which is closer? (A) x (B) y",
                              "choices": ["x", "y"], "answer": "(A)", "filename": "img.png"}) + "\n")
    cv_preds = tmp_path / "cvp.jsonl"
    cv_preds.write_text(json.dumps({"id": "0", "prediction": "(A) x"}) + "\n")
    result = run_eval(SpatialEvalConfig(dataset=str(cv), benchmark="cv_bench", predictions=str(cv_preds),
                                        scoring="lenient"))
    assert result["skills"]["depth"]["accuracy"] == 1.0
    result = run_eval(SpatialEvalConfig(dataset=str(cv), benchmark="cv_bench", predictions=str(cv_preds)))
    assert result["skills"]["depth"]["accuracy"] == 0.0  # official: the first word "(A)" is not "A"


def test_predict_checks_answer_count(rows):
    ds = datasets.Dataset.from_list(rows, features=FEATURES)
    with pytest.raises(ValueError, match="answers"):
        predict(ds, lambda batch: ["A"])


def test_eval_budget_leaves_room_for_a_thinking_answer(tmp_path):
    """The sim benchmark's references are direct answers ("A"), but a CoT-tuned model thinks first: a
    budget sized from the references alone cut every such answer after "<think>Bird's-eye" (0 % MC)."""
    from lerobot_policy_vst_vla.backbone import build_processor

    from vst_vla.spatial.evaluate import DEFAULT_THINK_TOKENS, SpatialEvalConfig, think_budgets
    from vst_vla.tuning.rollouts import answer_budgets

    tokenizer = build_processor().tokenizer
    cot = "<think>" + " ".join(f"Point A lies at a depth of 0.{i:03d} m." for i in range(12)) + "</think>A"
    rows = lambda answers, cot_flags: datasets.Dataset.from_dict(  # noqa: E731
        {"answer": answers, "answer_type": ["multiple_choice"] * len(answers), "cot": cot_flags})
    folder = tmp_path / "data"
    datasets.DatasetDict({"train": rows([cot, "B"], [True, False]), "test": rows(["A", "B"], [False, False])}
                         ).save_to_disk(str(folder))
    direct = answer_budgets(tokenizer, datasets.load_from_disk(str(folder))["test"])["multiple_choice"]
    think = think_budgets(SpatialEvalConfig(dataset=str(folder)), tokenizer)
    cot_tokens = len(tokenizer(cot + "<|im_end|>", add_special_tokens=False)["input_ids"])
    assert direct < 10 < cot_tokens <= think["multiple_choice"]
    assert think_budgets(SpatialEvalConfig(dataset=str(folder), think_tokens=0), tokenizer) == {"*": 0}
    no_cot = tmp_path / "plain"
    datasets.DatasetDict({"test": rows(["A"], [False])}).save_to_disk(str(no_cot))
    assert think_budgets(SpatialEvalConfig(dataset=str(no_cot)), tokenizer) == {"*": DEFAULT_THINK_TOKENS}


def test_think_mode_asks_for_reasoning_and_scores_the_answer_after_it(rows, tmp_path):
    """A CoT / GRPO-tuned model is asked as it was trained (the think prompt) and scored on its answer;
    the direct mode keeps VST's VSI-Bench rule (the response's first word)."""
    from vst_vla.spatial.reasoning import THINK_PROMPT

    mc = rows[0]  # choice A
    assert score_row(mc, "<think>x</think>A")["accuracy"] == 0.0
    for pred, expected in (("<think>x</think>A", 1), ("<think>x</think>B", 0), ("<think>unclosed A", 0), ("A", 0)):
        assert score_row(mc, pred, think=True)["accuracy"] == expected, pred
    asked = []

    def answer_fn(batch):
        asked.extend(r["question"] for r in batch)
        return ["<think>because</think>" + json.loads(r["ground_truth"]).get("choice", "0") for r in batch]

    datasets.DatasetDict({"test": datasets.Dataset.from_list([mc])}).save_to_disk(str(tmp_path / "data"))
    result = run_eval(SpatialEvalConfig(dataset=str(tmp_path / "data"), predictions=str(tmp_path / "p.jsonl"),
                                        think=True), answer_fn)
    assert asked == [mc["question"] + "\n" + THINK_PROMPT] and result["think"] is True
    assert result["score"] == 1.0
