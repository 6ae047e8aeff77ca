"""vst-vla: Visual Spatial Tuning for vision-language-action policies."""
