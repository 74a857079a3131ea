"""The offline trainer: typed configs and overrides, training, logs, exact resume, DDP, checkpoints for export."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from irvs_ros import cli
from irvs_ros.data.store import Dataset, DatasetWriter
from irvs_ros.learn.batches import InMemoryBatches, policy_spec_from_dataset, select_top_episodes
from irvs_ros.learn.checkpoint import CheckpointError, load_checkpoint, load_for_export
from irvs_ros.learn.config_schema import ConfigError, to_dict
from irvs_ros.learn.train_config import apply_overrides, check_algorithm_params, config_from_dict, load_config
from irvs_ros.learn.trainer import TrainError, parameter_digest, train
from irvs_ros.learn.weight_average import WeightAverage, WeightAverageError
from irvs_ros.runtime.spec import ObsSpec
from irvs_ros.sim.particle import ParticleEnv, ParticleOracle

N_DIM = 1
EPISODES = 12


def _particle_dataset(path: Path, episodes: int = EPISODES, seed: int = 0) -> Path:
    """Oracle demonstrations of the 1-D particle task, with rewards from the environment."""
    env = ParticleEnv(N_DIM, max_steps=20)
    oracle = ParticleOracle(N_DIM)
    writer = DatasetWriter(str(path), obs_spec=ObsSpec(state_dim=4 * N_DIM).to_dict(), action_dim=N_DIM,
                           meta={"env": "particle", "env_kwargs": {"n_dim": N_DIM, "max_steps": 20},
                                 "action_limits": {"low": [0.0] * N_DIM, "high": [1.0] * N_DIM}})
    for ep in range(episodes):
        obs, info = env.reset(seed=seed + ep)
        oracle.reset()
        states, actions, rewards = [], [], []
        done = False
        while not done:
            action = oracle(obs)
            states.append(obs["state"])
            actions.append(action)
            obs, reward, terminated, truncated, info = env.step(action)
            rewards.append(reward)
            done = terminated or truncated
        writer.add_episode(action=np.asarray(actions, np.float32), reward=np.asarray(rewards, np.float32),
                           success=bool(info["success"]), state=np.asarray(states, np.float32))
    writer.close()
    return path


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The machine's cores are shared; tiny nets gain nothing from intra-op threads.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory) -> Path:
    return _particle_dataset(tmp_path_factory.mktemp("data") / "particle1d")


def _config_dict(dataset: Path, **over) -> dict:
    base = {"dataset": str(dataset), "algorithm": "mse", "params": {"width": 32, "depth": 2, "dropout": 0.1},
            "seed": 3, "steps": 30, "batch_size": 32, "log_every": 5, "checkpoint_every": 10}
    base.update(over)
    return base


def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _train_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


# ---------------------------------------------------------------------------------------------------- config
def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['stepz'\]"):
        config_from_dict({"dataset": "d", "algorithm": "mse", "stepz": 3})
    with pytest.raises(ConfigError, match=r"steps: expected an integer, got 'many'"):
        config_from_dict({"dataset": "d", "algorithm": "mse", "steps": "many"})
    with pytest.raises(ConfigError, match=r"eval: unknown key\(s\) \['episodez'\]"):
        config_from_dict({"dataset": "d", "algorithm": "mse", "eval": {"episodez": 3}})
    with pytest.raises(ConfigError, match=r"dataset: required"):
        config_from_dict({"algorithm": "mse"})
    with pytest.raises(ConfigError, match=r"keep_top_fraction: must be in \(0, 1\]"):
        config_from_dict({"dataset": "d", "algorithm": "mse", "keep_top_fraction": 0.0})
    with pytest.raises(ConfigError, match=r"params: expected a mapping"):
        config_from_dict({"dataset": "d", "algorithm": "mse", "params": 5})
    # Algorithm params are checked against the algorithm's own config before any data is read.
    with pytest.raises(ConfigError, match=r"params \(mse\): unknown key\(s\) \['widht'\]"):
        check_algorithm_params(config_from_dict({"dataset": "d", "algorithm": "mse", "params": {"widht": 3}}))
    with pytest.raises(ConfigError, match=r"unknown 'nope'; known: \[.*'mse'"):
        check_algorithm_params(config_from_dict({"dataset": "d", "algorithm": "nope"}))
    path = _write_yaml(tmp_path / "c.yaml", {"dataset": "d", "algorithm": "mse"})
    with pytest.raises(ConfigError, match=r"c.yaml: lr: expected a number, got 'fast'"):
        load_config(path, ["lr=fast"])
    with pytest.raises(ConfigError, match=r"expected key=value"):
        load_config(path, ["steps"])
    with pytest.raises(ConfigError, match=r"steps is 1000, not a mapping"):
        apply_overrides({"steps": 1000}, ["steps.x=1"])


def test_overrides_parse_yaml_scalars_and_nest(tmp_path):
    path = _write_yaml(tmp_path / "c.yaml", {"dataset": "d", "algorithm": "mse", "params": {"width": 8},
                                             "eval": {"env": "particle", "env_kwargs": {"n_dim": 2}}})
    cfg = load_config(path, ["steps=250", "lr=5e-4", "params.depth=3", "params.width=16", "eval.env_kwargs.n_dim=4",
                             "adam_betas=[0.8, 0.9]", "grad_clip=1.5", "eval.every=100", "name=abc"])
    assert cfg.steps == 250 and cfg.lr == pytest.approx(5e-4) and cfg.name == "abc"
    assert cfg.params == {"width": 16, "depth": 3}
    assert cfg.eval.env_kwargs == {"n_dim": 4} and cfg.eval.every == 100 and cfg.eval.env == "particle"
    assert cfg.adam_betas == (0.8, 0.9) and cfg.grad_clip == 1.5
    assert load_config(path, ["eval.env=null"]).eval.env is None
    assert load_config(path).lr == pytest.approx(1e-3)  # IBC B.1 default, decayed 0.99 every 100 steps
    assert (load_config(path).lr_decay, load_config(path).lr_decay_every) == (0.99, 100)


# ---------------------------------------------------------------------------------------------------- batches
def test_spec_bounds_and_top_fraction(dataset_path):
    ds = Dataset.open(str(dataset_path))
    spec = policy_spec_from_dataset(ds, control_rate_hz=20.0)
    lo, hi = np.asarray(ds.stats["action_min"]), np.asarray(ds.stats["action_max"])
    pad = 0.05 * (hi - lo)
    assert np.allclose(spec.action_low, np.maximum(lo - pad, 0.0), atol=1e-6)
    assert np.allclose(spec.action_high, np.minimum(hi + pad, 1.0), atol=1e-6)
    assert spec.control_rate_hz == 20.0 and spec.obs.state_dim == 4 * N_DIM

    arrays = ds.arrays()
    starts = np.concatenate([[0], ds.episode_ends[:-1]])
    scores = arrays["return"][starts]
    kept = select_top_episodes(arrays, ds.episode_ends, 0.5)
    kept_eps = np.unique(kept["episode_index"])
    assert len(kept_eps) == EPISODES // 2
    assert scores[kept_eps].min() >= np.sort(scores)[EPISODES // 2 - 1] - 1e-6
    assert len(kept["action"]) == sum(int(np.sum(arrays["episode_index"] == e)) for e in kept_eps)

    batches = InMemoryBatches(arrays, spec)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    b1, b2 = batches.sample(16, g1), batches.sample(16, g2)
    assert b1["state"].shape == (16, 4 * N_DIM) and b1["action"].shape == (16, N_DIM) and b1["return"].shape == (16,)
    assert torch.equal(b1["action"], b2["action"])
    assert not torch.equal(batches.sample(16, g1)["state"], b1["state"])


# ---------------------------------------------------------------------------------------------------- training
def test_training_reduces_loss_and_logs_scalars(dataset_path, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config_from_dict(_config_dict(dataset_path, steps=60, lr=3e-3, lr_decay=0.5, lr_decay_every=20,
                                        log_every=10, params={"width": 32, "depth": 2, "dropout": 0.0},
                                        eval={"env": "particle", "env_kwargs": {"n_dim": N_DIM, "max_steps": 20},
                                              "episodes": 3, "every": 30}))
    result = train(cfg, tmp_path / "run")
    run = result.run_dir
    rows = _train_rows(run)
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    # StepLR stepped per iteration: the lr logged after step k is lr * decay ** (k // every).
    assert [r["lr"] for r in rows] == pytest.approx([3e-3 * 0.5 ** (r["step"] // 20) for r in rows])
    assert all(r["steps_per_sec"] > 0 for r in rows)

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    for tag in ("train/loss", "train/mse", "train/lr", "train/steps_per_sec"):
        assert tag in acc.Tags()["scalars"], acc.Tags()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [10, 20, 30, 40, 50, 60]
    assert losses[-1].value == pytest.approx(rows[-1]["loss"], rel=1e-5)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [30, 60] and all(r["episodes"] == 3 for r in evals)
    assert [e.step for e in acc.Scalars("eval/success_rate")] == [30, 60]
    assert [e.value for e in acc.Scalars("eval/mean_reward")] == pytest.approx([r["mean_reward"] for r in evals])
    assert result.eval_metrics["mean_reward"] == pytest.approx(evals[-1]["mean_reward"])

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved == to_dict(cfg)
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "step_00000030.pt").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 60 and summary["world_size"] == 1


def test_resume_is_bit_identical(dataset_path, tmp_path):
    # Dropout on: the global torch RNG must be restored too, not only the batch and loss generators.
    data = _config_dict(dataset_path, steps=30, params={"width": 32, "depth": 2, "dropout": 0.2})
    straight = train(config_from_dict(data), tmp_path / "straight")
    cfg_path = _write_yaml(tmp_path / "cfg.yaml", data)
    assert cli.main(["train", str(cfg_path), "steps=15", "--out", str(tmp_path / "split"), "--quiet"]) == 0
    assert load_checkpoint(tmp_path / "split")["step"] == 15
    # The run directory stands for its saved config; overrides may follow the flags.
    assert cli.main(["train", str(tmp_path / "split"), "--resume", "--quiet", "steps=30"]) == 0

    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == 30
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    losses = [[r["loss"] for r in _train_rows(tmp_path / name)] for name in ("straight", "split")]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    assert parameter_digest(straight.algorithm) == parameter_digest(load_for_export(tmp_path / "split")[0])


def test_resume_guards(dataset_path, tmp_path, capsys):
    data = _config_dict(dataset_path, steps=5, log_every=5)
    train(config_from_dict(data), tmp_path / "run")
    with pytest.raises(TrainError, match="already holds a checkpoint.*--resume"):
        train(config_from_dict(data), tmp_path / "run")
    with pytest.raises(TrainError, match="params was .* the config now says"):
        train(config_from_dict({**data, "params": {"width": 8, "depth": 2}}), tmp_path / "run", resume=True)
    with pytest.raises(TrainError, match="no checkpoint at"):
        train(config_from_dict(data), tmp_path / "elsewhere", resume=True)
    cfg_path = _write_yaml(tmp_path / "cfg.yaml", data)
    assert cli.main(["train", str(cfg_path), "batch_size=0", "--out", str(tmp_path / "x")]) == 2
    assert "batch_size: must be > 0" in capsys.readouterr().err


def test_load_for_export_rebuilds_the_policy(dataset_path, tmp_path):
    cfg = config_from_dict(_config_dict(dataset_path, steps=10))
    result = train(cfg, tmp_path / "run")
    ds = Dataset.open(str(dataset_path))
    obs = {"state": ds.arrays()["state"][:7]}
    before = result.algorithm.predict(obs, np.random.default_rng(0))
    algo, config, fingerprint = load_for_export(tmp_path / "run")
    assert not algo.training and next(algo.parameters()).device.type == "cpu"
    after = algo.predict(obs, np.random.default_rng(0))
    assert before.shape == (7, N_DIM)
    np.testing.assert_array_equal(before, after)
    assert config == {**to_dict(cfg), "export_weights": "raw", "export_step": 10} and fingerprint == ds.fingerprint
    assert algo.spec == result.algorithm.spec


# ------------------------------------------------------------------------------------- weight average (EMA)
def test_weight_average_follows_the_warmed_up_decay():
    layer = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    ema = WeightAverage(layer, decay=0.5)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    expected = 0.0
    for n in range(6):
        d = min(0.5, (1 + n) / (10 + n))  # 0.1, 0.18, ... then 0.5
        expected = d * expected + (1 - d) * 1.0
        ema.update(layer)
        assert ema.params["weight"].item() == pytest.approx(expected, abs=1e-7)
    with ema.swapped_into(layer):
        assert layer.weight.item() == pytest.approx(expected, abs=1e-7)
    assert layer.weight.item() == 1.0  # the raw weights come back
    with pytest.raises(WeightAverageError, match="must be in"):
        WeightAverage(layer, decay=1.0)


def test_ema_leaves_the_raw_weights_alone_resumes_exactly_and_is_what_export_takes(dataset_path, tmp_path):
    # Dropout and an in-training evaluation: neither the average nor evaluating it may disturb training.
    data = _config_dict(dataset_path, steps=20, params={"width": 32, "depth": 2, "dropout": 0.2},
                        eval={"env": "particle", "env_kwargs": {"n_dim": N_DIM, "max_steps": 20}, "episodes": 2,
                              "every": 10})
    plain = train(config_from_dict(data), tmp_path / "plain")
    averaged = train(config_from_dict({**data, "ema_decay": 0.9}), tmp_path / "ema")
    assert parameter_digest(plain.algorithm) == parameter_digest(averaged.algorithm)
    evals = [json.loads(r) for r in (tmp_path / "ema" / "metrics.jsonl").read_text().splitlines()]
    assert [r["weights"] for r in evals if r["kind"] == "eval"] == ["ema", "ema"]

    ckpt = load_checkpoint(tmp_path / "ema")
    assert ckpt["ema"]["updates"] == 20 and load_checkpoint(tmp_path / "plain")["ema"] is None
    exported, config, _ = load_for_export(tmp_path / "ema")
    assert config["export_weights"] == "ema"
    for name, p in exported.named_parameters():
        assert torch.equal(p.detach(), ckpt["ema"]["params"][name]), name
    assert any(not torch.equal(ckpt["ema"]["params"][k], ckpt["model"][k]) for k in ckpt["ema"]["params"])
    raw, config, _ = load_for_export(tmp_path / "ema", weights="raw")
    assert parameter_digest(raw) == parameter_digest(plain.algorithm) and config["export_weights"] == "raw"
    with pytest.raises(CheckpointError, match="holds no EMA weights"):
        load_for_export(tmp_path / "plain", weights="ema")

    cfg_path = _write_yaml(tmp_path / "cfg.yaml", {**data, "ema_decay": 0.9})
    assert cli.main(["train", str(cfg_path), "steps=10", "--out", str(tmp_path / "split"), "--quiet"]) == 0
    assert cli.main(["train", str(tmp_path / "split"), "--resume", "--quiet", "steps=20"]) == 0
    split = load_checkpoint(tmp_path / "split")["ema"]
    assert split["updates"] == 20
    for name, value in ckpt["ema"]["params"].items():
        assert torch.equal(value, split["params"][name]), name
    with pytest.raises(TrainError, match="ema_decay was 0.9"):
        train(config_from_dict({**data, "ema_decay": 0.5, "steps": 30}), tmp_path / "split", resume=True)
    with pytest.raises(ConfigError, match="ema_decay: must be in"):
        config_from_dict({**data, "ema_decay": -0.1})


def test_eval_runs_an_implicit_policy_at_changed_argmin_settings(dataset_path, tmp_path, capsys):
    data = _config_dict(dataset_path, algorithm="ebm_dfo", steps=5,
                        params={"width": 16, "depth": 2, "num_counter_examples": 8, "dfo_samples": 256})
    train(config_from_dict(data), tmp_path / "run")
    policy = tmp_path / "ebm.onnx"
    assert cli.main(["export", str(tmp_path / "run"), "--out", str(policy)]) == 0
    out = tmp_path / "r.json"
    base = ["eval", "--policy", str(policy), "--env", "particle", "--n-dim", str(N_DIM), "--episodes", "2",
            "--out", str(out)]
    assert cli.main([*base, "--argmin", "iterations=1", "--argmin", "num_samples=64"]) == 0
    assert json.loads(out.read_text())["argmin_overrides"] == {"iterations": 1, "num_samples": 64}
    capsys.readouterr()
    assert cli.main([*base, "--argmin", "sigma=1"]) == 2
    assert "unknown argmin override(s) ['sigma']" in capsys.readouterr().err


def test_select_evaluates_every_checkpoint_and_exports_the_best(dataset_path, tmp_path, capsys):
    from irvs_ros.runtime.policy_file import load_policy

    data = _config_dict(dataset_path, steps=30, checkpoint_every=10, ema_decay=0.9)
    train(config_from_dict(data), tmp_path / "run")
    out = tmp_path / "best.onnx"
    argv = ["select", str(tmp_path / "run"), "--env", "particle", "--n-dim", str(N_DIM), "max_steps=20",
            "--episodes", "3", "--seed", "50", "--from-step", "20", "--out", str(out)]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "run" / "selection_ema.json").read_text())
    assert [r["step"] for r in report["rows"]] == [20, 30] and {r["weights"] for r in report["rows"]} == {"ema"}
    assert report["command"].startswith(f"irvs select {tmp_path / 'run'} ") and "--run" not in report["command"]
    best = max(report["rows"], key=lambda r: (r["success_rate"], r["mean_return"], r["step"]))
    assert report["chosen_step"] == best["step"] and f"chosen: step {best['step']}" in capsys.readouterr().out

    # The copied file is that checkpoint's averaged policy: same actions as the torch EMA weights.
    algo, _, _ = load_for_export(tmp_path / "run" / "checkpoints" / f"step_{best['step']:08d}.pt")
    obs = {"state": Dataset.open(str(dataset_path)).arrays()["state"][:5]}
    np.testing.assert_allclose(load_policy(out).act(obs, np.random.default_rng(0)),
                               algo.predict(obs, np.random.default_rng(0)), atol=1e-5)

    assert cli.main([*argv[:-2], "--from-step", "31"]) == 2
    assert "holds no step_*.pt at step 31 or later" in capsys.readouterr().err
    assert cli.main([*argv[:-2], "--weights", "raw", "--out", str(tmp_path / "x.txt")]) == 2
    assert "should name a .onnx file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- DDP
def test_ddp_two_cpu_processes(dataset_path, tmp_path):
    data = _config_dict(dataset_path, steps=40, log_every=10, lr=3e-3, device="cpu",
                        params={"width": 32, "depth": 2, "dropout": 0.0})
    cfg_path = _write_yaml(tmp_path / "cfg.yaml", data)
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "irvs_ros.cli", "train", str(cfg_path), "--out", str(run)],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"run dir: {run}" in proc.stdout and proc.stdout.count("run dir:") == 1  # rank 0 prints alone

    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 40
    # Each rank drew its own batches (different local losses) yet ended with bit-identical weights:
    # only averaged gradients can do that.
    digests, losses = summary["param_digests"], summary["rank_last_losses"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert len(losses) == 2 and losses[0] != losses[1]
    ckpt = load_checkpoint(run)
    assert len(ckpt["rng"]) == 2 and ckpt["extra"]["world_size"] == 2
    assert parameter_digest(load_for_export(run)[0]) == digests[0]
    rows = _train_rows(run)
    assert rows[-1]["loss"] < rows[0]["loss"]


# ---------------------------------------------------------------------------------------------------- others
def test_nearest_neighbour_fits_once_on_the_top_episodes(dataset_path, tmp_path):
    ds = Dataset.open(str(dataset_path))
    kept = select_top_episodes(ds.arrays(), ds.episode_ends, 0.5)
    result = train(config_from_dict(_config_dict(dataset_path, algorithm="nn", params={}, keep_top_fraction=0.5)),
                   tmp_path / "nn")
    assert result.step == 0 and result.summary["trainable"] is False
    assert result.summary["dataset_steps"] == len(kept["action"]) < ds.num_steps
    algo, _, _ = load_for_export(tmp_path / "nn")
    # Each stored state's nearest neighbour is itself: the table holds exactly the kept episodes.
    np.testing.assert_array_equal(algo.predict({"state": kept["state"][::7]}, np.random.default_rng(0)),
                                  kept["action"][::7])


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "config").glob("train_particle_*.yaml"))


def test_particle_configs_cover_every_algorithm():
    names = {yaml.safe_load(p.read_text())["algorithm"] for p in CONFIGS}
    assert names == {"ebm_dfo", "ebm_adfo", "ebm_langevin", "irvs", "mse", "mdn", "nn"}


@pytest.mark.parametrize("path", sorted(CONFIGS[0].parent.glob("train_*.yaml")), ids=lambda p: p.stem)
def test_every_training_config_loads_with_valid_algorithm_params(path):
    cfg = load_config(path)
    check_algorithm_params(cfg)  # raises on a parameter the algorithm does not take or a bad value
    assert cfg.name and cfg.steps > 0


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_particle_config_trains(path, dataset_path, tmp_path):
    cfg = load_config(path)
    check_algorithm_params(cfg)
    assert cfg.eval.env == "particle" and cfg.control_rate_hz == 20.0
    # Two steps with the config's own network, on the tiny 1-D dataset, no evaluation.
    small = load_config(path, [f"dataset={dataset_path}", "steps=2", "batch_size=4", "eval.env=null"])
    result = train(small, tmp_path / "run")
    assert result.step == (2 if result.summary["trainable"] else 0)
    assert all(math.isfinite(v) for v in result.train_metrics.values())


def _denormals_survive() -> bool:
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # below float32's smallest normal, 1.18e-38
    return bool((tiny * 1.5).item() != 0.0)


def test_training_flushes_denormals_while_it_runs_and_restores_them(dataset_path, tmp_path, monkeypatch):
    """flush_denormal (default on): denormal floats are zero during the run (x86 takes a slow path on them; the
    particle EBM trained 4x slower without it, bench/results/denormals.md) and survive again after it."""
    assert _denormals_survive()
    seen: list[bool] = []
    real_step = torch.optim.Adam.step

    def spying_step(self, *args, **kwargs):
        seen.append(_denormals_survive())
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spying_step)
    train(config_from_dict(_config_dict(dataset_path, steps=3)), tmp_path / "on")
    assert seen == [False] * 3 and _denormals_survive()
    seen.clear()
    train(config_from_dict(_config_dict(dataset_path, steps=3, flush_denormal=False)), tmp_path / "off")
    assert seen == [True] * 3 and _denormals_survive()
