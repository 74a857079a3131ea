"""Control-loop timing statistics (nodes.loop_timing), real-time scheduling (nodes.realtime), and the interpolator
reporting them over DDS: period error / lateness / work since start, setpoints applied vs superseded, and
`~/reset_statistics`."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from std_srvs.srv import Trigger

from irvs_ros.nodes.common import COMMAND_QOS, diagnostic_values
from irvs_ros.nodes.graph import InProcessGraph, ServiceCaller, TopicLog
from irvs_ros.nodes.interpolator_node import InterpolatorNode
from irvs_ros.nodes.loop_timing import LoopTiming, LoopTimingError
from irvs_ros.nodes.realtime import RealtimeError, fifo_priority_range, freeze_gc, is_fifo, set_fifo

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
sys.setswitchinterval(5e-4)
DOMAIN = 220 + (os.getpid() + 7) % 13  # test_launch_bringup's range, another residue: its bring-ups are brief


def test_period_error_lateness_and_work_percentiles():
    t = LoopTiming(0.01, resolution=1e-5, limit=0.05)
    deadlines = 0.01 * np.arange(1, 401)
    late = np.full(400, 50e-6)
    late[50] = 2.5e-3   # one tick 2.5 ms late: two period errors of ~2.45 ms (late, then back on time)
    late[120] = 0.08    # one beyond the histogram (overflow bin): two errors of ~80 ms, the max exactly
    for d, lt in zip(deadlines, late, strict=True):
        t.tick(d, d + lt, d + lt + 0.3e-3)
    s = t.summary()
    assert s["timed_ticks"] == 400
    assert s["period_error_p50_ms"] == pytest.approx(0.01, abs=0.011)  # float noise around 0, one 10 us bin
    assert s["period_error_max_ms"] == pytest.approx(80.0 - 0.05, abs=1e-6)
    assert s["period_error_over_1ms"] == 4 and s["period_error_over_5ms"] == 2
    assert s["period_error_p99_ms"] == pytest.approx(2.455, abs=0.011)  # 4 of 399 errors large: 2 above p99
    assert s["wake_lateness_p50_ms"] == pytest.approx(0.055, abs=0.006)  # an edge of the 50 us bin
    assert s["wake_lateness_max_ms"] == pytest.approx(80.0)
    assert s["work_p99_ms"] == pytest.approx(0.305, abs=0.006) and s["work_max_ms"] == pytest.approx(0.3)


def test_a_skip_restarts_the_period_sequence():
    t = LoopTiming(0.01)
    t.tick(0.01, 0.01, 0.011)
    t.skip()  # the loop skipped ahead: the next interval is not a period
    t.tick(0.5, 0.5, 0.501)
    t.tick(0.51, 0.5102, 0.511)
    assert t.period_error.count == 1 and t.summary()["period_error_max_ms"] == pytest.approx(0.2)
    assert math.isnan(LoopTiming(0.01).summary()["period_error_p99_ms"])  # no tick yet
    with pytest.raises(LoopTimingError, match="period must be a finite number of seconds > 0, got 0"):
        LoopTiming(0)
    with pytest.raises(LoopTimingError, match="need 0 < resolution < limit"):
        LoopTiming(0.01, resolution=0.1, limit=0.05)


def test_fifo_scheduling_of_a_thread_or_a_clear_reason():
    low, high = fifo_priority_range()
    with pytest.raises(RealtimeError, match=rf"priority must be in \[{low}, {high}\], got {high + 1}"):
        set_fifo(high + 1)
    result: dict[str, object] = {}

    def worker() -> None:  # its own thread: the test process keeps its scheduling
        try:
            result["set"] = set_fifo(low)
            result["fifo"] = is_fifo()
        except RealtimeError as e:
            result["error"] = str(e)

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    if "error" in result:  # an unprivileged machine: the reason says what is needed
        assert "not permitted" in str(result["error"]) and "CAP_SYS_NICE" in str(result["error"])
    else:
        assert result == {"set": f"SCHED_FIFO {low}", "fifo": True}
    assert not is_fifo()
    assert freeze_gc() > 1000


def test_process_fifo_covers_threads_started_before_and_after():
    code = ("import os, threading, time\n"
            "from irvs_ros.nodes.realtime import RealtimeError, set_process_fifo\n"
            "ids = []\n"
            "before = threading.Thread(target=lambda: (ids.append(threading.get_native_id()), time.sleep(1)))\n"
            "before.start(); time.sleep(0.1)\n"
            "try:\n    print(set_process_fifo(1))\n"
            "except RealtimeError as e:\n    print('refused', e); raise SystemExit\n"
            "after = threading.Thread(target=lambda: ids.append(os.sched_getscheduler(0)))\n"
            "after.start(); after.join()\n"
            "print(os.sched_getscheduler(ids[0]) == os.SCHED_FIFO, ids[1] == os.SCHED_FIFO)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    if lines[0].startswith("refused"):
        assert "not permitted" in lines[0]
    else:
        assert lines[0].startswith("SCHED_FIFO 1 (") and lines[1] == "True True", out.stdout


def test_interpolator_reports_loop_timing_and_setpoint_counts():
    with InProcessGraph(domain_id=DOMAIN) as g:
        node = g.add(InterpolatorNode(**g.node_kwargs(use_sim_time=False, start_from_joint_states=False,
                                                      start_xy=[0.4, 0.0], diagnostics_period=0.3)))
        probe = g.add(Node("probe", context=g.context))
        pub = probe.create_publisher(PoseStamped, "/irvs/setpoint", COMMAND_QOS)
        diags = TopicLog(probe, DiagnosticArray, "/diagnostics", 50)
        caller = ServiceCaller(g.context)
        try:
            deadline = time.monotonic() + 15
            while not (node.running and pub.get_subscription_count()):
                assert time.monotonic() < deadline, f"interpolator not running: {node.error}"
                time.sleep(0.02)

            def setpoint(x: float) -> PoseStamped:
                msg = PoseStamped()
                msg.pose.position.x, msg.pose.position.y = x, 0.0
                return msg

            for i in range(5):  # 5 Hz: each is taken by a tick
                pub.publish(setpoint(0.4 + 0.005 * i))
                time.sleep(0.2)

            def last() -> dict[str, str]:
                statuses = [s for d in diags.messages for s in d.status if "interpolator_node" in s.name]
                return diagnostic_values(statuses[-1]) if statuses else {}

            def settled(pred) -> dict[str, str]:
                deadline = time.monotonic() + 10
                while not pred(last()):
                    assert time.monotonic() < deadline, last()
                    time.sleep(0.05)
                return last()

            d = settled(lambda v: v.get("setpoints_applied") == "5")
            assert d["setpoints_received"] == "5" and d["setpoints_superseded"] == "0"
            assert int(d["timed_ticks"]) >= 50 and float(d["period_error_max_ms"]) >= 0
            # The loop's work and its period error: a tick is milliseconds of work, its period 10 ms on average.
            assert 0 < float(d["work_p50_ms"]) < 10 and float(d["period_error_p50_ms"]) < 5
            assert d["realtime"].startswith(("loop SCHED_FIFO 20", "off (")), d["realtime"]  # a thread, not the process
            resp = caller.call(Trigger, "/interpolator_node/reset_statistics", Trigger.Request())
            assert resp.success
            d = settled(lambda v: v.get("setpoints_applied") == "0" and int(v.get("timed_ticks", "0")) < 80)
            assert d["setpoints_received"] == "0" and d["overruns"] == "0"
            assert node.setpoints_applied == 0 and node.timing.ticks < 80
        finally:
            caller.close()
