"""Inverse and forward kinematics of the xArm6 with the cell's tool, in a private kinematics-only PyBullet client.

The effector points straight down (tool axis = world -z). `XArmIK.solve` warm-starts from its previous
solution (a streaming 100 Hz command moves a few mm per call), so the usual solve is one
`calculateInverseKinematics` call that stops at the residual threshold; a cold start seeds the arm turned
toward the target. A small joint damping (1e-3 instead of PyBullet's 0.1 default) is what makes the solver
converge to sub-mm residuals across the whole reachable workspace.
"""

from __future__ import annotations

import math

import numpy as np
import pybullet as p

from irvs_ros.control.xarm_model import JOINT_NAMES, TCP_LINK, ToolGeometry, xarm6_with_tool_urdf

# Tool axis pointing down: rotation by pi about the base y axis (x, y, z, w).
DOWN_QUATERNION: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 0.0)
# Joints that turn freely (+-2 pi): a solution outside the limits may be wrapped by 2 pi.
_WRAPPABLE = (0, 3, 5)


class IKError(ValueError):
    """Bad input to the IK (wrong shape, non-finite target or joints)."""


class XArmIK:
    """IK/FK for the TCP of the xArm6 + tool. Joint vectors are (6,) radians in JOINT_NAMES order; positions in m.

    Holds its own DIRECT PyBullet client (kinematics only: no simulation steps); call `close()` or use as a
    context manager to free it.
    """

    def __init__(self, tool: ToolGeometry | None = None, z: float = 0.06, *, iterations: int = 20,
                 damping: float = 1e-3, residual: float = 1e-5) -> None:
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
        self._last: np.ndarray | None = None
        self.last_error = 0.0
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

        Seeds from `q_seed`, else the previous solution, else an arm turned toward the target. The result is
        inside the joint limits; `last_error` holds its FK distance to the target (m).
        """
        xyz = self._check_target(target)
        seed = q_seed if q_seed is not None else self._last
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
