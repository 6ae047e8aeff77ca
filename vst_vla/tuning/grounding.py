"""Target grounding: tune the backbone to find the object an instruction names, from sim ground truth.

A policy decides *which* object to go for from its first frame only; a hundred demonstrations give it a
hundred such decisions, too few for a VLM from scratch to learn a spatial rule ("the leftmost green
cube") rather than memorise scenes. Rendering a first frame costs ~16 ms, so this stage shows the
backbone thousands of distinct scenes instead: the policy's own prompt (its cameras, image size, state
token and instruction, built by `VSTVLAPolicy._encode_prefix`), and a linear head on the prefix's last
hidden state that regresses the target's table position (x, y). The head is thrown away; `final/` is a
plain Qwen2.5-VL checkpoint that `vst-vla train-policy backbone_path=…` starts from — VST's idea
(spatial perception from exact ground truth before action learning) in its cheapest form.

Held-out scenes are scored every `eval_every` steps (`metrics.jsonl`, `curves.png`, `result.json`):
- `error_cm`: distance of the predicted position to the target;
- `decision`: how often the prediction is nearer the target than every look-alike (the objects a
  spatially blind agent confuses it with; with two look-alikes a blind model scores about 0.5);
- `commit`: median of where the prediction lies between the centre of the look-alikes (0) and the
  target (1); a model that finds the look-alikes but not the rule sits at 0;
- the same per criterion ("leftmost", "nearest to", ...), and the references: predicting the mean
  position, and predicting the centre of target and look-alikes.
Scene seeds come from `vst_vla/seeds.py` (grounding range), disjoint from every other use.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from vst_vla.atomic import save_atomic, save_npz_atomic, write_text_atomic
from vst_vla.seeds import GROUNDING_SEED_BASE, family_index, scene_seed
from vst_vla.tuning.common import Curves

log = logging.getLogger(__name__)

MAX_LOOKALIKES = 3


@dataclass
class GroundingConfig:
    families: list[str] = field(default_factory=lambda: ["pick_extreme"])
    scenes_per_family: int = 5000  # rendered first frames; the last `test_per_family` of each are held out
    test_per_family: int = 300
    train_per_family: int | None = None  # train on the first N only (e.g. as many scenes as demonstrations)
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    image_size: int = 112  # the policy's (square) camera size
    backbone_preset: str = "tiny"
    backbone_absolute_positions: bool = False  # presets only: 2-D sin/cos patch positions in the ViT
    backbone_path: str | None = None  # start from a checkpoint (e.g. a `vst-vla sft` final/) instead
    steps: int = 800
    batch_size: int = 16
    lr: float = 1e-3  # a tiny preset from scratch; ~1e-5 for a pretrained backbone
    warmup_fraction: float = 0.05
    eval_every: int = 100
    output_dir: str = "outputs/tuning/grounding"
    cache_dir: str | None = None  # rendered scenes (default: <output_dir>/scenes)
    seed: int = 0
    threads: int | None = None


# ------------------------------------------------------------------------------------------- scenes
def render_first_frames(family: str, n: int, size: int, cameras: list[str], cache: Path) -> dict[str, np.ndarray]:
    """First frames of `n` scenes: images per camera, instruction, target and look-alike (x, y), criterion."""
    if cache.is_file():
        data = dict(np.load(cache))
        if len(data["task"]) >= n and all(c in data for c in cameras):
            return {k: v[:n] for k, v in data.items()}
    from lerobot_env_vst_vla import SpatialTabletopEnv

    family_index(family)  # an unknown family fails here, before an env is built
    env = SpatialTabletopEnv(task=family, observation_width=size, observation_height=size, cameras=tuple(cameras))
    rows: dict[str, list] = {c: [] for c in cameras} | {"task": [], "target": [], "lookalikes": [], "criterion": []}
    for s in range(n):
        obs, _ = env.reset(seed=scene_seed(GROUNDING_SEED_BASE, family, s))
        episode = env.episode
        others = [k["target"] for k in env.family.lookalikes(episode) if k["target"] != episode.target]
        xy = [env.object_position(k)[:2] for k in others][:MAX_LOOKALIKES]
        for c in cameras:
            rows[c].append(obs["pixels"][c])
        rows["task"].append(env.task_description)
        rows["target"].append(env.object_position(episode.target)[:2])
        rows["lookalikes"].append(np.stack(xy + [np.full(2, np.nan)] * (MAX_LOOKALIKES - len(xy))))
        details = episode.details or {}
        rows["criterion"].append(str(details.get("relation") or details.get("criterion") or family))
    env.close()
    data = {k: np.array(v) if k in ("task", "criterion") else np.stack(v) for k, v in rows.items()}
    save_npz_atomic(cache, data)
    return data


def load_scenes(cfg: GroundingConfig) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """All families' scenes concatenated, with train and held-out indices."""
    cache = Path(cfg.cache_dir or Path(cfg.output_dir) / "scenes")
    parts, train, test, offset = [], [], [], 0
    if cfg.test_per_family >= cfg.scenes_per_family:
        raise ValueError(f"test_per_family ({cfg.test_per_family}) must be below scenes_per_family "
                         f"({cfg.scenes_per_family})")
    for family in cfg.families:
        log.info("rendering %d first frames of %s (cached in %s)", cfg.scenes_per_family, family, cache)
        part = render_first_frames(family, cfg.scenes_per_family, cfg.image_size, cfg.cameras,
                                   cache / f"{family}_{cfg.image_size}px.npz")
        n = len(part["task"])
        n_train = n - cfg.test_per_family
        if cfg.train_per_family is not None:
            if not 0 < cfg.train_per_family <= n_train:
                raise ValueError(f"train_per_family ({cfg.train_per_family}) must be in [1, {n_train}] "
                                 f"(scenes_per_family - test_per_family)")
            n_train = cfg.train_per_family
        train.append(offset + np.arange(n_train))
        test.append(offset + np.arange(n - cfg.test_per_family, n))
        parts.append(part)
        offset += n
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return data, np.concatenate(train), np.concatenate(test)


