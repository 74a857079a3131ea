"""Interpolator period jitter at 100 Hz on the wall clock while a policy saturates the other core.

    .venv/bin/python bench/interpolator_jitter.py [--duration 600] [--graph-duration SECONDS] [--label TEXT]

Writes bench/results/interpolator_jitter.{json,md} (`--out` to change) with the command, machine, load and
library versions. Goals (issue 4): tick period error p99 <= 1 ms, max <= 5 ms, no missed setpoint in 10 minutes.

Part "interpolator" (`--duration` s): each its own process,
  interpolator_node  the console script with config/interpolator_node.yaml on the wall clock (use_sim_time false);
  feeder             this script (`--role feeder`), as a driver and a 5 Hz setpoint source: absolute setpoints at
                     5 Hz (a 5 cm circle every 10 s), /joint_states at 100 Hz echoing the latest joint command (as
                     the xArm driver publishes the arm's), and 640x360 rgb8 camera frames at 30 Hz for the load;
  load               policy_node (console script, config/policy_node.yaml) with an untrained policy of IBC's
                     real-world size (120x90 image, ConvMaxPool, 1024x4 energy MLP, DFO 1024 samples x 3
                     iterations) exported here, pinned to the last CPU and deciding back to back (period 0.05 s),
                     so it saturates that core; its setpoints go to /bench/load_setpoint, not to the interpolator;
  probe              this process: /irvs/joint_command receive times and stamps, /irvs/setpoint, /diagnostics.
Part "graph" (`--graph-duration` s, 0 = skip): the push_insert graph as `irvs bringup push_insert --sim` starts
it (each node its own process, the same parameter files and overrides, graph_description.resolve), the policy
(the same large policy file) driving the interpolator at 5 Hz; only the interpolator runs on the wall clock
(use_sim_time false, as on the robot) so its jitter is wall-clock jitter; sim_node paces the cell at real time.

The interpolator runs as its console script does: loop thread SCHED_FIFO at realtime_priority and the rest of the
process at SCHED_FIFO 1 when permitted, asynchronous Fast DDS publishing, GC freeze, 0.2 ms GIL switch interval
(interpolator_node.main); `--compare-off` adds the interpolator part again with realtime_priority 0.

Measured: the interpolator's own per-tick timing (nodes.loop_timing, on /diagnostics, restarted with its
`~/reset_statistics` when the measurement starts): |tick period - 10 ms| p50 / p99 / max, wake-up lateness, work per
tick; its overrun and skipped-tick counters; setpoints published by the source vs received, applied and superseded
(never applied = missed) by the interpolator; the probe's receive-time period error (includes DDS delivery and
the probe's own scheduling: an upper bound) and command stamp gaps (a missing command shows as a gap); CPU time
of every process, per-core busy fraction and the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GOALS = {"period_error_p99_ms": 1.0, "period_error_max_ms": 5.0, "missed_setpoints": 0}
TICK = 0.01
CENTER, RADIUS, CIRCLE_PERIOD = (0.4, 0.0), 0.05, 10.0  # feeder setpoints: m, m, s
LOG_DIR: Path | None = None  # --logs: each process's output is written there when it stops


# ---------------------------------------------------------------------------------------------- feeder role


def feeder(args: argparse.Namespace) -> int:
    """5 Hz setpoints (after "go" on stdin), 100 Hz joint-state echo, 30 Hz frames; counts printed as JSON at exit."""
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image, JointState

    from irvs_ros.nodes.common import COMMAND_QOS, SENSOR_QOS, stamp_of
    from irvs_ros.nodes.image_ops import image_msg

    stop = threading.Event()
    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)  # our handlers: stop, then report counts
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    node = Node("jitter_feeder")
    sp_pub = node.create_publisher(PoseStamped, "/irvs/setpoint", COMMAND_QOS)
    js_pub = node.create_publisher(JointState, "/joint_states", COMMAND_QOS)
    img_pub = node.create_publisher(Image, "/camera/camera/color/image_raw", SENSOR_QOS)
    latest: list[JointState] = []  # the newest joint command (the arm "reaches" it at once)

    def on_command(msg: JointState) -> None:
        latest[:] = [msg]

    node.create_subscription(JointState, "/irvs/joint_command", on_command, COMMAND_QOS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    go = threading.Event()

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "go":
                go.set()

    threading.Thread(target=read_stdin, daemon=True).start()
    w, h = args.image_size
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(4)]
    counts = {"setpoints": 0, "joint_states": 0, "images": 0, "setpoint_publish_late_max_ms": 0.0}
    announced = False
    t0 = next_t = time.monotonic()
    k = 0
    sp_next = None
    while not stop.is_set():
        next_t += TICK
        delay = next_t - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        k += 1
        if latest:
            js = JointState(name=list(latest[0].name), position=list(latest[0].position))
            js.header.stamp = stamp_of(time.time())
            js_pub.publish(js)
            counts["joint_states"] += 1
            if not announced:
                print("running", flush=True)  # the interpolator's loop is up: the bench may start the measurement
                announced = True
        if k % 3 == 0:  # ~33 Hz (30 Hz nominal; 3 ticks keeps one clock)
            img_pub.publish(image_msg(frames[k % 4], stamp_of(time.time()), "camera_color_optical_frame"))
            counts["images"] += 1
        if go.is_set():
            now = time.monotonic()
            if sp_next is None:
                sp_next, t0 = now, now
            if now >= sp_next:
                counts["setpoint_publish_late_max_ms"] = max(counts["setpoint_publish_late_max_ms"],
                                                             (now - sp_next) * 1e3)
                phase = 2 * math.pi * (sp_next - t0) / CIRCLE_PERIOD
                msg = PoseStamped()
                msg.header.stamp = stamp_of(time.time())
                msg.header.frame_id = "link_base"
                msg.pose.position.x = CENTER[0] + RADIUS * math.cos(phase)
                msg.pose.position.y = CENTER[1] + RADIUS * math.sin(phase)
                msg.pose.position.z = 0.06
                msg.pose.orientation.y = 1.0
                sp_pub.publish(msg)
                counts["setpoints"] += 1
                sp_next += 0.2
    print(json.dumps(counts), flush=True)
    executor.shutdown(timeout_sec=1.0)
    node.destroy_node()
    rclpy.shutdown()
    return 0


# ---------------------------------------------------------------------------------------------- processes


def _child_setup(cpus: set[int] | None) -> Any:
    def setup() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # die with the bench (Linux)
        except Exception:
            pass
        if cpus:
            os.sched_setaffinity(0, cpus)
    return setup


class Proc:
    """One child process; stdout lines collected in a thread."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cpus: set[int] | None = None,
                 stdin: bool = False) -> None:
        self.name, self.cmd, self.cpus = name, cmd, cpus
        self.popen = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                      start_new_session=True, preexec_fn=_child_setup(cpus))
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def send(self, text: str) -> None:
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (s); nan once it is gone."""
        try:
            fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(timeout=2.0)
        if LOG_DIR is not None:
            name = "".join(c if c.isalnum() else "_" for c in self.name)
            (LOG_DIR / f"{name}.log").write_text(" ".join(self.cmd) + "\n" + "\n".join(self.lines) + "\n")
        return self.popen.returncode


def _cpu_times() -> list[tuple[int, int, int]]:
    """(busy, steal, total) jiffies per CPU from /proc/stat (steal: time the hypervisor ran something else)."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + (v[4] if len(v) > 4 else 0)
            out.append((sum(v) - idle, v[7] if len(v) > 7 else 0, sum(v)))
    return out


