"""Scripted demonstrations of a chosen quality and seeded policy evaluation (toy envs and the xArm6 cell).

Determinism: demo episode i of a run with `seed` depends only on (seed, i), never on the number of
workers. Its start/goals come from a 32-bit seed derived from (seed, i) with numpy's SeedSequence, so demo
episodes do not coincide with evaluation episodes, which reset with the plain integers seed + i.

Quality levels of a demo run (`iter_demos(quality=...)`):
    expert  the oracle (scripted expert) as it is.
    noisy   the oracle with Gaussian action noise (std `action_noise` x the action range per component) added to
            every action; the noisy action, clipped to the action space, is executed and recorded.
    mixed   MIXED_BLEND: in every block of 10 consecutive episode indices, 5 expert, 3 noisy and 2 weak episodes,
            in an order drawn from (seed, block). Weak episodes are a deliberately failing behaviour (see
            WEAK_BEHAVIOUR): on the push tasks the oracle pursuing a decoy goal, elsewhere uniform random actions.
Each episode's info records its "quality" ("expert", "noisy" or "weak") and "action_noise".
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from irvs_ros.runtime.spec import state_slices
from irvs_ros.sim import particle
from irvs_ros.sim.push_tasks import STATE_KEYS as PUSH_STATE_KEYS
from irvs_ros.sim.registry import Oracle, make_env, make_oracle

ActFn = Callable[[dict[str, np.ndarray]], np.ndarray]

QUALITY_LEVELS = ("expert", "noisy", "mixed")
# Episodes of each behaviour in every block of 10 consecutive indices of a "mixed" run.
MIXED_BLEND: tuple[tuple[str, int], ...] = (("expert", 5), ("noisy", 3), ("weak", 2))
_BLOCK = sum(n for _, n in MIXED_BLEND)
PUSH_TASKS = ("push", "push_insert")
# Default `action_noise` of noisy episodes (fraction of the action range). The push oracle's phase switches need
# the setpoint within 2 mm of a waypoint, so 0.01 (2 mm std on the +-0.1 m range) already fails about half of
# its episodes; the toy envs tolerate more.
DEFAULT_NOISE: dict[str, float] = {"push": 0.01, "push_insert": 0.01}
DEFAULT_TOY_NOISE = 0.05
# Decoy-goal offsets of weak push episodes (m): far enough that the true goal is never reached by accident.
DECOY_PUSH_DISTANCE = (0.06, 0.10)      # from the block start, away from the true target (+-DECOY_PUSH_ANGLE)
DECOY_PUSH_ANGLE = math.radians(60.0)
DECOY_INSERT_DISTANCE = (0.07, 0.10)    # fixture moved sideways off its axis (clears the walls and guides)
WEAK_BEHAVIOUR: dict[str, str] = {
    "push": ("the oracle pushing the block {:.2f}-{:.2f} m away from the true target (toward a decoy target on "
             "the far side of the block's start, within +-60 degrees of straight away), then holding still; the "
             "true target is recorded in the state").format(*DECOY_PUSH_DISTANCE),
    "push_insert": ("the oracle inserting into a decoy fixture moved {:.2f}-{:.2f} m sideways off the true "
                    "fixture's axis, then holding still (the true fixture is recorded in the state)"
                    ).format(*DECOY_INSERT_DISTANCE),
}
WEAK_TOY_BEHAVIOUR = "uniform random actions over the action space"
# Push envs hold two PyBullet clients each (~90 MB): evaluate them in lockstep groups of this many episodes.
DEFAULT_EVAL_BATCH: dict[str, int] = {"push": 10, "push_insert": 10}


def demo_env_seed(seed: int, index: int) -> int:
    """The reset seed of demo episode `index` of a run seeded `seed` (a 32-bit integer)."""
    return int(np.random.SeedSequence([seed, index, 0]).generate_state(1)[0])


def default_noise(env_name: str) -> float:
    """Default action noise (fraction of the action range) of noisy episodes in `env_name`."""
    return DEFAULT_NOISE.get(env_name, DEFAULT_TOY_NOISE)


def weak_behaviour_description(env_name: str) -> str:
    """What the weak episodes of a mixed run in `env_name` do (for dataset metadata)."""
    return WEAK_BEHAVIOUR.get(env_name, WEAK_TOY_BEHAVIOUR)


def episode_quality(level: str, seed: int, index: int) -> str:
    """Behaviour ("expert", "noisy" or "weak") of demo episode `index` in a run of quality `level` seeded `seed`."""
    if level not in QUALITY_LEVELS:
        raise ValueError(f"unknown quality {level!r}; choose from {QUALITY_LEVELS}")
    if level != "mixed":
        return level
    pattern = [name for name, n in MIXED_BLEND for _ in range(n)]
    order = np.random.default_rng([seed, index // _BLOCK, 3]).permutation(len(pattern))
    return pattern[int(order[index % _BLOCK])]


class DecoyGoal:
    """Weak push behaviour: an oracle that sees the goal (push target / fixture) moved to a decoy pose.

    The decoy is fixed at the first observation of an episode, with a distance, side and angle drawn from `rng`:
    "push": DECOY_PUSH_DISTANCE from the block's start, away from the true target (direction within
    +-DECOY_PUSH_ANGLE of straight away), so the block never heads for the target; "push_insert": the fixture
    moved DECOY_INSERT_DISTANCE sideways along its normal (same yaw), so the block goes beside the fixture.
    Once the block is within `hold_radius` (0.02 m) of the decoy it holds still (zero actions) for the rest.
    Input {"state": (10,)} as push_tasks.STATE_KEYS; output the oracle's action (2,).
    """

    def __init__(self, oracle: Oracle, task: str, rng: np.random.Generator) -> None:
        if task not in PUSH_TASKS:
            raise ValueError(f"DecoyGoal is for the push tasks {PUSH_TASKS}, got {task!r}")
        self.oracle, self.task = oracle, task
        lo, hi = DECOY_PUSH_DISTANCE if task == "push" else DECOY_INSERT_DISTANCE
        self.distance = float(rng.uniform(lo, hi))
        self.side = 1.0 if rng.random() < 0.5 else -1.0
        self.angle = float(rng.uniform(-DECOY_PUSH_ANGLE, DECOY_PUSH_ANGLE))
        offsets = state_slices(PUSH_STATE_KEYS)
        self._block, self._goal_xy, self._goal_yaw = offsets["block_xy"], offsets["goal_xy"], offsets["goal_yaw"]
        self.hold_radius = 0.02
        self.decoy: np.ndarray | None = None
        self.holding = False

    def reset(self) -> None:
        self.oracle.reset()
        self.decoy = None
        self.holding = False

    def decoy_xy(self, block_xy: np.ndarray, goal_xy: np.ndarray, goal_yaw: float) -> np.ndarray:
        """The decoy goal position (2,) for a block at block_xy and a true goal at goal_xy with yaw goal_yaw (rad)."""
        goal_xy = np.asarray(goal_xy, dtype=np.float64)
        if self.task == "push":
            block_xy = np.asarray(block_xy, dtype=np.float64)
            away = block_xy - goal_xy
            heading = math.atan2(away[1], away[0]) + self.angle
            return block_xy + self.distance * np.array([math.cos(heading), math.sin(heading)])
        normal = np.array([-math.sin(goal_yaw), math.cos(goal_yaw)])
        return goal_xy + self.side * self.distance * normal

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = np.array(obs["state"], dtype=np.float32).reshape(-1)
        if self.decoy is None:
            self.decoy = self.decoy_xy(state[self._block], state[self._goal_xy], float(state[self._goal_yaw][0]))
        if self.holding or np.linalg.norm(state[self._block] - self.decoy) < self.hold_radius:
            # Arrived: hold still (the oracle would keep pushing the block about, or off the table).
            self.holding = True
            return np.zeros(2, dtype=np.float32)
        state[self._goal_xy] = self.decoy
        return self.oracle({**obs, "state": state})


class RandomActions:
    """Weak toy behaviour: uniform random actions (A,) float32 over the box [low, high]."""

    def __init__(self, low: np.ndarray, high: np.ndarray, rng: np.random.Generator) -> None:
        self.low, self.high, self.rng = np.asarray(low, np.float64), np.asarray(high, np.float64), rng

    def reset(self) -> None:
        pass

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.rng.uniform(self.low, self.high).astype(np.float32)


def make_behaviour(env_name: str, env: Any, quality: str, rng: np.random.Generator,
                   weak_rng: np.random.Generator | None = None, **oracle_kwargs: Any) -> Oracle:
    """The scripted policy of one demo episode: the oracle for "expert" / "noisy" (noise is added by the rollout),
    the weak behaviour (DecoyGoal on push tasks, RandomActions elsewhere) for "weak". `rng` drives the oracle,
    `weak_rng` the weak behaviour's draws."""
    weak_rng = weak_rng if weak_rng is not None else np.random.default_rng()
    if quality in ("expert", "noisy"):
        return make_oracle(env_name, env, rng, **oracle_kwargs)
    if quality != "weak":
        raise ValueError(f"unknown episode behaviour {quality!r}; expected expert, noisy or weak")
    if env_name in PUSH_TASKS:
        return DecoyGoal(make_oracle(env_name, env, rng, **oracle_kwargs), env_name, weak_rng)
    return RandomActions(env.action_space.low, env.action_space.high, weak_rng)


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
    """One episode of a scripted policy: dict(state (T, S) float32, action (T, A) float32, reward (T,) float32,
    success bool, info dict), plus image (T, H, W, 3) uint8 when the env observes images (the observation each
    action was chosen from). The recorded action is the one executed (noisy and clipped when action_noise > 0;
    noise std = action_noise * (high - low) of the action space).
    """
    obs, info = env.reset(seed=env_seed)
    oracle.reset()
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    states, actions, rewards, images = [], [], [], []
    done = False
    while not done:
        action = np.asarray(oracle(obs), dtype=np.float64)
        if action_noise > 0:
            rng = noise_rng if noise_rng is not None else np.random.default_rng()
            action = action + rng.normal(0.0, 1.0, action.shape) * action_noise * (high - low)
        action = np.clip(action, low, high)
        states.append(obs["state"])
        if "image" in obs:
            images.append(obs["image"])
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        done = terminated or truncated
    episode = {"state": np.asarray(states, dtype=np.float32), "action": np.asarray(actions, dtype=np.float32),
               "reward": np.asarray(rewards, dtype=np.float32), "success": bool(info.get("success", False)),
               "info": {k: v for k, v in _json_scalars(info).items() if k != "success"}}
    if images:
        episode["image"] = np.stack(images).astype(np.uint8, copy=False)
    return episode


