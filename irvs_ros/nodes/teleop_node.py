"""teleop_node: a web page on localhost (and a terminal fallback) to drive the effector and record episodes.

The operator moves a *target* (TCP xy in the base frame, m); every `period` seconds of the node clock (sim time
under use_sim_time; 5 Hz like the policy) the node moves its setpoint toward the target through the same
envelope code as policy_node (`control.Envelope.apply_delta`: per-axis step <= max_setpoint_step, then the
workspace box and reach annulus) and publishes it on `/irvs/setpoint` (geometry_msgs/PoseStamped, absolute,
`frame_id`, z = envelope z, tool down). Start: the first setpoint is the newest `/irvs/ee_pose` (or `start_xy`
when start_from_ee_pose is false); until that is known the node holds and publishes nothing. From then on it
publishes at every tick, a hold being the previous setpoint again, so a recorded episode has one setpoint per
period and the interpolator never times out under an idle operator.

Episode controls call std_srvs/Trigger services: `<recorder>/start|stop|mark_success|mark_failure|discard` of
recorder_node, and for `reset`: the sim's `pause_service` (std_srvs/SetBool true), its `reset_service`, the
interpolator's `resync_service`, and resume (pause false); each may be "" (or absent, for the pause) to skip it.
During a reset nothing is published; when the reset answer is sim_node's task state JSON, the
resync is repeated until the interpolator reports holding at its `state.effector_xy` (it may not have the reset's
/joint_states yet) and the setpoint restarts there, else it restarts from an effector pose stamped after the
resync. A missing or failing service is reported to the caller and on the page, never raised. The episode
counter comes from the recorder's `/irvs/episode` (std_msgs/String JSON, transient local).

HTTP API (ThreadingHTTPServer on `host`:`port`, port 0 = ephemeral; the bound port is `TeleopNode.port`, logged
and on /diagnostics). JSON in and out; POST bodies must be `Content-Type: application/json`; with a loopback
`host` only loopback Host headers are served (no DNS rebinding from other sites).
    GET  /                  the page (teleop_page/index.html, teleop.js, teleop.css)
    GET  /config            envelope limits, nudge step, period, frame, key map, service names
    GET  /state             time (node clock s), target, setpoint, ee_pose ([x, y] or null), holding (why no
                            setpoint is published, "" when publishing), published (count), episode (the recorder's
                            last /irvs/episode JSON or null), last_action, services (action -> whether its service
                            is available now), image (seq, width, height, stamp or null)
    GET  /camera.png        the newest camera frame as PNG (503 before the first frame)
    POST /target            {"x": m, "y": m} absolute, or {"dx": m, "dy": m} relative to the current target;
                            clamped into the envelope; answer {"target": [x, y]}
    POST /action/<name>     one of ACTIONS (nudges, episode actions, toggle = start or stop, reset); answer
                            {"ok": bool, "message": str}; 200 done, 409 refused by the service, 503 unavailable
    POST /episode/<name>    the same for the episode actions (start, stop, mark_success, ...)
Key map (page and terminal): arrows or h/j/k/l nudge the target by `nudge_step` (up = +x, away from the base;
left = +y), space start/stop, s success, f failure, d discard, r reset. (WASD would clash with s and d.)

`/diagnostics` (1 Hz): url, published setpoints, target / setpoint, episode counter, last action and its result.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from irvs_ros.control.envelope import EnvelopeError
from irvs_ros.nodes.common import (
    COMMAND_QOS,
    DIAG_OK,
    DIAG_WARN,
    SENSOR_QOS,
    SETPOINT_ENVELOPE_KEYS,
    NodeConfigError,
    Param,
    declare_parameters,
    diagnostic_array,
    diagnostic_status,
    envelope_from_params,
    envelope_params,
    node_now,
    one_of,
    pair,
    positive,
    run_node,
    to_sec,
)
from irvs_ros.nodes.image_ops import ImageError, image_array

NODE_NAME = "teleop_node"
PAGE_DIR = Path(__file__).resolve().parent / "teleop_page"
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
              "/index.html": ("index.html", "text/html; charset=utf-8"),
              "/teleop.js": ("teleop.js", "text/javascript; charset=utf-8"),
              "/teleop.css": ("teleop.css", "text/css; charset=utf-8")}
RECORDER_ACTIONS = ("start", "stop", "mark_success", "mark_failure", "discard")
NUDGES = {"up": (1.0, 0.0), "down": (-1.0, 0.0), "left": (0.0, 1.0), "right": (0.0, -1.0)}  # unit steps in (x, y)
ACTIONS = (*NUDGES, *RECORDER_ACTIONS, "toggle", "reset")
# Keys of the page and of the terminal -> actions (the page's teleop.js reads this map from GET /config).
KEY_ACTIONS = {"ArrowUp": "up", "ArrowDown": "down", "ArrowLeft": "left", "ArrowRight": "right",
               "k": "up", "j": "down", "h": "left", "l": "right", " ": "toggle",
               "s": "mark_success", "f": "mark_failure", "d": "discard", "r": "reset"}
RESET_SETTLE = 0.05  # s of node clock after the resync answer before an effector pose counts as post-reset
RESYNC_TOLERANCE = 0.002  # m: the interpolator's resync position must be the reset effector position within this
MAX_BODY = 65536
EPISODE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "a TCP port in [0, 65535] (0 = any free port)"


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "a non-empty string"


PARAMS: dict[str, Param] = {
    "host": Param(str, "IPv4 address the page is served on (127.0.0.1 = this machine only)", _non_empty),
    "port": Param(int, "TCP port of the page; 0 = any free port (see the log or /diagnostics)", _port),
    "period": Param(float, "setpoint period (s, node clock)", positive),
    "nudge_step": Param(float, "target move per arrow key (m)", positive),
    "image_topic": Param(str, "camera images in (Image)", _non_empty),
    "setpoint_topic": Param(str, "absolute TCP setpoints out (PoseStamped)", _non_empty),
    "ee_pose_topic": Param(str, "effector pose in (PoseStamped)", _non_empty),
    "episode_topic": Param(str, "the recorder's episode state in (String, JSON)", _non_empty),
    "frame_id": Param(str, "base frame of the setpoints"),
    "start_from_ee_pose": Param(bool, "start from the effector pose instead of start_xy"),
    "start_xy": Param(list, "TCP xy (m) of the first setpoint when not starting from the effector pose", pair),
    "recorder": Param(str, "node whose ~/start, ~/stop, ~/mark_success, ~/mark_failure, ~/discard are used",
                      _non_empty),
    "reset_service": Param(str, "Trigger service that resets the scene (sim_node's ~/reset); empty = none"),
    "resync_service": Param(str, "Trigger service called after a reset (interpolator's ~/resync); empty = none"),
    "pause_service": Param(str, "SetBool service pausing the sim during a reset (sim_node's ~/pause); empty = none"),
    "service_timeout": Param(float, "wall s to wait for a service to appear and answer", positive),
    "terminal_keys": Param(str, "keyboard on this terminal: auto (when stdin is a TTY), true or false",
                           one_of("auto", "true", "false")),
    "diagnostics_period": Param(float, "seconds between /diagnostics messages", positive),
    **envelope_params(SETPOINT_ENVELOPE_KEYS),
}


class TeleopError(ValueError):
    """Operator input that cannot be used (malformed target, unknown action)."""


# --------------------------------------------------------------------------------------------- PNG


def encode_png(rgb: np.ndarray, level: int = 1) -> bytes:
    """An (H, W, 3) uint8 RGB image as PNG bytes (8-bit truecolour, no filter; zlib `level`, 1 = fast)."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageError(f"expected a non-empty (H, W, 3) uint8 RGB array, got shape {a.shape} dtype {a.dtype}")
    h, w = a.shape[:2]
    rows = np.zeros((h, 1 + 3 * w), np.uint8)  # each scanline starts with its filter type (0: none)
    rows[:, 1:] = a.reshape(h, 3 * w)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # depth 8, colour type 2 (RGB), deflate, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
            + chunk(b"IEND", b""))


