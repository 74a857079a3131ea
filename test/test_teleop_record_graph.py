"""Teleoperated recording in simulation over real DDS: sim_node (push task, publishing /clock) + interpolator_node
+ teleop_node + recorder_node, all on sim time. A scripted teleoperator, the push oracle, reads the task state from
sim_node's ~/task_state and sends its targets through teleop_node's HTTP API (the path the page uses); it resets
the scene, starts, labels and stops the episode through the same API. The bag is read back with `rosbags`
(expected topics, types, plausible counts, setpoints inside the envelope that follow the oracle, metadata), and
`irvs ingest` turns it into a dataset on which IRvS trains a few steps."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import yaml
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore
from std_srvs.srv import Trigger

from irvs_ros.commands import ingest as ingest_cmd
from irvs_ros.data.bags import list_episodes
from irvs_ros.data.store import Dataset
from irvs_ros.nodes.graph import InProcessGraph, ServiceCaller
from irvs_ros.nodes.interpolator_node import InterpolatorNode
from irvs_ros.nodes.recorder_node import RecorderNode
from irvs_ros.nodes.sim_node import SimNode
from irvs_ros.nodes.teleop_node import TeleopNode
from irvs_ros.sim.push_oracle import PushOracle
from irvs_ros.sim.push_tasks import STATE_KEYS

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
sys.setswitchinterval(5e-4)  # several busy threads share the GIL; the 100 Hz loops need it promptly
DOMAIN = 90 + (os.getpid() % 5) * 2 + 1  # test_teleop_page.py uses the even domains of 90-99
SIM_PARAMS = {"task": "push", "seed": 4, "real_time_factor": 1.0, "image_width": 160, "image_height": 90,
              "camera_rate": 10.0}
EPISODE_S = 4.0  # sim seconds of teleoperation recorded
PERIOD = 0.2
STALL_AT, STALL_S = 8, 0.5  # mid-episode the recorder is blocked this long (wall s): it must catch up, not drop
TYPES = {"/camera/camera/color/image_raw": "sensor_msgs/msg/Image", "/irvs/setpoint": "geometry_msgs/msg/PoseStamped",
         "/joint_states": "sensor_msgs/msg/JointState", "/irvs/ee_pose": "geometry_msgs/msg/PoseStamped",
         "/irvs/episode": "std_msgs/msg/String"}


def wait_until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class TeleopAPI:
    """The teleop node's HTTP API, as the page uses it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"} if body is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return {"http_status": e.code, **json.loads(e.read())}

    def state(self) -> dict:
        return self._call("state")

    def target(self, xy: np.ndarray) -> dict:
        return self._call("target", {"x": float(xy[0]), "y": float(xy[1])})

    def episode(self, action: str) -> dict:
        answer = self._call(f"episode/{action}", {})
        assert answer.get("ok") is True, (action, answer)
        return answer


def task_state(caller: ServiceCaller) -> dict:
    resp = caller.call(Trigger, "/sim_node/task_state", Trigger.Request(), timeout=10.0)
    assert resp.success, resp.message
    return json.loads(resp.message)


