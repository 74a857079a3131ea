"""Argmin optimizers of the runtime: DFO, autoregressive DFO, Langevin, tilt, schedule, input checks."""

from __future__ import annotations

import numpy as np
import pytest

from irvs_ros.runtime.argmin import (
    PARTICLE_LANGEVIN,
    ArgminError,
    ArgminResult,
    DfoConfig,
    LangevinConfig,
    ar_columns,
    autoregressive_dfo,
    dfo,
    langevin,
    langevin_chain,
    polynomial_schedule,
    tilt_energy,
    tilt_energy_column,
    tilt_energy_grad,
)

LOW2 = np.array([-1.0, -1.0], dtype=np.float32)
HIGH2 = np.array([1.0, 1.0], dtype=np.float32)
C2 = np.array([0.3, 0.4], dtype=np.float32)


def quad(center, scale=100.0):
    """E = scale * ||x - center||^2 over the last axis."""
    center = np.asarray(center, dtype=np.float32)
    return lambda x: scale * np.sum((x - center) ** 2, axis=-1)


def quad_grad(center, scale=100.0):
    center = np.asarray(center, dtype=np.float32)
    return lambda x: (scale * np.sum((x - center) ** 2, axis=-1), 2.0 * scale * (x - center))


def quad_ar_full(center, scale=100.0):
    """(B, N, D) whose column j = scale * sum_{k<=j} (x_k - c_k)^2, the autoregressive form of `quad`."""
    center = np.asarray(center, dtype=np.float32)
    return lambda x: scale * np.cumsum((x - center) ** 2, axis=-1)


def quad_ar(center, scale=100.0):
    """Model j of `quad_ar_full` alone: (x, j) -> (B, N)."""
    center = np.asarray(center, dtype=np.float32)
    return lambda x, j: scale * np.sum((x[..., : j + 1] - center[: j + 1]) ** 2, axis=-1)


def rng(seed=0):
    return np.random.default_rng(seed)


def check_result(res: ArgminResult, batch: int, num: int, dim: int) -> None:
    assert res.x.shape == (batch, dim) and res.x.dtype == np.float32
    assert res.energy.shape == (batch,) and res.energy.dtype == np.float32
    assert res.samples.shape == (batch, num, dim) and res.samples.dtype == np.float32
    assert res.energies.shape == (batch, num) and res.energies.dtype == np.float32
    # The returned candidate is the lowest-energy final sample of its row.
    np.testing.assert_array_equal(res.energy, res.energies.min(axis=1))


# ---------------------------------------------------------------------------------------------------
# Finding known minima


def test_dfo_finds_quadratic_minimum_and_rescores_final_samples():
    fn = quad(C2)
    res = dfo(fn, LOW2, HIGH2, batch_size=3, cfg=DfoConfig(), rng=rng())
    check_result(res, 3, 16384, 2)
    assert np.all(np.linalg.norm(res.x - C2, axis=1) < 0.01)
    # The reported energies belong to the returned samples (not to the samples before the last noise).
    np.testing.assert_allclose(res.energies, fn(res.samples), rtol=1e-6)
    np.testing.assert_allclose(res.energy, fn(res.x), rtol=1e-6)


def test_dfo_is_vectorised_over_observations_with_different_minima():
    centers = np.array([[0.3, 0.4], [-0.6, 0.1], [0.0, -0.8]], dtype=np.float32)

    def fn(x):  # row b has its minimum at centers[b]
        return 100.0 * np.sum((x - centers[:, None, :]) ** 2, axis=-1)

    res = dfo(fn, LOW2, HIGH2, batch_size=3, cfg=DfoConfig(), rng=rng(1))
    assert np.all(np.linalg.norm(res.x - centers, axis=1) < 0.01)


