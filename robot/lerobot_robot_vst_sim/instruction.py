"""Print the instruction of a sim scene, for `lerobot-rollout --task` (rollout reads only --task):

    TASK=$(python -m lerobot_robot_vst_sim.instruction --task_family=stack --seed=3)
    lerobot-rollout --robot.type=vst_sim_so101 --robot.task_family=stack --robot.seed=3 --task="$TASK" ...
"""

import argparse

from .config_vst_sim_so101 import VstSimSO101Config
from .vst_sim_so101 import instruction_for


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task_family", default="stack")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--randomize", default="true", choices=["true", "false"])
    a = p.parse_args()
    print(instruction_for(VstSimSO101Config(task_family=a.task_family, seed=a.seed, randomize=a.randomize == "true")))


if __name__ == "__main__":
    main()
