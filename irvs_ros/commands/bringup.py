"""`irvs bringup GRAPH`: start a ROS graph without `ros2 launch`, from the same description as launch/*.launch.py.

    irvs bringup sim --duration 30
    irvs bringup push_insert --sim --model models/push_insert_irvs.onnx [--eta-inv 1.0]

Each node runs as a subprocess of its console script (`sim_node`, `interpolator_node`, `policy_node`) with
`--ros-args -r __node:=NAME --params-file config/NAME.yaml -p PARAM:=VALUE ...`, exactly the parameters the launch
file gives it (irvs_ros.nodes.graph_description). Runs until Ctrl-C / SIGTERM or `--duration` wall seconds, or until
a node exits on its own (an error: the others are stopped and the status is 1). Shutdown sends SIGINT to the nodes
in reverse start order, then SIGTERM, then SIGKILL to any that do not exit in time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from irvs_ros.nodes import graph_description as gd

HELP = "start a ROS graph (sim, push_insert, teleop_record) without ros2 launch: the launch files' nodes and parameters"
STOP_TIMEOUT = 10.0  # wall s a node gets to exit after SIGINT (then SIGTERM, then SIGKILL)

# CLI option -> launch argument (`--arg NAME:=VALUE` sets any other).
OPTION_ARGS = {"model": "model", "eta_inv": "eta_inv", "argmin_samples": "argmin_samples", "robot_ip": "robot_ip",
               "camera": "camera", "task": "task", "real_time_factor": "real_time_factor"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", choices=sorted(gd.GRAPHS), help="which graph (launch/<graph>.launch.py)")
    parser.add_argument("--sim", action="store_true", help="use_sim:=true: the PyBullet cell instead of the robot")
    parser.add_argument("--model", help="model:= policy file (.onnx)")
    parser.add_argument("--eta-inv", dest="eta_inv", help="eta_inv:= IRvS tilt (< 0: the policy file's value)")
    parser.add_argument("--argmin-samples", dest="argmin_samples",
                        help="argmin_samples:= argmin candidates per decision (0: the policy file's value)")
    parser.add_argument("--robot-ip", dest="robot_ip", help="robot_ip:= xArm6 controller address")
    parser.add_argument("--camera", help="camera:= realsense | sim")
    parser.add_argument("--task", help="task:= push | push_insert")
    parser.add_argument("--real-time-factor", dest="real_time_factor", help="real_time_factor:= of the sim")
    parser.add_argument("--arg", action="append", default=[], metavar="NAME:=VALUE",
                        help="any launch argument of the graph (repeatable)")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many wall seconds")
    parser.add_argument("--domain-id", dest="domain_id", type=int, default=None,
                        help="ROS_DOMAIN_ID for the nodes (default: the environment's)")
    parser.add_argument("--dry-run", action="store_true", help="print the node commands and exit")


def launch_arguments(args: argparse.Namespace) -> dict[str, str]:
    """The launch-argument values given on the command line (not the defaults)."""
    desc = gd.graph(args.graph)
    given: dict[str, str] = {}
    names = {a.name for a in desc.args}
    if args.sim:
        if "use_sim" in names:
            given["use_sim"] = "true"  # a graph without use_sim (sim) is always simulated
    for option, arg in OPTION_ARGS.items():
        value = getattr(args, option, None)
        if value is not None:
            if arg not in names:
                flag = "--" + option.replace("_", "-")
                raise gd.GraphDescriptionError(f"graph {args.graph!r} has no launch argument {arg!r} ({flag}); "
                                               f"it has {sorted(names)}")
            given[arg] = str(value)
    for item in args.arg:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise gd.GraphDescriptionError(f"--arg expects NAME:=VALUE, got {item!r}")
        given[name.strip()] = value
    return given


def _yaml_value(value: Any) -> str:
    """A parameter value as rcl's `-p name:=value` reads it (YAML): strings quoted so "1.0" or "true" stay strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def find_executable(name: str) -> list[str]:
    """The command that runs console script `name`: next to this interpreter, on PATH, in an ament install's
    lib/irvs_ros, else this interpreter calling the script's entry point."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return [str(here)]
    found = shutil.which(name)
    if found:
        return [found]
    try:
        from ament_index_python.packages import get_package_prefix

        ament = Path(get_package_prefix(gd.PACKAGE)) / "lib" / gd.PACKAGE / name
        if ament.is_file():
            return [str(ament)]
    except Exception:  # no ament index: a plain pip install
        pass
    from importlib.metadata import entry_points

    for ep in entry_points(group="console_scripts"):
        if ep.name == name and ep.value.startswith(gd.PACKAGE + "."):
            module, _, func = ep.value.partition(":")
            return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]
    raise gd.GraphDescriptionError(f"executable {name!r} not found (console script of {gd.PACKAGE}; is the package "
                                   f"installed? `pip install -e .` or `colcon build`)")


def node_command(node: gd.ResolvedNode) -> list[str]:
    """The command line that starts `node` with its parameter files and overrides."""
    cmd = find_executable(node.executable) + ["--ros-args", "-r", f"__node:={node.name}"]
    for path in node.param_files:
        cmd += ["--params-file", str(path)]
    for name, value in node.overrides.items():
        cmd += ["-p", f"{name}:={_yaml_value(value)}"]
    return cmd


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent (bring-up, demo) dies, so no node outlives it
    (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Bringup:
    """The started node processes of one graph; `stop()` shuts them down in reverse start order.

    log: None = nodes write to this terminal and progress lines are printed; a text file = node output and
    progress lines go to it instead (the demo's nodes.log)."""

    def __init__(self, nodes: list[gd.ResolvedNode], env: dict[str, str], log: IO[str] | None = None) -> None:
        self.nodes = nodes
        self.env = env
        self.log = log
        self.procs: list[tuple[gd.ResolvedNode, subprocess.Popen]] = []

    def _say(self, line: str) -> None:
        print(line, file=self.log, flush=True)

    def start(self) -> None:
        quiet = {} if self.log is None else {"stdout": self.log, "stderr": subprocess.STDOUT,
                                             "stdin": subprocess.DEVNULL}
        for node in self.nodes:
            cmd = node_command(node)
            if self.log is not None:
                self._say(f"[bringup] {node.name}: {' '.join(cmd)}")
            # own session: a terminal Ctrl-C reaches only the bring-up, which stops the nodes in order
            proc = subprocess.Popen(cmd, env=self.env, start_new_session=True, preexec_fn=die_with_parent, **quiet)
            self.procs.append((node, proc))
            files = ", ".join(str(p) for p in node.param_files) or "-"
            params = " ".join(f"{k}:={_yaml_value(v)}" for k, v in node.overrides.items()) or "-"
            self._say(f"[bringup] started {node.name} (pid {proc.pid}): {node.executable}  params: {files}  "
                      f"overrides: {params}")

    def exited(self) -> list[tuple[gd.ResolvedNode, int]]:
        return [(n, p.returncode) for n, p in self.procs if p.poll() is not None]

    def dead(self) -> str | None:
        """'NAME exited with status N, ...' for nodes that ended, else None."""
        return ", ".join(f"{n.name} exited with status {code}" for n, code in self.exited()) or None

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """SIGINT each running node (last started first), then SIGTERM / SIGKILL what is left; True when every
        node exited by itself within `timeout` after SIGINT with status 0 (or was already stopped)."""
        clean = True
        for node, proc in reversed(self.procs):
            if proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                clean = False
                self._say(f"[bringup] {node.name} did not stop within {timeout} s of SIGINT: SIGTERM")
                proc.terminate()
                try:
                    proc.wait(timeout=3.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._say(f"[bringup] stopped {node.name} (status {proc.returncode})")
        return clean


def run(args: argparse.Namespace) -> int:
    try:
        given = launch_arguments(args)
        nodes = gd.resolve(args.graph, given)
        commands = [node_command(n) for n in nodes]
    except gd.GraphDescriptionError as e:
        print(f"irvs bringup: {e}", file=sys.stderr)
        return 2
    if args.duration is not None and args.duration <= 0:
        print(f"irvs bringup: --duration must be > 0 s, got {args.duration}", file=sys.stderr)
        return 2
    if args.dry_run:
        for cmd in commands:
            print(" ".join(cmd))
        return 0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update(gd.dds_profile_env(env))
    if args.domain_id is not None:
        if not 0 <= args.domain_id <= 232:
            print(f"irvs bringup: --domain-id must be in [0, 232], got {args.domain_id}", file=sys.stderr)
            return 2
        env["ROS_DOMAIN_ID"] = str(args.domain_id)

    stop_requested: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stop_requested.append(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    bringup = Bringup(nodes, env)
    status = 0
    try:
        bringup.start()
        until = "Ctrl-C" if args.duration is None else f"{args.duration:g} s or Ctrl-C"
        print(f"[bringup] graph {args.graph!r} running ({len(nodes)} nodes, ROS_DOMAIN_ID="
              f"{env.get('ROS_DOMAIN_ID', 'default')}) until {until}", flush=True)
        end = None if args.duration is None else time.monotonic() + args.duration
        while not stop_requested and (end is None or time.monotonic() < end):
            dead = bringup.exited()
            if dead:
                for node, code in dead:
                    print(f"[bringup] {node.name} exited on its own with status {code}: stopping the graph",
                          file=sys.stderr, flush=True)
                status = 1
                break
            time.sleep(0.1)
        if stop_requested:
            print(f"[bringup] {stop_requested[0]}: stopping the graph", flush=True)
    finally:
        if not bringup.stop():
            status = status or 1
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"[bringup] graph {args.graph!r} stopped", flush=True)
    return status