def test_dfo_larger_first_round_finds_a_narrow_well_that_the_default_misses():
    """A deep well (std 0.03) at (0.7, 0.7) beside a broad shallow bowl at the origin: 64 uniform candidates
    seldom land in the well and the resampling then refines the bowl; a first round of 4096 finds the well in
    most observations (the refining rounds' noise still loses some), and returns num_samples (64) candidates."""
    well = np.array([0.7, 0.7], dtype=np.float32)

    def fn(x):
        broad = np.sum(x**2, axis=-1)
        deep = -20.0 * np.exp(-np.sum((x - well) ** 2, axis=-1) / (2 * 0.03**2))
        return broad + deep

    def found(cfg):
        res = dfo(fn, LOW2, HIGH2, batch_size=200, cfg=cfg, rng=rng(5))
        return res, float(np.mean(np.linalg.norm(res.x - well, axis=1) < 0.1))

    plain, plain_rate = found(DfoConfig(num_samples=64))
    wide, wide_rate = found(DfoConfig(num_samples=64, init_samples=4096))
    check_result(wide, 200, 64, 2)
    assert plain_rate < 0.4 and wide_rate > 0.75, (plain_rate, wide_rate)  # measured 0.29 and 0.875
    # one round only: the best of init_samples uniform candidates
    one = dfo(fn, LOW2, HIGH2, batch_size=2, cfg=DfoConfig(num_samples=8, iterations=1, init_samples=512), rng=rng())
    check_result(one, 2, 512, 2)


def test_autoregressive_dfo_finds_quadratic_minimum():
    res = autoregressive_dfo(quad_ar(C2), LOW2, HIGH2, batch_size=2, cfg=DfoConfig(), rng=rng())
    check_result(res, 2, 16384, 2)
    assert np.all(np.linalg.norm(res.x - C2, axis=1) < 0.01)
    # Result energies are the full (last-column) energy of the final samples.
    np.testing.assert_allclose(res.energies, quad(C2)(res.samples), rtol=1e-5)


def test_autoregressive_dfo_scales_to_8d_where_dfo_does_not():
    center = np.linspace(0.5, -0.5, 8).astype(np.float32)
    low, high = -np.ones(8, np.float32), np.ones(8, np.float32)
    cfg = DfoConfig(num_samples=4096)
    ar = autoregressive_dfo(quad_ar(center), low, high, batch_size=2, cfg=cfg, rng=rng(2))
    plain = dfo(quad(center), low, high, batch_size=2, cfg=cfg, rng=rng(2))
    ar_err = np.abs(ar.x - center).max()
    plain_err = np.abs(plain.x - center).max()
    assert ar_err < 0.06
    assert ar_err < 0.5 * plain_err


def test_autoregressive_dfo_uses_column_j_for_dimension_j():
    # Column 0 wants x0 = -0.5; the full energy (column 1) is indifferent to x0 and wants x1 = 0.7.
    # Only an optimizer that uses column 0 while working on dimension 0 ends with x0 near -0.5.
    def fn(x):
        col0 = 100.0 * (x[..., 0] + 0.5) ** 2
        col1 = 100.0 * (x[..., 1] - 0.7) ** 2
        return np.stack([col0, col1], axis=-1)

    res = autoregressive_dfo(ar_columns(fn), LOW2, HIGH2, batch_size=2, cfg=DfoConfig(num_samples=4096),
                             rng=rng(3))
    assert np.all(np.abs(res.x[:, 0] + 0.5) < 0.01)
    assert np.all(np.abs(res.x[:, 1] - 0.7) < 0.01)


