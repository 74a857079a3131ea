"""IRvS tilt sweep: one trained IRvS policy file evaluated at several eta_inv (IRvS Fig. 5 shape).

eta_inv = 0 is Implicit BC on the same network (IRvS eq. 8 without the return bonus); larger eta_inv pushes the
argmin over (action, return) toward higher predicted returns. Each eta_inv runs `irvs eval` on the same seeded
scenes, so the columns differ only in the tilt.

    python bench/tilt_sweep.py --policy models/push_insert.onnx --eta-inv 0 0.5 1 2 4 --episodes 20

writes RESULTS.json and RESULTS.md (default bench/results/push_insert_tilt) with the command, the machine, the
policy's provenance and the wall time of each evaluation.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RATES = ("success_rate", "full_insertion_rate", "partial_insertion_rate", "mean_reward", "mean_final_reward")


def evaluate_at(policy: str, eta_inv: float | None, episodes: int, seed: int, extra: list[str]) -> dict[str, Any]:
    """`irvs eval` of `policy` at `eta_inv` (None: the file's) on `episodes` scenes from `seed`; its summary plus
    eval_s."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        tilt = [] if eta_inv is None else ["--eta-inv", str(eta_inv)]
        cmd = [sys.executable, "-m", "irvs_ros.cli", "eval", "--policy", policy, *tilt,
               "--episodes", str(episodes), "--seed", str(seed), "--out", str(out), *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        summary = json.loads(out.read_text())
    return {"eta_inv": eta_inv, "eval_s": round(time.perf_counter() - t0, 1),
            **{k: summary[k] for k in RATES if k in summary},
            "per_episode": summary.get("per_episode", [])}


def report_header(title: str, report: dict[str, Any]) -> list[str]:
    """Markdown lines: the title, the command and the machine of a report."""
    m = report["machine"]
    return [f"# {title}", "", f"Command: `{report['command']}`", "",
            f"Machine: {m['cpu']} ({m['cpu_count']} cores), GPU: {m['gpu'] or 'none'}; torch {m['torch']}, "
            f"onnxruntime {m['onnxruntime']}, Python {m['python']}.", ""]


def write_report(results: Path, report: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> None:
    """RESULTS.json and RESULTS.md of a report so far; rewritten after every row, so an interrupted run keeps its
    measured rows."""
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    results.with_suffix(".md").write_text(markdown(report))


def rate_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The RATES present in any row, in RATES order."""
    return [k for k in RATES if any(k in r for r in rows)]


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    keys = rate_keys(rows)
    lines = [*report_header("IRvS tilt sweep", report),
             f"Policy: `{report['policy']}` ({report['algorithm']}, trained eta_inv {report['trained_eta_inv']}, "
             f"dataset {report['dataset_fingerprint']}); {report['episodes']} episodes per row, scene seeds "
             f"{report['seed']}..{report['seed'] + report['episodes'] - 1} in every row.", "",
             "| eta_inv | " + " | ".join(keys) + " | eval s |", "|---|" + "---|" * (len(keys) + 1)]
    for r in rows:
        cells = [f"{100 * r[k]:.0f}%" if k.endswith("_rate") else f"{r[k]:.3f}" for k in keys]
        lines.append(f"| {r['eta_inv']:g} | " + " | ".join(cells) + f" | {r['eval_s']:.0f} |")
    lines += ["", "eta_inv = 0 is IBC's argmin on the same network; the paper's claim (IRvS Fig. 5) is that some "
              "eta_inv > 0 beats it on mixed-quality data.", "", f"Total wall time: {report['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default="models/push_insert.onnx", help="an IRvS policy file")
    ap.add_argument("--eta-inv", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1000, help="first scene seed (the same scenes for every eta_inv)")
    ap.add_argument("--eval-arg", action="append", default=[], metavar="ARG",
                    help="extra `irvs eval` argument, e.g. --eval-arg=--env-arg=... (repeatable)")
    ap.add_argument("--results", default="bench/results/push_insert_tilt", help="results path without extension")
    args = ap.parse_args(argv)

    from irvs_ros.commands.pipeline import machine_info
    from irvs_ros.runtime.policy_file import load_policy

    policy = load_policy(args.policy)
    if policy.algorithm != "irvs":
        print(f"tilt_sweep: {args.policy} is a {policy.algorithm} policy; the tilt needs an IRvS one",
              file=sys.stderr)
        return 2
    results = Path(args.results)
    report: dict[str, Any] = {
        "command": "python bench/tilt_sweep.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(), "policy": args.policy, "algorithm": policy.algorithm,
        "trained_eta_inv": policy.eta_inv, "dataset_fingerprint": policy.metadata.get("dataset_fingerprint"),
        "episodes": args.episodes, "seed": args.seed, "rows": [], "wall_s": 0.0}
    start = time.perf_counter()
    for eta in args.eta_inv:
        report["rows"].append(evaluate_at(args.policy, eta, args.episodes, args.seed, args.eval_arg))
        report["wall_s"] = round(time.perf_counter() - start, 1)
        write_report(results, report, markdown)
        row = report["rows"][-1]
        print(f"eta_inv {eta:g}: success {100 * row['success_rate']:.0f}% ({row['eval_s']:.0f} s)", flush=True)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
