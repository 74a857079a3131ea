"""Inverse and forward kinematics of the xArm6 with the cell's tool, in a private kinematics-only PyBullet client.

The effector points straight down (tool axis = world -z). Two solvers, same answers (to about 1e-5 rad):

- "analytic" (default): with the tool pointing down, joint 4 at 0 and joint 5 = -(joint 2 + joint 3), the
  arm is a planar chain in the vertical plane through the base axis at angle joint 1, so the TCP position
  fixes the wrist (joint 4) centre and joints 2, 3 follow from a two-link triangle (elbow-up branch, the one
  the numerical solver finds); joint 6 = joint 1 + pi holds the tool frame at `DOWN_QUATERNION`. The link
  offsets are read from the URDF; the URDF's rpy of +-1.5708 (not exactly pi/2) puts PyBullet's chain about
  1 micrometre away from the planar model. A few microseconds of floating-point math per solve, versus
  ~60 us for a PyBullet solve with its FK check; targets out of reach or joint limits fall back to it.
- "pybullet": `calculateInverseKinematics` warm-started from the previous solution (a streaming 100 Hz
  command moves a few mm per call), stopping at the residual threshold; a cold start seeds the arm turned
  toward the target. A small joint damping (1e-3 instead of PyBullet's 0.1 default) is what makes the
  solver converge to sub-mm residuals across the whole reachable workspace. Each solution is checked by FK.

Either way `solve` returns joints inside the limits and sets `last_error`, the TCP's distance to the target.
`solve_path` solves a stream of targets (the 20 commands of a 5 Hz step) with the results of `solve` on each
in turn, in one vectorized pass when the analytic solver covers them all.
"""

from __future__ import annotations

import cmath
import math

import numpy as np
import pybullet as p

from irvs_ros.control.xarm_model import JOINT_NAMES, TCP_LINK, ToolGeometry, xarm6_joint_origins, xarm6_with_tool_urdf

# Tool axis pointing down: rotation by pi about the base y axis (x, y, z, w).
DOWN_QUATERNION: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 0.0)
# Joints that turn freely (+-2 pi): a solution outside the limits may be wrapped by 2 pi.
_WRAPPABLE = (0, 3, 5)
IK_METHODS = ("analytic", "pybullet")
_TWO_PI = 2.0 * math.pi


class IKError(ValueError):
    """Bad input to the IK (wrong shape, non-finite target or joints)."""