def test_autoregressive_dfo_never_compares_energies_across_prefixes():
    """Column 1 is what conditional InfoNCE learns: it ranks x1 given x0 (minimum at x1 = 0.7 for every x0) plus an
    arbitrary offset in x0 (here lowest at x0 = +0.5). Column 0 wants x0 = -0.5. Resampling the prefix by column 1
    or picking the final candidate by it would drag x0 to +0.5; fixing the prefix keeps x0 at column 0's choice."""
    def fn(x):
        col0 = 100.0 * (x[..., 0] + 0.5) ** 2
        col1 = 100.0 * (x[..., 1] - 0.7) ** 2 + 50.0 * (x[..., 0] - 0.5) ** 2
        return np.stack([col0, col1], axis=-1)

    res = autoregressive_dfo(ar_columns(fn), LOW2, HIGH2, batch_size=4, cfg=DfoConfig(num_samples=1024),
                             rng=rng(4))
    check_result(res, 4, 1024, 2)
    assert np.all(np.abs(res.x[:, 0] + 0.5) < 0.01), res.x
    assert np.all(np.abs(res.x[:, 1] - 0.7) < 0.01), res.x
    # The final candidates share the chosen prefix and vary only the last dimension.
    assert np.all(res.samples[..., 0] == res.x[:, None, 0])
    assert np.ptp(res.samples[..., 1]) > 0


def test_langevin_finds_quadratic_minimum_with_both_configs():
    for cfg in (LangevinConfig(), PARTICLE_LANGEVIN):
        res = langevin(quad_grad(C2), LOW2, HIGH2, batch_size=3, cfg=cfg, rng=rng())
        check_result(res, 3, cfg.num_samples, 2)
        assert np.all(np.linalg.norm(res.x - C2, axis=1) < 0.1)
        np.testing.assert_allclose(res.energies, quad(C2)(res.samples), rtol=1e-6)


def test_one_dimensional_actions():
    low, high = np.array([-1.0], np.float32), np.array([1.0], np.float32)
    c = np.array([-0.35], np.float32)
    cfg_d = DfoConfig(num_samples=2048)
    for res in (
        dfo(quad(c), low, high, 2, cfg_d, rng()),
        autoregressive_dfo(quad_ar(c), low, high, 2, cfg_d, rng()),
        langevin(quad_grad(c), low, high, 2, LangevinConfig(num_samples=64), rng()),
    ):
        assert res.x.shape == (2, 1)
        assert np.all(np.abs(res.x - c) < 0.01)


def test_langevin_starts_from_given_init_of_other_size():
    init = np.full((2, 7, 2), -0.9, dtype=np.float32)
    res = langevin(quad_grad(C2), LOW2, HIGH2, 2, PARTICLE_LANGEVIN, rng(), init=init)
    check_result(res, 2, 7, 2)
    assert np.all(np.linalg.norm(res.x - C2, axis=1) < 0.1)
    assert np.all(init == -0.9)  # caller's array untouched


# ---------------------------------------------------------------------------------------------------
# Tilt (IRvS eq. 8)

# Energy over (a, G): E = 20 (a - G/2)^2 + 5 G^2. Tilted by eta_inv its argmin is G = eta_inv / 10,
# a = G / 2 (and (0, 0) without tilt).


def ag_energy(x):
    a, g = x[..., 0], x[..., 1]
    return 20.0 * (a - 0.5 * g) ** 2 + 5.0 * g**2


def ag_energy_grad(x):
    a, g = x[..., 0], x[..., 1]
    da = 40.0 * (a - 0.5 * g)
    dg = -20.0 * (a - 0.5 * g) + 10.0 * g
    return ag_energy(x), np.stack([da, dg], axis=-1)


def test_tilt_moves_argmin_toward_larger_return():
    cfg = DfoConfig(num_samples=8192)
    gs = []
    for eta_inv in (0.0, 2.0, 5.0):
        res = dfo(tilt_energy(ag_energy, eta_inv), LOW2, HIGH2, 2, cfg, rng(4))
        np.testing.assert_allclose(res.x[:, 1], eta_inv / 10.0, atol=0.03)
        np.testing.assert_allclose(res.x[:, 0], eta_inv / 20.0, atol=0.03)
        gs.append(res.x[:, 1].mean())
    assert gs[0] < gs[1] < gs[2]