# --------------------------------------------------------------------------------------------- terminal keys


class TerminalKeys:
    """Bytes typed on a terminal in cbreak mode -> action names of ACTIONS (KEY_ACTIONS' letters and arrows).

    `feed(data)` returns the actions completed by `data`; an escape sequence split across reads is kept until
    its end arrives. Unknown keys are ignored.
    """

    ARROWS = {b"A": "up", b"B": "down", b"C": "right", b"D": "left"}
    LETTERS = {k.encode(): a for k, a in KEY_ACTIONS.items() if len(k) == 1}

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[str]:
        buf, out = self._pending + bytes(data), []
        i = 0
        while i < len(buf):
            if buf[i:i + 1] == b"\x1b":
                # ESC [ X or ESC O X (cursor keys in normal / application mode).
                if i + 1 >= len(buf) or (buf[i + 1:i + 2] in (b"[", b"O") and i + 2 >= len(buf)):
                    break  # incomplete: wait for the rest
                if buf[i + 1:i + 2] in (b"[", b"O"):
                    action = self.ARROWS.get(buf[i + 2:i + 3])
                    if action:
                        out.append(action)
                    i += 3
                else:
                    i += 1  # a lone ESC followed by another key: drop the ESC
                continue
            action = self.LETTERS.get(buf[i:i + 1])
            if action:
                out.append(action)
            i += 1
        self._pending = buf[i:]
        return out


