"""teleop_node's page in real headless Chromium (Debian `chromium` driven by Playwright) against the running node
over real DDS, with a recorder_node and a probe node (a fake arm whose effector follows the setpoints, and a
camera): a mouse drag on the workspace canvas moves the published /irvs/setpoint in the dragged direction, arrow
keys nudge it, the Start / Stop buttons and the keyboard shortcuts start, label, stop and discard recorder episodes
(bags appear, /irvs/episode and the page's counter show them), the camera view shows the probe's frame, and a
missing service (no sim: reset) is a clear error on the page. Also without a browser: the PNG encoder, the terminal
key parser and reader (on a pty), and the HTTP API's answers to bad requests."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from irvs_ros.data.bags import list_episodes, read_episode_info
from irvs_ros.nodes.common import COMMAND_QOS, SENSOR_QOS, NodeConfigError, diagnostic_values, stamp_of
from irvs_ros.nodes.graph import InProcessGraph, TopicLog
from irvs_ros.nodes.image_ops import ImageError, image_msg
from irvs_ros.nodes.recorder_node import RecorderNode
from irvs_ros.nodes.teleop_node import TeleopNode, TerminalKeyReader, TerminalKeys, encode_png

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
# Domains 90-99 (apart from the other node tests: 1-8, 10-89, 100-219, 220+): this module DOMAIN, the teleop
# graph test DOMAIN + 1.
DOMAIN = 90 + (os.getpid() % 5) * 2
CHROMIUM = "/usr/bin/chromium"
START = (0.4, 0.0)
FRAME_HW = (48, 64)
LOG_QOS = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
EPISODE_LOG_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)


def wait_until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def frame() -> np.ndarray:
    """The probe's camera frame: (200, 30, 90) everywhere, a green 8x8 block at the top left."""
    rgb = np.empty((*FRAME_HW, 3), np.uint8)
    rgb[...] = (200, 30, 90)
    rgb[:8, :8] = (0, 255, 0)
    return rgb


class FakeArm:
    """Probe node: effector pose = the newest setpoint (perfect tracking; START before any), camera frames."""

    def __init__(self, graph: InProcessGraph) -> None:
        self.node = graph.add(Node("fake_arm", context=graph.context))
        self.ee_pub = self.node.create_publisher(PoseStamped, "/irvs/ee_pose", COMMAND_QOS)
        self.image_pub = self.node.create_publisher(Image, "/camera/camera/color/image_raw", SENSOR_QOS)
        self.setpoints = TopicLog(self.node, PoseStamped, "/irvs/setpoint", LOG_QOS)
        self.episodes = TopicLog(self.node, String, "/irvs/episode", EPISODE_LOG_QOS)
        self.diagnostics = TopicLog(self.node, DiagnosticArray, "/diagnostics", 50)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rgb, i = frame(), 0
        while not self._stop.wait(0.05):
            msgs = self.setpoints.messages
            x, y = (msgs[-1].pose.position.x, msgs[-1].pose.position.y) if msgs else START
            pose = PoseStamped()
            pose.header.stamp = self.node.get_clock().now().to_msg()
            pose.header.frame_id = "link_base"
            pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = x, y, 0.06
            self.ee_pub.publish(pose)
            if i % 2 == 0:
                self.image_pub.publish(image_msg(rgb, stamp_of(time.time()), "camera_color_optical_frame"))
            i += 1

    def last_setpoint(self) -> np.ndarray | None:
        msgs = self.setpoints.messages
        return np.array([msgs[-1].pose.position.x, msgs[-1].pose.position.y]) if msgs else None

    def episode(self) -> dict:
        msgs = self.episodes.messages
        return json.loads(msgs[-1].data) if msgs else {}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


def request(url: str, method: str = "GET", body: object = None, headers: dict | None = None) -> tuple[int, object]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            raw, status, ctype = resp.read(), resp.status, resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raw, status, ctype = e.read(), e.code, e.headers.get("Content-Type", "")
    return status, (json.loads(raw) if ctype.startswith("application/json") else raw)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    rec = tmp_path_factory.mktemp("teleop_page") / "recordings"
    with InProcessGraph(domain_id=DOMAIN) as g:
        g.rec = rec
        g.recorder = g.add(RecorderNode(**g.node_kwargs(output_dir=str(rec), task="push", operator="page-test")))
        g.teleop = g.add(TeleopNode(**g.node_kwargs(port=0, terminal_keys="false", service_timeout=5.0)))
        g.arm = FakeArm(g)
        try:
            yield g
        finally:
            g.arm.close()


