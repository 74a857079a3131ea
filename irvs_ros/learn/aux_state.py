"""Auxiliary state regression for pixel policies: a training-only loss that teaches the image encoder where things are.

A simulated dataset records the scene's whole state (block pose, fixture pose, effector) next to each image, while
a pixel policy sees only the image (and a few `state_keys`). InfoNCE alone gives the encoder a weak, slow signal
about the block and fixture poses; regressing them from the observation features with a linear head is a direct
one (privileged supervision at training time only, as in asymmetric actor-critic set-ups). The head is not part of
the policy: the exported file is the same encoder and energy head, and the policy still needs only its image and
state keys at run time. Datasets without a recorded state (teleoperated bags carry only effector and setpoint)
simply have less to regress.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from irvs_ros.runtime.spec import StateLayout, state_slices

YAW_SUFFIX = "_yaw"  # state entries holding an angle (rad): regressed as (cos, sin), which does not wrap


def aux_targets(state: np.ndarray, layout: StateLayout | None) -> np.ndarray:
    """Regression targets (N, T) float32 from dataset states (N, S): each `*_yaw` entry of `layout` replaced by
    its (cos, sin); the whole state as is when `layout` is None (entries unnamed)."""
    state = np.asarray(state, dtype=np.float64)
    if state.ndim != 2:
        raise ValueError(f"state must be (N, S), got {state.shape}")
    if layout is None:
        return state.astype(np.float32)
    parts = []
    for name, sl in state_slices(layout).items():
        part = state[:, sl]
        parts += [np.cos(part), np.sin(part)] if name.endswith(YAW_SUFFIX) else [part]
    return np.concatenate(parts, axis=1).astype(np.float32)


class AuxStateHead(nn.Module):
    """Linear map from observation features (B, F) to standardized aux targets (B, T); owns their statistics."""

    def __init__(self, feat_dim: int, targets: np.ndarray) -> None:
        super().__init__()
        targets = np.asarray(targets, dtype=np.float64)
        if targets.ndim != 2 or len(targets) == 0:
            raise ValueError(f"targets must be a non-empty (N, T) array, got {targets.shape}")
        std = targets.std(axis=0)
        self.register_buffer("mean", torch.as_tensor(targets.mean(axis=0), dtype=torch.float32))
        # Constant entries (a fixed goal) would divide by zero; they are regressed in raw units instead.
        self.register_buffer("std", torch.as_tensor(np.where(std > 1e-6, std, 1.0), dtype=torch.float32))
        self.linear = nn.Linear(feat_dim, targets.shape[1])

    def loss(self, feat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error of standardized targets: feat (B, F), target (B, T) in raw units -> scalar."""
        z = (target.to(feat.device, torch.float32) - self.mean) / self.std
        return torch.mean((self.linear(feat) - z) ** 2)


class FeatureTap:
    """Keeps the first output of `encoder` since `reset()` (a forward hook), so a loss can reuse the features the
    algorithm's own loss computed instead of running the encoder twice."""

    def __init__(self, encoder: nn.Module) -> None:
        self.features: torch.Tensor | None = None
        self._handle = encoder.register_forward_hook(self._capture)

    def _capture(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        if self.features is None:
            self.features = output

    def reset(self) -> None:
        self.features = None

    def remove(self) -> None:
        self._handle.remove()
