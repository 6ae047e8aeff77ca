"""One GRPO policy update on fixed groups; test_tuning runs it under `accelerate launch` (2 CPU
processes, unequal kept groups: 3 on rank 0, 1 on rank 1) and alone (all 4), and compares the weights.

    python tests/grpo_update_worker.py DATA OUT.safetensors
"""

import sys

import datasets
import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from vst_vla.backbone import BackboneConfig, build_backbone, encode_for_generation
from vst_vla.tuning.grpo import Group, GRPOConfig, policy_update, score_old
from vst_vla.tuning.rollouts import length_mask

torch.set_num_threads(1)


def fixed_groups(backbone, data: str) -> list[Group]:
    rows = list(datasets.load_from_disk(data)["train"])[:4]
    vocab = backbone.model.config.text_config.vocab_size
    groups = []
    for k, row in enumerate(rows):
        gen = torch.Generator().manual_seed(k)
        completions = torch.randint(100, min(vocab, 2000), (3, 6), generator=gen)
        lengths = torch.tensor([6, 4, 2 + k % 2])
        adv = torch.tensor([1.0, -0.4, -0.6]) * (k + 1)
        groups.append(Group(encode_for_generation(backbone, [row], data), completions, length_mask(lengths, 6), adv))
    return groups


def main(data: str, out: str) -> None:
    accelerator = Accelerator(cpu=True)
    backbone = build_backbone(BackboneConfig(preset="tiny", seed=0))
    groups = fixed_groups(backbone, data)
    optimizer = torch.optim.SGD(backbone.model.parameters(), lr=0.5)
    model, optimizer = accelerator.prepare(backbone.model, optimizer)
    cfg = GRPOConfig(temperature=0.7, max_grad_norm=1e9)
    if accelerator.num_processes == 1:
        mine = groups
    else:
        mine = groups[:3] if accelerator.process_index == 0 else groups[3:]
    unwrapped = accelerator.unwrap_model(model).train()
    score_old(unwrapped, None, mine, cfg)
    stats = policy_update(model, optimizer, accelerator, mine, groups[0], cfg)
    assert stats["stepped"] == 1.0 and stats["ratio_dev"] < 1e-5, stats
    if accelerator.is_main_process:
        save_file({k: v.contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}, out)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:3])
