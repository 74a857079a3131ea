"""Training speed with and without flushing denormal floats to zero (TrainConfig.flush_denormal).

Trains the same EBM-DFO particle run twice, flush_denormal on (the default) and off, and reports steps/s per
logging window and whether the losses agree. Writes bench/results/denormals.{json,md}.

    .venv/bin/python bench/denormals.py [--steps 3000] [--n-dim 2] [--demos 2000]

x86 CPUs compute on denormals (|x| < 1.2e-38 in float32) through a slow path; InfoNCE drives the softmax weights
of counter-examples the model already tells apart from the data there as training converges, so an EBM's steps
get slower while its loss falls. The machine is shared: compare the two runs as ratios.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
# The particle benchmark's EBM-DFO budget (bench/results/particle_longer.md) at batch 128.
OVERRIDES = ["params.depth=4", "params.num_counter_examples=64", "params.dfo_samples=1024", "eval.env=null",
             "batch_size=128", "checkpoint_every=100000"]


def train_once(dataset: Path, out: Path, steps: int, log_every: int, flush: bool) -> dict[str, Any]:
    """One run; its logged rows (step, loss, steps/s) and wall time."""
    from irvs_ros.learn.train_config import load_config
    from irvs_ros.learn.trainer import train

    cfg = load_config(ROOT / "config" / "train_particle_ebm_dfo.yaml",
                      [f"dataset={dataset}", f"steps={steps}", f"log_every={log_every}",
                       f"flush_denormal={str(flush).lower()}", *OVERRIDES])
    t0 = time.perf_counter()
    train(cfg, out)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [{"step": r["step"], "loss": r["loss"], "steps_per_sec": r["steps_per_sec"]}
            for r in rows if r.get("kind", "train") == "train" and "steps_per_sec" in r]
    return {"flush_denormal": flush, "wall_s": round(wall, 1), "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    on, off = report["runs"]
    lines = ["# Training speed with and without flushing denormals", "", f"Command: `{report['command']}`", "",
             f"Machine: {m['cpu']} ({m['cpu_count']} cores), GPU: {m['gpu'] or 'none'}; torch {m['torch']}, "
             f"Python {m['python']}.", "",
             f"Run: `irvs train config/train_particle_ebm_dfo.yaml` on {report['demos']} oracle demos of the "
             f"{report['n_dim']}-D particle task, {report['steps']} steps, overrides `{' '.join(OVERRIDES)}`.", "",
             "| step | loss (flush on) | loss (flush off) | steps/s flush on | steps/s flush off | ratio |",
             "|---|---|---|---|---|---|"]
    for a, b in zip(on["rows"], off["rows"], strict=True):
        lines.append(f"| {a['step']} | {a['loss']:.5f} | {b['loss']:.5f} | {a['steps_per_sec']:.1f} | "
                     f"{b['steps_per_sec']:.1f} | {a['steps_per_sec'] / b['steps_per_sec']:.1f}x |")
    lines += ["", f"Wall time: {on['wall_s']:.0f} s with flushing, {off['wall_s']:.0f} s without "
              f"({off['wall_s'] / on['wall_s']:.1f}x). Largest loss difference between the runs: "
              f"{report['max_loss_diff']:.2e}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--log-every", type=int, default=500)
    ap.add_argument("--n-dim", type=int, default=2)
    ap.add_argument("--demos", type=int, default=2000)
    ap.add_argument("--results", default=str(RESULTS / "denormals"), help="results path without extension")
    args = ap.parse_args(argv)

    from irvs_ros import cli
    from irvs_ros.commands.pipeline import machine_info

    report: dict[str, Any] = {
        "command": "python bench/denormals.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(), "steps": args.steps, "n_dim": args.n_dim, "demos": args.demos, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "particle.h5"
        if cli.main(["demos", "--env", "particle", "--n-dim", str(args.n_dim), "--episodes", str(args.demos),
                     "--seed", "0", "--out", str(dataset)]) != 0:
            return 2
        for flush in (True, False):
            report["runs"].append(train_once(dataset, Path(tmp) / f"flush_{flush}", args.steps, args.log_every,
                                             flush))
            print(f"flush_denormal={flush}: {report['runs'][-1]['wall_s']:.0f} s", flush=True)
    on, off = report["runs"]
    report["max_loss_diff"] = max(abs(a["loss"] - b["loss"]) for a, b in zip(on["rows"], off["rows"], strict=True))
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    results.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
