"""interpolator_node: 5 Hz absolute TCP setpoints -> 100 Hz xArm6 joint commands, inside the safety envelope.

Subscribes `/irvs/setpoint` (geometry_msgs/PoseStamped, TCP xy in the base frame; z and orientation are fixed
by the envelope) and `/joint_states`; publishes `/irvs/joint_command` (sensor_msgs/JointState positions, xArm
joint names, rad) and `/irvs/ee_pose` (geometry_msgs/PoseStamped, FK of the command) at the tick rate, and
`/diagnostics` (loop health: ticks, overruns, lateness, rejected / clamped setpoints, timeout state).

The loop runs in its own thread with absolute deadlines (next += dt) on a `LoopClock`: wall time on the robot,
the ROS clock (/clock) under use_sim_time. ROS callbacks only swap in the newest setpoint; the loop feeds it
to `control.Interpolator` (envelope, interpolation, timeout -> decelerate and hold) and solves IK with
`control.XArmIK`. Services: `~/hold` (stop where the command is until the next setpoint), `~/resync`
(restart from the measured /joint_states, e.g. after the sim or the arm was reset) and `~/reset_statistics`
(restart the loop timing and the overrun / skip / setpoint counters, e.g. at the start of a measurement).

Loop health on /diagnostics: per diagnostics period the overruns and the lateness p99 / max; since the start (or
the last `~/reset_statistics`) the tick period error, lateness and work time p50 / p99 / max (`nodes.loop_timing`),
and the setpoints received, applied by a tick, superseded by a newer one before any tick took them (missed),
rejected and clamped.
"""

from __future__ import annotations

import collections
import functools
import os
import sys
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from irvs_ros.control.envelope import EnvelopeError
from irvs_ros.control.ik import XArmIK
from irvs_ros.control.interpolation import Interpolator
from irvs_ros.control.xarm_model import JOINT_NAMES
from irvs_ros.nodes.common import (
    COMMAND_QOS,
    DIAG_ERROR,
    DIAG_OK,
    DIAG_WARN,
    LoopClock,
    NodeConfigError,
    Param,
    WallClock,
    declare_parameters,
    diagnostic_array,
    diagnostic_status,
    envelope_from_params,
    envelope_params,
    loop_clock,
    non_negative,
    pair,
    percentile_ms,
    positive,
    run_node,
)
from irvs_ros.nodes.loop_timing import LoopTiming
from irvs_ros.nodes.realtime import RealtimeError, freeze_gc, set_fifo, set_process_fifo

NODE_NAME = "interpolator_node"
ENVELOPE_KEYS = ("x_min", "x_max", "y_min", "y_max", "min_reach", "max_reach", "z", "max_setpoint_step", "max_speed",
                 "max_tick_step", "max_decel", "setpoint_timeout", "tick_rate", "policy_rate")

PARAMS: dict[str, Param] = {
    "frame_id": Param(str, "base frame of setpoints and of the published effector pose"),
    "setpoint_topic": Param(str, "absolute TCP setpoints in (PoseStamped)"),
    "joint_command_topic": Param(str, "joint position commands out (JointState)"),
    "ee_pose_topic": Param(str, "FK of the commanded joints out (PoseStamped)"),
    "joint_states_topic": Param(str, "measured joint states in (JointState)"),
    "start_from_joint_states": Param(bool, "start holding at the TCP position of the first /joint_states"),
    "joint_state_wait": Param(float, "wall seconds to wait for /joint_states at start", non_negative),
    "start_xy": Param(list, "TCP xy (m) to hold at start when no joint state is used", pair),
    "max_lag_ticks": Param(int, "ticks of lag after which the loop skips ahead",
                           lambda v: None if v >= 1 else "an integer >= 1"),
    "diagnostics_period": Param(float, "seconds between /diagnostics messages", positive),
    "ik_iterations": Param(int, "IK iterations per solve", lambda v: None if v >= 1 else "an integer >= 1"),
    "realtime_priority": Param(int, "SCHED_FIFO priority of the loop thread on the wall clock (0 = off)",
                               lambda v: None if 0 <= v <= 99 else "an integer in [0, 99]"),
    **envelope_params(ENVELOPE_KEYS),
}


def setpoint_xy(msg: PoseStamped) -> np.ndarray:
    """TCP xy (2,) of a setpoint message (NaN/inf are passed on: the envelope rejects them)."""
    return np.array([msg.pose.position.x, msg.pose.position.y], dtype=np.float64)