def _cpu_pressure() -> str:
    """The kernel's CPU pressure line (share of time some task waited for a CPU), or "" without PSI."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return ""


# ---------------------------------------------------------------------------------------------- probe


class Probe:
    """This process's view of the graph: command receive times and stamps, setpoints, the newest diagnostics."""

    def __init__(self, domain_id: int) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import JointState

        from irvs_ros.nodes.graph import InProcessGraph, ServiceCaller

        self.graph = InProcessGraph(domain_id=domain_id).__enter__()
        self.node = self.graph.add(Node("jitter_probe", context=self.graph.context))
        self.caller = ServiceCaller(self.graph.context, "jitter_probe_caller")
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.lock = threading.Lock()
        self.recording = False
        self.recv: list[float] = []
        self.stamps: list[float] = []
        self.setpoints = 0
        self.setpoint_times: list[float] = []
        self.diags: dict[str, dict[str, str]] = {}
        self.node.create_subscription(JointState, "/irvs/joint_command", self._on_command, qos)
        self.node.create_subscription(PoseStamped, "/irvs/setpoint", self._on_setpoint, qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)

    def _on_command(self, msg: Any) -> None:
        t = time.monotonic()
        if self.recording:
            with self.lock:
                self.recv.append(t)
                self.stamps.append(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)

    def _on_setpoint(self, _msg: Any) -> None:
        with self.lock:
            self.setpoint_times.append(time.monotonic())
            if self.recording:
                self.setpoints += 1

    def _on_diag(self, msg: Any) -> None:
        for status in msg.status:
            with self.lock:
                self.diags[status.name.split(":")[0]] = {kv.key: kv.value for kv in status.values}

    def forget_diagnostics(self) -> None:
        """Drop the diagnostics seen so far (a new part starts nodes of the same names)."""
        with self.lock:
            self.diags.clear()
            self.setpoint_times.clear()

    def diag(self, node: str) -> dict[str, str]:
        with self.lock:
            return dict(self.diags.get(node, {}))

    def start(self) -> None:
        with self.lock:
            self.recv.clear()
            self.stamps.clear()
            self.setpoints = 0
        self.recording = True

    def stop_recording(self) -> None:
        self.recording = False

    def trigger(self, service: str) -> str:
        from std_srvs.srv import Trigger

        resp = self.caller.call(Trigger, service, Trigger.Request(), timeout=15.0)
        if not resp.success:
            raise RuntimeError(f"{service}: {resp.message}")
        return resp.message

    def close(self) -> None:
        self.caller.close()
        self.graph.__exit__(None, None, None)


