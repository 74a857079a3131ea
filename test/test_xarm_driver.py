"""xarm_driver_node over real DDS with the arm absent: the only stand-in is a fake XArmAPI object (the device),
injected through `XArmAdapter(api)`. Checks the start-up call order, streaming of the newest joint command,
the watchdog on a blocking SDK call, controller error -> stop without auto-clear, the e-stop service, and that
an unreachable arm is a clear error at start (with the real SDK)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from irvs_ros.control.xarm_adapter import TcpBox, XArmAdapter, XArmUnreachable
from irvs_ros.control.xarm_model import JOINT_NAMES
from irvs_ros.nodes.common import COMMAND_QOS, NodeConfigError, diagnostic_values
from irvs_ros.nodes.graph import InProcessGraph, ServiceCaller, TopicLog
from irvs_ros.nodes.xarm_driver_node import XArmDriverNode

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
DOMAIN = 10 + (os.getpid() % 40) * 2 + 1  # unique per test module (last term) and per process
FAST = {"watchdog_timeout": 0.05, "stall_limit": 0.4, "diagnostics_period": 0.2}


class FakeXArmAPI:
    """The absent arm: records every call; servo calls can be made to block; the error code can be set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.lock = threading.Lock()
        self.connected = True
        self.error_code = 0
        self.warn_code = 3
        self.angles = [0.0] * 6
        self.block_s = 0.0          # the next set_servo_angle_j blocks this long
        self.block_started = threading.Event()

    def _log(self, name: str, *args) -> int:
        with self.lock:
            self.calls.append((name, args))
        return 0

    def names(self) -> list[str]:
        with self.lock:
            return [n for n, _ in self.calls]

    def servo_targets(self) -> list[list[float]]:
        with self.lock:
            return [list(a[0]) for n, a in self.calls if n == "set_servo_angle_j"]

    def connect(self):
        self.connected = True

    def disconnect(self):
        self.connected = False

    def clean_warn(self):
        return self._log("clean_warn")

    def clean_error(self):
        self.error_code = 0
        return self._log("clean_error")

    def motion_enable(self, enable=True):
        return self._log("motion_enable", enable)

    def set_mode(self, mode):
        return self._log("set_mode", mode)

    def set_state(self, state):
        return self._log("set_state", state)

    def set_reduced_tcp_boundary(self, boundary):
        return self._log("set_reduced_tcp_boundary", list(boundary))

    def set_fence_mode(self, on):
        return self._log("set_fence_mode", on)

    def set_reduced_mode(self, on):
        return self._log("set_reduced_mode", on)

    def set_servo_angle_j(self, angles, is_radian=None):
        assert is_radian is True
        block, self.block_s = self.block_s, 0.0
        self._log("set_servo_angle_j", list(angles))
        if block:
            self.block_started.set()
            time.sleep(block)
        self.angles = list(angles)
        return 0

    def get_servo_angle(self, is_radian=None):
        return 0, list(self.angles) + [0.0]


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def command(q) -> JointState:
    msg = JointState()
    msg.name = list(JOINT_NAMES)
    msg.position = [float(v) for v in q]
    return msg


def last_status(log: TopicLog) -> DiagnosticStatus:
    """The newest xarm status received (an OK placeholder before the first one)."""
    statuses = [s for m in log.messages for s in m.status if s.name.endswith(": xarm")]
    return statuses[-1] if statuses else DiagnosticStatus(level=DiagnosticStatus.OK, name="none yet")


@pytest.fixture()
def rig():
    with InProcessGraph(domain_id=DOMAIN) as g:
        probe = g.add(Node("probe", context=g.context))
        g.cmd = probe.create_publisher(JointState, "/irvs/joint_command", COMMAND_QOS)
        g.states = TopicLog(probe, JointState, "/joint_states", COMMAND_QOS)
        g.diag = TopicLog(probe, DiagnosticArray, "/diagnostics", 50)
        g.caller = ServiceCaller(g.context)
        g.api = FakeXArmAPI()
        g.node = g.add(XArmDriverNode(XArmAdapter(g.api, "fake"), **g.node_kwargs(**FAST)))
        wait_until(lambda: g.cmd.get_subscription_count() > 0 and len(g.states) > 0, 10, "driver discovered")
        yield g
        g.caller.close()


def test_start_sequence_streams_newest_command_and_publishes_joint_states(rig):
    api = rig.api
    box = TcpBox(0.15, 0.7, -0.5, 0.5, 0.0, 0.3)
    assert api.calls[:8] == [("clean_warn", ()), ("clean_error", ()),
                             ("set_reduced_tcp_boundary", (box.boundary_mm(),)), ("set_fence_mode", (True,)),
                             ("set_reduced_mode", (True,)), ("motion_enable", (True,)), ("set_mode", (1,)),
                             ("set_state", (0,))]
    assert box.boundary_mm() == [700, 150, 500, -500, 300, 0]
    targets = [np.full(6, 0.01 * k) for k in range(1, 6)]
    for q in targets:
        rig.cmd.publish(command(q))
        time.sleep(0.03)
    wait_until(lambda: len(api.servo_targets()) and np.allclose(api.servo_targets()[-1], targets[-1]), 5, "stream")
    sent = api.servo_targets()
    assert all(len(s) == 6 for s in sent) and len(sent) <= len(targets)
    # Out-of-order names are mapped by name; NaN and a big jump are rejected, never sent.
    reordered = command(targets[-1] + 0.01)
    reordered.name, reordered.position = list(reversed(reordered.name)), list(reversed(reordered.position))
    rig.cmd.publish(reordered)
    wait_until(lambda: np.allclose(api.servo_targets()[-1], targets[-1] + 0.01), 5, "reordered command")
    n = len(api.servo_targets())
    rig.cmd.publish(command([np.nan] * 6))
    rig.cmd.publish(command(np.full(6, 1.0)))
    wait_until(lambda: rig.node.rejected >= 2, 5, "rejections")
    time.sleep(0.1)
    assert len(api.servo_targets()) == n
    rig.states.clear()
    wait_until(lambda: len(rig.states) > 5, 5, "joint states")
    js = rig.states.messages[-1]
    assert list(js.name) == list(JOINT_NAMES) and np.allclose(js.position, targets[-1] + 0.01)


