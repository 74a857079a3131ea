"""Energy-based learning: InfoNCE, gradient penalty, counter-examples, and the four implicit algorithms.

Behaviour checks follow the papers: IBC sec. 3 (sharp discontinuities, multi-valued functions: the EBM picks a
mode where an MSE regressor averages) and IRvS sec. 3.2 (didactic room: eta_inv = 0 imitates the goal-agnostic
behaviour policy, a larger eta_inv heads for the best corner).
"""

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch

from irvs_ros.learn import counter_examples
from irvs_ros.learn.algorithms import ebm
from irvs_ros.learn.algorithms.base import ALGORITHMS, make_algorithm
from irvs_ros.learn.config_schema import ConfigError
from irvs_ros.learn.losses import gradient_penalty, info_nce
from irvs_ros.runtime import argmin
from irvs_ros.runtime.spec import NormStats, ObsSpec, PolicySpec, widened_bounds

torch.set_num_threads(1)

EBM_NAMES = ("ebm_dfo", "ebm_adfo", "ebm_langevin", "irvs")


def make_spec(state: np.ndarray, action: np.ndarray, returns: np.ndarray | None = None,
              image_shape: tuple[int, int, int] | None = None) -> PolicySpec:
    lo, hi = widened_bounds(action.min(0), action.max(0))
    g = (0.0, 1.0) if returns is None else (float(returns.min()), float(returns.max()))
    stats = NormStats(tuple(state.mean(0)), tuple(state.std(0) + 1e-6), tuple(action.min(0)), tuple(action.max(0)),
                      *g)
    return PolicySpec(ObsSpec(state.shape[1], image_shape), action.shape[1], stats, tuple(lo), tuple(hi))


