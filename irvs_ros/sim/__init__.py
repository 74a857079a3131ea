"""Simulated environments, oracles and rollouts (numpy, pybullet)."""
