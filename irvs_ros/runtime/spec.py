"""What a policy consumes and produces: observation spec, normalization statistics, action bounds.

These plain dataclasses travel as JSON inside the policy file's metadata and inside the dataset
store, so the trainer, the exporter and the runtime all describe a policy the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np


class SpecError(ValueError):
    """An observation, action or statistic does not match what the policy was trained on."""


@dataclass(frozen=True)
class ObsSpec:
    """Observation layout.

    state_dim: length of the low-dimensional state vector (0 when the policy sees only images).
    image_shape: (H, W, 3) of the uint8 RGB image the network sees, or None for state-only policies.
    state_keys: names of the state entries concatenated into the state vector, in order.
    """

    state_dim: int
    image_shape: tuple[int, int, int] | None = None
    state_keys: tuple[str, ...] = ("state",)

    def __post_init__(self) -> None:
        if self.state_dim < 0:
            raise SpecError(f"state_dim must be >= 0, got {self.state_dim}")
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
            if len(self.image_shape) != 3 or self.image_shape[2] != 3 or min(self.image_shape) <= 0:
                raise SpecError(f"image_shape must be (H, W, 3), got {self.image_shape}")
        object.__setattr__(self, "state_keys", tuple(self.state_keys))
        if self.state_dim == 0 and self.image_shape is None:
            raise SpecError("an observation needs a state vector, an image, or both")

    def validate(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Check a batched observation and return (state (B, S) float32 | None, image (B, H, W, 3) uint8 | None).

        Raises SpecError with what was expected and what was given.
        """
        state = image = None
        if self.state_dim > 0:
            if "state" not in obs:
                raise SpecError(f"observation lacks 'state' (expected shape (B, {self.state_dim}))")
            state = np.asarray(obs["state"], dtype=np.float32)
            if state.ndim != 2 or state.shape[1] != self.state_dim:
                raise SpecError(f"state has shape {state.shape}, expected (B, {self.state_dim})")
            if not np.all(np.isfinite(state)):
                raise SpecError("state contains NaN or inf")
        if self.image_shape is not None:
            if "image" not in obs:
                raise SpecError(f"observation lacks 'image' (expected (B, {', '.join(map(str, self.image_shape))}))")
            image = np.asarray(obs["image"])
            if image.ndim != 4 or tuple(image.shape[1:]) != self.image_shape:
                raise SpecError(f"image has shape {image.shape}, expected (B, {', '.join(map(str, self.image_shape))})")
            if image.dtype != np.uint8:
                raise SpecError(f"image has dtype {image.dtype}, expected uint8 RGB")
        if state is not None and image is not None and state.shape[0] != image.shape[0]:
            raise SpecError(f"state batch {state.shape[0]} != image batch {image.shape[0]}")
        return state, image

    def to_dict(self) -> dict:
        return {"state_dim": self.state_dim, "image_shape": list(self.image_shape) if self.image_shape else None,
                "state_keys": list(self.state_keys)}

    @classmethod
    def from_dict(cls, d: dict) -> ObsSpec:
        shape = d.get("image_shape")
        return cls(int(d["state_dim"]), tuple(shape) if shape else None, tuple(d.get("state_keys", ("state",))))


StateLayout = tuple[tuple[str, int], ...]


def state_slices(layout: StateLayout) -> dict[str, slice]:
    """{name: slice of the state vector} for a state laid out as `layout` ((name, size), ...)."""
    out, start = {}, 0
    for name, size in layout:
        out[name] = slice(start, start + int(size))
        start += int(size)
    return out


def state_columns(layout: StateLayout, keys: tuple[str, ...]) -> np.ndarray:
    """Indices into a state vector laid out as `layout` that pick `keys`, in `keys` order.

    SpecError names the unknown keys and the layout's keys."""
    slices = state_slices(layout)
    unknown = [k for k in keys if k not in slices]
    if unknown or not keys:
        raise SpecError(f"state keys {list(keys)} are not a non-empty subset of the state's {list(slices)}")
    return np.concatenate([np.arange(slices[k].start, slices[k].stop) for k in keys])


def observation_adapter(obs: ObsSpec, layout: StateLayout | None) -> Callable[[dict], dict]:
    """A function from an environment's observation (its whole state vector, laid out as `layout`) to the one
    `obs` names: the state columns of obs.state_keys, or the observation unchanged when the policy takes the
    whole state or none. SpecError when the keys need a layout the environment lacks."""
    if obs.state_dim == 0 or obs.state_keys == ("state",):
        return lambda o: o
    if layout is None:
        raise SpecError(f"the policy observes state entries {list(obs.state_keys)}, but the environment's state "
                        "has no named layout")
    cols = state_columns(layout, obs.state_keys)
    if len(cols) != obs.state_dim:
        raise SpecError(f"state entries {list(obs.state_keys)} have {len(cols)} values in the environment, "
                        f"the policy expects state_dim {obs.state_dim}")
    return lambda o: {**o, "state": np.asarray(o["state"])[..., cols]}


