"""Scripted experts for the push tasks, reading the full state (see push_tasks.STATE_KEYS).

PushOracle is IBC's oriented push oracle (numbers from the IBC code, DESIGN.md): go to a pre-push point
5 cm behind the block on the block->target line (0.3 m/s), approach to 3 cm, push toward 1 cm inside the
block (0.35 m/s); if the block's yaw error (relative to the push direction, wrapped to +-pi/4 by the
block's symmetry) exceeds 0.2 rad, nudge it from a point rotated +-0.2 rad around the block, 2.5 cm out
(0.15 m/s), until the error is below 0.03 rad, then start over from the pre-push point.
Positions are the commanded setpoint (as IBC's oracle), so phase changes do not depend on tracking lag.

InsertOracle extends it for the fixture: the same pushing, first toward a pre-insertion point on the
fixture axis 2.5 cm in front of the mouth; once the block is there, toward the pocket (a point 1 cm past
its centre, so the push line is the fixture axis) with tighter yaw thresholds (0.04 / 0.01 rad) and slowly
(0.1 m/s). If the block drifts off the axis before it is in the mouth it goes back to the pre-insertion
point; if it stops making progress while being pushed in (a jam), the oracle backs off and starts over.

Both return a delta-xy action (2,) float32 per 5 Hz step, with an optional Gaussian noise of std
`noise_std` (m) added before the speed cap (IBC's `action_noise_std`).
"""

from __future__ import annotations

import math

import numpy as np

from irvs_ros.sim.push_tasks import STATE_DIM, STATE_KEYS


def _slices() -> dict[str, slice]:
    out, i = {}, 0
    for k, n in STATE_KEYS:
        out[k] = slice(i, i + n)
        i += n
    return out


_S = _slices()


def _rot(v: np.ndarray, a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _wrap_quarter(a: float) -> float:
    """Angle wrapped to [-pi/4, pi/4) (square block: 4-fold symmetry)."""
    return (a + math.pi / 4) % (math.pi / 2) - math.pi / 4


class PushOracle:
    """IBC's oriented push oracle. Call `reset()` at every episode start; input {"state": (10,)}."""

    def __init__(self, control_period: float = 0.2, noise_std: float = 0.0,
                 rng: np.random.Generator | None = None) -> None:
        self.period = float(control_period)
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
        self.reach_tol = 0.002
        self.detour_radius = 0.06
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
        step = math.copysign(math.pi / 4, ang)
        waypoint = block + _rot(rel_ee / r_ee, step) * max(self.detour_radius, r_ee)
        return waypoint - ee

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
        if self.phase == "move_to_pre_block":
            delta = pre_block - ee
            stalled = self._last_ee is not None and np.linalg.norm(ee - self._last_ee) < 5e-4 and self._stalls >= 2
            if np.linalg.norm(delta) < 1e-3 or stalled:
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
            if abs(theta_error) > to_orient:
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


class InsertOracle(PushOracle):
    """Oriented pushing extended for insertion into the fixture (see module docstring)."""

    def __init__(self, control_period: float = 0.2, noise_std: float = 0.0, rng: np.random.Generator | None = None,
                 block_size: float = 0.04, pocket: float = 0.042) -> None:
        super().__init__(control_period, noise_std, rng)
        self.block_size = float(block_size)
        self.pocket = float(pocket)
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
        u = float((block - fixture) @ axis)
        v = float((block - fixture) @ normal)
        mouth_u = -(self.pocket / 2 + self.block_size / 2)   # block centre touching the mouth plane
        pre_insert = fixture + axis * (mouth_u - self.pre_insert_gap)
        in_mouth = u > mouth_u + 0.005

        u_pre = mouth_u - self.pre_insert_gap
        near_axis = abs(v) < (self.off_axis if self.mode == "transport" else 2 * self.off_axis)
        mode = "insert" if in_mouth or (near_axis and u > u_pre - 0.012) else "transport"
        if mode != self.mode:
            self.mode = mode
            self.phase = "move_to_pre_block"
            self._progress = []

        if self.mode == "transport":
            delta, speed = self._push_toward(ee, block, yaw, pre_insert, self.to_orient, self.flat_enough,
                                             self.v_push)
            return self._finish(delta, speed)

        # Insert: push along the axis (aim past the pocket centre), block face aligned to the fixture.
        aim = fixture + axis * 0.01   # on the axis; an off-axis block goes back to transport (see above)
        # In the mouth the walls and guides hold the yaw; nudging there would drive the tool into a wall.
        to_orient = math.pi if in_mouth else self.insert_to_orient
        delta, speed = self._push_toward(ee, block, yaw, aim, to_orient, self.insert_flat, self.v_insert)
        if self.phase == "push_block":
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
        return self._finish(delta, speed)
