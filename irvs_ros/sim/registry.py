"""Environments and their oracles by name: "particle", "room", "leftmost" (toys), "push", "push_insert" (xArm6 cell)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from irvs_ros.runtime.spec import StateLayout
from irvs_ros.sim.leftmost import LeftmostEnv, LeftmostOracle
from irvs_ros.sim.particle import ParticleEnv, ParticleOracle
from irvs_ros.sim.push_oracle import PRE_PUSH_TOL, REACH_TOL, InsertOracle, PushOracle
from irvs_ros.sim.push_tasks import STATE_KEYS as PUSH_STATE_KEYS
from irvs_ros.sim.push_tasks import PushEnv, PushInsertEnv
from irvs_ros.sim.room import RoomEnv, RoomOracle


class Oracle(Protocol):
    """A scripted policy for one environment: `reset()` at each episode start, then one action per observation.

    `__call__` takes an unbatched observation {"state": (S,)} and returns an action (A,) float32 in raw units.
    """

    def reset(self) -> None: ...

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...


ENVS: dict[str, type[gym.Env]] = {"particle": ParticleEnv, "room": RoomEnv, "leftmost": LeftmostEnv,
                                  "push": PushEnv, "push_insert": PushInsertEnv}


# How each environment's state vector is laid out, ((name, size), ...), where its entries have names.
STATE_LAYOUTS: dict[str, StateLayout] = {"push": PUSH_STATE_KEYS, "push_insert": PUSH_STATE_KEYS}


def state_layout(name: str | None) -> StateLayout | None:
    """The named layout of environment `name`'s state vector, or None where its entries have no names."""
    return STATE_LAYOUTS.get(name) if name else None


def _checked_kwargs(what: str, fn: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    params = [p for p in inspect.signature(fn).parameters.values() if p.name not in ("self", "env", "rng")]
    names = {p.name for p in params}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ValueError(f"{what} has no parameter(s) {unknown}; it takes {sorted(names) or 'none'}")
    return kwargs


def make_env(name: str, **kwargs: Any) -> gym.Env:
    """A new environment: "particle" (n_dim, ...), "room" (max_step, goal_radius, max_steps) or
    "leftmost" (n_dim, delta, goal_radius, success_tol, max_steps). Unknown names or parameters raise ValueError.
    """
    if name not in ENVS:
        raise ValueError(f"unknown environment {name!r}; known: {sorted(ENVS)}")
    cls = ENVS[name]
    return cls(**_checked_kwargs(f"environment {name!r}", cls.__init__, kwargs))


def _particle_oracle(env: ParticleEnv, rng: np.random.Generator, switch_radius: float = 0.01) -> Oracle:
    return ParticleOracle(env.n_dim, switch_radius=switch_radius)


def _room_oracle(env: RoomEnv, rng: np.random.Generator, noise: float = 0.05) -> Oracle:
    return RoomOracle(rng, max_step=env.max_step, noise=noise)


def _leftmost_oracle(env: LeftmostEnv, rng: np.random.Generator, p_optimal: float = 1.0) -> Oracle:
    return LeftmostOracle(env.n_dim, rng, p_optimal=p_optimal)


def _push_oracle(env: PushEnv, rng: np.random.Generator, noise_std: float = 0.0,
                 pre_push_tol: float = PRE_PUSH_TOL, memoryless: bool = False, reach_tol: float = REACH_TOL) -> Oracle:
    return PushOracle(env.cfg.cell.envelope.policy_period, noise_std=noise_std, rng=rng, pre_push_tol=pre_push_tol,
                      memoryless=memoryless, reach_tol=reach_tol)


def _push_insert_oracle(env: PushInsertEnv, rng: np.random.Generator, noise_std: float = 0.0,
                        pre_push_tol: float = PRE_PUSH_TOL, memoryless: bool = False,
                        reach_tol: float = REACH_TOL) -> Oracle:
    return InsertOracle(env.cfg.cell.envelope.policy_period, noise_std=noise_std, rng=rng,
                        block_size=env.cfg.cell.block_size, pocket=env.pocket, pre_push_tol=pre_push_tol,
                        memoryless=memoryless, reach_tol=reach_tol)


ORACLES: dict[str, tuple[type[gym.Env], Callable[..., Oracle]]] = {
    "particle": (ParticleEnv, _particle_oracle),
    "room": (RoomEnv, _room_oracle),
    "leftmost": (LeftmostEnv, _leftmost_oracle),
    "push": (PushEnv, _push_oracle),
    "push_insert": (PushInsertEnv, _push_insert_oracle),
}


def make_oracle(name: str, env: gym.Env, rng: np.random.Generator | None = None, **kwargs: Any) -> Oracle:
    """The scripted policy for environment `name`, reading its parameters from `env`.

    Options: particle (switch_radius=0.01), room (noise=0.05, as a fraction of the step limit),
    leftmost (p_optimal=1.0), push / push_insert (noise_std=0.0, pre_push_tol=0.005 m, memoryless=False,
    reach_tol=0.006 m).
    `rng` drives the oracle's own choices and noise.
    """
    if name not in ORACLES:
        raise ValueError(f"no oracle for environment {name!r}; known: {sorted(ORACLES)}")
    env_cls, factory = ORACLES[name]
    if not isinstance(env.unwrapped, env_cls):
        raise ValueError(f"the {name!r} oracle needs a {env_cls.__name__}, got {type(env.unwrapped).__name__}")
    rng = np.random.default_rng() if rng is None else rng
    return factory(env.unwrapped, rng, **_checked_kwargs(f"the {name!r} oracle", factory, kwargs))


def env_names() -> list[str]:
    """Names accepted by `make_env`."""
    return sorted(ENVS)