@dataclass(frozen=True)
class NormStats:
    """Dataset statistics a policy normalizes with (raw units).

    state_mean, state_std: (S,) for zero-mean / unit-variance states (std floored at 1e-6).
    action_min, action_max: (A,) dataset min / max; actions are scaled to [-1, 1] with these.
    return_min, return_max: scalars for the return-to-go G (average future reward), scaled to [-1, 1].
    """

    state_mean: tuple[float, ...]
    state_std: tuple[float, ...]
    action_min: tuple[float, ...]
    action_max: tuple[float, ...]
    return_min: float = 0.0
    return_max: float = 1.0

    def __post_init__(self) -> None:
        for name in ("state_mean", "state_std", "action_min", "action_max"):
            v = tuple(float(x) for x in getattr(self, name))
            if not all(np.isfinite(v)):
                raise SpecError(f"{name} has non-finite entries")
            object.__setattr__(self, name, v)
        if len(self.state_mean) != len(self.state_std):
            raise SpecError("state_mean and state_std differ in length")
        if len(self.action_min) != len(self.action_max):
            raise SpecError("action_min and action_max differ in length")
        if any(s <= 0 for s in self.state_std):
            raise SpecError("state_std must be > 0")

    # numpy views -------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=np.float32) for k, v in asdict(self).items()}

    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        a = self.arrays()
        return ((state - a["state_mean"]) / a["state_std"]).astype(np.float32)

    def action_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """(center (A,), half_range (A,)) so that a_norm = (a - center) / half_range; half_range floored."""
        lo, hi = np.asarray(self.action_min, np.float32), np.asarray(self.action_max, np.float32)
        return (hi + lo) / 2, np.maximum((hi - lo) / 2, 1e-6).astype(np.float32)

    def normalize_action(self, action: np.ndarray) -> np.ndarray:
        c, h = self.action_scale()
        return ((action - c) / h).astype(np.float32)

    def unnormalize_action(self, action_norm: np.ndarray) -> np.ndarray:
        c, h = self.action_scale()
        return (action_norm * h + c).astype(np.float32)

    def return_scale(self) -> tuple[float, float]:
        """(center, half_range) for G: G_norm = (G - center) / half_range."""
        return (self.return_max + self.return_min) / 2, max((self.return_max - self.return_min) / 2, 1e-6)

    def normalize_return(self, g: np.ndarray) -> np.ndarray:
        c, h = self.return_scale()
        return ((np.asarray(g) - c) / h).astype(np.float32)

    def unnormalize_return(self, g_norm: np.ndarray) -> np.ndarray:
        c, h = self.return_scale()
        return (np.asarray(g_norm) * h + c).astype(np.float32)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> NormStats:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


@dataclass(frozen=True)
class PolicySpec:
    """Everything about a policy's inputs and outputs that does not depend on the algorithm.

    action_low, action_high: (A,) raw sampling bounds = dataset min/max widened by 5% of the range
    on each side, clipped to the environment's limits (IBC appendix B).
    control_rate_hz: decisions per second the policy was trained for.
    """

    obs: ObsSpec
    action_dim: int
    stats: NormStats
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    control_rate_hz: float = 5.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "action_low", tuple(float(v) for v in self.action_low))
        object.__setattr__(self, "action_high", tuple(float(v) for v in self.action_high))
        if self.action_dim <= 0:
            raise SpecError(f"action_dim must be > 0, got {self.action_dim}")
        for name in ("action_low", "action_high"):
            if len(getattr(self, name)) != self.action_dim:
                raise SpecError(f"{name} has length {len(getattr(self, name))}, expected {self.action_dim}")
        if len(self.stats.action_min) != self.action_dim:
            raise SpecError("stats.action_min does not match action_dim")
        if len(self.stats.state_mean) != self.obs.state_dim:
            raise SpecError("stats.state_mean does not match obs.state_dim")
        if any(lo >= hi for lo, hi in zip(self.action_low, self.action_high, strict=True)):
            raise SpecError("action_low must be < action_high in every dimension")

    def normalized_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Sampling bounds in normalized action units: (low (A,), high (A,)), float32."""
        return (self.stats.normalize_action(np.asarray(self.action_low, np.float32)),
                self.stats.normalize_action(np.asarray(self.action_high, np.float32)))

    def to_json(self) -> str:
        return json.dumps({"obs": self.obs.to_dict(), "action_dim": self.action_dim, "stats": self.stats.to_dict(),
                           "action_low": list(self.action_low), "action_high": list(self.action_high),
                           "control_rate_hz": self.control_rate_hz, "extra": self.extra})

    @classmethod
    def from_json(cls, text: str) -> PolicySpec:
        d = json.loads(text)
        return cls(ObsSpec.from_dict(d["obs"]), int(d["action_dim"]), NormStats.from_dict(d["stats"]),
                   tuple(d["action_low"]), tuple(d["action_high"]), float(d.get("control_rate_hz", 5.0)),
                   d.get("extra", {}))


def widened_bounds(action_min: np.ndarray, action_max: np.ndarray, env_low: np.ndarray | None = None,
                   env_high: np.ndarray | None = None, margin: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Dataset min/max widened by `margin` of the range on each side, clipped to env limits. Shapes (A,)."""
    lo, hi = np.asarray(action_min, np.float64), np.asarray(action_max, np.float64)
    pad = margin * np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad, hi + pad
    if env_low is not None:
        lo = np.maximum(lo, env_low)
    if env_high is not None:
        hi = np.minimum(hi, env_high)
    return lo.astype(np.float32), hi.astype(np.float32)
