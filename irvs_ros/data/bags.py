"""Episode recordings: one rosbag2 directory (metadata.yaml + one MCAP file) per episode, via `rosbags`.

Layout of a recordings folder:
    <root>/<name>/                      a finished episode: <name>.mcap + metadata.yaml (rosbag2 format, readable
                                        by `ros2 bag` and by `rosbags`)
    <root>/<name>.discarded/<name>/     an episode the operator discarded (finished, kept for inspection)
    <root>/<name>.partial/<name>/       an episode still being written, or one whose writer died (kill -9, power
                                        loss): never renamed into place, so it is never mistaken for a finished one

A finished episode is never reopened. Its metadata (`EpisodeInfo`: task, operator, outcome, start / end times) is
in the bag twice: as JSON std_msgs/String messages on /irvs/episode (at start, on each label change and at the
end) and as JSON under the key "irvs.episode" of the bag's custom_data. A label given after the episode finished
goes into `label.json` next to the bag (the bag files are not touched); `read_episode_info` applies it.

Times: bag timestamps are the recorder's receive times in integer ns of its ROS clock; EpisodeInfo times are
float seconds of the same clock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

IMAGE_TOPIC = "/camera/camera/color/image_raw"
SETPOINT_TOPIC = "/irvs/setpoint"
JOINT_STATES_TOPIC = "/joint_states"
EE_POSE_TOPIC = "/irvs/ee_pose"
EPISODE_TOPIC = "/irvs/episode"
# The recorded streams and their ROS 2 message types (rosbags spelling).
RECORDED_TOPICS: dict[str, str] = {
    IMAGE_TOPIC: "sensor_msgs/msg/Image",
    SETPOINT_TOPIC: "geometry_msgs/msg/PoseStamped",
    JOINT_STATES_TOPIC: "sensor_msgs/msg/JointState",
    EE_POSE_TOPIC: "geometry_msgs/msg/PoseStamped",
}
EPISODE_MSGTYPE = "std_msgs/msg/String"
CUSTOM_DATA_KEY = "irvs.episode"
LABEL_FILE = "label.json"
PARTIAL_SUFFIX = ".partial"
DISCARDED_SUFFIX = ".discarded"
OUTCOMES = ("unlabeled", "success", "failure", "discarded")


class BagError(ValueError):
    """A recording that cannot be written or read as an irvs_ros episode bag."""


_TYPESTORE: Typestore | None = None


def typestore() -> Typestore:
    """The rosbags type store of ROS 2 Jazzy message definitions (shared, created on first use)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        _TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
    return _TYPESTORE


@dataclass
class EpisodeInfo:
    """Episode metadata. Times in s of the recorder's ROS clock; end_time None while recording."""

    name: str
    task: str = ""
    operator: str = ""
    outcome: str = "unlabeled"
    start_time: float = 0.0
    end_time: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise BagError(f"episode outcome must be one of {list(OUTCOMES)}, got {self.outcome!r}")

    @property
    def success(self) -> bool:
        return self.outcome == "success"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EpisodeInfo:
        try:
            d = json.loads(text)
            return cls(**{k: d[k] for k in ("name", "task", "operator", "outcome", "start_time", "end_time")
                          if k in d}, extra=dict(d.get("extra") or {}))
        except (ValueError, TypeError, KeyError) as exc:
            raise BagError(f"episode metadata is not EpisodeInfo JSON: {exc}: {text[:200]!r}") from exc


