"""sim_node: the PyBullet push cell as a robot on the ROS graph.

Subscribes `/irvs/joint_command` (sensor_msgs/JointState positions); publishes `/joint_states` every 100 Hz
tick, the camera image on `/camera/camera/color/image_raw` (sensor_msgs/Image rgb8, sensor-data QoS) at
`camera_rate`, `/clock` (rosgraph_msgs/Clock, simulated time, so the graph can run on sim time, faster or
slower than real time per `real_time_factor`) and `/diagnostics`.

Services (answers are JSON in `message`):
  ~/reset       (std_srvs/Trigger) new episode with the `seed` parameter (set it first); answer: the task state.
                Also publishes the reset pose on /joint_states at once, so an interpolator can `~/resync` to it.
  ~/task_state  (std_srvs/Trigger) success, reward_level, task details (goal distance, inserted fraction), the
                state by name, and the episode: sim_time, episode_time, episode_steps (see Episodes), paused,
                pause_reason, lockstep, lockstep_timeouts.
  ~/pause       (std_srvs/SetBool) true: stop simulated time after the current tick (answers once stopped; when
                already paused, publishes the clock and the joint states again); false: go on.

Episodes: decision times are reset time + k * decision_period (k >= 1; the first needs a frame of the new scene),
so an episode's clock (episode_time, episode_steps = decisions carried out) starts at the first decision, and
at episode_time 0.2 k the arm has carried out k decisions, as after k steps of the gym task. At each ~/reset
`episode_time_limit` and `pause_on_success` are read: > 0 pauses the sim when episode_time reaches the limit;
true pauses it at the first decision time where the task succeeds, as the gym task ends a step on success.
pause_reason says which ("time_limit", "success", "request").

Lockstep (`lockstep: true`, see nodes.lockstep): each tick is held until the interpolator's joint command for it
and, at decision times, the policy's setpoint arrived, so results do not depend on CPU load. Meanwhile /clock is
re-published a few microseconds past the tick (and at +DECISION_NS while paused), which orders the policy's
decision after the tick's joint command. The frame a decision uses is rendered one tick before the decision time
(camera times are reset time + k / camera_rate, plus the first tick after a reset), so that it has reached the
policy before the decision; the robot's camera frames are older still. Times published are whole nanoseconds
counted from 0 (no float drift).

The simulation runs in its own thread; the joint-command callback only swaps in the newest command.
After a reset the arm holds its start pose; a running interpolator should be resynced (its `~/resync`).
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import SetBool, Trigger

from irvs_ros.control.xarm_model import JOINT_NAMES
from irvs_ros.nodes.common import (
    CLOCK_QOS,
    COMMAND_QOS,
    DIAG_ERROR,
    DIAG_OK,
    SENSOR_QOS,
    NodeConfigError,
    Param,
    declare_parameters,
    diagnostic_array,
    diagnostic_status,
    non_negative,
    one_of,
    positive,
    run_node,
    stamp_of,
    to_sec,
)
from irvs_ros.nodes.image_ops import image_msg
from irvs_ros.nodes.lockstep import DECISION_NS, LockstepError, LockstepGate
from irvs_ros.nodes.sim_robot import SimRobot, SimRobotError
from irvs_ros.sim.push_tasks import TASKS

NODE_NAME = "sim_node"

PARAMS: dict[str, Param] = {
    "task": Param(str, "simulated task", one_of(*TASKS)),
    "seed": Param(int, "scene seed used by the next ~/reset (and at start)"),
    "real_time_factor": Param(float, "simulated seconds per wall second; 0 = as fast as possible", non_negative),
    "publish_clock": Param(bool, "publish /clock (simulated time)"),
    "joint_command_topic": Param(str, "joint position commands in (JointState)"),
    "joint_states_topic": Param(str, "measured joint states out (JointState)"),
    "image_topic": Param(str, "camera image out (Image rgb8)"),
    "camera_frame_id": Param(str, "frame_id of the camera images"),
    "image_width": Param(int, "camera image width (px)", lambda v: None if 8 <= v <= 1920 else "in [8, 1920]"),
    "image_height": Param(int, "camera image height (px)", lambda v: None if 8 <= v <= 1080 else "in [8, 1080]"),
    "camera_rate": Param(float, "camera frames per simulated second", positive),
    "camera_perturbation": Param(bool, "perturb camera pose and light per episode"),
    "diagnostics_period": Param(float, "simulated seconds between /diagnostics messages", positive),
    "lockstep": Param(bool, "hold each tick until the graph answered it (joint command; setpoint at decisions)"),
    "lockstep_timeout": Param(float, "wall seconds to wait for an answer before going on without it", positive),
    "decision_period": Param(float, "policy period (simulated s): decisions at reset time + k * period", positive),
    "setpoint_topic": Param(str, "the policy's setpoints (PoseStamped), waited for at decision times in lockstep"),
    "ee_pose_topic": Param(str, "the interpolator's effector pose (PoseStamped), waited for at decisions in lockstep"),
    "episode_time_limit": Param(float, "> 0: pause when an episode has run this long (simulated s)", non_negative),
    "pause_on_success": Param(bool, "pause at the first decision time where the task succeeds"),
}


class SimNode(Node):
    """The simulated robot (see module docstring). `close()` stops the simulation thread and the physics."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            self.params = p = declare_parameters(self, NODE_NAME, PARAMS)
            self.robot = SimRobot(p["task"], (p["image_width"], p["image_height"]),
                                  camera_perturbation=p["camera_perturbation"])
            self.gate = LockstepGate(self.robot.tick_period, p["decision_period"], p["lockstep_timeout"],
                                     enabled=p["lockstep"])
        except (SimRobotError, LockstepError) as e:
            if getattr(self, "robot", None) is not None:
                self.robot.close()
            self.destroy_node()
            raise NodeConfigError(f"{NODE_NAME}: {e}") from e
        except NodeConfigError:
            self.destroy_node()
            raise
        self.dt = self.robot.tick_period
        self._sim_lock = threading.Lock()  # the physics client is used by the loop and by the services
        self._cmd_lock = threading.Lock()
        self._command: np.ndarray | None = None
        self._reset_time = 0.0
        self._stop = threading.Event()
        self.sim_time = 0.0
        self._time_ns = 0
        self._dt_ns = int(round(self.dt * 1e9))
        self.ticks = 0
        self.images = 0
        self.frame_resends = 0
        self._last_frame: Image | None = None
        self.commands = 0
        self.bad_commands = 0
        self.error = ""
        self._rtf_mark = (time.monotonic(), 0.0)
        self.measured_rtf = float("nan")
        # Episode and pause state (guarded by _pause_cv): camera times and decision times count from the reset.
        self._pause_cv = threading.Condition()
        self._pause_requested = False
        self._paused = False
        self.pause_reason = ""
        self._resumes = 0  # times the loop left a pause (the resume request waits for the next one)
        self._episode_over = True   # no episode end before the first ~/reset
        self._time_limit = 0.0
        self._pause_on_success = False
        self._next_image = 0.0
        self._frame_lead = self.dt if p["lockstep"] else 0.0
        with self._sim_lock:
            self.robot.reset(p["seed"])

        services = ReentrantCallbackGroup()
        self.create_subscription(JointState, p["joint_command_topic"], self._on_command, COMMAND_QOS,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self._js_pub = self.create_publisher(JointState, p["joint_states_topic"], COMMAND_QOS)
        self._img_pub = self.create_publisher(Image, p["image_topic"], SENSOR_QOS)
        self._clock_pub = self.create_publisher(Clock, "/clock", CLOCK_QOS) if p["publish_clock"] else None
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(PoseStamped, p["setpoint_topic"], self._on_setpoint, COMMAND_QOS,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        if p["lockstep"]:
            self.create_subscription(PoseStamped, p["ee_pose_topic"], lambda m: self.gate.pose(to_sec(m.header.stamp)),
                                     COMMAND_QOS, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=services)
        self.create_service(Trigger, "~/task_state", self._on_task_state, callback_group=services)
        self.create_service(SetBool, "~/pause", self._on_pause, callback_group=services)
        self._thread = threading.Thread(target=self._run, name="sim-loop", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ ROS callbacks
    def _on_command(self, msg: JointState) -> None:
        by_name = dict(zip(msg.name, msg.position, strict=False))
        q = np.array([by_name.get(n, np.nan) for n in JOINT_NAMES], dtype=np.float64)
        stamp = to_sec(msg.header.stamp)
        if not np.all(np.isfinite(q)):
            self.bad_commands += 1
            self.get_logger().warn(f"joint command without finite positions for {list(JOINT_NAMES)} ignored",
                                   throttle_duration_sec=1.0)
            return
        if 0 < stamp < self._reset_time + 0.5 * self.dt:
            return  # computed for the previous episode's arm (up to and including the reset tick)
        with self._cmd_lock:
            self._command = q
        self.commands += 1
        self.gate.command(stamp)

    def _on_setpoint(self, msg: PoseStamped) -> None:
        self.gate.setpoint(to_sec(msg.header.stamp))

    def _on_reset(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        seed = self.get_parameter("seed").value
        if not isinstance(seed, int):
            resp.success, resp.message = False, json.dumps({"error": f"parameter 'seed' must be an int, got {seed!r}"})
            return resp
        with self._sim_lock:
            state = self.robot.reset(seed)
            self._reset_time = self.sim_time
            self._next_image = self.sim_time  # a frame of the new scene on the first tick, then every camera period
            qs, vs = self.robot.joint_positions(), self.robot.joint_velocities()
            self.gate.start_episode(self.sim_time)
            with self._pause_cv:
                self._episode_over = False
                self._time_limit = float(self.get_parameter("episode_time_limit").value or 0.0)
                self._pause_on_success = bool(self.get_parameter("pause_on_success").value)
        with self._cmd_lock:
            self._command = None
        self._publish_joint_states(stamp_of(self.sim_time), qs, vs)
        resp.success, resp.message = True, json.dumps(self._episode_state(state))
        return resp

    def _on_task_state(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        with self._sim_lock:
            state = self.robot.task_state()
        resp.success, resp.message = True, json.dumps(self._episode_state(state))
        return resp

    def _episode_time(self) -> float:
        """Simulated s since the episode's first decision (reset time + decision_period); < 0 before it."""
        return self.sim_time - self._reset_time - self.gate.period

    def _episode_state(self, state: dict) -> dict:
        episode_time = max(0.0, self._episode_time())
        with self._pause_cv:
            paused, reason = self._paused, self.pause_reason
        state.update(sim_time=self.sim_time, episode_time=episode_time,
                     episode_steps=int((episode_time + 0.5 * self.dt) // self.gate.period),
                     paused=paused, pause_reason=reason, lockstep=self.gate.enabled,
                     lockstep_timeouts=dict(self.gate.timeouts))
        return state

    def _on_pause(self, req: SetBool.Request, resp: SetBool.Response) -> SetBool.Response:
        with self._pause_cv:
            if req.data:
                already = self._paused
                if not self._pause_requested:
                    self._pause_requested, self.pause_reason = True, "request"
                deadline = time.monotonic() + self.params["lockstep_timeout"] + 5.0
                while not self._paused and self._thread.is_alive() and time.monotonic() < deadline:
                    self._pause_cv.wait(0.05)
                ok = self._paused
                if ok and already:  # again, for nodes that joined late or lost them: the clock and the arm's state
                    if self.gate.enabled and self._clock_pub is not None:
                        self._republish_clock(DECISION_NS)
                    with self._sim_lock:
                        qs, vs = self.robot.joint_positions(), self.robot.joint_velocities()
                    self._publish_joint_states(_ns_stamp(self._time_ns), qs, vs)
            else:
                self._pause_requested, self.pause_reason = False, ""
                self._pause_cv.notify_all()
                # Return once the loop has resumed, so that the state read next is no longer the old pause's.
                resumes, deadline = self._resumes, time.monotonic() + 5.0
                while self._paused and self._resumes == resumes and self._thread.is_alive() \
                        and time.monotonic() < deadline:
                    self._pause_cv.wait(0.05)
                ok = True
        resp.success = ok
        resp.message = json.dumps({"paused": bool(req.data) and ok, "sim_time": self.sim_time}
                                  if ok else {"error": "the simulation did not pause (is its loop running?)"})
        return resp

    def _end_episode(self, reason: str) -> None:
        with self._pause_cv:
            self._episode_over = True
            self._pause_requested, self.pause_reason = True, reason

    def _republish_clock(self, offset_ns: int) -> None:
        """/clock again at the current tick + offset_ns (lockstep, see nodes.lockstep)."""
        self._clock_pub.publish(Clock(clock=_ns_stamp(self._time_ns + offset_ns)))

    def _resend_frame(self) -> None:
        """The newest camera frame again (same stamp), while a decision's setpoint is late (see nodes.lockstep)."""
        if self._last_frame is not None:
            self._img_pub.publish(self._last_frame)
            self.frame_resends += 1

    def _hold_while_paused(self) -> None:
        with self._pause_cv:
            if not self._pause_requested:
                return
            if self.gate.enabled and self._clock_pub is not None:
                self._republish_clock(DECISION_NS)  # a policy (re)started while paused decides at +DECISION_NS
            self._paused = True
            self._pause_cv.notify_all()
            while self._pause_requested and not self._stop.is_set():
                self._pause_cv.wait(0.1)
            self._paused = False
            self._resumes += 1
            self._pause_cv.notify_all()

    # ------------------------------------------------------------------ simulation loop
    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # make a dead simulation visible
            if not self.context.ok():
                return  # rclpy was shut down under the loop (Ctrl-C): a normal stop, not a failure
            self.error = f"{type(e).__name__}: {e}"
            self.get_logger().error(f"simulation stopped: {self.error}")

    def _loop(self) -> None:
        p, dt = self.params, self.dt
        rtf = p["real_time_factor"]
        cam_period = 1.0 / p["camera_rate"]
        next_diag = p["diagnostics_period"]
        wall_next = time.monotonic()
        while not self._stop.is_set():
            if self._pause_requested:
                self._hold_while_paused()
                wall_next = time.monotonic()
                continue
            with self._cmd_lock:
                q, self._command = self._command, None
            with self._sim_lock:
                if q is not None:
                    self.robot.command(q)
                self.robot.step_tick()
                # Integer nanoseconds: every published time is an exact multiple of the tick (no float drift).
                self._time_ns += self._dt_ns
                self.sim_time = self._time_ns * 1e-9
                self.ticks += 1
                stamp = _ns_stamp(self._time_ns)
                qs, vs = self.robot.joint_positions(), self.robot.joint_velocities()
                image = None
                if self.sim_time + self._frame_lead >= self._next_image - 1e-9:
                    image = self.robot.render()
                    self._next_image += cam_period
            if self._clock_pub is not None:
                self._clock_pub.publish(Clock(clock=stamp))
            self._publish_joint_states(stamp, qs, vs)
            if image is not None:
                self._last_frame = image_msg(image, stamp, p["camera_frame_id"])
                self._img_pub.publish(self._last_frame)
                self.images += 1
            if self.sim_time >= next_diag - 1e-9:
                next_diag += p["diagnostics_period"]
                self._publish_diagnostics(stamp)
            late = self.gate.wait(self.sim_time, self._stop.is_set,
                                  republish=None if self._clock_pub is None else self._republish_clock,
                                  resend=self._resend_frame)
            if late:
                self.get_logger().warn(f"lockstep: no {' / '.join(late)} for t={self.sim_time:.2f} s within "
                                       f"{p['lockstep_timeout']} s; going on without waiting for it")
            for stream, stamp, at, wall_late in self.gate.take_late_answers():
                self.get_logger().warn(f"lockstep: the next {stream} after the timeout at t={at:.2f} s came "
                                       f"{wall_late:.3f} wall s after it, stamped t={stamp:.6f} s")
            self._check_episode_end()
            if rtf > 0:
                wall_next += dt / rtf
                delay = wall_next - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                elif delay < -0.25:
                    wall_next = time.monotonic()  # far behind real time: do not try to catch up in a burst

    def _check_episode_end(self) -> None:
        """Pause at the episode's end (see the module docstring); after the tick's lockstep wait."""
        if self._episode_over:
            return
        episode_time = self._episode_time()
        # Half a tick, not 0: at the first decision episode_time is 0 up to float rounding of the clock sums.
        if self._pause_on_success and episode_time > 0.5 * self.dt and self.gate.is_decision_time(self.sim_time):
            with self._sim_lock:
                success = self.robot.env.evaluate()[0]
            if success:
                self._end_episode("success")
                return
        if self._time_limit > 0 and episode_time >= self._time_limit - 0.5 * self.dt:
            self._end_episode("time_limit")

    def _publish_joint_states(self, stamp, qs: np.ndarray, vs: np.ndarray) -> None:
        js = JointState()
        js.header.stamp = stamp
        js.name = list(JOINT_NAMES)
        js.position = [float(v) for v in qs]
        js.velocity = [float(v) for v in vs]
        self._js_pub.publish(js)

    def _publish_diagnostics(self, stamp) -> None:
        now = time.monotonic()
        w0, s0 = self._rtf_mark
        if now > w0:
            self.measured_rtf = (self.sim_time - s0) / (now - w0)
        self._rtf_mark = (now, self.sim_time)
        with self._sim_lock:
            state = self.robot.task_state()
        level, message = (DIAG_ERROR, f"simulation stopped: {self.error}") if self.error else (DIAG_OK, "running")
        values = {"sim_time": self.sim_time, "ticks": self.ticks, "images": self.images,
                  "commands": self.commands, "bad_commands": self.bad_commands,
                  "real_time_factor": self.measured_rtf, "task": state["task"], "seed": state["seed"],
                  "success": state["success"], "reward_level": state["reward_level"], "paused": self._paused,
                  "lockstep": self.gate.enabled, "lockstep_timeouts_command": self.gate.timeouts["command"],
                  "lockstep_timeouts_setpoint": self.gate.timeouts["setpoint"],
                  "lockstep_clock_repeats": self.gate.nudges, "lockstep_frame_resends": self.frame_resends}
        self._diag_pub.publish(diagnostic_array(stamp, [diagnostic_status(f"{self.get_name()}: simulation", level,
                                                                         message, values, "pybullet")]))

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop the simulation thread and disconnect the physics (idempotent)."""
        self._stop.set()
        self.gate.release()
        with self._pause_cv:
            self._pause_cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        with self._sim_lock:
            if self.robot.cell.client is not None:
                self.robot.close()


def _ns_stamp(ns: int) -> TimeMsg:
    return TimeMsg(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def main(args: list[str] | None = None) -> int:
    # The loop thread and the executor's callbacks share the GIL; at the default 5 ms switch interval every
    # lockstep hand-over (a command in, the next tick out) can wait that long.
    sys.setswitchinterval(5e-4)
    return run_node(SimNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
