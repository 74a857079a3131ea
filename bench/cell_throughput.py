"""Benchmark of the simulated xArm6 cell: env steps per second (state only and with 120x90 images) and
oracle success over N seeds per task. Writes bench/results/cell.json and cell.md.

    .venv/bin/python bench/cell_throughput.py [--seeds 100] [--render-episodes 3]

One process, one core: the numbers are per core. An env step is one 5 Hz decision = 0.2 s of simulated time
(20 IK solves at 100 Hz, 60 physics steps at 300 Hz); IBC's own env steps are 0.1 s (10 Hz, 24 physics steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pybullet

from irvs_ros.sim.push_oracle import InsertOracle, PushOracle
from irvs_ros.sim.push_tasks import PushTaskEnv

RESULTS = Path(__file__).resolve().parent / "results"


def run_task(task: str, seeds: int, image: bool) -> dict:
    env = PushTaskEnv(task, image=image)
    oracle = PushOracle() if task == "push" else InsertOracle(pocket=env.pocket)
    steps, wins, rewards, lengths = 0, 0, [], []
    t_step = t_reset = 0.0
    for seed in range(seeds):
        t0 = time.perf_counter()
        obs, info = env.reset(seed=seed)
        t_reset += time.perf_counter() - t0
        oracle.reset()
        ret = 0.0
        for _ in range(env.max_steps):
            action = oracle(obs)
            t0 = time.perf_counter()
            obs, reward, terminated, truncated, info = env.step(action)
            t_step += time.perf_counter() - t0
            steps += 1
            ret = reward
            if terminated or truncated:
                break
        wins += bool(info["success"])
        rewards.append(ret)
        lengths.append(info["steps"])
    env.close()
    return {"task": task, "image": image, "episodes": seeds, "success_rate": wins / seeds,
            "mean_final_reward": float(np.mean(rewards)), "mean_episode_steps": float(np.mean(lengths)),
            "env_steps": steps, "steps_per_s": steps / t_step, "steps_per_s_incl_reset": steps / (t_step + t_reset),
            "reset_ms": 1000 * t_reset / seeds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--render-episodes", type=int, default=3)
    args = ap.parse_args()
    results = []
    for task in ("push", "push_insert"):
        for image, n in ((False, args.seeds), (True, args.render_episodes)):
            r = run_task(task, n, image)
            print(json.dumps(r), flush=True)
            results.append(r)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    except OSError:
        commit = ""
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": platform.node(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_avg_at_end": os.getloadavg(), "python": platform.python_version(), "numpy": np.__version__,
            "pybullet": pybullet.getAPIVersion(), "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "ibc_reference_steps_per_s": 270}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cell.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = ["# Simulated cell throughput and oracle success", "",
             f"Command: `{meta['command']}` on {meta['machine']} ({meta['cores']} cores, load average at end "
             f"{', '.join(f'{x:.1f}' for x in meta['load_avg_at_end'])}), Python {meta['python']}, "
             f"numpy {meta['numpy']}, pybullet API {meta['pybullet']}, commit {meta['commit']}, {meta['date']}.",
             "", "One process (per core). An env step = one 5 Hz decision = 0.2 s simulated (IBC's = 0.1 s).", "",
             "| task | images | episodes | oracle success | mean final reward | mean steps | steps/s | "
             "steps/s incl. reset | reset ms |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['task']} | {'120x90' if r['image'] else 'no'} | {r['episodes']} | "
                     f"{r['success_rate']:.2f} | {r['mean_final_reward']:.2f} | {r['mean_episode_steps']:.1f} | "
                     f"{r['steps_per_s']:.0f} | {r['steps_per_s_incl_reset']:.0f} | {r['reset_ms']:.0f} |")
    (RESULTS / "cell.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
