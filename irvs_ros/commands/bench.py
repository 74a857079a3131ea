"""`irvs bench particle`: the IBC N-D particle figure (success rate vs N per algorithm), reproduced.

For each N: oracle demos (cached), then per algorithm train -> export -> eval with the shipped config
`config/train_particle_<algo>.yaml` plus the budget given here. Results are rewritten after every cell
to RESULTS.json and RESULTS.md with the exact command, machine, versions, budgets and wall times.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from irvs_ros.commands.pipeline import PipelineError, machine_info, run_step, train_config_path, train_export_eval

HELP = "run a benchmark and write its results file"
BENCHMARKS = ("particle",)
PAPER_PARTICLE = "IBC Fig. 5/11: Langevin and autoregressive EBMs >= 95% up to 16-D, MSE 95% only to 8-D, " \
                 "DFO fails past 5-D, NN only at 1-D (2,000 demos)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=BENCHMARKS)
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="particle dimensions N")
    parser.add_argument("--algos", nargs="+", default=["ebm_dfo", "ebm_adfo", "ebm_langevin", "mse", "nn"],
                        help="algorithms (each needs config/train_particle_<algo>.yaml)")
    parser.add_argument("--demos", type=int, default=2000, help="oracle demonstrations per N (paper: 2000)")
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes per cell")
    parser.add_argument("--seed", type=int, default=0, help="demo and training seed")
    parser.add_argument("--eval-seed", type=int, default=100_000, help="evaluation seed (disjoint from demos)")
    parser.add_argument("--workers", type=int, default=2, help="processes for demo generation")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="training override for every algorithm, e.g. steps=2000 (repeatable)")
    parser.add_argument("--algo-set", action="append", default=[], metavar="ALGO:KEY=VALUE",
                        help="training override for one algorithm, e.g. ebm_langevin:steps=4000 (repeatable)")
    parser.add_argument("--workdir", default="out/bench/particle", help="datasets, runs and policy files")
    parser.add_argument("--results", default="bench/results/particle", help="results path without extension")


def _algo_overrides(items: list[str], algos: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {a: [] for a in algos}
    for item in items:
        algo, sep, override = item.partition(":")
        if not sep or algo not in out or "=" not in override:
            raise ValueError(f"--algo-set {item!r}: expected ALGO:KEY=VALUE with ALGO one of {algos}")
        out[algo].append(override)
    return out


def _markdown(report: dict[str, Any]) -> str:
    dims = report["budget"]["dims"]
    lines = [f"# {report['benchmark']} benchmark", "", f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']['cpu']} ({report['machine']['cpu_count']} cores), "
             f"GPU: {report['machine']['gpu'] or 'none'}; torch {report['machine']['torch']}, "
             f"onnxruntime {report['machine']['onnxruntime']}, Python {report['machine']['python']}.", "",
             f"Budget: {report['budget']['demos']} demos per N, {report['budget']['episodes']} evaluation episodes "
             f"per cell; overrides {report['budget']['overrides'] or 'none'}; per algorithm "
             f"{report['budget']['algo_overrides']}.", "",
             "Success rate (%) of the exported ONNX policy, evaluated with ONNX Runtime:", "",
             "| algorithm | " + " | ".join(f"N={n}" for n in dims) + " |",
             "|---|" + "---|" * len(dims)]
    cells = {(c["algorithm"], c["n_dim"]): c for c in report["cells"]}
    for algo in report["budget"]["algos"]:
        row = []
        for n in dims:
            c = cells.get((algo, n))
            row.append("—" if c is None else ("error" if "error" in c else f"{100 * c['success_rate']:.0f}"))
        lines.append(f"| {algo} | " + " | ".join(row) + " |")
    lines += ["", "Wall time per cell (train / eval, s):", "",
              "| algorithm | " + " | ".join(f"N={n}" for n in dims) + " |", "|---|" + "---|" * len(dims)]
    for algo in report["budget"]["algos"]:
        row = []
        for n in dims:
            c = cells.get((algo, n))
            row.append("—" if c is None or "error" in c else f"{c['train_s']:.0f} / {c['eval_s']:.0f}")
        lines.append(f"| {algo} | " + " | ".join(row) + " |")
    lines += ["", f"Paper: {PAPER_PARTICLE}", "", f"Total wall time: {report['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        per_algo = _algo_overrides(args.algo_set, args.algos)
        configs = {a: train_config_path(f"train_particle_{a}") for a in args.algos}
    except (ValueError, PipelineError) as exc:
        print(f"irvs bench: {exc}", file=sys.stderr)
        return 2
    workdir, results = Path(args.workdir), Path(args.results)
    workdir.mkdir(parents=True, exist_ok=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": args.benchmark, "command": "irvs bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"]
                                                                          else [args.benchmark]),
        "machine": machine_info(),
        "budget": {"dims": args.dims, "algos": args.algos, "demos": args.demos, "episodes": args.episodes,
                   "seed": args.seed, "eval_seed": args.eval_seed, "overrides": args.overrides,
                   "algo_overrides": {a: o for a, o in per_algo.items() if o}},
        "paper": PAPER_PARTICLE, "cells": [], "wall_s": 0.0}
    start = time.perf_counter()

    def save() -> None:
        report["wall_s"] = round(time.perf_counter() - start, 1)
        results.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        results.with_suffix(".md").write_text(_markdown(report))

    for n in args.dims:
        dataset = workdir / f"particle{n}d_{args.demos}.h5"
        if not dataset.exists():
            run_step(["demos", "--env", "particle", "--n-dim", str(n), "--episodes", str(args.demos),
                      "--seed", str(args.seed), "--workers", str(args.workers), "--out", str(dataset)])
        for algo in args.algos:
            cell: dict[str, Any] = {"algorithm": algo, "n_dim": n}
            try:
                cell.update(train_export_eval(
                    config=configs[algo], dataset=dataset, workdir=workdir, name=f"{algo}_{n}d",
                    overrides=[f"seed={args.seed}", *args.overrides, *per_algo[algo]], env="particle",
                    env_args=["--n-dim", str(n)], episodes=args.episodes, eval_seed=args.eval_seed))
            except (PipelineError, ValueError, RuntimeError) as exc:
                cell["error"] = str(exc)
                print(f"irvs bench: {algo} N={n} failed: {exc}", file=sys.stderr)
            report["cells"].append(cell)
            save()
            print(f"== {algo} N={n}: " + (cell.get("error") or f"success {100 * cell['success_rate']:.0f}%"),
                  flush=True)
    save()
    print(_markdown(report))
    return 0