def _wait(pred: Any, timeout: float, what: str | Callable[[], str], procs: list[Proc]) -> None:
    """Poll `pred` until true; a child exiting or `timeout` s passing raises with the children's last lines
    (`what` names what is awaited; a callable is evaluated then, to report the state at the time)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if callable(what) and (time.monotonic() > deadline or any(p.popen.poll() is not None for p in procs)):
            what = what()
        for p in procs:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited with status {p.popen.returncode} while waiting for {what}:\n"
                                   + "\n".join(p.lines[-30:]))
        if time.monotonic() > deadline:
            tails = "".join(f"\n--- {p.name} (last lines):\n" + "\n".join(p.lines[-12:]) for p in procs)
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}{tails}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- measurement


def _num(d: dict[str, str], key: str) -> float:
    try:
        return float(d[key])
    except (KeyError, ValueError):
        return float("nan")


def _receive_stats(recv: list[float], stamps: list[float]) -> dict[str, float]:
    r, s = np.asarray(recv), np.asarray(stamps)
    if r.size < 3:
        return {"commands": int(r.size)}
    err = np.abs(np.diff(r) - TICK) * 1e3
    gaps = np.round(np.diff(s) / TICK).astype(int)
    return {"commands": int(r.size), "recv_period_error_p50_ms": float(np.percentile(err, 50)),
            "recv_period_error_p99_ms": float(np.percentile(err, 99)), "recv_period_error_max_ms": float(err.max()),
            "stamp_gaps_over_one_tick": int(np.count_nonzero(gaps > 1)),
            "stamp_missing_ticks": int(np.sum(np.clip(gaps - 1, 0, None))),
            "stamp_duplicates_or_reordered": int(np.count_nonzero(gaps < 1))}


def _interpolator_summary(d: dict[str, str]) -> dict[str, Any]:
    keys = ("period_error_p50_ms", "period_error_p99_ms", "period_error_max_ms", "period_error_over_1ms",
            "period_error_over_5ms", "wake_lateness_p50_ms", "wake_lateness_p99_ms", "wake_lateness_max_ms",
            "work_p50_ms", "work_p99_ms", "work_max_ms", "timed_ticks", "overruns", "skipped_ticks",
            "setpoints_received", "setpoints_applied", "setpoints_superseded", "setpoints_rejected", "realtime")
    out: dict[str, Any] = {}
    for k in keys:
        if k in d:
            v = _num(d, k)
            out[k] = d[k] if math.isnan(v) and d[k] != "nan" else (int(v) if v.is_integer() else v)
    return out


def measure(name: str, procs: list[Proc], probe: Probe, duration: float, start_setpoints: Any,
            stop_source: Any) -> dict[str, Any]:
    """Reset the interpolator's statistics, let the graph run `duration` s, then stop the setpoint source and read
    the final diagnostics. `start_setpoints()` starts the source (if it waits for that); `stop_source()` stops it and
    returns the number of setpoints it published (None: use the probe's count)."""
    probe.trigger("/interpolator_node/reset_statistics")
    time.sleep(0.05)
    probe.start()
    cpu0 = {p.name: p.cpu_seconds() for p in procs}
    self0, sys0, wall0 = time.process_time(), _cpu_times(), time.monotonic()
    start_setpoints()
    print(f"[{name}] measuring for {duration:g} s", flush=True)
    next_report = wall0 + 60
    while time.monotonic() - wall0 < duration:
        time.sleep(0.5)
        for p in procs:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited with status {p.popen.returncode} during the measurement:\n"
                                   + "\n".join(p.lines[-30:]))
        if time.monotonic() >= next_report:
            d = probe.diag("interpolator_node")
            print(f"[{name}] {time.monotonic() - wall0:.0f} s: period error p99 {d.get('period_error_p99_ms')} ms, "
                  f"max {d.get('period_error_max_ms')} ms, overruns {d.get('overruns')}", flush=True)
            next_report += 60
    wall = time.monotonic() - wall0
    cpu1 = {p.name: p.cpu_seconds() for p in procs}
    self1, sys1 = time.process_time(), _cpu_times()
    published = stop_source()
    time.sleep(2.5)  # every setpoint in flight is taken; two diagnostics periods pass
    probe.stop_recording()
    d = probe.diag("interpolator_node")
    interp = _interpolator_summary(d)
    with probe.lock:
        recv, stamps, seen = list(probe.recv), list(probe.stamps), probe.setpoints
    published = seen if published is None else published
    cores = [(b1 - b0) / max(t1 - t0, 1) for (b0, _, t0), (b1, _, t1) in zip(sys0, sys1, strict=True)]
    steal = [(s1 - s0) / max(t1 - t0, 1) for (_, s0, t0), (_, s1, t1) in zip(sys0, sys1, strict=True)]
    cpu = {n: (cpu1[n] - cpu0[n]) / wall for n in cpu0}
    cpu["probe (bench process)"] = (self1 - self0) / wall
    applied = interp.get("setpoints_applied", 0)
    return {
        "duration_s": round(wall, 1), "interpolator": interp,
        "setpoints": {"published": published, "seen_by_probe": seen, "received": interp.get("setpoints_received"),
                      "applied": applied, "superseded": interp.get("setpoints_superseded"),
                      # >= 0: with the probe as the count (graph part), a setpoint the interpolator took between
                      # its statistics reset and the probe's start is applied but not counted as published.
                      "missed": max(0, published - applied) if isinstance(published, int) else None},
        "probe": _receive_stats(recv, stamps),
        "cpu_fraction_of_one_core": {k: round(v, 3) for k, v in cpu.items()},
        "core_busy_fraction": [round(c, 3) for c in cores],
        "core_steal_fraction": [round(c, 4) for c in steal],
        "cpu_pressure_at_end": _cpu_pressure(),
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "policy": {k: probe.diag("policy_node").get(k) for k in ("decisions", "latency_compute_p50_ms",
                                                                 "latency_compute_p99_ms", "providers")},
        "pinning": {p.name: sorted(p.cpus) for p in procs if p.cpus},
    }


