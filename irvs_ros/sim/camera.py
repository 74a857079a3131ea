"""D415-like perspective RGB camera for the simulated cell, rendered in DIRECT mode (TinyRenderer).

Native frame: 640x360 with the intrinsics and pose from config/cell.yaml (principal point assumed at the
image centre). The policy image is the centre 4:3 crop of the native frame (480x360 at native scale),
rendered at `supersample` x the output size and box-averaged down to the output size (default 120x90,
IBC's real-robot input). With `perturb`, each `resample(rng)` draws a small camera pose offset and a new
light direction and intensity (for robustness training); without it the camera is fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pybullet as p
import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "cell.yaml"


@dataclass(frozen=True)
class CameraConfig:
    native_size: tuple[int, int] = (640, 360)
    fx: float = 463.0
    fy: float = 463.0
    cx: float = 320.0
    cy: float = 180.0
    eye: tuple[float, float, float] = (0.95, 0.0, 0.55)
    target: tuple[float, float, float] = (0.42, 0.0, 0.0)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    near: float = 0.05
    far: float = 3.0
    output_size: tuple[int, int] = (120, 90)
    eye_std: float = 0.01
    target_std: float = 0.01
    light_direction_std: float = 0.3
    ambient: tuple[float, float] = (0.5, 0.7)
    diffuse: tuple[float, float] = (0.4, 0.7)

    @classmethod
    def from_yaml(cls, path: str | Path | None = None) -> CameraConfig:
        """The "camera" section of a cell YAML file (default config/cell.yaml); missing keys keep defaults."""
        path = Path(path) if path is not None else DEFAULT_CONFIG
        if not path.exists():
            return cls()
        doc = yaml.safe_load(path.read_text()) or {}
        cam = doc.get("camera", {}) or {}
        kw: dict[str, Any] = {}
        for key in ("native_size", "eye", "target", "up", "output_size"):
            if key in cam:
                kw[key] = tuple(cam[key])
        for key in ("near", "far"):
            if key in cam:
                kw[key] = float(cam[key])
        for key, value in (cam.get("intrinsics") or {}).items():
            if key not in ("fx", "fy", "cx", "cy"):
                raise ValueError(f"{path}: unknown camera intrinsic {key!r}; expected fx, fy, cx, cy")
            kw[key] = float(value)
        pert = cam.get("perturbation") or {}
        for key in ("eye_std", "target_std", "light_direction_std"):
            if key in pert:
                kw[key] = float(pert[key])
        for key in ("ambient", "diffuse"):
            if key in pert:
                kw[key] = tuple(pert[key])
        return cls(**kw)


class Camera:
    """Renders the world of one PyBullet client. Images are uint8 (H, W, 3) RGB."""

    def __init__(self, client: int, config: CameraConfig | None = None, *,
                 output_size: tuple[int, int] | None = None, perturb: bool = False, supersample: int = 2) -> None:
        self.client = client
        self.config = c = config or CameraConfig()
        self.output_size = tuple(int(v) for v in (output_size or c.output_size))
        if len(self.output_size) != 2 or min(self.output_size) < 1:
            raise ValueError(f"camera output_size must be (width, height) >= 1, got {output_size!r}")
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        self.perturb = bool(perturb)
        self.supersample = int(supersample)
        self.eye = np.array(c.eye, dtype=np.float64)
        self.target = np.array(c.target, dtype=np.float64)
        self.light_direction = np.array([0.3, 0.2, 1.0])
        self.ambient, self.diffuse = float(np.mean(c.ambient)), float(np.mean(c.diffuse))

    @classmethod
    def from_config(cls, client: int, path: str | Path | None = None, **kwargs: Any) -> Camera:
        return cls(client, CameraConfig.from_yaml(path), **kwargs)

    def resample(self, rng: np.random.Generator) -> None:
        """New per-episode pose and lighting perturbation (no-op unless `perturb`)."""
        if not self.perturb:
            return
        c = self.config
        self.eye = np.array(c.eye) + rng.normal(0.0, c.eye_std, 3)
        self.target = np.array(c.target) + rng.normal(0.0, c.target_std, 3)
        self.light_direction = np.array([0.3, 0.2, 1.0]) + rng.normal(0.0, c.light_direction_std, 3)
        self.ambient = float(rng.uniform(*c.ambient))
        self.diffuse = float(rng.uniform(*c.diffuse))

    def _render(self, width: int, height: int, fy_pixels: float) -> np.ndarray:
        view = p.computeViewMatrix(self.eye.tolist(), self.target.tolist(), list(self.config.up),
                                   physicsClientId=self.client)
        fov = math.degrees(2.0 * math.atan(height / (2.0 * fy_pixels)))
        proj = p.computeProjectionMatrixFOV(fov, width / height, self.config.near, self.config.far,
                                            physicsClientId=self.client)
        _, _, rgba, _, _ = p.getCameraImage(
            width, height, view, proj, renderer=p.ER_TINY_RENDERER, shadow=0,
            lightDirection=self.light_direction.tolist(), lightAmbientCoeff=self.ambient,
            lightDiffuseCoeff=self.diffuse, flags=p.ER_NO_SEGMENTATION_MASK, physicsClientId=self.client)
        return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3]

    def render_native(self) -> np.ndarray:
        """Full native frame (360, 640, 3) uint8."""
        w, h = self.config.native_size
        return self._render(int(w), int(h), self.config.fy)

    def render(self) -> np.ndarray:
        """Policy image (H, W, 3) uint8 at `output_size` (width, height)."""
        out_w, out_h = self.output_size
        s = self.supersample
        nat_w, nat_h = self.config.native_size
        # The centre crop with the output's aspect ratio, at native scale; rendering it directly at s x the
        # output size only changes the focal length in pixels.
        crop_h = min(nat_h, nat_w * out_h / out_w)
        fy = self.config.fy * (out_h * s) / crop_h
        img = self._render(out_w * s, out_h * s, fy)
        if s > 1:
            img = img.reshape(out_h, s, out_w, s, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        return img
