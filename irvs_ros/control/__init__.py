"""Setpoint interpolation, safety envelope and IK for the xArm6 (numpy, pybullet)."""
