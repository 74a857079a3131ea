"""policy_node over real DDS on sim time, with a tiny IRvS (DFO) image policy exported in the test: setpoints at
5 Hz that follow the policy's deltas inside the envelope, diagnostics with latency / energy / predicted return,
stale image -> no new setpoint, clear errors for a missing or bad model."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_srvs.srv import SetBool

from irvs_ros.learn.algorithms import make_algorithm
from irvs_ros.learn.export import export_policy
from irvs_ros.nodes.common import SENSOR_QOS, NodeConfigError, diagnostic_values, stamp_of, to_sec
from irvs_ros.nodes.graph import ClockDriver, InProcessGraph, ServiceCaller, TopicLog
from irvs_ros.nodes.image_ops import crop_resize, image_msg
from irvs_ros.nodes.policy_node import PolicyNode
from irvs_ros.runtime.spec import NormStats, ObsSpec, PolicySpec

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
sys.setswitchinterval(5e-4)
DOMAIN = 100 + (os.getpid() % 30) * 4 + 2  # unique per test module (last term) and per process
LOG_QOS = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
IMAGE_SHAPE = (18, 24, 3)
MAX_DELTA = 0.02
START = (0.4, 0.0)


def tiny_irvs(path, dfo_samples: int) -> str:
    """An untrained IRvS image policy with DFO argmin: deltas within +-0.022 m, a return column."""
    torch.manual_seed(0)
    stats = NormStats((), (), (-MAX_DELTA, -MAX_DELTA), (MAX_DELTA, MAX_DELTA), 0.0, 1.0)
    lim = 1.1 * MAX_DELTA
    spec = PolicySpec(ObsSpec(0, IMAGE_SHAPE, ()), 2, stats, (-lim, -lim), (lim, lim), 5.0)
    algo = make_algorithm("irvs", spec, {"width": 16, "depth": 2, "method": "dfo", "num_counter_examples": 8,
                                         "dfo_samples": dfo_samples})
    return str(export_policy(algo, path))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return tiny_irvs(tmp_path_factory.mktemp("policy") / "tiny_irvs.onnx", dfo_samples=64)


@pytest.fixture(scope="module")
def graph(model):
    with InProcessGraph(domain_id=DOMAIN) as g:
        g.policy = g.add(PolicyNode(**g.node_kwargs(use_sim_time=True, model=model, eta_inv=1.0,
                                                    start_from_ee_pose=False, start_xy=list(START))))
        g.probe = probe = g.add(Node("probe", context=g.context))
        g.clock = ClockDriver(probe, step=0.01, rate=2.0)
        g.images = probe.create_publisher(Image, "/camera/camera/color/image_raw", SENSOR_QOS)
        g.setpoints = TopicLog(probe, PoseStamped, "/irvs/setpoint", LOG_QOS)
        g.diags = TopicLog(probe, DiagnosticArray, "/diagnostics", 10)
        deadline = time.monotonic() + 10
        while not (g.images.get_subscription_count() and g.clock.pub.get_subscription_count()
                   and g.policy._pub.get_subscription_count()):
            assert time.monotonic() < deadline, "DDS discovery did not match the probe and the policy node"
            time.sleep(0.01)
        g.frame = np.random.default_rng(0).integers(0, 256, size=(90, 160, 3), dtype=np.uint8)
        yield g


def publish_image(g, t: float) -> None:
    g.images.publish(image_msg(g.frame, stamp_of(t), "camera_color_optical_frame"))


def policy_diag(g) -> dict[str, str]:
    statuses = [s for d in g.diags.messages for s in d.status if "policy_node" in s.name]
    assert statuses, "no policy diagnostics"
    return diagnostic_values(statuses[-1])


def test_publishes_setpoints_at_5_hz_from_fresh_images(graph):
    graph.setpoints.clear()
    t0 = graph.clock.time
    graph.clock.advance(3.0, every=1 / 30, action=lambda t: publish_image(graph, t))  # a 30 Hz camera
    time.sleep(0.2)
    msgs = graph.setpoints.messages
    stamps = np.array([to_sec(m.header.stamp) for m in msgs])
    in_window = np.count_nonzero((stamps >= t0 + 0.5) & (stamps < t0 + 2.5))
    assert 9 <= in_window <= 11, in_window  # 5 Hz of the node clock
    xy = np.array([[m.pose.position.x, m.pose.position.y] for m in msgs])
    steps = np.abs(np.diff(np.vstack([START, xy]), axis=0))
    # Absolute setpoints = previous + the policy's delta (bounded by the file's widened action range).
    assert np.all(steps <= 1.1 * MAX_DELTA + 1e-6) and np.any(steps > 1e-4)
    assert all(m.header.frame_id == "link_base" and abs(m.pose.position.z - 0.06) < 1e-9 for m in msgs)
    # The same image and argmin outside ROS give actions in the same range.
    img = crop_resize(graph.frame, *IMAGE_SHAPE[:2])
    a = graph.policy.policy.act({"image": img[None]}, np.random.default_rng(1))
    assert np.all(np.abs(a) <= 1.1 * MAX_DELTA + 1e-6)
    graph.clock.advance(1.1, every=1 / 30, action=lambda t: publish_image(graph, t))
    time.sleep(0.1)
    d = policy_diag(graph)
    assert int(d["decisions"]) >= 10 and d["algorithm"] == "irvs" and d["argmin"] == "dfo"
    assert float(d["eta_inv"]) == 1.0 and int(d["argmin_samples"]) == 64  # the file's
    assert 0 < float(d["latency_compute_p50_ms"]) < 1000 and np.isfinite(float(d["latency_image_to_setpoint_p99_ms"]))
    assert np.isfinite(float(d["energy"])) and 0.0 <= float(d["predicted_return"]) <= 1.0
    assert "CPUExecutionProvider" in d["providers"]


def test_stale_image_means_no_new_setpoint(graph):
    graph.clock.advance(0.5, every=1 / 30, action=lambda t: publish_image(graph, t))
    last_image = graph.clock.time - (graph.clock.time % (1 / 30))
    holds0 = graph.policy.stale_holds
    graph.setpoints.clear()
    graph.clock.advance(1.5)  # the camera stopped
    time.sleep(0.2)
    stamps = [to_sec(m.header.stamp) for m in graph.setpoints.messages]
    # Nothing decided on an image older than max_image_age (0.3 s); at most one decision period of slack.
    assert all(s <= last_image + 0.3 + 0.2 + 1e-6 for s in stamps), (stamps, last_image)
    assert graph.policy.stale_holds - holds0 >= 4
    # Fresh images again: setpoints resume.
    graph.setpoints.clear()
    graph.clock.advance(1.0, every=1 / 30, action=lambda t: publish_image(graph, t))
    time.sleep(0.2)
    assert len(graph.setpoints) >= 3


def test_a_held_decision_is_taken_when_its_image_comes_while_the_clock_stands_still(graph):
    """The lockstep sim holds its clock at a decision time until the setpoint came; the frame can come after the
    clock. The decision that held for it is taken on it then, at its time; once the clock moved on it is not."""
    caller = ServiceCaller(graph.context, "enable_caller")
    try:
        for late_by in (0.0, 0.01):  # sim s the clock moved on before the image came
            graph.clock.advance(0.05)
            t0 = graph.clock.time
            assert caller.call(SetBool, "/policy_node/enable", SetBool.Request(data=True)).success  # decisions t0 + k/5
            holds0 = graph.policy.stale_holds
            graph.setpoints.clear()
            graph.clock.advance(0.195)
            graph.clock.advance(0.01)  # one step past the first decision time, without an image: it holds
            deadline = time.monotonic() + 5
            while graph.policy.stale_holds == holds0:
                assert time.monotonic() < deadline, "the decision did not hold without an image"
                time.sleep(0.01)
            graph.clock.advance(late_by)
            time.sleep(0.2)  # the clock stands still
            publish_image(graph, t0 + 0.19)
            time.sleep(0.3)
            stamps = [to_sec(m.header.stamp) for m in graph.setpoints.messages]
            if late_by:
                assert stamps == [], stamps
            else:
                assert len(stamps) == 1 and abs(stamps[0] - (t0 + 0.205)) < 1e-6, (stamps, t0)
    finally:
        caller.close()


def test_missing_or_bad_model_is_a_clear_error(graph, tmp_path):
    with pytest.raises(NodeConfigError, match="parameter 'model' must be a path to a policy file"):
        PolicyNode(**graph.node_kwargs())
    with pytest.raises(NodeConfigError, match="policy_node: .*nope.onnx"):
        PolicyNode(**graph.node_kwargs(model=str(tmp_path / "nope.onnx")))


def test_decisions_do_not_share_a_callback_group_with_the_clock(graph):
    # /clock messages during a decision must not find their group busy: this rclpy's MultiThreadedExecutor then
    # busy-loops holding the GIL and a 60 ms decision took 2 s on the lockstep graph (see PolicyNode.__init__).
    node = graph.policy
    clock = [s for s in node.subscriptions if s.topic_name == "/clock"]
    assert len(clock) == 1, [s.topic_name for s in node.subscriptions]
    decision_group = node._timer.callback_group
    assert clock[0].callback_group is not decision_group
    assert all(s.callback_group is not decision_group for s in node.subscriptions)
    assert [srv.callback_group for srv in node.services if srv.srv_name.endswith("/enable")] == [decision_group]


def test_argmin_samples_parameter_overrides_the_files(graph, model):
    node = PolicyNode(**graph.node_kwargs(model=model, argmin_samples=128))
    try:
        assert node.policy.argmin["num_samples"] == 128 and node.policy.argmin["iterations"] == 3
    finally:
        node.destroy_node()
    with pytest.raises(NodeConfigError, match="argmin_samples"):
        PolicyNode(**graph.node_kwargs(model=model, argmin_samples=-1))


def test_diagnostics_keep_coming_while_decisions_saturate_the_node(graph, tmp_path):
    """Spun as its console script spins it (2 threads), a node whose decision timer is always due (period shorter
    than a decision: ~10 ms of DFO over 16k samples) still publishes diagnostics at their period, and they report
    the decisions it makes. (With the diagnostics timer in the decision's callback group none came at all.)"""
    slow = tiny_irvs(tmp_path / "slow_irvs.onnx", dfo_samples=16384)
    busy = graph.add(PolicyNode(
        **graph.node_kwargs(model=slow, period=0.0005, diagnostics_period=0.1, max_image_age=60.0,
                            start_from_ee_pose=False, start_xy=list(START), image_topic="/busy/image",
                            setpoint_topic="/busy/setpoint"),
        cli_args=["--ros-args", "-r", "__node:=policy_busy"]), threads=2)
    try:
        images = graph.probe.create_publisher(Image, "/busy/image", SENSOR_QOS)
        deadline = time.monotonic() + 10
        while not images.get_subscription_count():
            assert time.monotonic() < deadline, "DDS discovery did not match the busy policy node"
            time.sleep(0.01)
        decided = time.monotonic() + 10
        while busy.decisions < 5:  # images (wall-clock stamps, as the node's clock) until it acts
            assert time.monotonic() < decided, f"the busy policy node made no decisions: {busy.last_error!r}"
            images.publish(image_msg(graph.frame, stamp_of(time.time()), "camera_color_optical_frame"))
            time.sleep(0.05)
        seen0 = time.monotonic()
        time.sleep(1.0)
        mine = [s for d in graph.diags.messages for s in d.status if s.name.startswith("policy_busy")]
        assert len(mine) >= 4, f"{len(mine)} diagnostics in {time.monotonic() - seen0:.1f} s (period 0.1 s)"
        assert int(diagnostic_values(mine[-1])["decisions"]) >= 5
    finally:
        graph.remove(busy)
