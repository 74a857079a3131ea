"""5 Hz setpoints to a 100 Hz command stream, inside the safety envelope.

Each accepted setpoint starts a straight segment from the current command to the new setpoint, traversed
linearly over one policy period (IBC C.3.2: "setpoints are linearly interpolated from their 5 Hz rate to be
100 Hz setpoints"). Every tick is also speed-limited by the envelope. If no setpoint arrives for
`setpoint_timeout`, the command brakes at `max_decel` along its current velocity and then holds, so a dead
policy cannot leave the arm moving toward a stale target.

Time is whatever clock the caller uses (wall or simulated), in seconds; it only has to be monotonic.
"""

from __future__ import annotations

import numpy as np

from irvs_ros.control.envelope import Envelope, EnvelopeConfig, EnvelopeError, FilterResult


class Interpolator:
    """Stateful 5 Hz -> 100 Hz setpoint interpolator. Positions are TCP xy (2,) in metres."""

    def __init__(self, envelope: Envelope | EnvelopeConfig | None = None,
                 start_xy: np.ndarray | None = None, now: float = 0.0) -> None:
        if isinstance(envelope, EnvelopeConfig) or envelope is None:
            envelope = Envelope(envelope)
        self.envelope = envelope
        c = envelope.config
        self.reset(np.array([0.5 * (c.x_min + c.x_max), 0.0]) if start_xy is None else start_xy, now)

    def reset(self, xy: np.ndarray, now: float = 0.0) -> None:
        """Hold at xy (clamped into the workspace) from time `now`; forgets any motion."""
        p = np.asarray(xy, dtype=np.float64).reshape(-1)
        if p.shape != (2,) or not np.all(np.isfinite(p)):
            raise EnvelopeError(f"interpolator start must be a finite xy (2,), got {xy!r}")
        p = self.envelope.clamp(p)
        self._target = p.copy()
        self._seg_start = p.copy()
        self._seg_t0 = float(now)
        self._command = p.copy()
        self._velocity = np.zeros(2)
        self._last_tick = float(now)
        self._last_setpoint_time = float(now)
        self._braking = False
        self.rejected = 0

    # ------------------------------------------------------------------ inputs
    def set_setpoint(self, xy: np.ndarray, now: float) -> FilterResult:
        """Accept a new absolute setpoint xy (2,) at time `now`; returns what the envelope made of it.

        A rejected setpoint (NaN/inf, wrong shape) changes nothing: the current motion goes on and the
        timeout clock keeps running, as if the message had been lost.
        """
        res = self.envelope.filter(xy, self._target)
        if not res.accepted:
            self.rejected += 1
            return res
        self._target = res.xy.copy()
        self._seg_start = self._command.copy()
        self._seg_t0 = float(now)
        self._last_setpoint_time = float(now)
        self._braking = False
        return res

    def hold(self) -> None:
        """Stop where the command is now (e.g. an emergency stop), with no braking ramp."""
        self._target = self._command.copy()
        self._seg_start = self._command.copy()
        self._velocity = np.zeros(2)

    # ------------------------------------------------------------------ 100 Hz output
    def tick(self, now: float) -> np.ndarray:
        """The command xy (2,) for time `now` (call at the tick rate)."""
        c = self.envelope.config
        dt = float(now) - self._last_tick
        if dt <= 0:
            return self._command.copy()
        if not self._braking and float(now) - self._last_setpoint_time > c.setpoint_timeout:
            self._braking = True
        prev = self._command
        if self._braking:
            speed = float(np.linalg.norm(self._velocity))
            new_speed = max(0.0, speed - c.max_decel * dt)
            if new_speed > 0.0:
                step = self._velocity * (new_speed / speed) * dt
                cmd = self.envelope.limit_tick(prev, prev + step)
            else:
                cmd = prev.copy()
            # Once braking started the stale target is dropped: hold wherever the ramp ends.
            self._target = cmd.copy()
            self._seg_start = cmd.copy()
        else:
            alpha = min(1.0, max(0.0, (float(now) - self._seg_t0) / c.policy_period))
            desired = self._seg_start + alpha * (self._target - self._seg_start)
            cmd = self.envelope.limit_tick(prev, desired)
        self._velocity = (cmd - prev) / dt
        self._command = cmd
        self._last_tick = float(now)
        return cmd.copy()

    # ------------------------------------------------------------------ state
    @property
    def target(self) -> np.ndarray:
        """The last accepted (safe) setpoint xy (2,)."""
        return self._target.copy()

    @property
    def command(self) -> np.ndarray:
        """The last 100 Hz command xy (2,)."""
        return self._command.copy()

    @property
    def velocity(self) -> np.ndarray:
        """Velocity of the command over the last tick (2,), m/s."""
        return self._velocity.copy()

    @property
    def timed_out(self) -> bool:
        """True from the setpoint timeout until the next accepted setpoint."""
        return self._braking
