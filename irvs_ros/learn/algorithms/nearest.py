"""Nearest-neighbour baseline (IBC appendix C.4): act with the action of the closest training observation.

Keys are the observations in the L2 sense: the raw state vector (IBC found per-dimension normalization no
help; `normalize_state` turns it on), and for images a fixed random linear projection to 128-D (IBC,
citing random projections for nearest-neighbour search of images). The projection first averages
non-overlapping pixel blocks so that no side exceeds `pool_to`, then multiplies by a seeded Gaussian
matrix; the composition is still one fixed linear map of the image, but the stored matrix stays small.

`fit_dataset` stores the keys and raw actions as buffers (so they travel in the state dict); the exported
graph holds them as constants and does the argmin itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from irvs_ros.learn.algorithms.base import Algorithm, ExportGraph, register
from irvs_ros.learn.algorithms.mse import ActionScale, explicit_export_graph, module_device, obs_to_tensors
from irvs_ros.learn.config_schema import ConfigError
from irvs_ros.runtime.spec import PolicySpec, SpecError

_FIT_CHUNK = 1024  # observations projected at once in fit_dataset (bounds memory for image datasets)


@dataclass
class NearestConfig:
    """Nearest-neighbour policy.

    projection_dim: size of the random image projection (IBC: 128).
    pool_to: images are block-averaged until neither side exceeds this many pixels before projecting.
    projection_seed: seed of the Gaussian projection matrix.
    normalize_state: use (state - mean) / std instead of the raw state in the distance.
    """

    projection_dim: int = 128
    pool_to: int = 32
    projection_seed: int = 0
    normalize_state: bool = False

    def validate(self) -> None:
        if self.projection_dim < 1:
            raise ConfigError(f"projection_dim must be >= 1, got {self.projection_dim}")
        if self.pool_to < 1:
            raise ConfigError(f"pool_to must be >= 1, got {self.pool_to}")


class _NearestNet(nn.Module):
    """Key function and lookup table: forward(state, image) -> raw action (B, A) of the nearest stored key."""

    def __init__(self, spec: PolicySpec, cfg: NearestConfig) -> None:
        super().__init__()
        self.state_dim = spec.obs.state_dim
        self.normalize_state = cfg.normalize_state
        stats = spec.stats.arrays()
        self.register_buffer("state_mean", torch.as_tensor(stats["state_mean"]))
        self.register_buffer("state_std", torch.as_tensor(stats["state_std"]))
        self.pool: nn.Module | None = None
        key_dim = self.state_dim
        if spec.obs.image_shape is not None:
            h, w, _ = spec.obs.image_shape
            block = max(1, math.ceil(max(h, w) / cfg.pool_to))
            # Floor mode: up to block - 1 trailing rows / columns are left out of the key.
            self.pool = nn.AvgPool2d(block, block) if block > 1 else nn.Identity()
            pooled = 3 * (h // block) * (w // block)
            gen = torch.Generator().manual_seed(cfg.projection_seed)
            # Entries N(0, 1 / d): squared distances are preserved in expectation (Johnson-Lindenstrauss).
            proj = torch.randn(pooled, cfg.projection_dim, generator=gen) / math.sqrt(cfg.projection_dim)
            self.register_buffer("projection", proj)
            key_dim += cfg.projection_dim
        self.key_dim = key_dim
        # The lookup table; empty until fit_dataset. Keys are stored centred on `key_mean` so that the
        # |k|^2 - 2 q.k expansion of the distance loses little precision to large absolute values.
        self.register_buffer("key_mean", torch.zeros(key_dim))
        self.register_buffer("keys", torch.zeros(0, key_dim))
        self.register_buffer("key_sqnorm", torch.zeros(0))
        self.register_buffer("actions", torch.zeros(0, spec.action_dim))

    def key(self, state: torch.Tensor | None, image: torch.Tensor | None) -> torch.Tensor:
        """Uncentred keys (B, key_dim) of raw observations."""
        parts = []
        if self.state_dim > 0:
            s = state.to(torch.float32)
            parts.append((s - self.state_mean) / self.state_std if self.normalize_state else s)
        if self.pool is not None:
            x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
            x = self.pool(x).reshape(x.shape[0], -1)
            parts.append(torch.matmul(x, self.projection))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def set_table(self, keys: torch.Tensor, actions: torch.Tensor) -> None:
        self.key_mean = keys.mean(0)
        self.keys = (keys - self.key_mean).contiguous()
        self.key_sqnorm = (self.keys**2).sum(1)
        self.actions = actions.to(torch.float32).contiguous()

    def nearest_index(self, state: torch.Tensor | None, image: torch.Tensor | None) -> torch.Tensor:
        q = self.key(state, image) - self.key_mean
        # argmin_i |q - k_i|^2 = argmin_i (|k_i|^2 - 2 q.k_i): |q|^2 is the same for every i.
        return torch.argmin(self.key_sqnorm[None, :] - 2.0 * torch.matmul(q, self.keys.t()), dim=1)

    def forward(self, state: torch.Tensor | None, image: torch.Tensor | None) -> torch.Tensor:
        return self.actions[self.nearest_index(state, image)]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # The table's size is that of the fitted dataset: take the stored shapes before copying.
        for name in ("keys", "key_sqnorm", "actions"):
            value = state_dict.get(prefix + name)
            if isinstance(value, torch.Tensor) and value.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(value, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


@register
class NearestNeighbor(Algorithm):
    """Nearest neighbour in observation space; nothing to train (`fit_dataset` stores the data)."""

    name = "nn"
    config_cls = NearestConfig

    def __init__(self, spec: PolicySpec, config: NearestConfig) -> None:
        super().__init__(spec, config)
        self.table = _NearestNet(spec, config)
        self.scale = ActionScale(spec)

    @property
    def size(self) -> int:
        """Number of stored (key, action) pairs."""
        return int(self.table.keys.shape[0])

    @torch.no_grad()
    def fit_dataset(self, arrays: dict[str, np.ndarray]) -> None:
        """Store every (observation, action) pair: "state" (M, S), "image" (M, H, W, 3), "action" (M, A) raw units."""
        if "action" not in arrays:
            raise SpecError("nearest neighbour needs the dataset's 'action' array")
        actions = np.asarray(arrays["action"], np.float32)
        if actions.ndim != 2 or actions.shape[1] != self.spec.action_dim or actions.shape[0] == 0:
            raise SpecError(f"action has shape {actions.shape}, expected (M >= 1, {self.spec.action_dim})")
        device = module_device(self)
        keys = []
        for start in range(0, actions.shape[0], _FIT_CHUNK):
            chunk = {k: arrays[k][start: start + _FIT_CHUNK] for k in ("state", "image") if k in arrays}
            state, image = obs_to_tensors(self.spec, chunk, device)
            if (state if state is not None else image).shape[0] != min(_FIT_CHUNK, actions.shape[0] - start):
                raise SpecError("observation arrays and 'action' differ in length")
            keys.append(self.table.key(state, image))
        self.table.set_table(torch.cat(keys), torch.as_tensor(actions, device=device))

    def _check_fitted(self) -> None:
        if self.size == 0:
            raise RuntimeError("nearest neighbour has no data: call fit_dataset(arrays) first")

    def compute_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Nothing to optimize: "loss" is the normalized-action MSE of the lookup on this batch (no gradient)."""
        self._check_fitted()
        with torch.no_grad():
            pred = self.scale.normalize(self.table(batch.get("state"), batch.get("image")))
            mse = ((pred - self.scale.normalize(batch["action"].to(pred.dtype))) ** 2).mean()
        return {"loss": mse, "mse": mse}

    @torch.no_grad()
    def predict(self, obs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Raw actions (B, A) of the nearest stored observations (deterministic; `rng` unused)."""
        self._check_fitted()
        state, image = obs_to_tensors(self.spec, obs, module_device(self))
        return self.table(state, image).cpu().numpy().astype(np.float32)

    def export_graph(self) -> ExportGraph:
        self._check_fitted()
        return explicit_export_graph(self.table, self.spec)