def test_watchdog_reports_a_blocked_call_and_stops_on_a_long_block(rig):
    api, node = rig.api, rig.node
    # A 0.2 s block (as the SDK does): a stall is reported, newer commands queue as "newest only".
    api.block_s = 0.2
    rig.cmd.publish(command(np.full(6, 0.01)))
    assert api.block_started.wait(5)
    for k in range(2, 6):
        rig.cmd.publish(command(np.full(6, 0.01 * k)))
        time.sleep(0.02)
    wait_until(lambda: np.allclose(api.servo_targets()[-1], 0.05), 5, "newest command after the block")
    assert node.stalls == 1 and node.max_call_s >= 0.19 and not node.fault
    assert len(api.servo_targets()) == 2  # the blocked one and the newest: stale ones were skipped
    wait_until(lambda: last_status(rig.diag).level == DiagnosticStatus.WARN, 5, "stall warning")
    # Blocked past stall_limit: the watchdog stops the arm while the call is still blocked.
    api.block_started.clear()
    api.block_s = 1.5
    t0 = time.monotonic()
    rig.cmd.publish(command(np.full(6, 0.06)))
    assert api.block_started.wait(5)
    wait_until(lambda: ("set_state", (4,)) in api.calls, 5, "stop on a long block")
    assert time.monotonic() - t0 < 1.2  # before the blocked call returned
    assert "blocked" in node.fault
    wait_until(lambda: last_status(rig.diag).level == DiagnosticStatus.ERROR, 5, "fault reported")
    assert "blocked" in last_status(rig.diag).message


def test_controller_error_stops_reports_code_and_is_never_auto_cleared(rig):
    api, node = rig.api, rig.node
    rig.cmd.publish(command(np.full(6, 0.01)))
    wait_until(lambda: len(api.servo_targets()) == 1, 5, "first command")
    api.error_code = 22
    wait_until(lambda: ("set_state", (4,)) in api.calls, 5, "stop on controller error")
    wait_until(lambda: diagnostic_values(last_status(rig.diag)).get("error_code") == "22", 5, "error code reported")
    assert last_status(rig.diag).level == DiagnosticStatus.ERROR
    assert node.fault_code == 22 and "controller error 22" in node.fault
    for k in range(2, 8):  # commands keep coming: none is sent, nothing is cleared
        rig.cmd.publish(command(np.full(6, 0.01 * k)))
        time.sleep(0.1)
    assert len(api.servo_targets()) == 1
    assert api.names().count("clean_error") == 1 and api.names().count("set_state") == 2
    # Only the operator's explicit call clears it, once, and streaming resumes.
    resp = rig.caller.call(Trigger, "/xarm_driver_node/clear_error", Trigger.Request())
    assert resp.success, resp.message
    assert api.names().count("clean_error") == 2 and api.calls[-1] == ("set_state", (0,))
    assert not node.fault and node.fault_code == 0
    rig.cmd.publish(command(np.full(6, 0.02)))
    wait_until(lambda: len(api.servo_targets()) == 2, 5, "streaming after clear")


def test_emergency_stop_service_stops_and_blocks_streaming(rig):
    api = rig.api
    rig.cmd.publish(command(np.full(6, 0.01)))
    wait_until(lambda: len(api.servo_targets()) == 1, 5, "first command")
    resp = rig.caller.call(Trigger, "/xarm_driver_node/emergency_stop", Trigger.Request())
    assert resp.success and api.calls[-1] == ("set_state", (4,))
    rig.cmd.publish(command(np.full(6, 0.02)))
    time.sleep(0.3)
    assert len(api.servo_targets()) == 1
    assert rig.node.estopped
    wait_until(lambda: last_status(rig.diag).level == DiagnosticStatus.ERROR, 5, "e-stop reported")


def test_unreachable_arm_is_a_clear_error_at_start():
    # The real SDK against an address where nothing listens.
    with pytest.raises(XArmUnreachable, match="127.0.0.1"):
        XArmAdapter.connect("127.0.0.1", timeout=5.0)

    def hangs(ip: str):
        time.sleep(3.0)

    t0 = time.monotonic()
    with pytest.raises(XArmUnreachable, match="did not answer within 0.3 s"):
        XArmAdapter.connect("10.0.0.99", timeout=0.3, factory=hangs)
    assert time.monotonic() - t0 < 1.0
    with InProcessGraph(domain_id=DOMAIN) as g:
        with pytest.raises(NodeConfigError, match="xArm at '127.0.0.1' is unreachable"):
            XArmDriverNode(**g.node_kwargs(robot_ip="127.0.0.1", connect_timeout=5.0))
        with pytest.raises(NodeConfigError, match="stall_limit"):
            XArmDriverNode(XArmAdapter(FakeXArmAPI()), **g.node_kwargs(stall_limit=0.01))
        with pytest.raises(NodeConfigError, match="min < max"):
            XArmDriverNode(XArmAdapter(FakeXArmAPI()), **g.node_kwargs(tcp_boundary__x_min=0.9))
