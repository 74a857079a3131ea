"""Training-time counter-examples (negatives) for energy-based models, in torch.

- `uniform`: y ~ U(low, high) (IBC B.1).
- `langevin`: uniform samples moved by stochastic-gradient Langevin dynamics on the current energy, with no
  gradient flowing back through the chain (IBC B.3, IRvS Algorithm 1). The step rule and the polynomially
  decaying step sizes are those of `irvs_ros.runtime.argmin.langevin_chain`, so training negatives and
  inference samples come from the same dynamics.

All randomness comes from the `torch.Generator` passed in (exact resume); samples are drawn on the
generator's device and moved to the bounds' device.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.nn.utils import parametrize

from irvs_ros.runtime.argmin import polynomial_schedule

EnergyGradTorch = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""candidates (B, N, D) -> (energies (B, N), dE/dcandidates (B, N, D))."""


def _check_bounds(low: torch.Tensor, high: torch.Tensor) -> None:
    if low.dim() != 1 or low.shape != high.shape:
        raise ValueError(f"low and high must both be (D,), got {tuple(low.shape)} and {tuple(high.shape)}")
    if not bool(torch.all(low < high)):
        raise ValueError(f"need low < high in every dimension, got low={low.tolist()}, high={high.tolist()}")


def _rand(kind: str, shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    fn = torch.rand if kind == "uniform" else torch.randn
    return fn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(device)


def uniform(low: torch.Tensor, high: torch.Tensor, batch: int, num: int, generator: torch.Generator) -> torch.Tensor:
    """Counter-examples (batch, num, D) drawn uniformly in the box [low, high] (each (D,))."""
    _check_bounds(low, high)
    if batch < 1 or num < 1:
        raise ValueError(f"need batch >= 1 and num >= 1, got batch={batch}, num={num}")
    u = _rand("uniform", (batch, num, low.shape[0]), generator, low.device)
    return low + u * (high - low)


def langevin_steps(iterations: int, step_init: float, step_final: float, power: float) -> np.ndarray:
    """Step sizes (iterations,) of the training chain: the runtime's polynomial schedule."""
    return polynomial_schedule(step_init, step_final, power, iterations)


def langevin(energy_and_grad: EnergyGradTorch, init: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
             steps: np.ndarray | torch.Tensor, noise_scale: float, delta_clip: float,
             generator: torch.Generator) -> torch.Tensor:
    """Run a Langevin chain from `init` (B, N, D); returns the final samples (B, N, D), detached.

    Per step size s: delta = s * (0.5 * dE/dy + noise_scale * N(0, 1)), each coordinate clipped to
    +-delta_clip, then y <- clip(y - delta, low, high). Spectral-norm weights are computed once for the
    whole chain (the parameters do not change during it).
    """
    _check_bounds(low, high)
    if init.dim() != 3 or init.shape[2] != low.shape[0]:
        raise ValueError(f"init must be (B, N, {low.shape[0]}), got {tuple(init.shape)}")
    if delta_clip <= 0 or noise_scale < 0:
        raise ValueError(f"need delta_clip > 0 and noise_scale >= 0, got {delta_clip}, {noise_scale}")
    steps = [float(s) for s in np.asarray(steps, dtype=np.float32).reshape(-1)]
    y = init.detach().clone()
    with torch.no_grad(), parametrize.cached():
        for s in steps:
            _, grad = energy_and_grad(y)
            noise = _rand("normal", tuple(y.shape), generator, y.device)
            delta = (s * (0.5 * grad + noise_scale * noise)).clamp(-delta_clip, delta_clip)
            y = torch.maximum(torch.minimum(y - delta, high), low)
    return y.detach()
