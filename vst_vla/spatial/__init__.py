"""Spatial data: VST-P style perception QA, VST-R style reasoning QA, VST data loaders, scoring."""
