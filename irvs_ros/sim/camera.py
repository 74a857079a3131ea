"""D415-like perspective RGB camera for the simulated cell, rendered in DIRECT mode (TinyRenderer).

Native frame: 640x360 with the intrinsics and pose from config/cell.yaml (principal point assumed at the
image centre). The policy image is the centre 4:3 crop of the native frame (480x360 at native scale),
rendered at `supersample` x the output size and box-averaged down to the output size (default 120x90,
IBC's real-robot input). With `perturb`, each `resample(rng)` draws a small camera pose offset and a new
light direction and intensity (for robustness training); without it the camera is fixed.

Static layer: TinyRenderer's cost grows with the pixels each body covers (the table fills most of the frame)
and with triangles (the arm's meshes). `set_static(bodies)` names bodies that stay put (table, target or
fixture); they are rendered once into a cached background (colour and depth), and each frame renders only the
other bodies (the static ones hidden by a transparent colour, which TinyRenderer skips) and keeps, per pixel,
whichever of the two is nearer. TinyRenderer shades each triangle from its own normal and the light alone
(no shadows here), so the composite equals a full render pixel for pixel (tested); the background is redrawn
after `resample` or another `set_static`. Where a moving and a static surface come out at exactly the same
depth (a block's bottom edge on the table, about one frame in a hundred) the layers cannot tell which one
TinyRenderer would keep, and that frame is drawn in one pass.
Moving mesh links whose bounding box lies wholly outside the view frustum (the xArm's upper arm, above the
top of the frame in the cell's camera, is half of the arm's ~51k triangles) are hidden for that frame too:
no triangle of theirs could land in the image, so the result is again exactly a full render.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
        # Static layer (see the module docstring): visual shapes as (body, link, shape index, rgba).
        self._static_shapes: list[tuple[int, int, int, tuple[float, ...]]] = []
        self._dynamic_shapes: list[tuple[int, int, int, tuple[float, ...]]] = []
        self._cullable: list[tuple[tuple[int, int, int, tuple[float, ...]], np.ndarray]] = []
        self._background: dict[tuple[int, int, float], tuple[np.ndarray, np.ndarray]] = {}
        self._colour_cache: dict[int, tuple[tuple, list[tuple[int, int, tuple[float, ...]]], tuple]] = {}

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
        self._background.clear()

    def set_static(self, bodies: Sequence[int]) -> None:
        """Bodies (PyBullet ids) that will not move or change colour until the next call (empty: render all
        bodies every frame). Call again whenever bodies are added, removed or moved."""
        static = {int(b) for b in bodies}
        cid = self.client
        all_bodies = [p.getBodyUniqueId(i, physicsClientId=cid) for i in range(p.getNumBodies(physicsClientId=cid))]
        unknown = static - set(all_bodies)
        if unknown:
            raise ValueError(f"set_static: no bodies {sorted(unknown)} in PyBullet client {cid}")
        self._static_shapes, self._dynamic_shapes, self._cullable = [], [], []
        if static:
            for body in all_bodies:
                for link, index, rgba, corners in self._shapes_of(body):
                    shape = (body, link, index, rgba)
                    if body in static:
                        self._static_shapes.append(shape)
                        continue
                    self._dynamic_shapes.append(shape)
                    if corners is not None and link >= 0:
                        self._cullable.append((shape, corners))
        self._background.clear()

    def _shapes_of(self, body: int) -> list[tuple[int, int, tuple[float, ...], np.ndarray | None]]:
        """(link, shape index within the link, rgba, corners (8, 3) of the shape's box in the link frame or None)
        of every visual shape of `body`.

        PyBullet reports one colour per link: after a per-shape change, every shape of that link reads as the
        last colour set. So the true colours are taken once, while the report is still per shape, and reused as
        long as the body reports the same shapes and what our own restore leaves behind.
        """
        data = p.getVisualShapeData(body, physicsClientId=self.client)
        signature = tuple((d[1], d[2], tuple(d[3]), d[4], tuple(d[5]), tuple(d[6])) for d in data)
        reported = tuple(tuple(d[7]) for d in data)
        cached = self._colour_cache.get(body)
        if cached is not None and cached[0] == signature and cached[2] == reported:
            return cached[1]
        counts: dict[int, int] = {}
        shapes = []
        for d in data:
            counts[d[1]] = counts.get(d[1], -1) + 1
            shapes.append((d[1], counts[d[1]], tuple(d[7]), _mesh_box(d)))
        last = {link: rgba for link, _, rgba, _ in shapes}   # what the report shows after a restore
        self._colour_cache[body] = (signature, shapes, tuple(last[link] for link, *_ in shapes))
        return shapes

    def _outside_view(self, view_proj: np.ndarray) -> list[tuple[int, int, int, tuple[float, ...]]]:
        """The cullable dynamic shapes whose box lies wholly outside one plane of the view frustum now."""
        by_body: dict[int, list] = {}
        for shape, corners in self._cullable:
            by_body.setdefault(shape[0], []).append((shape, corners))
        out = []
        for body, shapes in by_body.items():
            links = sorted({shape[1] for shape, _ in shapes})
            states = p.getLinkStates(body, links, computeForwardKinematics=True, physicsClientId=self.client)
            poses = {link: (np.array(st[4]), _rotation(st[5])) for link, st in zip(links, states, strict=True)}
            for shape, corners in shapes:
                pos, rot = poses[shape[1]]
                world = corners @ rot.T + pos
                clip = np.c_[world, np.ones(8)] @ view_proj.T   # (8, 4) homogeneous clip coordinates
                xyz, w = clip[:, :3], clip[:, 3:]
                if np.any(np.all(xyz > w, axis=0)) or np.any(np.all(xyz < -w, axis=0)):
                    out.append(shape)
        return out

    @contextmanager
    def _hidden(self, shapes: list[tuple[int, int, int, tuple[float, ...]]]) -> Iterator[None]:
        cid = self.client
        for body, link, index, rgba in shapes:
            p.changeVisualShape(body, link, shapeIndex=index, rgbaColor=[*rgba[:3], 0.0], physicsClientId=cid)
        try:
            yield
        finally:
            for body, link, index, rgba in shapes:
                p.changeVisualShape(body, link, shapeIndex=index, rgbaColor=list(rgba), physicsClientId=cid)

    def _matrices(self, width: int, height: int, fy_pixels: float) -> tuple[list[float], list[float]]:
        view = p.computeViewMatrix(self.eye.tolist(), self.target.tolist(), list(self.config.up),
                                   physicsClientId=self.client)
        fov = math.degrees(2.0 * math.atan(height / (2.0 * fy_pixels)))
        proj = p.computeProjectionMatrixFOV(fov, width / height, self.config.near, self.config.far,
                                            physicsClientId=self.client)
        return view, proj

    def _render_layer(self, width: int, height: int, view: list[float], proj: list[float],
                      segmentation: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Colour (H, W, 3) uint8, depth buffer (H, W) float32 and, if asked, the body id per pixel (H, W)
        (-1: none) of the bodies not hidden now."""
        _, _, rgba, depth, seg = p.getCameraImage(
            width, height, view, proj, renderer=p.ER_TINY_RENDERER, shadow=0,
            lightDirection=self.light_direction.tolist(), lightAmbientCoeff=self.ambient,
            lightDiffuseCoeff=self.diffuse, flags=0 if segmentation else p.ER_NO_SEGMENTATION_MASK,
            physicsClientId=self.client)
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3]
        ids = np.asarray(seg, dtype=np.int32).reshape(height, width) if segmentation else None
        return rgb, np.asarray(depth, dtype=np.float32).reshape(height, width), ids

    def _render(self, width: int, height: int, fy_pixels: float) -> np.ndarray:
        view, proj = self._matrices(width, height, fy_pixels)
        if not self._static_shapes:
            return self._render_layer(width, height, view, proj)[0]
        key = (width, height, fy_pixels)
        if key not in self._background:
            with self._hidden(self._dynamic_shapes):
                self._background[key] = self._render_layer(width, height, view, proj)[:2]
        back_rgb, back_depth = self._background[key]
        # Matrices are column-major 4x4 lists (OpenGL): reshape gives the transposes.
        view_proj = np.asarray(proj).reshape(4, 4).T @ np.asarray(view).reshape(4, 4).T
        with self._hidden(self._static_shapes + self._outside_view(view_proj)):
            rgb, depth, ids = self._render_layer(width, height, view, proj, segmentation=True)
        if np.any((depth == back_depth) & (ids >= 0)):
            # A moving and a static surface at exactly the same depth (a block's bottom edge on the table, about
            # one frame in a hundred): which one TinyRenderer keeps is decided inside it, so draw everything.
            return self._render_layer(width, height, view, proj)[0]
        return np.where((depth < back_depth)[:, :, None], rgb, back_rgb)

    def render_full(self) -> np.ndarray:
        """`render()` drawing every body in one pass (no static layer): the reference the layers must match."""
        saved, self._static_shapes = self._static_shapes, []
        try:
            return self.render()
        finally:
            self._static_shapes = saved

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
            img = box_downsample(img, s)
        return img