# -------------------------------------------------------------------------------------------- scores
def grounding_scores(pred: np.ndarray, target: np.ndarray, lookalikes: np.ndarray, criteria: np.ndarray) -> dict:
    """Error (cm), decision and commitment of predicted (x, y) positions, overall and per criterion."""
    d_target = np.linalg.norm(pred - target, axis=1)
    valid = ~np.isnan(lookalikes[..., 0])  # (N, K)
    has = valid.any(1)
    d_others = np.where(valid, np.linalg.norm(pred[:, None] - np.nan_to_num(lookalikes), axis=2), np.inf).min(1)
    right = d_target < d_others
    centre = np.where(has[:, None], (target + np.nansum(lookalikes, 1)) / (1 + valid.sum(1, keepdims=True)), target)
    u = target - centre
    commit = ((pred - centre) * u).sum(1) / np.maximum((u * u).sum(1), 1e-12)
    out = {"error_cm": float(d_target.mean() * 100)}
    if has.any():
        out |= {"decision": float(right[has].mean()), "commit": float(np.median(commit[has]))}
        out["per_criterion"] = {str(c): {"decision": round(float(right[has & (criteria == c)].mean()), 3),
                                         "commit": round(float(np.median(commit[has & (criteria == c)])), 3),
                                         "n": int((has & (criteria == c)).sum())}
                                for c in sorted(set(criteria[has].tolist()))}
        out["centre_cm"] = float(np.linalg.norm(target - centre, axis=1)[has].mean() * 100)
    return out


# -------------------------------------------------------------------------------------------- model
def _policy(cfg: GroundingConfig):
    """A vst_vla policy shell with the policy's cameras and image size: its prompt is what we tune."""
    from lerobot.configs import FeatureType, PolicyFeature
    from lerobot_policy_vst_vla.configuration_vst_vla import VSTVLAConfig
    from lerobot_policy_vst_vla.modeling_vst_vla import VSTVLAPolicy

    size = (cfg.image_size, cfg.image_size)
    features = {f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, *size)) for c in cfg.cameras}
    features["observation.state"] = PolicyFeature(FeatureType.STATE, (6,))
    config = VSTVLAConfig(input_features=features, output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))},
                          action_head="flow", image_size=size, backbone_preset=cfg.backbone_preset,
                          backbone_path=cfg.backbone_path, backbone_seed=cfg.seed,
                          backbone_absolute_positions=cfg.backbone_absolute_positions, device="cpu", push_to_hub=False)
    return VSTVLAPolicy(config)


