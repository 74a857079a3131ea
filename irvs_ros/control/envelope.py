"""Safety envelope for planar effector setpoints: workspace, step and speed limits, NaN/inf rejection.

Every setpoint, from a policy or teleop, in the simulator or on the robot, passes through here. Positions
are effector (TCP) xy in the arm's base frame, metres; the effector height is fixed (`EnvelopeConfig.z`).

The allowed region is the workspace box intersected with the annulus the xArm6 can reach with the tool
pointing down: with the 6-inch tool the arm reaches about 0.71 m from its base axis at TCP height 0.06 m, so
the box corners (0.7, +-0.5) (0.86 m away) are out of reach, and close to the base (< ~0.17 m) the elbow
leaves its joint range. `max_reach`/`min_reach` cut those parts off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class EnvelopeError(ValueError):
    """An envelope configuration or input that cannot be used (wrong shape, inconsistent limits)."""


@dataclass(frozen=True)
class EnvelopeConfig:
    """All limits of the safety envelope. Lengths in metres, times in seconds, rates in Hz."""

    x_min: float = 0.15
    x_max: float = 0.7
    y_min: float = -0.5
    y_max: float = 0.5
    min_reach: float = 0.2          # radial distance of the TCP from the base axis
    max_reach: float = 0.7
    z: float = 0.06                 # fixed TCP height above the table
    max_setpoint_step: float = 0.1  # per axis, between consecutive accepted setpoints (one policy period)
    max_speed: float = 0.5          # Cartesian speed of the 100 Hz command
    max_tick_step: float = 0.005    # per 100 Hz tick; the effective limit is min(this, max_speed / tick_rate)
    max_decel: float = 2.0          # braking deceleration after a setpoint timeout
    setpoint_timeout: float = 0.5   # no new setpoint for this long -> decelerate and hold
    tick_rate: float = 100.0
    policy_rate: float = 5.0

    def __post_init__(self) -> None:
        problems = []
        if not (self.x_min < self.x_max and self.y_min < self.y_max):
            problems.append(f"box x [{self.x_min}, {self.x_max}] y [{self.y_min}, {self.y_max}] is empty")
        if not (0 <= self.min_reach < self.max_reach):
            problems.append(f"reach needs 0 <= min_reach < max_reach, got [{self.min_reach}, {self.max_reach}]")
        for name in ("max_setpoint_step", "max_speed", "max_tick_step", "max_decel", "setpoint_timeout",
                     "tick_rate", "policy_rate"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                problems.append(f"{name} must be finite and > 0, got {value}")
        if problems:
            raise EnvelopeError("invalid EnvelopeConfig: " + "; ".join(problems))

    @property
    def tick_step_limit(self) -> float:
        """Largest move of the 100 Hz command in one tick (m)."""
        return min(self.max_tick_step, self.max_speed / self.tick_rate)

    @property
    def policy_period(self) -> float:
        return 1.0 / self.policy_rate

    @property
    def tick_period(self) -> float:
        return 1.0 / self.tick_rate


@dataclass(frozen=True)
class FilterResult:
    """Outcome of `Envelope.filter`: the safe setpoint xy (2,), whether the input was usable, and what was done."""

    xy: np.ndarray
    accepted: bool
    step_clamped: bool = False
    workspace_clamped: bool = False
    reason: str = ""


def _xy(value: object, what: str) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64).reshape(-1)
    if a.shape != (2,):
        raise EnvelopeError(f"{what} must be an xy pair of shape (2,), got shape {np.shape(value)}")
    return a


class Envelope:
    """Stateless checks and clamps for setpoints (5 Hz) and commands (100 Hz), configured by `EnvelopeConfig`."""

    def __init__(self, config: EnvelopeConfig | None = None) -> None:
        self.config = config or EnvelopeConfig()

    def contains(self, xy: np.ndarray, tol: float = 1e-9) -> bool:
        """Whether xy (2,) lies in the allowed region (box and reach annulus)."""
        c = self.config
        x, y = _xy(xy, "xy")
        r = float(np.hypot(x, y))
        return bool(c.x_min - tol <= x <= c.x_max + tol and c.y_min - tol <= y <= c.y_max + tol
                    and c.min_reach - tol <= r <= c.max_reach + tol)

    def clamp(self, xy: np.ndarray) -> np.ndarray:
        """xy (2,) moved into the allowed region: clipped to the box, then radially into the reach annulus.

        Points already inside are returned unchanged. Non-finite input raises EnvelopeError (use `filter`).
        """
        p = _xy(xy, "xy")
        x, y = float(p[0]), float(p[1])
        if not (math.isfinite(x) and math.isfinite(y)):
            raise EnvelopeError(f"cannot clamp a non-finite point {p}")
        return np.array(self._clamp_xy(x, y))

    def _clamp_xy(self, x: float, y: float) -> tuple[float, float]:
        """`clamp` on finite Python floats (it runs at every 100 Hz tick: numpy calls on scalars cost ~20x more).

        Same arithmetic as clipping a (2,) array: min/max return one of their inputs, and the radius is
        numpy's hypot, computed only near the annulus edges (elsewhere r^2 decides the branches with a margin
        far above rounding error).
        """
        c = self.config
        x = min(max(x, c.x_min), c.x_max)
        y = min(max(y, c.y_min), c.y_max)
        r2 = x * x + y * y
        if c.min_reach ** 2 * (1 + 1e-9) < r2 < c.max_reach ** 2 * (1 - 1e-9):
            return x, y
        r = float(np.hypot(x, y))
        if r > c.max_reach:
            s = c.max_reach / r
            x, y = x * s, y * s
        elif r < c.min_reach:
            # x_min > 0 keeps r > 0 here for any sensible box; guard anyway.
            if r > 1e-12:
                s = c.min_reach / r
                x, y = x * s, y * s
            else:
                x, y = c.min_reach, 0.0
        # The radial move can only leave the box for unusual configs; a last clip keeps the box a hard limit.
        return min(max(x, c.x_min), c.x_max), min(max(y, c.y_min), c.y_max)

    def filter(self, setpoint: np.ndarray, reference: np.ndarray) -> FilterResult:
        """The safe version of a new setpoint xy (2,) given the last accepted one `reference` (2,).

        NaN/inf anywhere -> rejected: the reference is returned (hold). Otherwise the step from the
        reference is clipped per axis to `max_setpoint_step` and the result clamped into the workspace.
        """
        ref = _xy(reference, "reference")
        sp = np.asarray(setpoint, dtype=np.float64).reshape(-1)
        if sp.shape != (2,):
            return FilterResult(ref.copy(), False, reason=f"setpoint shape {np.shape(setpoint)}, expected (2,)")
        if not np.all(np.isfinite(sp)):
            return FilterResult(ref.copy(), False, reason=f"non-finite setpoint {sp.tolist()}")
        lim = self.config.max_setpoint_step
        step = sp - ref
        clipped = np.clip(step, -lim, lim)
        out = self.clamp(ref + clipped)
        step_clamped = bool(np.any(clipped != step))
        ws_clamped = bool(np.any(np.abs(out - (ref + clipped)) > 1e-12))
        return FilterResult(out, True, step_clamped, ws_clamped)

    def limit_tick(self, command: np.ndarray, desired: np.ndarray) -> np.ndarray:
        """Next 100 Hz command xy (2,): toward `desired` from `command` by at most one tick step, in the workspace."""
        cur = _xy(command, "command")
        want = _xy(desired, "desired")
        wx, wy = float(want[0]), float(want[1])
        if not (math.isfinite(wx) and math.isfinite(wy)):
            return cur.copy()
        cx, cy = float(cur[0]), float(cur[1])
        if not (math.isfinite(cx) and math.isfinite(cy)):
            raise EnvelopeError(f"cannot clamp a non-finite point {cur}")
        sx, sy = wx - cx, wy - cy
        # sqrt of numpy's dot: bit for bit np.linalg.norm (a plain sx*sx + sy*sy rounds differently at times).
        n = math.sqrt(float(np.dot((sx, sy), (sx, sy))))
        lim = self.config.tick_step_limit
        if n > lim:
            s = lim / n
            sx, sy = sx * s, sy * s
        return np.array(self._clamp_xy(cx + sx, cy + sy))

    def apply_delta(self, setpoint: np.ndarray, delta: np.ndarray) -> FilterResult:
        """The next absolute setpoint for a policy action `delta` (2,) relative to `setpoint` (2,)."""
        ref = _xy(setpoint, "setpoint")
        d = np.asarray(delta, dtype=np.float64).reshape(-1)
        if d.shape != (2,):
            return FilterResult(ref.copy(), False, reason=f"action shape {np.shape(delta)}, expected (2,)")
        return self.filter(ref + d, ref)