def test_tilt_with_langevin_gradient():
    lcfg = LangevinConfig(num_samples=128)
    g_plain = langevin(tilt_energy_grad(ag_energy_grad, 0.0), LOW2, HIGH2, 2, lcfg, rng(5)).x[:, 1]
    g_tilt = langevin(tilt_energy_grad(ag_energy_grad, 5.0), LOW2, HIGH2, 2, lcfg, rng(5)).x[:, 1]
    np.testing.assert_allclose(g_plain, 0.0, atol=0.1)
    np.testing.assert_allclose(g_tilt, 0.5, atol=0.1)


def test_tilt_values_and_zero_tilt_is_identity():
    x = rng().uniform(-1, 1, (2, 5, 2)).astype(np.float32)
    np.testing.assert_allclose(tilt_energy(ag_energy, 3.0)(x), ag_energy(x) - 3.0 * x[..., 1], rtol=1e-6)
    e, g = tilt_energy_grad(ag_energy_grad, 3.0)(x)
    e0, g0 = ag_energy_grad(x)
    np.testing.assert_allclose(e, e0 - 3.0 * x[..., 1], rtol=1e-6)
    np.testing.assert_allclose(g[..., 0], g0[..., 0], rtol=1e-6)
    np.testing.assert_allclose(g[..., 1], g0[..., 1] - 3.0, rtol=1e-6)
    col = tilt_energy_column(quad_ar(C2), 3.0)
    np.testing.assert_allclose(col(x, 0), quad_ar_full(C2)(x)[..., 0], rtol=1e-6)
    np.testing.assert_allclose(col(x, 1), quad_ar_full(C2)(x)[..., 1] - 3.0 * x[..., 1], rtol=1e-5)
    np.testing.assert_allclose(ar_columns(quad_ar_full(C2))(x, 1), quad_ar(C2)(x, 1), rtol=1e-6)
    # eta_inv = 0 is exactly no tilt: same values and, from the same seed, the same optimizer result.
    np.testing.assert_array_equal(tilt_energy(ag_energy, 0.0)(x), ag_energy(x))
    cfg = DfoConfig(num_samples=512)
    a = dfo(tilt_energy(ag_energy, 0.0), LOW2, HIGH2, 2, cfg, rng(6))
    b = dfo(ag_energy, LOW2, HIGH2, 2, cfg, rng(6))
    np.testing.assert_array_equal(a.samples, b.samples)
    with pytest.raises(ArgminError, match="eta_inv"):
        tilt_energy(ag_energy, -1.0)
    with pytest.raises(ArgminError, match="eta_inv"):
        tilt_energy_grad(ag_energy_grad, float("nan"))


# ---------------------------------------------------------------------------------------------------
# Clipping


def test_minimum_outside_bounds_gives_result_on_the_bound():
    outside = np.array([2.0, 0.4], dtype=np.float32)
    results = (
        dfo(quad(outside), LOW2, HIGH2, 2, DfoConfig(num_samples=4096), rng()),
        autoregressive_dfo(quad_ar(outside), LOW2, HIGH2, 2, DfoConfig(num_samples=4096), rng()),
        langevin(quad_grad(outside), LOW2, HIGH2, 2, PARTICLE_LANGEVIN, rng()),
    )
    for res in results:
        assert np.all(res.x[:, 0] == 1.0)
        assert np.all(np.abs(res.x[:, 1] - 0.4) < 0.1)
        assert np.all(res.samples >= LOW2) and np.all(res.samples <= HIGH2)


def test_dfo_noise_is_clipped_to_bounds():
    low, high = np.array([0.0, -0.1], np.float32), np.array([0.1, 0.0], np.float32)
    flat = lambda x: np.zeros(x.shape[:2], np.float32)  # noqa: E731
    res = dfo(flat, low, high, 2, DfoConfig(num_samples=1000, noise_scale=5.0), rng())
    assert np.all(res.samples >= low) and np.all(res.samples <= high)
    # With noise 50x the box width most samples end on a face: the clip, not luck, kept them inside.
    assert np.mean((res.samples == low) | (res.samples == high)) > 0.5


