"""Precision conversion of policy files (runtime.precision, `irvs quantize`): converted files keep the policy-file
contract (load with load_policy, same metadata plus irvs.precision), their energies stay close to fp32 and their
chosen actions agree with fp32's within the stated tolerance; bad requests and bad files are clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from irvs_ros import cli
from irvs_ros.commands.quantize import action_agreement
from irvs_ros.learn.algorithms import make_algorithm
from irvs_ros.learn.export import export_policy
from irvs_ros.runtime.policy_file import PolicyFileError, load_policy, read_metadata
from irvs_ros.runtime.precision import PRECISIONS, PrecisionError, convert_policy
from irvs_ros.runtime.spec import NormStats, ObsSpec, PolicySpec, SpecError, widened_bounds

torch.set_num_threads(1)

S, N = 3, 256
IMAGE_SHAPE = (16, 16, 3)
# Head layers must be at least min_features (64) wide to be converted.
HEAD = {"width": 64, "depth": 2, "resnet": True}
# Chosen actions of a converted policy, acting with the same rng seed as fp32, must lie within this fraction of the
# action range of fp32's: the last DFO round perturbs candidates with std 0.33 * 0.5^2 = 0.08 in normalized units
# (4% of the [-1, 1] range), so fp32 itself only resolves its argmin to a few percent.
TOLERANCE = {"median": 0.02, "max": 0.08}


def _data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    state = rng.normal(size=(N, S)).astype(np.float32)
    # Two-valued in the sign of state[0] plus a smooth part: an energy with one clear minimum per observation.
    action = np.where(state[:, :1] > 0, 0.5, -0.5) + 0.3 * np.tanh(state[:, 1:3])
    ret = (1.0 / (1.0 + np.exp(-state[:, 2]))).astype(np.float32)
    return {"state": state, "action": action.astype(np.float32), "return": ret}


def _spec(data: dict[str, np.ndarray], image_shape: tuple | None = None) -> PolicySpec:
    lo, hi = widened_bounds(data["action"].min(0), data["action"].max(0))
    stats = NormStats(tuple(data["state"].mean(0)), tuple(data["state"].std(0) + 1e-3), tuple(data["action"].min(0)),
                      tuple(data["action"].max(0)), float(data["return"].min()), float(data["return"].max()))
    return PolicySpec(ObsSpec(data["state"].shape[1], image_shape), 2, stats, tuple(lo), tuple(hi))


def _train(algo, data: dict[str, np.ndarray], steps: int) -> None:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(algo.parameters(), lr=3e-3)
    algo.train()
    rng = np.random.default_rng(1)
    for _ in range(steps):
        rows = rng.integers(0, len(data["action"]), 64)
        loss = algo.compute_loss({k: torch.as_tensor(v[rows]) for k, v in data.items()}, gen)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    algo.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """fp32 policy files: a trained state-only IBC (DFO), an untrained IRvS (DFO, return column), an untrained
    image IBC and an untrained IBC with Langevin (exported energy gradients)."""
    d = tmp_path_factory.mktemp("precision")
    data = _data()
    torch.manual_seed(0)
    ibc = make_algorithm("ebm_dfo", _spec(data), {**HEAD, "num_counter_examples": 32, "dfo_samples": 256})
    _train(ibc, data, 150)
    irvs = make_algorithm("irvs", _spec(data), {**HEAD, "method": "dfo", "spectral_norm": False,
                                                "num_counter_examples": 8, "dfo_samples": 128})
    image = make_algorithm("ebm_dfo", _spec(data, IMAGE_SHAPE), {**HEAD, "num_counter_examples": 8,
                                                                  "dfo_samples": 128})
    langevin = make_algorithm("ebm_langevin", _spec(data), {**HEAD, "langevin_iterations": 4,
                                                            "langevin_samples": 32, "num_counter_examples": 4})
    return {
        "dir": d, "data": data,
        "ibc": export_policy(ibc, d / "ibc.onnx", train_config={"steps": 150}, dataset_fingerprint="fp-ibc"),
        "irvs": export_policy(irvs, d / "irvs.onnx"),
        "image": export_policy(image, d / "image.onnx"),
        "langevin": export_policy(langevin, d / "langevin.onnx"),
        "mse": export_policy(make_algorithm("mse", _spec(data), {"width": 64, "depth": 2}), d / "mse.onnx"),
    }


def _obs(data: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return {"state": data["state"][rows]}


def _image_obs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"state": rng.normal(size=(n, S)).astype(np.float32),
            "image": rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)}


def _candidates(policy, b: int, n: int = 200, seed: int = 3) -> np.ndarray:
    low, high = np.float32(-1.0), np.float32(1.0)
    d = int(policy.argmin["variable_dim"])
    return low + (high - low) * np.random.default_rng(seed).random((b, n, d), dtype=np.float32)


def _energy_error(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean |E_converted - E_fp32| over the spread (std) of the fp32 energies."""
    return float(np.mean(np.abs(got - ref)) / ref.std())


