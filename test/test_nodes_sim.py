"""sim_node over real DDS: /clock, /joint_states at 100 Hz of sim time, camera images (rgb8, sensor QoS), seeded
reset and task state services, and the arm following the interpolator's joint commands on sim time."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger

from irvs_ros.control.ik import XArmIK
from irvs_ros.control.xarm_model import JOINT_NAMES
from irvs_ros.nodes.common import CLOCK_QOS, SENSOR_QOS, NodeConfigError, to_sec
from irvs_ros.nodes.graph import InProcessGraph, ServiceCaller, TopicLog
from irvs_ros.nodes.image_ops import image_array
from irvs_ros.nodes.interpolator_node import InterpolatorNode
from irvs_ros.nodes.sim_node import SimNode
from irvs_ros.sim.registry import make_env

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
sys.setswitchinterval(5e-4)  # several busy threads share the GIL here; the 100 Hz loops need it promptly
DOMAIN = 100 + (os.getpid() % 30) * 4 + 1  # unique per test module (last term) and per process
LOG_QOS = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
SIM_PARAMS = {"real_time_factor": 1.0, "image_width": 160, "image_height": 90, "camera_rate": 10.0, "seed": 3}


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def call(caller: ServiceCaller, srv_type, name: str, request):
    return caller.call(srv_type, name, request, timeout=10.0)


def trigger(caller: ServiceCaller, name: str) -> dict:
    resp = call(caller, Trigger, name, Trigger.Request())
    assert resp.success, resp.message
    return json.loads(resp.message)


@pytest.fixture(scope="module")
def graph():
    with InProcessGraph(domain_id=DOMAIN) as g:
        sim = g.add(SimNode(**g.node_kwargs(**SIM_PARAMS)))
        probe = g.add(Node("probe", context=g.context))
        g.sim, g.probe, g.caller = sim, probe, ServiceCaller(g.context)
        g.joint_states = TopicLog(probe, JointState, "/joint_states", LOG_QOS)
        g.images = TopicLog(probe, Image, "/camera/camera/color/image_raw", SENSOR_QOS)
        g.clock = TopicLog(probe, Clock, "/clock", CLOCK_QOS)
        wait_until(lambda: len(g.joint_states) > 10 and len(g.images) > 1, 20, "sim outputs")
        yield g
        g.caller.close()


def sim_seconds(log: TopicLog, seconds: float, timeout: float = 20.0) -> list:
    """Messages of `log` over the next `seconds` of simulated time (by /joint_states stamps)."""
    graph_js = log
    start = to_sec(graph_js.messages[-1].header.stamp)
    wait_until(lambda: to_sec(graph_js.messages[-1].header.stamp) >= start + seconds, timeout, "sim time to pass")
    return [m for m in graph_js.messages if start <= to_sec(m.header.stamp) < start + seconds]


def test_publishes_clock_joint_states_and_camera_images(graph):
    graph.images.clear()
    graph.clock.clear()
    t0 = to_sec(graph.joint_states.messages[-1].header.stamp)
    window = sim_seconds(graph.joint_states, 1.0)
    # One joint state per 10 ms of simulated time.
    assert 99 <= len(window) <= 101, len(window)
    assert list(window[-1].name) == list(JOINT_NAMES) and len(window[-1].position) == 6
    # /clock advances with the simulation.
    clocks = [to_sec(m.clock) for m in graph.clock.messages]
    assert len(clocks) > 20 and np.all(np.diff(clocks) > 0) and clocks[-1] >= t0 + 0.9
    # Camera: rgb8 160x90 at 10 Hz of simulated time, on the RealSense topic, with the cell in view.
    images = [m for m in graph.images.messages if t0 <= to_sec(m.header.stamp) < t0 + 1.0]
    assert 8 <= len(images) <= 11, len(images)
    img = image_array(images[-1])
    assert images[-1].encoding == "rgb8" and img.shape == (90, 160, 3)
    assert img.std() > 10  # a rendered scene, not a blank frame
    assert images[-1].header.frame_id == "camera_color_optical_frame"


def test_reset_is_seeded_and_task_state_reports_reward(graph):
    resp = call(graph.caller, SetParameters, "/sim_node/set_parameters",
                SetParameters.Request(parameters=[Parameter("seed", value=11).to_parameter_msg()]))
    assert resp.results[0].successful
    first = trigger(graph.caller, "/sim_node/reset")
    again = trigger(graph.caller, "/sim_node/reset")
    env = make_env("push")
    try:
        _, info = env.reset(seed=11)
        want = info["state_dict"]
    finally:
        env.close()
    assert first["seed"] == 11
    for key in ("block_xy", "goal_xy", "block_yaw"):
        assert np.allclose(first["state"][key], want[key], atol=1e-3), key
        assert np.allclose(again["state"][key], first["state"][key], atol=1e-6), key
    state = trigger(graph.caller, "/sim_node/task_state")
    assert state["success"] is False and state["reward_level"] == 0.0 and state["goal_distance"] > 0.1
    assert state["sim_time"] >= first["sim_time"]


def test_arm_follows_the_interpolator_on_sim_time(graph):
    interp = graph.add(InterpolatorNode(**graph.node_kwargs(use_sim_time=True, start_from_joint_states=True)))
    try:
        trigger(graph.caller, "/sim_node/reset")
        wait_until(lambda: interp.running, 10, "the interpolator loop")
        resync = call(graph.caller, Trigger, "/interpolator_node/resync", Trigger.Request())
        assert resync.success, resync.message
        start = np.array(trigger(graph.caller, "/sim_node/task_state")["state"]["effector_xy"])
        assert np.allclose(start, [0.3, -0.4], atol=5e-3)  # the task's effector start
        from geometry_msgs.msg import PoseStamped

        from irvs_ros.nodes.common import COMMAND_QOS

        pub = graph.probe.create_publisher(PoseStamped, "/irvs/setpoint", COMMAND_QOS)
        wait_until(lambda: pub.get_subscription_count() > 0, 10, "setpoint subscription")
        goal = np.array([0.36, -0.33])
        msg = PoseStamped()
        msg.pose.position.x, msg.pose.position.y = float(goal[0]), float(goal[1])
        for _ in range(5):  # 5 Hz for 1 s of sim time
            pub.publish(msg)
            sim_seconds(graph.joint_states, 0.2)
        sim_seconds(graph.joint_states, 0.5)
        reached = np.array(trigger(graph.caller, "/sim_node/task_state")["state"]["effector_xy"])
        assert np.linalg.norm(reached - goal) < 5e-3, reached
        # /joint_states agree with the task's effector position.
        with XArmIK() as ik:
            js = graph.joint_states.messages[-1]
            assert np.linalg.norm(ik.fk(np.array(js.position))[:2] - reached) < 3e-3
        graph.probe.destroy_publisher(pub)
    finally:
        graph.remove(interp)


def test_invalid_sim_parameters_raise_clear_errors(graph):
    with pytest.raises(NodeConfigError, match="'task' must be one of \\['push', 'push_insert'\\].*got 'stack'"):
        SimNode(**graph.node_kwargs(task="stack"))
    with pytest.raises(NodeConfigError, match="'camera_rate' must be a finite number > 0"):
        SimNode(**graph.node_kwargs(camera_rate=0.0))
