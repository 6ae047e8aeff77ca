"""Rerun visualisation of every vst-vla stage: recorded episodes, scene ground truth, policy rollouts."""
