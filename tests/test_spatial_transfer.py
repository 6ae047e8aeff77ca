"""benchmarks/spatial_transfer.py: per-cell caching and resume, stale settings, the refusal of missing
backbones, nested demonstrations, the report's aggregation (mean/std/per-seed, Wilson intervals pooled
over seeds, gain, sign consistency, goals), the paper config, and one tiny real run end to end."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

from vst_vla.policy.metrics import wilson_interval

REPO = Path(__file__).resolve().parent.parent


def _load():
    if "benchmarks.spatial_transfer" in sys.modules:
        return sys.modules["benchmarks.spatial_transfer"]
    spec = importlib.util.spec_from_file_location("benchmarks.spatial_transfer", REPO / "benchmarks" / "spatial_transfer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


st = _load()
FAMILIES = ["pick_relation", "pick_extreme"]


def _cell(rates: dict[str, float], episodes: int = 10, correct: dict[str, float] | None = None) -> dict:
    correct = correct or rates
    return {"episodes": {f: episodes for f in rates},
            "success": dict(rates), "success_count": {f: round(r * episodes) for f, r in rates.items()},
            "ci95": {f: list(wilson_interval(round(r * episodes), episodes)) for f, r in rates.items()},
            "correct_object_rate": dict(correct),
            "correct_object_count": {f: round(r * episodes) for f, r in correct.items()},
            "correct_object_ci95": {f: list(wilson_interval(round(r * episodes), episodes)) for f, r in correct.items()},
            "reached_rate": dict(rates), "closest_cm": {f: 5.0 for f in rates}, "steps": 7, "heldout_mae_ratio": 0.5}


BLIND = _cell({"pick_relation": 0.5, "pick_extreme": 0.4})


def _cells(table: dict[str, dict[int, list[float]]]) -> dict:
    """{backbone: {demos: [success of both families, per seed]}} -> cells keyed (backbone, demos, seed)."""
    return {(b, n, s): _cell({f: v for f in FAMILIES}) for b, by_n in table.items() for n, vals in by_n.items()
            for s, v in enumerate(vals)}


# ----------------------------------------------------------------------------------------- aggregation
def test_aggregate_mean_std_per_seed_intervals_and_gain():
    table = {"untuned": {25: [0.1, 0.0, 0.2], 100: [0.3, 0.3, 0.3]},
             "vst_sft": {25: [0.3, 0.2, 0.3], 100: [0.3, 0.4, 0.2]},
             "vst_sft_cot_grpo": {25: [0.2, 0.2, 0.2], 100: [0.5, 0.4, 0.6]},
             "text_only_sft": {25: [0.1, 0.1, 0.1], 100: [0.2, 0.2, 0.2]}}
    r = st.aggregate(_cells(table), BLIND, list(table), [25, 100], [0, 1, 2], FAMILIES)

    s = r["success"]["vst_sft"]["25"]["pick_relation"]
    assert s["per_seed"] == [0.3, 0.2, 0.3]
    assert s["mean"] == pytest.approx(statistics.fmean([0.3, 0.2, 0.3]), abs=1e-4)
    assert s["std"] == pytest.approx(statistics.stdev([0.3, 0.2, 0.3]), abs=1e-4)
    assert r["correct_object_rate"]["untuned"]["100"]["pick_extreme"]["per_seed"] == [0.3, 0.3, 0.3]
    # Wilson interval of the episodes pooled over seeds: 8 of 30
    assert r["ci95"]["vst_sft"]["25"]["pick_relation"] == [round(x, 4) for x in wilson_interval(8, 30)]
    # best tuned at 25 is vst_sft (0.267 > 0.2); gain = (0.267 - 0.1) x 100, per seed 20, 20, 10
    assert r["best_tuned"] == {"25": "vst_sft", "100": "vst_sft_cot_grpo"}
    assert r["gain_points"]["25"] == pytest.approx(16.67, abs=0.01)
    assert r["per_seed_gain"]["25"] == [20.0, 20.0, 10.0]
    assert r["sign_consistent"] == {"25": True, "100": True}
    assert r["gain_points_by_backbone"]["text_only_sft"]["25"] == pytest.approx(0.0, abs=1e-9)
    assert r["blind_expert"] == {"pick_relation": 0.5, "pick_extreme": 0.4}
    g = r["goals"]
    assert g["demos"] == "25" and g["gain_ge_8.6"] and g["gain_positive_in_every_seed"]
    assert g["tuned_above_text_only"] == {"25": True, "100": True} and g["met"] is True
    json.dumps(r)  # the report is one JSON object


def test_goals_fail_on_no_gain_a_wrong_seed_or_a_control_as_good():
    zeros = {b: {25: [0.0, 0.0, 0.0]} for b in ("untuned", "vst_sft", "vst_sft_cot_grpo", "text_only_sft")}
    r = st.aggregate(_cells(zeros), BLIND, list(zeros), [25], [0, 1, 2], FAMILIES)
    assert r["gain_points"]["25"] == 0.0 and r["sign_consistent"]["25"] is False
    assert r["goals"]["gain_ge_8.6"] is False and r["goals"]["tuned_above_text_only"] == {"25": False}
    assert r["goals"]["met"] is False

    mixed = {"untuned": {25: [0.1, 0.1, 0.3]}, "vst_sft": {25: [0.4, 0.4, 0.2]},
             "vst_sft_cot_grpo": {25: [0.0, 0.0, 0.0]}, "text_only_sft": {25: [0.5, 0.5, 0.5]}}
    r = st.aggregate(_cells(mixed), BLIND, list(mixed), [25], [0, 1, 2], FAMILIES)
    assert r["gain_points"]["25"] == pytest.approx(16.67, abs=0.01) and r["per_seed_gain"]["25"][2] < 0
    assert r["sign_consistent"]["25"] is False and r["goals"]["gain_positive_in_every_seed"] is False
    assert r["goals"]["tuned_above_text_only"] == {"25": False} and r["goals"]["met"] is False

    worse = {"untuned": {25: [0.5, 0.4, 0.5]}, "vst_sft": {25: [0.1, 0.2, 0.1]}}
    r = st.aggregate(_cells(worse), BLIND, list(worse), [25], [0, 1, 2], FAMILIES)
    assert r["gain_points"]["25"] < 0 and r["sign_consistent"]["25"] is True  # consistently negative
    assert r["goals"]["gain_positive_in_every_seed"] is False and r["goals"]["tuned_above_text_only"] is None

    no_untuned = {"vst_sft": {25: [0.1, 0.2, 0.1]}}
    r = st.aggregate(_cells(no_untuned), BLIND, list(no_untuned), [25], [0, 1, 2], FAMILIES)
    assert r["gain_points"]["25"] is None and r["goals"]["met"] is None


def test_table_and_plot(tmp_path):
    table = {"untuned": {25: [0.1, 0.0], 100: [0.3, 0.2]}, "vst_sft": {25: [0.3, 0.2], 100: [0.5, 0.4]}}
    r = st.aggregate(_cells(table), BLIND, list(table), [25, 100], [0, 1], FAMILIES)
    md = st.markdown_table(r, FAMILIES)
    assert "| `vst_sft` | 25 | 0.25 ± 0.07 [" in md and "| blind expert |" in md and "| 25 | vst_sft | 20.0 |" in md
    st.plot(r, FAMILIES, tmp_path / "p.png", "test")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demonstration_sets_must_be_nested():
    good = {25: {"a": [0, 1]}, 100: {"a": [0, 1, 3, 4]}}
    with pytest.raises(RuntimeError, match="expected 25 each"):
        st.check_prefixes(good, ["a"])
    st.check_prefixes({2: {"a": [0, 1]}, 4: {"a": [0, 1, 3, 4]}}, ["a"])
    with pytest.raises(RuntimeError, match="not the first 2 of the 4"):
        st.check_prefixes({2: {"a": [0, 2]}, 4: {"a": [0, 1, 3, 4]}}, ["a"])


# ----------------------------------------------------------------------------------------- the harness, faked
def _backbones(root: Path) -> Path:
    for name, sub in st.BACKBONES.items():
        (root / sub).mkdir(parents=True)
        (root / sub / "config.json").write_text(json.dumps({"name": name}))
        (root / sub / "model.safetensors").write_bytes(name.encode() * 100)
    return root


@pytest.fixture
def faked(tmp_path, monkeypatch):
    """main() with the expensive parts replaced: demonstrations, training + rollout, the blind expert."""
    calls = {"cells": [], "demos": 0, "blind": 0, "fail_at": None}

    def prepare_demos(args, out):
        calls["demos"] += 1
        return {n: out / "demos" / str(n) for n in args.demos}

    def run_cell(backbone, dataset, cell, seed, args):
        if calls["fail_at"] is not None and len(calls["cells"]) == calls["fail_at"]:
            raise KeyboardInterrupt("killed mid-run")
        calls["cells"].append((backbone.parent.name if backbone.name == "final" else backbone.name,
                               dataset.name, seed))
        base = {"untuned": 0.1, "stage1_sft": 0.3}[calls["cells"][-1][0]]
        return _cell({f: base for f in args.families}, episodes=args.episodes)

    def evaluate(checkpoint, out, args, baseline=None):
        calls["blind"] += 1
        return _cell({f: 0.5 for f in args.families}, episodes=args.episodes)

    monkeypatch.setattr(st, "prepare_demos", prepare_demos)
    monkeypatch.setattr(st, "run_cell", run_cell)
    monkeypatch.setattr(st, "evaluate", evaluate)
    bb = _backbones(tmp_path / "tuning")
    base = ["--backbones-from", str(bb), "--out", str(tmp_path / "out"), "--families", *FAMILIES,
            "--demos", "2", "4", "--seeds", "0", "1", "--backbones", "untuned", "vst_sft", "--episodes", "5"]
    return calls, base, tmp_path / "out", bb


def test_cells_are_cached_resumed_and_rerun_when_settings_change(faked, capsys):
    calls, base, out, bb = faked
    calls["fail_at"] = 3  # interrupted after three cells
    with pytest.raises(KeyboardInterrupt):
        st.main(base)
    assert len(list(out.glob("*/*/seed*/result.json"))) == 3
    calls["fail_at"] = None
    report = st.main(base)
    assert len(calls["cells"]) == 8  # 3 before the interruption, the other 5 now
    assert sorted(calls["cells"]) == sorted({(b, n, s) for b in ("untuned", "stage1_sft") for n in ("2", "4")
                                             for s in (0, 1)})
    assert calls["blind"] == 1  # cached too
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["success"]["vst_sft"]["2"]["pick_relation"] == {"mean": 0.3, "std": 0.0, "per_seed": [0.3, 0.3]}
    assert last["gain_points"] == {"2": 20.0, "4": 20.0} and last["sign_consistent"] == {"2": True, "4": True}
    assert last["blind_expert"] == {"pick_relation": 0.5, "pick_extreme": 0.5}
    assert last["protocol"]["training"]["budget_min"] == 1.0 and last["protocol"]["evaluation"]["episodes_per_family"] == 5
    assert report["goals"]["tuned_above_text_only"] is None  # the control was not run
    assert (out / "table.md").is_file() and (out / "success_vs_demos.png").is_file()
    stored = json.loads((out / "untuned" / "2" / "seed0" / "result.json").read_text())
    assert stored["settings"]["seed"] == 0 and stored["settings"]["demos"]["per_family"] == 2

    st.main(base)  # all cached: nothing runs
    assert len(calls["cells"]) == 8 and calls["blind"] == 1

    (bb / "stage1_sft" / "final" / "model.safetensors").write_bytes(b"retrained" * 100)
    st.main(base)  # a retrained backbone: only its cells rerun, the old results kept aside
    assert len(calls["cells"]) == 12 and all(c[0] == "stage1_sft" for c in calls["cells"][8:])
    assert (out / "vst_sft" / "4" / "seed1" / "result.stale.json").is_file()

    st.main([*base, "--budget-min", "2"])  # another budget: every cell reruns; the blind expert does not
    assert len(calls["cells"]) == 20 and calls["blind"] == 1
    st.main([*base, "--episodes", "6"])  # another evaluation: everything reruns
    assert len(calls["cells"]) == 28 and calls["blind"] == 2


def test_missing_backbones_are_refused_with_the_command_that_makes_them(faked, tmp_path):
    calls, base, out, bb = faked
    import shutil

    shutil.rmtree(bb / "blind_sft")
    with pytest.raises(SystemExit, match=r"(?s)text_only_sft: .*blind_sft/final.*benchmarks/spatial_tuning.py --out"):
        st.main([*base, "--backbones", "untuned", "text_only_sft"])
    assert calls["demos"] == 0 and not calls["cells"]  # refused before anything ran
    with pytest.raises(SystemExit, match="backbone folders missing"):
        st.main([*base, "--backbones-from", str(tmp_path / "nowhere")])


def test_plan_counts_cached_cells_and_fits_the_cpu_budget(faked, capsys):
    calls, base, out, bb = faked
    p = st.main(["--backbones-from", str(bb), "--out", str(out), "--plan"])["plan"]  # the default run
    assert p["cells"] == 24 and p["to_run"] == 24 and not p["missing_backbones"]
    assert p["minutes"]["total"] <= 90, p  # the issue: the whole CPU run in 90 minutes
    st.main(base)
    p = st.main([*base, "--plan"])["plan"]
    assert (p["cells"], p["cached"], p["to_run"], p["minutes"]["train"]) == (8, 8, 0, 0)
    assert "plan" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not calls["cells"][8:]  # planning ran nothing


def test_paper_config_is_read_and_the_command_line_wins():
    args = st.parse_args(["--config", "spatial_transfer_paper", "--episodes", "3"])
    assert args.device == "cuda" and args.episodes == 3 and args.demos == [25, 100] and args.drop_checkpoints
    assert args.backbone_paths["untuned"].endswith("Qwen2.5-VL-3B-Instruct")
    recipe = st.recipe(args)
    assert recipe["fields"]["vision_lr_scale"] == 0.1 and recipe["train"]["lr"] == 1e-4
    assert recipe["fields"]["action_head"] == "flow" and recipe["fields"]["image_size"] == [224, 224]
    paths = st.backbone_paths(args)
    assert str(paths["vst_sft"]).endswith("VST-3B-SFT")


def test_unknown_config_keys_are_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("budget_minutes: 3\n")
    with pytest.raises(SystemExit, match="unknown keys"):
        st.parse_args(["--config", str(tmp_path / "c.yaml")])


# ----------------------------------------------------------------------------------------- a real tiny run
@pytest.mark.slow
def test_tiny_real_run_end_to_end(tmp_path, monkeypatch, capsys):
    """Real collection (nested sets), training (2 steps) and rollouts (1 episode of 9 steps) for two
    backbone folders, then a rerun that trains nothing."""
    from lerobot_policy_vst_vla.backbone import BackboneConfig, build_backbone

    build_backbone(BackboneConfig(preset="tiny", device="cpu")).save_pretrained(tmp_path / "tuning" / "untuned")
    build_backbone(BackboneConfig(preset="tiny", device="cpu", seed=1)).save_pretrained(
        tmp_path / "tuning" / "stage1_sft" / "final")
    out = tmp_path / "out"
    argv = ["--backbones-from", str(tmp_path / "tuning"), "--backbones", "untuned", "vst_sft",
            "--families", "pick_relation", "--demos", "2", "3", "--seeds", "0", "--out", str(out),
            "--image-size", "56", "--demo-episode-length", "30", "--keep-failed-demos", "--approach-noise-deg", "0",
            "--max-steps", "2", "--batch-size", "2", "--budget-min", "1", "--heldout-frames", "4",
            "--episodes", "1", "--eval-episode-length", "9", "--threads", "1", "--chunk", "4"]
    report = st.main(argv)
    seeds = st.demo_seeds(out / "demos" / "3")["pick_relation"]
    assert seeds[:2] == st.demo_seeds(out / "demos" / "2")["pick_relation"] and len(seeds) == 3
    cell = json.loads((out / "vst_sft" / "3" / "seed0" / "result.json").read_text())
    assert cell["steps"] == 2 and cell["episodes"] == {"pick_relation": 1}
    assert not list((out / "vst_sft" / "3" / "seed0" / "train").glob("checkpoints/*/training_state.pt"))
    config = json.loads((Path(cell["checkpoint"]) / "config.json").read_text())
    assert config["backbone_path"].endswith("stage1_sft/final") and config["vision_lr_scale"] == 1.0
    assert set(report["success"]) == {"untuned", "vst_sft"} and set(report["gain_points"]) == {"2", "3"}
    assert 0.0 <= report["blind_expert"]["pick_relation"] <= 1.0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["success"]["untuned"]["2"]["pick_relation"]["per_seed"] == [report["success"]["untuned"]["2"]["pick_relation"]["mean"]]

    monkeypatch.setattr(st, "run_cell", lambda *a: pytest.fail("a cached cell was rerun"))
    again = st.main(argv)
    assert again["success"] == report["success"]
