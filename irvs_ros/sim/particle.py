"""N-D particle integrator (IBC appendix C.5) and its two-goal oracle.

A point mass in R^N is driven by a PD controller toward a commanded target position:
    q_ddot = kp * (q_target - q) - kd * q_dot          (target velocity 0)
integrated with semi-implicit Euler at dt = 0.005 s; each action (the target, in [0, 1]^N) is held for
10 physics steps, so one decision lasts 0.05 s and an episode of 50 decisions lasts 2.5 s.
Start, goal 1 and goal 2 are uniform in [0, 1]^N. Success: the particle came within 0.05 of goal 1 at
some physics step, and ends the episode within 0.05 of goal 2.

Reward (per decision, evaluated after the action's 10 physics steps), in {0, 0.5, 1}:
    r_t = 0.5 * visited_goal1 + 0.5 * visited_goal1 * near_goal2
so the last reward of an episode is 1 exactly when the episode is a success, and the return-to-go
(average future reward) is higher the sooner both stages are reached and held.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

GOAL_TOLERANCE = 0.05  # distance to a goal that counts as reaching it (IBC C.5)


class ParticleEnv(gym.Env):
    """N-D particle with PD target-position control.

    Observation: {"state": float32 (4N,)} = concat(position, velocity, goal1, goal2), units of the [0, 1] box
    (velocity per second). Action: target position (N,) in [0, 1]^N (clipped to it; NaN/inf rejected).
    info (every step): "success" (would the episode succeed if it ended now), "visited_goal1",
    "dist_goal1", "dist_goal2".
    """

    metadata = {"render_modes": []}

    def __init__(self, n_dim: int = 2, *, kp: float = 10.0, kd: float = 5.0, dt: float = 0.005,
                 substeps: int = 10, max_steps: int = 50, goal_tolerance: float = GOAL_TOLERANCE) -> None:
        if int(n_dim) != n_dim or n_dim < 1:
            raise ValueError(f"particle n_dim must be a positive integer, got {n_dim!r}")
        if dt <= 0 or substeps < 1 or max_steps < 1 or goal_tolerance <= 0:
            raise ValueError(f"particle needs dt > 0, substeps >= 1, max_steps >= 1 and goal_tolerance > 0; got "
                             f"dt={dt}, substeps={substeps}, max_steps={max_steps}, goal_tolerance={goal_tolerance}")
        self.n_dim = int(n_dim)
        self.kp, self.kd, self.dt = float(kp), float(kd), float(dt)
        self.substeps, self.max_steps = int(substeps), int(max_steps)
        self.goal_tolerance = float(goal_tolerance)
        # With the target held, one semi-implicit Euler step maps the error e = q - target and velocity v
        # linearly: v' = (1 - kd dt) v - kp dt e;  e' = e + dt v'. Powers of that 2x2 matrix give every
        # physics step of a decision at once (same integrator, without a Python loop over substeps).
        step = np.array([[1 - self.kp * self.dt ** 2, self.dt * (1 - self.kd * self.dt)],
                         [-self.kp * self.dt, 1 - self.kd * self.dt]])
        powers = [np.linalg.matrix_power(step, k) for k in range(1, self.substeps + 1)]
        self._pos_from_e = np.array([m[0, 0] for m in powers])[:, None]  # (substeps, 1)
        self._pos_from_v = np.array([m[0, 1] for m in powers])[:, None]
        self._vel_from_e, self._vel_from_v = powers[-1][1, 0], powers[-1][1, 1]
        self.action_space = spaces.Box(0.0, 1.0, shape=(self.n_dim,), dtype=np.float32)
        self.observation_space = spaces.Dict(
            {"state": spaces.Box(-np.inf, np.inf, shape=(4 * self.n_dim,), dtype=np.float32)})
        self._pos = np.zeros(self.n_dim)
        self._vel = np.zeros(self.n_dim)
        self._goal1 = np.zeros(self.n_dim)
        self._goal2 = np.zeros(self.n_dim)
        self._visited1 = False
        self._steps = 0

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        rng = self.np_random
        self._pos = rng.uniform(0.0, 1.0, self.n_dim)
        self._vel = np.zeros(self.n_dim)
        self._goal1 = rng.uniform(0.0, 1.0, self.n_dim)
        self._goal2 = rng.uniform(0.0, 1.0, self.n_dim)
        self._visited1 = bool(np.linalg.norm(self._pos - self._goal1) < self.goal_tolerance)
        self._steps = 0
        return self._obs(), self._info()

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        target = self._check_action(action)
        err, vel = self._pos - target, self._vel
        path = target + self._pos_from_e * err + self._pos_from_v * vel  # (substeps, N) positions
        self._pos, self._vel = path[-1], self._vel_from_e * err + self._vel_from_v * vel
        if not self._visited1:
            # Goal 1 counts if passed within tolerance at any physics step, not only at decision times.
            d = path - self._goal1
            self._visited1 = bool(np.any(np.einsum("ij,ij->i", d, d) < self.goal_tolerance ** 2))
        self._steps += 1
        near2 = bool(np.linalg.norm(self._pos - self._goal2) < self.goal_tolerance)
        reward = 0.5 * self._visited1 + 0.5 * (self._visited1 and near2)
        truncated = self._steps >= self.max_steps
        return self._obs(), float(reward), False, truncated, self._info()

    # ------------------------------------------------------------------ internals
    def _check_action(self, action: Any) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.n_dim,):
            raise ValueError(f"particle action has shape {np.shape(action)}, expected ({self.n_dim},)")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"particle action contains NaN or inf: {a}")
        return np.clip(a, self.action_space.low, self.action_space.high)

    def _obs(self) -> dict[str, np.ndarray]:
        state = np.concatenate([self._pos, self._vel, self._goal1, self._goal2]).astype(np.float32)
        return {"state": state}

    def _info(self) -> dict[str, Any]:
        d1 = float(np.linalg.norm(self._pos - self._goal1))
        d2 = float(np.linalg.norm(self._pos - self._goal2))
        return {"success": bool(self._visited1 and d2 < self.goal_tolerance), "visited_goal1": self._visited1,
                "dist_goal1": d1, "dist_goal2": d2}


OUTCOMES = ("success", "held_goal1", "missed_goal1", "missed_goal2")


def outcome(info: dict[str, Any], goal_tolerance: float = GOAL_TOLERANCE) -> str:
    """How a particle episode ended, from its final info: "success"; "held_goal1" (reached goal 1 and ended
    within `goal_tolerance` of it: never switched to goal 2); "missed_goal1" (never came within `goal_tolerance`
    of goal 1, e.g. went straight for goal 2); "missed_goal2" (reached goal 1, left it, ended away from goal 2).

    The switch to goal 2 waits for the particle to come within the oracle's switch radius (0.01) of goal 1, so
    "held_goal1" counts policies that stop near goal 1 but not near enough, or never learned the switch."""
    if info["success"]:
        return "success"
    if not info["visited_goal1"]:
        return "missed_goal1"
    return "held_goal1" if info["dist_goal1"] < goal_tolerance else "missed_goal2"


class ParticleOracle:
    """IBC's scripted two-goal policy: command goal 1 until within `switch_radius` of it, then goal 2.

    It reads positions and goals from the observation and remembers the switch itself, so call
    `reset()` at the start of every episode. Input: {"state": (4N,)}; output: action (N,) float32.
    """

    def __init__(self, n_dim: int, switch_radius: float = 0.01) -> None:
        self.n_dim = int(n_dim)
        self.switch_radius = float(switch_radius)
        self.reached_goal1 = False

    def reset(self) -> None:
        self.reached_goal1 = False

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(obs["state"], dtype=np.float64).reshape(-1)
        n = self.n_dim
        if state.shape != (4 * n,):
            raise ValueError(f"particle oracle expects state of shape ({4 * n},), got {state.shape}")
        pos, goal1, goal2 = state[:n], state[2 * n:3 * n], state[3 * n:]
        if not self.reached_goal1 and np.linalg.norm(pos - goal1) < self.switch_radius:
            self.reached_goal1 = True
        return (goal2 if self.reached_goal1 else goal1).astype(np.float32)
