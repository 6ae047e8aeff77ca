"""`vst-vla train-policy`: train any LeRobot policy on a local LeRobotDataset, fast on a CPU.

The same policy classes, processors and checkpoint layout as `lerobot-train` (which also trains our
plugin), with what that loop lacks for small budgets:
- the dataset's statistics are checked against its data and repaired (LeRobot's averaged quantiles
  miss most of our action range, see `stats.py`);
- videos are decoded once into a frame cache (`data.py`), so the loader never waits on decoding;
- the learning-rate schedule is sized to the run (warmup and cosine decay as fractions of the steps,
  also when the run is bounded by `max_minutes`), not fixed at 30 000 steps;
- every `eval_freq` steps the held-out action error per joint (in the dataset's units: degrees for
  the arm) is measured next to the error of always predicting the mean action, and logged to
  `metrics.jsonl`, `curves.png` and `curves.rrd`.
Checkpoints are `checkpoints/<step>/pretrained_model` (+ `training_state.pt`), written atomically, and
`checkpoints/last` points at the newest, so `lerobot-eval --policy.path=...` and `vst-vla eval-policy` load them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

LAST_CHECKPOINT = Path("checkpoints") / "last" / "pretrained_model"
TRAINING_STATE = "training_state.pt"


@dataclass
class TrainPolicyConfig:
    dataset_root: str = "outputs/datasets/vst_tabletop"
    repo_id: str = "local/vst_tabletop"
    policy_type: str = "vst_vla"  # any registered LeRobot policy type (vst_vla, act, diffusion, ...)
    # fields of the policy's config, e.g. {action_head: flow, chunk_size: 10, image_size: [112, 112]}
    policy_overrides: dict[str, Any] = field(default_factory=lambda: {"action_head": "flow", "backbone_preset": "tiny"})
    # A tuned VLM from `vst-vla sft/cot-sft/grpo`: its run folder (…/final is used) or the final/ folder itself.
    backbone_path: str | None = None
    steps: int = 2000
    max_minutes: float | None = None  # stop after this much training time; the schedule shrinks to fit
    batch_size: int = 8
    lr: float | None = None  # None: the policy's optimizer preset
    warmup_fraction: float = 0.05  # of the run's steps
    min_lr_fraction: float = 0.1  # cosine decays to this fraction of the peak at the last step
    output_dir: str = "outputs/policy/train"
    save_freq: int = 1000
    log_freq: int = 50
    eval_freq: int = 250  # held-out action error every N steps (0: only at the end)
    # The first frames of an episode decide where the arm goes (the target is read from the image only
    # there; later frames can copy the arm's heading from the state): sample them `start_weight` times as often.
    start_frames: int = 20
    start_weight: float = 1.0
    # Decision scenes (`decision_scenes.py`): N extra scenes per family whose frames at `decision_steps`
    # (labelled with the clean expert's next actions) make up `decision_fraction` of every batch.
    decision_scenes: int = 0
    decision_steps: list[int] = field(default_factory=lambda: [0, 10])
    decision_fraction: float = 0.25
    decision_families: list[str] | None = None  # None: the dataset's families
    # DAgger frames (`dagger.py`): npz files of the policy's own rollouts labelled by the expert, drawn as
    # `dagger_fraction` of every batch (after the decision scenes' share).
    dagger_data: list[str] = field(default_factory=list)
    dagger_fraction: float = 0.25
    # Start from a checkpoint's weights (its pretrained_model folder) with a fresh optimizer and schedule:
    # fine-tuning, e.g. each DAgger round from the last. The policy overrides must build the same model.
    init_from: str | None = None
    heldout_fraction: float = 0.1  # of the episodes, never trained on
    heldout_frames: int = 256  # frames of the held-out episodes scored at each evaluation
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    threads: int | None = None  # torch threads (None: torch's default)
    resume: bool = False
    # Frozen-VLM phase (flow head), after the end-to-end steps: freeze the VLM, compute every training frame's
    # prefix features once and train the action expert alone on them (~7x the samples/s on the CPU preset;
    # `prefix_cache.py`). 0 steps and no minutes: off. Its final checkpoint is the run's.
    expert_steps: int = 0
    expert_minutes: float | None = None  # a wall-clock budget for this phase; the schedule shrinks to fit
    expert_batch_size: int = 32
    expert_lr: float | None = None  # None: `lr` (or the policy's preset)
    expert_cache_max_gb: float = 8.0


# ----------------------------------------------------------------------------------------- building
def resolve_backbone(path: str) -> str:
    """Accept a tuning run folder (uses its `final/`) or a checkpoint folder."""
    p = Path(path)
    if (p / "final" / "config.json").is_file():
        return str(p / "final")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"backbone_path {path}: no config.json there or in {p / 'final'} "
                                "(expected a `vst-vla sft/grpo` output or a Qwen2.5-VL checkpoint folder)")
    return str(p)


def make_policy_config(cfg: TrainPolicyConfig):
    """The LeRobot policy config of `policy_type` with the overrides applied (unknown keys are an error)."""
    import dataclasses

    from lerobot.configs import PreTrainedConfig
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()  # plugin policy types (vst_vla) become known, as the lerobot CLIs do
    try:
        cls = PreTrainedConfig.get_choice_class(cfg.policy_type)
    except KeyError as err:
        raise ValueError(f"unknown policy_type {cfg.policy_type!r}; known: "
                         f"{sorted(PreTrainedConfig.get_known_choices())}") from err
    overrides = {k: v for k, v in dict(cfg.policy_overrides).items() if v is not None or k == "pretrained_backbone_weights"}
    if cfg.backbone_path:
        if cfg.policy_type != "vst_vla":
            raise ValueError(f"backbone_path needs policy_type=vst_vla, got {cfg.policy_type!r}")
        overrides["backbone_path"] = resolve_backbone(cfg.backbone_path)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"policy_overrides {unknown} are not fields of {cls.__name__} ({cfg.policy_type})")
    for k, v in overrides.items():  # YAML lists where the config has tuples
        if isinstance(v, list):
            overrides[k] = tuple(v)
    return cls(**overrides, device=cfg.device, push_to_hub=False)


def lr_lambda(warmup: float, min_fraction: float, total_steps: list[int]):
    """Linear warmup then cosine to `min_fraction`; `total_steps[0]` may shrink during the run."""

    def f(step: int) -> float:
        total = max(total_steps[0], 1)
        n_warm = max(1, int(warmup * total))
        if step < n_warm:
            return (step + 1) / n_warm
        progress = min(1.0, (step - n_warm) / max(1, total - n_warm))
        return min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


# ----------------------------------------------------------------------------------------- held-out error
def _collate(samples: list[dict]) -> dict:
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "task"}
    batch["task"] = [s["task"] for s in samples]
    return batch


@torch.no_grad()
def heldout_action_error(policy, pre, post, dataset, n_frames: int, batch_size: int, mean_action: np.ndarray,
                         seed: int = 0) -> dict:
    """Mean absolute error per action dimension (dataset units) of the executed part of each chunk,
    on frames of held-out episodes, next to the error of always predicting the dataset's mean action."""
    if len(dataset) == 0:
        return {}
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(dataset), size=min(n_frames, len(dataset)), replace=False)
    was_training = policy.training
    policy.eval()
    n_exec = int(getattr(policy.config, "n_action_steps", 1) or 1)
    errs, mean_errs, hold_errs = [], [], []
    for lo in range(0, len(picks), batch_size):
        samples = [dataset[int(i)] for i in picks[lo: lo + batch_size]]
        batch = _collate(samples)
        target, is_pad = batch.pop("action"), batch.pop("action_is_pad")
        obs = pre({k: v for k, v in batch.items()})
        torch.manual_seed(seed + lo)  # the flow head's noise: the same draw at every evaluation
        chunk = policy.predict_action_chunk(obs)  # (B, T, A) normalised
        steps = min(n_exec, chunk.shape[1], target.shape[1])
        pred = torch.stack([post(chunk[:, t]).cpu() for t in range(steps)], dim=1)
        valid = ~is_pad[:, :steps]
        diff = (pred - target[:, :steps]).abs()[valid]
        errs.append(diff.numpy())
        mean_errs.append(np.abs(target[:, :steps][valid].numpy() - mean_action))
        hold = batch["observation.state"][:, None, : target.shape[-1]].expand(-1, steps, -1)
        hold_errs.append((hold - target[:, :steps]).abs()[valid].numpy())
    policy.train(was_training)
    err, base, hold = np.concatenate(errs), np.concatenate(mean_errs), np.concatenate(hold_errs)
    return {"mae": err.mean(0).tolist(), "mean_action_mae": base.mean(0).tolist(),
            "hold_state_mae": hold.mean(0).tolist(),  # "go nowhere": a stricter null than the mean action
            "mae_ratio": float(err.mean() / max(base.mean(), 1e-9)),
            "mae_ratio_vs_hold": float(err.mean() / max(hold.mean(), 1e-9))}