def export_load_policy(path: Path) -> Path:
    """An untrained IBC real-world size policy (see the module docstring), image only, deltas within +-2 cm."""
    import torch

    from irvs_ros.learn.algorithms import make_algorithm
    from irvs_ros.learn.export import export_policy
    from irvs_ros.runtime.spec import NormStats, ObsSpec, PolicySpec

    torch.manual_seed(0)
    stats = NormStats((), (), (-0.02, -0.02), (0.02, 0.02), 0.0, 1.0)
    spec = PolicySpec(ObsSpec(0, (90, 120, 3), ()), 2, stats, (-0.022, -0.022), (0.022, 0.022), 5.0)
    algo = make_algorithm("ebm_dfo", spec, {})  # defaults: IBC D.5 real-world pushing (1024x4, 1024 x 3 DFO)
    return export_policy(algo, path)


def run_interpolator_part(args: argparse.Namespace, env: dict[str, str], model: Path, probe: Probe,
                          realtime_priority: int) -> dict:
    from irvs_ros.commands.bringup import find_executable
    from irvs_ros.nodes import graph_description as gd

    last_cpu = max(os.sched_getaffinity(0))
    interp_cmd = find_executable("interpolator_node") + [
        "--ros-args", "-r", "__node:=interpolator_node", "--params-file", str(gd.param_file("interpolator_node.yaml")),
        "-p", "use_sim_time:=false", "-p", "start_from_joint_states:=false",
        "-p", f"realtime_priority:={realtime_priority}",
        "-p", f"start_xy:=[{CENTER[0] + RADIUS}, {CENTER[1]}]"]
    policy_cmd = find_executable("policy_node") + [
        "--ros-args", "-r", "__node:=policy_node", "--params-file", str(gd.param_file("policy_node.yaml")),
        "-p", "use_sim_time:=false", "-p", f"model:={json.dumps(str(model))}", "-p", "providers:=cpu",
        "-p", "period:=0.05", "-p", "max_image_age:=1.0", "-p", "setpoint_topic:=/bench/load_setpoint",
        "-p", "start_from_ee_pose:=false", "-p", "start_xy:=[0.4, 0.0]"]
    feeder_cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "feeder",
                  "--image-size", f"{args.image_size[0]}x{args.image_size[1]}"]
    procs: list[Proc] = []
    probe.forget_diagnostics()
    try:
        procs.append(Proc("interpolator_node", interp_cmd, env))
        if not args.no_load:
            procs.append(Proc("policy_node (load)", policy_cmd, env, cpus={last_cpu}))
        feeder_proc = Proc("feeder", feeder_cmd, env, stdin=True)
        procs.append(feeder_proc)
        _wait(lambda: "running" in feeder_proc.lines, 60, "the interpolator's first joint command", procs)
        if not args.no_load:
            _wait(lambda: _num(probe.diag("policy_node"), "decisions") >= 3, 120,
                  lambda: f"the load policy deciding (its diagnostics: {probe.diag('policy_node') or 'none seen'}; "
                          f"diagnostics from {sorted(probe.diags)})", procs)
        _wait(lambda: probe.diag("interpolator_node").get("timed_ticks") is not None, 30,
              "interpolator diagnostics", procs)
        time.sleep(args.settle)

        def stop_feeder() -> int:
            feeder_proc.stop()
            reports = [line for line in feeder_proc.lines if line.startswith("{")]
            if not reports:
                raise RuntimeError("the feeder reported no counts:\n" + "\n".join(feeder_proc.lines[-30:]))
            counts = json.loads(reports[-1])
            stop_feeder.counts = counts
            return int(counts["setpoints"])

        result = measure("interpolator", procs, probe, args.duration, lambda: feeder_proc.send("go"), stop_feeder)
        result["feeder"] = getattr(stop_feeder, "counts", {})
        result["commands"] = {p.name: " ".join(p.cmd) for p in procs}
        return result
    finally:
        for p in reversed(procs):
            p.stop()