def train(algo, arrays: dict[str, np.ndarray], steps: int, batch_size: int = 64, lr: float = 3e-3, seed: int = 0):
    """Plain Adam loop over random minibatches; returns the per-step loss dicts."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(algo.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    data = {k: torch.from_numpy(v) for k, v in arrays.items()}
    n = len(next(iter(data.values())))
    history = []
    algo.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        out = algo.compute_loss({k: v[idx] for k, v in data.items()}, gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in out.items()})
    return history


# ------------------------------------------------------------------------------------------------------------
# Losses


def test_info_nce_is_cross_entropy_of_negative_energies():
    gen = torch.Generator().manual_seed(0)
    energies = torch.randn(5, 9, generator=gen)
    manual = -(torch.log_softmax(-energies, dim=1)[:, 0]).mean()
    torch.testing.assert_close(info_nce(energies, 0), manual)
    # The positive may sit at any column: permuting the candidates and pointing at it gives the same loss.
    perm = torch.stack([torch.randperm(9, generator=gen) for _ in range(5)])
    shuffled = torch.gather(energies, 1, perm)
    where = (perm == 0).long().argmax(dim=1)
    torch.testing.assert_close(info_nce(shuffled, where), manual)
    with pytest.raises(ValueError, match="M >= 2"):
        info_nce(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="positive_index"):
        info_nce(energies, torch.zeros(4, dtype=torch.long))


def test_info_nce_falls_when_the_positive_is_lowest():
    low = torch.tensor([[-5.0, 0.0, 0.0, 0.0]])
    high = torch.tensor([[5.0, 0.0, 0.0, 0.0]])
    assert info_nce(low) < 0.05 < np.log(4) < info_nce(high)


def test_gradient_penalty_uses_the_inf_norm_and_margin():
    grad = torch.zeros(2, 2, 3)
    grad[0, 0] = torch.tensor([0.5, -0.9, 0.1])  # ||.||_inf = 0.9 <= 1: no penalty
    grad[0, 1] = torch.tensor([0.2, -3.0, 2.0])  # 3 -> (3 - 1)^2 = 4
    grad[1, 0] = torch.tensor([1.5, 0.0, 0.0])  # 1.5 -> 0.25
    assert gradient_penalty(grad, margin=1.0).item() == pytest.approx((4.0 + 0.25) / 4)
    assert gradient_penalty(grad, margin=3.0).item() == 0.0


# ------------------------------------------------------------------------------------------------------------
# Counter-examples


def test_uniform_counter_examples_fill_the_box_reproducibly():
    low, high = torch.tensor([-1.1, 0.0]), torch.tensor([1.1, 0.5])
    a = counter_examples.uniform(low, high, 4, 500, torch.Generator().manual_seed(3))
    b = counter_examples.uniform(low, high, 4, 500, torch.Generator().manual_seed(3))
    c = counter_examples.uniform(low, high, 4, 500, torch.Generator().manual_seed(4))
    assert a.shape == (4, 500, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a >= low).all() and (a <= high).all()
    assert (a[..., 0].min() < -0.9) and (a[..., 0].max() > 0.9)  # spread over the whole box
    with pytest.raises(ValueError, match="low < high"):
        counter_examples.uniform(high, low, 1, 1, torch.Generator())


def _quadratic(center: np.ndarray):
    def np_fn(x):
        d = x - center
        return (d**2).sum(-1), 2 * d

    c = torch.from_numpy(center)

    def torch_fn(x):
        d = x - c
        return (d**2).sum(-1), 2 * d

    return np_fn, torch_fn


def test_torch_langevin_matches_the_runtime_chain_without_noise():
    """Same schedule, same step rule, same clipping as irvs_ros.runtime.argmin.langevin_chain."""
    center = np.array([0.7, -2.0], np.float32)  # outside the box in y: the chain must stop at the bound
    np_fn, torch_fn = _quadratic(center)
    low, high = np.array([-1.0, -1.0], np.float32), np.array([1.0, 1.0], np.float32)
    init = np.random.default_rng(0).uniform(-1, 1, (3, 5, 2)).astype(np.float32)
    steps = counter_examples.langevin_steps(30, 0.5, 1e-5, 2.0)
    np.testing.assert_array_equal(steps, argmin.polynomial_schedule(0.5, 1e-5, 2.0, 30))
    cfg = argmin.LangevinConfig(noise_scale=0.0, delta_clip=0.1)
    ref = argmin.langevin_chain(np_fn, init, low, high, steps, cfg, np.random.default_rng(0))
    got = counter_examples.langevin(torch_fn, torch.from_numpy(init), torch.from_numpy(low), torch.from_numpy(high),
                                    steps, noise_scale=0.0, delta_clip=0.1, generator=torch.Generator())
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(got.numpy()[..., 1], -1.0)  # pinned to the bound nearest the minimum


def test_torch_langevin_is_noisy_bounded_detached_and_seeded():
    _, torch_fn = _quadratic(np.array([0.3, 0.3], np.float32))
    low, high = torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0])
    init = counter_examples.uniform(low, high, 2, 256, torch.Generator().manual_seed(0)).requires_grad_(True)
    steps = counter_examples.langevin_steps(50, 0.1, 1e-5, 2.0)

    def run(seed):
        return counter_examples.langevin(torch_fn, init, low, high, steps, noise_scale=1.0, delta_clip=0.1,
                                         generator=torch.Generator().manual_seed(seed))

    a, b, c = run(1), run(1), run(2)
    assert not a.requires_grad
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a >= low).all() and (a <= high).all()
    # samples drift toward the low-energy region
    assert torch_fn(a)[0].mean() < 0.5 * torch_fn(init.detach())[0].mean()


def test_dfo_counter_examples_crowd_the_energy_minimum_seeded_and_bounded():
    """DFO rounds on the model put counter-examples in its low-energy basin, where uniform ones rarely land."""
    _, torch_fn = _quadratic(np.array([0.3, -0.4], np.float32))

    def energy(x):
        return 100.0 * torch_fn(x)[0]

    low, high = torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0])

    def run(seed, iterations=3):
        gen = torch.Generator().manual_seed(seed)
        return counter_examples.dfo(energy, low, high, 4, 256, iterations, 0.33, 0.5, gen)

    a, b, c = run(1), run(1), run(2)
    assert a.shape == (4, 256, 2) and not a.requires_grad
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a >= low).all() and (a <= high).all()
    near = (a - torch.tensor([0.3, -0.4])).norm(dim=-1) < 0.25
    uniform_near = (run(1, iterations=1) - torch.tensor([0.3, -0.4])).norm(dim=-1) < 0.25
    assert near.float().mean() > 0.5 > 0.1 > uniform_near.float().mean()  # a disc of radius 0.25: ~5% of the box
    with pytest.raises(ValueError, match="iterations"):
        counter_examples.dfo(energy, low, high, 1, 8, 0, 0.33, 0.5, torch.Generator())


def test_torch_dfo_counter_examples_follow_the_runtime_dfo_rounds():
    """Training negatives and the runtime argmin's final candidates come from the same rounds (resample by
    softmax(-E), noise shrinking by K, clip): their spread around the minimum agrees round by round. The two
    draw from different generators, so the check is on statistics of 4 x 1024 samples (a wrong sign, a missing
    shrink or clip would move them by 2x or more)."""
    centre = np.array([0.3, -0.4], np.float32)
    low, high = np.full(2, -1.0, np.float32), np.full(2, 1.0, np.float32)

    def energy_np(x):
        return 20.0 * ((x - centre) ** 2).sum(-1)

    def energy_torch(x):
        return 20.0 * ((x - torch.from_numpy(centre)) ** 2).sum(-1)

    spreads = []
    for iterations in (1, 2, 3, 4):
        cfg = argmin.DfoConfig(num_samples=1024, iterations=iterations, noise_scale=0.33, noise_shrink=0.5)
        runtime = argmin.dfo(energy_np, low, high, 4, cfg, np.random.default_rng(iterations)).samples
        trained = counter_examples.dfo(energy_torch, torch.from_numpy(low), torch.from_numpy(high), 4, 1024,
                                       iterations, 0.33, 0.5, torch.Generator().manual_seed(iterations)).numpy()
        r, t = (float(np.linalg.norm(s - centre, axis=-1).mean()) for s in (runtime, trained))
        assert t == pytest.approx(r, rel=0.1), (iterations, t, r)
        spreads.append(r)
    assert spreads == sorted(spreads, reverse=True) and spreads[-1] < 0.5 * spreads[0]


def test_dfo_counter_example_fraction_mixes_uniform_and_model_drawn_negatives():
    """ebm_dfo and ebm_adfo draw round(fraction * N) of their N counter-examples by DFO; 0 keeps IBC B.1's
    all-uniform draw bit for bit (same generator stream as before the option existed)."""
    rng = np.random.default_rng(0)
    spec = make_spec(rng.normal(size=(32, 2)).astype(np.float32), rng.uniform(-1, 1, (32, 2)).astype(np.float32))
    algo = make_algorithm("ebm_dfo", spec, {"width": 16, "depth": 2, "num_counter_examples": 10,
                                            "dfo_counter_example_fraction": 0.3})
    calls = []

    def energy(x):
        calls.append(tuple(x.shape))
        return (x ** 2).sum(-1)

    gen = torch.Generator().manual_seed(0)
    neg = algo._dfo_negatives(energy, algo.var_low, algo.var_high, 5, gen)
    assert neg.shape == (5, 10, 2)
    assert calls == [(5, 10, 2)] * 2  # dfo_iterations = 3: two scored rounds, from all N uniform samples
    # the DFO-drawn 3 sit nearer the energy's minimum (0, 0) than the 7 uniform ones
    assert neg[:, 7:].norm(dim=-1).mean() < neg[:, :7].norm(dim=-1).mean()
    plain = make_algorithm("ebm_dfo", spec, {"width": 16, "depth": 2, "num_counter_examples": 10})
    got = plain._dfo_negatives(energy, plain.var_low, plain.var_high, 5, torch.Generator().manual_seed(0))
    want = counter_examples.uniform(plain.var_low, plain.var_high, 5, 10, torch.Generator().manual_seed(0))
    assert torch.equal(got, want)
    with pytest.raises(ConfigError, match="dfo_counter_example_fraction"):
        make_algorithm("ebm_adfo", spec, {"dfo_counter_example_fraction": 1.5})


# ------------------------------------------------------------------------------------------------------------
# Configs


def test_configs_have_paper_defaults_and_validate():
    assert set(EBM_NAMES) <= set(ALGORITHMS)
    lang = ebm.EbmLangevinConfig()
    assert (lang.width, lang.depth, lang.spectral_norm, lang.num_counter_examples) == (512, 8, True, 8)
    assert (lang.langevin_iterations, lang.langevin_step_init, lang.langevin_delta_clip) == (100, 0.5, 0.5)
    assert ebm.IrvsConfig().eta_inv == 1.0 and ebm.IrvsConfig().method == "langevin"
    assert (ebm.EbmDfoConfig().num_counter_examples, ebm.EbmDfoConfig().dfo_iterations) == (256, 3)
    spec = make_spec(np.zeros((2, 1), np.float32), np.array([[0.0], [1.0]], np.float32))
    with pytest.raises(ConfigError, match="even depth"):
        make_algorithm("ebm_dfo", spec, {"depth": 3})
    with pytest.raises(ConfigError, match="eta_inv"):
        make_algorithm("irvs", spec, {"eta_inv": -1.0})
    with pytest.raises(ConfigError, match="unknown key"):
        make_algorithm("ebm_langevin", spec, {"langevin_steps": 3})
    with pytest.raises(ConfigError, match="langevin_delta_clip"):
        make_algorithm("ebm_langevin", spec, {"langevin_delta_clip": 0.0})
    with pytest.raises(ConfigError):
        make_algorithm("irvs", spec, {"method": "adfo"})


# ------------------------------------------------------------------------------------------------------------
# Every algorithm: trains, acts within bounds, exports a graph that onnxruntime runs like torch

TINY = {"width": 16, "depth": 2, "num_counter_examples": 4}
TINY_BY_NAME = {
    "ebm_dfo": {**TINY, "dfo_samples": 32},
    "ebm_adfo": {**TINY, "dfo_samples": 32},
    "ebm_langevin": {**TINY, "langevin_iterations": 4, "langevin_samples": 16},
    "irvs": {**TINY, "langevin_iterations": 4, "langevin_samples": 16},
}


@pytest.fixture(scope="module")
def pixel_data():
    rng = np.random.default_rng(0)
    n = 16
    return {"state": rng.standard_normal((n, 3)).astype(np.float32),
            "image": rng.integers(0, 256, (n, 24, 32, 3), dtype=np.uint8),
            "action": rng.uniform([-0.1, 0.2], [0.1, 0.6], (n, 2)).astype(np.float32),
            "return": rng.uniform(0.0, 1.0, n).astype(np.float32)}


def _run_graph(graph, feeds):
    buf = io.BytesIO()
    torch.onnx.export(graph.module, graph.example_inputs, buf, input_names=graph.input_names,
                      output_names=graph.output_names, dynamic_axes=graph.dynamic_axes, dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == graph.input_names
    return sess.run(None, feeds)


@pytest.mark.parametrize("name", EBM_NAMES)
def test_algorithm_trains_acts_in_bounds_and_exports(name, pixel_data):
    spec = make_spec(pixel_data["state"], pixel_data["action"], pixel_data["return"], image_shape=(24, 32, 3))
    algo = make_algorithm(name, spec, TINY_BY_NAME[name])
    hist = train(algo, pixel_data, steps=3, batch_size=8)
    assert all(np.isfinite(h["loss"]) for h in hist)
    if name in ("ebm_langevin", "irvs"):
        assert "grad_penalty" in hist[-1]

    obs = {"state": pixel_data["state"][:5], "image": pixel_data["image"][:5]}
    act = algo.predict(obs, np.random.default_rng(7))
    assert act.shape == (5, 2) and act.dtype == np.float32
    assert np.all(act >= np.array(spec.action_low) - 1e-6) and np.all(act <= np.array(spec.action_high) + 1e-6)
    np.testing.assert_array_equal(act, algo.predict(obs, np.random.default_rng(7)))  # the rng decides
    assert algo.training  # predict restores the training mode

    graph = algo.export_graph()
    has_return = name == "irvs"
    d = 2 + has_return
    assert graph.input_names == ["state", "image", "feat_in", "candidates"]
    expected_out = {"ebm_dfo": ["feat", "energy"], "ebm_adfo": ["feat", "energy_ar"],
                    "ebm_langevin": ["feat", "energy", "energy_grad"], "irvs": ["feat", "energy", "energy_grad"]}
    assert graph.output_names == expected_out[name]
    meta = graph.argmin
    assert meta["method"] == {"ebm_dfo": "dfo", "ebm_adfo": "adfo"}.get(name, "langevin")
    assert (meta["variable_dim"], meta["has_return"]) == (d, has_return)
    assert meta["eta_inv"] == (1.0 if has_return else 0.0)
    assert meta["num_samples"] == TINY_BY_NAME[name].get("dfo_samples", TINY_BY_NAME[name].get("langevin_samples"))

    # onnxruntime on the exported graph == torch on the same inputs (batch sizes differ on purpose)
    rng = np.random.default_rng(1)
    feeds = {"state": obs["state"], "image": obs["image"],
             "feat_in": rng.standard_normal((3, algo.encoder.out_dim)).astype(np.float32),
             "candidates": rng.uniform(-1, 1, (3, 11, d)).astype(np.float32)}
    outs = dict(zip(graph.output_names, _run_graph(graph, feeds), strict=True))
    with torch.no_grad():
        algo.eval()
        feat = algo.encoder(torch.from_numpy(obs["state"]), torch.from_numpy(obs["image"]))
        np.testing.assert_allclose(outs["feat"], feat.numpy(), atol=1e-5, rtol=1e-4)
        f_in, cand = torch.from_numpy(feeds["feat_in"]), torch.from_numpy(feeds["candidates"])
        if name == "ebm_adfo":
            ref = np.stack([h(f_in, cand[..., : j + 1]).numpy() for j, h in enumerate(algo.heads)], -1)
            np.testing.assert_allclose(outs["energy_ar"], ref, atol=1e-5, rtol=1e-4)
        else:
            e, g = algo.heads[0].energy_and_grad(f_in, cand)
            np.testing.assert_allclose(outs["energy"], e.numpy(), atol=1e-5, rtol=1e-4)
            if "energy_grad" in outs:
                np.testing.assert_allclose(outs["energy_grad"], g.numpy(), atol=1e-5, rtol=1e-4)


def test_irvs_dfo_method_and_batch_errors():
    rng = np.random.default_rng(0)
    data = {"state": rng.standard_normal((32, 2)).astype(np.float32),
            "action": rng.uniform(-1, 1, (32, 1)).astype(np.float32),
            "return": rng.uniform(0, 2, 32).astype(np.float32)}
    spec = make_spec(data["state"], data["action"], data["return"])
    algo = make_algorithm("irvs", spec, {**TINY, "method": "dfo", "dfo_samples": 64, "eta_inv": 0.0})
    assert np.isfinite(train(algo, data, steps=2, batch_size=8)[-1]["loss"])
    graph = algo.export_graph()
    assert graph.output_names == ["feat", "energy"] and graph.argmin["method"] == "dfo"
    act, g = algo.predict_with_return({"state": data["state"][:4]}, np.random.default_rng(0))
    assert act.shape == (4, 1) and g.shape == (4,)
    # eta_inv = 0 is exactly IBC's argmin over (a, G): DFO on the untilted energy, same rng, same answer
    algo.eval()
    with torch.no_grad():
        feat = algo.encoder(torch.from_numpy(data["state"][:4]))
        low, high = algo.var_low.numpy(), algo.var_high.numpy()
        ibc = argmin.dfo(lambda x: algo.heads[0](feat, torch.from_numpy(x)).numpy(), low, high, 4,
                         algo.config.dfo_config(), np.random.default_rng(0))
    np.testing.assert_array_equal(act, spec.stats.unnormalize_action(ibc.x[:, :1]))
    np.testing.assert_array_equal(g, spec.stats.unnormalize_return(ibc.x[:, 1]))
    algo.config.eta_inv = 2.0
    assert not np.array_equal(algo.predict_with_return({"state": data["state"][:4]}, np.random.default_rng(0))[1], g)
    assert np.all((g >= 0.0 - 1e-5) & (g <= 2.0 + 1e-5))  # raw return units
    with pytest.raises(KeyError, match="return"):
        algo.compute_loss({"state": torch.zeros(2, 2), "action": torch.zeros(2, 1)}, torch.Generator())
    with pytest.raises(ValueError, match=r"expected \(B, 1\)"):
        algo.compute_loss({"state": torch.zeros(2, 2), "action": torch.zeros(2, 3), "return": torch.zeros(2)},
                          torch.Generator())


# ------------------------------------------------------------------------------------------------------------
# IBC sec. 3: discontinuities and multi-valued functions (same dense net for the EBM and the MSE regressor)

NET_1D = {"width": 32, "depth": 2, "resnet": False}


def _fit_1d(x: np.ndarray, y: np.ndarray, steps: int):
    """(EBM with DFO, MSE regressor) trained alike on y(x), each a 32x2 ReLU MLP."""
    spec = make_spec(x, y)
    data = {"state": x, "action": y}
    ebm_algo = make_algorithm("ebm_dfo", spec, {**NET_1D, "num_counter_examples": 32, "dfo_samples": 256})
    mse_algo = make_algorithm("mse", spec, {**NET_1D, "dropout": 0.0})
    ebm_hist = train(ebm_algo, data, steps)
    train(mse_algo, data, steps)
    assert np.mean([h["loss"] for h in ebm_hist[-50:]]) < 0.5 * np.log(33)  # InfoNCE fell well below chance
    return ebm_algo, mse_algo


def test_ebm_is_sharp_at_a_discontinuity_where_mse_interpolates():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (512, 1)).astype(np.float32)
    y = (x >= 0).astype(np.float32)  # step: 0 for x < 0, 1 for x >= 0
    ebm_algo, mse_algo = _fit_1d(x, y, steps=1000)
    xq = np.linspace(-0.1, 0.1, 41, dtype=np.float32)[:, None]  # 0.005 apart around the step
    truth = (xq >= 0).astype(np.float32).ravel()
    ebm_pred = ebm_algo.predict({"state": xq}, np.random.default_rng(1)).ravel()
    mse_pred = mse_algo.predict({"state": xq}, np.random.default_rng(1)).ravel()

    def intermediate(p):
        return int(np.sum((p > 0.1) & (p < 0.9)))

    # the EBM jumps: every prediction is ~0 or ~1, and right wherever |x| >= 0.02 (data are ~0.004 apart)
    assert intermediate(ebm_pred) == 0, ebm_pred
    far = np.abs(xq.ravel()) >= 0.02
    assert np.abs(ebm_pred - truth)[far].max() < 0.05, ebm_pred
    # the MSE regressor with the same net and steps ramps through intermediate values across the step
    assert intermediate(mse_pred) >= 4, mse_pred
    np.testing.assert_allclose(ebm_algo.predict({"state": np.array([[-0.6], [0.6]], np.float32)},
                                                np.random.default_rng(1)).ravel(), [0, 1], atol=0.05)


def test_ebm_picks_a_mode_of_a_two_valued_function_where_mse_averages():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (512, 1)).astype(np.float32)
    y = (x * rng.choice([-1.0, 1.0], (512, 1))).astype(np.float32)  # y = +x or -x with equal probability
    ebm_algo, mse_algo = _fit_1d(x, y, steps=800)
    xq = np.array([[-0.8], [-0.6], [-0.4], [0.4], [0.6], [0.8]], np.float32)
    ebm_pred = ebm_algo.predict({"state": xq}, np.random.default_rng(2))
    mse_pred = mse_algo.predict({"state": xq}, np.random.default_rng(2))
    dist_to_mode = np.minimum(np.abs(ebm_pred - xq), np.abs(ebm_pred + xq)).ravel()
    assert dist_to_mode.max() < 0.1, (ebm_pred.ravel(), xq.ravel())
    assert np.abs(mse_pred).max() < 0.2, mse_pred.ravel()  # the mean of the two branches, 0
    assert np.abs(ebm_pred).min() > 0.3


# ------------------------------------------------------------------------------------------------------------
# IRvS sec. 3.2: the didactic room


def _room_dataset(num_episodes: int, seed: int) -> dict[str, np.ndarray]:
    from irvs_ros.sim.rollout import collect_demos

    episodes = collect_demos("room", {}, num_episodes, seed=seed)
    # return-to-go G_t = average future reward (the convention of the batches, see algorithms.base)
    g = [np.cumsum(e["reward"][::-1])[::-1] / np.arange(len(e["reward"]), 0, -1) for e in episodes]
    return {"state": np.concatenate([e["state"] for e in episodes]),
            "action": np.concatenate([e["action"] for e in episodes]),
            "return": np.concatenate(g).astype(np.float32)}


@pytest.fixture(scope="module")
def room_irvs():
    """IRvS (Langevin, the paper's method) trained on the goal-agnostic room demonstrations.

    Tiny budget: IBC's N-D particle Langevin settings (appendix D.3: step 0.1, clip 0.1, noise 1.0), and no
    gradient penalty: the penalty caps |dE/dG| near its margin 1, so with a tilt eta_inv > 1 the energy could
    not hold G at a corner's value, and the tilted argmin would slide G up whatever the direction.
    """
    data = _room_dataset(200, seed=0)
    spec = make_spec(data["state"], data["action"], data["return"])
    params = {"width": 32, "depth": 2, "resnet": False, "spectral_norm": False, "num_counter_examples": 8,
              "langevin_iterations": 10, "langevin_samples": 64, "langevin_step_init": 0.1,
              "langevin_delta_clip": 0.1, "langevin_noise_scale": 1.0, "grad_penalty_weight": 0.0, "eta_inv": 0.0}
    algo = make_algorithm("irvs", spec, params)
    train(algo, data, steps=1500)
    return algo


def _room_rollouts(algo, eta_inv: float, episodes: int = 64) -> np.ndarray:
    from irvs_ros.sim.rollout import evaluate

    algo.config.eta_inv = eta_inv  # a runtime parameter: the same energy, a different tilt
    rng = np.random.default_rng(0)
    result = evaluate("room", {}, lambda obs: algo.predict(obs, rng), episodes, seed=1000)
    goals = np.array([e["goal"] for e in result["per_episode"]])
    return np.bincount(goals + 1, minlength=5)[1:] / episodes  # share of episodes ending at each corner


def test_irvs_models_the_joint_of_action_and_return(room_irvs):
    from irvs_ros.sim.registry import make_env
    from irvs_ros.sim.room import CORNER_REWARDS, CORNERS

    env = make_env("room")
    starts = np.stack([env.reset(seed=1000 + i)[0]["state"] for i in range(64)])
    room_irvs.config.eta_inv = 0.0
    action, g = room_irvs.predict_with_return({"state": starts}, np.random.default_rng(0))
    to_corner = CORNERS[None] - starts[:, None]
    cos = np.einsum("bkd,bd->bk", to_corner, action) / (np.linalg.norm(to_corner, axis=2)
                                                         * np.linalg.norm(action, axis=1)[:, None])
    heading = cos.argmax(axis=1)
    assert np.mean(cos.max(axis=1) > 0.95) > 0.9  # actions point at a corner, not in between
    # the predicted return is the value of the corner the action heads to
    assert np.abs(g - CORNER_REWARDS[heading]).mean() < 0.1
    room_irvs.config.eta_inv = 10.0
    _, g_tilted = room_irvs.predict_with_return({"state": starts}, np.random.default_rng(0))
    assert g_tilted.mean() > g.mean() + 0.3  # the tilt asks for high, still plausible returns
    assert g_tilted.max() <= CORNER_REWARDS.max() + 1e-5


def test_irvs_tilt_turns_imitation_into_return_seeking(room_irvs):
    from irvs_ros.sim.room import BEST_CORNER

    imitation = _room_rollouts(room_irvs, eta_inv=0.0)
    # eta_inv = 0 is IBC: like the goal-agnostic behaviour policy, every corner is a destination
    assert imitation.sum() > 0.95 and imitation.min() >= 0.1, imitation
    assert imitation[BEST_CORNER] < 0.35, imitation
    seeking = _room_rollouts(room_irvs, eta_inv=10.0)
    assert seeking[BEST_CORNER] >= 0.8, seeking
