"""How precise must a particle policy's actions be? The oracle with Gaussian action error, per N and error size.

Each decision the oracle's target (goal 1, then goal 2) gets independent N(0, sigma^2) error in every dimension
(raw units of the [0, 1] box) before the environment clips it. The success rate against sigma says how exact an
argmin has to be before the energy's quality matters at all: the switch to goal 2 happens only within 0.01 of
goal 1 and success needs the end within 0.05 of goal 2, both Euclidean, so the tolerable error per dimension
shrinks as N grows.

    python bench/particle_precision.py --dims 1 2 4 8 16 --sigmas 0 0.005 0.01 0.02 0.04 --episodes 100

writes RESULTS.json and RESULTS.md (default bench/results/particle_precision) with the command and the machine.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tilt_sweep import write_report  # noqa: E402  (bench/ is scripts, not a package)


def success_rate(n_dim: int, sigma: float, episodes: int, seed: int) -> float:
    """Fraction of `episodes` particle episodes (scene seeds seed..) the noisy oracle solves."""
    from irvs_ros.sim.particle import ParticleEnv, ParticleOracle

    env, oracle = ParticleEnv(n_dim), ParticleOracle(n_dim)
    noise = np.random.default_rng(seed)
    wins = 0
    for ep in range(episodes):
        obs, info = env.reset(seed=seed + ep)
        oracle.reset()
        done = False
        while not done:
            action = oracle(obs) + sigma * noise.standard_normal(n_dim)
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        wins += bool(info["success"])
    return wins / episodes


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    sigmas = report["sigmas"]
    lines = ["# Particle: oracle success with Gaussian action error", "", f"Command: `{report['command']}`", "",
             f"Machine: {m['cpu']} ({m['cpu_count']} cores); Python {m['python']}.", "",
             f"{report['episodes']} episodes per cell, scene seeds {report['seed']}.."
             f"{report['seed'] + report['episodes'] - 1}; sigma is the error's std per dimension in raw units "
             "(the box is [0, 1]; the argmin works in the dataset's min-max range widened by 5%, mapped to [-1, 1]: "
             "about 1.8x these).", "",
             "| N | " + " | ".join(f"sigma {s:g}" for s in sigmas) + " |", "|---|" + "---|" * len(sigmas)]
    for n, rates in report["success"].items():
        lines.append(f"| {n} | " + " | ".join(f"{100 * r:.0f}%" for r in rates) + " |")
    lines += ["", f"Wall time: {report['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.005, 0.01, 0.02, 0.04])
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1000, help="first scene seed (irvs eval's default)")
    ap.add_argument("--results", default="bench/results/particle_precision", help="results path without extension")
    args = ap.parse_args(argv)
    if any(s < 0 for s in args.sigmas) or any(n < 1 for n in args.dims) or args.episodes < 1:
        print("particle_precision: need sigmas >= 0, dims >= 1 and episodes >= 1", file=sys.stderr)
        return 2

    from irvs_ros.commands.pipeline import machine_info

    start = time.perf_counter()
    success = {str(n): [success_rate(n, s, args.episodes, args.seed) for s in args.sigmas] for n in args.dims}
    report = {"command": "python bench/particle_precision.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "machine": machine_info(), "episodes": args.episodes, "seed": args.seed, "sigmas": args.sigmas,
              "success": success, "wall_s": round(time.perf_counter() - start, 1)}
    write_report(Path(args.results), report, markdown)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