def box_downsample(img: np.ndarray, s: int) -> np.ndarray:
    """(H*s, W*s, C) uint8 -> (H, W, C) uint8: mean of each s x s block, rounded half to even (as np.round)."""
    h, w = img.shape[0] // s, img.shape[1] // s
    blocks = img.reshape(h, s, w, s, -1)
    n = s * s
    if n & (n - 1):
        return blocks.mean(axis=(1, 3)).round().astype(np.uint8)
    # s*s a power of two: the same result in integers, several times faster than the float mean.
    total = np.zeros((h, w, blocks.shape[-1]), dtype=np.uint32)
    for i in range(s):
        for j in range(s):
            total += img[i::s, j::s]
    shift = n.bit_length() - 1
    q, r = total >> shift, total & (n - 1)
    half = n >> 1
    return (q + ((r > half) | ((r == half) & (q & 1).astype(bool)))).astype(np.uint8)


def _rotation(quat: Sequence[float]) -> np.ndarray:
    """3x3 rotation matrix of a quaternion x, y, z, w."""
    x, y, z, w = quat
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


_MESH_BOUNDS: dict[str, np.ndarray | None] = {}


def _mesh_box(data: Sequence[Any]) -> np.ndarray | None:
    """Corners (8, 3) in the link frame of the bounding box of a mesh visual shape (a getVisualShapeData row);
    None for other shapes or meshes that cannot be read (those are never culled)."""
    if data[2] != p.GEOM_MESH:
        return None
    filename = data[4].decode() if isinstance(data[4], bytes) else str(data[4])
    if filename not in _MESH_BOUNDS:
        _MESH_BOUNDS[filename] = _read_mesh_bounds(Path(filename))
    bounds = _MESH_BOUNDS[filename]
    if bounds is None:
        return None
    lo, hi = bounds * np.asarray(data[3], dtype=np.float64)   # mesh scale (may flip signs)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return corners @ _rotation(data[6]).T + np.asarray(data[5], dtype=np.float64)


def _read_mesh_bounds(path: Path) -> np.ndarray | None:
    """(2, 3) min and max vertex of an STL (binary or ASCII) or OBJ file; None if unreadable."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        if path.suffix.lower() == ".stl" and len(raw) >= 84:
            n = int(np.frombuffer(raw, dtype="<u4", count=1, offset=80)[0])
            if 84 + 50 * n == len(raw):
                rec = np.frombuffer(raw, dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]),
                                    count=n, offset=84)
                v = rec["v"].reshape(-1, 3).astype(np.float64)
                return np.stack([v.min(axis=0), v.max(axis=0)]) if len(v) else None
        key = b"vertex" if path.suffix.lower() == ".stl" else b"v"
        v = np.array([[float(t) for t in line.split()[1:4]] for line in raw.splitlines()
                      if line.split()[:1] == [key]], dtype=np.float64)
        return np.stack([v.min(axis=0), v.max(axis=0)]) if len(v) else None
    except (ValueError, IndexError):
        return None
