"""Scripted experts for the push tasks, reading the full state (see push_tasks.STATE_KEYS).

PushOracle is IBC's oriented push oracle (numbers from the IBC code, DESIGN.md): go to a pre-push point
5 cm behind the block on the block->target line (0.3 m/s), approach to 3 cm (within 6 mm), push toward 1 cm
inside the block (0.35 m/s); if the block's yaw error (relative to the push direction, wrapped to +-pi/4 by the
block's symmetry) exceeds 0.2 rad, nudge it from a point rotated +-0.2 rad around the block, 2.5 cm out
(0.15 m/s), until the error is below 0.03 rad, then start over from the pre-push point.
Positions are the commanded setpoint (as IBC's oracle), so phase changes do not depend on tracking lag.

InsertOracle extends it for the fixture: the same pushing, first toward a pre-insertion point on the
fixture axis 2.5 cm in front of the mouth; once the block is there, toward the pocket (a point 1 cm past
its centre, so the push line is the fixture axis) with tighter yaw thresholds (0.04 / 0.01 rad) and slowly
(0.1 m/s). If the block drifts off the axis before it is in the mouth it goes back to the pre-insertion
point; if it stops making progress while being pushed in (a jam), the oracle backs off and starts over.
The tool collides with the fixture (0.03 m walls, tool tip 0.01 m above the table), so the oracle keeps it
out of the fixture's footprint grown by the tool radius and a margin (the keep-out box): moves that are not
pushes go around the box through its nearest corner, and so does the orbit around the block; a block so close
to the fixture that the pre-push point or a nudging spot falls in the box is first pushed sideways onto the
axis (or, beside the fixture, forward along its side) without re-orienting; and if the measured effector lags
the setpoint by more than 2 cm (the tool is stuck on something) the setpoint comes back to the tool before
anything else is tried, instead of winding up the joint motors against a wall (which made PyBullet fling the
block off the table now and then). A block counts as in the mouth only inside the pocket's lane; a tool
between the pocket's walls that is sent out of the lane first backs straight out of the mouth (sent sideways,
it stopped at a wall, was brought back and sent again until the episode ended).
Both oracles start a push over once the tool is no longer behind the block (IBC's would keep pushing a block
that overshot its target away from it). With these, 98-99/100 seeds insert fully (96 before).

Both return a delta-xy action (2,) float32 per 5 Hz step, with an optional Gaussian noise of std
`noise_std` (m) added before the speed cap (IBC's `action_noise_std`).
"""

from __future__ import annotations

import math

import numpy as np

from irvs_ros.runtime.spec import state_slices
from irvs_ros.sim.push_tasks import STATE_DIM, STATE_KEYS, FixtureGeometry

_S = state_slices(STATE_KEYS)
# m: setpoint distance from the pre-push point that ends the approach (the oracles' default). 5 mm, not 1 mm: with
# executed noise a 1 mm rule leaves the approach ending at a point the observation cannot tell apart from the ones
# around it, and learned policies stall there (models/push_insert.md); 5 mm: noisy push_insert demos 91.5% successful
# (1 mm: 78.8%), the noise-free oracle 98/100 push_insert (1 mm: 97) and 100/100 push seeds (both).
PRE_PUSH_TOL = 5e-3
# m: setpoint distance from the approach point 3 cm behind the block that starts the push (the oracles' default).
# 6 mm, not IBC's 1 mm or the earlier 2 mm: with executed noise a 2 mm rule took 1-8 steps of few-mm corrections
# next to the block, at observations where the push follows, and a states EBM learned to stop there (45/35% against
# 50/55% at 2.5k/5k steps on 6 mm data, models/push_insert.md); the noise-free oracle inserts 99/100 seeds with both.
REACH_TOL = 6e-3


