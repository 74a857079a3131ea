"""From a dataset store to training batches: policy spec, episode filtering, in-memory tensors, seeded sampling."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from irvs_ros.runtime.spec import NormStats, ObsSpec, PolicySpec, SpecError, StateLayout, state_columns, widened_bounds

# Keys an algorithm's batch may hold (see irvs_ros.learn.algorithms.base).
BATCH_KEYS = ("state", "image", "action", "return")
DEFAULT_CONTROL_RATE_HZ = 5.0


def policy_spec_from_dataset(ds: Any, control_rate_hz: float | None = None) -> PolicySpec:
    """The PolicySpec a policy trained on dataset `ds` acts under.

    Observation spec and normalization stats come from the dataset; the action sampling bounds are the dataset
    action min/max widened by 5% of the range and clipped to the environment limits in meta["action_limits"]
    (IBC appendix B). control_rate_hz: None takes meta["control_rate_hz"], else 5 Hz.
    """
    obs = ObsSpec.from_dict(ds.obs_spec)
    stats = NormStats.from_dict(dict(ds.stats))
    meta = dict(ds.meta or {})
    env_low = env_high = None
    limits = meta.get("action_limits")
    if limits is not None:
        try:
            env_low = np.asarray(limits["low"], np.float64).reshape(-1)
            env_high = np.asarray(limits["high"], np.float64).reshape(-1)
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError("dataset meta['action_limits'] must be {'low': [...], 'high': [...]}, "
                            f"got {limits!r}") from e
        for name, v in (("low", env_low), ("high", env_high)):
            if v.shape != (int(ds.action_dim),):
                raise SpecError(f"dataset meta['action_limits']['{name}'] has {v.size} entries, "
                                f"expected action_dim = {ds.action_dim}")
    low, high = widened_bounds(np.asarray(stats.action_min), np.asarray(stats.action_max), env_low, env_high)
    if control_rate_hz is None:
        control_rate_hz = float(meta.get("control_rate_hz", DEFAULT_CONTROL_RATE_HZ))
    extra = {k: meta[k] for k in ("env", "env_kwargs") if k in meta}
    return PolicySpec(obs=obs, action_dim=int(ds.action_dim), stats=stats, action_low=tuple(low.tolist()),
                      action_high=tuple(high.tolist()), control_rate_hz=float(control_rate_hz), extra=extra)


def _require_images(spec: PolicySpec) -> None:
    if spec.obs.image_shape is None:
        raise SpecError("observation 'image' needs a dataset with images (this one observes states only)")


def image_only(spec: PolicySpec) -> PolicySpec:
    """`spec` observing its image alone: no state and no state statistics (SpecError when it has no image)."""
    _require_images(spec)
    stats = NormStats((), (), spec.stats.action_min, spec.stats.action_max, spec.stats.return_min,
                      spec.stats.return_max)
    return dataclasses.replace(spec, obs=ObsSpec(0, spec.obs.image_shape, ()), stats=stats)


def state_only(spec: PolicySpec) -> PolicySpec:
    """`spec` observing its state alone (the image dropped): a state policy from a dataset that also has images."""
    if spec.obs.state_dim == 0:
        raise SpecError("observation 'state' needs a dataset with a state (this one observes images only)")
    return dataclasses.replace(spec, obs=ObsSpec(spec.obs.state_dim, None, spec.obs.state_keys))


def dataset_state_layout(ds: Any) -> StateLayout | None:
    """How dataset `ds`'s state vector is laid out: meta["state_layout"], else its env's (None when unnamed)."""
    from irvs_ros.sim.registry import state_layout

    meta = dict(ds.meta or {})
    if meta.get("state_layout"):
        return tuple((str(name), int(size)) for name, size in meta["state_layout"])
    return state_layout(meta.get("env"))


def image_and_state(spec: PolicySpec, keys: tuple[str, ...], layout: StateLayout | None
                    ) -> tuple[PolicySpec, np.ndarray]:
    """`spec` observing its image plus the state entries `keys` (named in `layout`), and the state columns (K,)
    they are taken from; state statistics are sliced to match. SpecError without images or layout."""
    _require_images(spec)
    if layout is None:
        raise SpecError(f"state_keys {list(keys)} need the dataset's state layout (meta['state_layout'] or a "
                        "known env in meta['env'])")
    if sum(int(n) for _, n in layout) != spec.obs.state_dim:
        raise SpecError(f"state layout {list(layout)} does not add up to the dataset's state_dim "
                        f"{spec.obs.state_dim}")
    cols = state_columns(layout, keys)
    st = spec.stats
    stats = NormStats(tuple(np.asarray(st.state_mean)[cols]), tuple(np.asarray(st.state_std)[cols]), st.action_min,
                      st.action_max, st.return_min, st.return_max)
    return dataclasses.replace(spec, obs=ObsSpec(len(cols), spec.obs.image_shape, keys), stats=stats), cols


def random_shift(image: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Each image (B, H, W, C) uint8 shifted by an integer offset in [-pad, pad] per axis, edges replicated.

    Offsets come from the CPU `generator`, so the augmentation stream is reproducible (and resumable)."""
    if pad <= 0:
        return image
    b, h, w, _ = image.shape
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).tolist()
    padded = torch.nn.functional.pad(image.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="replicate")
    crops = [padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)]
    return torch.stack(crops).permute(0, 2, 3, 1).to(torch.uint8)


