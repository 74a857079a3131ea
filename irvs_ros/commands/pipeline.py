"""demos -> train -> export -> eval, composed from the `irvs` subcommands themselves.

Shared by `irvs demo` and `irvs bench`, so the commands they run are exactly the ones a user types
(each step is printed as such a command line).
"""

from __future__ import annotations

import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from irvs_ros import cli


def config_dir() -> Path:
    """config/ of a source checkout (editable install), else the installed share/irvs_ros/config (colcon)."""
    source = Path(__file__).resolve().parents[2] / "config"
    if source.is_dir():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("irvs_ros")) / "config"
    except (ImportError, LookupError):
        return source


class PipelineError(RuntimeError):
    """A step of the pipeline returned a non-zero exit code."""


def run_step(argv: list[str]) -> float:
    """Run one `irvs` subcommand in this process, echoing it; returns its wall time in seconds."""
    print("$ irvs " + shlex.join(argv), flush=True)
    start = time.perf_counter()
    code = cli.main(argv)
    if code != 0:
        raise PipelineError(f"`irvs {shlex.join(argv)}` exited with {code}")
    return time.perf_counter() - start


def train_config_path(name: str) -> Path:
    """Path of a shipped config by name, e.g. 'train_particle_ebm_dfo' -> config/train_particle_ebm_dfo.yaml."""
    folder = config_dir()
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise PipelineError(f"no training config {path}; shipped configs: {known}")
    return path


def train_export_eval(*, config: Path, dataset: Path, workdir: Path, name: str, overrides: list[str],
                      env: str, env_args: list[str], episodes: int, eval_seed: int) -> dict[str, Any]:
    """Train one policy, export it to WORKDIR/NAME.onnx and evaluate it; returns the eval summary plus timings."""
    runs = workdir / "runs"
    policy = workdir / f"{name}.onnx"
    result_file = workdir / f"{name}.eval.json"
    if (runs / name).exists():
        # The workdir belongs to this pipeline: a previous (possibly interrupted) run of the same cell is replaced.
        print(f"removing the previous run {runs / name}", flush=True)
        shutil.rmtree(runs / name)
    t_train = run_step(["train", str(config), f"dataset={dataset}", f"name={name}", f"out_dir={runs}",
                        "eval.env=null", *overrides])
    t_export = run_step(["export", str(runs / name), "--out", str(policy)])
    t_eval = run_step(["eval", "--policy", str(policy), "--env", env, *env_args, "--episodes", str(episodes),
                       "--seed", str(eval_seed), "--out", str(result_file)])
    summary = json.loads(result_file.read_text())
    summary.pop("per_episode", None)
    summary.update(policy_file=str(policy), policy_bytes=policy.stat().st_size, train_s=round(t_train, 1),
                   export_s=round(t_export, 1), eval_s=round(t_eval, 1))
    return summary


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """The machine and library versions a result was measured with."""
    import os

    import numpy
    import onnxruntime
    import torch

    return {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": sys.version.split()[0], "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__}
