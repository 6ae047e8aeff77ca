"""The three VST tuning stages on a tiny offline backbone: they train, checkpoint, resume and scale out."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file
from spatial_fixtures import make_side_dataset

from vst_vla.backbone import BackboneConfig, build_backbone, generate_answers
from vst_vla.spatial.reasoning import THINK_PROMPT
from vst_vla.spatial.rewards import accuracy
from vst_vla.tuning.common import LoraSettings, RunSettings, latest_checkpoint, load_rows
from vst_vla.tuning.grpo import GRPOConfig, train_grpo
from vst_vla.tuning.sft import SFTConfig, train_sft

FAST = dict(batch_size=8, lr_llm=2e-3, lr_vision=2e-3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_side_dataset(tmp_path_factory.mktemp("side") / "data")


@pytest.fixture(scope="module")
def sft_model(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    return train_sft(SFTConfig(data=str(data), **FAST,
                               run=RunSettings(output_dir=str(out), max_steps=40, save_every=20, log_every=5)))


def answer_accuracy(path, data) -> float:
    backbone = build_backbone(BackboneConfig(pretrained_path=str(path)))
    test = list(datasets.load_from_disk(str(data))["test"])
    answers = generate_answers(backbone, test, data, max_new_tokens=4)
    return sum(accuracy(a, r["answer_type"], r["ground_truth"]) for a, r in zip(answers, test)) / len(test)



def test_sft_learns_the_task_and_writes_a_loadable_checkpoint(sft_model, data):
    run_dir = Path(sft_model).parent
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.3 * losses[0]
    assert answer_accuracy(sft_model, data) >= 0.9  # held-out split; chance is 0.5
    assert (run_dir / "curves.png").stat().st_size > 0 and (run_dir / "curves.rrd").stat().st_size > 0
    assert latest_checkpoint(run_dir).name == "step_0000040"


def test_resume_after_kill_loses_only_the_steps_since_the_checkpoint(data, tmp_path):
    def cmd(out, resume):
        return [sys.executable, "-m", "vst_vla.cli", "sft", f"data={data}", "batch_size=4",
                "lr_llm=1e-3", "lr_vision=1e-3", f"run.output_dir={out}", "run.max_steps=12", "run.save_every=4",
                "run.log_every=2", f"run.resume={str(resume).lower()}"]

    subprocess.run(cmd(tmp_path / "straight", False), check=True, capture_output=True)
    proc = subprocess.Popen(cmd(tmp_path / "killed", False), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "killed/checkpoints/step_0000004").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed/final").exists(), "the run finished before it could be killed"
    subprocess.run(cmd(tmp_path / "killed", True), check=True, capture_output=True)
    straight = load_file(tmp_path / "straight/final/model.safetensors")
    resumed = load_file(tmp_path / "killed/final/model.safetensors")
    for name, weight in straight.items():
        torch.testing.assert_close(resumed[name], weight, rtol=1e-4, atol=1e-5, msg=name)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed/metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8, 10, 12]  # redone steps are not logged twice


def test_cot_stage_starts_from_the_previous_stage(sft_model, data, tmp_path):
    # with zero learning rates the stage-2 result must be exactly stage 1's model
    out = train_sft(SFTConfig(data=str(data), subset="cot", batch_size=8, lr_llm=0.0, lr_vision=0.0,
                              run=RunSettings(output_dir=str(tmp_path), init_from=str(sft_model), max_steps=2,
                                              save_every=2, log_every=1)))
    before, after = load_file(Path(sft_model) / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    cot_loss = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert 0 < cot_loss < 20


def test_lora_saves_adapters_and_a_merged_model(data, tmp_path):
    out = train_sft(SFTConfig(data=str(data), lora=LoraSettings(rank=4), **FAST,
                              run=RunSettings(output_dir=str(tmp_path), max_steps=3, save_every=3)))
    assert (tmp_path / "final_adapters" / "adapter_config.json").is_file()
    merged = load_file(out / "model.safetensors")
    assert not any("lora" in name for name in merged)
    build_backbone(BackboneConfig(pretrained_path=str(out)))  # the merged model is a plain checkpoint


def test_grpo_raises_the_mean_reward(sft_model, data, tmp_path):
    # the RL subset's questions carry the think prompt, which stage 1 never saw: the SFT model starts
    # near "always A" there, and GRPO has to bring the colour back (seeded, so deterministic)
    train_grpo(GRPOConfig(data=str(data), lr=2e-4, max_new_tokens=3, prompts_per_step=8, group_size=8,
                          require_think=False,
                          run=RunSettings(output_dir=str(tmp_path), init_from=str(sft_model), max_steps=16,
                                          save_every=16, log_every=1)))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(0.0 <= r["reward"] <= 1.0 for r in rows)
    assert any(r["kept_groups"] > 0 for r in rows)  # online filtering kept the informative groups
    first, last = (sum(r["reward"] for r in part) / 4 for part in (rows[:4], rows[-4:]))
    assert last > first + 0.02, [r["reward"] for r in rows]


def test_two_cpu_processes_under_accelerate(data, tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vst_vla.cli", "sft",
                           f"data={data}", "batch_size=2", f"run.output_dir={tmp_path}", "run.max_steps=3",
                           "run.save_every=3", "run.log_every=1"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # logged once, by the main process


def test_bad_input_names_the_problem(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="spatial dataset not found"):
        train_sft(SFTConfig(data=str(tmp_path / "nope"), run=RunSettings(output_dir=str(tmp_path / "o"))))
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    (broken / "images" / "train_0.png").unlink()
    with pytest.raises(FileNotFoundError, match="train_0.png"):
        train_sft(SFTConfig(data=str(broken), batch_size=32, run=RunSettings(output_dir=str(tmp_path / "o2"), max_steps=1)))


def test_spatial_eval_scores_a_tuned_checkpoint(sft_model, data, tmp_path):
    from vst_vla.spatial.evaluate import SpatialEvalConfig, run_eval

    result = run_eval(SpatialEvalConfig(dataset=str(data), split="test", model=str(sft_model), max_new_tokens=4,
                                        predictions=str(tmp_path / "pred.jsonl"), output=str(tmp_path / "r.json")))
    assert result["n"] == 16 and result["answered"] == 16
    assert result["accuracy"] >= 0.9
    assert len((tmp_path / "pred.jsonl").read_text().splitlines()) == 16


# --- issue 13: the defects a test should have caught ---------------------------------------------------


def test_stage_subsets_do_not_overlap(data):
    perception, cot, rl = (set(load_rows(data, "train", s)["id"]) for s in ("perception", "cot", "rl"))
    assert perception and cot and rl
    assert not (perception & cot) and not (perception & rl) and not (cot & rl)
    assert all(THINK_PROMPT in r["question"] for r in load_rows(data, "train", "rl"))  # GRPO asks for a thought
    assert GRPOConfig().subset == "rl" and SFTConfig().subset == "perception"


def test_packing_gives_the_same_per_sample_losses_as_padding(data):
    from vst_vla.tuning.packing import encode_packs, encode_padded, per_sample_losses

    backbone = build_backbone(BackboneConfig(preset="tiny"))
    rows = list(datasets.load_from_disk(str(data))["train"])[:8]  # direct and CoT answers: two lengths
    with torch.no_grad():
        padded, present = per_sample_losses(backbone.model, encode_padded(backbone, rows, data), len(rows))
        assert present.all()
        for max_tokens, per_forward in ((10_000, 0), (200, 1), (200, 0), (200, 2)):  # one pack; several, stacked or not
            packs = encode_packs(backbone, backbone.model, rows, data, max_tokens, per_forward)
            assert (len(packs) == 1) == (max_tokens == 10_000 or per_forward == 0)
            packed = torch.zeros(len(rows))
            for pack in packs:
                losses, mask = per_sample_losses(backbone.model, pack, len(rows))
                packed[mask] = losses[mask]
            torch.testing.assert_close(packed, padded, rtol=1e-4, atol=1e-4)
        alone = [per_sample_losses(backbone.model, encode_padded(backbone, [r], data), 1)[0][0] for r in rows]
        torch.testing.assert_close(torch.stack(alone), padded, rtol=1e-4, atol=1e-4)


def test_sample_weighting_makes_every_sample_count_the_same(data):
    from vst_vla.tuning.packing import encode_padded, per_sample_losses, token_losses

    backbone = build_backbone(BackboneConfig(preset="tiny"))
    rows = list(datasets.load_from_disk(str(data))["train"])[3:5]  # a letter and a CoT answer
    batch = encode_padded(backbone, rows, data)
    with torch.no_grad():
        per, _ = per_sample_losses(backbone.model, batch, 2)
        total, n = token_losses(backbone.model, batch)
    assert per.mean() != pytest.approx((total / n).item(), rel=1e-3)  # the token mean weights the CoT row more


def test_fp32_master_weights_take_a_1e_6_update(data, tmp_path):
    # the paper presets ask for bfloat16: training must still hold fp32 weights (bf16 only as autocast)
    init = tmp_path / "init"
    build_backbone(BackboneConfig(preset="tiny")).save_pretrained(init)
    out = train_sft(SFTConfig(data=str(data), batch_size=4, lr_llm=1e-6, lr_vision=1e-6, warmup_ratio=0.0,
                              backbone=BackboneConfig(preset="tiny", dtype="bfloat16"),
                              run=RunSettings(output_dir=str(tmp_path / "run"), init_from=str(init), max_steps=1,
                                              save_every=1, mixed_precision="auto")))
    before, after = load_file(init / "model.safetensors"), load_file(out / "model.safetensors")
    changed = total = 0
    for name, w in before.items():
        assert after[name].dtype == torch.float32, name
        if w.ndim == 2 and "embed" not in name:  # matrices every sample's forward uses
            changed += int((after[name] != w).sum())
            total += w.numel()
    assert changed / total > 0.9, changed / total


def test_cut_at_stop_keeps_the_stop_token_when_pad_is_an_eos_id():
    from vst_vla.tuning.rollouts import cut_at_stop, length_mask

    pad, im_end = 5, 7
    new = torch.tensor([[1, 2, im_end, 3, 4], [1, pad, 9, 9, 9], [1, 2, 3, 4, 6]])
    tokens, lengths, truncated = cut_at_stop(new, [pad, im_end], pad)
    assert lengths.tolist() == [3, 2, 5] and truncated.tolist() == [False, False, True]
    assert tokens.tolist() == [[1, 2, im_end, pad, pad], [1, pad, pad, pad, pad], [1, 2, 3, 4, 6]]
    assert length_mask(lengths, 5).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_grpo_budget_covers_the_reference_answers_and_logs_truncation(sft_model, data, tmp_path):
    from vst_vla.tuning.rollouts import answer_budgets

    backbone = build_backbone(BackboneConfig(preset="tiny"))
    rl = load_rows(data, "train", "rl")
    budgets = answer_budgets(backbone.tokenizer, rl)
    longest = max(len(backbone.tokenizer(r["answer"] + "<|im_end|>")["input_ids"]) for r in rl)
    assert budgets["multiple_choice"] >= longest
    train_grpo(GRPOConfig(data=str(data), lr=1e-4, prompts_per_step=2, group_size=3, temperature=0.8,
                          run=RunSettings(output_dir=str(tmp_path), init_from=str(sft_model), max_steps=2,
                                          save_every=2, log_every=1)))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["truncation_rate"] <= 1.0 and 0.0 <= r["kept_fraction"] <= 1.0 for r in rows)
    # old and new log-probs in the same mode, at the sampling temperature: the first ratio is exactly 1
    assert all(r["ratio_dev"] < 1e-5 for r in rows if r["stepped"])


def test_grpo_takes_no_step_when_no_group_is_kept(data):
    from accelerate import Accelerator

    from vst_vla.backbone import encode_for_generation
    from vst_vla.tuning.grpo import Group, policy_update

    backbone = build_backbone(BackboneConfig(preset="tiny"))
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(backbone.model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(backbone.model, optimizer)
    row = datasets.load_from_disk(str(data))["train"][0]
    fallback = Group(encode_for_generation(backbone, [row], data), torch.ones(2, 3, dtype=torch.long),
                     torch.ones(2, 3, dtype=torch.long), torch.zeros(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert policy_update(model, optimizer, accelerator, [], fallback, GRPOConfig())["stepped"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not optimizer.state  # Adam never stepped


def test_two_process_grpo_update_with_unequal_kept_groups_matches_one_process(data, tmp_path):
    worker = Path(__file__).parent / "grpo_update_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    one = subprocess.run([sys.executable, str(worker), str(data), str(tmp_path / "one.safetensors")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    accelerate = Path(sys.executable).parent / "accelerate"
    two = subprocess.run([str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", str(worker), str(data),
                          str(tmp_path / "two.safetensors")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    init = build_backbone(BackboneConfig(preset="tiny", seed=0)).model.state_dict()
    moved = 0
    for name, w in a.items():
        torch.testing.assert_close(b[name], w, rtol=1e-4, atol=1e-6, msg=name)
        moved += int(not torch.equal(w, init[name]))
    assert moved > len(a) // 2  # the update did something


def test_rollouts_never_sample_vision_tokens(data):
    """A sampled <|image_pad|> made GRPO's log-prob forward fail 23 steps into a run ("Image features and
    image tokens do not match"): generation suppresses every id only the processor may place."""
    from vst_vla.tuning.rollouts import generate, vision_token_ids

    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(preset="tiny"))
    banned = vision_token_ids(backbone.model)
    assert backbone.model.config.image_token_id in banned and len(banned) == 4
    with torch.no_grad():  # make the image pad the model's favourite next token everywhere
        backbone.model.lm_head.weight[banned] = backbone.model.lm_head.weight.abs().max() * 50
    rows = list(datasets.load_from_disk(str(data))["test"])[:2]
    out = generate(backbone.model, backbone, rows, str(data), max_new_tokens=6, do_sample=True, temperature=1.0)
    assert not torch.isin(out.tokens, torch.tensor(banned)).any()
