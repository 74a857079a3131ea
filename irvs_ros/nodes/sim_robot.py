"""The simulated cell as a robot driven by joint position commands, one 100 Hz tick at a time (no ROS).

`sim.Cell.step` runs its own interpolator and IK from 5 Hz setpoints; on the ROS graph those live in the
interpolator node, so the sim only has to follow joint commands. `SimRobot` wraps a push task environment
(`sim.registry.make_env`) and drives the cell's joints through its public handles (`robot`, `joints`,
`joint_forces`, `config`) with the same position-control law as `Cell`, without touching the cell's code.
It owns a camera rendering the task's world (`sim.camera.Camera`), full native field of view by default.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pybullet as p

from irvs_ros.sim.camera import Camera
from irvs_ros.sim.push_tasks import STATE_KEYS, TASKS, PushTaskEnv
from irvs_ros.sim.registry import make_env


class SimRobotError(ValueError):
    """Invalid SimRobot configuration or command."""


class SimRobot:
    """Push task cell stepped per control tick. Joint vectors (6,) rad in xarm_model.JOINT_NAMES order.

    image_size: (width, height) of `render()`; a 16:9 size shows the camera's whole native 640x360 view.
    """

    def __init__(self, task: str = "push", image_size: tuple[int, int] = (320, 180), *,
                 camera_perturbation: bool = False) -> None:
        if task not in TASKS:
            raise SimRobotError(f"unknown task {task!r}; expected one of {list(TASKS)}")
        self.task = task
        self.env: PushTaskEnv = make_env(task)
        self.cell = self.env.cell
        try:
            self.camera = Camera.from_config(client=self.cell.client, output_size=tuple(image_size),
                                             perturb=camera_perturbation, supersample=1)
        except ValueError as e:
            self.env.close()
            raise SimRobotError(f"camera: {e}") from e
        c = self.cell.config
        self.tick_period = c.envelope.tick_period
        self.tick_substeps = c.tick_substeps  # physics steps per tick, repeating every policy period
        self._tick = 0
        self.seed: int | None = None
        self.reset(0)

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int) -> dict[str, Any]:
        """New episode drawn with `seed` (the same seed gives the same scene); the arm holds its start pose."""
        self.env.reset(seed=int(seed))
        self.camera.resample(self.env.np_random)
        self.seed = int(seed)
        self._target = self.joint_positions()
        self._tick = 0
        return self.task_state()

    # ------------------------------------------------------------------ control
    def command(self, q: np.ndarray) -> None:
        """Set the joint position target (6,) rad, clipped into the joint limits; NaN/inf raise SimRobotError."""
        a = np.asarray(q, dtype=np.float64).reshape(-1)
        if a.shape != (6,) or not np.all(np.isfinite(a)):
            raise SimRobotError(f"joint command must be 6 finite positions (rad), got {q!r}")
        ik = self.cell.ik
        self._target = np.clip(a, ik.lower, ik.upper)

    def step_tick(self) -> None:
        """Drive the joints toward the target and simulate one control tick (tick_period s)."""
        cell, cid = self.cell, self.cell.client
        cell.drive(self._target)
        for _ in range(self.tick_substeps[self._tick % len(self.tick_substeps)]):
            p.stepSimulation(physicsClientId=cid)
        self._tick += 1

    # ------------------------------------------------------------------ state
    def joint_positions(self) -> np.ndarray:
        return self.cell.joint_positions()

    def joint_velocities(self) -> np.ndarray:
        states = p.getJointStates(self.cell.robot, self.cell.joints, physicsClientId=self.cell.client)
        return np.array([s[1] for s in states])

    def render(self) -> np.ndarray:
        """Camera image (H, W, 3) uint8 RGB."""
        return self.camera.render()

    def task_state(self) -> dict[str, Any]:
        """JSON-ready task state: success, reward_level, details, and the state vector by name (push_tasks.STATE_KEYS;
        setpoint_xy is the measured effector position, since setpoints live in the interpolator node)."""
        ok, level, details = self.env.evaluate()
        sd = self.env.state_dict()
        sd["setpoint_xy"] = sd["effector_xy"]
        state = {k: [float(v) for v in np.asarray(sd[k]).reshape(-1)] for k, _ in STATE_KEYS}
        return {"task": self.task, "seed": self.seed, "success": bool(ok), "reward_level": float(level),
                **{k: float(v) for k, v in details.items() if math.isfinite(v)}, "state": state}

    def close(self) -> None:
        self.env.close()
