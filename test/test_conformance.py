"""The one conformance suite every registered algorithm passes (DESIGN.md "Every algorithm implements one small
interface and passes one shared conformance test suite"), on tiny synthetic data:

- a few Adam steps give finite losses and change the weights (algorithms with nothing to train: finite loss);
- a state_dict round trip into a fresh instance gives identical actions for the same rng seed;
- the exported ONNX file, loaded by the runtime, acts like torch `predict` (within 1e-4) for the same rng seed;
- energies (and Langevin energy gradients, autoregressive per-dimension energies) from ONNX Runtime equal torch.

State-only for every algorithm, plus one image (+ state) case for ebm_dfo and the explicit baselines. At the end,
a few checks of what only the baselines promise (nearest neighbour lookup, MDN mixture, MSE fitting).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from irvs_ros.learn.algorithms import ALGORITHMS, make_algorithm
from irvs_ros.learn.export import export_policy
from irvs_ros.runtime.policy_file import load_policy
from irvs_ros.runtime.spec import NormStats, ObsSpec, PolicySpec, widened_bounds

torch.set_num_threads(1)

EBM_NAMES = ("ebm_dfo", "ebm_adfo", "ebm_langevin", "irvs")
EXPECTED = (*EBM_NAMES, "mse", "mdn", "nn")
_SMALL = {"width": 16, "depth": 2}
_LANGEVIN = {"langevin_iterations": 4, "langevin_samples": 16, "num_counter_examples": 4}
# Tiny networks and few inference samples: the suite checks plumbing and agreement, not policy quality.
SMALL_PARAMS: dict[str, dict] = {
    "ebm_dfo": {**_SMALL, "num_counter_examples": 8, "dfo_samples": 64},
    "ebm_dfo-hard": {**_SMALL, "num_counter_examples": 8, "dfo_samples": 64, "dfo_counter_example_fraction": 0.5},
    "ebm_adfo": {**_SMALL, "num_counter_examples": 8, "dfo_samples": 32},
    "ebm_adfo-hard": {**_SMALL, "num_counter_examples": 8, "dfo_samples": 32, "dfo_counter_example_fraction": 0.5},
    "ebm_langevin": {**_SMALL, **_LANGEVIN},
    "irvs": {**_SMALL, **_LANGEVIN},
    "irvs-dfo": {**_SMALL, "method": "dfo", "num_counter_examples": 8, "dfo_samples": 64},
    "mse": _SMALL,
    "mdn": {**_SMALL, "num_components": 3},
    "nn": {"projection_dim": 16, "pool_to": 8},
}
# Cases: (case id, registered name). Algorithms registered later without an entry run with their defaults.
CASES = [(c, c.split("-")[0]) for c in SMALL_PARAMS] + [(n, n) for n in sorted(ALGORITHMS) if n not in SMALL_PARAMS]
IMAGE_CASES = ["ebm_dfo", "mse", "mdn", "nn"]
EXPLICIT = ("mse", "mdn", "nn")
ENERGY_CASES = [(c, n) for c, n in CASES if n not in EXPLICIT]

S, A, M = 3, 2, 96
IMAGE_SHAPE = (24, 32, 3)


def _spec(state: np.ndarray, action: np.ndarray, ret: np.ndarray, image_shape: tuple | None = None) -> PolicySpec:
    lo, hi = widened_bounds(action.min(0), action.max(0))
    stats = NormStats(tuple(state.mean(0)), tuple(state.std(0) + 1e-3), tuple(action.min(0)), tuple(action.max(0)),
                      float(ret.min()), float(ret.max()))
    return PolicySpec(ObsSpec(state.shape[1], image_shape), action.shape[1], stats, tuple(lo), tuple(hi))


def _state_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    state = rng.normal(size=(M, S)).astype(np.float32)
    # A discontinuous, two-valued target: the kind of data implicit policies exist for.
    action = np.where(state[:, :1] > 0, 0.5, -0.5) + 0.1 * np.tanh(state[:, 1:A + 1])
    ret = (1.0 / (1.0 + np.exp(-state[:, 2]))).astype(np.float32)
    return {"state": state, "action": action.astype(np.float32), "return": ret}


def _image_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    n = 24
    image = rng.integers(0, 256, size=(n, *IMAGE_SHAPE), dtype=np.uint8)
    state = rng.normal(size=(n, 2)).astype(np.float32)
    action = np.stack([image[:, :, :, 0].mean((1, 2)) / 255.0, state[:, 0]], 1).astype(np.float32)
    return {"state": state, "image": image, "action": action, "return": rng.random(n).astype(np.float32)}


DATA = {"state": _state_data(), "image": _image_data()}
SPECS = {"state": _spec(DATA["state"]["state"], DATA["state"]["action"], DATA["state"]["return"]),
         "image": _spec(DATA["image"]["state"], DATA["image"]["action"], DATA["image"]["return"], IMAGE_SHAPE)}


def _require(name: str) -> None:
    if name in ALGORITHMS:
        return
    if name in EBM_NAMES and importlib.util.find_spec("irvs_ros.learn.algorithms.ebm") is None:
        pytest.skip(f"{name!r} lives in irvs_ros/learn/algorithms/ebm.py, which is not written yet")
    pytest.fail(f"algorithm {name!r} is not registered (registered: {sorted(ALGORITHMS)})")


def _batch(data: dict[str, np.ndarray], rows: slice) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v[rows]) for k, v in data.items()}


def _obs(data: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return {k: data[k][rows] for k in ("state", "image") if k in data}


_TRAINED: dict[tuple[str, str], tuple] = {}


def _trained(case: str, kind: str = "state") -> tuple:
    """(algorithm after 3 Adam steps, its params, the loss dicts, weights before training), cached per case."""
    key = (case, kind)
    if key not in _TRAINED:
        name = case.split("-")[0]
        _require(name)
        params = SMALL_PARAMS.get(case, {})
        data = DATA[kind]
        torch.manual_seed(0)
        algo = make_algorithm(name, SPECS[kind], params)
        algo.fit_dataset(data)
        before = {k: v.clone() for k, v in algo.state_dict().items()}
        gen = torch.Generator().manual_seed(0)
        losses = []
        algo.train()
        if algo.trainable:
            opt = torch.optim.Adam([p for p in algo.parameters() if p.requires_grad], lr=1e-3)
            for step in range(3):
                out = algo.compute_loss(_batch(data, slice(8 * step, 8 * step + 16)), gen)
                opt.zero_grad()
                out["loss"].backward()
                opt.step()
                losses.append({k: float(v.detach()) for k, v in out.items()})
        else:
            losses.append({k: float(v) for k, v in algo.compute_loss(_batch(data, slice(0, 16)), gen).items()})
        _TRAINED[key] = (algo, params, losses, before)
    return _TRAINED[key]


def _exported(case: str, kind: str, tmp_path) -> tuple:
    algo, params, _, _ = _trained(case, kind)
    path = export_policy(algo, tmp_path / f"{case}-{kind}.onnx", train_config={"algorithm": algo.name,
                         "params": params}, dataset_fingerprint=f"fp-{kind}")
    return algo, load_policy(path, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------------------------
# The suite


def test_every_expected_algorithm_is_registered():
    missing = [n for n in EXPECTED if n not in ALGORITHMS]
    if importlib.util.find_spec("irvs_ros.learn.algorithms.ebm") is None:
        missing = [n for n in missing if n not in EBM_NAMES]
    assert not missing, f"not registered: {missing}"


@pytest.mark.parametrize("case,name", CASES, ids=[c for c, _ in CASES])
def test_training_steps_give_finite_losses(case, name):
    algo, _, losses, before = _trained(case)
    assert all("loss" in d for d in losses)
    assert all(np.isfinite(v) for d in losses for v in d.values()), losses
    if algo.trainable:
        after = algo.state_dict()
        changed = [k for k, v in before.items() if v.dtype.is_floating_point and not torch.equal(v, after[k])]
        assert changed, "three Adam steps changed no weight"
    else:
        assert not any(p.requires_grad for p in algo.parameters())


@pytest.mark.parametrize("case,name", CASES, ids=[c for c, _ in CASES])
def test_state_dict_round_trip_gives_identical_actions(case, name):
    algo, params, _, _ = _trained(case)
    fresh = make_algorithm(name, algo.spec, params)  # no fit_dataset: everything must travel in the state dict
    fresh.load_state_dict(algo.state_dict())
    obs = _obs(DATA["state"], slice(0, 5))
    a1 = algo.predict(obs, np.random.default_rng(7))
    a2 = fresh.predict(obs, np.random.default_rng(7))
    assert a1.shape == (5, A) and a1.dtype == np.float32
    np.testing.assert_array_equal(a1, a2)
    assert np.all(np.isfinite(a1))


@pytest.mark.parametrize("case,name", CASES, ids=[c for c, _ in CASES])
def test_onnx_policy_acts_like_torch(case, name, tmp_path):
    algo, policy = _exported(case, "state", tmp_path)
    obs = _obs(DATA["state"], slice(3, 9))
    torch_action = algo.predict(obs, np.random.default_rng(11))
    onnx_action, info = policy.act_with_info(obs, np.random.default_rng(11))
    assert onnx_action.shape == (6, A) and onnx_action.dtype == np.float32
    np.testing.assert_allclose(onnx_action, torch_action, atol=1e-4, rtol=0)
    # The same seed gives the same action again; the file says what it is.
    np.testing.assert_array_equal(policy.act(obs, np.random.default_rng(11)), onnx_action)
    assert policy.algorithm == name and policy.spec == algo.spec
    assert policy.metadata["dataset_fingerprint"] == "fp-state"
    if hasattr(algo, "predict_with_return"):  # IRvS also reports the return-to-go it chose
        _, g = algo.predict_with_return(obs, np.random.default_rng(11))
        np.testing.assert_allclose(info["return"], g, atol=1e-4)
    if policy.explicit:
        assert info["energy"] is None
    else:
        assert info["energy"].shape == (6,) and np.all(np.isfinite(info["energy"]))


def _graph_outputs(algo, obs: dict[str, np.ndarray], candidates: np.ndarray, grad: bool = False) -> dict:
    """Run the torch module that export traces, with the runtime's two-pass protocol (feat, then energies)."""
    graph = algo.export_graph()
    obs_t = [torch.as_tensor(obs[n]) for n in graph.input_names if n in ("state", "image")]
    b = candidates.shape[0]
    feat = graph.module(*obs_t, torch.zeros(b, graph.example_inputs[-2].shape[1]),
                        torch.as_tensor(candidates))[0]
    cand = torch.as_tensor(candidates).requires_grad_(grad)
    outs = graph.module(*obs_t, feat.detach(), cand)
    named = dict(zip(graph.output_names, outs, strict=True))
    if grad:
        (autograd,) = torch.autograd.grad(named["energy"].sum(), cand)
        named["autograd"] = autograd
    return {k: v.detach().numpy() for k, v in named.items()}