def run_graph_part(args: argparse.Namespace, env: dict[str, str], model: Path, probe: Probe) -> dict:
    from irvs_ros.commands.bringup import node_command
    from irvs_ros.nodes import graph_description as gd

    nodes = gd.resolve("push_insert", {"use_sim": "true", "model": str(model)})
    nodes = [dataclasses.replace(n, overrides={**n.overrides, "use_sim_time": False})
             if n.name == "interpolator_node" else n for n in nodes]
    procs: list[Proc] = []
    probe.forget_diagnostics()
    try:
        for n in nodes:
            procs.append(Proc(n.name, node_command(n), env))
        _wait(lambda: _num(probe.diag("policy_node"), "decisions") >= 3, 180, "the policy driving the graph", procs)
        _wait(lambda: probe.diag("interpolator_node").get("timed_ticks") is not None, 30,
              "interpolator diagnostics", procs)
        time.sleep(args.settle)
        # Start between two setpoints (5 Hz), so none is counted on one side of the start and not the other.
        with probe.lock:
            last = probe.setpoint_times[-1] if probe.setpoint_times else time.monotonic()
        time.sleep(max(0.0, last + 0.1 - time.monotonic()))
        policy = next(p for p in procs if p.name == "policy_node")

        def stop_policy() -> None:
            policy.stop()
            return None

        result = measure("graph", procs, probe, args.graph_duration, lambda: None, stop_policy)
        result["commands"] = {p.name: " ".join(p.cmd) for p in procs}
        return result
    finally:
        for p in reversed(procs):
            p.stop()


