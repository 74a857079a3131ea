"""`irvs select`: pick a run's checkpoint by rolling each one out on selection scenes, and export the best.

    irvs select runs/push_insert_pixels_irvs --env push_insert --episodes 20 --seed 2000 --from-step 12000 \\
        --out models/push_insert.onnx image=true

Every RUN/checkpoints/step_*.pt from --from-step on is exported to a temporary policy file (the weights
--weights names: the moving average when the run kept one) and evaluated through ONNX Runtime, as it will run,
on the same `--episodes` scenes from `--seed`. The best success rate wins (ties: higher mean return, then the
later step). Use selection scenes apart from the ones you report on: the default seeds 2000.. are neither
`irvs eval`'s default 1000.. nor the in-training evaluation's 10000..; a rate measured on the scenes that chose
the checkpoint is biased upward. Writes RUN/selection_<weights>.json (every checkpoint's rates, the choice, the
command) and, with --out, the chosen policy file.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from irvs_ros.commands.demos import add_env_arguments, command_line, env_kwargs_from_args

HELP = "evaluate a run's checkpoints on selection scenes and export the best"
INTERMIXED = True  # RUN, then options, then KEY=VALUE environment parameters

RATES = ("success_rate", "full_insertion_rate", "partial_insertion_rate", "mean_return", "mean_final_reward")
STEP_FILE = re.compile(r"step_(\d+)\.pt$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (holding checkpoints/step_*.pt)")
    add_env_arguments(parser, env_required=False)
    parser.add_argument("--episodes", type=int, default=20, help="selection episodes per checkpoint (default 20)")
    parser.add_argument("--seed", type=int, default=2000,
                        help="episode i resets with seed + i (default 2000: apart from irvs eval's 1000..)")
    parser.add_argument("--from-step", type=int, default=0, help="only checkpoints at this step or later")
    parser.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                        help="weights to export from each checkpoint (default auto: the EMA when kept)")
    parser.add_argument("--eta-inv", type=float, default=None, help="IRvS tilt (default: the trained one)")
    parser.add_argument("--out", default=None, metavar="FILE.onnx", help="write the chosen policy file here")


def step_checkpoints(run_dir: Path, from_step: int = 0) -> list[tuple[int, Path]]:
    """(step, path) of RUN/checkpoints/step_*.pt at `from_step` or later, by step."""
    found = []
    for path in (run_dir / "checkpoints").glob("step_*.pt"):
        match = STEP_FILE.search(path.name)
        if match and int(match.group(1)) >= from_step:
            found.append((int(match.group(1)), path))
    return sorted(found)


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row with the highest success rate; ties go to the higher mean return, then to the later step."""
    return max(rows, key=lambda r: (r["success_rate"], r.get("mean_return", 0.0), r["step"]))


def evaluate_checkpoint(path: Path, out: Path, weights: str, env_name: str | None, env_kwargs: dict[str, Any],
                        episodes: int, seed: int, eta_inv: float | None) -> dict[str, Any]:
    """Export the checkpoint at `path` to `out` and roll it out; its rates, weights used and eval seconds."""
    from irvs_ros.commands.eval import policy_for_env
    from irvs_ros.learn.checkpoint import load_for_export
    from irvs_ros.learn.export import export_policy
    from irvs_ros.sim.rollout import evaluate

    algo, config, fingerprint = load_for_export(path, weights)
    export_policy(algo, out, train_config=config, dataset_fingerprint=fingerprint)
    act_fn, env_name, env_kwargs, _ = policy_for_env(out, env_name, env_kwargs, seed=seed, eta_inv=eta_inv)
    t0 = time.perf_counter()
    result = evaluate(env_name, env_kwargs, act_fn, episodes, seed)
    return {"weights": config["export_weights"], "env": env_name,
            **{k: float(result[k]) for k in RATES if k in result}, "eval_s": round(time.perf_counter() - t0, 1)}


def run(args: argparse.Namespace) -> int:
    from irvs_ros.learn.checkpoint import CheckpointError
    from irvs_ros.learn.export import ExportError

    run_dir = Path(args.run)
    try:
        if args.oracle:
            raise ValueError("--oracle options apply to `irvs eval --policy oracle` only")
        if args.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
        if args.out is not None and Path(args.out).suffix != ".onnx":
            raise ValueError(f"--out should name a .onnx file, got {args.out}")
        env_kwargs = env_kwargs_from_args(args)
        checkpoints = step_checkpoints(run_dir, args.from_step)
        if not checkpoints:
            raise ValueError(f"{run_dir}/checkpoints holds no step_*.pt at step {args.from_step} or later")
        rows: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory() as tmp:
            for step, path in checkpoints:
                candidate = Path(tmp) / f"step_{step:08d}.onnx"
                row = {"step": step, **evaluate_checkpoint(path, candidate, args.weights, args.env, env_kwargs,
                                                           args.episodes, args.seed, args.eta_inv)}
                rows.append(row)
                print(f"step {step:>8d} ({row['weights']}): success {100 * row['success_rate']:5.1f}%  "
                      f"mean return {row.get('mean_return', float('nan')):.3f}  ({row['eval_s']:.0f} s)",
                      flush=True)
            best = best_row(rows)
            if args.out is not None:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(tmp) / f"step_{best['step']:08d}.onnx", args.out)
    except (ValueError, FileNotFoundError, CheckpointError, ExportError) as exc:
        print(f"irvs select: {exc}", file=sys.stderr)
        return 2
    weights = rows[0]["weights"]
    report = {"command": command_line("select", args, leading=("run",)), "run": str(run_dir), "env": rows[0]["env"],
              "env_kwargs": env_kwargs, "episodes": args.episodes, "seed": args.seed, "eta_inv": args.eta_inv,
              "chosen_step": best["step"], "out": args.out, "rows": rows}
    results = run_dir / f"selection_{weights}.json"
    results.write_text(json.dumps(report, indent=2) + "\n")
    print(f"chosen: step {best['step']} ({100 * best['success_rate']:.1f}% on {args.episodes} selection "
          f"episodes, seeds {args.seed}..{args.seed + args.episodes - 1}); wrote {results}"
          + (f" and {args.out}" if args.out else ""))
    return 0
