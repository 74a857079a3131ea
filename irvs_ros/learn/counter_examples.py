"""Training-time counter-examples (negatives) for energy-based models, in torch.

- `uniform`: y ~ U(low, high) (IBC B.1).
- `dfo`: uniform samples moved toward low energy by rounds of IBC's derivative-free optimizer on the current
  model (resample by softmax(-E), add shrinking noise), with no gradient; IBC's reference agent can draw a
  fraction of its counter-examples this way (`fraction_dfo_samples`). They land in the model's own low-energy
  basins, where uniform samples rarely fall, so the loss pushes up wrong modes it would otherwise seldom see.
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


def dfo(energy_fn: Callable[[torch.Tensor], torch.Tensor], low: torch.Tensor, high: torch.Tensor, batch: int,
        num: int, iterations: int, noise_scale: float, noise_shrink: float, generator: torch.Generator) -> torch.Tensor:
    """Counter-examples (batch, num, D) from `iterations` rounds of DFO on `energy_fn` ((B, N, D) -> (B, N)).

    The runtime's DFO rounds (`runtime.argmin.dfo`): num uniform samples; each round but the last scores them,
    resamples with replacement by softmax(-E) per row, adds N(0, sigma^2) noise, clips to the box and shrinks
    sigma by noise_shrink. Returns the final samples (not only the best), detached; one round is uniform.
    """
    _check_bounds(low, high)
    if iterations < 1 or noise_scale < 0 or not 0 < noise_shrink <= 1:
        raise ValueError(f"need iterations >= 1, noise_scale >= 0 and 0 < noise_shrink <= 1, got {iterations}, "
                         f"{noise_scale}, {noise_shrink}")
    y = uniform(low, high, batch, num, generator)
    sigma = float(noise_scale)
    with torch.no_grad(), parametrize.cached():
        for _ in range(iterations - 1):
            probs = torch.softmax(-energy_fn(y).float(), dim=1)
            idx = torch.multinomial(probs.to(generator.device), num, replacement=True, generator=generator)
            y = torch.gather(y, 1, idx.to(y.device)[..., None].expand(-1, -1, y.shape[2]))
            y = y + sigma * _rand("normal", tuple(y.shape), generator, y.device)
            y = torch.maximum(torch.minimum(y, high), low)
            sigma *= noise_shrink
    return y.detach()


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