class InterpolatorNode(Node):
    """The 100 Hz interpolator (see module docstring). `close()` stops the loop thread and frees the IK client."""

    def __init__(self, own_process: bool = False, **node_kwargs) -> None:
        """own_process: the node is its process's only one (the console script): with a realtime_priority on the
        wall clock its other threads then run at SCHED_FIFO 1, and start-up objects are frozen out of the GC."""
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            self.params = p = declare_parameters(self, NODE_NAME, PARAMS)
            self.envelope = envelope_from_params(p, ENVELOPE_KEYS)
        except EnvelopeError as e:
            self.destroy_node()
            raise NodeConfigError(f"{NODE_NAME}: envelope parameters: {e}") from e
        except NodeConfigError:
            self.destroy_node()
            raise
        self.dt = self.envelope.config.tick_period
        self.frame_id = p["frame_id"]
        self.clock: LoopClock = loop_clock(self)
        self.realtime = "off"
        self._own_process = own_process
        if isinstance(self.clock, WallClock) and p["realtime_priority"] and own_process:
            # Every thread of the process (the middleware's, and this main thread, which spins the executor and
            # starts its workers: they inherit it) at SCHED_FIFO 1: message delivery and a callback holding the GIL
            # are not preempted by ordinary processes (nodes.realtime); the loop thread raises itself above them.
            try:
                self.realtime = "process " + set_process_fifo(1)
            except RealtimeError as e:
                self.get_logger().warn(f"running without real-time scheduling: {e}")
        self._lock = threading.Lock()
        self._pending: np.ndarray | None = None
        self._hold_requested = False
        self._reset_stats_requested = False
        self._resync_xy: np.ndarray | None = None
        self._joint_state: np.ndarray | None = None
        # Counters, written by the loop thread and read by the diagnostics timer (ints: atomic under the GIL).
        self.ticks = 0
        self.overruns = 0
        self.skipped_ticks = 0
        self.setpoints_received = 0
        self.setpoints_applied = 0      # taken by a tick
        self.setpoints_superseded = 0   # replaced by a newer one before any tick took it (never applied)
        self.setpoints_rejected = 0
        self.setpoints_clamped = 0
        self.foreign_frame = 0
        self.timed_out = False
        self.running = False
        self.error = ""
        self._lateness: collections.deque[float] = collections.deque(maxlen=1000)
        self.timing = LoopTiming(self.dt)  # since the loop started: lateness, period error, work per tick
        self._diag_marks = (0, 0, 0)
        self.command_xy = np.full(2, np.nan)
        self.ik_error = 0.0

        self._ik = XArmIK(z=self.envelope.config.z, iterations=p["ik_iterations"])
        services = ReentrantCallbackGroup()
        inputs = MutuallyExclusiveCallbackGroup()
        self.create_subscription(PoseStamped, p["setpoint_topic"], self._on_setpoint, COMMAND_QOS,
                                 callback_group=inputs)
        self.create_subscription(JointState, p["joint_states_topic"], self._on_joint_state, COMMAND_QOS,
                                 callback_group=inputs)
        self._cmd_pub = self.create_publisher(JointState, p["joint_command_topic"], COMMAND_QOS)
        self._pose_pub = self.create_publisher(PoseStamped, p["ee_pose_topic"], COMMAND_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "~/hold", self._on_hold, callback_group=services)
        self.create_service(Trigger, "~/resync", self._on_resync, callback_group=services)
        self.create_service(Trigger, "~/reset_statistics", self._on_reset_statistics, callback_group=services)
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics, callback_group=services)
        self._thread = threading.Thread(target=self._run, name="interpolator-loop", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ ROS callbacks: swap in, nothing else
    def _on_setpoint(self, msg: PoseStamped) -> None:
        if msg.header.frame_id not in ("", self.frame_id):
            self.foreign_frame += 1
            self.get_logger().warn(f"setpoint in frame {msg.header.frame_id!r} ignored (expected {self.frame_id!r})",
                                   throttle_duration_sec=1.0)
            return
        xy = setpoint_xy(msg)
        with self._lock:
            self.setpoints_superseded += self._pending is not None
            self._pending = xy
            self.setpoints_received += 1

    def _on_joint_state(self, msg: JointState) -> None:
        by_name = dict(zip(msg.name, msg.position, strict=False))
        if all(n in by_name for n in JOINT_NAMES):
            q = np.array([by_name[n] for n in JOINT_NAMES], dtype=np.float64)
            if np.all(np.isfinite(q)):
                with self._lock:
                    self._joint_state = q

    def _on_hold(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        with self._lock:
            self._hold_requested = True
            self._pending = None
        resp.success, resp.message = True, "holding at the current command until the next setpoint"
        return resp

    def _on_resync(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        with self._lock:
            q = self._joint_state
        if q is None:
            resp.success, resp.message = False, "no /joint_states received yet"
            return resp
        # FK in a private client (the loop's IK client belongs to the loop thread); the loop applies it next tick.
        with XArmIK(z=self.envelope.config.z) as fk:
            xy = fk.fk(q)[:2]
        with self._lock:
            self._resync_xy = xy
            self._pending = None
        resp.success, resp.message = True, f"holding at the measured TCP position {np.round(xy, 4).tolist()}"
        return resp

    def _on_reset_statistics(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        with self._lock:
            self._reset_stats_requested = True
            self.setpoints_received = self.setpoints_superseded = 0
        resp.success, resp.message = True, "loop timing, overrun, skip and setpoint counters restart at the next tick"
        return resp

    def _reset_statistics(self) -> None:
        """In the loop thread (the only writer of these counters): restart the statistics of a measurement."""
        self.timing = LoopTiming(self.dt)
        self.overruns = self.skipped_ticks = self.setpoints_applied = self.setpoints_rejected = 0
        self.setpoints_clamped = 0
        self._lateness.clear()
        self._diag_marks = (self.ticks, 0, 0)

    # ------------------------------------------------------------------ the loop
    def _measured_xy(self) -> np.ndarray | None:
        with self._lock:
            q = self._joint_state
        if q is None:
            return None
        self._ik.reset()
        return self._ik.fk(q)[:2]

    def _start_xy(self) -> np.ndarray:
        if self.params["start_from_joint_states"]:
            deadline = time.monotonic() + self.params["joint_state_wait"]
            while not self.clock.stopped and time.monotonic() < deadline:
                xy = self._measured_xy()
                if xy is not None:
                    return xy
                time.sleep(0.01)
            self.get_logger().warn(f"no {self.params['joint_states_topic']} within {self.params['joint_state_wait']} s;"
                                   f" starting at start_xy {self.params['start_xy']}")
        return np.asarray(self.params["start_xy"], dtype=np.float64)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # a dead control loop must be visible, not silent
            if not self.context.ok():
                return  # rclpy was shut down under the loop (Ctrl-C): a normal stop, not a failure
            self.error = f"{type(e).__name__}: {e}"
            self.get_logger().error(f"control loop stopped: {self.error}")
        finally:
            self.running = False

    def _realtime_loop(self) -> None:
        """In the loop thread: SCHED_FIFO at realtime_priority on the wall clock (if permitted) and, in the node's own
        process, the objects of start-up frozen out of the garbage collector's full collections (they would hold
        the GIL for milliseconds; in a shared process such as a test that is not this node's decision)."""
        priority = self.params["realtime_priority"]
        if isinstance(self.clock, WallClock) and priority:
            try:
                loop = "loop " + set_fifo(priority)
                self.realtime = loop if self.realtime == "off" else f"{loop}, {self.realtime}"
            except RealtimeError as e:
                self.get_logger().warn(f"control loop without real-time scheduling: {e}")
                self.realtime = f"off ({e})"
        if self._own_process:
            freeze_gc()

    def _loop(self) -> None:
        clock, dt = self.clock, self.dt
        self._realtime_loop()
        while not clock.stopped and not clock.ready():
            time.sleep(0.005)
        start = self._start_xy()
        if clock.stopped:
            return
        now = clock.now()
        interp = Interpolator(self.envelope, start, now)
        self.command_xy = interp.command
        self.running = True
        max_lag = self.params["max_lag_ticks"] * dt
        next_t = now
        while True:
            next_t += dt
            if not clock.sleep_until(next_t):
                return
            now = clock.now()
            lag = now - next_t
            if lag > max_lag:
                # Far behind (a stall, or a sim clock that jumped): skip the missed ticks instead of bursting them.
                self.skipped_ticks += int(lag / dt)
                next_t = now
                lag = 0.0
                self.timing.skip()
            self._lateness.append(lag)
            # Commands are computed and stamped for their deadline: a uniform time base whatever the wake-up jitter.
            t = next_t
            with self._lock:
                sp, self._pending = self._pending, None
                hold, self._hold_requested = self._hold_requested, False
                resync, self._resync_xy = self._resync_xy, None
                reset_stats, self._reset_stats_requested = self._reset_stats_requested, False
            if reset_stats:
                self._reset_statistics()
            if resync is not None:
                self._ik.reset()
                interp.reset(resync, t)
            if hold:
                interp.hold()
            if sp is not None:
                self.setpoints_applied += 1
                res = interp.set_setpoint(sp, t)
                if not res.accepted:
                    self.setpoints_rejected += 1
                    self.get_logger().warn(f"setpoint rejected: {res.reason}", throttle_duration_sec=1.0)
                elif res.step_clamped or res.workspace_clamped:
                    self.setpoints_clamped += 1
            cmd = interp.tick(t)
            q = self._ik.solve(cmd)
            pos, quat = self._ik.fk_pose(q)
            self.ik_error = self._ik.last_error
            self.timed_out = interp.timed_out
            self.command_xy = cmd
            self._publish(q, pos, quat, clock.stamp(t))
            self.ticks += 1
            done = clock.now()
            self.timing.tick(next_t, now, done)
            if done > next_t + dt:
                self.overruns += 1  # this tick's work ran past the next deadline

    def _publish(self, q: np.ndarray, pos: np.ndarray, quat: np.ndarray, stamp) -> None:
        js = JointState()
        js.header.stamp = stamp
        js.header.frame_id = self.frame_id
        js.name = list(JOINT_NAMES)
        js.position = [float(v) for v in q]
        self._cmd_pub.publish(js)
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.header.frame_id = self.frame_id
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in pos)
        (pose.pose.orientation.x, pose.pose.orientation.y, pose.pose.orientation.z,
         pose.pose.orientation.w) = (float(v) for v in quat)
        self._pose_pub.publish(pose)

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        ticks, overruns, rejected = self.ticks, self.overruns, self.setpoints_rejected
        d_ticks, d_over, d_rej = (ticks - self._diag_marks[0], overruns - self._diag_marks[1],
                                  rejected - self._diag_marks[2])
        self._diag_marks = (ticks, overruns, rejected)
        late = list(self._lateness)[-max(d_ticks, 1):]
        if self.error:
            level, message = DIAG_ERROR, f"control loop stopped: {self.error}"
        elif not self.running:
            level, message = DIAG_WARN, "waiting for the clock / joint states"
        elif d_over or d_rej:
            level, message = DIAG_WARN, f"{d_over} overrun(s), {d_rej} rejected setpoint(s) in the last period"
        elif self.timed_out:
            level, message = DIAG_OK, "holding: no setpoint within the timeout"
        else:
            level, message = DIAG_OK, "tracking setpoints"
        values = {
            "ticks": ticks, "ticks_in_period": d_ticks, "overruns": overruns, "overruns_in_period": d_over,
            "skipped_ticks": self.skipped_ticks, "lateness_p99_ms": percentile_ms(late, 99),
            "lateness_max_ms": max(late) * 1e3 if late else float("nan"),
            "setpoints_received": self.setpoints_received, "setpoints_applied": self.setpoints_applied,
            "setpoints_superseded": self.setpoints_superseded, "setpoints_rejected": rejected,
            "setpoints_clamped": self.setpoints_clamped, "setpoints_foreign_frame": self.foreign_frame,
            "timed_out": self.timed_out, "command_x": float(self.command_xy[0]),
            "command_y": float(self.command_xy[1]), "ik_error_mm": self.ik_error * 1e3,
            "clock": type(self.clock).__name__, "realtime": self.realtime,
            **self.timing.summary(),
        }
        status = diagnostic_status(f"{self.get_name()}: control loop", level, message, values, "xarm6")
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [status]))

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop the loop thread and free the IK client (idempotent)."""
        self.clock.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self.clock.close()
        self._ik.close()


def main(args: list[str] | None = None) -> int:
    # The loop thread must get the GIL promptly when it wakes: a short switch interval bounds how long another
    # thread of this process can keep it (the default, 5 ms, is half a tick).
    sys.setswitchinterval(2e-4)
    # Fast DDS publishes synchronously by default: publish() then delivers to every reader in the calling thread
    # and blocked the loop for up to 25 ms when a subscriber process was starved of CPU (bench/interpolator_jitter).
    # Asynchronous mode hands the samples to the middleware's sender thread. Set before rclpy starts the middleware.
    os.environ.setdefault("RMW_FASTRTPS_PUBLICATION_MODE", "ASYNCHRONOUS")
    # On the wall clock single-threaded: its callbacks only swap inputs in and publish diagnostics, and a multi-threaded
    # executor's busy loop competed with the control loop for the GIL (see run_node; period error grew over a
    # 10-minute run). On sim time the executor also delivers the /clock that paces the loop, and single-threaded
    # the lockstep demo saw a 2 s wait for a joint command time out (1 run in 3; 0 in 5 multi-threaded): two threads.
    return run_node(functools.partial(InterpolatorNode, own_process=True), args,
                    threads=lambda node: 1 if isinstance(node.clock, WallClock) else 2)


if __name__ == "__main__":
    raise SystemExit(main())