def _collect_chunk(job: tuple[str, dict, int, Sequence[int], str, float, dict]) -> list[dict[str, Any]]:
    """Worker entry point: demo episodes `indices` of a run (top-level so that spawned processes can import it)."""
    env_name, env_kwargs, seed, indices, level, action_noise, oracle_kwargs = job
    env = make_env(env_name, **env_kwargs)
    episodes = []
    try:
        for i in indices:
            quality = episode_quality(level, seed, i)
            behaviour = make_behaviour(env_name, env, quality, np.random.default_rng([seed, i, 1]),
                                       np.random.default_rng([seed, i, 4]), **oracle_kwargs)
            noise = action_noise if quality == "noisy" else 0.0
            ep = run_oracle_episode(env, behaviour, demo_env_seed(seed, i), action_noise=noise,
                                    noise_rng=np.random.default_rng([seed, i, 2]))
            ep["info"].update(index=int(i), env_seed=demo_env_seed(seed, i), quality=quality, action_noise=noise)
            episodes.append(ep)
    finally:
        env.close()
    return episodes


def resolve_quality(quality: str | None, action_noise: float) -> str:
    """The quality level of a run: `quality`, or for None "noisy" when action_noise > 0 else "expert"."""
    if quality is None:
        return "noisy" if action_noise > 0 else "expert"
    if quality not in QUALITY_LEVELS:
        raise ValueError(f"unknown quality {quality!r}; choose from {', '.join(QUALITY_LEVELS)}")
    if quality == "expert" and action_noise > 0:
        raise ValueError(f"expert demonstrations have no action noise (got {action_noise}); use quality noisy "
                         f"or mixed for noisy episodes")
    if quality != "expert" and action_noise <= 0:
        raise ValueError(f"quality {quality!r} needs an action noise > 0 for its noisy episodes, got {action_noise}")
    return quality


