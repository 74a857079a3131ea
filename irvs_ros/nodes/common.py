"""Shared pieces of the irvs_ros nodes: parameters with YAML defaults, loop clocks, QoS, diagnostics, main().

Parameters: every node declares the parameters of its `config/<node>.yaml` (ROS params-file layout,
`<node>: ros__parameters: {...}`, nested keys flattened with dots) with the file's values as defaults, so
`--ros-args -p name:=value`, `--params-file` and `parameter_overrides` change them as on any ROS 2 node.
Each parameter also has a check; a missing or invalid one raises `NodeConfigError` naming the parameter, what
was expected and what came.

Clocks: the nodes' own control loops (interpolator 100 Hz, sim) pace on a `LoopClock`: `WallClock`
(monotonic, for the robot) or `RosTimeClock` (the ROS clock, i.e. `/clock` under `use_sim_time`), picked by
`loop_clock(node)`. Times are float seconds.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

from irvs_ros.control.envelope import Envelope, EnvelopeConfig

PACKAGE = "irvs_ros"
REPO_CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"

# Camera images: best effort, keep only the newest (realsense-ros publishes with the sensor-data profile).
SENSOR_QOS: QoSProfile = qos_profile_sensor_data
# Commands and state streams: reliable, shallow (only the newest matters, but none may be silently dropped
# between two live nodes).
COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
# /clock: as rclpy's TimeSource subscribes to it.
CLOCK_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)

DIAG_OK, DIAG_WARN, DIAG_ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


class NodeConfigError(ValueError):
    """A node parameter is missing or invalid, or the node's configuration file is unusable."""


# --------------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Param:
    """One node parameter: type (bool, int, float, str, or list[float] as `list`), a check, a description.

    check(value) returns an error text (what was expected) or None when the value is fine.
    """

    kind: type
    description: str
    check: Callable[[Any], str | None] | None = None


def positive(v: float) -> str | None:
    return None if math.isfinite(v) and v > 0 else "a finite number > 0"


def non_negative(v: float) -> str | None:
    return None if math.isfinite(v) and v >= 0 else "a finite number >= 0"


def finite(v: float) -> str | None:
    return None if math.isfinite(v) else "a finite number"


def pair(v: list) -> str | None:
    return None if len(v) == 2 and all(math.isfinite(x) for x in v) else "two finite numbers [x, y]"


def one_of(*choices: str) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        return None if v in choices else f"one of {list(choices)}"
    return check


# Envelope fields a setpoint source (policy, teleop) enforces; the interpolator adds its speed and joint limits.
SETPOINT_ENVELOPE_KEYS = ("x_min", "x_max", "y_min", "y_max", "min_reach", "max_reach", "z", "max_setpoint_step")


def envelope_params(keys: tuple[str, ...]) -> dict[str, Param]:
    """Parameter specs `envelope.<key>` for the control.EnvelopeConfig fields `keys`."""
    return {f"envelope.{k}": Param(float, f"control.EnvelopeConfig.{k}", finite) for k in keys}


def envelope_from_params(params: dict[str, Any], keys: tuple[str, ...]) -> Envelope:
    """The safety envelope from declared `envelope.<key>` parameters (EnvelopeError on an invalid box)."""
    return Envelope(EnvelopeConfig(**{k: params[f"envelope.{k}"] for k in keys}))


