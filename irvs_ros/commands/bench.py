"""`irvs bench particle | push`: success tables of the IBC papers' experiments, reproduced.

particle: the IBC N-D particle figure (success rate vs N per algorithm); one column per N.
push:     IBC Table 3, single-target `push` from states (EBM-DFO, MSE, MDN, nearest neighbour); one column per
          training seed on one oracle dataset, plus their mean and standard deviation.

Each cell: oracle demos (cached in the workdir), then train -> export -> eval with the shipped config
`config/train_<benchmark>_<algo>.yaml` plus the budget given here. Results are rewritten after every cell to
RESULTS.json and RESULTS.md with the exact command, machine, versions, budgets and wall times.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from irvs_ros.commands.pipeline import PipelineError, machine_info, run_step, train_config_path, train_export_eval

HELP = "run a benchmark and write its results file"
BENCHMARKS = ("particle", "push")
PAPER = {
    "particle": "IBC Fig. 5/11: Langevin and autoregressive EBMs >= 95% up to 16-D, MSE 95% only to 8-D, "
                "DFO fails past 5-D, NN only at 1-D (2,000 demos).",
    "push": "IBC Table 3, single target from states (2,000 demos, 100k steps, 3 seeds x 100 episodes): "
            "EBM 100, MDN 100, MSE 98.3, NN 4.0.",
}
DEFAULT_ALGOS = {"particle": ["ebm_dfo", "ebm_adfo", "ebm_langevin", "mse", "nn"],
                 "push": ["ebm_dfo", "mse", "mdn", "nn"]}
CONFIG_PREFIX = {"particle": "train_particle_", "push": "train_push_states_"}


@dataclass(frozen=True)
class _Column:
    """One column of a results table: its dataset (made by `demos_argv` when missing) and training seed."""

    label: str
    key: dict[str, int]   # what identifies the column in each cell record, e.g. {"n_dim": 2}
    dataset: Path
    demos_argv: list[str]
    env_args: list[str]
    train_seed: int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=BENCHMARKS)
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="particle: dimensions N")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="push: training seeds, one column each (paper: 3)")
    parser.add_argument("--algos", nargs="+", default=None,
                        help="algorithms (each needs config/train_<benchmark>_<algo>.yaml, push: "
                             "train_push_states_<algo>.yaml); default: particle "
                             f"{DEFAULT_ALGOS['particle']}, push {DEFAULT_ALGOS['push']}")
    parser.add_argument("--demos", type=int, default=2000, help="oracle demonstrations (paper: 2000)")
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes per cell")
    parser.add_argument("--seed", type=int, default=0, help="demo seed (particle: also the training seed)")
    parser.add_argument("--eval-seed", type=int, default=100_000, help="evaluation seed (disjoint from demos)")
    parser.add_argument("--workers", type=int, default=2, help="processes for demo generation")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="training override for every algorithm, e.g. steps=2000 (repeatable)")
    parser.add_argument("--algo-set", action="append", default=[], metavar="ALGO:KEY=VALUE",
                        help="training override for one algorithm, e.g. ebm_langevin:steps=4000 (repeatable)")
    parser.add_argument("--workdir", default=None, help="datasets, runs and policy files (default out/bench/NAME)")
    parser.add_argument("--results", default=None,
                        help="results path without extension (default bench/results/particle, "
                             "bench/results/push_states)")


def _algo_overrides(items: list[str], algos: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {a: [] for a in algos}
    for item in items:
        algo, sep, override = item.partition(":")
        if not sep or algo not in out or "=" not in override:
            raise ValueError(f"--algo-set {item!r}: expected ALGO:KEY=VALUE with ALGO one of {algos}")
        out[algo].append(override)
    return out


def _columns(args: argparse.Namespace, workdir: Path) -> list[_Column]:
    common = ["--episodes", str(args.demos), "--seed", str(args.seed), "--workers", str(args.workers)]
    if args.benchmark == "particle":
        return [_Column(f"N={n}", {"n_dim": n}, workdir / f"particle{n}d_{args.demos}.h5",
                        ["--env", "particle", "--n-dim", str(n), *common], ["--n-dim", str(n)], args.seed)
                for n in args.dims]
    dataset = workdir / f"push_expert_{args.demos}.h5"
    return [_Column(f"seed {s}", {"train_seed": s}, dataset, ["--env", "push", "--quality", "expert", *common], [], s)
            for s in args.train_seeds]


def _cell_text(c: dict[str, Any] | None, field: str) -> str:
    if c is None:
        return "—"
    if "error" in c:
        return "error" if field == "success" else "—"
    return f"{100 * c['success_rate']:.0f}" if field == "success" else f"{c['train_s']:.0f} / {c['eval_s']:.0f}"


def _markdown(report: dict[str, Any]) -> str:
    labels = report["budget"]["columns"]
    with_mean = report["benchmark"] == "push"
    lines = [f"# {report['benchmark']} benchmark", "", f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']['cpu']} ({report['machine']['cpu_count']} cores), "
             f"GPU: {report['machine']['gpu'] or 'none'}; torch {report['machine']['torch']}, "
             f"onnxruntime {report['machine']['onnxruntime']}, Python {report['machine']['python']}.", "",
             f"Budget: {report['budget']['demos']} demos, {report['budget']['episodes']} evaluation episodes "
             f"per cell; overrides {report['budget']['overrides'] or 'none'}; per algorithm "
             f"{report['budget']['algo_overrides']}.", "",
             "Success rate (%) of the exported ONNX policy, evaluated with ONNX Runtime:", "",
             "| algorithm | " + " | ".join(labels) + (" | mean ± std |" if with_mean else " |"),
             "|---|" + "---|" * (len(labels) + with_mean)]
    cells = {(c["algorithm"], c["column"]): c for c in report["cells"]}
    for algo in report["budget"]["algos"]:
        row = [_cell_text(cells.get((algo, label)), "success") for label in labels]
        if with_mean:
            rates = [100 * c["success_rate"] for label in labels
                     if (c := cells.get((algo, label))) is not None and "error" not in c]
            row.append(f"{np.mean(rates):.1f} ± {np.std(rates):.1f}" if rates else "—")
        lines.append(f"| {algo} | " + " | ".join(row) + " |")
    lines += ["", "Wall time per cell (train / eval, s):", "",
              "| algorithm | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for algo in report["budget"]["algos"]:
        lines.append(f"| {algo} | " + " | ".join(_cell_text(cells.get((algo, label)), "time") for label in labels)
                     + " |")
    lines += _outcome_lines(report, cells)
    lines += ["", f"Paper: {report['paper']}", "", f"Total wall time: {report['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def _outcome_lines(report: dict[str, Any], cells: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Markdown lines: how each cell's episodes ended (particle: `sim.particle.OUTCOMES`), one row per cell that
    has them; none for benchmarks whose evaluation does not count outcomes."""
    rows = [(algo, label, c["outcomes"]) for algo in report["budget"]["algos"] for label in report["budget"]["columns"]
            if (c := cells.get((algo, label))) is not None and "outcomes" in c]
    if not rows:
        return []
    kinds = list(rows[0][2])
    return ["", "How the episodes ended (episodes per outcome; `sim.particle.outcome`):", "",
            "| algorithm | column | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds),
            *(f"| {algo} | {label} | " + " | ".join(str(out.get(k, 0)) for k in kinds) + " |"
              for algo, label, out in rows)]


