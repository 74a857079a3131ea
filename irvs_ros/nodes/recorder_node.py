"""recorder_node: one rosbag2 MCAP bag per episode (camera, setpoints, joint states, effector pose, episode metadata).

Messages are taken serialized (raw subscriptions) and written as received, stamped with the node clock (sim time
under use_sim_time), into `<output_dir>/<name>.partial/<name>`; only a finished episode is moved to
`<output_dir>/<name>` (see `irvs_ros.data.bags`), so killing the recorder never damages a finished episode and
leaves the interrupted one clearly marked `.partial`.

Services (std_srvs/Trigger):
    ~/start         begin an episode (task and operator from the parameters at that moment); fails while recording
    ~/stop          finish the episode with its current label (messages still queued when it is served, a lagging
                    recorder's backlog, are written first)
    ~/mark_success  label the episode being recorded (or, when idle, the one that just finished) a success
    ~/mark_failure  ... a failure
    ~/discard       while recording: finish the episode as discarded; when idle: discard the one that just finished.
                    Discarded episodes move to `<name>.discarded/` and are skipped by `irvs ingest`.
Publishes /irvs/episode (std_msgs/String, JSON EpisodeInfo plus "recording", transient local) on every change,
and /diagnostics.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from irvs_ros.data.bags import (
    DISCARDED_SUFFIX,
    PARTIAL_SUFFIX,
    BagError,
    EpisodeBagWriter,
    EpisodeInfo,
    label_finished_episode,
)
from irvs_ros.nodes.common import (
    DIAG_ERROR,
    DIAG_OK,
    NodeConfigError,
    Param,
    declare_parameters,
    diagnostic_array,
    diagnostic_status,
    positive,
    run_node,
)

NODE_NAME = "recorder_node"


def _name_prefix(v: str) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9_-]+", v) else "letters, digits, '_' or '-' only"


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "a non-empty string"


PARAMS: dict[str, Param] = {
    "output_dir": Param(str, "folder of the episode bags (created when missing)", _non_empty),
    "name_prefix": Param(str, "episode directories are <name_prefix>_<NNNN>", _name_prefix),
    "task": Param(str, "task name stored with each episode (read at ~/start)"),
    "operator": Param(str, "operator name stored with each episode (read at ~/start)"),
    "image_topic": Param(str, "camera images (sensor_msgs/Image)", _non_empty),
    "setpoint_topic": Param(str, "absolute TCP setpoints (geometry_msgs/PoseStamped)", _non_empty),
    "joint_states_topic": Param(str, "joint states (sensor_msgs/JointState)", _non_empty),
    "ee_pose_topic": Param(str, "effector pose (geometry_msgs/PoseStamped)", _non_empty),
    "episode_topic": Param(str, "episode metadata out, JSON (std_msgs/String)", _non_empty),
    "diagnostics_period": Param(float, "s between /diagnostics messages", positive),
}
# The bag always uses the design's topic names, whatever the parameters subscribe to, so ingest finds them.
BAG_TOPICS = {
    "image_topic": ("/camera/camera/color/image_raw", Image, "sensor_msgs/msg/Image"),
    "setpoint_topic": ("/irvs/setpoint", PoseStamped, "geometry_msgs/msg/PoseStamped"),
    "joint_states_topic": ("/joint_states", JointState, "sensor_msgs/msg/JointState"),
    "ee_pose_topic": ("/irvs/ee_pose", PoseStamped, "geometry_msgs/msg/PoseStamped"),
}
# Recording takes every message, not only the newest: a deep history lets a recorder that is briefly busy (a slow
# disk, a starved CPU, a long write) catch up instead of dropping. 1000 = 10 s of a 100 Hz stream; the camera stays
# best effort (as it is published) with 2 s of 30 Hz frames.
RECORD_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
RECORD_IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=60, reliability=ReliabilityPolicy.BEST_EFFORT,
                              durability=DurabilityPolicy.VOLATILE)
EPISODE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


class RecorderNode(Node):
    """The episode recorder (see module docstring). `close()` leaves an episode in progress as `.partial`."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            self.params = p = declare_parameters(self, NODE_NAME, PARAMS)
            self.output_dir = Path(p["output_dir"]).expanduser()
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.destroy_node()
            raise NodeConfigError(f"{NODE_NAME}: cannot create output_dir {p['output_dir']!r}: {e}") from e
        except NodeConfigError:
            self.destroy_node()
            raise
        self._lock = threading.Lock()
        self._writer: EpisodeBagWriter | None = None
        self.last_finished: Path | None = None
        self.episodes_finished = 0
        self.write_errors = 0
        self.last_error = ""
        self._index = self._next_index()
        self._subs: dict[str, Subscription] = {}
        for key, (bag_topic, msg_type, _) in BAG_TOPICS.items():
            qos = RECORD_IMAGE_QOS if key == "image_topic" else RECORD_QOS
            self._subs[bag_topic] = self.create_subscription(
                msg_type, p[key], lambda raw, t=bag_topic: self._on_raw(t, raw), qos, raw=True)
        self._episode_pub = self.create_publisher(String, p["episode_topic"], EPISODE_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "~/start", self._on_start)
        self.create_service(Trigger, "~/stop", self._on_stop)
        self.create_service(Trigger, "~/mark_success", lambda q, r: self._on_label(r, "success"))
        self.create_service(Trigger, "~/mark_failure", lambda q, r: self._on_label(r, "failure"))
        self.create_service(Trigger, "~/discard", self._on_discard)
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        self._publish_episode(None)
        self.get_logger().info(f"recording episodes into {self.output_dir} (next: {self._episode_name()})")

    # ------------------------------------------------------------------ naming
    def _next_index(self) -> int:
        """One past the highest index used in output_dir (finished, discarded or partial): never reuse a name."""
        pattern = re.compile(re.escape(self.params["name_prefix"]) + r"_(\d+)(?:" + re.escape(PARTIAL_SUFFIX) + "|"
                             + re.escape(DISCARDED_SUFFIX) + r")?$")
        used = [int(m.group(1)) for d in self.output_dir.iterdir() if (m := pattern.match(d.name))]
        return max(used, default=0) + 1

    def _episode_name(self) -> str:
        return f"{self.params['name_prefix']}_{self._index:04d}"

    @property
    def recording(self) -> bool:
        return self._writer is not None

    @property
    def current(self) -> EpisodeBagWriter | None:
        return self._writer

    # ------------------------------------------------------------------ messages
    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_raw(self, bag_topic: str, raw: bytes) -> None:
        with self._lock:
            if self._writer is not None:
                self._write(bag_topic, raw)

    def _write(self, bag_topic: str, raw: bytes) -> None:
        """Write one message at the node clock's now; the caller holds the lock and a writer is open."""
        try:
            self._writer.write(bag_topic, self._now_ns(), raw)
        except (BagError, OSError) as e:
            self.write_errors += 1
            self.last_error = str(e)
            self.get_logger().error(f"writing {bag_topic} failed: {e}", throttle_duration_sec=1.0)

    def _drain(self) -> int:
        """Write the messages still queued in the subscriptions (the caller holds the lock); returns how many.

        A recorder that fell behind (a stall, a starved CPU) has a backlog in its deep history when ~/stop arrives,
        and the executor serves the service before those queued messages: without this, the episode's last
        seconds would be lost. Bounded by each subscription's history depth, so it ends even on a busy topic.
        """
        n = 0
        for bag_topic, sub in self._subs.items():
            for _ in range(sub.qos_profile.depth):
                with sub.handle:
                    taken = sub.handle.take_message(sub.msg_type, sub.raw)
                if taken is None:
                    break
                self._write(bag_topic, taken[0])
                n += 1
        return n

    def _publish_episode(self, info: EpisodeInfo | None) -> None:
        body = json.loads(info.to_json()) if info is not None else {}
        body["recording"] = self._writer is not None
        body["episodes_finished"] = self.episodes_finished
        self._episode_pub.publish(String(data=json.dumps(body, sort_keys=True)))

    # ------------------------------------------------------------------ services
    def _on_start(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        with self._lock:
            if self._writer is not None:
                resp.success, resp.message = False, f"already recording {self._writer.name}; call ~/stop first"
                return resp
            now = self._now_ns()
            info = EpisodeInfo(name=self._episode_name(), task=str(self.get_parameter("task").value),
                               operator=str(self.get_parameter("operator").value), start_time=now * 1e-9)
            try:
                self._writer = EpisodeBagWriter(self.output_dir, info, {t: m for t, _, m in BAG_TOPICS.values()})
                self._writer.write_info(now)
            except (BagError, OSError) as e:
                if self._writer is not None:
                    self._writer.abort()
                self._writer = None
                resp.success, resp.message = False, f"cannot start {info.name}: {e}"
                return resp
            self._index += 1
            self.last_finished = None  # labels and discards now concern the new episode only
            self._publish_episode(info)
        self.get_logger().info(f"recording {info.name}")
        resp.success, resp.message = True, f"recording {info.name}"
        return resp

    def _finish(self, resp: Trigger.Response, discarded: bool) -> Trigger.Response:
        with self._lock:
            writer = self._writer
            if writer is None:
                resp.success, resp.message = False, "not recording"
                return resp
            drained = 0 if discarded else self._drain()
            self._writer = None
            try:
                path = writer.finish(self._now_ns(), discarded=discarded)
            except (BagError, OSError) as e:
                writer.abort()
                self.last_error = str(e)
                resp.success, resp.message = False, f"finishing {writer.name} failed (left as .partial): {e}"
                return resp
            if not discarded:
                self.last_finished = path
            self.episodes_finished += 1
            self._publish_episode(writer.info)
        counts = ", ".join(f"{t} {n}" for t, n in writer.counts.items())
        if drained:
            counts += f" ({drained} still queued at stop, written before closing)"
        what = "discarded" if discarded else f"finished ({writer.info.outcome})"
        self.get_logger().info(f"{writer.name} {what}: {counts}")
        resp.success, resp.message = True, f"{writer.name} {what} at {path}"
        return resp

    def _on_stop(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        return self._finish(resp, discarded=False)

    def _on_label(self, resp: Trigger.Response, outcome: str) -> Trigger.Response:
        with self._lock:
            if self._writer is not None:
                self._writer.info.outcome = outcome
                try:
                    self._writer.write_info(self._now_ns())
                except (BagError, OSError) as e:
                    resp.success, resp.message = False, f"labelling failed: {e}"
                    return resp
                self._publish_episode(self._writer.info)
                resp.success, resp.message = True, f"{self._writer.name} labelled {outcome}"
                return resp
            if self.last_finished is None:
                resp.success, resp.message = False, "no episode recorded or finished yet to label"
                return resp
            try:
                label_finished_episode(self.last_finished, outcome)
            except (BagError, OSError) as e:
                resp.success, resp.message = False, f"labelling {self.last_finished.name} failed: {e}"
                return resp
            resp.success, resp.message = True, f"{self.last_finished.name} (finished) labelled {outcome}"
            return resp

    def _on_discard(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        if self._writer is not None:
            return self._finish(resp, discarded=True)
        with self._lock:
            if self.last_finished is None:
                resp.success, resp.message = False, "no episode being recorded or finished to discard"
                return resp
            try:
                path = label_finished_episode(self.last_finished, "discarded")
            except (BagError, OSError) as e:
                resp.success, resp.message = False, f"discarding {self.last_finished.name} failed: {e}"
                return resp
            self.last_finished = None
        resp.success, resp.message = True, f"discarded {path.name} (moved to {path.parent})"
        return resp

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        writer = self._writer
        values = {"recording": writer is not None, "episode": writer.name if writer else "",
                  "episodes_finished": self.episodes_finished, "write_errors": self.write_errors,
                  "output_dir": str(self.output_dir)}
        if writer is not None:
            values.update({f"count {t}": n for t, n in writer.counts.items()})
        level, message = ((DIAG_ERROR, f"write errors: {self.last_error}") if self.write_errors
                          else (DIAG_OK, f"recording {writer.name}" if writer else "idle"))
        status = diagnostic_status(f"{self.get_name()}: recorder", level, message, values)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [status]))

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop writing; an episode in progress is left unfinished (`.partial`), as after a crash. Idempotent."""
        with self._lock:
            if self._writer is not None:
                self.get_logger().warn(f"{self._writer.name} was not stopped: left unfinished (.partial)")
                self._writer.abort()
                self._writer = None


def main(args: list[str] | None = None) -> int:
    return run_node(RecorderNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
