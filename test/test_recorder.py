"""recorder_node over real DDS: a test publisher graph + the recorder record episodes that `rosbags` reads back
with the expected topics, types, counts, contents and metadata; labels and discards; a recorder process killed
with SIGKILL mid-episode leaves every finished episode complete and the interrupted one marked `.partial`;
`irvs ingest` turns the recorded bags into a dataset that trains one step."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from irvs_ros.commands import ingest as ingest_cmd
from irvs_ros.data.bags import list_episodes, read_episode_info
from irvs_ros.data.store import Dataset
from irvs_ros.nodes.common import COMMAND_QOS, SENSOR_QOS, NodeConfigError, stamp_of
from irvs_ros.nodes.graph import InProcessGraph, ServiceCaller, TopicLog
from irvs_ros.nodes.image_ops import image_msg
from irvs_ros.nodes.recorder_node import RecorderNode

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
# Domains 1-8, apart from the other node tests (10-99 camera / xarm, 100-219 sim / interpolator / policy, 220+ launch).
DOMAIN = 1 + (os.getpid() % 4) * 2  # this module uses DOMAIN and DOMAIN + 1 (the killed process)

IMAGE, SETPOINT, JOINTS, EE = ("/camera/camera/color/image_raw", "/irvs/setpoint", "/joint_states", "/irvs/ee_pose")
TYPES = {IMAGE: "sensor_msgs/msg/Image", SETPOINT: "geometry_msgs/msg/PoseStamped",
         JOINTS: "sensor_msgs/msg/JointState", EE: "geometry_msgs/msg/PoseStamped",
         "/irvs/episode": "std_msgs/msg/String"}
SP_STEP = np.array([0.01, -0.005])
ROUND = 0.02  # s between publishing rounds: 50 Hz images / joints / poses, setpoints every 10th round (5 Hz)


class Publisher:
    """A small node publishing synthetic camera frames, setpoints, joint states and effector poses."""

    def __init__(self, graph: InProcessGraph, name: str = "fake_robot") -> None:
        self.node = graph.add(Node(name, context=graph.context))
        self.pubs = {IMAGE: self.node.create_publisher(Image, IMAGE, SENSOR_QOS),
                     SETPOINT: self.node.create_publisher(PoseStamped, SETPOINT, COMMAND_QOS),
                     JOINTS: self.node.create_publisher(JointState, JOINTS, COMMAND_QOS),
                     EE: self.node.create_publisher(PoseStamped, EE, COMMAND_QOS)}
        self.frame = 0
        self.setpoint_index = 0
        self.sent = dict.fromkeys(self.pubs, 0)

    def wait_matched(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(p.get_subscription_count() for p in self.pubs.values()):
            assert time.monotonic() < deadline, "DDS discovery did not match the publisher and the recorder"
            time.sleep(0.02)

    @staticmethod
    def pose(x: float, y: float) -> PoseStamped:
        msg = PoseStamped()
        msg.header.frame_id = "link_base"
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = float(x), float(y), 0.06
        msg.pose.orientation.w = 1.0
        return msg

    def run(self, rounds: int) -> None:
        """Publish `rounds` rounds at ROUND s, paced on absolute deadlines."""
        next_t = time.monotonic()
        for r in range(rounds):
            rgb = np.zeros((48, 64, 3), np.uint8)
            rgb[..., 0] = self.frame % 256
            rgb[:, :32, 1] = 255
            self.pubs[IMAGE].publish(image_msg(rgb, stamp_of(time.time()), "camera_color_optical_frame"))
            js = JointState(name=[f"joint{i}" for i in range(1, 7)], position=[0.1 * self.frame] * 6)
            self.pubs[JOINTS].publish(js)
            self.pubs[EE].publish(self.pose(0.4 + 0.001 * self.frame, 0.0))
            self.frame += 1
            for topic in (IMAGE, JOINTS, EE):
                self.sent[topic] += 1
            if r % 10 == 0:
                self.pubs[SETPOINT].publish(self.pose(*(np.array([0.4, 0.0]) + self.setpoint_index * SP_STEP)))
                self.setpoint_index += 1
                self.sent[SETPOINT] += 1
            next_t += ROUND
            time.sleep(max(0.0, next_t - time.monotonic()))


def call(caller: ServiceCaller, name: str) -> Trigger.Response:
    return caller.call(Trigger, f"/recorder_node/{name}", Trigger.Request(), timeout=10.0)


def read_bag(path: Path) -> tuple[dict, dict[str, list]]:
    """(metadata.yaml rosbag2 information, topic -> deserialized messages) read with rosbags directly."""
    store = get_typestore(Stores.ROS2_JAZZY)
    msgs: dict[str, list] = {}
    with Reader(path) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        for conn, _t, raw in reader.messages():
            msgs.setdefault(conn.topic, []).append(store.deserialize_cdr(raw, conn.msgtype))
    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert types == TYPES
    return meta, msgs


def wait_counts(node: RecorderNode, expected: dict[str, int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        counts = dict(node.current.counts)
        if all(counts[t] >= n for t, n in expected.items()):
            return
        assert time.monotonic() < deadline, f"recorder got {counts}, expected {expected}"
        time.sleep(0.02)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def graph():
    with InProcessGraph(domain_id=DOMAIN) as g:
        yield g


def test_records_labels_and_discards_episodes(graph, tmp_path):
    rec = tmp_path / "recordings"
    recorder = graph.add(RecorderNode(**graph.node_kwargs(output_dir=str(rec), task="push", operator="alice")))
    pub = Publisher(graph)
    episode_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
    episodes = TopicLog(pub.node, String, "/irvs/episode", episode_qos)
    caller = ServiceCaller(graph.context)
    try:
        pub.wait_matched()
        assert episodes.wait_for(1, 5.0) and json.loads(episodes.messages[-1].data)["recording"] is False
        pub.run(5)  # before ~/start: not recorded
        time.sleep(0.2)
        resp = call(caller, "start")
        assert resp.success and "episode_0001" in resp.message
        assert not call(caller, "start").success  # already recording
        sent0 = dict(pub.sent)
        pub.run(75)
        expected = {t: pub.sent[t] - sent0[t] for t in pub.sent}
        wait_counts(recorder, {t: n for t, n in expected.items() if t != IMAGE})
        wait_counts(recorder, {IMAGE: expected[IMAGE] - 3})  # images are best effort (sensor QoS)
        assert call(caller, "mark_success").success
        deadline = time.monotonic() + 5.0  # the service answers before /irvs/episode arrives
        while json.loads(episodes.messages[-1].data).get("outcome") != "success":
            assert time.monotonic() < deadline, episodes.messages[-1].data
            time.sleep(0.01)
        assert json.loads(episodes.messages[-1].data)["recording"] is True
        resp = call(caller, "stop")
        assert resp.success, resp.message
        pub.run(5)  # after ~/stop: not recorded

        # Episode 2: labelled a failure only after it ended; episode 3: discarded while recording.
        assert call(caller, "start").success
        pub.run(60)
        time.sleep(0.3)
        assert call(caller, "stop").success and not call(caller, "stop").success
        assert call(caller, "mark_failure").success
        assert call(caller, "start").success
        pub.run(10)
        resp = call(caller, "discard")
        assert resp.success and "discarded" in resp.message
        assert not call(caller, "discard").success  # nothing left to discard (episode 2 was not the last finished)
    finally:
        caller.close()
        graph.remove(pub.node)
        graph.remove(recorder)

    assert [(e.name, e.status) for e in list_episodes(rec)] == [
        ("episode_0001", "complete"), ("episode_0002", "complete"), ("episode_0003", "discarded")]
    meta, msgs = read_bag(rec / "episode_0001")
    counts = {t["topic_metadata"]["name"]: t["message_count"] for t in meta["topics_with_message_count"]}
    assert counts[SETPOINT] == expected[SETPOINT] == 8 and counts[JOINTS] == expected[JOINTS] == 75
    assert counts[EE] == 75 and expected[IMAGE] - 3 <= counts[IMAGE] <= expected[IMAGE]
    assert counts["/irvs/episode"] == 3  # start, label, end
    assert {t: len(m) for t, m in msgs.items()} == counts and meta["storage_identifier"] == "mcap"
    # Contents: the first recorded messages are the first ones sent after ~/start.
    first_sp = msgs[SETPOINT][0].pose.position
    assert (first_sp.x, first_sp.y) == pytest.approx(tuple(np.array([0.4, 0.0]) + 1 * SP_STEP))
    img = msgs[IMAGE][0]
    assert (img.height, img.width, img.encoding, len(img.data)) == (48, 64, "rgb8", 48 * 64 * 3)
    assert msgs[JOINTS][0].name == [f"joint{i}" for i in range(1, 7)]
    custom = json.loads(meta["custom_data"]["irvs.episode"])
    assert (custom["name"], custom["task"], custom["operator"], custom["outcome"]) == (
        "episode_0001", "push", "alice", "success")
    assert 1.4 < custom["end_time"] - custom["start_time"] < 10.0
    assert json.loads(msgs["/irvs/episode"][-1].data) == custom
    assert [json.loads(m.data)["outcome"] for m in msgs["/irvs/episode"]] == ["unlabeled", "success", "success"]
    assert read_episode_info(rec / "episode_0002").outcome == "failure"
    assert read_episode_info(rec / "episode_0003.discarded" / "episode_0003").outcome == "discarded"

    # irvs ingest: the two kept episodes -> a dataset that opens with the right shapes and trains.
    parser = argparse.ArgumentParser()
    ingest_cmd.add_arguments(parser)
    out = tmp_path / "ds.h5"
    assert ingest_cmd.run(parser.parse_args([str(rec), "--out", str(out), "--image-size", "40x30"])) == 0
    ds = Dataset.open(out)
    assert ds.num_episodes == 2 and ds.success.tolist() == [True, False]
    arrays = ds.arrays()
    n = ds.num_steps
    assert arrays["image"].shape == (n, 30, 40, 3) and arrays["state"].shape == (n, 4)
    assert arrays["action"].shape == (n, 2) and 8 <= n <= 14
    # Frames (64x48, left half green, red = frame number) resized to 40x30: the left 20 columns stay green, and
    # the sampled frames advance (newest frame at each 5 Hz sample, about 10 frames apart).
    assert np.all(arrays["image"][:, :, :20, 1] == 255) and np.all(arrays["image"][:, :, 20:, 1] == 0)
    red = arrays["image"][:, 0, 0, 0].astype(int)
    assert np.all(np.diff(red) > 0) and 5 <= np.median(np.diff(red)) <= 15
    # Actions are setpoint deltas: 0, 1 or 2 steps of the published increment, mostly exactly one.
    k = arrays["action"] / SP_STEP
    assert np.allclose(k, np.round(k), atol=1e-3) and set(np.round(k[:, 0]).tolist()) <= {0.0, 1.0, 2.0}
    assert np.mean(np.isclose(k[:, 0], 1.0, atol=1e-3)) >= 0.7
    assert arrays["reward"][ds.episode_ends - 1].tolist() == [1.0, 0.0]

    from irvs_ros.learn.train_config import config_from_dict
    from irvs_ros.learn.trainer import train

    result = train(config_from_dict({"dataset": str(out), "algorithm": "mse", "steps": 1, "batch_size": 4,
                                     "device": "cpu", "params": {"width": 8, "depth": 2, "dropout": 0.0},
                                     "log_every": 1, "checkpoint_every": 1}), tmp_path / "run")
    assert result.step == 1 and np.isfinite(result.train_metrics["loss"])


def test_sigkill_mid_episode_leaves_finished_episodes_intact(tmp_path):
    rec = tmp_path / "recordings"
    env = {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN + 1)}
    proc = subprocess.Popen([sys.executable, "-m", "irvs_ros.nodes.recorder_node", "--ros-args", "-p",
                             f"output_dir:={rec}", "-p", "operator:=bob"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with InProcessGraph(domain_id=DOMAIN + 1) as g:
            pub = Publisher(g, "fake_robot_2")
            caller = ServiceCaller(g.context)
            try:
                pub.wait_matched(timeout=40.0)
                assert call(caller, "start").success
                sent0 = dict(pub.sent)
                pub.run(40)
                time.sleep(1.0)  # reliable topics: everything sent has arrived before ~/stop
                assert call(caller, "mark_success").success and call(caller, "stop").success
                expected = {t: pub.sent[t] - sent0[t] for t in pub.sent}
                assert call(caller, "start").success
                pub.run(30)
                time.sleep(0.3)
                os.kill(proc.pid, signal.SIGKILL)  # mid-episode, with the MCAP file open
                assert proc.wait(timeout=10) == -signal.SIGKILL
            finally:
                caller.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert [(e.name, e.status) for e in list_episodes(rec)] == [("episode_0001", "complete"),
                                                                ("episode_0002", "partial")]
    assert not (rec / "episode_0002").exists() and (rec / "episode_0002.partial").is_dir()
    assert not (rec / "episode_0002.partial" / "episode_0002" / "metadata.yaml").exists()
    meta, msgs = read_bag(rec / "episode_0001")
    counts = {t["topic_metadata"]["name"]: t["message_count"] for t in meta["topics_with_message_count"]}
    assert {t: len(m) for t, m in msgs.items()} == counts
    # The bag is complete and self-consistent (counts above); how many 100 Hz messages arrive before the
    # subscription is matched depends on DDS discovery under load, so those counts are bounded, not exact.
    assert counts[SETPOINT] == expected[SETPOINT] == 4
    assert 1 <= counts[JOINTS] <= expected[EE] == 40 and 1 <= counts[EE] <= 40
    assert 1 <= counts[IMAGE] <= expected[IMAGE]  # best effort (sensor QoS): bounded, as above
    info = read_episode_info(rec / "episode_0001")
    assert (info.operator, info.outcome) == ("bob", "success")
    before = {p: p.read_bytes() for p in (rec / "episode_0001").iterdir()}

    # A new recorder on the same folder never reuses the interrupted episode's name nor touches finished ones.
    with InProcessGraph(domain_id=DOMAIN + 1) as g:
        recorder = g.add(RecorderNode(**g.node_kwargs(output_dir=str(rec))))
        caller = ServiceCaller(g.context)
        try:
            assert "episode_0003" in call(caller, "start").message
            assert call(caller, "stop").success
        finally:
            caller.close()
            g.remove(recorder)
    assert {p: p.read_bytes() for p in (rec / "episode_0001").iterdir()} == before
    assert (rec / "episode_0003" / "metadata.yaml").exists()


def test_bad_parameters_are_clear(graph, tmp_path):
    with pytest.raises(NodeConfigError, match="name_prefix.*letters, digits"):
        RecorderNode(**graph.node_kwargs(output_dir=str(tmp_path), name_prefix="a b"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NodeConfigError, match="cannot create output_dir"):
        RecorderNode(**graph.node_kwargs(output_dir=str(tmp_path / "file" / "sub")))


def test_stop_writes_the_backlog_of_a_recorder_that_fell_behind(graph, tmp_path):
    """A recorder stalled (slow disk, starved CPU) while the robot publishes has a backlog queued when ~/stop is
    served: the episode keeps every reliable message sent before the stop, none of those after."""
    import threading

    rec = tmp_path / "recordings"
    recorder = graph.add(RecorderNode(**graph.node_kwargs(output_dir=str(rec), name_prefix="lag")))
    pub = Publisher(graph, "fake_robot_lag")
    caller = ServiceCaller(graph.context)
    try:
        pub.wait_matched()
        assert call(caller, "start").success
        sent0 = dict(pub.sent)
        pub.run(20)
        wait_counts(recorder, {JOINTS: 20, EE: 20, SETPOINT: 2})
        answer: list[Trigger.Response] = []
        with recorder._lock:  # the recorder stalls: its executor blocks, the messages below queue up
            pub.run(50)
            stopper = threading.Thread(target=lambda: answer.append(call(caller, "stop")))
            stopper.start()
            time.sleep(0.3)  # ~/stop is queued behind the stall too
        stopper.join(timeout=15.0)
        expected = {t: pub.sent[t] - sent0[t] for t in pub.sent}
        pub.run(5)  # after ~/stop: not recorded
    finally:
        caller.close()
        graph.remove(pub.node)
        graph.remove(recorder)
    assert answer and answer[0].success, answer
    meta, msgs = read_bag(rec / "lag_0001")
    counts = {t["topic_metadata"]["name"]: t["message_count"] for t in meta["topics_with_message_count"]}
    assert (counts[JOINTS], counts[EE], counts[SETPOINT]) == (expected[JOINTS], expected[EE], expected[SETPOINT]) \
        == (70, 70, 7), (counts, expected)
    positions = [m.position[0] for m in msgs[JOINTS]]
    assert np.all(np.diff(positions) > 0)  # in the order sent
