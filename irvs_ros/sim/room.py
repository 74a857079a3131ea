"""IRvS didactic room (IRvS section 3.2): four goal corners of different value, a goal-agnostic behaviour policy.

The room is the square [-1, 1]^2 with linear dynamics: position += action, action = (dx, dy) with each
component in [-max_step, max_step] (the position is clipped to the room). Corner k sits at CORNERS[k] with
value CORNER_REWARDS[k] = (-1, -1/4, 1/2, 1) for bottom-left, bottom-right, top-left, top-right. The episode
terminates when the agent is within `goal_radius` of a corner (info["goal"] = its index) and is truncated
after `max_steps` decisions. Success: the best corner (top-right, value 1) was reached.

Reward (the heading reward): r_t = value of the corner the action points at most directly, i.e. the corner c
maximising cos(action, corner_c - position); 0 for a zero action. An agent that heads straight to corner g
earns CORNER_REWARDS[g] at every step, so the return-to-go (average future reward) of a behaviour trajectory is
exactly that corner's value: the four goals give four well separated returns (-1, -0.25, 0.5, 1), matching
the paper's "4 possible non-discounted returns", whatever the start position and episode length.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# Index -> corner position; the order fixes info["goal"].
CORNERS = np.array([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
CORNER_REWARDS = np.array([-1.0, -0.25, 0.5, 1.0])
BEST_CORNER = int(np.argmax(CORNER_REWARDS))


class RoomEnv(gym.Env):
    """2-D room with four valued corners.

    Observation: {"state": float32 (2,)} = position. Action: (dx, dy) in [-max_step, max_step]^2 (clipped;
    NaN/inf rejected). info (every step): "goal" (index of the corner reached, -1 while none), "success".
    """

    metadata = {"render_modes": []}

    def __init__(self, *, max_step: float = 0.1, goal_radius: float = 0.1, max_steps: int = 40) -> None:
        if not 0 < max_step <= 1 or not 0 < goal_radius < 1 or max_steps < 1:
            raise ValueError(f"room needs 0 < max_step <= 1, 0 < goal_radius < 1, max_steps >= 1; got "
                             f"max_step={max_step}, goal_radius={goal_radius}, max_steps={max_steps}")
        self.max_step, self.goal_radius, self.max_steps = float(max_step), float(goal_radius), int(max_steps)
        self.action_space = spaces.Box(-self.max_step, self.max_step, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Dict({"state": spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)})
        self._pos = np.zeros(2)
        self._goal = -1
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        # Start anywhere in the room outside the goal regions, so every episode takes at least one step.
        while True:
            pos = self.np_random.uniform(-1.0, 1.0, 2)
            if self._corner_at(pos) < 0:
                break
        self._pos, self._goal, self._steps = pos, -1, 0
        return self._obs(), self._info()

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (2,):
            raise ValueError(f"room action has shape {np.shape(action)}, expected (2,)")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"room action contains NaN or inf: {a}")
        a = np.clip(a, -self.max_step, self.max_step)
        reward = heading_reward(self._pos, a)
        self._pos = np.clip(self._pos + a, -1.0, 1.0)
        self._steps += 1
        self._goal = self._corner_at(self._pos)
        terminated = self._goal >= 0
        truncated = not terminated and self._steps >= self.max_steps
        return self._obs(), reward, terminated, truncated, self._info()

    def _corner_at(self, pos: np.ndarray) -> int:
        d = np.linalg.norm(CORNERS - pos, axis=1)
        k = int(np.argmin(d))
        return k if d[k] < self.goal_radius else -1

    def _obs(self) -> dict[str, np.ndarray]:
        return {"state": self._pos.astype(np.float32)}

    def _info(self) -> dict[str, Any]:
        return {"goal": self._goal, "success": self._goal == BEST_CORNER}


def heading_reward(pos: np.ndarray, action: np.ndarray) -> float:
    """Value of the corner that `action` (2,) points at most directly from `pos` (2,); 0 for a zero action."""
    norm = float(np.linalg.norm(action))
    if norm < 1e-12:
        return 0.0
    to_corners = CORNERS - pos
    cos = to_corners @ action / (np.linalg.norm(to_corners, axis=1) * norm + 1e-12)
    return float(CORNER_REWARDS[int(np.argmax(cos))])


class RoomOracle:
    """Goal-agnostic behaviour policy: at reset pick a corner uniformly at random, then head straight to it.

    Each action is the vector to the corner scaled down to the action limit (direction kept), plus Gaussian
    noise of std `noise` * max_step per component. Input {"state": (2,)}; output (2,) float32.
    `goal` is the corner index chosen for the current episode.
    """

    def __init__(self, rng: np.random.Generator, *, max_step: float = 0.1, noise: float = 0.05) -> None:
        self.rng, self.max_step, self.noise = rng, float(max_step), float(noise)
        self.goal = int(self.rng.integers(len(CORNERS)))

    def reset(self) -> None:
        self.goal = int(self.rng.integers(len(CORNERS)))

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        pos = np.asarray(obs["state"], dtype=np.float64).reshape(-1)
        if pos.shape != (2,):
            raise ValueError(f"room oracle expects state of shape (2,), got {pos.shape}")
        delta = CORNERS[self.goal] - pos
        biggest = float(np.max(np.abs(delta)))
        if biggest > self.max_step:
            delta = delta * (self.max_step / biggest)
        if self.noise > 0:
            delta = delta + self.rng.normal(0.0, self.noise * self.max_step, 2)
        return np.clip(delta, -self.max_step, self.max_step).astype(np.float32)