# ------------------------------------------------------------------------------------------ without a browser


def test_png_encoder_writes_valid_png():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    png = encode_png(rgb)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, i = {}, 8
    while i < len(png):
        (n,) = struct.unpack(">I", png[i:i + 4])
        tag, data, (crc,) = png[i + 4:i + 8], png[i + 8:i + 8 + n], struct.unpack(">I", png[i + 8 + n:i + 12 + n])
        assert crc == zlib.crc32(tag + data) & 0xFFFFFFFF, tag
        chunks[tag] = data
        i += 12 + n
    assert list(chunks) == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[b"IHDR"]) == (7, 5, 8, 2, 0, 0, 0)
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(5, 1 + 7 * 3)
    assert np.all(rows[:, 0] == 0) and np.array_equal(rows[:, 1:].reshape(5, 7, 3), rgb)
    with pytest.raises(ImageError, match=r"\(H, W, 3\) uint8"):
        encode_png(np.zeros((4, 4), np.uint8))


def test_terminal_keys_map_bytes_to_actions():
    keys = TerminalKeys()
    assert keys.feed(b"\x1b[A\x1b[Bhjkl") == ["up", "down", "left", "down", "up", "right"]
    assert keys.feed(b" sfdrxq") == ["toggle", "mark_success", "mark_failure", "discard", "reset"]
    # An escape sequence split across reads, application-mode arrows, and a lone ESC before a key.
    assert keys.feed(b"\x1b") == [] and keys.feed(b"[") == [] and keys.feed(b"D") == ["left"]
    assert keys.feed(b"\x1bOC\x1bs") == ["right", "mark_success"]


def test_terminal_reader_dispatches_keys_from_a_tty():
    master, slave = os.openpty()
    got: list[str] = []
    with os.fdopen(slave, "rb", buffering=0) as stream:
        reader = TerminalKeyReader(got.append, stream)
        try:
            os.write(master, b"\x1b[Ck s")
            wait_until(lambda: len(got) >= 4, 5.0, "terminal keys")
            assert got == ["right", "up", "toggle", "mark_success"]
        finally:
            reader.close()
    os.close(master)