@pytest.mark.parametrize("precision,calibrated", [("int8", True), ("int8", False), ("fp16", False)])
def test_converted_policy_keeps_the_contract_and_acts_like_fp32(files, tmp_path, precision, calibrated):
    data = files["data"]
    out = tmp_path / f"ibc_{precision}.onnx"
    calibration = _obs(data, slice(0, 32)) if calibrated else None
    assert convert_policy(files["ibc"], out, precision, calibration) == out
    before, after = read_metadata(files["ibc"]), read_metadata(out)
    # Every original key is kept with its value; two are added.
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {"precision", "quantization"} and after["precision"] == precision
    details = json.loads(after["quantization"])
    assert details["layers"] == 2 and details["source_sha256"]
    if precision == "int8":
        assert details["activations"].startswith("uint8 static" if calibrated else "uint8 dynamic")
        ops = {n.op_type for n in onnx.load(str(out)).graph.node}
        assert ("MatMulIntegerToFloat" if calibrated else "DynamicQuantizeMatMul") in ops
    assert out.stat().st_size < files["ibc"].stat().st_size  # the fp32 weights are gone

    ref, conv = load_policy(files["ibc"]), load_policy(out)
    assert conv.precision == precision and ref.precision == "fp32"
    assert conv.spec == ref.spec and conv.argmin == ref.argmin and conv.algorithm == ref.algorithm
    obs = _obs(data, slice(100, 140))  # not the calibration rows
    cand = _candidates(ref, 40)
    err = _energy_error(ref.energy(obs, cand), conv.energy(obs, cand))
    assert err < (0.02 if precision == "int8" else 1e-3), err
    assert details["check"]["energy_mean_err_over_std"] < 0.05
    dist = action_agreement(ref, conv, obs, seed=7)
    assert np.median(dist) <= TOLERANCE["median"] and dist.max() <= TOLERANCE["max"], (np.median(dist), dist.max())
    # The tolerance is tight enough to matter: acting on other observations is far outside it.
    other = {"state": obs["state"][::-1].copy()}
    span = np.asarray(ref.spec.action_high) - np.asarray(ref.spec.action_low)
    far = np.abs(conv.act(other, np.random.default_rng(7)) - ref.act(obs, np.random.default_rng(7))).max(1) / span.min()
    assert np.median(far) > 5 * TOLERANCE["median"], np.median(far)


def test_irvs_image_and_langevin_files_convert(files, tmp_path):
    # IRvS (return column, tilt during calibration), calibrated static int8.
    irvs_out = convert_policy(files["irvs"], tmp_path / "irvs8.onnx", "int8", _obs(files["data"], slice(0, 8)))
    ref, conv = load_policy(files["irvs"], eta_inv=2.0), load_policy(irvs_out, eta_inv=2.0)
    obs = _obs(files["data"], slice(50, 58))
    action, info = conv.act_with_info(obs, np.random.default_rng(0))
    assert action.shape == (8, 2) and np.all(np.isfinite(info["energy"])) and info["return"].shape == (8,)
    cand = _candidates(ref, 8)
    assert _energy_error(ref.energy(obs, cand), conv.energy(obs, cand)) < 0.05
    # Image policy: calibration observations carry images; the encoder stays fp32, the head is converted.
    image_out = convert_policy(files["image"], tmp_path / "image8.onnx", "int8", _image_obs(6))
    ref, conv = load_policy(files["image"]), load_policy(image_out)
    obs = _image_obs(4, seed=1)
    cand = _candidates(ref, 4)
    assert _energy_error(ref.energy(obs, cand), conv.energy(obs, cand)) < 0.05
    assert conv.act(obs, np.random.default_rng(0)).shape == (4, 2)
    # Langevin: the exported energy gradient's layers are converted too and still track fp32.
    lang_out = convert_policy(files["langevin"], tmp_path / "lang8.onnx", "int8")
    ref, conv = load_policy(files["langevin"]), load_policy(lang_out)
    obs = _obs(files["data"], slice(0, 4))
    cand = _candidates(ref, 4)
    (e0, g0), (e1, g1) = ref.energy_and_grad(obs, cand), conv.energy_and_grad(obs, cand)
    assert _energy_error(e0, e1) < 0.05
    assert np.mean(np.abs(g1 - g0)) / np.std(g0) < 0.1
    assert json.loads(read_metadata(lang_out)["quantization"])["layers"] >= 4  # forward and backward layers