class XArmIK:
    """IK/FK for the TCP of the xArm6 + tool. Joint vectors are (6,) radians in JOINT_NAMES order; positions in m.

    Holds its own DIRECT PyBullet client (kinematics only: no simulation steps); call `close()` or use as a
    context manager to free it.
    """

    def __init__(self, tool: ToolGeometry | None = None, z: float = 0.06, *, iterations: int = 20,
                 damping: float = 1e-3, residual: float = 1e-5, method: str = "analytic") -> None:
        if method not in IK_METHODS:
            raise ValueError(f"unknown IK method {method!r}; expected one of {IK_METHODS}")
        self.method = method
        self.tool = tool or ToolGeometry()
        self.z = float(z)
        self.iterations = int(iterations)
        self.damping = float(damping)
        self.residual = float(residual)
        self._cid = p.connect(p.DIRECT)
        try:
            self._robot = p.loadURDF(str(xarm6_with_tool_urdf(self.tool)), useFixedBase=True,
                                     physicsClientId=self._cid)
            by_joint = {}
            by_link = {}
            for i in range(p.getNumJoints(self._robot, physicsClientId=self._cid)):
                info = p.getJointInfo(self._robot, i, physicsClientId=self._cid)
                by_joint[info[1].decode()] = i
                by_link[info[12].decode()] = i
            self._joints = [by_joint[n] for n in JOINT_NAMES]
            self._tcp = by_link[TCP_LINK]
            infos = [p.getJointInfo(self._robot, j, physicsClientId=self._cid) for j in self._joints]
        except Exception:
            p.disconnect(self._cid)
            raise
        self.lower = np.array([i[8] for i in infos], dtype=np.float64)
        self.upper = np.array([i[9] for i in infos], dtype=np.float64)
        self._lo, self._hi = self.lower.tolist(), self.upper.tolist()
        self._planar = _PlanarXArm6(self.tool.flange_to_tcp)
        self._last: np.ndarray | None = None
        self.last_error = 0.0
        self.fallbacks = 0   # analytic solves that went to the numerical solver (out of reach or limits)
        self.home = self._cold_solve(np.array([0.4, 0.0, self.z]))

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        if self._cid is not None and p.isConnected(self._cid):
            p.disconnect(self._cid)
        self._cid = None

    def __enter__(self) -> XArmIK:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Forget the warm start, so the next solve depends only on its inputs (seeded, reproducible episodes)."""
        self._last = None

    # ------------------------------------------------------------------ kinematics
    def fk(self, q: np.ndarray) -> np.ndarray:
        """TCP position (3,) in the base frame for joint positions q (6,)."""
        return self.fk_pose(q)[0]

    def fk_pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) and orientation quaternion (4,) x, y, z, w for joint positions q (6,)."""
        self._set(self._check_q(q))
        s = p.getLinkState(self._robot, self._tcp, computeForwardKinematics=True, physicsClientId=self._cid)
        return np.array(s[4]), np.array(s[5])

    def solve(self, target: np.ndarray, q_seed: np.ndarray | None = None) -> np.ndarray:
        """Joint positions (6,) putting the TCP at `target` (xy (2,) at height z, or xyz (3,)), tool pointing down.

        The reference is `q_seed`, else the previous solution, else none. The numerical solver starts from it
        (without one, from an arm turned toward the target); the analytic one uses it to choose among the
        2 pi-equivalent angles of the free-turning joints 1 and 6, so a stream of commands never makes them
        jump a full turn. The result is inside the joint limits; `last_error` holds its FK distance to the
        target (m).
        """
        xyz = self._check_target(target)
        seed = q_seed if q_seed is not None else self._last
        if self.method == "analytic":
            ref = self._check_q(seed).tolist() if seed is not None else None
            x, y, z = xyz.tolist()
            sol = self._planar.solve(x, y, z, ref, self._lo, self._hi)
            if sol is not None:
                self.last_error = self._planar.error(sol, x, y, z)
                if self.last_error <= 1e-3:
                    q = np.array(sol)
                    self._last = q
                    return q.copy()
            self.fallbacks += 1
        if seed is None:
            q = self._cold_solve(xyz)
        else:
            q = self._solve_from(xyz, self._check_q(seed))
            if self.last_error > 1e-3:
                q_cold = self._cold_solve(xyz)
                if self.last_error > 1e-3:
                    # Neither converged: keep the one that is closer.
                    err_cold = self.last_error
                    q_warm = self._solve_from(xyz, self._check_q(seed))
                    if self.last_error > err_cold:
                        q = q_cold
                        self.last_error = err_cold
                    else:
                        q = q_warm
                else:
                    q = q_cold
        self._last = q.copy()
        return q

    def solve_path(self, targets: np.ndarray) -> np.ndarray:
        """Joint positions (N, 6) for a stream of targets (N, 2) at height z or (N, 3): the same as calling `solve`
        on each in turn (each solution the reference of the next), in one vectorized pass when the analytic
        solver covers them all (the 100 Hz commands of a whole 5 Hz step in the simulator)."""
        t = np.asarray(targets, dtype=np.float64)
        if t.ndim != 2 or t.shape[1] not in (2, 3) or len(t) == 0 or not np.all(np.isfinite(t)):
            raise IKError(f"IK targets must be a non-empty finite (N, 2) or (N, 3) array, got {np.shape(targets)}")
        if self.method == "analytic":
            z = t[:, 2] if t.shape[1] == 3 else np.full(len(t), self.z)
            ref = self._check_q(self._last) if self._last is not None else None
            out = self._planar.solve_many(t[:, 0], t[:, 1], z, ref, self.lower, self.upper)
            if out is not None and float(out[1].max()) <= 1e-3:
                q, err = out
                self._last = q[-1].copy()
                self.last_error = float(err[-1])
                return q
        return np.array([self.solve(row) for row in t])

    # ------------------------------------------------------------------ internals
    def _cold_solve(self, xyz: np.ndarray) -> np.ndarray:
        if getattr(self, "home", None) is None:
            # Bootstrapping `home`: a generic elbow-up, tool-down posture facing +x.
            seed = np.array([0.0, 0.0, -1.2, 0.0, 1.2, 0.0])
        else:
            seed = self.home.copy()
        # Turning joint 1 toward the target keeps the solver in the elbow-up branch near the base.
        turn = math.atan2(xyz[1], xyz[0])
        seed[0] += turn
        q = self._solve_from(xyz, seed)
        if self.last_error > 1e-4:
            q = self._solve_from(xyz, q)
        return q

    def _solve_from(self, xyz: np.ndarray, seed: np.ndarray) -> np.ndarray:
        q = np.array(p.calculateInverseKinematics(
            self._robot, self._tcp, xyz.tolist(), DOWN_QUATERNION, currentPositions=seed.tolist(),
            maxNumIterations=self.iterations,
            residualThreshold=self.residual, jointDamping=[self.damping] * len(self._joints),
            physicsClientId=self._cid), dtype=np.float64)
        q = self._into_limits(q)
        self._set(q)
        s = p.getLinkState(self._robot, self._tcp, computeForwardKinematics=True, physicsClientId=self._cid)
        self.last_error = float(np.linalg.norm(np.array(s[4]) - xyz))
        return q

    def _into_limits(self, q: np.ndarray) -> np.ndarray:
        q = q.copy()
        for i in _WRAPPABLE:
            while q[i] > self.upper[i]:
                q[i] -= 2 * math.pi
            while q[i] < self.lower[i]:
                q[i] += 2 * math.pi
        return np.clip(q, self.lower, self.upper)

    def _set(self, q: np.ndarray) -> None:
        p.resetJointStatesMultiDof(self._robot, self._joints, [[float(v)] for v in q], physicsClientId=self._cid)

    # The checks run at every 100 Hz tick: math.isfinite over a short list costs a tenth of np.isfinite + np.all.
    def _check_q(self, q: np.ndarray) -> np.ndarray:
        a = np.asarray(q, dtype=np.float64).reshape(-1)
        if a.shape != (6,) or not all(map(math.isfinite, a.tolist())):
            raise IKError(f"joint positions must be 6 finite values, got {q!r}")
        return a

    def _check_target(self, target: np.ndarray) -> np.ndarray:
        a = np.asarray(target, dtype=np.float64).reshape(-1)
        if a.shape == (2,):
            a = np.array([a[0], a[1], self.z])
        if a.shape != (3,) or not all(map(math.isfinite, a.tolist())):
            raise IKError(f"IK target must be a finite xy (2,) or xyz (3,), got {target!r}")
        return a