def test_langevin_delta_clip_limits_each_step():
    start = np.zeros((2, 50, 2), dtype=np.float32)
    steps = np.full(10, 0.5, dtype=np.float32)
    cfg = LangevinConfig(delta_clip=1e-3, noise_scale=1.0)
    end = langevin_chain(quad_grad([0.9, -0.9]), start, LOW2, HIGH2, steps, cfg, rng())
    moved = np.abs(end - start)
    assert moved.max() <= 10 * 1e-3 + 1e-6
    # The gradient pulls hard toward (0.9, -0.9), so with the clip every coordinate moves by the full budget.
    np.testing.assert_allclose(end[..., 0], 0.01, atol=1e-5)
    np.testing.assert_allclose(end[..., 1], -0.01, atol=1e-5)
    # Without the clip the same chain goes much further.
    free = langevin_chain(quad_grad([0.9, -0.9]), start, LOW2, HIGH2, steps, LangevinConfig(delta_clip=10.0), rng())
    assert np.abs(free - start).max() > 0.5
    # Bounds clip: the huge unclipped steps overshoot the box and land exactly on its faces.
    assert np.all(np.abs(free) <= 1.0)
    assert np.mean(np.abs(free) == 1.0) > 0.5


def test_langevin_second_chain_adds_steps():
    calls = []

    def fn(x):
        calls.append(1)
        return quad_grad(C2)(x)

    langevin(fn, LOW2, HIGH2, 1, LangevinConfig(num_samples=8, iterations=5, second_chain_step=None), rng())
    single = len(calls)
    calls.clear()
    langevin(fn, LOW2, HIGH2, 1, LangevinConfig(num_samples=8, iterations=5, second_chain_step=1e-3), rng())
    assert single == 5 + 1  # K steps + final re-score
    assert len(calls) == 2 * 5 + 1


# ---------------------------------------------------------------------------------------------------
# Schedule


