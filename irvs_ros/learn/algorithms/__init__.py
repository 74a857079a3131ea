"""Algorithms: each module registers its classes with `base.register` on import."""

from irvs_ros.learn.algorithms.base import ALGORITHMS, Algorithm, ExportGraph, make_algorithm, register

__all__ = ["ALGORITHMS", "Algorithm", "ExportGraph", "make_algorithm", "register"]
