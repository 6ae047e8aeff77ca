"""Policy training and evaluation stages: `vst-vla train-policy` and `vst-vla eval-policy`.

Training is LeRobot's own `lerobot-train` loop, driven from a typed hydra config; evaluation rolls a
LeRobot checkpoint out in the sim with per-family success, Wilson intervals, videos and Rerun
recordings that show the predicted action chunks in 3D.
"""
