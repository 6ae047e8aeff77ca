"""Backbone tuning, VST's three stages: SFT on perception data, CoT SFT on reasoning data, GRPO."""