def _rot(v: np.ndarray, a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _wrap_quarter(a: float) -> float:
    """Angle wrapped to [-pi/4, pi/4) (square block: 4-fold symmetry)."""
    return (a + math.pi / 4) % (math.pi / 2) - math.pi / 4


class PushOracle:
    """IBC's oriented push oracle. Call `reset()` at every episode start; input {"state": (10,)}."""

    def __init__(self, control_period: float = 0.2, noise_std: float = 0.0,
                 rng: np.random.Generator | None = None, pre_push_tol: float = PRE_PUSH_TOL,
                 memoryless: bool = False, reach_tol: float = REACH_TOL) -> None:
        if not pre_push_tol > 0:
            raise ValueError(f"pre_push_tol must be > 0 (m), got {pre_push_tol!r}")
        if not reach_tol > 0:
            raise ValueError(f"reach_tol must be > 0 (m), got {reach_tol!r}")
        self.period = float(control_period)
        # Decide the phase from the observation at every step instead of carrying it over (see _observed_phase).
        self.memoryless = bool(memoryless)
        # Distance (m) of the setpoint from the pre-push point at which the approach ends and the push starts.
        self.pre_push_tol = float(pre_push_tol)
        self.noise_std = float(noise_std)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        # IBC's numbers.
        self.pre_push = 0.05
        self.next_to = 0.03
        self.touching = 0.01
        self.orient_radius = 0.025
        self.orient_angle = 0.2
        self.to_orient = 0.2
        self.flat_enough = 0.03
        self.v_approach, self.v_push, self.v_orient = 0.3, 0.35, 0.15
        self.reach_tol = float(reach_tol)
        self.detour_radius = 0.06
        self.behind_min = 0.015
        self.reset()

    def reset(self) -> None:
        self.phase = "move_to_pre_block"
        self._last_ee: np.ndarray | None = None
        self._stalls = 0

    @staticmethod
    def parse(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        state = np.asarray(obs["state"], dtype=np.float64).reshape(-1)
        if state.shape != (STATE_DIM,):
            raise ValueError(f"push oracle expects state of shape ({STATE_DIM},), got {state.shape}")
        return {k: state[s] for k, s in _S.items()}

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        st = self.parse(obs)
        delta, speed = self._push_toward(st["setpoint_xy"], st["block_xy"], float(st["block_yaw"][0]),
                                         st["goal_xy"], self.to_orient, self.flat_enough, self.v_push)
        return self._finish(delta, speed)

    # ------------------------------------------------------------------ shared machinery
    def _finish(self, delta: np.ndarray, speed: float) -> np.ndarray:
        if self.noise_std > 0:
            delta = delta + self.rng.normal(0.0, self.noise_std, 2)
        cap = speed * self.period
        n = float(np.linalg.norm(delta))
        if n > cap:
            delta = delta * (cap / n)
        return delta.astype(np.float32)

    def _around_block(self, ee: np.ndarray, block: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Delta toward `goal` that does not sweep through the block: orbit it at `detour_radius` when the
        block is in the way (IBC's oracle goes straight and knocks the block away)."""
        rel_ee, rel_goal = ee - block, goal - block
        r_ee = float(np.linalg.norm(rel_ee))
        if r_ee < 1e-9 or float(np.linalg.norm(rel_goal)) < 1e-9:
            return goal - ee
        ang = math.atan2(rel_ee[0] * rel_goal[1] - rel_ee[1] * rel_goal[0], float(rel_ee @ rel_goal))
        if abs(ang) <= math.pi / 3:
            return goal - ee
        radius = max(self.detour_radius, r_ee)
        for step in (math.copysign(math.pi / 4, ang), -math.copysign(math.pi / 4, ang)):
            waypoint = block + _rot(rel_ee / r_ee, step) * radius
            if self._clear_path(ee, waypoint):
                return waypoint - ee
        return block + _rot(rel_ee / r_ee, math.copysign(math.pi / 4, ang)) * radius - ee

    def _clear_path(self, start: np.ndarray, end: np.ndarray) -> bool:
        """Whether the tool may move straight from start to end (nothing to avoid here; see InsertOracle)."""
        return True

    def _push_toward(self, ee: np.ndarray, block: np.ndarray, block_yaw: float, target: np.ndarray,
                     to_orient: float, flat_enough: float, v_push: float) -> tuple[np.ndarray, float]:
        """One step of the oriented push state machine moving `block` toward `target`."""
        to_target = target - block
        dist = float(np.linalg.norm(to_target))
        direction = to_target / dist if dist > 1e-9 else np.array([1.0, 0.0])
        theta_error = _wrap_quarter(math.atan2(direction[1], direction[0]) - block_yaw)
        pre_block = block - direction * self.pre_push
        next_to = block - direction * self.next_to
        touching = block - direction * self.touching
        away = ee - block
        away_dir = away / max(float(np.linalg.norm(away)), 1e-9)

        speed = v_push
        if self.memoryless:
            # No approach / push / stall bookkeeping: each phase is one move; nudging runs the code below.
            self.phase = self._observed_phase(ee, block, direction, theta_error, to_orient)
            if self.phase == "push_block":
                return touching - ee, speed
            if self.phase == "move_to_pre_block":
                return self._around_block(ee, block, pre_block), self.v_approach
        if self.phase == "move_to_pre_block":
            delta = pre_block - ee
            stalled = self._last_ee is not None and np.linalg.norm(ee - self._last_ee) < 5e-4 and self._stalls >= 2
            if np.linalg.norm(delta) < self.pre_push_tol or stalled:
                # `stalled`: the envelope keeps the setpoint from the pre-push point (block near the workspace
                # edge); push from as close as it gets rather than wait forever.
                self.phase = "move_to_block"
                self._stalls = 0
            else:
                self._stalls = self._stalls + 1 if (self._last_ee is not None
                                                    and np.linalg.norm(ee - self._last_ee) < 5e-4) else 0
                self._last_ee = ee.copy()
                return self._around_block(ee, block, pre_block), self.v_approach
        if self.phase == "move_to_block":
            delta = next_to - ee
            # 2 mm, not IBC's 1 mm: the tool already grazes a block turned corner-first at 3 cm and pushes
            # it ahead, so the approach point keeps receding by about a millimetre per step.
            if np.linalg.norm(delta) < self.reach_tol:
                self.phase = "push_block"
            if theta_error > to_orient:
                self.phase = "orient_block_left"
            elif theta_error < -to_orient:
                self.phase = "orient_block_right"
            if self.phase == "move_to_block":
                return delta, speed
        if self.phase == "push_block":
            # Not IBC's: also start over once the tool is no longer behind the block (the target moved behind
            # it, or the block slid off the tool); pushing on toward `touching` would push it away for good.
            if abs(theta_error) > to_orient or float((block - ee) @ direction) < self.behind_min:
                self.phase = "move_to_pre_block"
            return touching - ee, speed
        if self.phase == "orient_block_left":
            spot = block + _rot(away_dir, self.orient_angle) * self.orient_radius
            # Unlike IBC, an error that wrapped past -pi/4 (the block turned beyond the next face) keeps the
            # nudging going the same way instead of counting as flat: near +-pi/4 the sign flips back and
            # forth and IBC's rule cycles without ever touching the block.
            if -to_orient <= theta_error < flat_enough:
                self.phase = "move_to_pre_block"
            return spot - ee, self.v_orient
        if self.phase == "orient_block_right":
            spot = block + _rot(away_dir, -self.orient_angle) * self.orient_radius
            if -flat_enough < theta_error <= to_orient:
                self.phase = "move_to_pre_block"
            return spot - ee, self.v_orient
        raise RuntimeError(f"push oracle in unknown phase {self.phase!r}")

    def _observed_phase(self, ee: np.ndarray, block: np.ndarray, direction: np.ndarray, theta_error: float,
                        to_orient: float) -> str:
        """The phase as a function of what a policy observes (setpoint, block pose, target), for `memoryless`.

        The state machine's phase is hidden from a policy that sees one frame: at the same observation the oracle
        may be correcting toward the pre-push point or pushing, nudging or not, and a learner fits the denser of
        the two (models/push_insert.md). Here a block turned past `to_orient` is nudged (with no hysteresis down
        to `flat_enough`: without memory of the nudge's direction an overshoot past flat is nudged back and the
        block rocks; 94/100 noisy push_insert episodes succeed without it, 75/100 with it); a tool in the
        corridor behind the block (from `behind_min` to the pre-push point plus `pre_push_tol`, within
        `pre_push_tol` of the push line; at contact within 1.5 cm) pushes; anywhere else it goes to the
        pre-push point. An option for experiments: a states EBM learned 5% from its demonstrations against 55%
        from the stateful oracle's (models/push_insert.md).
        """
        rel = ee - block
        behind = -float(rel @ direction)
        lateral = abs(float(rel[0] * direction[1] - rel[1] * direction[0]))
        if abs(theta_error) > to_orient:
            return "orient_block_left" if theta_error > 0 else "orient_block_right"
        in_contact = behind < self.next_to + self.pre_push_tol
        lane = 0.015 if in_contact else self.pre_push_tol
        if self.behind_min <= behind <= self.pre_push + self.pre_push_tol and lateral < lane:
            return "push_block"
        return "move_to_pre_block"


class InsertOracle(PushOracle):
    """Oriented pushing extended for insertion into the fixture (see module docstring)."""

    def __init__(self, control_period: float = 0.2, noise_std: float = 0.0, rng: np.random.Generator | None = None,
                 block_size: float = 0.04, pocket: float = 0.042, fixture: FixtureGeometry | None = None,
                 tool_radius: float = 0.01, pre_push_tol: float = PRE_PUSH_TOL, memoryless: bool = False,
                 reach_tol: float = REACH_TOL) -> None:
        super().__init__(control_period, noise_std, rng, pre_push_tol, memoryless, reach_tol)
        self.block_size = float(block_size)
        self.pocket = float(pocket)
        f = fixture or FixtureGeometry()
        # Keep-out box of the fixture in its frame (u along the insertion axis, v across): the walls and lead-in
        # guides (push_tasks.PushTaskEnv._fixture_shapes), grown by the tool radius and a margin.
        grow = float(tool_radius) + 0.008
        guide_u = self.pocket / 2 + f.guide_length * math.cos(f.guide_angle)
        guide_v = self.pocket / 2 + f.guide_length * math.sin(f.guide_angle) + f.wall_thickness
        self.keep_out = (-guide_u - grow, self.pocket / 2 + f.wall_thickness + grow,
                         max(guide_v, self.pocket / 2 + f.wall_thickness) + grow)
        self.walls_front = -guide_u   # u of the guides' front ends: from there on walls bound the pocket's lane
        self.blocked_lag = 0.02
        self.box_margin = 0.004   # how far outside the keep-out box the detours end, so the next move clears it
        self._fixture_frame = (np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 1.0]))
        self.pre_insert_gap = 0.025
        self.insert_to_orient, self.insert_flat = 0.04, 0.01
        self.v_insert = 0.1
        self.off_axis = 0.006
        self.jam_steps = 5
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.mode = "transport"
        self._progress: list[float] = []

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        st = self.parse(obs)
        ee, block, yaw = st["setpoint_xy"], st["block_xy"], float(st["block_yaw"][0])
        fixture, g = st["goal_xy"], float(st["goal_yaw"][0])
        axis = np.array([math.cos(g), math.sin(g)])
        normal = np.array([-axis[1], axis[0]])
        self._fixture_frame = (fixture, axis, normal)
        lag = st["effector_xy"] - ee
        if float(np.linalg.norm(lag)) > self.blocked_lag:
            # The tool is stuck (on the fixture): bring the setpoint back to it and start the approach over.
            self.phase = "move_to_pre_block"
            self._progress = []
            return self._finish(lag, self.v_approach)
        u = float((block - fixture) @ axis)
        v = float((block - fixture) @ normal)
        mouth_u = -(self.pocket / 2 + self.block_size / 2)   # block centre touching the mouth plane
        pre_insert = fixture + axis * (mouth_u - self.pre_insert_gap)
        # In the mouth: past the mouth plane and in the pocket's lane (a block beside or behind the fixture is not).
        in_mouth = mouth_u + 0.005 < u < self.pocket / 2 + 0.01 and abs(v) < 0.015

        u_pre = mouth_u - self.pre_insert_gap
        # Hysteresis (a wider lane once inserting) is state a policy does not see: memoryless takes the middle.
        lane = 1.5 * self.off_axis if self.memoryless else (self.off_axis if self.mode == "transport"
                                                            else 2 * self.off_axis)
        near_axis = abs(v) < lane
        mode = "insert" if in_mouth or (near_axis and u > u_pre - 0.012) else "transport"
        if mode != self.mode:
            self.mode = mode
            self.phase = "move_to_pre_block"
            self._progress = []

        if self.mode == "transport":
            target = self._transport_target(block, fixture, axis, normal, pre_insert, u, v)
            # Nudging the block's yaw needs the tool at a spot 2.5 cm from the block's centre; next to the fixture
            # that spot can be inside it: then push without re-orienting until the block is in the open.
            to_orient = math.pi if self._orient_spot_blocked(ee, block, fixture, axis, normal) else self.to_orient
            delta, speed = self._push_toward(ee, block, yaw, target, to_orient, self.flat_enough, self.v_push)
            return self._finish(self._around_fixture(ee, delta, fixture, axis, normal), speed)

        # Insert: push along the axis (aim past the pocket centre), block face aligned to the fixture.
        aim = fixture + axis * 0.01   # on the axis; an off-axis block goes back to transport (see above)
        # In the mouth the walls and guides hold the yaw; nudging there would drive the tool into a wall.
        to_orient = math.pi if in_mouth else self.insert_to_orient
        delta, speed = self._push_toward(ee, block, yaw, aim, to_orient, self.insert_flat, self.v_insert)
        if self.phase == "push_block" and not self.memoryless:
            self._progress.append(u)
            if len(self._progress) > self.jam_steps:
                recent = self._progress[-self.jam_steps - 1:]
                inserted = u >= self.pocket / 2 - self.block_size / 2 - 0.002
                if recent[-1] - recent[0] < 0.002 and not inserted:
                    # Jammed at the mouth: back off behind the block and come in again (re-aligning first).
                    self.phase = "move_to_pre_block"
                    self._progress = []
        else:
            self._progress = []
        return self._finish(self._around_fixture(ee, delta, fixture, axis, normal), speed)

    def _clear_path(self, start: np.ndarray, end: np.ndarray) -> bool:
        """Whether the straight move start -> end stays out of the fixture's keep-out box (orbiting the block)."""
        fixture, axis, normal = self._fixture_frame
        u0, u1, vh = self.keep_out
        a, b = start - fixture, end - fixture
        return not _segment_hits_box((float(a @ axis), float(a @ normal)), (float(b @ axis), float(b @ normal)),
                                     u0, u1, vh) and not self._in_keep_out(end, fixture, axis, normal)

    def _in_keep_out(self, p: np.ndarray, fixture: np.ndarray, axis: np.ndarray, normal: np.ndarray) -> bool:
        u0, u1, vh = self.keep_out
        rel = p - fixture
        pu, pv = float(rel @ axis), float(rel @ normal)
        return u0 < pu < u1 and -vh < pv < vh

    def _orient_spot_blocked(self, ee: np.ndarray, block: np.ndarray, fixture: np.ndarray, axis: np.ndarray,
                             normal: np.ndarray) -> bool:
        away = ee - block
        away = away / max(float(np.linalg.norm(away)), 1e-9)
        return any(self._in_keep_out(block + _rot(away, a) * self.orient_radius, fixture, axis, normal)
                   for a in (self.orient_angle, -self.orient_angle))

    def _transport_target(self, block: np.ndarray, fixture: np.ndarray, axis: np.ndarray, normal: np.ndarray,
                          pre_insert: np.ndarray, u: float, v: float) -> np.ndarray:
        """Where to push the block in transport: the pre-insertion point, unless the pre-push point for that
        (behind the block) lies in the fixture's keep-out box. A block beside or behind the fixture first goes
        forward along the fixture's side; a block just in front of the mouth but off the axis or turned (no
        room for the tool between it and the fixture) goes onto the axis sideways, slightly outward if there
        is room - moves that need the tool only behind or beside the block."""
        u_pre = float((pre_insert - fixture) @ axis)
        candidates = [pre_insert, fixture + axis * (u - 0.01), fixture + axis * u]
        if u > -self.pocket / 2 - 0.01 and abs(v) > 0.03:
            side = math.copysign(max(abs(v), self.keep_out[2] + 0.02), v)
            candidates.insert(0, fixture + axis * (u_pre - 0.02) + normal * side)
        for t in candidates:
            d = t - block
            n = float(np.linalg.norm(d))
            if n > 1e-6 and not self._in_keep_out(block - d / n * self.pre_push, fixture, axis, normal):
                return t
        return pre_insert

    def _around_fixture(self, ee: np.ndarray, delta: np.ndarray, fixture: np.ndarray, axis: np.ndarray,
                        normal: np.ndarray) -> np.ndarray:
        """`delta` (2,), or a move toward a corner of the keep-out box when the straight move to ee + delta would
        cross it (only for moves that are not pushes, and only from outside the box toward a point outside it:
        inserting takes the tool into the mouth), or, for a tool in the pocket's lane (in the mouth or the pocket)
        sent out of that lane, a move straight back out of the mouth first."""
        if self.phase == "push_block":
            return delta
        u0, u1, vh = self.keep_out
        if self._in_keep_out(ee, fixture, axis, normal):
            # The walls close the lane on both sides: a sideways move from it stops at a wall, and the stuck-tool
            # rule brings the setpoint back to the tool, so the two alternated until the episode ended (all 4
            # failures of 60 noisy oracle episodes). Back out along the axis, pushing away whatever is in the
            # mouth, then go around as from anywhere in front of the box.
            rel, end = ee - fixture, ee + delta - fixture
            in_lane = float(rel @ axis) > self.walls_front and abs(float(rel @ normal)) < self.pocket / 2
            if in_lane and abs(float(end @ normal)) >= self.pocket / 2:
                return axis * (u0 - self.box_margin - float(rel @ axis))
            return delta
        if self._in_keep_out(ee + delta, fixture, axis, normal):
            return delta
        a = (float((ee - fixture) @ axis), float((ee - fixture) @ normal))
        b = (float((ee + delta - fixture) @ axis), float((ee + delta - fixture) @ normal))
        if not _segment_hits_box(a, b, u0, u1, vh):
            return delta
        # Corners a little outside the box (so that the next move from there clears it); the one that makes the
        # shortest detour among those reachable in a straight line.
        m = self.box_margin
        corners = [(u, v) for u in (u0 - m, u1 + m) for v in (-vh - m, vh + m)]
        best, best_len = None, math.inf
        for c in corners:
            if _segment_hits_box(a, c, u0, u1, vh):
                continue
            length = math.dist(a, c) + math.dist(c, b)
            if length < best_len:
                best, best_len = c, length
        if best is None:
            return delta
        return fixture + axis * best[0] + normal * best[1] - ee


def _segment_hits_box(a: tuple[float, float], b: tuple[float, float], u0: float, u1: float, vh: float) -> bool:
    """Whether the segment a-b passes through the open box u0 < u < u1, -vh < v < vh (slab test)."""
    t0, t1 = 0.0, 1.0
    for p, d, lo, hi in ((a[0], b[0] - a[0], u0, u1), (a[1], b[1] - a[1], -vh, vh)):
        if abs(d) < 1e-12:
            if not lo < p < hi:
                return False
            continue
        s0, s1 = (lo - p) / d, (hi - p) / d
        if s0 > s1:
            s0, s1 = s1, s0
        t0, t1 = max(t0, s0), min(t1, s1)
        if t0 >= t1:
            return False
    return True
