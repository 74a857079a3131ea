"""The policy file: what export_policy writes, what load_policy refuses (with a message that says why), acting
with bad observations, runtime overrides, the `irvs export` command, and a runtime that never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime

import numpy as np
import onnx
import pytest
import torch

from irvs_ros import cli
from irvs_ros.learn.algorithms import ALGORITHMS, make_algorithm
from irvs_ros.learn.export import ExportError, export_policy
from irvs_ros.runtime.policy_file import (
    FORMAT_VERSION,
    METADATA_KEYS,
    PolicyFileError,
    default_providers,
    load_policy,
    read_metadata,
)
from irvs_ros.runtime.spec import NormStats, ObsSpec, PolicySpec, SpecError

torch.set_num_threads(1)

SMALL = {"width": 16, "depth": 2}
IMAGE_SHAPE = (16, 16, 3)


def _spec(state_dim: int = 3, image_shape: tuple | None = None) -> PolicySpec:
    stats = NormStats(tuple([0.5] * state_dim), tuple([2.0] * state_dim), (-1.0, 0.0), (1.0, 2.0), 0.0, 10.0)
    return PolicySpec(ObsSpec(state_dim, image_shape), 2, stats, (-1.1, -0.1), (1.1, 2.1), control_rate_hz=5.0)


def _state(b: int = 4, s: int = 3) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(b, s)).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A state-only and an image (+ state) MSE policy file, and the algorithms they came from."""
    d = tmp_path_factory.mktemp("policies")
    torch.manual_seed(0)
    mse = make_algorithm("mse", _spec(), SMALL)
    mse_img = make_algorithm("mse", _spec(2, IMAGE_SHAPE), SMALL)
    return {
        "dir": d,
        "mse": mse,
        "state": export_policy(mse, d / "mse.onnx", train_config={"steps": 3, "lr": 1e-3}, dataset_fingerprint="abc"),
        "image": export_policy(mse_img, d / "mse_img.onnx"),
    }


def _rewrite(src, dst, edit) -> str:
    """Copy a policy file with its metadata_props edited by edit(dict) -> dict."""
    model = onnx.load(str(src))
    props = edit({p.key: p.value for p in model.metadata_props})
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(dst))
    return str(dst)


# ---------------------------------------------------------------------------------------------------------
# What the exporter writes


def test_export_writes_complete_metadata_and_a_small_file(files):
    meta = read_metadata(files["state"])
    assert sorted(meta) == sorted(METADATA_KEYS)
    assert meta["format_version"] == str(FORMAT_VERSION) and meta["algorithm"] == "mse"
    assert PolicySpec.from_json(meta["spec"]) == files["mse"].spec
    assert json.loads(meta["argmin"]) == {"method": "none", "eta_inv": 0.0}
    assert json.loads(meta["train_config"]) == {"steps": 3, "lr": 1e-3}
    assert meta["dataset_fingerprint"] == "abc" and meta["torch_version"] == torch.__version__
    assert datetime.fromisoformat(meta["created"]).tzinfo is not None
    # The weights once, plus a little graph and metadata.
    param_bytes = sum(p.numel() * 4 for p in files["mse"].parameters())
    assert files["state"].stat().st_size < param_bytes + 16_000


def test_export_restores_mode_and_rejects_graphs_that_break_the_conventions(tmp_path):
    algo = make_algorithm("mse", _spec(), SMALL)
    algo.train()
    export_policy(algo, tmp_path / "a.onnx")
    assert algo.training  # export traced an eval-mode graph and gave the training mode back
    good = algo.export_graph

    def renamed():
        g = good()
        g.output_names = ["act"]
        return g

    algo.export_graph = renamed
    with pytest.raises(ExportError, match=r"lacks output\(s\) \['action'\]"):
        export_policy(algo, tmp_path / "b.onnx")
    assert not (tmp_path / "b.onnx").exists()


# ---------------------------------------------------------------------------------------------------------
# Files load_policy refuses