# ---------------------------------------------------------------------------------------------- report


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for dist in ("rclpy", "ros-rclpy", "onnxruntime", "onnxruntime-gpu", "pybullet", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip()
    except OSError:
        commit = ""
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()], "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _verdict(part: dict) -> dict[str, bool]:
    i, s = part["interpolator"], part["setpoints"]
    return {"period_error_p99_ms": bool(i.get("period_error_p99_ms", math.inf) <= GOALS["period_error_p99_ms"]),
            "period_error_max_ms": bool(i.get("period_error_max_ms", math.inf) <= GOALS["period_error_max_ms"]),
            "missed_setpoints": s["missed"] == 0 and not s["superseded"]}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "-" if v is None else str(v)


def write_markdown(path: Path, doc: dict) -> None:
    m, lines = doc["machine"], []
    lines += [f"# Interpolator period jitter at 100 Hz{' (' + doc['label'] + ')' if doc['label'] else ''}", "",
              f"Command: `{doc['command']}` on {m['host']} ({m['cpu']}, {m['cores']} cores, kernel {m['kernel']}), "
              f"commit {m['commit']}, {m['date']}; load average at start {m['load_average_at_start']}.", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()) + ".", "",
              f"Goals: tick period error p99 <= {GOALS['period_error_p99_ms']} ms, max <= "
              f"{GOALS['period_error_max_ms']} ms, no missed setpoint in 10 minutes. Period error = |tick-to-tick "
              "wake-up interval - 10 ms| measured inside the interpolator's loop (nodes.loop_timing, whole run); "
              "the probe's receive-time numbers add DDS delivery and the probe process's own scheduling.", ""]
    head = ("| part | s | period err p50 / p99 / max ms | ticks >= 1 ms / 5 ms | wake lateness p99 / max ms | "
            "work p99 / max ms | overruns | skipped | setpoints published / applied / superseded / missed | "
            "probe recv err p99 / max ms | missing cmds | goals met |")
    lines += [head, "|" + "---|" * 12]
    for name, part in doc["parts"].items():
        i, s, pr = part["interpolator"], part["setpoints"], part["probe"]
        ok = part["goals_met"]
        lines.append(
            f"| {name} | {part['duration_s']:g} | {_fmt(i.get('period_error_p50_ms'))} / "
            f"{_fmt(i.get('period_error_p99_ms'))} / {_fmt(i.get('period_error_max_ms'))} | "
            f"{_fmt(i.get('period_error_over_1ms'))} / {_fmt(i.get('period_error_over_5ms'))} | "
            f"{_fmt(i.get('wake_lateness_p99_ms'))} / {_fmt(i.get('wake_lateness_max_ms'))} | "
            f"{_fmt(i.get('work_p99_ms'))} / {_fmt(i.get('work_max_ms'))} | {_fmt(i.get('overruns'))} | "
            f"{_fmt(i.get('skipped_ticks'))} | "
            f"{_fmt(s['published'])} / {_fmt(s['applied'])} / {_fmt(s['superseded'])} / {_fmt(s['missed'])} | "
            f"{_fmt(pr.get('recv_period_error_p99_ms'))} / {_fmt(pr.get('recv_period_error_max_ms'))} | "
            f"{_fmt(pr.get('stamp_missing_ticks'))} | {', '.join(k for k, v in ok.items() if v) or 'none'} |")
    lines += ["", "Load during each part (CPU time / wall time, 1.0 = one core busy; per-core busy fraction from "
              "/proc/stat; the policy's decision latency from its diagnostics):", ""]
    for name, part in doc["parts"].items():
        pol = part["policy"]
        lines.append(f"- {name}: processes {part['cpu_fraction_of_one_core']}; cores busy {part['core_busy_fraction']}"
                     f", steal {part['core_steal_fraction']}; {part['cpu_pressure_at_end'] or 'no PSI'}; "
                     f"load average at end {part['load_average_at_end']}; pinned {part['pinning'] or 'none'}; "
                     f"policy decisions {pol.get('decisions')}, compute p50 / p99 {pol.get('latency_compute_p50_ms')} "
                     f"/ {pol.get('latency_compute_p99_ms')} ms; interpolator realtime: "
                     f"{part['interpolator'].get('realtime', '-')}")
    if doc.get("notes"):
        lines += ["", *doc["notes"]]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of the interpolator part (default 600)")
    ap.add_argument("--graph-duration", type=float, default=None,
                    help="seconds of the multi-process graph part (default: --duration; 0 = skip)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after start-up before measuring")
    ap.add_argument("--no-load", action="store_true", help="interpolator part without the policy load")
    ap.add_argument("--realtime-priority", type=int, default=20,
                    help="the interpolator's realtime_priority in the interpolator part (config default 20; 0 = off)")
    ap.add_argument("--compare-off", action="store_true",
                    help="also run the interpolator part with realtime_priority 0, for a ratio inside one run")
    ap.add_argument("--image-size", default="640x360", help="feeder camera frames WxH (default 640x360)")
    ap.add_argument("--domain-id", type=int, default=9, help="ROS_DOMAIN_ID (default 9, which no test module uses)")
    ap.add_argument("--label", default="", help="a note for the results title (e.g. 'short run, 60 s')")
    ap.add_argument("--out", default=str(RESULTS / "interpolator_jitter"), help="results path without suffix")
    ap.add_argument("--logs", default=None, help="directory for each process's output (default: not kept)")
    ap.add_argument("--role", choices=("bench", "feeder"), default="bench", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        w, h = (int(v) for v in args.image_size.lower().split("x"))
    except ValueError:
        ap.error(f"--image-size must be WIDTHxHEIGHT, got {args.image_size!r}")
    args.image_size = (w, h)
    if args.role == "feeder":
        return feeder(args)
    if args.logs:
        global LOG_DIR
        LOG_DIR = Path(args.logs)
        LOG_DIR.mkdir(parents=True, exist_ok=True)
    if args.duration <= 0:
        ap.error("--duration must be > 0")
    args.graph_duration = args.duration if args.graph_duration is None else args.graph_duration
    # The graphs' Fast DDS profile for every process of the run, this probe included (camera frames fit it).
    from irvs_ros.nodes.graph_description import dds_profile_env

    os.environ.update(dds_profile_env(os.environ))
    env = dict(os.environ, PYTHONUNBUFFERED="1", ROS_DOMAIN_ID=str(args.domain_id))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    doc: dict[str, Any] = {"command": shlex.join(["python", "bench/interpolator_jitter.py", *(argv or sys.argv[1:])]),
                           "label": args.label, "machine": _machine(), "versions": _versions(), "goals": GOALS,
                           "parts": {}}
    with tempfile.TemporaryDirectory(prefix="jitter_") as tmp:
        model = export_load_policy(Path(tmp) / "ibc_realworld_untrained.onnx")
        probe = Probe(args.domain_id)
        try:
            doc["parts"]["interpolator"] = run_interpolator_part(args, env, model, probe, args.realtime_priority)
            if args.compare_off:
                doc["parts"]["interpolator, realtime off"] = run_interpolator_part(args, env, model, probe, 0)
            if args.graph_duration > 0:
                doc["parts"]["graph"] = run_graph_part(args, env, model, probe)
        finally:
            probe.close()
    for part in doc["parts"].values():
        part["goals_met"] = _verdict(part)
    doc["notes"] = [
        "Notes: `interpolator` runs the interpolator with the config's real-time settings (its loop thread "
        "SCHED_FIFO, the rest of its process SCHED_FIFO 1, when permitted; asynchronous Fast DDS publishing; start-up "
        "objects frozen out of the GC; 0.2 ms GIL switch interval). "
        + ("`interpolator, realtime off` is the same with realtime_priority:=0 (the other settings kept), for the "
           "ratio inside this run. " if "interpolator, realtime off" in doc["parts"] else "")
        + "`missed` = setpoints the source published that no tick applied (superseded by a newer one, or lost). "
        "In `graph` the policy decides at 5 Hz of sim time when its decisions take < 0.2 s; slower decisions mean "
        "fewer setpoints (see its compute latency), each of which must still be applied.",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    write_markdown(out.with_suffix(".md"), doc)
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
