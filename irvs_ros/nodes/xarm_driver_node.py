"""xarm_driver_node: the UFACTORY xArm6 on the ROS graph through xarm-python-sdk (`control.XArmAdapter`).

Start: connect to `robot_ip` (unreachable -> NodeConfigError, the console script exits 2), clean warnings and
errors once, set the controller's reduced-mode TCP boundary to the workspace box (`tcp_boundary.*`), motion
enable, servo mode 1, state 0.

Run: subscribes `/irvs/joint_command` (sensor_msgs/JointState positions, xArm joint names, rad); a streaming
thread sends the newest command, once, with `set_servo_angle_j` at up to `stream_rate`. The SDK call can block
(~190 ms observed), so a watchdog thread times every call: longer than `watchdog_timeout` counts as a stall
(reported), longer than `stall_limit` is a fault. A state thread publishes `/joint_states` at
`joint_state_rate` and watches the controller's error code.

Faults (controller error, SDK call failed or blocked past `stall_limit`) and the emergency stop: stop the arm
(set_state(4)), stop streaming, report on `/diagnostics` (ERROR with the error code) at once and every
`diagnostics_period`. Nothing is cleared automatically: only the operator's `~/clear_error` call cleans the
error and re-enables servo mode (once per call). Services (std_srvs/Trigger): `~/emergency_stop`, `~/clear_error`.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from irvs_ros.control.xarm_adapter import TcpBox, XArmAdapter, XArmError
from irvs_ros.control.xarm_model import JOINT_NAMES
from irvs_ros.nodes.common import (
    COMMAND_QOS,
    DIAG_ERROR,
    DIAG_OK,
    DIAG_WARN,
    NodeConfigError,
    Param,
    declare_parameters,
    diagnostic_array,
    diagnostic_status,
    finite,
    positive,
    run_node,
)

NODE_NAME = "xarm_driver_node"
BOX_KEYS = ("x_min", "x_max", "y_min", "y_max", "z_min", "z_max")

PARAMS: dict[str, Param] = {
    "robot_ip": Param(str, "IP address of the xArm controller"),
    "connect_timeout": Param(float, "seconds to wait for the controller at start", positive),
    "joint_command_topic": Param(str, "joint position commands in (JointState, rad)"),
    "joint_states_topic": Param(str, "measured joint states out (JointState, rad)"),
    "stream_rate": Param(float, "highest rate (Hz) of set_servo_angle_j calls", positive),
    "joint_state_rate": Param(float, "rate (Hz) of /joint_states", positive),
    "max_joint_step": Param(float, "largest joint change (rad) from the last sent command; larger is rejected",
                            positive),
    "watchdog_timeout": Param(float, "an SDK call longer than this (s) counts as a stall", positive),
    "stall_limit": Param(float, "an SDK call blocked longer than this (s) is a fault: stop", positive),
    "set_tcp_boundary": Param(bool, "set the controller's reduced-mode TCP boundary to tcp_boundary.*"),
    "diagnostics_period": Param(float, "seconds between /diagnostics messages", positive),
    **{f"tcp_boundary.{k}": Param(float, f"controller TCP boundary {k} (m, base frame)", finite) for k in BOX_KEYS},
}


class XArmDriverNode(Node):
    """The xArm6 driver (see module docstring). `adapter` replaces the connection to `robot_ip` (an arm reached
    another way, or a stand-in for the absent device in tests); `close()` stops the threads, not the arm."""

    def __init__(self, adapter: XArmAdapter | None = None, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            self.params = p = declare_parameters(self, NODE_NAME, PARAMS)
            if p["stall_limit"] < p["watchdog_timeout"]:
                raise NodeConfigError(f"stall_limit ({p['stall_limit']}) must be >= watchdog_timeout "
                                      f"({p['watchdog_timeout']})")
            box = TcpBox(**{k: p[f"tcp_boundary.{k}"] for k in BOX_KEYS})
        except ValueError as e:  # NodeConfigError is one
            self.destroy_node()
            raise NodeConfigError(str(e) if str(e).startswith(NODE_NAME) else f"{NODE_NAME}: {e}") from e
        self._owns_arm = adapter is None  # a connection made here is closed by close()
        try:
            self.arm = adapter or XArmAdapter.connect(p["robot_ip"], p["connect_timeout"])
        except XArmError as e:
            self.destroy_node()
            raise NodeConfigError(f"{NODE_NAME}: xArm at {p['robot_ip']!r} is unreachable: {e}") from e
        try:
            self.arm.clean_warnings_and_errors()
            if p["set_tcp_boundary"]:
                self.arm.set_tcp_boundary(box)
            self.arm.enable_servo_mode()
        except XArmError as e:
            if self._owns_arm:
                self.arm.disconnect()
            self.destroy_node()
            raise NodeConfigError(f"{NODE_NAME}: xArm at {p['robot_ip']!r} could not be made ready: {e}") from e
        self._lock = threading.Lock()
        self._command: np.ndarray | None = None
        self._last_sent: np.ndarray | None = None
        self._new_command = threading.Event()
        self._stop = threading.Event()
        self._call_started: float | None = None  # monotonic start of the SDK streaming call in progress
        self._stall_counted = False
        self.fault = ""            # latched: why the arm was stopped ("" = running)
        self.fault_code = 0        # controller error code of the fault (0 when not a controller error)
        self.estopped = False
        self.commands_sent = 0
        self.rejected = 0
        self.stalls = 0
        self.max_call_s = 0.0
        self.measured: np.ndarray | None = None

        self.create_subscription(JointState, p["joint_command_topic"], self._on_command, COMMAND_QOS,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self._js_pub = self.create_publisher(JointState, p["joint_states_topic"], COMMAND_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        services = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "~/emergency_stop", self._on_estop, callback_group=services)
        self.create_service(Trigger, "~/clear_error", self._on_clear, callback_group=services)
        self.create_timer(p["diagnostics_period"], self.publish_diagnostics)
        self._threads = [threading.Thread(target=self._guard(f), name=n, daemon=True)
                         for f, n in ((self._stream_loop, "xarm-stream"), (self._state_loop, "xarm-state"),
                                      (self._watchdog_loop, "xarm-watchdog"))]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ commands in
    def _on_command(self, msg: JointState) -> None:
        by_name = dict(zip(msg.name, msg.position, strict=False))
        q = np.array([by_name.get(n, np.nan) for n in JOINT_NAMES], dtype=np.float64)
        if not np.all(np.isfinite(q)):
            self.rejected += 1
            self.get_logger().warn(f"joint command without finite positions for {list(JOINT_NAMES)} rejected",
                                   throttle_duration_sec=1.0)
            return
        with self._lock:
            self._command = q
        self._new_command.set()

    # ------------------------------------------------------------------ threads
    def _guard(self, loop):
        def run() -> None:
            try:
                loop()
            except Exception as e:  # a dead thread must stop the arm, not leave it streaming half-way
                self._set_fault(f"{loop.__name__} stopped: {type(e).__name__}: {e}", 0)
        return run

    def _stream_loop(self) -> None:
        period = 1.0 / self.params["stream_rate"]
        max_step = self.params["max_joint_step"]
        while not self._stop.is_set():
            if not self._new_command.wait(0.1):
                continue
            self._new_command.clear()
            with self._lock:
                q = self._command
                if self.fault or self.estopped or q is None:
                    continue
                ref = self._last_sent if self._last_sent is not None else self.measured
            if ref is not None and np.max(np.abs(q - ref)) > max_step:
                self.rejected += 1
                self.get_logger().warn(f"joint command {np.round(q, 3).tolist()} is more than {max_step} rad from "
                                       f"{np.round(ref, 3).tolist()}: rejected", throttle_duration_sec=1.0)
                continue
            t0 = time.monotonic()
            with self._lock:
                self._call_started, self._stall_counted = t0, False
            try:
                self.arm.servo_j(q)
            except XArmError as e:
                self._set_fault(str(e), self._controller_code(e.code))
                continue
            finally:
                with self._lock:
                    self._call_started = None
            dt = time.monotonic() - t0
            self.max_call_s = max(self.max_call_s, dt)
            with self._lock:
                self._last_sent = q
            self.commands_sent += 1
            self._stop.wait(max(0.0, t0 + period - time.monotonic()))

    def _controller_code(self, fallback: int | None) -> int:
        try:
            return self.arm.error_code or int(fallback or 0)
        except Exception:
            return int(fallback or 0)

    def _state_loop(self) -> None:
        period = 1.0 / self.params["joint_state_rate"]
        next_t = time.monotonic()
        while not self._stop.is_set():
            code = self.arm.error_code
            if code and not self.fault:
                self._set_fault(f"controller error {code}", code)
            try:
                q = self.arm.joint_positions()
            except XArmError as e:
                self.get_logger().warn(f"joint state read failed: {e}", throttle_duration_sec=1.0)
            else:
                self.measured = q
                msg = JointState()
                msg.header.stamp = self.get_clock().now().to_msg()
                msg.name = list(JOINT_NAMES)
                msg.position = [float(v) for v in q]
                self._js_pub.publish(msg)
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -0.25:
                next_t = time.monotonic()  # far behind (a blocked read): do not burst to catch up
            self._stop.wait(max(0.0, delay))

    def _watchdog_loop(self) -> None:
        p = self.params
        tick = min(0.01, p["watchdog_timeout"] / 2)
        while not self._stop.wait(tick):
            with self._lock:
                started = self._call_started
                if started is None:
                    continue
                blocked = time.monotonic() - started
                new_stall = blocked > p["watchdog_timeout"] and not self._stall_counted
                if new_stall:
                    self._stall_counted = True
            if new_stall:
                self.stalls += 1
                self.get_logger().warn(f"set_servo_angle_j blocked for more than {p['watchdog_timeout']} s",
                                       throttle_duration_sec=1.0)
            if blocked > p["stall_limit"] and not self.fault:
                self._set_fault(f"set_servo_angle_j blocked for more than {p['stall_limit']} s", 0)

    # ------------------------------------------------------------------ faults and services
    def _set_fault(self, why: str, code: int) -> None:
        """Latch the fault, stop the arm once, report at once. Never clears anything."""
        with self._lock:
            if self.fault:
                return
            self.fault, self.fault_code = why, int(code)
        self.get_logger().error(f"xArm fault, arm stopped: {why} (error code {code})")
        self._stop_arm()
        self.publish_diagnostics()

    def _stop_arm(self) -> None:
        try:
            self.arm.stop()
        except Exception as e:  # keep the fault visible even when the stop call itself fails
            self.get_logger().error(f"xArm stop failed: {e}")

    def _on_estop(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        with self._lock:
            self.estopped = True
        self._stop_arm()
        self.get_logger().error("emergency stop: arm stopped; ~/clear_error to resume")
        self.publish_diagnostics()
        resp.success, resp.message = True, "arm stopped (set_state 4); call ~/clear_error to resume"
        return resp

    def _on_clear(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        """The operator's explicit reset: clean warnings/errors once and re-enter servo mode."""
        try:
            self.arm.clean_warnings_and_errors()
            self.arm.enable_servo_mode()
            code = self.arm.error_code
            if code:
                raise XArmError(f"controller error {code} remains after clean_error", code)
        except XArmError as e:
            resp.success, resp.message = False, str(e)
            return resp
        with self._lock:
            self.fault, self.fault_code, self.estopped = "", 0, False
            self._last_sent = None  # resume from the measured position
            self._command = None
        resp.success, resp.message = True, "error cleared; servo mode 1, state 0"
        return resp

    def publish_diagnostics(self) -> None:
        if self.fault:
            level, message = DIAG_ERROR, f"stopped: {self.fault}"
        elif self.estopped:
            level, message = DIAG_ERROR, "emergency stop"
        elif self.stalls:
            level, message = DIAG_WARN, f"{self.stalls} SDK call(s) blocked > {self.params['watchdog_timeout']} s"
        else:
            level, message = DIAG_OK, "streaming"
        values = {"robot_ip": self.params["robot_ip"], "error_code": self.fault_code, "warn_code": self._warn_code(),
                  "estopped": self.estopped, "commands_sent": self.commands_sent, "rejected": self.rejected,
                  "stalls": self.stalls, "max_call_ms": self.max_call_s * 1e3}
        status = diagnostic_status(f"{self.get_name()}: xarm", level, message, values, self.params["robot_ip"])
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [status]))

    def _warn_code(self) -> int:
        try:
            return self.arm.warn_code
        except Exception:
            return -1

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop the node's threads and close the connection it made (the arm holds its last target; idempotent)."""
        self._stop.set()
        self._new_command.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=2.0)
        if self._owns_arm and self.arm.connected:
            self.arm.disconnect()


def main(args: list[str] | None = None) -> int:
    return run_node(XArmDriverNode, args, threads=3)


if __name__ == "__main__":
    raise SystemExit(main())
