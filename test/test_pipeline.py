"""Smoke tests of the end-to-end entry points (`irvs demo`, `irvs bench particle | push`) with a tiny budget."""

import json

from irvs_ros import cli


def test_demo_runs_end_to_end_and_draws_episodes(tmp_path, capsys):
    out = tmp_path / "demo"
    code = cli.main(["demo", "--out", str(out), "--demos", "20", "--steps", "5", "--episodes", "4"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 4 and 0.0 <= summary["success_rate"] <= 1.0
    assert summary["algorithm"] == "ebm_dfo" and summary["policy_bytes"] > 0
    png = out / "episodes.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "success" in capsys.readouterr().out


def test_bench_particle_writes_results_per_cell(tmp_path):
    results = tmp_path / "results" / "particle"
    code = cli.main(["bench", "particle", "--dims", "1", "--algos", "mse", "nn", "--demos", "20", "--episodes", "3",
                     "--set", "steps=5", "--algo-set", "mse:params.depth=2", "--workdir", str(tmp_path / "work"),
                     "--results", str(results)])
    assert code == 0
    report = json.loads(results.with_suffix(".json").read_text())
    assert [(c["algorithm"], c["n_dim"], c["column"]) for c in report["cells"]] == [("mse", 1, "N=1"),
                                                                                    ("nn", 1, "N=1")]
    for cell in report["cells"]:
        assert "error" not in cell, cell
        assert cell["episodes"] == 3 and 0.0 <= cell["success_rate"] <= 1.0
    assert report["budget"]["algo_overrides"] == {"mse": ["params.depth=2"]}
    assert report["machine"]["torch"] and report["machine"]["cpu_count"] >= 1
    table = results.with_suffix(".md").read_text()
    assert "| mse |" in table and "| nn |" in table
    # how the episodes ended, per cell, adding up to the episodes evaluated
    for cell in report["cells"]:
        assert sum(cell["outcomes"].values()) == 3
        row = f"| {cell['algorithm']} | N=1 | " + " | ".join(str(v) for v in cell["outcomes"].values()) + " |"
        assert row in table


def test_bench_rejects_a_malformed_algorithm_override(tmp_path, capsys):
    code = cli.main(["bench", "particle", "--algos", "mse", "--algo-set", "mdn:steps=3",
                     "--workdir", str(tmp_path), "--results", str(tmp_path / "r")])
    assert code == 2
    assert "ALGO:KEY=VALUE" in capsys.readouterr().err


def test_bench_push_trains_each_seed_on_one_dataset_and_tabulates_mean_and_std(tmp_path):
    results = tmp_path / "results" / "push_states"
    work = tmp_path / "work"
    code = cli.main(["bench", "push", "--train-seeds", "0", "1", "--algos", "mse", "nn", "--demos", "3",
                     "--episodes", "2", "--set", "steps=3", "--set", "batch_size=8", "--algo-set",
                     "mse:params.width=16", "--algo-set", "mse:params.depth=2", "--workdir", str(work),
                     "--results", str(results)])
    assert code == 0
    report = json.loads(results.with_suffix(".json").read_text())
    assert [(c["algorithm"], c["train_seed"]) for c in report["cells"]] == [("mse", 0), ("nn", 0), ("mse", 1),
                                                                           ("nn", 1)]
    for cell in report["cells"]:
        assert "error" not in cell, cell
        assert cell["episodes"] == 2 and 0.0 <= cell["success_rate"] <= 1.0
    assert [p.name for p in work.glob("*.h5")] == ["push_expert_3.h5"]  # one oracle dataset for every seed
    table = results.with_suffix(".md").read_text()
    assert "| algorithm | seed 0 | seed 1 | mean ± std |" in table and "Table 3" in table


def test_tilt_sweep_evaluates_one_irvs_file_at_each_eta_inv_on_the_same_scenes(tmp_path):
    import importlib.util
    from pathlib import Path

    data, run, policy = tmp_path / "d.h5", tmp_path / "run", tmp_path / "p.onnx"
    assert cli.main(["demos", "--env", "particle", "--n-dim", "1", "--episodes", "6", "--seed", "0",
                     "--out", str(data)]) == 0
    config = Path(__file__).resolve().parents[1] / "config" / "train_particle_irvs.yaml"
    small = ["steps=3", "batch_size=8", "eval.env=null", "params.width=16", "params.depth=2"]
    assert cli.main(["train", str(config), f"dataset={data}", *small, "params.method=dfo", "params.resnet=false",
                     "params.spectral_norm=false", "params.dfo_samples=64", "--out", str(run), "--quiet"]) == 0
    assert cli.main(["export", str(run), "--out", str(policy)]) == 0
    spec = importlib.util.spec_from_file_location("tilt_sweep", Path(__file__).resolve().parents[1] / "bench"
                                                  / "tilt_sweep.py")
    tilt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tilt)
    results = tmp_path / "tilt"
    assert tilt.main(["--policy", str(policy), "--eta-inv", "0", "2", "--episodes", "2", "--seed", "5",
                      "--results", str(results)]) == 0
    report = json.loads(results.with_suffix(".json").read_text())
    assert [r["eta_inv"] for r in report["rows"]] == [0.0, 2.0] and report["algorithm"] == "irvs"
    for row in report["rows"]:
        assert 0.0 <= row["success_rate"] <= 1.0 and len(row["per_episode"]) == 2
    assert "| eta_inv |" in results.with_suffix(".md").read_text()
    # Only an IRvS file has a tilt to sweep.
    mse_run, mse_policy = tmp_path / "mse", tmp_path / "mse.onnx"
    assert cli.main(["train", str(config.with_name("train_particle_mse.yaml")), f"dataset={data}", *small,
                     "--out", str(mse_run), "--quiet"]) == 0
    assert cli.main(["export", str(mse_run), "--out", str(mse_policy)]) == 0
    assert tilt.main(["--policy", str(mse_policy), "--results", str(tmp_path / "no")]) == 2
    # Both files side by side on the same scenes (bench/compare_policies.py): the IRvS one at its trained tilt.
    spec = importlib.util.spec_from_file_location("compare_policies", Path(__file__).resolve().parents[1] / "bench"
                                                  / "compare_policies.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    both = tmp_path / "both"
    assert compare.main([str(policy), str(mse_policy), "--env", "particle", "--episodes", "2", "--seed", "5",
                         "--eval-arg=--n-dim=1", "--results", str(both)]) == 0
    report = json.loads(both.with_suffix(".json").read_text())
    assert [(r["algorithm"], r["eval_eta_inv"], r["train_steps"]) for r in report["rows"]] == [("irvs", 1.0, 3),
                                                                                             ("mse", None, 3)]
    for row in report["rows"]:
        assert 0.0 <= row["success_rate"] <= 1.0 and len(row["per_episode"]) == 2
    assert f"| `{mse_policy}` | mse |  | 3 |" in both.with_suffix(".md").read_text()


def test_argmin_sweep_evaluates_one_file_at_each_setting_on_the_same_scenes(tmp_path):
    import importlib.util
    from pathlib import Path

    data, run, policy = tmp_path / "d.h5", tmp_path / "run", tmp_path / "p.onnx"
    assert cli.main(["demos", "--env", "particle", "--n-dim", "2", "--episodes", "6", "--seed", "0",
                     "--out", str(data)]) == 0
    config = Path(__file__).resolve().parents[1] / "config" / "train_particle_ebm_adfo.yaml"
    assert cli.main(["train", str(config), f"dataset={data}", "steps=3", "batch_size=8", "eval.env=null",
                     "params.width=16", "params.depth=2", "params.num_counter_examples=8", "params.dfo_samples=32",
                     "--out", str(run), "--quiet"]) == 0
    assert cli.main(["export", str(run), "--out", str(policy)]) == 0
    spec = importlib.util.spec_from_file_location("argmin_sweep", Path(__file__).resolve().parents[1] / "bench"
                                                  / "argmin_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    results = tmp_path / "sweep"
    assert sweep.main(["--policy", str(policy), "--env", "particle", "--eval-arg=--n-dim=2", "--setting", "",
                       "--setting", "iterations=5,num_samples=64", "--episodes", "2", "--seed", "5",
                       "--results", str(results)]) == 0
    report = json.loads(results.with_suffix(".json").read_text())
    assert report["file_argmin"]["method"] == "adfo" and report["file_argmin"]["num_samples"] == 32
    assert [r["setting"] for r in report["rows"]] == ["", "iterations=5,num_samples=64"]
    for row in report["rows"]:
        assert 0.0 <= row["success_rate"] <= 1.0 and len(row["per_episode"]) == 2
    assert "| iterations=5,num_samples=64 |" in results.with_suffix(".md").read_text()
    # A malformed setting is refused before anything runs.
    assert sweep.main(["--policy", str(policy), "--setting", "iterations", "--results", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no.json").exists()


def test_particle_precision_bench_degrades_the_oracle_with_action_error(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("particle_precision", Path(__file__).resolve().parents[1]
                                                  / "bench" / "particle_precision.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = tmp_path / "prec"
    assert bench.main(["--dims", "1", "8", "--sigmas", "0", "0.1", "--episodes", "10", "--results",
                       str(results)]) == 0
    report = json.loads(results.with_suffix(".json").read_text())
    assert report["success"]["1"][0] == 1.0 and report["success"]["8"][0] == 1.0  # the oracle itself
    assert report["success"]["8"][1] < 0.5  # 0.1 per dimension misses a 0.05 goal in 8-D
    assert "| 8 | 100% |" in results.with_suffix(".md").read_text()
    assert bench.main(["--sigmas", "-1", "--results", str(tmp_path / "no")]) == 2


def test_denormals_bench_runs_both_settings_and_writes_its_table(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("denormals", Path(__file__).resolve().parents[1] / "bench"
                                                  / "denormals.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = tmp_path / "dn"
    assert bench.main(["--steps", "4", "--log-every", "2", "--demos", "3", "--results", str(results)]) == 0
    report = json.loads(results.with_suffix(".json").read_text())
    assert [r["flush_denormal"] for r in report["runs"]] == [True, False]
    assert [row["step"] for row in report["runs"][0]["rows"]] == [2, 4] == [row["step"] for row in
                                                                            report["runs"][1]["rows"]]
    assert report["max_loss_diff"] <= 1e-6 and report["machine"]["cpu_count"] >= 1
    assert "| step | loss (flush on) |" in results.with_suffix(".md").read_text()


def test_energy_sharpness_bench_measures_an_ebm_file_on_its_dataset(tmp_path):
    import importlib.util
    from pathlib import Path

    work = tmp_path / "work"
    assert cli.main(["bench", "particle", "--dims", "2", "--algos", "ebm_dfo", "--demos", "5", "--episodes", "1",
                     "--set", "steps=3", "--algo-set", "ebm_dfo:params.depth=2", "--algo-set",
                     "ebm_dfo:params.dfo_samples=64", "--workdir", str(work), "--results", str(tmp_path / "p")]) == 0
    spec = importlib.util.spec_from_file_location("sharpness", Path(__file__).resolve().parents[1] / "bench"
                                                  / "energy_sharpness.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = tmp_path / "sharp"
    args = ["--policy", str(work / "ebm_dfo_n_dim2.onnx"), "--dataset", str(work / "particle2d_5.h5"),
            "--states", "20", "--candidates", "64", "--argmin", "num_samples=8,iterations=1", "--results",
            str(results)]
    assert bench.main(args) == 0
    report = json.loads(results.with_suffix(".json").read_text())
    assert report["states"] == 20 and report["algorithm"] == "ebm_dfo" and report["machine"]["cpu_count"] >= 1
    assert 0.0 <= report["lower_fraction"] <= 1.0 and 0.0 < report["policy_error"] < 1.0
    assert 0.0 < report["uniform_error"] < 1.0 and "--candidates 64" in report["command"]
    assert 0.0 <= report["policy_within"] <= 1.0 and report["policy_median_error"] <= report["policy_error"] * 3
    # The changed argmin (8 uniform candidates, no refinement) is measured on the same states and acts otherwise.
    (row,) = report["settings"]
    assert row["setting"] == "num_samples=8,iterations=1" and row["policy_error"] != report["policy_error"]
