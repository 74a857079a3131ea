"""Lockstep of the simulated cell with the rest of the ROS graph (no rclpy: the sim node feeds it stamps).

On sim time every node acts when `/clock` reaches its deadlines, but each takes wall time to answer: the
interpolator's joint command for a tick, the policy's setpoint for a decision. A sim that keeps stepping
meanwhile makes the result depend on CPU load (a slow decision acts later in simulated time). With the gate,
the sim holds simulated time `now` until the graph has answered it:

- joint commands: a command stamped `now` (the interpolator stamps each command with its tick time), and at
  decision times also its effector pose stamped `now`;
- setpoints: at decision times `anchor + k * decision_period` (k >= 1; the anchor is the episode start), a
  setpoint stamped at or after that time (the policy stamps with its clock, which the sim holds there).

Ordering, so that an episode is the same whatever the load: at a decision time the sim first waits for the
interpolator's command and effector pose (`pose`, published after the command) for that tick, and only then
re-publishes its clock DECISION_NS (2 us) past the tick. A policy whose decision timer was (re)started while the
sim was paused (the sim then publishes its clock at +DECISION_NS: `policy_node/enable`) fires only at that
re-publication, so it sees the tick's effector pose and its camera frame (rendered a tick earlier), and its
setpoint reaches the interpolator after the tick's command, to be applied from the next tick on (the sim waits
SETPOINT_GRACE before that tick for the setpoint to reach the interpolator as well). While a joint command is
late (NUDGE_FIRST), the clock is re-published NUDGE_NS (1 us) past the tick: a node that accumulates float
deadlines (next += dt) from its own start can find the exact tick a rounding error short of its deadline, and
/clock is best effort. While a decision's setpoint is late, each re-publication of the clock also sends the
newest camera frame again (best effort as well, it can be lost), and a policy that held its decision for want of a
fresh frame takes it when the frame comes while the clock still stands (nodes.policy_node). What is left to chance
are message deliveries to a node starved of CPU for longer than these margins (a frame or a setpoint a tick late);
they move an episode by micrometres to millimetres.

A stream is waited for only while it is engaged: commands and poses from their first message on, setpoints from an
episode start or the first setpoint on. When an answer does not come within `timeout` wall seconds (a node
stopped, a policy holding), the sim goes on, counts a timeout and stops waiting for that stream until its next
message, so a graph without a policy (or without an interpolator) still runs, only without that half of the
lockstep.
Times are simulated seconds, `timeout` is wall seconds.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

STREAMS = ("command", "pose", "setpoint")
NUDGE_FIRST = 0.003   # wall s a tick waits for its joint command before the first nudge (a round trip is ~1 ms)
NUDGE_PERIOD = 0.05   # wall s between further re-publications of the clock
NUDGE_NS = 1000       # clock offset (ns) of a nudge for a late joint command
DECISION_NS = 2000    # clock offset (ns) that releases a decision (the policy's timer runs this far past ticks)
SETPOINT_GRACE = 0.005  # wall s after a decision's setpoint reached the sim before the next tick (see docstring)


class LockstepError(ValueError):
    """Invalid lockstep configuration."""


class LockstepGate:
    """Holds one simulated tick until the joint command (and at decision times the setpoint) for it arrived."""

    def __init__(self, tick: float, decision_period: float, timeout: float, enabled: bool = True) -> None:
        for name, v in (("tick", tick), ("decision_period", decision_period), ("timeout", timeout)):
            if not (math.isfinite(v) and v > 0):
                raise LockstepError(f"lockstep {name} must be a finite number > 0, got {v!r}")
        ratio = decision_period / tick
        if abs(ratio - round(ratio)) > 1e-6:
            raise LockstepError(f"decision_period {decision_period} s must be a whole number of ticks of {tick} s")
        self.tick = float(tick)
        self.period = float(decision_period)
        self.timeout = float(timeout)
        self.enabled = bool(enabled)
        self.tol = 0.5 * self.tick
        self.anchor = 0.0
        self.timeouts = dict.fromkeys(STREAMS, 0)
        self.nudges = 0
        self._cv = threading.Condition()
        self._last = dict.fromkeys(STREAMS, -math.inf)
        self._engaged = dict.fromkeys(STREAMS, False)
        self._released = False
        self._timed_out: dict[str, tuple[float, float]] = {}  # stream -> (sim s it timed out at, wall s then)
        self._late_answers: list[tuple[str, float, float, float]] = []

    # ------------------------------------------------------------------ inputs (any thread)
    def command(self, stamp: float) -> None:
        """A joint command stamped `stamp` (sim s) arrived."""
        self._arrived("command", stamp)

    def pose(self, stamp: float) -> None:
        """An effector pose (the interpolator's, published after its command) stamped `stamp` arrived."""
        self._arrived("pose", stamp)

    def setpoint(self, stamp: float) -> None:
        """A policy setpoint stamped `stamp` (sim s) arrived."""
        self._arrived("setpoint", stamp)

    def _arrived(self, stream: str, stamp: float) -> None:
        with self._cv:
            if stream in self._timed_out:  # the first answer after a timeout: how late was it (a log line says)
                at, wall = self._timed_out.pop(stream)
                self._late_answers.append((stream, float(stamp), at, time.monotonic() - wall))
            self._last[stream] = max(self._last[stream], float(stamp))
            self._engaged[stream] = True
            self._cv.notify_all()

    def take_late_answers(self) -> list[tuple[str, float, float, float]]:
        """The first answers that came after a timeout since the last call, as (stream, stamp sim s, sim s of the
        timeout, wall s after the timeout); for logging how late a message was."""
        with self._cv:
            out, self._late_answers = self._late_answers, []
            return out

    def start_episode(self, now: float) -> None:
        """An episode starts at sim time `now`: decisions are due at now + k * decision_period, k >= 1."""
        with self._cv:
            self.anchor = float(now)
            self._engaged["setpoint"] = True
            self._cv.notify_all()

    def release(self) -> None:
        """Wake a waiting `wait` for good (the sim is stopping)."""
        with self._cv:
            self._released = True
            self._cv.notify_all()

    # ------------------------------------------------------------------ queries
    def decisions(self, now: float) -> int:
        """Decision times passed since the anchor up to sim time `now`."""
        return max(0, int(math.floor((now - self.anchor + self.tol) / self.period)))

    def is_decision_time(self, now: float) -> bool:
        """True when sim time `now` is a decision time (anchor + k * period, k >= 1, within half a tick)."""
        k = round((now - self.anchor) / self.period)
        return k >= 1 and abs(now - self.anchor - k * self.period) < self.tol

    def engaged(self, stream: str) -> bool:
        with self._cv:
            return self._engaged[stream]

    def missing(self, now: float) -> list[str]:
        """The engaged streams whose answer for sim time `now` has not arrived yet."""
        with self._cv:
            return self._missing(now)

    def _missing(self, now: float) -> list[str]:
        out = []
        decision = self.is_decision_time(now)
        for stream in STREAMS:
            if (self._engaged[stream] and (decision or stream == "command")
                    and self._last[stream] < now - self.tol):
                out.append(stream)
        return out

    # ------------------------------------------------------------------ the hold
    def wait(self, now: float, stopped: Callable[[], bool] = lambda: False,
             republish: Callable[[int], None] | None = None, resend: Callable[[], None] | None = None) -> list[str]:
        """Block until every engaged stream answered sim time `now`, `timeout` wall s passed, `stopped()` turned
        true or `release()` was called. Returns the streams that timed out (now disengaged); [] when disabled.

        republish(offset_ns): re-publish the clock at `now` + offset_ns (called outside the gate's lock): with
        NUDGE_NS while the joint command is late (after NUDGE_FIRST, then every NUDGE_PERIOD), and at a decision
        time with DECISION_NS once the command is in (then every NUDGE_PERIOD), see the module docstring.
        resend(): called with each of those later re-publications while the setpoint is late (the sim sends its
        newest camera frame again: a best-effort frame lost on the way would otherwise hold the policy until the
        timeout)."""
        if not self.enabled:
            return []
        deadline = time.monotonic() + self.timeout
        late = self._wait_for(now, ("command", "pose"), deadline, stopped, republish, NUDGE_NS, NUDGE_FIRST)
        if late is None:
            return []
        decision = self.is_decision_time(now) and self.engaged("setpoint")
        if decision and republish is not None:
            republish(DECISION_NS)
        more = self._wait_for(now, ("setpoint",), deadline, stopped, republish, DECISION_NS, NUDGE_PERIOD, resend)
        if decision and more == []:
            time.sleep(SETPOINT_GRACE)  # let the setpoint reach the interpolator too before the next tick's clock
        return late + (more or [])

    def _wait_for(self, now: float, streams: tuple[str, ...], deadline: float, stopped: Callable[[], bool],
                  republish: Callable[[int], None] | None, offset_ns: int, first: float,
                  resend: Callable[[], None] | None = None) -> list[str] | None:
        """Wait for the answers of `streams` to `now` (republishing the clock at now + offset_ns); [] when they
        came or are not waited for, the late ones after a timeout (now disengaged), None when stopped/released."""
        next_nudge = time.monotonic() + first
        while True:
            with self._cv:
                while True:
                    if self._released or stopped():
                        return None
                    missing = [m for m in self._missing(now) if m in streams]
                    if not missing:
                        return []
                    t = time.monotonic()
                    if t >= deadline:
                        for stream in missing:
                            self._engaged[stream] = False
                            self.timeouts[stream] += 1
                            self._timed_out[stream] = (now, t)
                        return missing
                    if republish is not None and t >= next_nudge:
                        break
                    # Bounded so that a stop() that does not notify is still seen promptly.
                    self._cv.wait(min(deadline - t, next_nudge - t, 0.05))
            republish(offset_ns)
            if resend is not None:
                resend()
            self.nudges += 1
            next_nudge = time.monotonic() + NUDGE_PERIOD
