"""Argmin of an energy over a box: DFO, autoregressive DFO and Langevin dynamics (numpy only).

One implementation of each optimizer, shared by the policy node and the trainer's evaluation:

- `dfo`: derivative-free optimizer, IBC appendix B.1, Algorithm 1.
- `autoregressive_dfo`: coordinate-wise DFO over per-dimension energies, IBC appendix B.2, Algorithm 2.
- `langevin`: stochastic gradient Langevin dynamics with a polynomially decaying step size, the full
  step clipped after gradient and noise are combined, and an optional second chain at inference
  (IBC appendix B.3; IRvS appendix A.1/A.2).
- `tilt_energy` / `tilt_energy_grad` / `tilt_energy_column`: the exponential tilt of IRvS eq. 8,
  E(a, G) - eta_inv * G.

Conventions. Candidates are float32 arrays (B, N, D): B observations (e.g. parallel evaluation
episodes), N candidates per observation, D action dimensions (for IRvS the last one is the normalized
return G). Bounds `low`/`high` are (D,) in the same normalized units as the candidates; every noise
scale, step and clip below is in those units too. All randomness comes from the `rng` argument, so a
generator seeded the same way gives an identical result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

EnergyFn = Callable[[np.ndarray], np.ndarray]
"""candidates (B, N, D) -> energies (B, N)."""

EnergyGradFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""candidates (B, N, D) -> (energies (B, N), dE/dx (B, N, D))."""

EnergyArFn = Callable[[np.ndarray], np.ndarray]
"""candidates (B, N, D) -> (B, N, D) where column j is E_j evaluated on x[..., :j+1]."""

EnergyColumnFn = Callable[[np.ndarray, int], np.ndarray]
"""(candidates (B, N, D), j) -> E_j evaluated on x[..., :j+1], (B, N): one model of an autoregressive energy."""


class ArgminError(ValueError):
    """Bad input to an argmin optimizer, or an energy function that returned something unusable."""


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ArgminError(f"{name} must be an int >= 1, got {value!r}")


