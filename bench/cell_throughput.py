"""Benchmark of the simulated xArm6 cell: env steps per second (state only and with 120x90 images) and oracle
success over N seeds per task, for the current simulation settings and, in the same run, for the settings
before the throughput work (`CellConfig.legacy()`). Writes bench/results/cell.json and cell.md.

    .venv/bin/python bench/cell_throughput.py [--seeds 100] [--render-episodes 5] [--legacy-seeds 20]

One process, one core: the numbers are per core. An env step is one 5 Hz decision = 0.2 s of simulated time
(20 IK solves at 100 Hz, 48 physics steps at 240 Hz); IBC's own env steps are 0.1 s (10 Hz, 24 physics steps
at 240 Hz). The machine is shared: wall-clock rates depend on its load (recorded at start and end), so the
comparison that holds is the ratio within one run; CPU-time rates (this process's CPU seconds) are reported
next to them because they move less with load.
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

from irvs_ros.commands.pipeline import cpu_model
from irvs_ros.sim.cell import CellConfig
from irvs_ros.sim.push_oracle import InsertOracle, PushOracle
from irvs_ros.sim.push_tasks import PushTaskEnv, TaskConfig

RESULTS = Path(__file__).resolve().parent / "results"
IBC_STEPS_PER_S = 270.0       # IBC's PyBullet push env with its oracle on a machine of this kind (issue 3)
# Our legacy settings on push (steps/s incl. reset) in the run of 2026-11-22 (commit 262782b, Intel Xeon with AMX):
# the machine the IBC figure most likely comes from. IBC's env was not run here; scaling its figure by how much
# faster this machine runs our legacy settings estimates what it would do here.
LEGACY_PUSH_REF_STEPS_PER_S = 93.0
IBC_STEP_S, STEP_S = 0.1, 0.2  # simulated seconds per env step: IBC (10 Hz), ours (5 Hz)


class _Runner:
    """One env + oracle with its own counters; episodes are run one at a time (so two runners can alternate)."""

    def __init__(self, task: str, image: bool, settings: str) -> None:
        config = TaskConfig() if settings == "current" else TaskConfig(cell=CellConfig.legacy(), camera_layers=False)
        self.task, self.image, self.settings = task, image, settings
        self.env = PushTaskEnv(task, image=image, config=config)
        self.oracle = PushOracle() if task == "push" else InsertOracle(pocket=self.env.pocket)
        self.episodes = self.steps = self.wins = 0
        self.rewards: list[float] = []
        self.lengths: list[int] = []
        self.t_step = self.t_reset = self.c_step = self.c_reset = 0.0
        self.mark = (0, 0.0, 0.0, 0.0, 0.0)   # steps and times when `paired` began

    def episode(self, seed: int) -> None:
        env = self.env
        t0, c0 = time.perf_counter(), time.process_time()
        obs, info = env.reset(seed=seed)
        self.t_reset += time.perf_counter() - t0
        self.c_reset += time.process_time() - c0
        self.oracle.reset()
        ret = 0.0
        for _ in range(env.max_steps):
            action = self.oracle(obs)
            t0, c0 = time.perf_counter(), time.process_time()
            obs, reward, terminated, truncated, info = env.step(action)
            self.t_step += time.perf_counter() - t0
            self.c_step += time.process_time() - c0
            self.steps += 1
            ret = reward
            if terminated or truncated:
                break
        self.episodes += 1
        self.wins += bool(info["success"])
        self.rewards.append(ret)
        self.lengths.append(info["steps"])

    def snapshot(self) -> tuple[int, float, float, float, float]:
        return self.steps, self.t_step, self.t_reset, self.c_step, self.c_reset

    def result(self, paired: tuple[int, float, float, float, float] | None = None) -> dict:
        self.env.close()
        steps, t_step, t_reset, c_step, c_reset = self.snapshot()
        out = {"task": self.task, "settings": self.settings, "image": self.image, "episodes": self.episodes,
               "success_rate": self.wins / self.episodes, "mean_final_reward": float(np.mean(self.rewards)),
               "mean_episode_steps": float(np.mean(self.lengths)), "env_steps": steps,
               "steps_per_s": steps / t_step, "steps_per_s_incl_reset": steps / (t_step + t_reset),
               "cpu_steps_per_s": steps / c_step, "cpu_steps_per_s_incl_reset": steps / (c_step + c_reset),
               "reset_ms": 1000 * t_reset / self.episodes}
        if paired is not None:
            # Rates over the episodes that alternated with the other settings' (same seeds, same load).
            ps, pt, pr, pc, pcr = paired
            out["paired"] = {"env_steps": ps, "steps_per_s_incl_reset": ps / (pt + pr),
                             "cpu_steps_per_s_incl_reset": ps / (pc + pcr)}
        return out


def run_pair(task: str, image: bool, episodes: int, legacy_episodes: int) -> list[dict]:
    """`episodes` seeds with the current settings; the first `legacy_episodes` of them alternate, seed by seed,
    with the same seed under the legacy settings, so that both see the same machine load."""
    current = _Runner(task, image, "current")
    legacy = _Runner(task, image, "legacy") if legacy_episodes > 0 else None
    paired = None
    for seed in range(episodes):
        current.episode(seed)
        if legacy is not None and seed < legacy_episodes:
            legacy.episode(seed)
            if seed == legacy_episodes - 1:
                paired = current.snapshot()
    out = [current.result(paired)]
    if legacy is not None:
        out.append(legacy.result(legacy.snapshot()))
    return out


def _row(r: dict) -> str:
    return (f"| {r['task']} | {r['settings']} | {'120x90' if r['image'] else 'no'} | {r['episodes']} | "
            f"{r['success_rate']:.2f} | {r['mean_final_reward']:.2f} | {r['mean_episode_steps']:.1f} | "
            f"{r['steps_per_s']:.0f} | {r['steps_per_s_incl_reset']:.0f} | {r['cpu_steps_per_s']:.0f} | "
            f"{r['reset_ms']:.1f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100, help="state-only episodes per task, current settings")
    ap.add_argument("--render-episodes", type=int, default=5, help="episodes per task with 120x90 images")
    ap.add_argument("--legacy-seeds", type=int, default=20,
                    help="episodes per task and image setting with CellConfig.legacy(), alternating seed by seed "
                         "with the current settings' first episodes (0: skip the comparison)")
    args = ap.parse_args()
    load_start = os.getloadavg()
    results = []
    for task in ("push", "push_insert"):
        for image, n in ((False, args.seeds), (True, args.render_episodes)):
            for r in run_pair(task, image, n, min(n, args.legacy_seeds)):
                print(json.dumps(r), flush=True)
                results.append(r)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    except OSError:
        commit = ""
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": platform.node(),
            "cpu": cpu_model(), "cores": os.cpu_count(),
            "load_avg_at_start": load_start, "load_avg_at_end": os.getloadavg(), "python": platform.python_version(),
            "numpy": np.__version__, "pybullet": pybullet.getAPIVersion(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "ibc_reference_steps_per_s": IBC_STEPS_PER_S,
            "ibc_reference_sim_s_per_s": IBC_STEPS_PER_S * IBC_STEP_S, "env_step_sim_s": STEP_S}

    legacy_push = next((r for r in results if (r["task"], r["settings"], r["image"]) == ("push", "legacy", False)),
                       None)
    ibc_here = None if legacy_push is None else \
        IBC_STEPS_PER_S * legacy_push["steps_per_s_incl_reset"] / LEGACY_PUSH_REF_STEPS_PER_S
    meta["ibc_estimated_here_steps_per_s"] = ibc_here

    def find(task: str, settings: str, image: bool) -> dict | None:
        return next((r for r in results if (r["task"], r["settings"], r["image"]) == (task, settings, image)), None)

    comparison = []
    for task in ("push", "push_insert"):
        for image in (False, True):
            new, old = find(task, "current", image), find(task, "legacy", image)
            if new is None:
                continue
            row = {"task": task, "image": image, "steps_per_s": new["steps_per_s"],
                   "steps_per_s_incl_reset": new["steps_per_s_incl_reset"],
                   "sim_s_per_s_incl_reset": new["steps_per_s_incl_reset"] * STEP_S}
            if old is not None:
                row["speedup_vs_legacy_incl_reset"] = (new["paired"]["steps_per_s_incl_reset"]
                                                       / old["paired"]["steps_per_s_incl_reset"])
                row["cpu_speedup_vs_legacy_incl_reset"] = (new["paired"]["cpu_steps_per_s_incl_reset"]
                                                           / old["paired"]["cpu_steps_per_s_incl_reset"])
            if not image:
                row["vs_ibc_per_env_step"] = new["steps_per_s_incl_reset"] / IBC_STEPS_PER_S
                row["vs_ibc_per_sim_second"] = row["sim_s_per_s_incl_reset"] / (IBC_STEPS_PER_S * IBC_STEP_S)
                row["cpu_vs_ibc_per_env_step"] = new["cpu_steps_per_s_incl_reset"] / IBC_STEPS_PER_S
                row["cpu_vs_ibc_per_sim_second"] = row["cpu_vs_ibc_per_env_step"] * STEP_S / IBC_STEP_S
                if ibc_here is not None:
                    row["vs_ibc_estimated_here_per_env_step"] = new["steps_per_s_incl_reset"] / ibc_here
            comparison.append(row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cell.json").write_text(json.dumps({"meta": meta, "results": results, "comparison": comparison},
                                                  indent=2) + "\n")
    loads = ", ".join(f"{x:.1f}" for x in meta["load_avg_at_start"]), ", ".join(
        f"{x:.1f}" for x in meta["load_avg_at_end"])
    lines = ["# Simulated cell throughput and oracle success", "",
             f"Command: `{meta['command']}` on {meta['machine']} ({meta['cpu']}, {meta['cores']} cores, shared; "
             f"load average "
             f"(1, 5, 15 min) {loads[0]} at start, {loads[1]} at end), Python {meta['python']}, numpy "
             f"{meta['numpy']}, pybullet API {meta['pybullet']}, commit {meta['commit']}, {meta['date']}.", "",
             "One process (per core). An env step = one 5 Hz decision = 0.2 s simulated (IBC's = 0.1 s). "
             "`current` = the cell's settings now; `legacy` = `CellConfig.legacy()` and one-pass rendering "
             "(`TaskConfig(camera_layers=False)`), the settings before the throughput work (same physics parameters, "
             "same images, same oracle), run in the same process, its episodes "
             "alternating seed by seed with the current settings' first ones; the ratios (Comparison) are over "
             "those alternating episodes, which saw the same machine load. "
             "steps/s = env steps per wall-clock second of `step` calls; incl. reset = with `reset` time; "
             "CPU = per CPU second of this process (less sensitive to the machine's load).", "",
             "| task | settings | images | episodes | oracle success | mean final reward | mean steps | steps/s | "
             "steps/s incl. reset | CPU steps/s | reset ms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(r) for r in results]
    lines += ["", "## Comparison", "",
              f"IBC's own PyBullet push env with its oracle: {IBC_STEPS_PER_S:.0f} env steps/s on a machine of this "
              f"kind (the issue's figure, not re-measured), {IBC_STEP_S} s simulated per step = "
              f"{IBC_STEPS_PER_S * IBC_STEP_S:.0f} simulated s per second. Machines of this kind differ: our legacy "
              f"settings ran push at {LEGACY_PUSH_REF_STEPS_PER_S:.0f} steps/s on 2026-11-22 (Intel Xeon) and at "
              + ("-" if legacy_push is None else f"{legacy_push['steps_per_s_incl_reset']:.0f}")
              + " here, so IBC's env would run at about "
              + ("-" if ibc_here is None else f"{ibc_here:.0f}")
              + " steps/s here (an estimate: the figure scaled by that ratio). "
              "Ours per env step (incl. reset) and per simulated second (env steps/s x 0.2 s):", "",
              "| task | images | steps/s incl. reset | simulated s per s | x legacy (wall) | x legacy (CPU) | "
              "x IBC per env step (wall / CPU) | x IBC per simulated s (wall / CPU) | "
              "x IBC estimated here per env step |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in comparison:
        def fmt(key: str, c: dict = c) -> str:
            return f"{c[key]:.2f}" if key in c else "-"

        lines.append(f"| {c['task']} | {'120x90' if c['image'] else 'no'} | {c['steps_per_s_incl_reset']:.0f} | "
                     f"{c['sim_s_per_s_incl_reset']:.0f} | {fmt('speedup_vs_legacy_incl_reset')} | "
                     f"{fmt('cpu_speedup_vs_legacy_incl_reset')} | {fmt('vs_ibc_per_env_step')} / "
                     f"{fmt('cpu_vs_ibc_per_env_step')} | {fmt('vs_ibc_per_sim_second')} / "
                     f"{fmt('cpu_vs_ibc_per_sim_second')} | {fmt('vs_ibc_estimated_here_per_env_step')} |")
    (RESULTS / "cell.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
