"""Argmin sweep: one policy file evaluated at several argmin settings on the same seeded scenes.

The network is fixed; only the run-time optimizer changes (`irvs eval --argmin KEY=VALUE`), so the rows say how
much of a policy's failures are the argmin's (its precision, its reach in high dimensions) and not the energy's.
Each SETTING is a comma-separated list of KEY=VALUE pairs of the file's argmin ("" keeps the file's own):

    python bench/argmin_sweep.py --policy out/particle4.onnx --env particle --eval-arg=--n-dim=4 \\
        --setting "" --setting iterations=6 --setting iterations=6,num_samples=4096 --episodes 100

writes RESULTS.json and RESULTS.md (default bench/results/argmin_sweep) with the command, the machine, the
file's provenance and trained argmin, and the wall time of each evaluation.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_policies import provenance  # noqa: E402  (bench/ is scripts, not a package)
from tilt_sweep import evaluate_at, rate_keys, report_header, write_report  # noqa: E402


def argmin_flags(setting: str) -> list[str]:
    """'iterations=6,num_samples=4096' -> ['--argmin', 'iterations=6', '--argmin', 'num_samples=4096']."""
    pairs = [p.strip() for p in setting.split(",") if p.strip()]
    for p in pairs:
        if "=" not in p:
            raise ValueError(f"argmin setting {setting!r}: {p!r} is not KEY=VALUE")
    return [flag for p in pairs for flag in ("--argmin", p)]


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    keys = rate_keys(rows)
    p = report["provenance"]
    lines = [*report_header("Argmin sweep", report),
             f"Policy: `{p['policy']}` ({p['algorithm']}, {p['train_steps']} training steps, dataset "
             f"{p['dataset_fingerprint']}); the file's argmin: `{json.dumps(report['file_argmin'])}`.", "",
             f"Environment {report['env']}; {report['episodes']} episodes per row, scene seeds {report['seed']}.."
             f"{report['seed'] + report['episodes'] - 1} in every row.", "",
             "| argmin setting | " + " | ".join(keys) + " | eval s |", "|---|" + "---|" * (len(keys) + 1)]
    for r in rows:
        cells = [f"{100 * r[k]:.0f}%" if k.endswith("_rate") else f"{r[k]:.3f}" for k in keys]
        lines.append(f"| {r['setting'] or 'the file’s'} | " + " | ".join(cells) + f" | {r['eval_s']:.0f} |")
    lines += ["", f"Total wall time: {report['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="policy file (.onnx) with an argmin (dfo, adfo, langevin)")
    ap.add_argument("--setting", action="append", required=True, metavar="K=V[,K=V...]",
                    help="argmin setting of one row; '' for the file's own (repeatable)")
    ap.add_argument("--env", default="push_insert")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1000, help="first scene seed (the same scenes in every row)")
    ap.add_argument("--eval-arg", action="append", default=[], metavar="ARG",
                    help="extra `irvs eval` argument, e.g. --eval-arg=--n-dim=4 (repeatable)")
    ap.add_argument("--results", default="bench/results/argmin_sweep", help="results path without extension")
    args = ap.parse_args(argv)

    from irvs_ros.commands.pipeline import machine_info
    from irvs_ros.runtime.policy_file import load_policy

    try:
        flags = [argmin_flags(s) for s in args.setting]
    except ValueError as e:
        print(f"argmin_sweep: {e}", file=sys.stderr)
        return 2
    policy = load_policy(args.policy)  # a bad file fails before any evaluation
    if policy.explicit:
        print(f"argmin_sweep: {args.policy} is an explicit ({policy.algorithm}) policy with no argmin",
              file=sys.stderr)
        return 2
    results = Path(args.results)
    report: dict[str, Any] = {
        "command": "python bench/argmin_sweep.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(), "provenance": provenance(args.policy), "file_argmin": policy.argmin,
        "env": args.env, "episodes": args.episodes, "seed": args.seed, "rows": [], "wall_s": 0.0}
    start = time.perf_counter()
    for setting, extra in zip(args.setting, flags, strict=True):
        row = evaluate_at(args.policy, None, args.episodes, args.seed, ["--env", args.env, *extra, *args.eval_arg])
        report["rows"].append({"setting": setting, **row})
        report["wall_s"] = round(time.perf_counter() - start, 1)
        write_report(results, report, markdown)
        print(f"{setting or 'file'}: success {100 * row['success_rate']:.0f}% ({row['eval_s']:.0f} s)", flush=True)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