def iter_demos(env_name: str, env_kwargs: dict | None, num_episodes: int, seed: int, *, workers: int = 1,
               action_noise: float = 0.0, only_success: bool = False, oracle_kwargs: dict | None = None,
               max_attempts: int | None = None, quality: str | None = None) -> Iterator[dict[str, Any]]:
    """Yield demo episodes in index order (see `collect_demos`); streams, so datasets need not fit in memory.

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
    level = resolve_quality(quality, action_noise)
    # Fail fast in this process on bad names or parameters, before any worker starts.
    probe = make_env(env_name, **env_kwargs)
    try:
        make_oracle(env_name, probe, np.random.default_rng(0), **oracle_kwargs)
        images = "image" in getattr(probe.observation_space, "spaces", {})
    finally:
        probe.close()
    attempts = num_episodes if not only_success else (max_attempts or 10 * num_episodes + 100)
    # Image episodes are megabytes each: smaller chunks keep the workers' result messages and memory small.
    chunk = max(1, min(4 if images else 32, math.ceil(num_episodes / (4 * workers))))
    jobs = [(env_name, env_kwargs, int(seed), range(s, min(s + chunk, attempts)), level, float(action_noise),
             oracle_kwargs) for s in range(0, attempts, chunk)]
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
                  action_noise: float = 0.0, only_success: bool = False, oracle_kwargs: dict | None = None,
                  quality: str | None = None) -> list[dict[str, Any]]:
    """`num_episodes` demo episodes, each dict(state (T, S), action (T, A), reward (T,), success, info), plus
    image (T, H, W, 3) uint8 when env_kwargs turn images on.

    Parallel over `workers` processes (each with its own simulator) when > 1; the result depends only on the
    arguments, not on `workers`. quality: "expert", "noisy" or "mixed" (module docstring); None means "noisy"
    when action_noise > 0, else "expert". action_noise: Gaussian noise std as a fraction of the action range,
    added to the actions of noisy episodes (the noisy, clipped action is executed and recorded).
    only_success: keep successful episodes only. oracle_kwargs: options of the oracle (see `make_oracle`).
    """
    return list(iter_demos(env_name, env_kwargs, num_episodes, seed, workers=workers, action_noise=action_noise,
                           only_success=only_success, oracle_kwargs=oracle_kwargs, quality=quality))


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

    def close(self) -> None:
        """Free the environment the oracles read their parameters from."""
        self._env.close()


def _open_video(env: Any, path: str | os.PathLike, fps: float) -> Any:
    from irvs_ros.sim.video import VideoWriter  # imported lazily: only runs that record videos need it

    writer = VideoWriter(path, fps)
    writer.append(env.render())
    return writer


def _lockstep(env_name: str, env_kwargs: dict, act_fn: ActFn, indices: Sequence[int], seed: int,
              videos: dict[int, Path], video_fps: float,
              on_end: Callable[[dict[str, Any]], None] | None = None) -> list[dict]:
    """Run episodes `indices` together; act_fn always sees all rows (finished rows repeat their last obs).
    on_end(info) is called with each episode's final info as it ends."""
    envs: list[Any] = []
    writers: dict[int, Any] = {}
    try:
        envs.extend(make_env(env_name, **env_kwargs) for _ in indices)
        resets = [env.reset(seed=seed + int(i)) for env, i in zip(envs, indices, strict=True)]
        obs, infos = [o for o, _ in resets], [info for _, info in resets]
        for b, i in enumerate(indices):
            if int(i) in videos:
                writers[b] = _open_video(envs[b], videos[int(i)], video_fps)
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
                if not active[b] and on_end is not None:
                    on_end(infos[b])
                if b in writers:
                    writers[b].append(envs[b].render())
                    if not active[b]:
                        writers.pop(b).close()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        for env in envs:
            env.close()
    results = []
    for i, info, r in zip(indices, infos, rewards, strict=True):
        extra = {k: v for k, v in _json_scalars(info).items() if k != "success"}
        ep = {"index": int(i), "seed": seed + int(i), "success": bool(info.get("success", False)),
              "return": float(np.sum(r)), "mean_reward": float(np.mean(r)), "final_reward": float(r[-1]),
              "length": len(r), **extra}
        if int(i) in videos:
            ep["video"] = str(videos[int(i)])
        results.append(ep)
    return results


