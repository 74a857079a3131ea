"""Oracle demonstrations and seeded policy evaluation on the toy environments.

Determinism: demo episode i of a run with `seed` depends only on (seed, i), never on the number of
workers. Its start/goals come from a 32-bit seed derived from (seed, i) with numpy's SeedSequence, so demo
episodes do not coincide with evaluation episodes, which reset with the plain integers seed + i.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from irvs_ros.sim.registry import Oracle, make_env, make_oracle

ActFn = Callable[[dict[str, np.ndarray]], np.ndarray]


def demo_env_seed(seed: int, index: int) -> int:
    """The reset seed of demo episode `index` of a run seeded `seed` (a 32-bit integer)."""
    return int(np.random.SeedSequence([seed, index, 0]).generate_state(1)[0])


def _json_scalars(info: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly scalar entries of an env info dict (numpy scalars converted)."""
    out: dict[str, Any] = {}
    for k, v in info.items():
        if isinstance(v, (bool, np.bool_)):
            out[k] = bool(v)
        elif isinstance(v, (int, np.integer)):
            out[k] = int(v)
        elif isinstance(v, (float, np.floating)):
            out[k] = float(v)
        elif isinstance(v, str):
            out[k] = v
    return out


def run_oracle_episode(env: Any, oracle: Oracle, env_seed: int, *, action_noise: float = 0.0,
                       noise_rng: np.random.Generator | None = None) -> dict[str, Any]:
    """One oracle episode: dict(state (T, S) float32, action (T, A) float32, reward (T,) float32,
    success bool, info dict). The recorded action is the one executed (noisy and clipped when action_noise > 0;
    noise std = action_noise * (high - low) of the action space).
    """
    obs, info = env.reset(seed=env_seed)
    oracle.reset()
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    states, actions, rewards = [], [], []
    done = False
    while not done:
        action = np.asarray(oracle(obs), dtype=np.float64)
        if action_noise > 0:
            rng = noise_rng if noise_rng is not None else np.random.default_rng()
            action = action + rng.normal(0.0, 1.0, action.shape) * action_noise * (high - low)
        action = np.clip(action, low, high)
        states.append(obs["state"])
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        done = terminated or truncated
    return {"state": np.asarray(states, dtype=np.float32), "action": np.asarray(actions, dtype=np.float32),
            "reward": np.asarray(rewards, dtype=np.float32), "success": bool(info.get("success", False)),
            "info": {k: v for k, v in _json_scalars(info).items() if k != "success"}}


def _collect_chunk(job: tuple[str, dict, int, Sequence[int], float, dict]) -> list[dict[str, Any]]:
    """Worker entry point: demo episodes `indices` of a run (top-level so that spawned processes can import it)."""
    env_name, env_kwargs, seed, indices, action_noise, oracle_kwargs = job
    env = make_env(env_name, **env_kwargs)
    episodes = []
    for i in indices:
        oracle = make_oracle(env_name, env, np.random.default_rng([seed, i, 1]), **oracle_kwargs)
        ep = run_oracle_episode(env, oracle, demo_env_seed(seed, i), action_noise=action_noise,
                                noise_rng=np.random.default_rng([seed, i, 2]))
        ep["info"].update(index=int(i), env_seed=demo_env_seed(seed, i))
        episodes.append(ep)
    return episodes