# ----------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(out: Path, step: int, policy, pre, post, optimizer, scheduler, train_cfg: TrainPolicyConfig,
                    expert_done: bool = False) -> Path:
    """checkpoints/<step>/pretrained_model + training_state.pt, written to a temp folder then renamed."""
    root = out / "checkpoints"
    final = root / f"{step:06d}"
    tmp = root / f".{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model_dir = tmp / "pretrained_model"
    policy.save_pretrained(model_dir)
    pre.save_pretrained(model_dir)
    post.save_pretrained(model_dir)
    (model_dir / "train_config.json").write_text(json.dumps(asdict(train_cfg), indent=2, default=str))
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(), "expert_done": expert_done}, tmp / TRAINING_STATE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    last = root / "last"
    link_tmp = root / ".last.tmp"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    link_tmp.symlink_to(final.name)
    os.replace(link_tmp, last)
    return final / "pretrained_model"


# ----------------------------------------------------------------------------------------- training
def train_policy(cfg: TrainPolicyConfig) -> Path:
    """Train; returns the last checkpoint's `pretrained_model` folder."""
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    from vst_vla.tuning.common import Curves

    from .data import ChunkDataset, build_frame_cache, read_episode_table, split_episodes
    from .stats import ensure_global_stats, relative_action_stats

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    root = Path(cfg.dataset_root)
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"dataset_root {root}: no meta/info.json (record one with `vst-vla collect`)")
    ensure_global_stats(root)  # before the metadata is read: the policy's normalisers take these stats
    meta = LeRobotDatasetMetadata(cfg.repo_id, root=root)

    policy_cfg = make_policy_config(cfg)
    policy = make_policy(policy_cfg, ds_meta=meta)
    if cfg.init_from and not cfg.resume:
        _load_initial_weights(policy, cfg.init_from, root)
    _check_expert_phase(cfg, policy)
    camera_keys = list(policy.config.image_features)
    chunk = len(policy.config.action_delta_indices or [0])
    table = read_episode_table(root)
    stats = dict(meta.stats)
    if getattr(policy.config, "use_relative_actions", False):
        # relative targets are normalised with the statistics of relative chunks, not of absolute actions
        names = policy.config.action_feature_names or _action_names(meta)
        policy.config.action_feature_names = names
        excluded = [j.lower() for j in getattr(policy.config, "relative_exclude_joints", [])]
        mask = [not any(j in n.lower() for j in excluded) for n in names]
        stats["action"] = {k: np.asarray(v) for k, v in relative_action_stats(table.state, table.action, table.episode_index, chunk, mask).items()}
        log.info("relative actions on %s", [n for n, m in zip(names, mask, strict=True) if m])
    pre, post = make_pre_post_processors(policy.config, dataset_stats=stats)
    size = _cache_size(policy.config, meta, camera_keys)

    t0 = time.perf_counter()
    frames = build_frame_cache(root, camera_keys, size)
    log.info("frame cache %s ready in %.1f s", frames.shape, time.perf_counter() - t0)
    train_eps, held_eps = split_episodes(table, cfg.heldout_fraction, cfg.seed)
    train_set = ChunkDataset(table, frames, camera_keys, chunk, train_eps)
    held_set = ChunkDataset(table, frames, camera_keys, chunk, held_eps)
    # before any scene is rendered: the shares of the batch the extra frames take must leave room for the episodes
    shares = [cfg.decision_fraction] * (cfg.decision_scenes > 0) + [cfg.dagger_fraction] * bool(cfg.dagger_data)
    if sum(shares) >= 1 or any(not 0 < f < 1 for f in shares):
        raise ValueError(f"decision_fraction + dagger_fraction must each be in (0, 1) and leave room for the "
                         f"episodes; got {shares}")
    extras: list[tuple[torch.utils.data.Dataset, float]] = []  # expert-labelled frames beside the episodes
    if cfg.decision_scenes > 0:
        from .decision_scenes import load_decision_scenes

        decision = load_decision_scenes(root, cfg.decision_families, cfg.decision_scenes, size, camera_keys, chunk,
                                        list(cfg.decision_steps))
        log.info("decision scenes: %d frames, %.0f %% of every batch", len(decision), 100 * cfg.decision_fraction)
        extras.append((decision, cfg.decision_fraction))
    if cfg.dagger_data:
        from .decision_scenes import load_labelled_frames

        dagger = load_labelled_frames(cfg.dagger_data, camera_keys, size, chunk)
        extras.append((dagger, cfg.dagger_fraction))
        log.info("DAgger frames: %d from %d files, %.0f %% of every batch", len(dagger), len(cfg.dagger_data),
                 100 * cfg.dagger_fraction)
    mean_action = table.action[np.isin(table.episode_index, train_eps)].mean(0)
    log.info("%d train episodes (%d frames), %d held out (%d frames)", len(train_eps), len(train_set),
             len(held_eps), len(held_set))

    params = policy.get_optim_params()
    opt_cfg = policy.config.get_optimizer_preset()
    if cfg.lr is not None:
        _rescale_lr(params, opt_cfg.lr, cfg.lr)
        opt_cfg.lr = cfg.lr
    optimizer = opt_cfg.build(params)
    total = [cfg.steps]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_fraction, cfg.min_lr_fraction, total))
    grad_clip = getattr(opt_cfg, "grad_clip_norm", None) or 10.0

    step, expert_done = 0, False
    curves = Curves(out, enabled=True)
    if cfg.resume and (out / "checkpoints" / "last").exists():
        state = torch.load(out / "checkpoints" / "last" / TRAINING_STATE, weights_only=False)
        expert_done = bool(state.get("expert_done", False))
        from safetensors.torch import load_model

        load_model(policy, str(out / LAST_CHECKPOINT / "model.safetensors"))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step = state["step"]
        curves.truncate(step)
        log.info("resumed from step %d%s", step, " (frozen-VLM expert phase done)" if expert_done else "")
        if expert_done:  # the end-to-end steps are behind it too; nothing left to train
            total[0] = step
    elif out.exists() and any(out.iterdir()):
        if cfg.resume:
            raise FileNotFoundError(f"resume=true but {out} has no checkpoints/last")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))

    generator = torch.Generator().manual_seed(cfg.seed + step)
    sampler = None
    if cfg.start_weight != 1.0:
        weights = np.where(train_set.frame_offsets() < cfg.start_frames, cfg.start_weight, 1.0)
        sampler = torch.utils.data.WeightedRandomSampler(torch.from_numpy(weights), len(weights), generator=generator)
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=sampler is None,
                                         sampler=sampler, drop_last=True, num_workers=cfg.num_workers,
                                         collate_fn=_collate, generator=generator,
                                         persistent_workers=cfg.num_workers > 0)
    if len(loader) == 0:
        raise ValueError(f"{len(train_set)} training frames cannot fill one batch of {cfg.batch_size}")

    def evaluate(at: int) -> None:
        res = heldout_action_error(policy, pre, post, held_set, cfg.heldout_frames, cfg.batch_size, mean_action,
                                   seed=cfg.seed)
        if not res:
            return
        names = _action_names(meta)
        curves.log(at, heldout_mae_ratio=res["mae_ratio"], heldout_mae_ratio_vs_hold=res["mae_ratio_vs_hold"],
                   **{f"heldout_mae/{n}": v for n, v in zip(names, res["mae"], strict=True)})
        log.info("step %d: held-out action error %s (mean-action baseline %s)", at,
                 _fmt(names, res["mae"]), _fmt(names, res["mean_action_mae"]))
        (out / "heldout.json").write_text(json.dumps({"step": at, "names": names, **res}, indent=2))

    policy.train()
    t_train, seen, loss_window = 0.0, 0, []
    deadline = None if cfg.max_minutes is None else 60 * cfg.max_minutes
    t_step = time.perf_counter()
    while step < total[0]:
        for batch in loader:  # training time counts loading + update; held-out evaluation and saving do not
            if extras:
                batch = _with_extra_frames(batch, extras, cfg.batch_size, generator)
            batch = pre(batch)
            loss, info = policy.forward(batch)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            t_train += time.perf_counter() - t_step
            t_step = time.perf_counter()
            seen += cfg.batch_size
            loss_window.append(loss.item())
            if deadline is not None and step >= 20:  # a time budget: shrink the run (and schedule) to fit it
                total[0] = _steps_within(deadline, step, t_train, cfg.steps)
            if step % cfg.log_freq == 0 or step == total[0]:
                curves.log(step, loss=float(np.mean(loss_window)), lr=scheduler.get_last_lr()[0],
                           grad_norm=float(grad_norm), samples_per_s=seen / max(t_train, 1e-9))
                log.info("step %d/%d loss %.4f lr %.2e %.1f samples/s", step, total[0], np.mean(loss_window),
                         scheduler.get_last_lr()[0], seen / max(t_train, 1e-9))
                loss_window = []
            if cfg.eval_freq and step % cfg.eval_freq == 0 and step < total[0]:
                evaluate(step)
            if step % cfg.save_freq == 0 and step < total[0]:
                save_checkpoint(out, step, policy, pre, post, optimizer, scheduler, cfg)
            if step >= total[0]:
                break
            t_step = time.perf_counter()  # excludes the evaluation and saving above
    evaluate(step)
    checkpoint = save_checkpoint(out, step, policy, pre, post, optimizer, scheduler, cfg, expert_done=expert_done)
    expert = {}
    if (cfg.expert_steps > 0 or cfg.expert_minutes) and not expert_done:
        end_to_end = step
        seen_e, t_e, step = _expert_phase(cfg, policy, opt_cfg, grad_clip, train_set, extras, curves, step, pre)
        expert = {"end_to_end_steps": end_to_end, "expert_steps": step - end_to_end, "expert_seconds": round(t_e, 1),
                  "expert_samples_per_s": round(seen_e / max(t_e, 1e-9), 2)}
        evaluate(step)
        checkpoint = save_checkpoint(out, step, policy, pre, post, optimizer, scheduler, cfg, expert_done=True)
    summary = {"steps": step, "train_seconds": round(t_train, 1), "train_samples_per_s": round(seen / max(t_train, 1e-9), 2),
               "checkpoint": str(checkpoint), **expert}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    curves.finish(f"{cfg.policy_type} training")
    print(f"policy checkpoint: {checkpoint}")
    return checkpoint