def train_grounding(cfg: GroundingConfig) -> Path:
    """Tune the backbone on target positions; return `<output_dir>/final` (a Qwen2.5-VL checkpoint)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, train, test = load_scenes(cfg)
    torch.manual_seed(cfg.seed)
    policy = _policy(cfg)
    policy.train()
    head = torch.nn.Linear(policy.vlm.config.text_config.hidden_size, 2)
    params = [p for p in policy.vlm.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, int(cfg.warmup_fraction * cfg.steps))
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup, cfg.steps)  # as `vst-vla sft`'s
    mean, std = data["target"][train].mean(0), data["target"][train].std(0)
    # every first frame has the arm at home, so the state token is a constant; the policy re-initialises
    # its state projection anyway, so zeros (not the dataset-normalised home) lose nothing
    home = torch.zeros(1, 6)

    def predict(idx: np.ndarray) -> torch.Tensor:
        batch = {f"observation.images.{c}": torch.from_numpy(data[c][idx]).permute(0, 3, 1, 2).float() / 255
                 for c in cfg.cameras}
        batch["task"] = [str(t) for t in data["task"][idx]]
        batch["observation.state"] = home.expand(len(idx), -1)
        return head(policy._run_vlm(policy._encode_prefix(batch)).last_hidden_state[:, -1])

    def score() -> dict:
        policy.eval()
        with torch.no_grad():
            pred = np.concatenate([predict(test[i:i + 50]).numpy() for i in range(0, len(test), 50)]) * std + mean
        policy.train()
        return grounding_scores(pred, data["target"][test], data["lookalikes"][test], data["criterion"][test])

    curves = Curves(out, enabled=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    rng = np.random.default_rng(cfg.seed)
    history, start, loss_sum, n_loss = [], time.perf_counter(), 0.0, 0
    for step in range(cfg.steps + 1):
        if step % cfg.eval_every == 0 or step == cfg.steps:
            s = score()
            history.append({"step": step, **s, "s": round(time.perf_counter() - start, 1)})
            curves.log(step, error_cm=s["error_cm"], **{k: s[k] for k in ("decision", "commit") if k in s},
                       **({"train_loss": loss_sum / n_loss} if n_loss else {}))
            loss_sum, n_loss = 0.0, 0
            log.info("grounding step %d/%d: error %.2f cm, decision %s, commit %s", step, cfg.steps, s["error_cm"],
                     s.get("decision"), s.get("commit"))
        if step == cfg.steps:
            break
        idx = rng.choice(train, cfg.batch_size)
        y = torch.from_numpy((data["target"][idx] - mean) / std).float()
        loss = ((predict(idx) - y) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
        loss_sum, n_loss = loss_sum + loss.item(), n_loss + 1
    curves.finish("grounding")
    final = out / "final"
    save_atomic(lambda d: (policy.vlm.save_pretrained(d), policy.processor.save_pretrained(d)), final)
    target, test_rows = data["target"][test], data["lookalikes"][test]
    references = {"mean_position_cm": float(np.linalg.norm(target - mean, axis=1).mean() * 100),
                  "lookalike_centre_cm": history[-1].get("centre_cm")}
    write_text_atomic(out / "result.json", json.dumps({
        "families": cfg.families, "train_scenes": int(len(train)), "test_scenes": int(len(test)),
        "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "image_size": cfg.image_size,
        "references": references, "final": history[-1], "curve": history,
        "n_test_with_lookalikes": int((~np.isnan(test_rows[:, 0, 0])).sum())}, indent=1))
    log.info("grounding: %s (error %.2f cm; mean-position reference %.2f cm)", final, history[-1]["error_cm"],
             references["mean_position_cm"])
    return final
