"""Policy training and evaluation stages: `vst-vla train-policy` and `vst-vla eval-policy`.

Training (`train.py`) runs any LeRobot policy over a frame cache of the dataset (`data.py`) with
dataset-global statistics (`stats.py`), a schedule sized to the run and held-out action error;
evaluation (`evaluate.py`) rolls a checkpoint or a baseline (`baselines.py`) out in the sim and
reports success and the metrics that move before it (`metrics.py`) with Wilson intervals, videos and
Rerun recordings.
"""
