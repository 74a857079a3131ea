"""Policy files side by side on the same seeded scenes (IBC Tables 3 and 6 shape: implicit vs explicit).

Each file runs `irvs eval` on the same scenes at its own settings (an IRvS file at its trained eta_inv unless
`--eta-inv` is given), so the rows differ only in the policy.

    python bench/compare_policies.py models/push_insert.onnx runs/push_insert_pixels_mse/policy.onnx \\
        --env push_insert --episodes 20 --eval-arg=image=true --results bench/results/push_insert_pixels

writes RESULTS.json and RESULTS.md with the command, the machine, each file's provenance (algorithm, training
steps, dataset fingerprint) and the wall time of each evaluation.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tilt_sweep import evaluate_at, rate_keys, report_header, write_report  # noqa: E402  (bench/ is scripts, not a package)


def provenance(path: str) -> dict[str, Any]:
    """What a policy file says of itself: algorithm, eta_inv, training steps, dataset fingerprint, size."""
    from irvs_ros.runtime.policy_file import load_policy

    policy = load_policy(path)
    meta = policy.metadata
    train_config = policy.train_config
    steps = train_config.get("export_step", train_config.get("steps"))  # the checkpoint's step when recorded
    return {"policy": path, "algorithm": policy.algorithm, "eta_inv": policy.eta_inv, "train_steps": steps,
            "dataset_fingerprint": (meta.get("dataset_fingerprint") or "")[:16],
            "size_mb": round(Path(path).stat().st_size / 1e6, 2)}


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    keys = rate_keys(rows)
    lines = [*report_header("Policies on the same scenes", report),
             f"Environment {report['env']}; {report['episodes']} episodes per row, scene seeds {report['seed']}.."
             f"{report['seed'] + report['episodes'] - 1} in every row.", "",
             "| policy | algorithm | eta_inv | train steps | dataset | " + " | ".join(keys) + " | eval s |",
             "|---|---|---|---|---|" + "---|" * (len(keys) + 1)]
    for r in rows:
        cells = [f"{100 * r[k]:.0f}%" if k.endswith("_rate") else f"{r[k]:.3f}" for k in keys]
        eta = "" if r["eval_eta_inv"] is None else f"{r['eval_eta_inv']:g}"
        lines.append(f"| `{r['policy']}` | {r['algorithm']} | {eta} | {r['train_steps']} | "
                     f"{r['dataset_fingerprint']} | " + " | ".join(cells) + f" | {r['eval_s']:.0f} |")
    lines += ["", f"Total wall time: {report['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("policies", nargs="+", help="policy files (.onnx)")
    ap.add_argument("--env", default="push_insert")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1000, help="first scene seed (the same scenes for every file)")
    ap.add_argument("--eta-inv", type=float, default=None, help="tilt for IRvS files (default: each file's)")
    ap.add_argument("--eval-arg", action="append", default=[], metavar="ARG",
                    help="extra `irvs eval` argument, e.g. --eval-arg=image=true (repeatable)")
    ap.add_argument("--results", default="bench/results/policies", help="results path without extension")
    args = ap.parse_args(argv)

    from irvs_ros.commands.pipeline import machine_info

    rows_meta = [provenance(p) for p in args.policies]  # a bad file fails before any evaluation
    results = Path(args.results)
    report: dict[str, Any] = {
        "command": "python bench/compare_policies.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(), "env": args.env, "episodes": args.episodes, "seed": args.seed, "rows": [],
        "wall_s": 0.0}
    start = time.perf_counter()
    for meta in rows_meta:
        eta = args.eta_inv if meta["algorithm"] == "irvs" else None
        row = evaluate_at(meta["policy"], eta, args.episodes, args.seed, ["--env", args.env, *args.eval_arg])
        shown = None if meta["algorithm"] != "irvs" else (meta["eta_inv"] if eta is None else eta)
        report["rows"].append({**meta, "eval_eta_inv": shown, **row})
        report["wall_s"] = round(time.perf_counter() - start, 1)
        write_report(results, report, markdown)
        print(f"{meta['policy']}: success {100 * row['success_rate']:.0f}% ({row['eval_s']:.0f} s)", flush=True)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