def test_bad_requests_are_clear_errors(files, tmp_path):
    with pytest.raises(PrecisionError, match="unknown precision 'int4'.*int8"):
        convert_policy(files["ibc"], tmp_path / "x.onnx", "int4")
    with pytest.raises(PrecisionError, match="'bf16' is not supported: onnxruntime's CPU execution provider has no "
                                             "bfloat16 MatMul"):
        convert_policy(files["ibc"], tmp_path / "x.onnx", "bf16")
    with pytest.raises(PrecisionError, match="another file than its source"):
        convert_policy(files["ibc"], files["ibc"], "int8")
    with pytest.raises(PrecisionError, match="explicit policy"):
        convert_policy(files["mse"], tmp_path / "x.onnx", "int8")
    with pytest.raises(PrecisionError, match="no observations"):
        convert_policy(files["ibc"], tmp_path / "x.onnx", "int8", {"state": np.zeros((0, 3), np.float32)})
    with pytest.raises(SpecError, match=r"state has shape \(4, 5\), expected \(B, 3\)"):
        convert_policy(files["ibc"], tmp_path / "x.onnx", "int8", {"state": np.zeros((4, 5), np.float32)})
    int8 = convert_policy(files["ibc"], tmp_path / "once.onnx", "int8")
    with pytest.raises(PrecisionError, match="already converted to 'int8'"):
        convert_policy(int8, tmp_path / "twice.onnx", "int8")
    with pytest.raises(PrecisionError, match="no per-candidate MatMul"):
        convert_policy(files["ibc"], tmp_path / "x.onnx", "int8", min_features=1000)
    with pytest.raises(PolicyFileError, match="not found"):
        convert_policy(tmp_path / "missing.onnx", tmp_path / "x.onnx", "int8")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(files["ibc"].read_bytes()[:5000])
    with pytest.raises(PolicyFileError, match="not a readable ONNX policy file"):
        convert_policy(corrupt, tmp_path / "x.onnx", "int8")
    assert not (tmp_path / "x.onnx").exists()


def test_irvs_quantize_command(files, tmp_path, capsys):
    from irvs_ros.data.store import DatasetWriter

    data = files["data"]
    dataset = tmp_path / "calib.h5"
    obs_spec = ObsSpec(S).to_dict()
    with DatasetWriter(dataset, obs_spec=obs_spec, action_dim=2) as w:
        for e in range(4):
            rows = slice(40 * e, 40 * e + 40)
            w.add_episode(state=data["state"][rows], action=data["action"][rows], reward=data["return"][rows],
                          success=True)
    out = tmp_path / "cli.onnx"
    assert cli.main(["quantize", str(files["ibc"]), "--out", str(out), "--precision", "int8", "--calibration",
                     str(dataset), "--calibration-samples", "24", "--check-samples", "8"]) == 0
    printed = capsys.readouterr().out
    assert "precision: int8  layers: 2" in printed and "uint8 static" in printed and "chosen actions" in printed
    details = json.loads(read_metadata(out)["quantization"])
    assert details["calibration_observations"] == 24
    assert cli.main(["quantize", str(files["ibc"]), "--out", str(tmp_path / "y.onnx"), "--precision", "bf16"]) == 2
    assert "not supported" in capsys.readouterr().err
    assert cli.main(["quantize", str(files["ibc"]), "--out", str(tmp_path / "y.onnx"), "--calibration",
                     str(tmp_path / "none.h5")]) == 2
    assert "no dataset" in capsys.readouterr().err
    assert cli.main(["quantize", str(files["ibc"]), "--out", str(tmp_path / "y.bin")]) == 2


def test_converted_policy_loads_without_torch(files, tmp_path):
    out = convert_policy(files["ibc"], tmp_path / "nt.onnx", "int8", _obs(files["data"], slice(0, 8)))
    code = (
        "import sys, numpy as np\n"
        "from irvs_ros.runtime import policy_file, precision\n"
        f"p = policy_file.load_policy({str(out)!r}, threads=1, spinning=False)\n"
        "a = p.act({'state': np.zeros((2, 3), np.float32)}, np.random.default_rng(0))\n"
        "assert a.shape == (2, 2) and p.precision == 'int8'\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_precisions_listed():
    assert PRECISIONS == ("int8", "fp16")