class _PlanarXArm6:
    """Closed-form IK and FK of the xArm6 + tool with the tool pointing down (see the module docstring).

    Works on Python floats: a solve runs at every 100 Hz tick, where numpy calls on scalars cost ~20x more.
    Plane coordinates are complex numbers w = r + i h (r: horizontal distance from the base axis along the
    direction joint 1 points, h: height). In that plane a vector (a, b) of the link 2/3/5 frames is conj(a + ib)
    rotated by -(sum of the joint angles so far).
    """

    def __init__(self, flange_to_tcp: float) -> None:
        o = xarm6_joint_origins()
        half_pi = math.pi / 2
        expected_rpy = {"joint1": 0.0, "joint2": -half_pi, "joint3": 0.0, "joint4": -half_pi, "joint5": half_pi,
                        "joint6": -half_pi}
        for name, roll in expected_rpy.items():
            xyz, rpy = o[name]
            # Joint 1 sits on the base axis; every other offset lies in its link's x-y plane (the arm's plane).
            off_plane = xyz[:2] if name == "joint1" else xyz[2:]
            if abs(rpy[0] - roll) > 1e-4 or max(map(abs, (*rpy[1:], *off_plane))) > 1e-9:
                raise ValueError(f"xArm6 URDF joint {name} origin {xyz} rpy {rpy} does not have the structure the "
                                 f"analytic IK assumes; use XArmIK(method='pybullet')")
        self.d1 = o["joint1"][0][2]                            # shoulder (joint 2) height
        self.upper_arm = complex(o["joint3"][0][0], -o["joint3"][0][1])
        self.forearm = complex(o["joint4"][0][0], -o["joint4"][0][1])
        # Joint-4 centre -> TCP with the tool vertical: the link-6 offset, then down the tool axis.
        self.wrist_to_tcp = complex(o["joint6"][0][0], -o["joint6"][0][1]) - 1j * flange_to_tcp
        la, lb = abs(self.upper_arm), abs(self.forearm)
        self.lengths = (la, lb, la * la + lb * lb, 2.0 * la * lb)
        self.gamma = cmath.phase(self.upper_arm.conjugate() * self.forearm)

    @staticmethod
    def _nearest(angle: float, ref: float | None, lo: float, hi: float) -> float | None:
        """angle + 2 pi k inside [lo, hi], the one nearest `ref` (else the one nearest `angle`); None if none fits."""
        centre = angle if ref is None else ref
        k = round((centre - angle) / _TWO_PI)
        for cand in (angle + k * _TWO_PI, angle + (k - 1) * _TWO_PI, angle + (k + 1) * _TWO_PI):
            if lo - 1e-12 <= cand <= hi + 1e-12:
                return cand
        return None

    def solve(self, x: float, y: float, z: float, ref: list[float] | None, lo: list[float],
              hi: list[float]) -> list[float] | None:
        """Joints [q1..q6] (rad) putting the TCP at (x, y, z) m, tool down; None if out of reach or limits."""
        r = math.hypot(x, y)
        if r < 1e-9:
            return None
        wrist = complex(r, z - self.d1) - self.wrist_to_tcp      # joint-4 centre relative to joint 2
        la, lb, sq, prod = self.lengths
        c = (abs(wrist) ** 2 - sq) / prod
        if not -1.0 <= c <= 1.0:
            return None
        q3 = self.gamma + math.acos(c)                               # elbow up
        q3 = (q3 + math.pi) % _TWO_PI - math.pi
        q2 = cmath.phase(self.upper_arm + cmath.exp(-1j * q3) * self.forearm) - cmath.phase(wrist)
        q2 = (q2 + math.pi) % _TWO_PI - math.pi
        q5 = -(q2 + q3)
        q1 = self._nearest(math.atan2(y, x), ref[0] if ref else None, lo[0], hi[0])
        if q1 is None:
            return None
        q6 = self._nearest(q1 + math.pi, ref[5] if ref else None, lo[5], hi[5])
        q = [q1, q2, q3, 0.0, q5, q6]
        if q6 is None or not all(lo[i] <= q[i] <= hi[i] for i in (1, 2, 4)):
            return None
        return q

    def tcp(self, q: list[float]) -> tuple[float, float, float]:
        """TCP position (m) for joints q with joint 4 at 0 (the planar model's FK)."""
        q1, q2, q3, _, q5, _ = q
        w = (1j * self.d1 + cmath.exp(-1j * q2) * (self.upper_arm + cmath.exp(-1j * q3) * self.forearm)
             + cmath.exp(-1j * (q2 + q3 + q5)) * self.wrist_to_tcp)
        return w.real * math.cos(q1), w.real * math.sin(q1), w.imag

    def error(self, q: list[float], x: float, y: float, z: float) -> float:
        """Distance (m) from the planar model's TCP for q to (x, y, z)."""
        px, py, pz = self.tcp(q)
        return math.sqrt((px - x) ** 2 + (py - y) ** 2 + (pz - z) ** 2)

    def solve_many(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, ref: np.ndarray | None, lo: np.ndarray,
                   hi: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """`solve` for N targets (N,) each in turn, each solution the reference of the next: joints (N, 6) and
        planar-model FK errors (N,); None unless every target is in reach and within the limits, and the
        free joints' turn count is the same for all (the per-target solver handles the rest)."""
        r = np.hypot(x, y)
        if float(r.min()) < 1e-9:
            return None
        wrist = (r + 1j * (z - self.d1)) - self.wrist_to_tcp
        _, _, sq, prod = self.lengths
        c = (np.abs(wrist) ** 2 - sq) / prod
        if float(np.abs(c).max()) > 1.0:
            return None
        q3 = (self.gamma + np.arccos(c) + math.pi) % _TWO_PI - math.pi
        elbow = np.angle(self.upper_arm + np.exp(-1j * q3) * self.forearm)
        q2 = (elbow - np.angle(wrist) + math.pi) % _TWO_PI - math.pi
        q5 = -(q2 + q3)
        q1 = np.arctan2(y, x)
        if len(q1) > 1 and float(np.abs(np.diff(q1)).max()) >= math.pi:
            return None
        # The representative (+- 2 pi) nearest the reference, as `solve`; consecutive targets keep it.
        k1 = 0.0 if ref is None else round((float(ref[0]) - float(q1[0])) / _TWO_PI)
        q1 = q1 + k1 * _TWO_PI
        q6 = q1 + math.pi
        k6 = 0.0 if ref is None else round((float(ref[5]) - float(q6[0])) / _TWO_PI)
        q6 = q6 + k6 * _TWO_PI
        q = np.stack([q1, q2, q3, np.zeros_like(q1), q5, q6], axis=1)
        if not (np.all(q >= lo - 1e-12) and np.all(q <= hi + 1e-12)):
            return None
        w = (1j * self.d1 + np.exp(-1j * q2) * (self.upper_arm + np.exp(-1j * q3) * self.forearm)
             + np.exp(-1j * (q2 + q3 + q5)) * self.wrist_to_tcp)
        err = np.sqrt((w.real * np.cos(q1) - x) ** 2 + (w.real * np.sin(q1) - y) ** 2 + (w.imag - z) ** 2)
        return q, err