def test_missing_empty_corrupt_and_truncated_files(files, tmp_path):
    with pytest.raises(PolicyFileError, match="not found"):
        load_policy(tmp_path / "nope.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(PolicyFileError, match="empty"):
        load_policy(tmp_path / "empty.onnx")
    (tmp_path / "junk.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(PolicyFileError, match="not a readable ONNX policy file"):
        load_policy(tmp_path / "junk.onnx")
    data = files["state"].read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(PolicyFileError, match="not a readable ONNX policy file"):
        load_policy(tmp_path / "cut.onnx")
    with pytest.raises(PolicyFileError, match="not a file"):
        load_policy(tmp_path)


def test_foreign_onnx_and_wrong_format_version(files, tmp_path):
    plain = _rewrite(files["state"], tmp_path / "plain.onnx", lambda p: {})
    with pytest.raises(PolicyFileError, match="not an irvs policy file"):
        load_policy(plain)
    newer = _rewrite(files["state"], tmp_path / "v99.onnx", lambda p: {**p, "irvs.format_version": "99"})
    with pytest.raises(PolicyFileError, match=r"format version '99'.*reads version 1"):
        load_policy(newer)


@pytest.mark.parametrize("key", ["spec", "argmin", "eta_inv", "dataset_fingerprint"])
def test_missing_metadata_key_is_named(files, tmp_path, key):
    path = _rewrite(files["state"], tmp_path / "m.onnx", lambda p: {k: v for k, v in p.items() if k != "irvs." + key})
    with pytest.raises(PolicyFileError, match=rf"lacks metadata key\(s\) \['irvs\.{key}'\]"):
        load_policy(path)


def test_malformed_metadata(files, tmp_path):
    cases = {
        "irvs.spec": ("{not json", "not a valid policy spec"),
        "irvs.argmin": ("[1, 2]", "must be a JSON object"),
        "irvs.eta_inv": ("lots", "not a number"),
    }
    for key, (value, message) in cases.items():
        path = _rewrite(files["state"], tmp_path / "bad.onnx", lambda p, k=key, v=value: {**p, k: v})
        with pytest.raises(PolicyFileError, match=message):
            load_policy(path)


def test_graph_that_does_not_match_its_metadata(files, tmp_path):
    # An explicit graph that claims to need a DFO argmin: its inputs lack feat_in / candidates.
    dfo = _rewrite(files["state"], tmp_path / "dfo.onnx", lambda p: {**p, "irvs.argmin": json.dumps(
        {"method": "dfo", "variable_dim": 2, "has_return": False, "eta_inv": 0.0, "num_samples": 8})})
    with pytest.raises(PolicyFileError, match="graph inputs .* do not match argmin method 'dfo'"):
        load_policy(dfo)
    unknown = _rewrite(files["state"], tmp_path / "cem.onnx",
                       lambda p: {**p, "irvs.argmin": json.dumps({"method": "cem"})})
    with pytest.raises(PolicyFileError, match="argmin method 'cem' is unknown"):
        load_policy(unknown)
    # A spec whose state is longer than the graph's input.
    wider = _rewrite(files["state"], tmp_path / "wide.onnx", lambda p: {**p, "irvs.spec": _spec(4).to_json()})
    with pytest.raises(PolicyFileError, match=r"graph input 'state' has shape \['batch', 3\].*\(B, 4\)"):
        load_policy(wider)


# ---------------------------------------------------------------------------------------------------------
# Acting: observations, NaN, overrides


def test_act_matches_torch_and_rejects_bad_observations(files):
    policy = load_policy(files["state"])
    assert "CPUExecutionProvider" in policy.providers and policy.explicit
    obs = {"state": _state()}
    np.testing.assert_allclose(policy.act(obs, np.random.default_rng(0)), files["mse"].predict(obs, None), atol=1e-5)
    with pytest.raises(SpecError, match=r"state has shape \(4, 5\), expected \(B, 3\)"):
        policy.act({"state": _state(4, 5)}, np.random.default_rng(0))
    with pytest.raises(SpecError, match="lacks 'state'"):
        policy.act({}, np.random.default_rng(0))
    bad = _state()
    bad[1, 2] = np.nan
    with pytest.raises(SpecError, match="NaN"):
        policy.act({"state": bad}, np.random.default_rng(0))
    with pytest.raises(PolicyFileError, match="no energy"):
        policy.energy(obs, np.zeros((4, 3, 2), np.float32))


def test_image_observation_checks(files):
    policy = load_policy(files["image"])
    image = np.random.default_rng(0).integers(0, 256, (2, *IMAGE_SHAPE), dtype=np.uint8)
    state = _state(2, 2)
    action = policy.act({"state": state, "image": image}, np.random.default_rng(0))
    assert action.shape == (2, 2) and np.all(np.isfinite(action))
    with pytest.raises(SpecError, match=r"image has shape \(2, 8, 16, 3\), expected \(B, 16, 16, 3\)"):
        policy.act({"state": state, "image": image[:, :8]}, np.random.default_rng(0))
    with pytest.raises(SpecError, match="dtype float32, expected uint8"):
        policy.act({"state": state, "image": image.astype(np.float32)}, np.random.default_rng(0))
    with pytest.raises(SpecError, match="state batch 3 != image batch 2"):
        policy.act({"state": _state(3, 2), "image": image}, np.random.default_rng(0))


def test_expected_obs_mismatch(files):
    assert load_policy(files["state"], expected_obs=ObsSpec(3)).spec.obs == ObsSpec(3)
    with pytest.raises(SpecError, match=r"state_dim 3 \(file\) != 4 \(expected\)"):
        load_policy(files["state"], expected_obs=ObsSpec(4))
    with pytest.raises(SpecError, match=r"image_shape \(16, 16, 3\) \(file\) != \(32, 32, 3\)"):
        load_policy(files["image"], expected_obs=ObsSpec(2, (32, 32, 3)))


def test_nan_action_from_the_graph_is_refused(tmp_path):
    algo = make_algorithm("mse", _spec(), SMALL)
    with torch.no_grad():
        algo.actor.head.out.bias[1] = float("nan")
    policy = load_policy(export_policy(algo, tmp_path / "nan.onnx"))
    with pytest.raises(PolicyFileError, match=r"NaN/inf action for batch rows \[0, 1, 2, 3\]"):
        policy.act({"state": _state()}, np.random.default_rng(0))


def test_runtime_parameters_are_checked(files):
    with pytest.raises(PolicyFileError, match="needs a policy with a return column"):
        load_policy(files["state"], eta_inv=1.0)
    with pytest.raises(PolicyFileError, match="unknown argmin override"):
        load_policy(files["state"], argmin_overrides={"num_samples": 8})
    with pytest.raises(PolicyFileError, match="not available here"):
        load_policy(files["state"], providers=["NoSuchExecutionProvider"])
    assert default_providers()[-1] == "CPUExecutionProvider"


def _needs(name: str) -> None:
    if name not in ALGORITHMS:
        pytest.skip(f"{name!r} is not registered yet (irvs_ros/learn/algorithms/ebm.py)")


def test_argmin_overrides_change_the_optimizer_like_the_torch_config(tmp_path):
    _needs("ebm_dfo")
    torch.manual_seed(0)
    algo = make_algorithm("ebm_dfo", _spec(), {**SMALL, "num_counter_examples": 4, "dfo_samples": 64})
    path = export_policy(algo, tmp_path / "dfo.onnx")
    obs = {"state": _state()}
    policy = load_policy(path, argmin_overrides={"num_samples": 16, "iterations": 2})
    assert policy.argmin["num_samples"] == 16
    algo.config.dfo_samples, algo.config.dfo_iterations = 16, 2
    np.testing.assert_allclose(policy.act(obs, np.random.default_rng(4)), algo.predict(obs, np.random.default_rng(4)),
                               atol=1e-4)
    wide = load_policy(path, argmin_overrides={"num_samples": 16, "iterations": 2, "init_samples": 256})
    algo.config.dfo_init_samples = 256
    np.testing.assert_allclose(wide.act(obs, np.random.default_rng(4)), algo.predict(obs, np.random.default_rng(4)),
                               atol=1e-4)
    with pytest.raises(PolicyFileError, match=r"may not change \['method'\]"):
        load_policy(path, argmin_overrides={"method": "langevin"})
    with pytest.raises(PolicyFileError, match=r"unknown argmin override\(s\) \['samples'\]"):
        load_policy(path, argmin_overrides={"samples": 3})
    with pytest.raises(PolicyFileError, match="bad 'dfo' argmin parameters"):
        load_policy(path, argmin_overrides={"num_samples": 0})


def test_irvs_tilt_comes_from_the_file_or_the_caller(tmp_path):
    _needs("irvs")
    torch.manual_seed(0)
    params = {**SMALL, "method": "dfo", "spectral_norm": False, "eta_inv": 1.0, "dfo_samples": 128,
              "num_counter_examples": 4}
    algo = make_algorithm("irvs", _spec(), params)
    path = export_policy(algo, tmp_path / "irvs.onnx")
    obs = {"state": _state(8)}
    policy = load_policy(path)
    assert policy.eta_inv == 1.0 and policy.argmin["has_return"]
    np.testing.assert_allclose(policy.act(obs, np.random.default_rng(1)), algo.predict(obs, np.random.default_rng(1)),
                               atol=1e-4)
    greedy = load_policy(path, eta_inv=100.0)
    algo.config.eta_inv = 100.0
    action, info = greedy.act_with_info(obs, np.random.default_rng(1))
    np.testing.assert_allclose(action, algo.predict(obs, np.random.default_rng(1)), atol=1e-4)
    # A strong tilt picks returns near the top of the dataset's range [0, 10].
    assert np.all(info["return"] > 8.0), info["return"]
    assert np.all(np.isfinite(info["energy"]))


# ---------------------------------------------------------------------------------------------------------
# The command and the torch-free runtime


def test_irvs_export_command(files, tmp_path, capsys):
    from irvs_ros.learn.checkpoint import save_checkpoint

    algo = files["mse"]
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", algorithm=algo, algorithm_name="mse",
                           params=SMALL, spec=algo.spec, step=3, config={"algorithm": "mse", "steps": 3},
                           dataset_fingerprint="fp123")
    out = tmp_path / "policy.onnx"
    assert cli.main(["export", str(tmp_path / "run"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "algorithm: mse" in printed and "verify: max |torch - onnx|" in printed
    meta = read_metadata(out)
    assert meta["dataset_fingerprint"] == "fp123" and json.loads(meta["train_config"])["steps"] == 3
    assert ckpt.exists()
    assert cli.main(["export", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["export", str(ckpt), "--out", str(tmp_path / "policy.bin")]) == 2
    assert "should name a .onnx file" in capsys.readouterr().err


def test_export_command_checks_energies_and_accepts_only_dfo_near_ties(tmp_path, capsys, monkeypatch):
    from irvs_ros.learn.checkpoint import save_checkpoint
    from irvs_ros.runtime.policy_file import Policy

    torch.manual_seed(0)
    ebm = make_algorithm("ebm_dfo", _spec(), {**SMALL, "num_counter_examples": 8, "dfo_samples": 64})
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "last.pt", algorithm=ebm, algorithm_name="ebm_dfo",
                    params={**SMALL, "num_counter_examples": 8, "dfo_samples": 64}, spec=ebm.spec, step=1,
                    config={"algorithm": "ebm_dfo"}, dataset_fingerprint="fp")
    out = tmp_path / "ebm.onnx"
    assert cli.main(["export", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "energy / energy std" in printed and "near-tie" not in printed

    # The runtime picks another action of the same energies (as a DFO near-tie does): accepted, and said so.
    act = Policy.act
    monkeypatch.setattr(Policy, "act", lambda self, obs, rng: act(self, obs, rng) + np.float32(0.05))
    assert cli.main(["export", str(run), "--out", str(out)]) == 0
    assert "near-tie" in capsys.readouterr().out
    # An explicit policy has no such excuse: the same shift fails its export.
    mse_run = tmp_path / "mse_run"
    mse = make_algorithm("mse", _spec(), SMALL)
    save_checkpoint(mse_run / "checkpoints" / "last.pt", algorithm=mse, algorithm_name="mse", params=SMALL,
                    spec=mse.spec, step=1, config={"algorithm": "mse"}, dataset_fingerprint="fp")
    assert cli.main(["export", str(mse_run), "--out", str(tmp_path / "mse.onnx")]) == 1
    assert "actions differ" in capsys.readouterr().err
    monkeypatch.setattr(Policy, "act", act)

    # Energies that disagree (the file's graph is not the checkpoint's network) fail the export.
    energy = Policy.energy
    monkeypatch.setattr(Policy, "energy", lambda self, obs, cand: energy(self, obs, cand) * np.float32(1.01))
    assert cli.main(["export", str(run), "--out", str(out)]) == 1
    assert "energies differ" in capsys.readouterr().err


def test_export_command_sets_the_files_argmin_and_verifies_with_the_trained_one(tmp_path, capsys):
    from irvs_ros.learn.checkpoint import save_checkpoint

    torch.manual_seed(0)
    params = {**SMALL, "num_counter_examples": 8, "dfo_samples": 64}
    ebm = make_algorithm("ebm_dfo", _spec(), params)
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "last.pt", algorithm=ebm, algorithm_name="ebm_dfo", params=params,
                    spec=ebm.spec, step=1, config={"algorithm": "ebm_dfo"}, dataset_fingerprint="fp")
    out = tmp_path / "ebm.onnx"
    assert cli.main(["export", str(run), "--out", str(out), "--argmin", "num_samples=256"]) == 0
    printed = capsys.readouterr().out
    assert "changed from the trained {'num_samples': 64} to {'num_samples': 256}" in printed
    # Verification acted with the trained 64 samples, so torch and the file agree (no near-tie excuse needed).
    assert "verify: max |torch - onnx| / action range" in printed and "near-tie" not in printed, printed
    policy = load_policy(out)
    assert policy.argmin["num_samples"] == 256 and policy.argmin["iterations"] == 3
    assert policy.train_config["export_argmin"] == {"set": {"num_samples": 256}, "trained": {"num_samples": 64}}
    # The file's new setting is what runs: the same seed gives what 256 samples give at load time.
    obs = {"state": _state(2)}
    at_64 = load_policy(out, argmin_overrides={"num_samples": 64}).act(obs, np.random.default_rng(1))
    np.testing.assert_allclose(at_64, ebm.predict(obs, np.random.default_rng(1)), atol=1e-4)
    assert not np.array_equal(policy.act(obs, np.random.default_rng(1)), at_64)

    before = out.read_bytes()
    for bad, why in (("method=langevin", "may not change"), ("num_samples=0", "num_samples"),
                     ("temperature=2", "unknown argmin override"), ("num_samples", "not KEY=VALUE")):
        assert cli.main(["export", str(run), "--out", str(out), "--argmin", bad]) == 2, bad
        assert why in capsys.readouterr().err, bad
    assert out.read_bytes() == before  # a refused export leaves the file alone


def test_expose_concat_inputs_needs_a_concat(files):
    from pathlib import Path

    from irvs_ros.runtime.subgraph import SubgraphError, expose_concat_inputs

    data = Path(files["state"]).read_bytes()
    with pytest.raises(SubgraphError, match="not produced by a Concat"):
        expose_concat_inputs(data, "action")
    with pytest.raises(SubgraphError, match="not an ONNX model"):
        expose_concat_inputs(b"not onnx", "action")


def test_runtime_never_imports_torch(files):
    code = (
        "import sys, numpy as np\n"
        "from irvs_ros.runtime import argmin, policy_file\n"
        f"p = policy_file.load_policy({str(files['state'])!r})\n"
        "a = p.act({'state': np.zeros((2, 3), np.float32)}, np.random.default_rng(0))\n"
        "assert a.shape == (2, 2)\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
