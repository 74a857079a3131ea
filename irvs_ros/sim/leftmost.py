"""Left-most-goal navigation (IRvS section 5.1): reach the goal with the smaller first coordinate.

Linear dynamics in R^D: position += action. The start is uniform in [-1, 1]^D; two goals are uniform in
[-goal_radius, goal_radius]^D (0.1 in training; larger at test time to measure extrapolation). With
`delta` set, the second goal's first coordinate is the first goal's plus U[-delta, delta] (clipped to the
goal box), which makes the optimal policy a* = g* - s nearly discontinuous; `delta=None` samples the goals
independently. The episode terminates when the agent is within `success_tol` of either goal or has used its
`max_steps` moves (default 1: one jump a* reaches the goal).

Reward: 1 for a step that ends within `success_tol` of the left-most goal, else 0. Success: the left-most
goal was reached.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class LeftmostEnv(gym.Env):
    """Observation: {"state": float32 (3D,)} = concat(position, goal1, goal2). Action: (D,) displacement in
    [-(1 + goal_radius), 1 + goal_radius]^D (clipped; NaN/inf rejected). info (every step): "goal" (index
    0/1 of the goal reached, -1 while none), "leftmost" (index of the left-most goal), "success".
    """

    metadata = {"render_modes": []}

    def __init__(self, n_dim: int = 2, *, delta: float | None = None, goal_radius: float = 0.1,
                 success_tol: float = 0.025, max_steps: int = 1) -> None:
        if int(n_dim) != n_dim or n_dim < 1:
            raise ValueError(f"leftmost n_dim must be a positive integer, got {n_dim!r}")
        if goal_radius <= 0 or success_tol <= 0 or max_steps < 1 or (delta is not None and delta < 0):
            raise ValueError(f"leftmost needs goal_radius > 0, success_tol > 0, max_steps >= 1, delta None or >= 0; "
                             f"got goal_radius={goal_radius}, success_tol={success_tol}, max_steps={max_steps}, "
                             f"delta={delta}")
        self.n_dim = int(n_dim)
        self.delta = None if delta is None else float(delta)
        self.goal_radius, self.success_tol, self.max_steps = float(goal_radius), float(success_tol), int(max_steps)
        limit = 1.0 + self.goal_radius  # the largest |a*_i| from a start in [-1, 1] to a goal in the goal box
        self.action_space = spaces.Box(-limit, limit, shape=(self.n_dim,), dtype=np.float32)
        self.observation_space = spaces.Dict(
            {"state": spaces.Box(-np.inf, np.inf, shape=(3 * self.n_dim,), dtype=np.float32)})
        self._pos = np.zeros(self.n_dim)
        self._goals = np.zeros((2, self.n_dim))
        self._goal = -1
        self._steps = 0

    @property
    def leftmost(self) -> int:
        """Index (0 or 1) of the goal with the smaller first coordinate."""
        return int(self._goals[1, 0] < self._goals[0, 0])

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        rng, r = self.np_random, self.goal_radius
        self._pos = rng.uniform(-1.0, 1.0, self.n_dim)
        self._goals = rng.uniform(-r, r, (2, self.n_dim))
        if self.delta is not None:
            self._goals[1, 0] = np.clip(self._goals[0, 0] + rng.uniform(-self.delta, self.delta), -r, r)
        self._goal, self._steps = -1, 0
        return self._obs(), self._info()

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.n_dim,):
            raise ValueError(f"leftmost action has shape {np.shape(action)}, expected ({self.n_dim},)")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"leftmost action contains NaN or inf: {a}")
        self._pos = self._pos + np.clip(a, self.action_space.low, self.action_space.high)
        self._steps += 1
        d = np.linalg.norm(self._goals - self._pos, axis=1)
        # If both goals are within tolerance (nearly coincident goals), the left-most one counts.
        self._goal = self.leftmost if d[self.leftmost] < self.success_tol else (
            int(np.argmin(d)) if d.min() < self.success_tol else -1)
        # The move budget is part of the task (default: one jump), so running out of it terminates the episode.
        terminated = self._goal >= 0 or self._steps >= self.max_steps
        truncated = False
        reward = 1.0 if self._goal == self.leftmost else 0.0
        return self._obs(), reward, terminated, truncated, self._info()

    def _obs(self) -> dict[str, np.ndarray]:
        return {"state": np.concatenate([self._pos, self._goals[0], self._goals[1]]).astype(np.float32)}

    def _info(self) -> dict[str, Any]:
        return {"goal": self._goal, "leftmost": self.leftmost, "success": self._goal == self.leftmost}


class LeftmostOracle:
    """Optimal policy a* = g* - s toward the left-most goal, read from the observation.

    With `p_optimal` < 1 it is a mixed-quality behaviour policy: at each reset it targets the other goal
    with probability 1 - p_optimal (for return-conditioned learning). Input {"state": (3D,)}; output (D,).
    """

    def __init__(self, n_dim: int, rng: np.random.Generator, *, p_optimal: float = 1.0) -> None:
        if not 0.0 <= p_optimal <= 1.0:
            raise ValueError(f"p_optimal must be in [0, 1], got {p_optimal}")
        self.n_dim, self.rng, self.p_optimal = int(n_dim), rng, float(p_optimal)
        self.optimal = True

    def reset(self) -> None:
        self.optimal = bool(self.p_optimal >= 1.0 or self.rng.random() < self.p_optimal)

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(obs["state"], dtype=np.float64).reshape(-1)
        n = self.n_dim
        if state.shape != (3 * n,):
            raise ValueError(f"leftmost oracle expects state of shape ({3 * n},), got {state.shape}")
        pos, g1, g2 = state[:n], state[n:2 * n], state[2 * n:]
        left_is_g2 = g2[0] < g1[0]
        target = (g2 if left_is_g2 else g1) if self.optimal else (g1 if left_is_g2 else g2)
        return (target - pos).astype(np.float32)