def test_polynomial_schedule():
    s = polynomial_schedule(0.5, 1e-5, 2.0, 100)
    assert s.shape == (100,) and s.dtype == np.float32
    assert s[0] == pytest.approx(0.5) and s[-1] == pytest.approx(1e-5)
    assert np.all(np.diff(s) <= 0)
    # Power 2: halfway through the step is (init - final) / 4 + final.
    np.testing.assert_allclose(polynomial_schedule(1.0, 0.0, 2.0, 3), [1.0, 0.25, 0.0])
    np.testing.assert_allclose(polynomial_schedule(1.0, 0.0, 1.0, 5), [1.0, 0.75, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(polynomial_schedule(0.1, 0.01, 2.0, 1), [0.1])
    with pytest.raises(ArgminError, match="num_steps"):
        polynomial_schedule(0.1, 0.01, 2.0, 0)
    with pytest.raises(ArgminError, match="init"):
        polynomial_schedule(float("inf"), 0.01, 2.0, 3)


# ---------------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_result_different_seed_different_samples():
    lcfg = LangevinConfig(num_samples=32, iterations=10)
    runs = {
        "dfo": lambda r: dfo(quad(C2), LOW2, HIGH2, 2, DfoConfig(num_samples=256), r),
        "adfo": lambda r: autoregressive_dfo(quad_ar(C2), LOW2, HIGH2, 2, DfoConfig(num_samples=256), r),
        "langevin": lambda r: langevin(quad_grad(C2), LOW2, HIGH2, 2, lcfg, r),
    }
    for name, run in runs.items():
        a, b, c = run(rng(7)), run(rng(7)), run(rng(8))
        np.testing.assert_array_equal(a.samples, b.samples, err_msg=name)
        np.testing.assert_array_equal(a.x, b.x, err_msg=name)
        assert not np.array_equal(a.samples, c.samples), name


# ---------------------------------------------------------------------------------------------------
# Bad input


def test_bad_bounds_and_batch_size_raise():
    fn = quad(C2)
    cfg = DfoConfig(num_samples=8)
    with pytest.raises(ArgminError, match="same shape"):
        dfo(fn, LOW2, np.ones(3, np.float32), 1, cfg, rng())
    with pytest.raises(ArgminError, match=r"shape \(D,\)"):
        dfo(fn, np.zeros((2, 2)), np.ones((2, 2)), 1, cfg, rng())
    with pytest.raises(ArgminError, match="low < high"):
        dfo(fn, np.array([0.0, 1.0]), np.array([1.0, 1.0]), 1, cfg, rng())
    with pytest.raises(ArgminError, match="finite"):
        dfo(fn, np.array([0.0, -np.inf]), np.array([1.0, 1.0]), 1, cfg, rng())
    with pytest.raises(ArgminError, match="batch_size"):
        dfo(fn, LOW2, HIGH2, 0, cfg, rng())
    with pytest.raises(ArgminError, match="Generator"):
        dfo(fn, LOW2, HIGH2, 1, cfg, 0)
    assert issubclass(ArgminError, ValueError)


def test_bad_energy_functions_raise():
    cfg = DfoConfig(num_samples=8)
    lcfg = LangevinConfig(num_samples=8, iterations=2)
    with pytest.raises(ValueError, match=r"shape \(2, 8\)"):
        dfo(lambda x: np.zeros(x.shape[0]), LOW2, HIGH2, 2, cfg, rng())
    with pytest.raises(ValueError, match="non-finite"):
        dfo(lambda x: np.full(x.shape[:2], np.nan), LOW2, HIGH2, 2, cfg, rng())
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        autoregressive_dfo(ar_columns(quad(C2)), LOW2, HIGH2, 2, cfg, rng())
    with pytest.raises(ValueError, match=r"model 0's energies of shape \(2, 8\)"):
        autoregressive_dfo(lambda x, j: np.zeros(x.shape), LOW2, HIGH2, 2, cfg, rng())
    with pytest.raises(ValueError, match="non-finite"):
        autoregressive_dfo(lambda x, j: np.full(x.shape[:2], np.nan), LOW2, HIGH2, 2, cfg, rng())
    with pytest.raises(ValueError, match="gradients of shape"):
        langevin(lambda x: (quad(C2)(x), np.zeros(x.shape[:2])), LOW2, HIGH2, 2, lcfg, rng())
    with pytest.raises(ValueError, match="tuple"):
        langevin(quad(C2), LOW2, HIGH2, 2, lcfg, rng())
    with pytest.raises(ValueError, match="non-finite"):
        langevin(lambda x: (quad(C2)(x), np.full(x.shape, np.inf)), LOW2, HIGH2, 2, lcfg, rng())
    with pytest.raises(ValueError, match="init"):
        langevin(quad_grad(C2), LOW2, HIGH2, 2, lcfg, rng(), init=np.zeros((2, 8, 3)))
    with pytest.raises(ValueError, match="batch size 2"):
        langevin(quad_grad(C2), LOW2, HIGH2, 2, lcfg, rng(), init=np.zeros((3, 8, 2)))


def test_bad_configs_raise():
    with pytest.raises(ArgminError, match="num_samples"):
        DfoConfig(num_samples=0)
    with pytest.raises(ArgminError, match="iterations"):
        DfoConfig(iterations=2.5)
    with pytest.raises(ArgminError, match="noise_scale"):
        DfoConfig(noise_scale=-0.1)
    with pytest.raises(ArgminError, match="init_samples must be an integer >= 0"):
        DfoConfig(init_samples=-1)
    with pytest.raises(ArgminError, match="init_samples .* is for DFO"):
        autoregressive_dfo(quad_ar(C2), LOW2, HIGH2, 1, DfoConfig(num_samples=8, init_samples=64), rng())
    with pytest.raises(ArgminError, match="delta_clip"):
        LangevinConfig(delta_clip=0.0)
    with pytest.raises(ArgminError, match="step_init"):
        LangevinConfig(step_init=float("nan"))
    with pytest.raises(ArgminError, match="second_chain_step"):
        LangevinConfig(second_chain_step=-1.0)