def oracle_state(task: dict, setpoint: list[float]) -> np.ndarray:
    """push_tasks' state vector with the teleop setpoint as setpoint_xy (the oracle tracks its own commands)."""
    parts = dict(task["state"], setpoint_xy=setpoint)
    return np.concatenate([np.asarray(parts[k], dtype=np.float64).reshape(n) for k, n in STATE_KEYS])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_scripted_teleoperator_records_an_episode_that_ingests_and_trains(tmp_path):
    rec = tmp_path / "recordings"
    with InProcessGraph(domain_id=DOMAIN) as g:
        g.add(SimNode(**g.node_kwargs(**SIM_PARAMS)))
        g.add(InterpolatorNode(**g.node_kwargs(use_sim_time=True)))
        recorder = g.add(RecorderNode(**g.node_kwargs(use_sim_time=True, output_dir=str(rec), task="push",
                                                      operator="push_oracle")))
        teleop = g.add(TeleopNode(**g.node_kwargs(use_sim_time=True, port=0, terminal_keys="false")))
        api = TeleopAPI(teleop.url)
        caller = ServiceCaller(g.context)
        try:
            wait_until(lambda: (s := api.state())["setpoint"] is not None and all(s["services"].values())
                       and s["episode"] is not None, 40, "teleop to start from the effector pose and find the services")

            # Move the arm away from its start, then reset the scene through the page's path (sim paused, reset,
            # interpolator resynced, sim resumed): teleop restarts from the reset effector pose, not where it was.
            start = np.asarray(api.state()["setpoint"])
            first = task_state(caller)
            assert np.allclose(start, first["state"]["effector_xy"], atol=0.005), (start, first)
            moved = api.target(start + (0.06, 0.04))["target"]
            wait_until(lambda: np.allclose(api.state()["ee_pose"], moved, atol=0.003), 20, "the arm to move")
            answer = api.episode("reset")
            s = wait_until(lambda: (s := api.state())["setpoint"] is not None and s, 20, "teleop to restart")
            assert "restarting from the reset effector pose" in answer["message"], answer
            assert np.allclose(s["setpoint"], start, atol=0.002) and s["target"] == s["setpoint"], s
            # The simulated arm is (or, after at most a few ticks, settles) where teleop restarted.
            task = wait_until(lambda: (t := task_state(caller)) and np.allclose(t["state"]["effector_xy"], start,
                                                                               atol=0.005) and t,
                              20, "the arm to settle at the reset pose")
            block0 = np.array(task["state"]["block_xy"])

            api.episode("start")
            # The recorder's first episode opens its bag writer lazily: teleoperate once it records.
            wait_until(lambda: recorder.current is not None and recorder.current.counts["/irvs/setpoint"] > 0, 20,
                       "the recorder to record setpoints")
            oracle = PushOracle(control_period=PERIOD)
            t_start = api.state()["time"]
            t_next, sent = t_start, []
            while t_next < t_start + EPISODE_S:
                s = wait_until(lambda t=t_next: (s := api.state())["time"] >= t and s, 20, "sim time to advance")
                task = task_state(caller)
                delta = oracle({"state": oracle_state(task, s["setpoint"])})
                answer = api.target(np.asarray(s["setpoint"]) + delta)
                assert "target" in answer, answer
                sent.append(answer["target"])
                t_next += PERIOD
                if len(sent) == STALL_AT:
                    with recorder._lock:  # the recorder stalls (as on a slow disk) while the graph goes on
                        time.sleep(STALL_S)
            wait_until(lambda: api.state()["time"] >= t_start + EPISODE_S, 20, "the episode's end")
            api.episode("mark_success")
            api.episode("stop")
            final = task_state(caller)
        finally:
            caller.close()

    assert len(sent) >= int(EPISODE_S / PERIOD) - 1
    assert [(e.name, e.status) for e in list_episodes(rec)] == [("episode_0001", "complete")]
    bag = rec / "episode_0001"
    store = get_typestore(Stores.ROS2_JAZZY)
    msgs: dict[str, list] = {}
    stamps: dict[str, list[float]] = {}  # bag times: the recorder's clock (sim time) at receipt
    with Reader(bag) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == TYPES
        for conn, t_ns, raw in reader.messages():
            msgs.setdefault(conn.topic, []).append(store.deserialize_cdr(raw, conn.msgtype))
            stamps.setdefault(conn.topic, []).append(t_ns * 1e-9)
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    info = json.loads(meta["custom_data"]["irvs.episode"])
    assert (info["task"], info["outcome"], info["operator"]) == ("push", "success", "push_oracle")
    duration = info["end_time"] - info["start_time"]  # sim seconds (the recorder runs on sim time)
    assert EPISODE_S - 0.1 <= duration <= EPISODE_S + 5.0, duration  # 0.1: the nodes' clocks may differ a little
    outside = {k: [t for t in ts if not info["start_time"] <= t <= info["end_time"]] for k, ts in stamps.items()}
    assert not any(outside.values()), (info, outside)
    counts = {t: len(m) for t, m in msgs.items()}
    assert counts["/irvs/episode"] == 3  # start, label, end
    # Rates on sim time, from the messages' own header stamps: setpoints 5 Hz, joint states and poses 100 Hz,
    # camera 10 Hz. Bounds, not exact counts: a busy recorder keeps only the newest 10 of a topic (the QoS
    # depth) and the camera is best effort. Every topic covers most of the episode.
    for topic, rate, least in (("/irvs/setpoint", 5, 0.9), ("/joint_states", 100, 0.6), ("/irvs/ee_pose", 100, 0.6),
                               ("/camera/camera/color/image_raw", 10, 0.5)):
        t = np.array([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in msgs[topic]])
        span = t[-1] - t[0]
        assert span >= EPISODE_S - 0.5 and np.all(np.diff(t) > 0), (topic, span)
        assert np.median(np.diff(t)) == pytest.approx(1 / rate, rel=0.1), topic
        assert least * rate * span <= counts[topic] <= rate * span + 2, (topic, counts[topic], span)
    # The sim publishes joint states every 10 ms of sim time: the stalled recorder lost none of them.
    t = np.array([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in msgs["/joint_states"]])
    assert np.max(np.diff(t)) < 0.015, ("joint states lost while the recorder stalled", np.max(np.diff(t)))
    img = msgs["/camera/camera/color/image_raw"][-1]
    assert (img.width, img.height, img.encoding) == (160, 90, "rgb8")

    # Setpoints: in the base frame at the effector height, inside the envelope, steps within its limit, and
    # following the oracle: the effector went from its start to the block and pushed it.
    sp = np.array([[m.pose.position.x, m.pose.position.y] for m in msgs["/irvs/setpoint"]])
    assert all(m.header.frame_id == "link_base" and m.pose.position.z == pytest.approx(0.06)
               for m in msgs["/irvs/setpoint"])
    assert np.all(np.abs(np.diff(sp, axis=0)) <= 0.1 + 1e-9)
    assert np.all((sp[:, 0] >= 0.15 - 1e-9) & (sp[:, 0] <= 0.7 + 1e-9) & (np.abs(sp[:, 1]) <= 0.5 + 1e-9))
    ee = np.array([[m.pose.position.x, m.pose.position.y] for m in msgs["/irvs/ee_pose"]])
    assert np.linalg.norm(ee[-1] - ee[0]) > 0.05, (ee[0], ee[-1])
    assert np.min(np.linalg.norm(ee - block0, axis=1)) < 0.06, "the effector never came near the block"
    assert np.linalg.norm(np.array(final["state"]["effector_xy"]) - ee[-1]) < 0.03
    assert np.linalg.norm(np.array(final["state"]["block_xy"]) - block0) > 0.01, "the block did not move"

    # irvs ingest: one successful episode, sampled at 5 Hz, that trains.
    parser = argparse.ArgumentParser()
    ingest_cmd.add_arguments(parser)
    out = tmp_path / "teleop.h5"
    assert ingest_cmd.run(parser.parse_args([str(rec), "--out", str(out), "--image-size", "40x30"])) == 0
    ds = Dataset.open(out)
    assert ds.num_episodes == 1 and ds.success.tolist() == [True]
    arrays = ds.arrays()
    n = ds.num_steps
    # Samples at 5 Hz of the recorder's clock from the first setpoint to the last message.
    span = max(ts[-1] for ts in stamps.values()) - stamps["/irvs/setpoint"][0]
    assert 5 * span - 3 <= n <= 5 * span, (n, span)
    assert arrays["image"].shape == (n, 30, 40, 3) and arrays["state"].shape == (n, 4)
    assert np.all(np.abs(arrays["action"]) <= 0.1 + 1e-6) and np.abs(arrays["action"]).sum() > 0.05
    assert arrays["reward"].tolist() == [0.0] * (n - 1) + [1.0]

    from irvs_ros.learn.train_config import config_from_dict
    from irvs_ros.learn.trainer import train

    result = train(config_from_dict({
        "dataset": str(out), "algorithm": "irvs", "steps": 3, "batch_size": 4, "device": "cpu",
        "params": {"width": 16, "depth": 2, "method": "dfo", "num_counter_examples": 8, "dfo_samples": 64},
        "log_every": 1, "checkpoint_every": 3}), tmp_path / "run")
    assert result.step == 3 and np.isfinite(result.train_metrics["loss"])
