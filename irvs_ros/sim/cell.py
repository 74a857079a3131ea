"""The simulated xArm6 pushing cell: table, arm with a cylindrical tool pointing down, one 0.04 m block.

Control is the robot's: a 5 Hz absolute TCP setpoint goes through `control` (envelope, 5 Hz -> 100 Hz
interpolation, IK in its own kinematics-only client) and the resulting joint positions drive the simulated
joints by position control at 100 Hz. Physics runs at `physics_hz` (default 300 Hz: an integer number of
physics steps per 100 Hz tick, and finer than the 240 Hz of IBC's sim).

Every reset rebuilds the world from scratch (about 50 ms): PyBullet's saveState/restoreState leaves
solver state behind (joint-motor warm starts), which made a seeded episode depend on the episodes before it.

Frame: the arm's base frame; the table top is z = 0; the TCP height is fixed at `EnvelopeConfig.z`.
The arm's links other than the tool have no collisions (the arm moves in a plane well above the board;
only the tool touches the block), which also keeps the physics cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pybullet as p

from irvs_ros.control.envelope import EnvelopeConfig, FilterResult
from irvs_ros.control.ik import XArmIK
from irvs_ros.control.interpolation import Interpolator
from irvs_ros.control.xarm_model import JOINT_NAMES, TCP_LINK, TOOL_LINK, ToolGeometry, xarm6_with_tool_urdf


class CellError(ValueError):
    """Invalid cell configuration or input."""


@dataclass(frozen=True)
class CellConfig:
    """Physical parameters of the cell. SI units (m, kg, s, Hz)."""

    tool: ToolGeometry = field(default_factory=ToolGeometry)
    envelope: EnvelopeConfig = field(default_factory=EnvelopeConfig)
    physics_hz: float = 300.0
    block_size: float = 0.04
    block_mass: float = 0.01
    block_friction: float = 1.0
    table_friction: float = 0.5
    tool_friction: float = 0.5
    table_size: tuple[float, float] = (0.7, 1.2)      # x, y extent of the board
    table_center: tuple[float, float] = (0.425, 0.0)
    joint_position_gain: float = 0.3
    start_xy: tuple[float, float] = (0.3, -0.4)

    def __post_init__(self) -> None:
        ratio = self.physics_hz / self.envelope.tick_rate
        if self.physics_hz < 240 or abs(ratio - round(ratio)) > 1e-9:
            raise CellError(f"physics_hz must be >= 240 and a multiple of the {self.envelope.tick_rate} Hz tick rate, "
                            f"got {self.physics_hz}")
        ticks = self.envelope.tick_rate / self.envelope.policy_rate
        if abs(ticks - round(ticks)) > 1e-9:
            raise CellError(f"tick rate {self.envelope.tick_rate} must be a multiple of the policy rate "
                            f"{self.envelope.policy_rate}")
        if not (self.block_size > 0 and self.block_mass > 0):
            raise CellError(f"block needs size > 0 and mass > 0, got {self.block_size}, {self.block_mass}")

    @property
    def substeps(self) -> int:
        """Physics steps per 100 Hz tick."""
        return int(round(self.physics_hz / self.envelope.tick_rate))

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
    fixtures) are created by callables in `on_build` (called with the client id after every rebuild), so
    they exist again after each reset.
    """

    def __init__(self, config: CellConfig | None = None, *, gui: bool = False) -> None:
        self.config = c = config or CellConfig()
        self.on_build: list[Callable[[int], None]] = []
        self.client = p.connect(p.GUI if gui else p.DIRECT)
        try:
            self._build()
        except Exception:
            p.disconnect(self.client)
            raise
        self.ik = XArmIK(c.tool, c.envelope.z)
        self.interpolator = Interpolator(c.envelope, np.array(c.start_xy))
        self.time = 0.0

    # ------------------------------------------------------------------ construction
    def _build(self) -> None:
        c, cid = self.config, self.client
        p.resetSimulation(physicsClientId=cid)
        p.setGravity(0, 0, -9.81, physicsClientId=cid)
        p.setPhysicsEngineParameter(fixedTimeStep=1.0 / c.physics_hz, deterministicOverlappingPairs=1,
                                    physicsClientId=cid)
        half = [c.table_size[0] / 2, c.table_size[1] / 2, 0.025]
        table_col = p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=cid)
        table_vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=[0.76, 0.6, 0.42, 1],
                                        physicsClientId=cid)
        self.table = p.createMultiBody(0, table_col, table_vis, [c.table_center[0], c.table_center[1], -0.025],
                                       physicsClientId=cid)
        p.changeDynamics(self.table, -1, lateralFriction=c.table_friction, physicsClientId=cid)

        self.robot = p.loadURDF(str(xarm6_with_tool_urdf(c.tool)), useFixedBase=True, physicsClientId=cid)
        by_joint, by_link = {}, {}
        for i in range(p.getNumJoints(self.robot, physicsClientId=cid)):
            info = p.getJointInfo(self.robot, i, physicsClientId=cid)
            by_joint[info[1].decode()] = i
            by_link[info[12].decode()] = i
        self.joints = [by_joint[n] for n in JOINT_NAMES]
        self.tcp_link = by_link[TCP_LINK]
        self.tool_link = by_link[TOOL_LINK]
        self.joint_forces = [p.getJointInfo(self.robot, j, physicsClientId=cid)[10] for j in self.joints]
        for link in [-1, *range(p.getNumJoints(self.robot, physicsClientId=cid))]:
            if link != self.tool_link:
                p.setCollisionFilterGroupMask(self.robot, link, 0, 0, physicsClientId=cid)
        p.changeDynamics(self.robot, self.tool_link, lateralFriction=c.tool_friction, physicsClientId=cid)

        s = c.block_size / 2
        block_col = p.createCollisionShape(p.GEOM_BOX, halfExtents=[s, s, s], physicsClientId=cid)
        block_vis = p.createVisualShape(p.GEOM_BOX, halfExtents=[s, s, s], rgbaColor=[0.15, 0.3, 0.85, 1],
                                        physicsClientId=cid)
        self.block = p.createMultiBody(c.block_mass, block_col, block_vis, [0.4, -0.2, s], physicsClientId=cid)
        p.changeDynamics(self.block, -1, lateralFriction=c.block_friction, physicsClientId=cid)

    # ------------------------------------------------------------------ episode control
    def reset(self, effector_xy: np.ndarray, block_xy: np.ndarray, block_yaw: float) -> None:
        """Arm at rest with the TCP at effector_xy (clamped into the envelope); block on the table at the pose."""
        cid = self.client
        self._build()
        for build in self.on_build:
            build(cid)
        self.time = 0.0
        self.ik.reset()
        self.interpolator.reset(np.asarray(effector_xy, dtype=np.float64), 0.0)
        start = self.interpolator.command
        q = self.ik.solve(start)
        p.resetJointStatesMultiDof(self.robot, self.joints, [[float(v)] for v in q], [[0.0]] * 6,
                                   physicsClientId=cid)
        self._drive(q)
        self.set_block_pose(block_xy, block_yaw)

    def set_block_pose(self, xy: np.ndarray, yaw: float) -> None:
        s = self.config.block_size / 2
        p.resetBasePositionAndOrientation(self.block, [float(xy[0]), float(xy[1]), s], quat_of_yaw(float(yaw)),
                                          physicsClientId=self.client)
        p.resetBaseVelocity(self.block, [0, 0, 0], [0, 0, 0], physicsClientId=self.client)

    def step(self, setpoint_xy: np.ndarray) -> FilterResult:
        """Send one absolute TCP setpoint and simulate one policy period (20 ticks at 100 Hz)."""
        res = self.interpolator.set_setpoint(setpoint_xy, self.time)
        c = self.config
        dt = c.envelope.tick_period
        for _ in range(c.ticks_per_step):
            self.time += dt
            cmd = self.interpolator.tick(self.time)
            self._drive(self.ik.solve(cmd))
            for _ in range(c.substeps):
                p.stepSimulation(physicsClientId=self.client)
        return res

    def _drive(self, q: np.ndarray) -> None:
        p.setJointMotorControlArray(self.robot, self.joints, p.POSITION_CONTROL, targetPositions=q.tolist(),
                                    forces=self.joint_forces,
                                    positionGains=[self.config.joint_position_gain] * len(self.joints),
                                    physicsClientId=self.client)

    # ------------------------------------------------------------------ state
    @property
    def setpoint(self) -> np.ndarray:
        """The last accepted (envelope-filtered) setpoint xy (2,)."""
        return self.interpolator.target

    def effector_xyz(self) -> np.ndarray:
        """Measured TCP position (3,) of the simulated arm."""
        s = p.getLinkState(self.robot, self.tcp_link, computeForwardKinematics=True, physicsClientId=self.client)
        return np.array(s[4])

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