def evaluate(env_name: str, env_kwargs: dict | None, act_fn: ActFn, num_episodes: int, seed: int, *,
             batch: bool = True, max_batch: int | None = None, videos: dict[int, str | os.PathLike] | None = None,
             video_fps: float = 5.0, progress: bool = False) -> dict[str, Any]:
    """Run `act_fn` for `num_episodes` episodes; episode i resets with seed + i.

    act_fn(obs: {"state": (B, S), "image": (B, H, W, 3) uint8 when the env has images}) -> actions (B, A) in raw
    units. With batch=True episodes run in lockstep groups of max_batch consecutive episodes (None: the env's
    DEFAULT_EVAL_BATCH, else all at once) and act_fn is called with B = the group size at every step (rows of
    finished episodes repeat their last observation; their actions are ignored); with batch=False it runs one
    episode at a time with B = 1. If act_fn has a `reset(indices)` method it is called before each group with the
    episode index of every row.
    videos: {episode index: file (.mp4 / .gif)} to record env.render() frames into (the reset frame and one per
    step, at video_fps frames per second).
    progress: a tqdm bar on stderr over the episodes as they end, with the successes so far.
    Returns {"success_rate", "mean_reward" (mean over episodes of the average per-step reward, i.e. G_0),
    "mean_return" (mean undiscounted sum), "mean_final_reward" (mean last-step reward), "episodes",
    "per_episode": [{"index", "seed", "success", "return", "mean_reward", "final_reward", "length", ["video"],
    ...final info scalars}]}, and for episodes that report "inserted_fraction" (push_insert) also
    "full_insertion_rate" and "partial_insertion_rate" (final reward level 1.0 / 0.5), and for particle episodes
    "outcomes": {outcome: episodes} over `sim.particle.OUTCOMES`.
    """
    env_kwargs = dict(env_kwargs or {})
    if int(num_episodes) != num_episodes or num_episodes < 1:
        raise ValueError(f"num_episodes must be a positive integer, got {num_episodes!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if max_batch is not None and (int(max_batch) != max_batch or max_batch < 1):
        raise ValueError(f"max_batch must be a positive integer or None, got {max_batch!r}")
    videos = {int(k): Path(v) for k, v in (videos or {}).items()}
    outside = sorted(k for k in videos if not 0 <= k < num_episodes)
    if outside:
        raise ValueError(f"video episodes {outside} are outside the {num_episodes} evaluated episodes "
                         f"(0..{int(num_episodes) - 1})")
    indices = list(range(int(num_episodes)))
    group = 1 if not batch else int(max_batch or DEFAULT_EVAL_BATCH.get(env_name, len(indices)))
    per_episode: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc=f"eval {env_name}", unit="ep", mininterval=0.5)
    wins = 0

    def on_end(info: dict[str, Any]) -> None:
        nonlocal wins
        wins += bool(info.get("success", False))
        bar.set_postfix_str(f"{wins} successes", refresh=False)
        bar.update(1)

    try:
        for start in range(0, len(indices), group):
            per_episode += _lockstep(env_name, env_kwargs, act_fn, indices[start:start + group], int(seed), videos,
                                     video_fps, on_end if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    result: dict[str, Any] = {
        "success_rate": float(np.mean([e["success"] for e in per_episode])),
        "mean_reward": float(np.mean([e["mean_reward"] for e in per_episode])),
        "mean_return": float(np.mean([e["return"] for e in per_episode])),
        "mean_final_reward": float(np.mean([e["final_reward"] for e in per_episode])),
        "episodes": len(per_episode)}
    if all("inserted_fraction" in e for e in per_episode):
        levels = np.array([e["reward_level"] for e in per_episode])
        result["full_insertion_rate"] = float(np.mean(levels >= 1.0))
        result["partial_insertion_rate"] = float(np.mean((levels >= 0.5) & (levels < 1.0)))
    if env_name == "particle":
        ends = [particle.outcome(e, env_kwargs.get("goal_tolerance", particle.GOAL_TOLERANCE)) for e in per_episode]
        result["outcomes"] = {k: ends.count(k) for k in particle.OUTCOMES}
    result["per_episode"] = per_episode
    return result