def test_http_api_answers_bad_requests_clearly(graph):
    url = graph.teleop.url
    assert graph.teleop.port > 0 and url == f"http://127.0.0.1:{graph.teleop.port}/"
    status, body = request(url + "target", "POST", {"x": "far", "y": 0.0})
    assert status == 400 and "finite number" in body["error"]
    status, body = request(url + "target", "POST", {"x": 0.4})
    assert status == 400 and '{"x": m, "y": m}' in body["error"]
    status, body = request(url + "target", "POST", b"x=1", {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and "must be JSON" in body["error"]
    status, body = request(url + "action/fly", "POST", {})
    assert status == 400 and "unknown action 'fly'" in body["error"]
    status, body = request(url + "nothing")
    assert status == 404
    # Only loopback Host names are served (a page of another site resolving its name to 127.0.0.1 gets nothing).
    status, body = request(url + "state", headers={"Host": f"evil.example:{graph.teleop.port}"})
    assert status == 403
    status, config = request(url + "config")
    assert status == 200 and config["envelope"]["x_max"] == 0.7 and config["keys"][" "] == "toggle"

    def teleop_status():
        statuses = [st for m in graph.arm.diagnostics.messages for st in m.status if st.name == "teleop_node: teleop"]
        return statuses[-1] if statuses else None

    values = diagnostic_values(wait_until(teleop_status, 10, "the teleop's /diagnostics"))
    assert values["port"] == str(graph.teleop.port) and values["url"] == url


def test_port_in_use_is_a_clear_error(graph):
    with pytest.raises(NodeConfigError, match=f"cannot serve the page on 127.0.0.1:{graph.teleop.port}"):
        TeleopNode(**graph.node_kwargs(port=graph.teleop.port, terminal_keys="false"))


# ------------------------------------------------------------------------------------------ in Chromium


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make setup does, as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


def close_to(a, b, tol: float) -> bool:
    return a is not None and b is not None and float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) <= tol


def test_page_drives_setpoints_records_episodes_and_shows_the_camera(graph, browser):
    teleop, arm, rec = graph.teleop, graph.arm, graph.rec
    page = browser.new_page()
    try:
        page.goto(teleop.url)
        page.wait_for_function("document.getElementById('status').textContent.startsWith('publishing')",
                               timeout=20_000)
        api = lambda: request(teleop.url + "state")[1]  # noqa: E731
        wait_until(lambda: api()["services"]["start"], 20, "the recorder's services to be discovered")
        assert close_to(arm.last_setpoint(), START, 1e-9)  # holding at the effector pose

        # Camera view: the probe's frame, decoded by Chromium from the node's PNG.
        page.wait_for_function("document.getElementById('camera').dataset.seq !== undefined", timeout=20_000)
        pixels = page.evaluate("""() => {
            const c = document.getElementById('camera');
            const ctx = c.getContext('2d');
            return [c.width, c.height, Array.from(ctx.getImageData(2, 2, 1, 1).data),
                    Array.from(ctx.getImageData(40, 30, 1, 1).data)];
        }""")
        assert pixels == [FRAME_HW[1], FRAME_HW[0], [0, 255, 0, 255], [200, 30, 90, 255]]

        # Drag on the canvas from the target marker: 0.1 m right (-y) and 0.15 m up (+x).
        px_per_m = page.evaluate("window.teleop.pxPerM")
        box = page.locator("#workspace").bounding_box()
        cx, cy = page.evaluate(f"window.teleop.toCanvas({START[0]}, {START[1]})")
        x0, y0 = box["x"] + cx, box["y"] + cy
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x0 + 0.1 * px_per_m, y0 - 0.15 * px_per_m, steps=10)
        page.mouse.up()
        want = np.array(START) + (0.15, -0.1)
        wait_until(lambda: close_to(api()["target"], want, 0.003), 10, "the dragged target")
        wait_until(lambda: close_to(arm.last_setpoint(), want, 0.003), 10, "the setpoint to follow the drag")
        moved = np.array([[m.pose.position.x, m.pose.position.y] for m in arm.setpoints.messages])
        steps = np.abs(np.diff(moved, axis=0))
        assert np.all(steps <= 0.1 + 1e-9)  # the envelope's per-period step limit
        assert np.all(np.diff(moved[:, 0]) >= -1e-9) and np.all(np.diff(moved[:, 1]) <= 1e-9)  # dragged direction
        last = arm.setpoints.messages[-1]
        assert last.header.frame_id == "link_base" and last.pose.position.z == pytest.approx(0.06)

        # Keyboard: three presses of the left arrow (+y) and one of k (+x), 0.01 m each.
        for key in ("ArrowLeft", "ArrowLeft", "ArrowLeft", "k"):
            page.keyboard.press(key)
        want = want + (0.01, 0.03)
        wait_until(lambda: close_to(arm.last_setpoint(), want, 0.003), 10, "the setpoint to follow the keys")

        # Episode 1: Start button, "s" labels it a success, Stop button: a finished bag.
        page.click("#btn-start")
        wait_until(lambda: arm.episode().get("recording") is True, 10, "the episode to start")
        page.wait_for_function("document.getElementById('episode').textContent.includes('recording episode_0001')",
                               timeout=10_000)
        page.keyboard.press("ArrowDown")  # a move during the episode
        time.sleep(0.6)
        page.keyboard.press("s")
        wait_until(lambda: arm.episode().get("outcome") == "success", 10, "the success label")
        page.click("#btn-stop")
        wait_until(lambda: arm.episode().get("recording") is False, 10, "the episode to stop")
        page.wait_for_function("document.getElementById('episode-counter').textContent === '1'", timeout=10_000)
        assert arm.episode()["episodes_finished"] == 1 and arm.episode()["name"] == "episode_0001"
        assert (rec / "episode_0001" / "metadata.yaml").is_file()
        info = read_episode_info(rec / "episode_0001")
        assert (info.outcome, info.task, info.operator) == ("success", "push", "page-test")

        # Episode 2: space starts it, "d" discards it.
        page.keyboard.press(" ")
        wait_until(lambda: arm.episode().get("recording") is True, 10, "space to start episode 2")
        assert arm.episode()["name"] == "episode_0002"
        page.keyboard.press("d")
        wait_until(lambda: arm.episode().get("recording") is False, 10, "d to discard episode 2")
        page.wait_for_function("document.getElementById('episode-counter').textContent === '2'", timeout=10_000)
        assert [(e.name, e.status) for e in list_episodes(rec)] == [("episode_0001", "complete"),
                                                                    ("episode_0002", "discarded")]

        # No simulator in this graph: the reset button reports that clearly and nothing breaks.
        page.click("#btn-reset")
        page.wait_for_function("document.getElementById('message').className.includes('error')", timeout=15_000)
        assert "/sim_node/reset is not available" in page.text_content("#message")
        n = len(arm.setpoints)
        wait_until(lambda: len(arm.setpoints) >= n + 2, 10, "setpoints to go on after the failed reset")
    finally:
        page.close()
