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