def _fsync_tree(path: Path) -> None:
    """Flush the files of `path` and the directory entries to disk (survives power loss, not only kill -9)."""
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in (path, path.parent):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class EpisodeBagWriter:
    """Write one episode into `<root>/<name>.partial/<name>`; `finish` closes and moves it to `<root>/<name>`.

    topics: topic -> message type (rosbags spelling, e.g. "sensor_msgs/msg/Image"); messages are given already
    CDR-serialized (as rclpy's raw subscriptions deliver them). t_ns: integer ns timestamps.
    """

    def __init__(self, root: str | os.PathLike, info: EpisodeInfo, topics: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.info = info
        self.name = info.name
        if not self.name or "/" in self.name or self.name.endswith((PARTIAL_SUFFIX, DISCARDED_SUFFIX)):
            raise BagError(f"bad episode name {self.name!r}: a plain directory name without a reserved suffix")
        self.final = self.root / self.name
        self.partial_dir = self.root / (self.name + PARTIAL_SUFFIX)
        taken = [p for p in (self.final, self.partial_dir, self.root / (self.name + DISCARDED_SUFFIX)) if p.exists()]
        if taken:
            raise BagError(f"episode {self.name!r} exists already in {self.root}: {[str(p) for p in taken]}")
        self.partial_dir.mkdir(parents=True)
        self._writer: Writer | None = Writer(self.partial_dir / self.name, version=9,
                                             storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        store = typestore()
        self._connections = {}
        for topic, msgtype in {**(topics if topics is not None else RECORDED_TOPICS),
                               EPISODE_TOPIC: EPISODE_MSGTYPE}.items():
            self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=store)
        self.counts: dict[str, int] = dict.fromkeys(self._connections, 0)
        self.last_t_ns = 0

    @property
    def open(self) -> bool:
        return self._writer is not None

    def write(self, topic: str, t_ns: int, data: bytes | memoryview) -> None:
        """Append one serialized message of `topic` received at t_ns."""
        if self._writer is None:
            raise BagError(f"episode {self.name} is closed")
        conn = self._connections.get(topic)
        if conn is None:
            raise BagError(f"topic {topic!r} is not recorded in this episode; recorded: {sorted(self._connections)}")
        self._writer.write(conn, int(t_ns), data)
        self.counts[topic] += 1
        self.last_t_ns = max(self.last_t_ns, int(t_ns))

    def write_info(self, t_ns: int) -> None:
        """Append the current EpisodeInfo as a JSON message on /irvs/episode."""
        store = typestore()
        msg = store.types[EPISODE_MSGTYPE](data=self.info.to_json())
        self.write(EPISODE_TOPIC, t_ns, store.serialize_cdr(msg, EPISODE_MSGTYPE))

    def finish(self, t_ns: int, discarded: bool = False) -> Path:
        """Write the final metadata, close the bag and move it into place; returns the episode directory.

        discarded: the outcome becomes "discarded" and the bag goes to `<name>.discarded/<name>`.
        """
        if self._writer is None:
            raise BagError(f"episode {self.name} is closed")
        if discarded:
            self.info.outcome = "discarded"
        self.info.end_time = t_ns * 1e-9
        self.write_info(t_ns)
        self._writer.set_custom_data(CUSTOM_DATA_KEY, self.info.to_json())
        self._writer.close()
        self._writer = None
        _fsync_tree(self.partial_dir)
        if discarded:
            target = self.root / (self.name + DISCARDED_SUFFIX)
            os.replace(self.partial_dir, target)
            _fsync_tree(target)
            return target / self.name
        os.replace(self.partial_dir / self.name, self.final)
        self.partial_dir.rmdir()
        _fsync_tree(self.final)
        return self.final

    def abort(self) -> None:
        """Stop writing without finishing: the episode stays `<name>.partial` (incomplete)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


# --------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class EpisodeEntry:
    """One episode found in a recordings folder. status: "complete", "discarded" or "partial".
    bag: the rosbag2 directory (for a partial episode: the directory the writer was filling)."""

    name: str
    status: str
    bag: Path


def list_episodes(root: str | os.PathLike) -> list[EpisodeEntry]:
    """Every episode under `root` (a recordings folder, or a single episode bag directory), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no recordings folder at {root}")
    if (root / "metadata.yaml").exists():
        return [EpisodeEntry(root.name, "complete", root)]
    out = []
    for p in sorted(root.iterdir()):
        if not p.is_dir():
            continue
        if p.name.endswith(PARTIAL_SUFFIX):
            name = p.name[: -len(PARTIAL_SUFFIX)]
            out.append(EpisodeEntry(name, "partial", p / name))
        elif p.name.endswith(DISCARDED_SUFFIX):
            name = p.name[: -len(DISCARDED_SUFFIX)]
            out.append(EpisodeEntry(name, "discarded", p / name))
        elif (p / "metadata.yaml").exists():
            out.append(EpisodeEntry(p.name, "complete", p))
    return sorted(out, key=lambda e: e.name)


def _episode_dir(bag: Path) -> Path:
    """The top-level directory of an episode (the bag itself when complete, its wrapper otherwise)."""
    return bag.parent if bag.parent.name.endswith((PARTIAL_SUFFIX, DISCARDED_SUFFIX)) else bag


def read_episode_info(bag: str | os.PathLike) -> EpisodeInfo:
    """The metadata of a finished episode bag: custom_data "irvs.episode", then a later `label.json` if any."""
    import yaml

    bag = Path(bag)
    meta_path = bag / "metadata.yaml"
    if not meta_path.exists():
        raise BagError(f"{bag} has no metadata.yaml: not a finished rosbag2 episode")
    try:
        meta = yaml.safe_load(meta_path.read_text())["rosbag2_bagfile_information"]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise BagError(f"{meta_path} is not rosbag2 metadata: {exc}") from exc
    text = (meta.get("custom_data") or {}).get(CUSTOM_DATA_KEY)
    if text is None:
        raise BagError(f"{bag} has no '{CUSTOM_DATA_KEY}' in its custom_data: not recorded by irvs_ros")
    info = EpisodeInfo.from_json(text)
    label = bag / LABEL_FILE
    if label.exists():
        try:
            info.outcome = json.loads(label.read_text())["outcome"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BagError(f"{label} is not a label file ({{\"outcome\": ...}}): {exc}") from exc
        info.__post_init__()
    if bag.parent.name.endswith(DISCARDED_SUFFIX):
        info.outcome = "discarded"
    return info


def label_finished_episode(bag: str | os.PathLike, outcome: str) -> Path:
    """Relabel a finished episode without touching its bag: writes `label.json` atomically; "discarded" instead
    moves the episode to `<name>.discarded/<name>`. Returns the (possibly moved) bag directory."""
    bag = Path(bag)
    if outcome not in OUTCOMES or outcome == "unlabeled":
        raise BagError(f"a label must be one of {list(OUTCOMES[1:])}, got {outcome!r}")
    if not (bag / "metadata.yaml").exists() or _episode_dir(bag) != bag:
        raise BagError(f"{bag} is not a finished, kept episode bag")
    if outcome == "discarded":
        target = bag.parent / (bag.name + DISCARDED_SUFFIX)
        if target.exists():
            raise BagError(f"{target} exists already")
        target.mkdir()
        os.replace(bag, target / bag.name)
        return target / bag.name
    tmp = bag / (LABEL_FILE + ".tmp")
    tmp.write_text(json.dumps({"outcome": outcome}))
    os.replace(tmp, bag / LABEL_FILE)
    return bag


def read_messages(bag: str | os.PathLike, topics: list[str] | tuple[str, ...] | None = None,
                  deserialize: bool = True) -> Iterator[tuple[str, int, Any]]:
    """(topic, t_ns, message) in timestamp order; message is a rosbags message object, or the CDR bytes when
    deserialize is False. BagError when the bag cannot be read."""
    store = typestore()
    try:
        with Reader(Path(bag)) as reader:
            conns = [c for c in reader.connections if topics is None or c.topic in topics]
            for conn, t_ns, raw in reader.messages(connections=conns):
                yield conn.topic, t_ns, (store.deserialize_cdr(raw, conn.msgtype) if deserialize else raw)
    except BagError:
        raise
    except Exception as exc:  # rosbags raises several types (ReaderError, FileNotFoundError, struct errors)
        raise BagError(f"cannot read the bag {bag}: {type(exc).__name__}: {exc}") from exc


def deserialize(raw: bytes | memoryview, msgtype: str) -> Any:
    """A rosbags message object from CDR bytes of `msgtype`."""
    return typestore().deserialize_cdr(raw, msgtype)


def bag_summary(bag: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """topic -> (message type, message count) of a finished bag, as its index says."""
    try:
        with Reader(Path(bag)) as reader:
            return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
    except Exception as exc:
        raise BagError(f"cannot read the bag {bag}: {type(exc).__name__}: {exc}") from exc