def iter_demos(env_name: str, env_kwargs: dict | None, num_episodes: int, seed: int, *, workers: int = 1,
               action_noise: float = 0.0, only_success: bool = False, oracle_kwargs: dict | None = None,
               max_attempts: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield oracle episodes in index order (see `collect_demos`); streams, so datasets need not fit in memory.

    With only_success, failed episodes are skipped and later indices are tried until `num_episodes` successes
    (at most `max_attempts` episodes, default 10 * num_episodes + 100; then RuntimeError).
    """
    env_kwargs, oracle_kwargs = dict(env_kwargs or {}), dict(oracle_kwargs or {})
    if int(num_episodes) != num_episodes or num_episodes < 1:
        raise ValueError(f"num_episodes must be a positive integer, got {num_episodes!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 0.0 <= action_noise < math.inf:
        raise ValueError(f"action_noise must be a finite value >= 0, got {action_noise}")
    # Fail fast in this process on bad names or parameters, before any worker starts.
    probe = make_env(env_name, **env_kwargs)
    make_oracle(env_name, probe, np.random.default_rng(0), **oracle_kwargs)
    attempts = num_episodes if not only_success else (max_attempts or 10 * num_episodes + 100)
    chunk = max(1, min(32, math.ceil(num_episodes / (4 * workers))))
    jobs = [(env_name, env_kwargs, int(seed), range(s, min(s + chunk, attempts)), float(action_noise), oracle_kwargs)
            for s in range(0, attempts, chunk)]
    return _run_jobs(jobs, env_name, int(num_episodes), attempts, workers, only_success)


def _run_jobs(jobs: list[tuple], env_name: str, num_episodes: int, attempts: int, workers: int,
              only_success: bool) -> Iterator[dict[str, Any]]:
    kept = 0
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(_collect_chunk, jobs) if pool is not None else map(_collect_chunk, jobs)
        for episodes in results:
            for ep in episodes:
                if only_success and not ep["success"]:
                    continue
                yield ep
                kept += 1
                if kept == num_episodes:
                    return
    finally:
        if pool is not None:
            pool.terminate()  # also stops work queued past the last episode needed
            pool.join()
    raise RuntimeError(f"only {kept} of {attempts} {env_name!r} oracle episodes succeeded; {num_episodes} successful "
                       f"episodes were asked for (lower action_noise or raise max_attempts)")


def collect_demos(env_name: str, env_kwargs: dict | None, num_episodes: int, seed: int, *, workers: int = 1,
                  action_noise: float = 0.0, only_success: bool = False,
                  oracle_kwargs: dict | None = None) -> list[dict[str, Any]]:
    """`num_episodes` oracle episodes, each dict(state (T, S), action (T, A), reward (T,), success, info).

    Parallel over `workers` processes when > 1; the result depends only on the arguments, not on `workers`.
    action_noise: Gaussian noise std as a fraction of the action range, added to the oracle's actions (the
    noisy, clipped action is executed and recorded). only_success: keep successful episodes only.
    oracle_kwargs: options of the oracle (see `make_oracle`).
    """
    return list(iter_demos(env_name, env_kwargs, num_episodes, seed, workers=workers, action_noise=action_noise,
                           only_success=only_success, oracle_kwargs=oracle_kwargs))


class OraclePolicy:
    """The oracle as a batched act_fn for `evaluate`: row b of each batch is episode `indices[b]`.

    Each episode's oracle draws its choices from a generator seeded by (seed + index).
    """

    def __init__(self, env_name: str, env_kwargs: dict | None, seed: int, **oracle_kwargs: Any) -> None:
        self.env_name, self.seed, self.oracle_kwargs = env_name, int(seed), oracle_kwargs
        self._env = make_env(env_name, **dict(env_kwargs or {}))
        self._oracles: list[Oracle] = []

    def reset(self, indices: Sequence[int]) -> None:
        self._oracles = []
        for i in indices:
            oracle = make_oracle(self.env_name, self._env, np.random.default_rng([self.seed + int(i), 1]),
                                 **self.oracle_kwargs)
            oracle.reset()
            self._oracles.append(oracle)

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        batch = len(next(iter(obs.values())))
        if batch != len(self._oracles):
            raise ValueError(f"OraclePolicy was reset for {len(self._oracles)} episodes but got a batch of {batch}")
        return np.stack([o({k: v[b] for k, v in obs.items()}) for b, o in enumerate(self._oracles)])


def _lockstep(env_name: str, env_kwargs: dict, act_fn: ActFn, indices: Sequence[int], seed: int) -> list[dict]:
    """Run episodes `indices` together; act_fn always sees all rows (finished rows repeat their last obs)."""
    envs = [make_env(env_name, **env_kwargs) for _ in indices]
    resets = [env.reset(seed=seed + int(i)) for env, i in zip(envs, indices, strict=True)]
    obs, infos = [o for o, _ in resets], [info for _, info in resets]
    if hasattr(act_fn, "reset"):
        act_fn.reset(list(indices))
    action_dim = envs[0].action_space.shape[0]
    active = np.ones(len(envs), dtype=bool)
    rewards: list[list[float]] = [[] for _ in envs]
    while active.any():
        batch = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
        actions = np.asarray(act_fn(batch), dtype=np.float64)
        if actions.shape != (len(envs), action_dim):
            raise ValueError(f"the policy returned actions of shape {actions.shape}, expected ({len(envs)}, "
                             f"{action_dim}) for a batch of {len(envs)} observations")
        for b in np.flatnonzero(active):
            if not np.all(np.isfinite(actions[b])):
                raise ValueError(f"the policy returned a non-finite action {actions[b]} in episode {indices[b]}")
            obs[b], reward, terminated, truncated, infos[b] = envs[b].step(actions[b])
            rewards[b].append(float(reward))
            active[b] = not (terminated or truncated)
    results = []
    for i, info, r in zip(indices, infos, rewards, strict=True):
        extra = {k: v for k, v in _json_scalars(info).items() if k != "success"}
        results.append({"index": int(i), "seed": seed + int(i), "success": bool(info.get("success", False)),
                        "return": float(np.sum(r)), "mean_reward": float(np.mean(r)), "length": len(r), **extra})
    return results


def evaluate(env_name: str, env_kwargs: dict | None, act_fn: ActFn, num_episodes: int, seed: int, *,
             batch: bool = True) -> dict[str, Any]:
    """Run `act_fn` for `num_episodes` episodes; episode i resets with seed + i.

    act_fn(obs: {"state": (B, S), ...}) -> actions (B, A) in raw units. With batch=True all episodes run in
    lockstep and act_fn is called with B = num_episodes at every step (rows of finished episodes repeat their
    last observation; their actions are ignored); with batch=False it runs one episode at a time with B = 1.
    If act_fn has a `reset(indices)` method it is called before each run with the episode index of every row.
    Returns {"success_rate", "mean_reward" (mean over episodes of the average per-step reward, i.e. G_0),
    "mean_return" (mean undiscounted sum), "episodes", "per_episode": [{"index", "seed", "success", "return",
    "mean_reward", "length", ...final info scalars}]}.
    """
    env_kwargs = dict(env_kwargs or {})
    if int(num_episodes) != num_episodes or num_episodes < 1:
        raise ValueError(f"num_episodes must be a positive integer, got {num_episodes!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    indices = list(range(int(num_episodes)))
    if batch:
        per_episode = _lockstep(env_name, env_kwargs, act_fn, indices, int(seed))
    else:
        per_episode = [ep for i in indices for ep in _lockstep(env_name, env_kwargs, act_fn, [i], int(seed))]
    return {"success_rate": float(np.mean([e["success"] for e in per_episode])),
            "mean_reward": float(np.mean([e["mean_reward"] for e in per_episode])),
            "mean_return": float(np.mean([e["return"] for e in per_episode])),
            "episodes": len(per_episode), "per_episode": per_episode}