def config_path(node_name: str, config_dir: str | os.PathLike | None = None) -> Path:
    """`<node_name>.yaml` in `config_dir`, else the repository's config/, else the installed share/irvs_ros/config."""
    name = f"{node_name}.yaml"
    candidates = [Path(config_dir) / name] if config_dir else []
    candidates.append(REPO_CONFIG_DIR / name)
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / "config" / name)
    except Exception:  # no ament index (plain pip install): the repository copy is the only one
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise NodeConfigError(f"no parameter file {name} for {node_name}: looked in {[str(c) for c in candidates]}")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def yaml_defaults(node_name: str, config_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The flattened ros__parameters of config/<node_name>.yaml (first top-level entry, or `node_name`)."""
    import yaml

    path = config_path(node_name, config_dir)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise NodeConfigError(f"{path} is not valid YAML: {e}") from e
    section = doc.get(node_name) or doc.get("/**") or (next(iter(doc.values())) if len(doc) == 1 else None)
    if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
        raise NodeConfigError(f"{path} must hold `{node_name}: ros__parameters: {{...}}`")
    return _flatten(section["ros__parameters"])


def _coerce(name: str, spec: Param, value: Any) -> Any:
    kind = spec.kind
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is list and isinstance(value, (list, tuple, np.ndarray)):
        vals = list(value)
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
            return [float(x) for x in vals]
    if kind in (bool, int, str) and type(value) is kind:
        return value
    raise NodeConfigError(f"parameter {name!r} must be a {kind.__name__ if kind is not list else 'list of numbers'}"
                          f" ({spec.description}), got {value!r} ({type(value).__name__})")


def declare_parameters(node: Node, node_name: str, specs: dict[str, Param],
                       config_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Declare `specs` on `node` with defaults from config/<node_name>.yaml; return the checked values by name.

    Raises NodeConfigError listing every missing (no default and no override), mistyped or out-of-range one.
    """
    defaults = yaml_defaults(node_name, config_dir)
    unknown = sorted(set(defaults) - set(specs) - {"use_sim_time"})
    problems = [f"unknown parameter(s) {unknown} in {config_path(node_name, config_dir)}"] if unknown else []
    values: dict[str, Any] = {}
    for name, spec in specs.items():
        desc = ParameterDescriptor(description=spec.description, dynamic_typing=True)
        if name in defaults:
            node.declare_parameter(name, defaults[name], desc)
        else:
            node.declare_parameter(name, None, desc)
        value = node.get_parameter(name).value
        if value is None:
            problems.append(f"parameter {name!r} is missing ({spec.description})")
            continue
        try:
            value = _coerce(name, spec, value)
        except NodeConfigError as e:
            problems.append(str(e))
            continue
        why = spec.check(value) if spec.check else None
        if why:
            problems.append(f"parameter {name!r} must be {why} ({spec.description}), got {value!r}")
            continue
        values[name] = value
    if problems:
        raise NodeConfigError(f"{node_name}: " + "; ".join(problems))
    return values


def use_sim_time(node: Node) -> bool:
    return bool(node.get_parameter("use_sim_time").value)


# --------------------------------------------------------------------------------------------- time


def to_sec(stamp: TimeMsg) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def stamp_of(t: float) -> TimeMsg:
    """A builtin_interfaces/Time for t seconds (t >= 0)."""
    ns = max(0, int(round(t * 1e9)))
    return TimeMsg(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def node_now(node: Node) -> float:
    """The node clock (ROS time; sim time under use_sim_time) in seconds."""
    return node.get_clock().now().nanoseconds * 1e-9


class LoopClock:
    """Pacing clock of a control loop: `now()` seconds, `sleep_until(t)` absolute deadlines, `stop()` to wake."""

    def __init__(self) -> None:
        self._stopped = threading.Event()

    def now(self) -> float:
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the clock runs (a sim clock is not ready before the first /clock message)."""
        return True

    def sleep_until(self, t: float) -> bool:
        """Block until now() >= t; False when stopped first."""
        raise NotImplementedError

    def stamp(self, t: float) -> TimeMsg:
        """Header stamp (ROS time) for the loop time t."""
        raise NotImplementedError

    def stop(self) -> None:
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def close(self) -> None:
        self.stop()


class WallClock(LoopClock):
    """Monotonic wall time for pacing; stamps in the node's ROS (system) time."""

    def __init__(self, node: Node | None = None) -> None:
        super().__init__()
        self._node = node

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, t: float) -> bool:
        while not self._stopped.is_set():
            remaining = t - time.monotonic()
            if remaining <= 0:
                return True
            self._stopped.wait(remaining)
        return False

    def stamp(self, t: float) -> TimeMsg:
        ros_now = node_now(self._node) if self._node is not None else time.time()
        return stamp_of(ros_now - (time.monotonic() - t))


class RosTimeClock(LoopClock):
    """The node's ROS clock (driven by /clock under use_sim_time); sleepers wake on every clock update."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self._clock = node.get_clock()
        self._cv = threading.Condition()
        threshold = JumpThreshold(min_forward=Duration(nanoseconds=1), min_backward=None, on_clock_change=True)
        self._jump = self._clock.create_jump_callback(threshold, post_callback=self._on_jump)

    def _on_jump(self, _jump: object) -> None:
        with self._cv:
            self._cv.notify_all()

    def now(self) -> float:
        return self._clock.now().nanoseconds * 1e-9

    def ready(self) -> bool:
        return self._clock.now().nanoseconds > 0

    def sleep_until(self, t: float) -> bool:
        with self._cv:
            while not self._stopped.is_set() and self.now() < t:
                # The timeout only bounds how long a stop() or a lost notification can go unnoticed.
                self._cv.wait(0.1)
        return not self._stopped.is_set()

    def stamp(self, t: float) -> TimeMsg:
        return stamp_of(t)

    def stop(self) -> None:
        super().stop()
        with self._cv:
            self._cv.notify_all()

    def close(self) -> None:
        self.stop()
        if self._jump is not None:
            self._jump.unregister()
            self._jump = None


def loop_clock(node: Node) -> LoopClock:
    """RosTimeClock under use_sim_time, else WallClock."""
    return RosTimeClock(node) if use_sim_time(node) else WallClock(node)


# --------------------------------------------------------------------------------------------- diagnostics


def diagnostic_array(stamp: TimeMsg, statuses: Iterable[DiagnosticStatus]) -> DiagnosticArray:
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = list(statuses)
    return msg


def diagnostic_status(name: str, level: bytes, message: str, values: dict[str, Any],
                      hardware_id: str = "") -> DiagnosticStatus:
    """One DiagnosticStatus; values are written with str() (floats with 6 significant digits)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.6g}"
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)

    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=fmt(v)) for k, v in values.items()])


def diagnostic_values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def percentile_ms(samples: Iterable[float], q: float) -> float:
    """q-th percentile of durations given in seconds, in ms (nan when empty)."""
    a = np.asarray(list(samples), dtype=np.float64)
    return float(np.percentile(a, q) * 1e3) if a.size else float("nan")


# --------------------------------------------------------------------------------------------- main()


def run_node(factory: Callable[[], Node], args: list[str] | None = None,
             threads: int | Callable[[Node], int] = 2) -> int:
    """Console-script body: init rclpy, build the node, spin an executor until Ctrl-C: multi-threaded with
    `threads` > 1 (`graph.PoolExecutor`, not rclpy's MultiThreadedExecutor: see there), else single-threaded.

    `threads` may be a function of the built node. A NodeConfigError (bad parameter) prints one clear line and
    exits with status 2.
    """
    from rclpy.executors import ExternalShutdownException

    from irvs_ros.nodes.graph import make_executor

    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        try:
            node = factory()
        except NodeConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        executor = make_executor(threads=threads(node) if callable(threads) else threads)
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except Exception:
            # Ctrl-C shuts the context down under a callback being taken (seen: a subscription's take_message
            # raising RuntimeError in the single-threaded executor): a normal stop, not a failure.
            if rclpy.ok():
                raise
        return 0
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if callable(close):
                close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