def run(args: argparse.Namespace) -> int:
    name = args.benchmark
    algos = args.algos or DEFAULT_ALGOS[name]
    try:
        per_algo = _algo_overrides(args.algo_set, algos)
        configs = {a: train_config_path(f"{CONFIG_PREFIX[name]}{a}") for a in algos}
    except (ValueError, PipelineError) as exc:
        print(f"irvs bench: {exc}", file=sys.stderr)
        return 2
    workdir = Path(args.workdir or f"out/bench/{name}")
    results = Path(args.results or ("bench/results/particle" if name == "particle" else "bench/results/push_states"))
    workdir.mkdir(parents=True, exist_ok=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    columns = _columns(args, workdir)
    report: dict[str, Any] = {
        "benchmark": name, "command": "irvs bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"]
                                                                  else [name]),
        "machine": machine_info(),
        "budget": {"columns": [c.label for c in columns], "algos": algos, "demos": args.demos,
                   "episodes": args.episodes, "seed": args.seed, "eval_seed": args.eval_seed,
                   "overrides": args.overrides, "algo_overrides": {a: o for a, o in per_algo.items() if o}},
        "paper": PAPER[name], "cells": [], "wall_s": 0.0}
    start = time.perf_counter()

    def save() -> None:
        report["wall_s"] = round(time.perf_counter() - start, 1)
        results.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        results.with_suffix(".md").write_text(_markdown(report))

    for col in columns:
        if not col.dataset.exists():
            run_step(["demos", *col.demos_argv, "--out", str(col.dataset)])
        for algo in algos:
            cell: dict[str, Any] = {"algorithm": algo, "column": col.label, **col.key}
            tag = "_".join(f"{k}{v}" for k, v in col.key.items())
            try:
                cell.update(train_export_eval(
                    config=configs[algo], dataset=col.dataset, workdir=workdir, name=f"{algo}_{tag}",
                    overrides=[f"seed={col.train_seed}", *args.overrides, *per_algo[algo]], env=name,
                    env_args=col.env_args, episodes=args.episodes, eval_seed=args.eval_seed))
            except (PipelineError, ValueError, RuntimeError) as exc:
                cell["error"] = str(exc)
                print(f"irvs bench: {algo} {col.label} failed: {exc}", file=sys.stderr)
            report["cells"].append(cell)
            save()
            print(f"== {algo} {col.label}: " + (cell.get("error") or f"success {100 * cell['success_rate']:.0f}%"),
                  flush=True)
    save()
    print(_markdown(report))
    return 0
