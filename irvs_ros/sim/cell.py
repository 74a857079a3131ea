"""The simulated xArm6 pushing cell: table, arm with a cylindrical tool pointing down, one 0.04 m block.

Control is the robot's: a 5 Hz absolute TCP setpoint goes through `control` (envelope, 5 Hz -> 100 Hz
interpolation, IK in its own kinematics-only client) and the resulting joint positions drive the simulated
joints by position control at 100 Hz. Physics runs at `physics_hz` (default 240 Hz, IBC's sim rate; any rate of
at least 240 Hz with a whole number of physics steps per 5 Hz policy period): the 2.4 physics steps per tick are
spread evenly, 2 or 3 per tick (`CellConfig.tick_substeps`).

Frame: the arm's base frame; the table top is z = 0; the TCP height is fixed at `EnvelopeConfig.z`.
Only the tool collides, with the block and the task's bodies (fixture): the arm's other links are filtered out
of collision detection (the arm moves in a plane well above the board), and so is the tool-table pair (the
tool's tip rides 0.01 m above the table; no contact between them can occur).

Simulation settings, chosen for throughput (bench/results/cell.md; `CellConfig.legacy()` is the configuration
before them, for comparisons):
- The arm is loaded once per Cell from a URDF with its fixed links folded in (no world link; tool and TCP part
  of link 6; control/xarm_model.py): three fewer links for the articulated-body algorithm. A reset removes and
  re-creates table, block and task bodies (cheap: their shapes are made once) and puts the arm back at rest by
  resetting its joints. Re-creating every body the tool can touch drops all contact caches, and creating them
  in the same order every time gives the solver the same ordering, so a seeded episode does not depend on the
  episodes before it (tested) - what rebuilding the whole world did, at ~50 ms a reset (`rebuild_on_reset`);
  PyBullet's saveState/restoreState would keep contact warm starts.
- At most 10 constraint-solver iterations per physics step (PyBullet's default 50). In contact the solver
  used all 50 without converging (a 0.01 kg block between a position-controlled arm and the table); with
  contacts warm-started from step to step, 10 give the same pushing behaviour: the same tracking error
  (0.64 mm mean), the same sliding distance of a launched block (8.7 mm), the same block motion under a
  steady push (within the spread between 50 and 200 iterations), and the same oracle success rates.
- The block is a maximal-coordinates rigid body (PyBullet's default makes it a one-link multibody): its
  table contacts use the plain rigid-body solver rows instead of multibody cone-friction rows.
- The tool's collision shape is an implicit (round) cylinder, as the PVC pipe is, rather than PyBullet's
  default polygonal hull of the URDF cylinder: cheaper contact queries with the block and fixture.
- IK is the closed-form solver of control/ik.py (the same joints as PyBullet's iterative one to ~1e-5 rad),
  solved for the 20 commands of a 5 Hz step in one vectorized pass (the commands do not depend on the state).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pybullet as p

from irvs_ros.control.envelope import EnvelopeConfig, FilterResult
from irvs_ros.control.ik import IK_METHODS, XArmIK
from irvs_ros.control.interpolation import Interpolator
from irvs_ros.control.xarm_model import JOINT_NAMES, TCP_LINK, TOOL_LINK, ToolGeometry, xarm6_with_tool_urdf

_MERGED_TOOL_LINK = "link6"   # the link the tool and TCP are part of in the merged URDF


class CellError(ValueError):
    """Invalid cell configuration or input."""


@dataclass(frozen=True)
class CellConfig:
    """Physical parameters of the cell and how it is simulated. SI units (m, kg, s, Hz)."""

    tool: ToolGeometry = field(default_factory=ToolGeometry)
    envelope: EnvelopeConfig = field(default_factory=EnvelopeConfig)
    physics_hz: float = 240.0
    block_size: float = 0.04
    block_mass: float = 0.01
    block_friction: float = 1.0
    table_friction: float = 0.5
    tool_friction: float = 0.5
    table_size: tuple[float, float] = (0.7, 1.2)      # x, y extent of the board
    table_center: tuple[float, float] = (0.425, 0.0)
    joint_position_gain: float = 0.3
    start_xy: tuple[float, float] = (0.3, -0.4)
    # Simulation settings (not physical parameters): see the module docstring.
    solver_iterations: int = 10                       # PyBullet's default: 50
    solver_residual_threshold: float = 1e-7           # PyBullet's default
    merge_fixed_links: bool = True
    rebuild_on_reset: bool = False
    ik_method: str = "analytic"
    block_maximal_coordinates: bool = True
    tool_table_collision: bool = False
    implicit_cylinder: bool = True

    def __post_init__(self) -> None:
        ticks = self.envelope.tick_rate / self.envelope.policy_rate
        if abs(ticks - round(ticks)) > 1e-9:
            raise CellError(f"tick rate {self.envelope.tick_rate} must be a multiple of the policy rate "
                            f"{self.envelope.policy_rate}")
        ratio = self.physics_hz / self.envelope.policy_rate
        if self.physics_hz < 240 or abs(ratio - round(ratio)) > 1e-9:
            raise CellError(f"physics_hz must be >= 240 and a multiple of the {self.envelope.policy_rate} Hz policy "
                            f"rate, got {self.physics_hz}")
        if not (self.block_size > 0 and self.block_mass > 0):
            raise CellError(f"block needs size > 0 and mass > 0, got {self.block_size}, {self.block_mass}")
        if self.solver_iterations < 1 or not (self.solver_residual_threshold >= 0):
            raise CellError(f"solver needs iterations >= 1 and a residual threshold >= 0, got "
                            f"{self.solver_iterations}, {self.solver_residual_threshold}")
        if self.ik_method not in IK_METHODS:
            raise CellError(f"ik_method must be one of {IK_METHODS}, got {self.ik_method!r}")

    @classmethod
    def legacy(cls, **overrides: object) -> CellConfig:
        """The simulation settings before the throughput work (world rebuilt at every reset, unmerged arm,
        PyBullet's iterative IK and solver defaults, multibody block, tool-table pair checked): for before/after
        comparisons. Same physical parameters; physics at 300 Hz (3 steps per tick) as it was then."""
        settings = {"physics_hz": 300.0, "solver_iterations": 50, "solver_residual_threshold": 1e-7,
                    "merge_fixed_links": False, "rebuild_on_reset": True, "ik_method": "pybullet",
                    "block_maximal_coordinates": False, "tool_table_collision": True, "implicit_cylinder": False}
        return replace(cls(), **{**settings, **overrides})

    @property
    def tick_substeps(self) -> tuple[int, ...]:
        """Physics steps of each 100 Hz tick of one policy period (ticks_per_step,), spread evenly: (3,) * 20 at
        300 Hz; at 240 Hz 2 or 3 (48 in all), tick k ending at the physics step floor((k + 1) * 2.4)."""
        per_tick = self.physics_hz / self.envelope.tick_rate
        ends = [math.floor(k * per_tick + 1e-9) for k in range(self.ticks_per_step + 1)]
        return tuple(b - a for a, b in zip(ends[:-1], ends[1:], strict=True))

    @property
    def ticks_per_step(self) -> int:
        """100 Hz ticks per 5 Hz policy step."""
        return int(round(self.envelope.tick_rate / self.envelope.policy_rate))


def yaw_of(quat: tuple[float, float, float, float] | np.ndarray) -> float:
    """Rotation about world z (rad, in (-pi, pi]) of a quaternion x, y, z, w (assumed nearly upright)."""
    x, y, z, w = quat
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def quat_of_yaw(yaw: float) -> tuple[float, float, float, float]:
    return (0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0))


class Cell:
    """A PyBullet world with the arm, table and block, stepped one 5 Hz policy period at a time.

    `client` is the PyBullet client id (DIRECT unless gui=True). Objects that tasks add (target markers,
    fixtures) are created by callables in `on_build` (called with the client id at every reset, after the
    table and block are re-created), so they exist again after each reset; all bodies but the arm are removed
    at a reset.
    """

    def __init__(self, config: CellConfig | None = None, *, gui: bool = False) -> None:
        self.config = c = config or CellConfig()
        self.on_build: list[Callable[[int], None]] = []
        self.client = p.connect(p.GUI if gui else p.DIRECT)
        self._scene_bodies: list[int] = []
        try:
            self._load_world()
            self._build_scene()
        except Exception:
            p.disconnect(self.client)
            raise
        self.ik = XArmIK(c.tool, c.envelope.z, method=c.ik_method)
        self.interpolator = Interpolator(c.envelope, np.array(c.start_xy))
        self.time = 0.0

    # ------------------------------------------------------------------ construction
    def _load_world(self) -> None:
        """Empty world with the arm; the shapes of table and block (made once, used by every reset)."""
        c, cid = self.config, self.client
        p.resetSimulation(physicsClientId=cid)
        self._scene_bodies = []
        self._shapes: dict[str, object] = {}
        p.setGravity(0, 0, -9.81, physicsClientId=cid)
        p.setPhysicsEngineParameter(fixedTimeStep=1.0 / c.physics_hz, deterministicOverlappingPairs=1,
                                    numSolverIterations=c.solver_iterations,
                                    solverResidualThreshold=c.solver_residual_threshold, physicsClientId=cid)
        # The arm links keep their collision shapes, filtered out below: PyBullet steps this arm about 20% slower
        # when its links have no collision shapes at all (measured; links without a collider seem to leave the
        # joint motors out of the simulation islands).
        urdf = xarm6_with_tool_urdf(c.tool, merged=c.merge_fixed_links)
        flags = p.URDF_USE_IMPLICIT_CYLINDER if c.implicit_cylinder else 0
        self.robot = p.loadURDF(str(urdf), useFixedBase=True, flags=flags, physicsClientId=cid)
        by_joint, by_link = {}, {}
        for i in range(p.getNumJoints(self.robot, physicsClientId=cid)):
            info = p.getJointInfo(self.robot, i, physicsClientId=cid)
            by_joint[info[1].decode()] = i
            by_link[info[12].decode()] = i
        self.joints = [by_joint[n] for n in JOINT_NAMES]
        if c.merge_fixed_links:
            # Tool and TCP are part of link 6; the TCP is flange_to_tcp along link 6's z axis (the tool axis).
            self.tool_link = self.tcp_link = by_link[_MERGED_TOOL_LINK]
            self._tcp_offset = c.tool.flange_to_tcp
        else:
            self.tool_link, self.tcp_link = by_link[TOOL_LINK], by_link[TCP_LINK]
            self._tcp_offset = 0.0
        self.joint_forces = [p.getJointInfo(self.robot, j, physicsClientId=cid)[10] for j in self.joints]
        self._gains = [c.joint_position_gain] * len(self.joints)
        for link in [-1, *range(p.getNumJoints(self.robot, physicsClientId=cid))]:
            if link != self.tool_link:
                p.setCollisionFilterGroupMask(self.robot, link, 0, 0, physicsClientId=cid)
        p.changeDynamics(self.robot, self.tool_link, lateralFriction=c.tool_friction, physicsClientId=cid)

        half = [c.table_size[0] / 2, c.table_size[1] / 2, 0.025]
        self._table_shapes = (p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=cid),
                              p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=[0.76, 0.6, 0.42, 1],
                                                  physicsClientId=cid))
        s = c.block_size / 2
        self._block_shapes = (p.createCollisionShape(p.GEOM_BOX, halfExtents=[s, s, s], physicsClientId=cid),
                              p.createVisualShape(p.GEOM_BOX, halfExtents=[s, s, s], rgbaColor=[0.15, 0.3, 0.85, 1],
                                                  physicsClientId=cid))

    def _build_scene(self) -> None:
        """(Re-)create every body but the arm: table, block, then the task's (`on_build`), always in that order."""
        c, cid = self.config, self.client
        # Newest first, so the arm's collision objects keep their places in Bullet's arrays.
        for body in reversed(self._scene_bodies):
            p.removeBody(body, physicsClientId=cid)
        self._scene_bodies = []
        before = self._body_ids()
        self.table = p.createMultiBody(0, *self._table_shapes, [c.table_center[0], c.table_center[1], -0.025],
                                       physicsClientId=cid)
        p.changeDynamics(self.table, -1, lateralFriction=c.table_friction, physicsClientId=cid)
        if not c.tool_table_collision:
            p.setCollisionFilterPair(self.robot, self.table, self.tool_link, -1, 0, physicsClientId=cid)
        s = c.block_size / 2
        self.block = p.createMultiBody(c.block_mass, *self._block_shapes, [0.4, -0.2, s],
                                       useMaximalCoordinates=c.block_maximal_coordinates, physicsClientId=cid)
        p.changeDynamics(self.block, -1, lateralFriction=c.block_friction, physicsClientId=cid)
        for build in self.on_build:
            build(cid)
        created = [b for b in self._body_ids() if b not in before]
        self._scene_bodies = [self.table, self.block] + [b for b in created if b not in (self.table, self.block)]

    def shapes(self, key: str, make: Callable[[int], object]) -> object:
        """`make(client)` (collision/visual shape ids of a task object) once per world: re-creating a body at every
        reset reuses them instead of adding new shapes to PyBullet each episode."""
        if key not in self._shapes:
            self._shapes[key] = make(self.client)
        return self._shapes[key]

    def _body_ids(self) -> list[int]:
        cid = self.client
        return [p.getBodyUniqueId(i, physicsClientId=cid) for i in range(p.getNumBodies(physicsClientId=cid))]

    # ------------------------------------------------------------------ episode control
    def reset(self, effector_xy: np.ndarray, block_xy: np.ndarray, block_yaw: float) -> None:
        """Arm at rest with the TCP at effector_xy (clamped into the envelope); block on the table at the pose."""
        cid = self.client
        if self.config.rebuild_on_reset:
            self._load_world()
        self._build_scene()
        self.time = 0.0
        self.ik.reset()
        self.interpolator.reset(np.asarray(effector_xy, dtype=np.float64), 0.0)
        start = self.interpolator.command
        q = self.ik.solve(start)
        p.resetJointStatesMultiDof(self.robot, self.joints, [[float(v)] for v in q], [[0.0]] * 6,
                                   physicsClientId=cid)
        self.drive(q)
        self.set_block_pose(block_xy, block_yaw)

    def set_block_pose(self, xy: np.ndarray, yaw: float) -> None:
        s = self.config.block_size / 2
        p.resetBasePositionAndOrientation(self.block, [float(xy[0]), float(xy[1]), s], quat_of_yaw(float(yaw)),
                                          physicsClientId=self.client)
        p.resetBaseVelocity(self.block, [0, 0, 0], [0, 0, 0], physicsClientId=self.client)

    def step(self, setpoint_xy: np.ndarray) -> FilterResult:
        """Send one absolute TCP setpoint and simulate one policy period (20 ticks at 100 Hz)."""
        res = self.interpolator.set_setpoint(setpoint_xy, self.time)
        c, cid = self.config, self.client
        dt = c.envelope.tick_period
        # The commands and their IK do not depend on the simulated state: work out the period's 20 ticks first
        # (one vectorized IK pass), then drive the joints with them tick by tick.
        commands = []
        for _ in range(c.ticks_per_step):
            self.time += dt
            commands.append(self.interpolator.tick(self.time))
        step_sim = p.stepSimulation
        for q, substeps in zip(self.ik.solve_path(np.array(commands)), c.tick_substeps, strict=True):
            self.drive(q)
            for _ in range(substeps):
                step_sim(physicsClientId=cid)
        return res

    def drive(self, q: np.ndarray) -> None:
        """Position-control the joints toward q (6,) rad until the next call."""
        p.setJointMotorControlArray(self.robot, self.joints, p.POSITION_CONTROL, targetPositions=q.tolist(),
                                    forces=self.joint_forces, positionGains=self._gains, physicsClientId=self.client)

    # ------------------------------------------------------------------ state
    @property
    def setpoint(self) -> np.ndarray:
        """The last accepted (envelope-filtered) setpoint xy (2,)."""
        return self.interpolator.target

    def effector_xyz(self) -> np.ndarray:
        """Measured TCP position (3,) of the simulated arm."""
        s = p.getLinkState(self.robot, self.tcp_link, computeForwardKinematics=True, physicsClientId=self.client)
        (px, py, pz), (x, y, z, w) = s[4], s[5]
        d = self._tcp_offset
        # Link frame origin + d * (the link's z axis in the world: third column of its rotation matrix).
        return np.array([px + d * 2.0 * (x * z + w * y), py + d * 2.0 * (y * z - w * x),
                         pz + d * (1.0 - 2.0 * (x * x + y * y))])

    def block_pose(self) -> np.ndarray:
        """Block x, y (m) and yaw (rad, (-pi, pi]) as (3,)."""
        pos, quat = p.getBasePositionAndOrientation(self.block, physicsClientId=self.client)
        return np.array([pos[0], pos[1], yaw_of(quat)])

    def block_z(self) -> float:
        return float(p.getBasePositionAndOrientation(self.block, physicsClientId=self.client)[0][2])

    def joint_positions(self) -> np.ndarray:
        states = p.getJointStates(self.robot, self.joints, physicsClientId=self.client)
        return np.array([s[0] for s in states])

    def close(self) -> None:
        self.ik.close()
        if self.client is not None and p.isConnected(self.client):
            p.disconnect(self.client)
        self.client = None
