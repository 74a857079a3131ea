"""Demo generation, seeded evaluation rollouts, and the `irvs demos` / `irvs eval` commands."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from irvs_ros import cli
from irvs_ros.data.store import Dataset
from irvs_ros.runtime import policy_file
from irvs_ros.runtime.spec import NormStats, ObsSpec, PolicySpec
from irvs_ros.sim.registry import make_env
from irvs_ros.sim.rollout import OraclePolicy, collect_demos, evaluate


def _same_episodes(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("state", "action", "reward"):
            np.testing.assert_array_equal(x[key], y[key])
        assert x["success"] == y["success"] and x["info"] == y["info"]


def test_collect_demos_is_deterministic_and_independent_of_workers():
    one = collect_demos("particle", {"n_dim": 2}, 10, seed=3)
    again = collect_demos("particle", {"n_dim": 2}, 10, seed=3)
    parallel = collect_demos("particle", {"n_dim": 2}, 10, seed=3, workers=2)
    _same_episodes(one, again)
    _same_episodes(one, parallel)
    other = collect_demos("particle", {"n_dim": 2}, 10, seed=4)
    assert not np.allclose(one[0]["state"][0], other[0]["state"][0])
    assert all(ep["success"] for ep in one)
    assert [ep["info"]["index"] for ep in one] == list(range(10))
    # Demo starts do not coincide with evaluation starts (which reset with seed + i), even for equal seeds.
    env = make_env("particle", n_dim=2)
    eval_starts = np.array([env.reset(seed=3 + i)[0]["state"] for i in range(10)])
    demo_starts = np.array([ep["state"][0] for ep in one])
    assert np.min(np.abs(eval_starts[:, None] - demo_starts[None]).max(axis=2)) > 0


def test_action_noise_and_only_success():
    clean = collect_demos("particle", {"n_dim": 2}, 20, seed=0)
    noisy = collect_demos("particle", {"n_dim": 2}, 20, seed=0, action_noise=0.05)
    assert not np.allclose(clean[0]["action"], noisy[0]["action"])
    for ep in noisy:  # the recorded action is the executed one, within the env's limits
        assert ep["action"].min() >= 0.0 and ep["action"].max() <= 1.0
    rate = np.mean([ep["success"] for ep in noisy])
    assert rate < 0.9  # heavy noise breaks some episodes ...
    kept = collect_demos("particle", {"n_dim": 2}, 20, seed=0, action_noise=0.05, only_success=True)
    assert len(kept) == 20 and all(ep["success"] for ep in kept)  # ... which only_success replaces
    assert max(ep["info"]["index"] for ep in kept) >= 20
    with pytest.raises(RuntimeError, match="succeeded"):
        list(collect_demos("particle", {"n_dim": 2}, 5, seed=0, action_noise=5.0, only_success=True))
    with pytest.raises(ValueError, match="unknown environment"):
        collect_demos("pendulum", {}, 5, seed=0)


def _goal2_policy(n):
    """Stateless policy: always command goal 2 (often misses goal 1)."""
    return lambda obs: obs["state"][:, 3 * n:]


def _room_controller(obs):
    """Deterministic room policy that heads for the nearest corner (episodes end at different times)."""
    pos = obs["state"].astype(np.float64)
    corner = np.where(pos >= 0, 1.0, -1.0)
    d = corner - pos
    return 0.1 * d / np.maximum(np.abs(d).max(axis=1, keepdims=True), 0.1)


@pytest.mark.parametrize("env_name,kwargs,make_act", [
    ("particle", {"n_dim": 2}, lambda: _goal2_policy(2)),
    ("room", {}, lambda: _room_controller),
    ("room", {}, lambda: OraclePolicy("room", {}, 500)),  # stateful, reset per episode
])
def test_lockstep_evaluation_matches_one_at_a_time(env_name, kwargs, make_act):
    batch_sizes = []
    act = make_act()

    def recording(obs):
        batch_sizes.append(len(obs["state"]))
        return act(obs)

    if hasattr(act, "reset"):
        recording.reset = act.reset
    batched = evaluate(env_name, kwargs, recording, 12, seed=500)
    assert set(batch_sizes) == {12}
    batch_sizes.clear()
    single = evaluate(env_name, kwargs, recording, 12, seed=500, batch=False)
    assert set(batch_sizes) == {1}
    assert batched == single
    assert [e["seed"] for e in batched["per_episode"]] == list(range(500, 512))
    assert batched["episodes"] == 12
    assert batched["success_rate"] == np.mean([e["success"] for e in batched["per_episode"]])


def test_evaluate_rejects_bad_actions():
    with pytest.raises(ValueError, match=r"shape \(3, 3\), expected \(3, 2\)"):
        evaluate("particle", {"n_dim": 2}, lambda obs: np.zeros((3, 3)), 3, 0)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate("room", {}, lambda obs: np.full((2, 2), np.nan), 2, 0)


def test_irvs_demos_then_eval_oracle(tmp_path, capsys):
    out = tmp_path / "p2.h5"
    assert cli.main(["demos", "--env", "particle", "--n-dim", "2", "--episodes", "6", "--seed", "0",
                     "--out", str(out)]) == 0
    assert "wrote 6 episodes (300 steps)" in capsys.readouterr().out
    ds = Dataset.open(out)
    assert ds.num_episodes == 6 and ds.action_dim == 2 and ds.obs_spec["state_dim"] == 8
    assert ds.meta["env"] == "particle" and ds.meta["env_kwargs"] == {"n_dim": 2}
    assert ds.meta["action_limits"] == {"low": [0.0, 0.0], "high": [1.0, 1.0]}
    assert ds.meta["command"].startswith("irvs demos --env particle --n-dim 2 --episodes 6")
    assert ds.success.all()
    np.testing.assert_array_equal(ds.arrays(["action"])["action"],
                                  np.concatenate([e["action"] for e in collect_demos("particle", {"n_dim": 2}, 6, 0)]))

    results = tmp_path / "r.json"
    assert cli.main(["eval", "--policy", "oracle", "--env", "particle", "--n-dim", "2", "--episodes", "8",
                     "--seed", "1000", "--out", str(results)]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(results.read_text())
    assert printed["success_rate"] == written["success_rate"] == 1.0
    assert len(written["per_episode"]) == 8 and written["policy"] == "oracle"
    assert written["command"].startswith("irvs eval --policy oracle --env particle --n-dim 2")

    # Environment parameters as KEY=VALUE, oracle options, and clear errors for bad ones.
    assert cli.main(["demos", "--env", "leftmost", "delta=0.001", "--oracle", "p_optimal=0.0", "--episodes", "5",
                     "--out", str(tmp_path / "l.h5")]) == 0
    ds = Dataset.open(tmp_path / "l.h5")
    assert ds.meta["env_kwargs"] == {"delta": 0.001} and ds.meta["quality"]["oracle_kwargs"] == {"p_optimal": 0.0}
    state = ds.arrays(["state"])["state"]
    assert np.all(np.abs(state[:, 4] - state[:, 2]) <= 0.001 + 1e-6)  # second goal's x within delta of the first
    capsys.readouterr()
    assert cli.main(["eval", "--policy", "oracle", "--env", "room", "n_dim=3"]) == 2
    assert "has no parameter(s) ['n_dim']" in capsys.readouterr().err
    assert cli.main(["demos", "--env", "room", "oops", "--out", str(tmp_path / "x.h5")]) == 2
    assert "not KEY=VALUE" in capsys.readouterr().err


def _goal1_policy_file(path, n=2):
    """A hand-built explicit ONNX policy file that commands goal 1 (state columns 2n..3n), no torch involved."""
    node = helper.make_node("Slice", ["state", "starts", "ends", "axes"], ["action"])
    inits = [helper.make_tensor(name, TensorProto.INT64, [1], [v]) for name, v in
             (("starts", 2 * n), ("ends", 3 * n), ("axes", 1))]
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, ["B", 4 * n])
    action = helper.make_tensor_value_info("action", TensorProto.FLOAT, ["B", n])
    graph = helper.make_graph([node], "goal1", [state], [action], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    spec = PolicySpec(ObsSpec(4 * n), n, NormStats((0.5,) * 4 * n, (0.3,) * 4 * n, (0.0,) * n, (1.0,) * n),
                      (0.0,) * n, (1.0,) * n, extra={"env": "particle", "env_kwargs": {"n_dim": n}})
    meta = {"format_version": str(policy_file.FORMAT_VERSION), "algorithm": "handmade", "spec": spec.to_json(),
            "argmin": json.dumps({"method": "none", "eta_inv": 0.0}), "eta_inv": "0.0", "train_config": "{}",
            "dataset_fingerprint": "", "created": "2026-01-01T00:00:00+00:00", "torch_version": "none"}
    for key in policy_file.METADATA_KEYS:
        model.metadata_props.add(key=policy_file.PREFIX + key, value=meta[key])
    onnx.save(model, str(path))


def test_irvs_eval_runs_a_policy_file(tmp_path, capsys):
    path = tmp_path / "goal1.onnx"
    _goal1_policy_file(path)
    out = tmp_path / "r.json"
    # --env omitted: the environment recorded in the policy file is used.
    assert cli.main(["eval", "--policy", str(path), "--episodes", "10", "--seed", "7", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    expected = evaluate("particle", {"n_dim": 2}, lambda obs: obs["state"][:, 4:6], 10, 7)
    assert result["env"] == "particle" and result["algorithm"] == "handmade"
    assert result["per_episode"] == expected["per_episode"]
    assert result["success_rate"] == 0.0 and result["mean_reward"] > 0.3  # reaches goal 1, never goal 2
    capsys.readouterr()
    assert cli.main(["eval", "--policy", str(path), "--env", "particle", "--n-dim", "3"]) == 2
    assert "state_dim=8, action_dim=2" in capsys.readouterr().err
    assert cli.main(["eval", "--policy", str(tmp_path / "missing.onnx"), "--env", "room"]) == 2
    assert "not found" in capsys.readouterr().err
