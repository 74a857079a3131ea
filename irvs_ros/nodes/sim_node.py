"""sim_node: the PyBullet push cell as a robot on the ROS graph.

Subscribes `/irvs/joint_command` (sensor_msgs/JointState positions); publishes `/joint_states` every 100 Hz
tick, the camera image on `/camera/camera/color/image_raw` (sensor_msgs/Image rgb8, sensor-data QoS) at
`camera_rate`, `/clock` (rosgraph_msgs/Clock, simulated time, so the graph can run on sim time, faster or
slower than real time per `real_time_factor`) and `/diagnostics`.

Services (std_srvs/Trigger, answers are JSON in `message`):
  ~/reset       new episode with the `seed` parameter (set it first); answer: the task state.
  ~/task_state  success, reward_level, task details (goal distance, inserted fraction) and the state by name.

The simulation runs in its own thread; the joint-command callback only swaps in the newest command.
After a reset the arm holds its start pose; a running interpolator should be resynced (its `~/resync`).
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger

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
}


class SimNode(Node):
    """The simulated robot (see module docstring). `close()` stops the simulation thread and the physics."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            self.params = p = declare_parameters(self, NODE_NAME, PARAMS)
            self.robot = SimRobot(p["task"], (p["image_width"], p["image_height"]),
                                  camera_perturbation=p["camera_perturbation"])
        except SimRobotError as e:
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
        self.ticks = 0
        self.images = 0
        self.commands = 0
        self.bad_commands = 0
        self.error = ""
        self._rtf_mark = (time.monotonic(), 0.0)
        self.measured_rtf = float("nan")
        with self._sim_lock:
            self.robot.reset(p["seed"])

        services = ReentrantCallbackGroup()
        self.create_subscription(JointState, p["joint_command_topic"], self._on_command, COMMAND_QOS,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self._js_pub = self.create_publisher(JointState, p["joint_states_topic"], COMMAND_QOS)
        self._img_pub = self.create_publisher(Image, p["image_topic"], SENSOR_QOS)
        self._clock_pub = self.create_publisher(Clock, "/clock", CLOCK_QOS) if p["publish_clock"] else None
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=services)
        self.create_service(Trigger, "~/task_state", self._on_task_state, callback_group=services)
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
        if 0 < stamp < self._reset_time:
            return  # computed for the previous episode's arm
        with self._cmd_lock:
            self._command = q
        self.commands += 1

    def _on_reset(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        seed = self.get_parameter("seed").value
        if not isinstance(seed, int):
            resp.success, resp.message = False, json.dumps({"error": f"parameter 'seed' must be an int, got {seed!r}"})
            return resp
        with self._sim_lock:
            state = self.robot.reset(seed)
            self._reset_time = self.sim_time
        with self._cmd_lock:
            self._command = None
        state["sim_time"] = self.sim_time
        resp.success, resp.message = True, json.dumps(state)
        return resp

    def _on_task_state(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        with self._sim_lock:
            state = self.robot.task_state()
        state["sim_time"] = self.sim_time
        resp.success, resp.message = True, json.dumps(state)
        return resp

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
        next_image = 0.0
        next_diag = p["diagnostics_period"]
        wall_next = time.monotonic()
        while not self._stop.is_set():
            with self._cmd_lock:
                q, self._command = self._command, None
            with self._sim_lock:
                if q is not None:
                    self.robot.command(q)
                self.robot.step_tick()
                self.sim_time += dt
                self.ticks += 1
                stamp = stamp_of(self.sim_time)
                qs, vs = self.robot.joint_positions(), self.robot.joint_velocities()
                image = self.robot.render() if self.sim_time >= next_image - 1e-9 else None
            if self._clock_pub is not None:
                self._clock_pub.publish(Clock(clock=stamp))
            js = JointState()
            js.header.stamp = stamp
            js.name = list(JOINT_NAMES)
            js.position = [float(v) for v in qs]
            js.velocity = [float(v) for v in vs]
            self._js_pub.publish(js)
            if image is not None:
                next_image += cam_period
                self._img_pub.publish(image_msg(image, stamp, p["camera_frame_id"]))
                self.images += 1
            if self.sim_time >= next_diag - 1e-9:
                next_diag += p["diagnostics_period"]
                self._publish_diagnostics(stamp)
            if rtf > 0:
                wall_next += dt / rtf
                delay = wall_next - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                elif delay < -0.25:
                    wall_next = time.monotonic()  # far behind real time: do not try to catch up in a burst

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
                  "success": state["success"], "reward_level": state["reward_level"]}
        self._diag_pub.publish(diagnostic_array(stamp, [diagnostic_status(f"{self.get_name()}: simulation", level,
                                                                         message, values, "pybullet")]))

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop the simulation thread and disconnect the physics (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        with self._sim_lock:
            if self.robot.cell.client is not None:
                self.robot.close()


def main(args: list[str] | None = None) -> int:
    return run_node(SimNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