@pytest.mark.parametrize("case,name", ENERGY_CASES, ids=[c for c, _ in ENERGY_CASES])
def test_onnx_energies_equal_torch(case, name, tmp_path):
    algo, policy = _exported(case, "state", tmp_path)
    assert not policy.explicit
    obs = _obs(DATA["state"], slice(0, 4))
    dim = int(policy.argmin["variable_dim"])
    candidates = np.random.default_rng(3).uniform(-1, 1, size=(4, 7, dim)).astype(np.float32)
    method = policy.argmin["method"]
    ref = _graph_outputs(algo, obs, candidates, grad=method == "langevin")
    if method == "adfo":
        np.testing.assert_allclose(policy.energy_ar(obs, candidates), ref["energy_ar"], atol=1e-4, rtol=1e-5)
        np.testing.assert_allclose(policy.energy(obs, candidates), ref["energy_ar"][..., -1], atol=1e-4, rtol=1e-5)
        return
    energy = policy.energy(obs, candidates)
    assert energy.shape == (4, 7)
    np.testing.assert_allclose(energy, ref["energy"], atol=1e-4, rtol=1e-5)
    if method == "langevin":
        e2, grad = policy.energy_and_grad(obs, candidates)
        np.testing.assert_allclose(e2, energy, atol=1e-6)
        np.testing.assert_allclose(grad, ref["energy_grad"], atol=1e-4, rtol=1e-5)
        # The exported analytic gradient is the true gradient of the exported energy.
        np.testing.assert_allclose(ref["energy_grad"], ref["autograd"], atol=1e-4, rtol=1e-4)