def episode_starts(episode_ends: np.ndarray) -> np.ndarray:
    """First step index of each episode, (E,), from the exclusive end indices (E,)."""
    ends = np.asarray(episode_ends, np.int64)
    return np.concatenate([[0], ends[:-1]]).astype(np.int64)


def episode_scores(arrays: dict[str, np.ndarray], episode_ends: np.ndarray) -> np.ndarray:
    """Score of each episode, (E,): its return-to-go at the first step (the episode's average reward),
    or the summed reward when the arrays hold no 'return'."""
    starts = episode_starts(episode_ends)
    if "return" in arrays:
        return np.asarray(arrays["return"], np.float64)[starts]
    if "reward" in arrays:
        return np.add.reduceat(np.asarray(arrays["reward"], np.float64), starts) if len(starts) else np.zeros(0)
    raise ValueError("episode scores need 'return' or 'reward' arrays; the dataset provides neither")


def select_top_episodes(arrays: dict[str, np.ndarray], episode_ends: np.ndarray,
                        keep_top_fraction: float) -> dict[str, np.ndarray]:
    """Keep the steps of the ceil(fraction * E) best-scoring episodes (ties: earlier episode first).

    Returns new arrays (N', ...) in the original step order; 'episode_index' (if present) is kept as is.
    """
    if not 0.0 < keep_top_fraction <= 1.0:
        raise ValueError(f"keep_top_fraction must be in (0, 1], got {keep_top_fraction}")
    ends = np.asarray(episode_ends, np.int64)
    if keep_top_fraction >= 1.0 or len(ends) == 0:
        return dict(arrays)
    scores = episode_scores(arrays, ends)
    keep = max(1, math.ceil(keep_top_fraction * len(ends)))
    # Stable sort on -score keeps the earlier episode first among equal scores.
    chosen = np.sort(np.argsort(-scores, kind="stable")[:keep])
    starts = episode_starts(ends)
    index = np.concatenate([np.arange(starts[e], ends[e]) for e in chosen])
    return {k: np.asarray(v)[index] for k, v in arrays.items()}


class InMemoryBatches:
    """The training arrays as torch tensors, sampled uniformly over steps with a caller-owned torch.Generator.

    tensors: "state" (N, S) float32, "image" (N, H, W, 3) uint8, "action" (N, A) float32, "return" (N,) float32,
    "aux_state" (N, T) float32 (auxiliary targets, learn.aux_state), each only when the spec / arrays have it.
    Tensors live on `device` (indices are drawn on the CPU generator so the sample stream is the same on every
    device).
    """

    def __init__(self, arrays: dict[str, np.ndarray], spec: PolicySpec, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        wanted = ["action"]
        if spec.obs.state_dim > 0:
            wanted.append("state")
        if spec.obs.image_shape is not None:
            wanted.append("image")
        missing = [k for k in wanted if k not in arrays]
        if missing:
            raise SpecError(f"dataset lacks {missing} needed by the policy spec (has {sorted(arrays)})")
        wanted += [k for k in ("return", "aux_state") if k in arrays]
        n = len(arrays["action"])
        if n == 0:
            raise ValueError("the dataset (after filtering) holds no steps to train on")
        self.tensors: dict[str, torch.Tensor] = {}
        for key in wanted:
            value = np.asarray(arrays[key])
            if len(value) != n:
                raise SpecError(f"array {key!r} has {len(value)} rows, 'action' has {n}")
            if key == "image":
                if value.dtype != np.uint8:
                    raise SpecError(f"'image' must be uint8, got {value.dtype}")
                expected = tuple(spec.obs.image_shape)
                if tuple(value.shape[1:]) != expected:
                    raise SpecError(f"'image' has shape {value.shape}, expected (N, {', '.join(map(str, expected))})")
            else:
                value = value.astype(np.float32, copy=False)
            tensor = torch.from_numpy(np.ascontiguousarray(value))
            self.tensors[key] = tensor.to(self.device)
        a = self.tensors["action"]
        if a.ndim != 2 or a.shape[1] != spec.action_dim:
            raise SpecError(f"'action' has shape {tuple(a.shape)}, expected (N, {spec.action_dim})")
        if "state" in self.tensors and tuple(self.tensors["state"].shape[1:]) != (spec.obs.state_dim,):
            raise SpecError(f"'state' has shape {tuple(self.tensors['state'].shape)}, "
                            f"expected (N, {spec.obs.state_dim})")
        self.num_steps = n

    def __len__(self) -> int:
        return self.num_steps

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A batch of `batch_size` steps drawn uniformly with replacement; `generator` must be a CPU generator."""
        index = torch.randint(0, self.num_steps, (batch_size,), generator=generator)
        index = index.to(self.device)
        return {k: v.index_select(0, index) for k, v in self.tensors.items()}