def _check_finite_nonneg(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ArgminError(f"{name} must be a number, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ArgminError(f"{name} must be finite and >= 0, got {value!r}")


@dataclass(frozen=True)
class DfoConfig:
    """Derivative-free optimizer settings; defaults are IBC appendix B.1 (sigma_init, K, N_iters, N_samples).

    num_samples: candidates per observation (N).
    iterations: score/resample rounds (N_iters); the last round only scores.
    noise_scale: std of the Gaussian perturbation after the first resampling (sigma_init), normalized units.
    noise_shrink: factor applied to the noise std after each round (K).
    init_samples: uniform candidates scored in the first round, from which the first resampling draws
        num_samples (0: num_samples, as IBC). The first round is the global search for the right mode, the
        later ones refine it: a larger first round finds narrow wells that num_samples misses, at a fraction
        of the cost of more samples in every round (on the shipped push_insert file it did not match those:
        48% at init_samples 4096 against 58% at 4096 x 3; models/push_insert.md). DFO only (the
        autoregressive DFO resamples per dimension).
    """

    num_samples: int = 16384
    iterations: int = 3
    noise_scale: float = 0.33
    noise_shrink: float = 0.5
    init_samples: int = 0

    def __post_init__(self) -> None:
        _check_positive_int("DfoConfig.num_samples", self.num_samples)
        if not (isinstance(self.init_samples, int | np.integer) and self.init_samples >= 0):
            raise ArgminError(f"DfoConfig.init_samples must be an integer >= 0, got {self.init_samples!r}")
        _check_positive_int("DfoConfig.iterations", self.iterations)
        _check_finite_nonneg("DfoConfig.noise_scale", self.noise_scale)
        _check_finite_nonneg("DfoConfig.noise_shrink", self.noise_shrink)


@dataclass(frozen=True)
class LangevinConfig:
    """Langevin dynamics settings.

    Defaults are the IRvS appendix A.2 table (the same as IBC's D4RL table in appendix D.1): 100
    iterations, step 0.5 -> 1e-5 with polynomial decay power 2, delta clip 0.5, noise scale 0.5, second
    chain with step 1e-5. num_samples = 512 is the number of inference candidates of IBC's released D4RL
    Langevin configuration (the papers' tables do not list it). `PARTICLE_LANGEVIN` holds IBC's
    N-D particle table (appendix D.3).

    num_samples: candidates per observation (N) when no initial samples are given.
    iterations: Langevin steps per chain (K).
    step_init, step_final, decay_power: step-size schedule, see `polynomial_schedule`.
    delta_clip: each coordinate of a step's full delta is clipped to +-delta_clip (normalized units).
    noise_scale: std of the Gaussian noise term, added to 0.5 * gradient before scaling by the step.
    second_chain_step: initial step of a second chain run at inference (schedule decays from it to
        step_final over the same number of steps); None runs a single chain.
    """

    num_samples: int = 512
    iterations: int = 100
    step_init: float = 0.5
    step_final: float = 1e-5
    decay_power: float = 2.0
    delta_clip: float = 0.5
    noise_scale: float = 0.5
    second_chain_step: float | None = 1e-5

    def __post_init__(self) -> None:
        _check_positive_int("LangevinConfig.num_samples", self.num_samples)
        _check_positive_int("LangevinConfig.iterations", self.iterations)
        _check_finite_nonneg("LangevinConfig.step_init", self.step_init)
        _check_finite_nonneg("LangevinConfig.step_final", self.step_final)
        _check_finite_nonneg("LangevinConfig.decay_power", self.decay_power)
        _check_finite_nonneg("LangevinConfig.noise_scale", self.noise_scale)
        _check_finite_nonneg("LangevinConfig.delta_clip", self.delta_clip)
        if self.delta_clip == 0:
            raise ArgminError("LangevinConfig.delta_clip must be > 0 (0 would freeze the chain)")
        if self.second_chain_step is not None:
            _check_finite_nonneg("LangevinConfig.second_chain_step", self.second_chain_step)


PARTICLE_LANGEVIN = LangevinConfig(
    num_samples=512,
    iterations=50,
    step_init=0.1,
    step_final=1e-5,
    decay_power=2.0,
    delta_clip=0.1,
    noise_scale=1.0,
    second_chain_step=None,
)
"""IBC appendix D.3 (N-D particle) Langevin settings; the table says the second chain is not used."""


@dataclass
class ArgminResult:
    """Result of an optimizer for B observations.

    x: (B, D) float32, the lowest-energy final candidate per observation.
    energy: (B,) float32, its energy (as returned by the energy function that was optimized).
    samples: (B, N, D) float32, the final candidates.
    energies: (B, N) float32, their energies (re-scored after the last update).
    """

    x: np.ndarray
    energy: np.ndarray
    samples: np.ndarray
    energies: np.ndarray


# ----------------------------------------------------------------------------------------------------
# Schedules and tilt


def polynomial_schedule(init: float, final: float, power: float, num_steps: int) -> np.ndarray:
    """Step sizes (num_steps,) float32 decaying from `init` (step 0) to `final` (last step).

    step_k = (init - final) * (1 - k / (num_steps - 1)) ** power + final; a single step uses `init`.
    The trainer's own Langevin (training negatives) imports this so training and inference share one schedule.
    """
    _check_finite_nonneg("polynomial_schedule init", init)
    _check_finite_nonneg("polynomial_schedule final", final)
    _check_finite_nonneg("polynomial_schedule power", power)
    _check_positive_int("polynomial_schedule num_steps", num_steps)
    if num_steps == 1:
        return np.array([init], dtype=np.float32)
    frac = 1.0 - np.arange(num_steps, dtype=np.float64) / (num_steps - 1)
    return ((init - final) * frac**power + final).astype(np.float32)


def tilt_energy(fn: EnergyFn, eta_inv: float) -> EnergyFn:
    """Exponentially tilted energy E(x) - eta_inv * x[..., -1] (IRvS eq. 8; the last column is normalized G).

    eta_inv = 0 gives back `fn` itself (IBC).
    """
    _check_finite_nonneg("eta_inv", eta_inv)
    if eta_inv == 0:
        return fn
    scale = np.float32(eta_inv)

    def tilted(x: np.ndarray) -> np.ndarray:
        return np.asarray(fn(x)) - scale * x[..., -1]

    return tilted


def tilt_energy_grad(fn: EnergyGradFn, eta_inv: float) -> EnergyGradFn:
    """Tilted energy and its gradient: (E - eta_inv * G, dE/dx - eta_inv * e_last) (IRvS eq. 8).

    eta_inv = 0 gives back `fn` itself (IBC).
    """
    _check_finite_nonneg("eta_inv", eta_inv)
    if eta_inv == 0:
        return fn
    scale = np.float32(eta_inv)

    def tilted(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        energy, grad = fn(x)
        grad = np.array(grad, dtype=np.float32, copy=True)
        grad[..., -1] -= scale
        return np.asarray(energy) - scale * x[..., -1], grad

    return tilted


def tilt_energy_column(fn: EnergyColumnFn, eta_inv: float) -> EnergyColumnFn:
    """Tilt for autoregressive energies: only the last model (the one that sees G) gets - eta_inv * G."""
    _check_finite_nonneg("eta_inv", eta_inv)
    if eta_inv == 0:
        return fn
    scale = np.float32(eta_inv)

    def tilted(x: np.ndarray, j: int) -> np.ndarray:
        out = np.asarray(fn(x, j), dtype=np.float32)
        if j == x.shape[-1] - 1 and out.shape == x.shape[:2]:  # a wrong shape is reported by the optimizer
            out = out - scale * x[..., -1]
        return out

    return tilted


def ar_columns(energy_ar_fn: EnergyArFn) -> EnergyColumnFn:
    """An EnergyColumnFn over a function that returns every model's energy at once (B, N, D): column j of it.
    Costs D models per call; a policy file or network that can run model j alone should do so instead."""

    def column(x: np.ndarray, j: int) -> np.ndarray:
        return _energies_ar(energy_ar_fn, x)[..., j]

    return column


# ----------------------------------------------------------------------------------------------------
# Optimizers


def dfo(
    energy_fn: EnergyFn,
    low: np.ndarray,
    high: np.ndarray,
    batch_size: int,
    cfg: DfoConfig,
    rng: np.random.Generator,
) -> ArgminResult:
    """Derivative-free argmin of `energy_fn` over the box [low, high] for `batch_size` observations.

    IBC Algorithm 1: uniform candidates; each round scores them, resamples with replacement by
    softmax(-E) per observation, adds Gaussian noise, clips to the box and shrinks the noise. The
    final candidates are scored once more and the lowest-energy one is returned per observation.
    """
    low, high = _check_bounds(low, high)
    _check_positive_int("batch_size", batch_size)
    _check_rng(rng)
    shape = (batch_size, cfg.init_samples or cfg.num_samples, low.shape[0])
    samples = _uniform(rng, low, high, shape)
    sigma = float(cfg.noise_scale)
    for it in range(cfg.iterations):
        energies = _energies(energy_fn, samples, "energy_fn")
        if it == cfg.iterations - 1:
            break
        samples = _gather(samples, _resample_indices(energies, rng, cfg.num_samples))
        samples = _noise_and_clip(samples, sigma, low, high, rng)
        sigma *= cfg.noise_shrink
    return _best(samples, energies)


def autoregressive_dfo(
    energy_column_fn: EnergyColumnFn,
    low: np.ndarray,
    high: np.ndarray,
    batch_size: int,
    cfg: DfoConfig,
    rng: np.random.Generator,
) -> ArgminResult:
    """Coordinate-wise derivative-free argmin with per-dimension energies (IBC appendix B.2, Algorithm 2).

    `energy_column_fn(x, j)` returns E_j(x[..., :j+1]) (B, N); `ar_columns` adapts a function that returns all
    D models at once. Dimensions are chosen one at a time, j = 0..D-1: with the prefix x[:j] fixed to the
    values already chosen, a one-dimensional DFO
    (Algorithm 1 on dimension j alone: uniform start, `iterations` rounds of scoring by E_j, resampling by
    softmax(-E_j), noise shrinking by `noise_shrink`, the last round only scores) picks x_j, and the next
    dimension starts from that prefix.

    Why the prefix is fixed, not resampled with x_j as in the paper's box: our E_j is trained by InfoNCE
    against counter-examples that share the demonstration's prefix (`learn.algorithms.ebm.EbmAdfo`), so it
    ranks x_j given a prefix and is defined only up to a prefix-dependent constant; comparing E_j across
    candidates with different prefixes (resampling the prefix by it, or picking the final candidate by
    E_{D-1}) compares those arbitrary constants. Only candidates that share a prefix are compared here.

    Result: x (B, D); samples (B, N, D) the last dimension's final candidates (prefix = x[:D-1]) and
    energies (B, N) their E_{D-1}; energy the chosen one's E_{D-1}.
    """
    low, high = _check_bounds(low, high)
    _check_positive_int("batch_size", batch_size)
    _check_rng(rng)
    if cfg.init_samples not in (0, cfg.num_samples):
        raise ArgminError(f"DfoConfig.init_samples ({cfg.init_samples}) is for DFO; the autoregressive DFO scores "
                          f"num_samples ({cfg.num_samples}) in every round (set init_samples 0)")
    dim = low.shape[0]
    # Columns after j are not read by E_j; they keep their uniform start until their turn.
    samples = _uniform(rng, low, high, (batch_size, cfg.num_samples, dim))
    rows = np.arange(batch_size)
    for j in range(dim):
        sigma = float(cfg.noise_scale)
        for it in range(cfg.iterations):
            energies = _energies_column(energy_column_fn, samples, j)
            if it == cfg.iterations - 1:
                break
            picked = samples[rows[:, None], _resample_indices(energies, rng), j]
            noise = rng.standard_normal(picked.shape, dtype=np.float32)
            samples[..., j] = np.clip(picked + np.float32(sigma) * noise, low[j], high[j])
            sigma *= cfg.noise_shrink
        if j < dim - 1:
            samples[..., j] = samples[rows, np.argmin(energies, axis=1), j][:, None]
    return _best(samples, np.ascontiguousarray(energies))


def langevin_chain(
    energy_grad_fn: EnergyGradFn,
    samples: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    steps: np.ndarray,
    cfg: LangevinConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Run one Langevin chain from `samples` (B, N, D); returns the final samples (B, N, D) float32.

    For each step size s in `steps` (K,): delta = s * (0.5 * dE/dx + noise_scale * N(0, 1)), each
    coordinate of delta clipped to +-cfg.delta_clip, x <- clip(x - delta, low, high). Only
    cfg.noise_scale and cfg.delta_clip are read from `cfg`. The input array is not modified.
    """
    low, high = _check_bounds(low, high)
    _check_rng(rng)
    x = _check_samples(samples, low.shape[0], "samples")
    steps = np.asarray(steps, dtype=np.float32)
    if steps.ndim != 1 or not np.all(np.isfinite(steps)) or np.any(steps < 0):
        raise ArgminError(f"steps must be a 1-D array of finite step sizes >= 0, got shape {steps.shape}")
    clip = np.float32(cfg.delta_clip)
    noise_scale = np.float32(cfg.noise_scale)
    for step in steps:
        _, grad = _energies_and_grads(energy_grad_fn, x)
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        delta = step * (np.float32(0.5) * grad + noise_scale * noise)
        x = np.clip(x - np.clip(delta, -clip, clip), low, high)
    return x


def langevin(
    energy_grad_fn: EnergyGradFn,
    low: np.ndarray,
    high: np.ndarray,
    batch_size: int,
    cfg: LangevinConfig,
    rng: np.random.Generator,
    init: np.ndarray | None = None,
) -> ArgminResult:
    """Langevin-dynamics argmin of an energy over the box [low, high] for `batch_size` observations.

    Starts from `init` (B, N, D) (e.g. DFO's final samples; clipped to the box) or from N =
    cfg.num_samples uniform candidates, runs one chain with the schedule step_init -> step_final and,
    when cfg.second_chain_step is set, a second chain second_chain_step -> step_final (IBC B.3 runs
    the chain a second time at inference). The final samples are re-scored and the lowest-energy one
    per observation is returned.
    """
    low, high = _check_bounds(low, high)
    _check_positive_int("batch_size", batch_size)
    _check_rng(rng)
    dim = low.shape[0]
    if init is None:
        samples = _uniform(rng, low, high, (batch_size, cfg.num_samples, dim))
    else:
        samples = _check_samples(init, dim, "init")
        if samples.shape[0] != batch_size:
            raise ArgminError(f"init must have batch size {batch_size} on axis 0, got shape {samples.shape}")
        samples = np.clip(samples, low, high)
    steps = polynomial_schedule(cfg.step_init, cfg.step_final, cfg.decay_power, cfg.iterations)
    samples = langevin_chain(energy_grad_fn, samples, low, high, steps, cfg, rng)
    if cfg.second_chain_step is not None:
        steps = polynomial_schedule(cfg.second_chain_step, cfg.step_final, cfg.decay_power, cfg.iterations)
        samples = langevin_chain(energy_grad_fn, samples, low, high, steps, cfg, rng)
    energies, _ = _energies_and_grads(energy_grad_fn, samples)
    return _best(samples, energies)


# ----------------------------------------------------------------------------------------------------
# Helpers


def _check_rng(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ArgminError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def _check_bounds(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    low = np.asarray(low, dtype=np.float32)
    high = np.asarray(high, dtype=np.float32)
    if low.ndim != 1 or low.shape[0] < 1:
        raise ArgminError(f"low must have shape (D,) with D >= 1, got shape {low.shape}")
    if high.shape != low.shape:
        raise ArgminError(f"high must have the same shape as low {low.shape}, got {high.shape}")
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ArgminError(f"bounds must be finite, got low={low}, high={high}")
    if np.any(low >= high):
        raise ArgminError(f"need low < high in every dimension, got low={low}, high={high}")
    return low, high


def _check_samples(samples: np.ndarray, dim: int, name: str) -> np.ndarray:
    x = np.array(samples, dtype=np.float32, copy=True)
    if x.ndim != 3 or x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] != dim:
        raise ArgminError(f"{name} must have shape (B, N, {dim}) with B, N >= 1, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ArgminError(f"{name} must be finite")
    return x


def _uniform(rng: np.random.Generator, low: np.ndarray, high: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    # Rounding of low + u * (high - low) can land on `high`; the clip keeps it inside the box anyway.
    u = rng.random(shape, dtype=np.float32)
    return np.clip(low + u * (high - low), low, high)


def _energies(fn: EnergyFn, x: np.ndarray, name: str) -> np.ndarray:
    energies = np.asarray(fn(x))
    if energies.shape != x.shape[:2]:
        raise ArgminError(f"{name} must return energies of shape {x.shape[:2]} (B, N), got {energies.shape}")
    energies = energies.astype(np.float32, copy=False)
    if not np.all(np.isfinite(energies)):
        raise ArgminError(f"{name} returned non-finite energies (NaN or inf)")
    return energies


def _energies_ar(fn: EnergyArFn, x: np.ndarray) -> np.ndarray:
    energies = np.asarray(fn(x))
    if energies.shape != x.shape:
        raise ArgminError(
            f"energy_ar_fn must return per-dimension energies of shape {x.shape} (B, N, D), got {energies.shape}"
        )
    energies = energies.astype(np.float32, copy=False)
    if not np.all(np.isfinite(energies)):
        raise ArgminError("energy_ar_fn returned non-finite energies (NaN or inf)")
    return energies


def _energies_column(fn: EnergyColumnFn, x: np.ndarray, j: int) -> np.ndarray:
    energies = np.asarray(fn(x, j))
    if energies.shape != x.shape[:2]:
        raise ArgminError(f"energy_column_fn must return model {j}'s energies of shape {x.shape[:2]} (B, N), got "
                          f"{energies.shape}")
    energies = energies.astype(np.float32, copy=False)
    if not np.all(np.isfinite(energies)):
        raise ArgminError(f"energy_column_fn returned non-finite energies (NaN or inf) for model {j}")
    return energies


def _energies_and_grads(fn: EnergyGradFn, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = fn(x)
    if not isinstance(out, tuple) or len(out) != 2:
        raise ArgminError("energy_grad_fn must return a tuple (energies (B, N), gradients (B, N, D))")
    energies = np.asarray(out[0])
    grads = np.asarray(out[1])
    if energies.shape != x.shape[:2]:
        raise ArgminError(f"energy_grad_fn must return energies of shape {x.shape[:2]}, got {energies.shape}")
    if grads.shape != x.shape:
        raise ArgminError(f"energy_grad_fn must return gradients of shape {x.shape}, got {grads.shape}")
    energies = energies.astype(np.float32, copy=False)
    grads = grads.astype(np.float32, copy=False)
    if not (np.all(np.isfinite(energies)) and np.all(np.isfinite(grads))):
        raise ArgminError("energy_grad_fn returned non-finite energies or gradients (NaN or inf)")
    return energies, grads


def _resample_indices(energies: np.ndarray, rng: np.random.Generator, draws: int | None = None) -> np.ndarray:
    """Indices (B, draws) into the N columns of energies (B, N), drawn with replacement per row from
    softmax(-energies) (multinomial resampling); draws defaults to N."""
    batch, num = energies.shape
    draws = num if draws is None else draws
    # Shift by the row minimum so the largest weight is exp(0) = 1: no overflow, no all-zero row.
    logits = -(energies.astype(np.float64) - energies.min(axis=1, keepdims=True))
    cdf = np.cumsum(np.exp(logits), axis=1)
    cdf /= cdf[:, -1:]
    # Offsetting row b by b turns B per-row inverse-CDF lookups into one sorted search.
    offsets = np.arange(batch, dtype=np.float64)[:, None]
    flat_cdf = (cdf + offsets).ravel()
    u = rng.random((batch, draws)) + offsets
    idx = np.searchsorted(flat_cdf, u.ravel(), side="right").reshape(batch, draws)
    return np.clip(idx - offsets.astype(np.int64) * num, 0, num - 1)


def _gather(samples: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return samples[np.arange(samples.shape[0])[:, None], idx]


def _noise_and_clip(
    samples: np.ndarray, sigma: float, low: np.ndarray, high: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    noise = rng.standard_normal(samples.shape, dtype=np.float32)
    return np.clip(samples + np.float32(sigma) * noise, low, high)


def _best(samples: np.ndarray, energies: np.ndarray) -> ArgminResult:
    best = np.argmin(energies, axis=1)
    rows = np.arange(samples.shape[0])
    return ArgminResult(
        x=samples[rows, best].astype(np.float32),
        energy=energies[rows, best].astype(np.float32),
        samples=samples.astype(np.float32, copy=False),
        energies=energies.astype(np.float32, copy=False),
    )
