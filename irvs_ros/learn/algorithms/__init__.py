"""Algorithms: each module registers its classes with `base.register` on import."""

from irvs_ros.learn.algorithms import mdn, mse, nearest  # noqa: F401 - registers "mse", "mdn", "nn"
from irvs_ros.learn.algorithms.base import ALGORITHMS, Algorithm, ExportGraph, make_algorithm, register

try:  # the implicit family ("ebm_dfo", "ebm_adfo", "ebm_langevin", "irvs")
    from irvs_ros.learn.algorithms import ebm  # noqa: F401
except ModuleNotFoundError as e:  # only a missing ebm module is tolerated, not a broken import inside it
    if e.name != "irvs_ros.learn.algorithms.ebm":
        raise

__all__ = ["ALGORITHMS", "Algorithm", "ExportGraph", "make_algorithm", "register"]
