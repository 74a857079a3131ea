"""Gymnasium tasks in the simulated cell: "push" (IBC block pushing) and "push_insert" (IBC Insert-Blue).

Action: delta-xy (2,) of the TCP setpoint in metres per 5 Hz step, each axis in [-max_delta, max_delta]
(default 0.1, IBC's). NaN/inf actions are rejected by the envelope: the setpoint holds and info["rejected"]
is True. The new setpoint is the previous accepted setpoint plus the action, then envelope-filtered.

Observation: {"state": float32 (10,)} (+ {"image": uint8 (H, W, 3)} when `image=True`), state order
    STATE_KEYS = effector_xy (2, measured TCP), setpoint_xy (2, last accepted setpoint), block_xy (2),
                 block_yaw (1, rad in (-pi, pi]), goal_xy (2), goal_yaw (1, rad)
The goal is the target zone (push) or the fixture (push_insert: pocket centre, yaw = insertion direction,
i.e. the direction the block moves when it goes in). info["state_dict"] holds the same values by name.

push: block xy ~ (0.4, -0.2) + U(+-0.1, +-0.15), yaw ~ U(0, pi); target xy ~ (0.4, 0.2) + U(+-0.1, +-0.15),
    yaw ~ pi + U(+-pi/6) (IBC's ranges). Success: block centre within 0.02 m of the target centre; reward
    1.0 then (0 otherwise) and the episode terminates.
push_insert: same block range; fixture pocket centre ~ (0.4, 0.2) + U(+-0.08, +-0.08), insertion direction
    ~ pi/2 + U(+-pi/6) (mouth facing the block's side of the board). The pocket is (block + 2 mm) square:
    1 mm clearance per side, depth = block + 2 mm; 0.03 m high walls with 45-degree-free straight faces and
    short lead-in guides at the mouth. Inserted fraction f = area of the block's footprint inside the pocket
    rectangle / block footprint area. Full insertion: f >= 0.95 (reward 1.0, terminates); partial:
    f >= 0.25 (reward 0.5); else 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import pybullet as p
from gymnasium import spaces

from irvs_ros.sim.cell import Cell, CellConfig, quat_of_yaw

STATE_KEYS: tuple[tuple[str, int], ...] = (("effector_xy", 2), ("setpoint_xy", 2), ("block_xy", 2), ("block_yaw", 1),
                                           ("goal_xy", 2), ("goal_yaw", 1))
STATE_DIM = sum(n for _, n in STATE_KEYS)
TASKS = ("push", "push_insert")


@dataclass(frozen=True)
class TaskRanges:
    """Reset distributions: centre +- half-range, uniform. Lengths in m, angles in rad."""

    effector_start: tuple[float, float] = (0.3, -0.4)
    block_center: tuple[float, float] = (0.4, -0.2)
    block_half_range: tuple[float, float] = (0.1, 0.15)
    block_yaw_range: tuple[float, float] = (0.0, math.pi)
    target_center: tuple[float, float] = (0.4, 0.2)
    target_half_range: tuple[float, float] = (0.1, 0.15)
    target_yaw_range: tuple[float, float] = (math.pi - math.pi / 6, math.pi + math.pi / 6)
    fixture_center: tuple[float, float] = (0.4, 0.2)
    fixture_half_range: tuple[float, float] = (0.08, 0.08)
    fixture_yaw_range: tuple[float, float] = (math.pi / 2 - math.pi / 6, math.pi / 2 + math.pi / 6)
    min_block_goal_distance: float = 0.15


@dataclass(frozen=True)
class FixtureGeometry:
    """The insertion fixture around its pocket, in the fixture frame (x = insertion direction). Metres."""

    clearance: float = 0.001        # per side
    wall_thickness: float = 0.01
    wall_height: float = 0.03
    guide_length: float = 0.012     # lead-in guides at the mouth
    guide_angle: float = math.radians(35.0)
    full_fraction: float = 0.95
    partial_fraction: float = 0.25


@dataclass(frozen=True)
class TaskConfig:
    cell: CellConfig = field(default_factory=CellConfig)
    ranges: TaskRanges = field(default_factory=TaskRanges)
    fixture: FixtureGeometry = field(default_factory=FixtureGeometry)
    success_distance: float = 0.02
    max_delta: float = 0.1
    max_steps_push: int = 80
    max_steps_insert: int = 150
    # Camera draws table and goal once per episode and skips links out of view (sim/camera.py); the images are
    # the same either way (False: every body every frame, as before).
    camera_layers: bool = True


# ---------------------------------------------------------------------- geometry
def _square(xy: np.ndarray, yaw: float, size: float) -> np.ndarray:
    h = size / 2
    local = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    c, s = math.cos(yaw), math.sin(yaw)
    return local @ np.array([[c, s], [-s, c]]) + np.asarray(xy, dtype=np.float64)


def _clip_polygon(poly: np.ndarray, axis: int, bound: float, keep_below: bool) -> np.ndarray:
    """Sutherland-Hodgman clip of a convex polygon (K, 2) by one axis-aligned half-plane."""
    if len(poly) == 0:
        return poly
    out = []
    inside = (poly[:, axis] <= bound) if keep_below else (poly[:, axis] >= bound)
    for i in range(len(poly)):
        a, b = poly[i], poly[(i + 1) % len(poly)]
        ia, ib = inside[i], inside[(i + 1) % len(poly)]
        if ia:
            out.append(a)
        if ia != ib:
            t = (bound - a[axis]) / (b[axis] - a[axis])
            out.append(a + t * (b - a))
    return np.array(out) if out else np.zeros((0, 2))


def _area(poly: np.ndarray) -> float:
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def inserted_fraction(block_xy: np.ndarray, block_yaw: float, fixture_xy: np.ndarray, fixture_yaw: float,
                      block_size: float, pocket_width: float, pocket_depth: float) -> float:
    """Fraction (0..1) of the block's square footprint that lies inside the fixture's pocket rectangle."""
    dx, dy = float(block_xy[0]) - float(fixture_xy[0]), float(block_xy[1]) - float(fixture_xy[1])
    if math.hypot(dx, dy) > (block_size + math.hypot(pocket_width, pocket_depth)) * 0.7072:
        return 0.0   # circumscribed circles (radius < 0.7072 x side) apart: no overlap; most steps end here
    c, s = math.cos(fixture_yaw), math.sin(fixture_yaw)
    corners = _square(block_xy, block_yaw, block_size) - np.asarray(fixture_xy, dtype=np.float64)
    local = corners @ np.array([[c, -s], [s, c]])   # world -> fixture frame
    poly = local
    for axis, bound, below in ((0, pocket_depth / 2, True), (0, -pocket_depth / 2, False),
                               (1, pocket_width / 2, True), (1, -pocket_width / 2, False)):
        poly = _clip_polygon(poly, axis, bound, below)
    return _area(poly) / (block_size * block_size)


def insertion_reward(fraction: float, fixture: FixtureGeometry) -> float:
    """1.0 for a full insertion, 0.5 for a partial one, else 0 (thresholds in FixtureGeometry)."""
    if fraction >= fixture.full_fraction:
        return 1.0
    if fraction >= fixture.partial_fraction:
        return 0.5
    return 0.0


def wrap_angle(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


# ---------------------------------------------------------------------- environment
class PushTaskEnv(gym.Env):
    """The xArm6 cell with one block and a target zone ("push") or an insertion fixture ("push_insert")."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(self, task: str = "push", *, image: bool = False, image_size: tuple[int, int] = (120, 90),
                 camera_perturbation: bool = False, max_steps: int | None = None,
                 config: TaskConfig | None = None, gui: bool = False, render_mode: str | None = "rgb_array") -> None:
        if task not in TASKS:
            raise ValueError(f"unknown push task {task!r}; known: {TASKS}")
        self.task = task
        self.cfg = config or TaskConfig()
        self.max_steps = int(max_steps or (self.cfg.max_steps_push if task == "push" else self.cfg.max_steps_insert))
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.render_mode = render_mode
        self.image_enabled = bool(image)
        self.image_size = (int(image_size[0]), int(image_size[1]))  # width, height
        self.cell = Cell(self.cfg.cell, gui=gui)
        bs = self.cfg.cell.block_size
        self.pocket = bs + 2 * self.cfg.fixture.clearance
        self.goal_body = -1
        self.cell.on_build.append(self._add_goal_body)
        self.camera = None
        self._camera_perturbation = bool(camera_perturbation)
        if self.image_enabled:
            self._ensure_camera()
        d = float(self.cfg.max_delta)
        self.action_space = spaces.Box(-d, d, shape=(2,), dtype=np.float32)
        obs_spaces: dict[str, spaces.Space] = {
            "state": spaces.Box(-np.inf, np.inf, shape=(STATE_DIM,), dtype=np.float32)}
        if self.image_enabled:
            w, h = self.image_size
            obs_spaces["image"] = spaces.Box(0, 255, shape=(h, w, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self.goal_xy = np.zeros(2)
        self.goal_yaw = 0.0
        self._steps = 0

    # ------------------------------------------------------------------ scene objects
    def _add_goal_body(self, client: int) -> None:
        self.goal_body = self._make_fixture() if self.task == "push_insert" else self._make_target_zone()

    def _make_target_zone(self) -> int:
        cid = self.cell.client
        vis = self.cell.shapes("target_zone", lambda c: p.createVisualShape(
            p.GEOM_BOX, halfExtents=[0.03, 0.03, 0.0005], rgbaColor=[0.1, 0.75, 0.2, 1], physicsClientId=c))
        return p.createMultiBody(0, -1, vis, [0.4, 0.2, 0.0005], physicsClientId=cid)

    def _make_fixture(self) -> int:
        """Static U-shaped fixture: two side walls, a back wall and two lead-in guides (frame at pocket centre)."""
        cid = self.cell.client
        col, vis = self.cell.shapes("fixture", self._fixture_shapes)
        body = p.createMultiBody(0, col, vis, [0.4, 0.2, 0.0], physicsClientId=cid)
        p.changeDynamics(body, -1, lateralFriction=0.3, physicsClientId=cid)
        return body

    def _fixture_shapes(self, cid: int) -> tuple[int, int]:
        f = self.cfg.fixture
        w = d = self.pocket
        t, hz = f.wall_thickness, f.wall_height / 2
        boxes = [  # (centre x, centre y, half x, half y, yaw); side walls span x in [-d/2, d/2 + t]
            (t / 2, w / 2 + t / 2, d / 2 + t / 2, t / 2, 0.0),
            (t / 2, -w / 2 - t / 2, d / 2 + t / 2, t / 2, 0.0),
            (d / 2 + t / 2, 0.0, t / 2, w / 2 + t, 0.0),                  # back wall
        ]
        g, a = f.guide_length, f.guide_angle
        for side in (1.0, -1.0):
            # Inner face from the mouth corner (-d/2, side*w/2) outward at angle a; the box sits behind that face.
            mid = np.array([-d / 2 - g / 2 * math.cos(a), side * (w / 2 + g / 2 * math.sin(a))])
            normal = np.array([-math.sin(a), side * math.cos(a)])
            normal = normal if normal[1] * side > 0 else -normal
            centre = mid + normal * (t / 2)
            yaw = side * -a
            boxes.append((centre[0], centre[1], g / 2, t / 2, yaw))
        kinds = [p.GEOM_BOX] * len(boxes)
        half = [[hx, hy, hz] for _, _, hx, hy, _ in boxes]
        pos = [[x, y, hz] for x, y, _, _, _ in boxes]
        orn = [list(quat_of_yaw(yaw)) for *_, yaw in boxes]
        col = p.createCollisionShapeArray(kinds, halfExtents=half, collisionFramePositions=pos,
                                          collisionFrameOrientations=orn, physicsClientId=cid)
        vis = p.createVisualShapeArray(kinds, halfExtents=half, visualFramePositions=pos,
                                       visualFrameOrientations=orn, rgbaColors=[[0.08, 0.08, 0.08, 1]] * len(boxes),
                                       physicsClientId=cid)
        return col, vis

    def _ensure_camera(self) -> None:
        if self.camera is None:
            from irvs_ros.sim.camera import Camera  # imported lazily: state-only runs never pay for it

            self.camera = Camera.from_config(client=self.cell.client, output_size=self.image_size,
                                             perturb=self._camera_perturbation)
            self._set_static_layer()

    def _set_static_layer(self) -> None:
        # Table and goal stay put for the whole episode: the camera draws them once per episode (camera.py).
        # Not the arm's base: it touches link 1, and where their surfaces meet at equal depth the composite
        # could pick the other one than a single render does.
        static = [self.cell.table] + ([self.goal_body] if self.goal_body >= 0 else [])
        self.camera.set_static(static if self.cfg.camera_layers else [])

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        rng, r = self.np_random, self.cfg.ranges
        while True:
            block_xy = np.array(r.block_center) + rng.uniform(-1, 1, 2) * np.array(r.block_half_range)
            block_yaw = float(rng.uniform(*r.block_yaw_range))
            if self.task == "push":
                goal_xy = np.array(r.target_center) + rng.uniform(-1, 1, 2) * np.array(r.target_half_range)
                goal_yaw = float(rng.uniform(*r.target_yaw_range))
            else:
                goal_xy = np.array(r.fixture_center) + rng.uniform(-1, 1, 2) * np.array(r.fixture_half_range)
                goal_yaw = float(rng.uniform(*r.fixture_yaw_range))
            if np.linalg.norm(goal_xy - block_xy) >= r.min_block_goal_distance:
                break
        self.goal_xy, self.goal_yaw = goal_xy, wrap_angle(goal_yaw)
        self.cell.reset(np.array(r.effector_start), block_xy, block_yaw)
        p.resetBasePositionAndOrientation(self.goal_body, [goal_xy[0], goal_xy[1], 0.0005 if self.task == "push"
                                                           else 0.0], quat_of_yaw(goal_yaw),
                                          physicsClientId=self.cell.client)
        if self.camera is not None:
            self.camera.resample(rng)
            self._set_static_layer()
        self._steps = 0
        obs, block, sd = self._observe()
        return obs, self._info(block, sd, rejected=False)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (2,):
            raise ValueError(f"{self.task} action must have shape (2,) (delta x, y in m), got {np.shape(action)}")
        rejected = not np.all(np.isfinite(a))
        d = self.cfg.max_delta
        target = self.cell.setpoint + (np.clip(a, -d, d) if not rejected else np.full(2, np.nan))
        self.cell.step(target)
        self._steps += 1
        obs, block, sd = self._observe()
        info = self._info(block, sd, rejected=rejected)
        reward = info["reward_level"]
        terminated = bool(info["success"])
        truncated = self._steps >= self.max_steps and not terminated
        return obs, float(reward), terminated, truncated, info

    def render(self) -> np.ndarray:
        """Full-resolution (640x360) RGB frame for videos."""
        self._ensure_camera()
        return self.camera.render_native()

    def close(self) -> None:
        if self.cell.client is not None:
            self.cell.close()

    # ------------------------------------------------------------------ observations
    def state_dict(self) -> dict[str, np.ndarray]:
        return self._state_dict(self.cell.block_pose())

    def _state_dict(self, block: np.ndarray) -> dict[str, np.ndarray]:
        return {"effector_xy": self.cell.effector_xyz()[:2], "setpoint_xy": self.cell.setpoint,
                "block_xy": block[:2], "block_yaw": block[2:3], "goal_xy": self.goal_xy.copy(),
                "goal_yaw": np.array([self.goal_yaw])}

    def _observe(self) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
        """Observation, block pose (3,) and state dict, from one read of the simulator's state."""
        block = self.cell.block_pose()
        sd = self._state_dict(block)
        obs = {"state": np.concatenate([sd[k] for k, _ in STATE_KEYS]).astype(np.float32)}
        if self.image_enabled:
            obs["image"] = self.camera.render()
        return obs, block, sd

    def evaluate(self) -> tuple[bool, float, dict[str, float]]:
        """(success, reward level, details) for the current world state."""
        return self._evaluate(self.cell.block_pose())

    def _evaluate(self, block: np.ndarray) -> tuple[bool, float, dict[str, float]]:
        if self.task == "push":
            dist = float(np.linalg.norm(block[:2] - self.goal_xy))
            ok = dist < self.cfg.success_distance
            return ok, 1.0 if ok else 0.0, {"goal_distance": dist}
        frac = inserted_fraction(block[:2], block[2], self.goal_xy, self.goal_yaw, self.cfg.cell.block_size,
                                 self.pocket, self.pocket)
        level = insertion_reward(frac, self.cfg.fixture)
        return level >= 1.0, level, {"inserted_fraction": frac,
                                     "goal_distance": float(np.linalg.norm(block[:2] - self.goal_xy))}

    def _info(self, block: np.ndarray, state_dict: dict[str, np.ndarray], rejected: bool) -> dict[str, Any]:
        ok, level, details = self._evaluate(block)
        return {"success": ok, "reward_level": level, "rejected": rejected, "steps": self._steps,
                "state_dict": state_dict, **details}


class PushEnv(PushTaskEnv):
    """IBC block pushing in the xArm6 cell (see module docstring)."""

    def __init__(self, *, image: bool = False, image_size: tuple[int, int] = (120, 90),
                 camera_perturbation: bool = False, max_steps: int | None = None, config: TaskConfig | None = None,
                 gui: bool = False, render_mode: str | None = "rgb_array") -> None:
        super().__init__("push", image=image, image_size=image_size, camera_perturbation=camera_perturbation,
                         max_steps=max_steps, config=config, gui=gui, render_mode=render_mode)


class PushInsertEnv(PushTaskEnv):
    """Push a block into a 1 mm-clearance fixture (see module docstring)."""

    def __init__(self, *, image: bool = False, image_size: tuple[int, int] = (120, 90),
                 camera_perturbation: bool = False, max_steps: int | None = None, config: TaskConfig | None = None,
                 gui: bool = False, render_mode: str | None = "rgb_array") -> None:
        super().__init__("push_insert", image=image, image_size=image_size, camera_perturbation=camera_perturbation,
                         max_steps=max_steps, config=config, gui=gui, render_mode=render_mode)