def test_adfo_file_scores_each_model_on_its_own_subgraph(tmp_path):
    """The autoregressive argmin scores model j alone: the file opens one session per model, and acting through
    them gives the action that slicing column j out of the full energy_ar gives."""
    _require("ebm_adfo")
    _, policy = _exported("ebm_adfo", "state", tmp_path)
    dim = int(policy.argmin["variable_dim"])
    per_model = [(f"energy_ar_{j}",) for j in range(dim)]
    assert all(part in policy._parts for part in per_model)
    obs = _obs(DATA["state"], slice(2, 7))
    alone = policy.act(obs, np.random.default_rng(5))
    for part in per_model:
        del policy._parts[part]
    sliced = policy.act(obs, np.random.default_rng(5))
    np.testing.assert_allclose(alone, sliced, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_policy_trains_and_exports(case, tmp_path):
    algo, _, losses, _ = _trained(case, "image")
    assert all(np.isfinite(v) for d in losses for v in d.values()), losses
    algo, policy = _exported(case, "image", tmp_path)
    assert policy.spec.obs.image_shape == IMAGE_SHAPE
    obs = _obs(DATA["image"], slice(0, 3))
    np.testing.assert_allclose(policy.act(obs, np.random.default_rng(5)), algo.predict(obs, np.random.default_rng(5)),
                               atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# What only the baselines promise


def test_nearest_neighbour_returns_the_stored_action_of_the_closest_observation(tmp_path):
    algo, policy = _exported("nn", "state", tmp_path)
    data = DATA["state"]
    # Training observations give back their own action; a perturbed one the action of its source.
    np.testing.assert_array_equal(algo.predict(_obs(data, slice(0, M)), None), data["action"])
    noisy = {"state": data["state"][10:20] + 1e-3}
    np.testing.assert_array_equal(policy.act(noisy, np.random.default_rng(0)), data["action"][10:20])
    # Brute force agrees on arbitrary queries.
    q = np.random.default_rng(2).normal(size=(20, S)).astype(np.float32)
    nearest = np.argmin(((q[:, None, :] - data["state"][None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(policy.act({"state": q}, np.random.default_rng(0)), data["action"][nearest])


def test_nearest_neighbour_image_keys_are_a_fixed_projection():
    algo, params, _, _ = _trained("nn", "image")
    data = DATA["image"]
    np.testing.assert_array_equal(algo.predict(_obs(data, slice(0, 24)), None), data["action"])
    again = make_algorithm("nn", algo.spec, params)  # same seed -> same projection matrix
    assert torch.equal(again.table.projection, algo.table.projection)
    assert algo.table.projection.shape[1] == params["projection_dim"]
    with pytest.raises(RuntimeError, match="fit_dataset"):
        again.predict(_obs(data, slice(0, 1)), None)


def test_mdn_acts_with_the_mean_of_the_most_likely_component():
    algo, _, _, _ = _trained("mdn")
    obs = _obs(DATA["state"], slice(0, 6))
    state = torch.as_tensor(obs["state"])
    algo.eval()  # no dropout
    with torch.no_grad():
        logits, mean, log_std = algo.net.mixture(state, None)
    best = mean[torch.arange(6), logits.argmax(1)].numpy()
    np.testing.assert_allclose(algo.predict(obs, None), algo.spec.stats.unnormalize_action(best), atol=1e-6)
    # `sample`: at a vanishing test temperature every draw comes from that component, and the variance
    # exponent e scales its normalized std as std ** e (same rng seed -> same standard-normal draws).
    one = {"state": np.repeat(obs["state"][:1], 50, 0)}
    k = int(logits[0].argmax())
    mu, std = mean[0, k].numpy(), np.exp(log_std[0, k].numpy())
    z = []
    for exponent in (1.0, 3.0):
        algo.config.test_temperature, algo.config.test_variance_exponent = 1e-6, exponent
        try:
            s = algo.spec.stats.normalize_action(algo.sample(one, np.random.default_rng(0)))
        finally:
            algo.config.test_temperature, algo.config.test_variance_exponent = 1.0, 1.0
        z.append((s - mu) / std**exponent)
    np.testing.assert_allclose(z[0], z[1], atol=1e-3)
    assert 0.5 < z[0].std() < 1.6  # standard-normal draws, not a constant


def test_mse_and_mdn_fit_a_smooth_target():
    # 150 full-batch steps on a smooth 1-D map: the training loss falls well below its start.
    rng = np.random.default_rng(4)
    state = rng.uniform(-1, 1, size=(128, 1)).astype(np.float32)
    action = np.sin(2 * state).astype(np.float32)
    spec = _spec(state, action, np.zeros(128, np.float32))
    batch = {"state": torch.as_tensor(state), "action": torch.as_tensor(action)}
    for name, params in (("mse", {"width": 32, "depth": 2, "dropout": 0.0}),
                         ("mdn", {"width": 32, "depth": 2, "dropout": 0.0, "num_components": 2})):
        torch.manual_seed(0)
        algo = make_algorithm(name, spec, params)
        opt = torch.optim.Adam(algo.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        losses = []
        for _ in range(150):
            loss = algo.compute_loss(batch, gen)["loss"]
            losses.append(float(loss.detach()))
            opt.zero_grad()
            loss.backward()
            opt.step()
        # The mean of the last 10 steps: one step's MDN NLL jumps by nats (seen on CPUs without AMX).
        first, last = losses[0], float(np.mean(losses[-10:]))
        err = np.abs(algo.predict({"state": state}, None) - action).mean()
        # MSE: the squared error drops by 10x; MDN: the NLL (nats per sample) by more than 1 nat.
        assert last < 0.1 * first if name == "mse" else last < first - 1.0, (name, first, last)
        assert err < 0.15, (name, err)