class TerminalKeyReader:
    """Reads keys from a TTY in cbreak mode in its own thread and hands each action to `dispatch`.

    The terminal's settings are restored by `close()` (run_node calls the node's close on Ctrl-C).
    """

    def __init__(self, dispatch: Callable[[str], Any], stream: Any = None) -> None:
        import termios
        import tty

        self._stream = stream if stream is not None else sys.stdin
        self._fd = self._stream.fileno()
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)
        self._dispatch = dispatch
        self._keys = TerminalKeys()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="teleop-terminal-keys", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(self._fd, 64)
            if not data:
                return  # end of input
            for action in self._keys.feed(data):
                try:
                    self._dispatch(action)
                except Exception as e:  # keep reading keys whatever one action did
                    print(f"teleop key {action!r} failed: {type(e).__name__}: {e}", file=sys.stderr)

    def close(self) -> None:
        import termios

        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=1.0)
        termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)


# --------------------------------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    teleop: TeleopNode


class _Handler(BaseHTTPRequestHandler):
    """The HTTP API of the module docstring; every answer but the page and the image is JSON."""

    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30  # s an idle keep-alive connection keeps its thread

    def log_message(self, fmt: str, *args: Any) -> None:
        self.server.teleop.get_logger().debug(f"http {self.address_string()}: {fmt % args}")

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _host_ok(self) -> bool:
        allowed = self.server.teleop.allowed_hosts
        host = (self.headers.get("Host") or "").strip().lower()
        if allowed is None or host in allowed:
            return True
        self._json(403, {"error": f"Host {host!r} is not served; open http://{sorted(allowed)[0]}/"})
        return False

    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _guarded(self, handle: Callable[[], None]) -> None:
        """Run `handle`; an unexpected error becomes a 500 answer naming it (the server goes on)."""
        try:
            handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away mid-answer
        except Exception as e:
            self.server.teleop.get_logger().error(f"http {self.command} {self.path} failed: {type(e).__name__}: {e}")
            self._json(500, {"error": f"{type(e).__name__}: {e}"})

    def _get(self) -> None:
        if not self._host_ok():
            return
        node = self.server.teleop
        path = self.path.split("?", 1)[0]
        if path in PAGE_FILES:
            name, ctype = PAGE_FILES[path]
            self._send(200, node.page[name], ctype)
        elif path == "/state":
            self._json(200, node.state())
        elif path == "/config":
            self._json(200, node.config())
        elif path == "/camera.png":
            try:
                frame = node.camera_png()
            except ImageError as e:
                self._json(415, {"error": f"cannot show the camera image: {e}"})
                return
            if frame is None:
                self._json(503, {"error": f"no image received on {node.params['image_topic']} yet"})
            else:
                seq, png = frame
                self._send(200, png, "image/png", {"X-Frame-Seq": str(seq)})
        else:
            self._json(404, {"error": f"no such page {path!r}"})

    def _post(self) -> None:
        if not self._host_ok():
            return
        node = self.server.teleop
        path = self.path.split("?", 1)[0]
        try:
            body = self._body()
            if path == "/target":
                self._json(200, {"target": node.set_target(body).tolist()})
                return
            for prefix in ("/action/", "/episode/"):
                if path.startswith(prefix):
                    name = path[len(prefix):]
                    if prefix == "/episode/" and name not in (*RECORDER_ACTIONS, "toggle", "reset"):
                        raise TeleopError(f"unknown episode action {name!r}; expected one of "
                                          f"{[*RECORDER_ACTIONS, 'toggle', 'reset']}")
                    ok, message, status = node.perform(name)
                    self._json(status, {"ok": ok, "message": message})
                    return
            self._json(404, {"error": f"no such endpoint {path!r}"})
        except TeleopError as e:
            self._json(400, {"error": str(e)})

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise TeleopError(f"request body of {length} bytes is larger than {MAX_BODY}")
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            raise TeleopError("POST bodies must be JSON (Content-Type: application/json)")
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise TeleopError(f"request body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise TeleopError(f"request body must be a JSON object, got {type(body).__name__}")
        return body


def _reset_effector_xy(message: str) -> np.ndarray | None:
    """The effector xy of a sim_node ~/reset answer (JSON task state with state.effector_xy), else None."""
    try:
        xy = np.asarray(json.loads(message)["state"]["effector_xy"], dtype=np.float64).reshape(-1)
    except (ValueError, TypeError, KeyError):
        return None
    return xy if xy.shape == (2,) and np.all(np.isfinite(xy)) else None


def _trailing_xy(message: str) -> np.ndarray | None:
    """The last "[x, y]" of an interpolator ~/resync answer ("holding at the measured TCP position [x, y]")."""
    numbers = re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", message.rpartition("[")[2])
    return np.array([float(v) for v in numbers[:2]]) if len(numbers) >= 2 else None


def _loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.")


# --------------------------------------------------------------------------------------------- the node


class TeleopNode(Node):
    """The teleoperation node (see module docstring). `port` / `url`: where the page is served."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self._http: _Server | None = None
        self._keys_reader: TerminalKeyReader | None = None
        try:
            self.params = p = declare_parameters(self, NODE_NAME, PARAMS)
            self.envelope = envelope_from_params(p, SETPOINT_ENVELOPE_KEYS)
            self.page = {name: (PAGE_DIR / name).read_bytes() for name, _ in PAGE_FILES.values()}
            self._http = self._serve(p["host"], p["port"])
        except (EnvelopeError, OSError) as e:
            self.destroy_node()
            raise NodeConfigError(f"{NODE_NAME}: {e}") from e
        except NodeConfigError:
            self.destroy_node()
            raise
        self.port: int = int(self._http.server_address[1])
        self.url = f"http://{p['host']}:{self.port}/"
        self.allowed_hosts = ({f"{h}:{self.port}" for h in ("127.0.0.1", "localhost", p["host"])}
                              if _loopback(p["host"]) else None)
        self._lock = threading.Lock()
        self.target: np.ndarray | None = None
        self.setpoint: np.ndarray | None = None
        self._ee: tuple[np.ndarray, float] | None = None   # newest effector xy and its stamp (node clock s)
        self._ee_after = -math.inf                         # effector poses stamped before this are ignored
        self._resetting = False
        self._reset_lock = threading.Lock()
        self._image: Image | None = None
        self._image_seq = 0
        self._png: tuple[int, bytes] | None = None
        self._png_lock = threading.Lock()
        self.episode: dict[str, Any] | None = None
        self.last_action: dict[str, Any] | None = None
        self.published = 0
        self.holding = "starting"
        self.rejected = 0

        inputs = MutuallyExclusiveCallbackGroup()
        self._client_group = ReentrantCallbackGroup()
        self.create_subscription(Image, p["image_topic"], self._on_image, SENSOR_QOS, callback_group=inputs)
        self.create_subscription(PoseStamped, p["ee_pose_topic"], self._on_ee_pose, COMMAND_QOS, callback_group=inputs)
        self.create_subscription(String, p["episode_topic"], self._on_episode, EPISODE_QOS, callback_group=inputs)
        self._pub = self.create_publisher(PoseStamped, p["setpoint_topic"], COMMAND_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        recorder = "/" + p["recorder"].strip("/")
        self.service_names = {a: f"{recorder}/{a}" for a in RECORDER_ACTIONS}
        if p["reset_service"].strip():
            self.service_names["reset"] = p["reset_service"].strip()
        if p["resync_service"].strip():
            self.service_names["resync"] = p["resync_service"].strip()
        if p["pause_service"].strip():
            self.service_names["pause"] = p["pause_service"].strip()
        self._clients_by_key = {a: self.create_client(SetBool if a == "pause" else Trigger, name,
                                                      callback_group=self._client_group)
                                for a, name in self.service_names.items()}
        self.create_timer(p["period"], self._tick, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        self._http_thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.2},
                                             name="teleop-http", daemon=True)
        self._http_thread.start()
        self.get_logger().info(f"teleop page at {self.url} (port {self.port})")
        use_terminal = p["terminal_keys"] == "true" or (p["terminal_keys"] == "auto" and sys.stdin is not None
                                                        and sys.stdin.isatty())
        if use_terminal:
            try:
                self._keys_reader = TerminalKeyReader(self._terminal_action)
            except (OSError, ValueError, ImportError) as e:  # not a terminal after all (termios refuses it)
                self.get_logger().warn(f"no terminal keyboard: {e}")
            else:
                print("teleop keys: arrows or h/j/k/l move, space start/stop, s success, f failure, d discard, "
                      "r reset", file=sys.stderr)

    def _serve(self, host: str, port: int) -> _Server:
        try:
            server = _Server((host, port), _Handler)
        except OSError as e:
            raise OSError(f"cannot serve the page on {host}:{port}: {e}"
                          + (" (set port:=0 for any free port)" if port else "")) from e
        server.teleop = self
        return server

    # ------------------------------------------------------------------ inputs
    def _on_image(self, msg: Image) -> None:
        with self._lock:
            self._image = msg
            self._image_seq += 1

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        xy = np.array([msg.pose.position.x, msg.pose.position.y], dtype=np.float64)
        stamp = to_sec(msg.header.stamp)
        if np.all(np.isfinite(xy)):
            with self._lock:
                if stamp >= self._ee_after:
                    self._ee = (xy, stamp)

    def _on_episode(self, msg: String) -> None:
        try:
            info = json.loads(msg.data)
        except ValueError:
            self.get_logger().warn(f"{self.params['episode_topic']}: not JSON: {msg.data[:80]!r}",
                                   throttle_duration_sec=5.0)
            return
        if isinstance(info, dict):
            with self._lock:
                self.episode = info

    # ------------------------------------------------------------------ operator input
    def set_target(self, body: dict[str, Any]) -> np.ndarray:
        """Set the target from {"x", "y"} (absolute, m) or {"dx", "dy"} (relative); returns it clamped (2,)."""
        def number(key: str) -> float:
            v = body.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TeleopError(f"target {key!r} must be a finite number (m), got {v!r}")
            return float(v)

        keys = set(body)
        if keys == {"x", "y"}:
            want = np.array([number("x"), number("y")])
            with self._lock:
                self.target = self.envelope.clamp(want)
                return self.target.copy()
        if keys == {"dx", "dy"}:
            d = np.array([number("dx"), number("dy")])
            with self._lock:
                base = self.target if self.target is not None else self.setpoint
                if base is None:
                    raise TeleopError("no target to move yet: the effector pose is not known (is the interpolator "
                                      "running?)")
                self.target = self.envelope.clamp(base + d)
                return self.target.copy()
        raise TeleopError(f'target must be {{"x": m, "y": m}} or {{"dx": m, "dy": m}}, got keys {sorted(keys)}')

    def perform(self, action: str) -> tuple[bool, str, int]:
        """Run one of ACTIONS; (ok, message, HTTP status: 200 done, 409 refused, 503 service unavailable)."""
        if action not in ACTIONS:
            raise TeleopError(f"unknown action {action!r}; expected one of {list(ACTIONS)}")
        if action in NUDGES:
            ux, uy = NUDGES[action]
            step = self.params["nudge_step"]
            try:
                target = self.set_target({"dx": ux * step, "dy": uy * step})
            except TeleopError as e:
                return self._note(action, False, str(e), 409)
            return True, f"target {np.round(target, 4).tolist()}", 200
        if action == "toggle":
            with self._lock:
                recording = bool(self.episode and self.episode.get("recording"))
            action = "stop" if recording else "start"
        if action == "reset":
            return self._reset()
        ok, message, status = self._call(action)
        return self._note(action, ok, message, status)

    def _terminal_action(self, action: str) -> None:
        ok, message, _ = self.perform(action)
        if ok:  # failures are logged by _note already
            self.get_logger().info(f"{action}: {message}")

    def _note(self, action: str, ok: bool, message: str, status: int) -> tuple[bool, str, int]:
        with self._lock:
            self.last_action = {"action": action, "ok": ok, "message": message, "time": time.time()}
        if not ok:
            self.get_logger().warn(f"{action} failed: {message}")
        return ok, message, status

    def _available(self, key: str) -> bool:
        """Whether service `key` is configured and appears within min(service_timeout, 2 s)."""
        client = self._clients_by_key.get(key)
        return client is not None and client.wait_for_service(timeout_sec=min(self.params["service_timeout"], 2.0))

    def _call(self, key: str, data: bool | None = None) -> tuple[bool, str, int]:
        """Call service `key` of self.service_names (Trigger; SetBool with `data` for "pause") from this
        (non-executor) thread."""
        name = self.service_names.get(key)
        if name is None:
            return False, f"no service configured for {key} (parameter {key}_service is empty)", 503
        client = self._clients_by_key[key]
        timeout = self.params["service_timeout"]
        if not self._available(key):
            return False, f"service {name} is not available (is its node running?)", 503
        future = client.call_async(SetBool.Request(data=bool(data)) if key == "pause" else Trigger.Request())
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout):
            client.remove_pending_request(future)
            return False, f"service {name} did not answer within {timeout} s", 503
        resp = future.result()
        if resp is None:
            return False, f"service {name} failed: {future.exception()}", 503
        return bool(resp.success), str(resp.message), 200 if resp.success else 409

    def _reset(self) -> tuple[bool, str, int]:
        """Scene reset (one at a time): see the module docstring."""
        if not self._reset_lock.acquire(blocking=False):
            return self._note("reset", False, "a reset is already running", 409)
        try:
            return self._reset_scene()
        finally:
            self._reset_lock.release()

    def _reset_scene(self) -> tuple[bool, str, int]:
        if "reset" not in self.service_names:
            return self._note("reset", False, "reset is disabled (parameter reset_service is empty)", 503)
        if not self._available("reset"):
            return self._note("reset", False, f"service {self.service_names['reset']} is not available (reset works in "
                                              f"simulation only)", 503)
        with self._lock:
            self._resetting = True
            self.setpoint = self.target = None
            self._ee = None
        start: np.ndarray | None = None
        # Simulated time stands still during the reset (when the sim can pause): the arm cannot follow commands the
        # interpolator computed for the old scene before it is resynced.
        paused = self._available("pause") and self._call("pause", True)[0]
        ok, message, status = False, "reset did not run", 503
        try:
            ok, message, status = self._call("reset")
            start = _reset_effector_xy(message) if ok else None
            if ok and "resync" in self.service_names:
                ok2, message2, status2 = self._resync(start)
                if not ok2:
                    ok, message, status = False, f"scene reset, but {self.service_names['resync']}: {message2}", status2
        finally:
            if paused:
                resumed, why, _ = self._call("pause", False)
                if not resumed:
                    ok, message, status = False, f"the sim did not resume after the reset: {why}", 503
            with self._lock:
                self._ee_after = node_now(self) + RESET_SETTLE
                self._ee = None
                if ok and start is not None:
                    self.setpoint = self.envelope.clamp(start)
                    self.target = self.setpoint.copy()
                self._resetting = False
        if ok:
            where = (f"the reset effector pose {np.round(start, 4).tolist()}" if start is not None
                     else "the effector pose")
            message = f"scene reset ({self.service_names['reset']}); restarting from {where}"
        return self._note("reset", ok, message, status)

    def _resync(self, xy: np.ndarray | None) -> tuple[bool, str, int]:
        """Resync the interpolator; with the reset pose `xy` known, retry until it reports holding there (it may
        not have received the reset's /joint_states yet when first asked)."""
        deadline = time.monotonic() + self.params["service_timeout"]
        while True:
            ok, message, status = self._call("resync")
            if not ok or xy is None:
                return ok, message, status
            held = _trailing_xy(message)
            if held is not None and np.allclose(held, xy, atol=RESYNC_TOLERANCE):
                return ok, message, status
            if time.monotonic() > deadline:
                return False, (f"did not resync to the reset pose {np.round(xy, 4).tolist()} within "
                               f"{self.params['service_timeout']} s (last answer: {message!r})"), 503
            time.sleep(0.02)

    # ------------------------------------------------------------------ the 5 Hz setpoint
    def _tick(self) -> None:
        with self._lock:
            if self._resetting:
                self.holding = "resetting the scene"
                return
            if self.setpoint is None:
                if self.params["start_from_ee_pose"]:
                    if self._ee is None:
                        self.holding = f"waiting for {self.params['ee_pose_topic']}"
                        return
                    start = self._ee[0]
                else:
                    start = np.asarray(self.params["start_xy"], dtype=np.float64)
                self.setpoint = self.envelope.clamp(start)
                if self.target is None:
                    self.target = self.setpoint.copy()
            res = self.envelope.apply_delta(self.setpoint, self.target - self.setpoint)
            if not res.accepted:  # cannot happen for a clamped finite target; kept as the policy handles it
                self.rejected += 1
                self.holding = f"target rejected: {res.reason}"
                return
            self.setpoint = res.xy
            self.holding = ""
            xy = res.xy.copy()
        out = PoseStamped()
        out.header.stamp = self.get_clock().now().to_msg()
        out.header.frame_id = self.params["frame_id"]
        out.pose.position.x, out.pose.position.y = float(xy[0]), float(xy[1])
        out.pose.position.z = self.envelope.config.z
        out.pose.orientation.y = 1.0  # tool pointing down (control.ik.DOWN_QUATERNION), as policy_node
        self._pub.publish(out)
        self.published += 1

    # ------------------------------------------------------------------ what the page reads
    def state(self) -> dict[str, Any]:
        """The JSON of GET /state (see module docstring)."""
        def xy(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else [float(a[0]), float(a[1])]

        with self._lock:
            image = self._image
            out = {"time": node_now(self), "target": xy(self.target), "setpoint": xy(self.setpoint),
                   "ee_pose": xy(self._ee[0]) if self._ee is not None else None, "holding": self.holding,
                   "published": self.published, "episode": self.episode, "last_action": self.last_action,
                   "services": {k: c.service_is_ready() for k, c in self._clients_by_key.items()}, "image": None}
            if image is not None:
                out["image"] = {"seq": self._image_seq, "width": int(image.width), "height": int(image.height),
                                "stamp": to_sec(image.header.stamp)}
        return out

    def config(self) -> dict[str, Any]:
        """The JSON of GET /config."""
        c = self.envelope.config
        return {"envelope": {k: getattr(c, k) for k in SETPOINT_ENVELOPE_KEYS}, "nudge_step": self.params["nudge_step"],
                "period": self.params["period"], "frame_id": self.params["frame_id"], "keys": KEY_ACTIONS,
                "actions": list(ACTIONS), "services": self.service_names, "url": self.url}

    def camera_png(self) -> tuple[int, bytes] | None:
        """(sequence number, PNG bytes) of the newest camera frame, or None before the first one."""
        with self._lock:
            image, seq = self._image, self._image_seq
        if image is None:
            return None
        with self._png_lock:  # one encode per frame, however many pages poll
            if self._png is None or self._png[0] != seq:
                self._png = (seq, encode_png(image_array(image)))
            return self._png

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        with self._lock:
            episode, last, holding = self.episode or {}, self.last_action, self.holding
            target, setpoint = self.target, self.setpoint
        values: dict[str, Any] = {"url": self.url, "port": self.port, "published": self.published,
                                  "rejected": self.rejected, "recording": bool(episode.get("recording")),
                                  "episode": episode.get("name", ""),
                                  "episodes_finished": episode.get("episodes_finished", 0),
                                  "terminal_keys": self._keys_reader is not None}
        if target is not None:
            values["target_x"], values["target_y"] = float(target[0]), float(target[1])
        if setpoint is not None:
            values["setpoint_x"], values["setpoint_y"] = float(setpoint[0]), float(setpoint[1])
        if last is not None:
            values["last_action"] = last["action"]
            values["last_action_ok"] = last["ok"]
            values["last_action_message"] = last["message"]
        if holding:
            level, message = DIAG_WARN, f"holding: {holding}"
        elif last is not None and not last["ok"]:
            level, message = DIAG_WARN, f"{last['action']} failed: {last['message']}"
        else:
            level, message = DIAG_OK, f"serving {self.url}"
        status = diagnostic_status(f"{self.get_name()}: teleop", level, message, values, self.url)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [status]))

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop the HTTP server and the terminal reader, restoring the terminal (idempotent)."""
        if self._keys_reader is not None:
            self._keys_reader.close()
            self._keys_reader = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def main(args: list[str] | None = None) -> int:
    return run_node(TeleopNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