def _steps_within(deadline: float, done: int, seconds: float, most: int) -> int:
    """The run's step count under a time budget, from the pace so far (never above `most`)."""
    return min(most, done if seconds >= deadline else int(done * deadline / seconds))


def _with_extra_frames(batch: dict, extras: list, batch_size: int, generator: torch.Generator) -> dict:
    """The loader's batch with its tail replaced by samples of each extra source (decision scenes, DAgger
    frames), each filling its fraction of the batch (at least one sample)."""
    picked = []
    for source, fraction in extras:
        k = max(1, round(fraction * batch_size))
        picked += [source[i] for i in torch.randint(0, len(source), (k,), generator=generator).tolist()]
    extra = _collate(picked)
    keep = batch_size - len(picked)
    if keep < 1:
        raise ValueError(f"extra frames fill the whole batch of {batch_size}; lower their fractions")
    merged = {key: torch.cat([batch[key][:keep], extra[key]]) for key in batch if key != "task"}
    merged["task"] = list(batch["task"][:keep]) + extra["task"]
    return merged


def _load_initial_weights(policy, path: str, dataset_root: Path) -> None:
    """Fine-tune from a checkpoint: its weights into the freshly built policy (every tensor, same shapes)."""
    from safetensors.torch import load_model

    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"init_from {path}: no model.safetensors (a checkpoint's pretrained_model folder)")
    try:
        load_model(policy, str(weights))  # strict; tied tensors (saved once) are handled as the resume path does
    except RuntimeError as err:
        raise ValueError(f"init_from {path} does not fit the policy these overrides build: {err}") from err
    trained_on = Path(path) / "train_config.json"
    if trained_on.is_file():
        other = json.loads(trained_on.read_text()).get("dataset_root")
        if other and Path(other).resolve() != dataset_root.resolve():
            log.warning("init_from %s was trained on %s, this run normalises with %s's statistics", path, other,
                        dataset_root)
    log.info("initial weights from %s", path)


