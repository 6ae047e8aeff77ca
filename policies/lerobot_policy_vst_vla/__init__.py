"""VST-VLA LeRobot policy plugin (policy type `vst_vla`)."""