def _check_expert_phase(cfg: TrainPolicyConfig, policy) -> None:
    """Before any training: a frozen-VLM phase the policy cannot run fails now, not after the first phase."""
    if not (cfg.expert_steps > 0 or cfg.expert_minutes):
        return
    if getattr(policy.config, "action_head", None) != "flow":
        raise ValueError(f"expert_steps / expert_minutes train the flow expert on a frozen VLM; policy "
                         f"{cfg.policy_type!r} (action_head {getattr(policy.config, 'action_head', None)!r}) has none")
    if getattr(policy.config, "state_dropout", 0.0) > 0:
        raise ValueError("expert_steps / expert_minutes cache each frame's prefix once, so state_dropout "
                         f"({policy.config.state_dropout}) cannot apply; set it to 0")


def _expert_phase(cfg: TrainPolicyConfig, policy, opt_cfg, grad_clip: float, train_set, extras, curves, step: int,
                  pre):
    """The frozen-VLM phase: cache the prefix features of every training frame (and extra frame), train the
    expert alone on the same mixture as before. Decision scenes must stay in it: on the demonstrations alone the
    expert re-fits their hundred decisions and loses what the scenes taught (pan correlation 0.78 -> 0.0).
    Returns (samples seen, training seconds, the step count after it); steps continue the run's numbering."""
    from .prefix_cache import build_prefix_cache, expert_step, freeze_all_but_expert

    t0 = time.perf_counter()
    frames = torch.utils.data.ConcatDataset([train_set, *(source for source, _ in extras)])
    tasks = list(train_set.table.tasks) + [str(t) for source, _ in extras for t in source.data["task"]]
    shares = [(len(source), fraction) for source, fraction in extras]  # in the cache's order, after the episodes
    cache = build_prefix_cache(policy, pre, frames, _collate, tasks, max_gb=cfg.expert_cache_max_gb)
    log.info("frozen-VLM phase: prefix cache of %d frames in %.0f s", len(cache), time.perf_counter() - t0)
    params = freeze_all_but_expert(policy)
    lr = cfg.expert_lr or cfg.lr or opt_cfg.lr
    optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(getattr(opt_cfg, "betas", (0.9, 0.999))),
                                  weight_decay=getattr(opt_cfg, "weight_decay", 0.0))
    steps = cfg.expert_steps if cfg.expert_steps > 0 else 10**7
    total = [steps]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_fraction, cfg.min_lr_fraction, total))
    generator = torch.Generator().manual_seed(cfg.seed + step)
    deadline = None if cfg.expert_minutes is None else 60 * cfg.expert_minutes
    policy.train()
    done, t_train, losses, start = 0, 0.0, [], step
    while done < total[0]:
        t = time.perf_counter()
        losses.append(expert_step(policy, cache, optimizer, cfg.expert_batch_size, generator, grad_clip, shares))
        scheduler.step()
        done += 1
        t_train += time.perf_counter() - t
        if deadline is not None and done >= 20:
            total[0] = _steps_within(deadline, done, t_train, steps)
        if done % cfg.log_freq == 0 or done == total[0]:
            rate = done * cfg.expert_batch_size / max(t_train, 1e-9)
            curves.log(start + done, loss=float(np.mean(losses)), lr=scheduler.get_last_lr()[0], samples_per_s=rate)
            log.info("expert step %d/%d loss %.4f lr %.2e %.1f samples/s (frozen VLM, cached prefixes)", done,
                     total[0], np.mean(losses), scheduler.get_last_lr()[0], rate)
            losses = []
    return done * cfg.expert_batch_size, t_train, start + done


def _cache_size(policy_cfg, meta, camera_keys: list[str]) -> tuple[int, int]:
    """Cache frames at the policy's input size when it resizes anyway (vst_vla), else at the dataset's."""
    size = getattr(policy_cfg, "image_size", None)
    if size is not None:
        return int(size[0]), int(size[1])
    shape = meta.features[camera_keys[0]]["shape"]  # (H, W, C) in LeRobot's info.json
    return int(shape[0]), int(shape[1])


def _rescale_lr(groups, old: float, new: float) -> None:
    """Keep each param group's ratio to the base rate (e.g. the ViT's scale) when the base rate changes."""
    if isinstance(groups, dict):
        return
    for g in groups:
        if isinstance(g, dict) and "lr" in g:
            g["lr"] = g["lr"] * new / old


def _action_names(meta) -> list[str]:
    names = meta.features["action"].get("names")
    if isinstance(names, dict):
        names = next(iter(names.values()))
    return [str(n) for n in names] if names else [f"a{i}" for i in range(meta.features["action"]["shape"][0])]


def _fmt(names: list[str], values: list[float]) -> str:
    return " ".join(f"{n.removesuffix('.pos')}={v:.2f}" for n, v in zip(names, values, strict=True))
