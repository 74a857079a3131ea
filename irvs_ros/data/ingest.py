"""Recorded episode bags -> training dataset store (`irvs ingest`).

Per episode, observations are sampled at the policy rate (default 5 Hz) on the bag's clock (receive times):
sample k is at t_k = t_sp0 + (k + 1/2) / rate, where t_sp0 is the first setpoint; half a period after each
setpoint keeps the samples clear of the setpoint arrival jitter. At t_k the sample holds the newest image
(centre-cropped to the training aspect ratio and resized, as the policy node does), the newest effector xy
(/irvs/ee_pose) and the newest setpoint xy: state = [effector_x, effector_y, setpoint_x, setpoint_y] (m, base
frame; state_keys effector_xy, setpoint_xy as the policy node builds them). The action of sample k is the
setpoint change to the next sample, sp(t_{k+1}) - sp(t_k) (m), so an episode of K samples gives K - 1 steps.
Reward: 1 at the last step of a successful episode, 0 elsewhere.
"""

from __future__ import annotations

import bisect
import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from irvs_ros.data.bags import (
    EE_POSE_TOPIC,
    IMAGE_TOPIC,
    SETPOINT_TOPIC,
    BagError,
    deserialize,
    list_episodes,
    read_episode_info,
    read_messages,
)
from irvs_ros.data.images import crop_resize
from irvs_ros.data.store import Dataset, DatasetWriter

STATE_KEYS = ("effector_xy", "setpoint_xy")
DEFAULT_IMAGE_SIZE = (120, 90)  # (W, H): IBC's real-robot network input


class IngestError(ValueError):
    """Bad ingest arguments, or no episode could be turned into training data."""


def image_rgb(msg: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a rosbags sensor_msgs/Image (rgb8, bgr8, rgba8 or bgra8; row padding allowed)."""
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}.get(msg.encoding)
    if channels is None:
        raise BagError(f"unsupported image encoding {msg.encoding!r}; expected rgb8, bgr8, rgba8 or bgra8")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8)
    if h < 1 or w < 1 or step < w * channels or data.size < h * step:
        raise BagError(f"image {w}x{h} {msg.encoding} with step {step} does not fit its {data.size} bytes")
    a = data[: h * step].reshape(h, step)[:, : w * channels].reshape(h, w, channels)[:, :, :3]
    return np.ascontiguousarray(a[:, :, ::-1] if msg.encoding.startswith("bgr") else a)


def parse_image_size(text: str) -> tuple[int, int]:
    """"WxH" -> (W, H); IngestError when malformed."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise IngestError(f"image size must be WIDTHxHEIGHT (e.g. 120x90), got {text!r}") from None
    if w < 1 or h < 1:
        raise IngestError(f"image size must be positive, got {text!r}")
    return w, h


def _xy(pose_msg: Any) -> tuple[float, float]:
    return float(pose_msg.pose.position.x), float(pose_msg.pose.position.y)


def episode_steps(bag: str | os.PathLike, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                  rate: float = 5.0, success: bool = False) -> dict[str, np.ndarray]:
    """Training steps of one finished episode bag: state (T, 4) float32, image (T, H, W, 3) uint8, action (T, 2)
    float32, reward (T,) float32, sample_time (T,) float64 s (bag clock). BagError when it holds too little."""
    width, height = image_size
    setpoints: list[tuple[int, tuple[float, float]]] = []
    poses: list[tuple[int, tuple[float, float]]] = []
    image_times: list[int] = []
    # Pass 1: poses, setpoints and image times. Image bytes are not kept (a minute of 640x360 frames is ~1 GB).
    for topic, t_ns, raw in read_messages(bag, (IMAGE_TOPIC, SETPOINT_TOPIC, EE_POSE_TOPIC), deserialize=False):
        if topic == IMAGE_TOPIC:
            image_times.append(t_ns)
        else:
            xy = _xy(deserialize(raw, "geometry_msgs/msg/PoseStamped"))
            if np.all(np.isfinite(xy)):
                (setpoints if topic == SETPOINT_TOPIC else poses).append((t_ns, xy))
    missing = [t for t, v in ((IMAGE_TOPIC, image_times), (SETPOINT_TOPIC, setpoints), (EE_POSE_TOPIC, poses))
               if not v]
    if missing:
        raise BagError(f"{bag} has no messages on {missing}")
    period_ns = 1e9 / rate
    t_end = max(setpoints[-1][0], poses[-1][0], image_times[-1])
    first_all = max(setpoints[0][0], poses[0][0], image_times[0])
    t0 = setpoints[0][0] + 0.5 * period_ns
    k0 = max(0, int(np.ceil((first_all - t0) / period_ns)))
    times = [t0 + k * period_ns for k in range(k0, int((t_end - t0) // period_ns) + 1)]
    if len(times) < 2:
        raise BagError(f"{bag} is too short: {len(times)} sample(s) at {rate} Hz with all of image, setpoint and "
                       f"effector pose (need 2 for one action)")

    def newest(series: list, t: float) -> int:
        """Index of the newest message of `series` received at or before t (t >= its first message)."""
        return bisect.bisect_right(series, t, key=lambda s: s[0]) - 1

    sp = np.array([setpoints[newest(setpoints, t)][1] for t in times], dtype=np.float64)
    ee = np.array([poses[newest(poses, t)][1] for t in times], dtype=np.float64)
    # Pass 2: decode only the images that are the newest at some sample time.
    wanted = {bisect.bisect_right(image_times, t) - 1 for t in times[:-1]}
    decoded: dict[int, np.ndarray] = {}
    for i, (_topic, _t, raw) in enumerate(read_messages(bag, (IMAGE_TOPIC,), deserialize=False)):
        if i in wanted:
            decoded[i] = crop_resize(image_rgb(deserialize(raw, "sensor_msgs/msg/Image")), height, width)
    if not wanted <= set(decoded):
        raise BagError(f"{bag} changed while it was read (images missing in the second pass)")
    imgs = [decoded[bisect.bisect_right(image_times, t) - 1] for t in times[:-1]]
    t_steps = len(times) - 1
    reward = np.zeros(t_steps, np.float32)
    if success:
        reward[-1] = 1.0
    return {"state": np.concatenate([ee, sp], axis=1)[:-1].astype(np.float32),
            "image": np.stack(imgs).astype(np.uint8),
            "action": np.diff(sp, axis=0).astype(np.float32),
            "reward": reward, "sample_time": np.asarray(times[:-1]) * 1e-9}


@dataclass
class IngestReport:
    """What `ingest` did: episodes written (names) and skipped ((name, reason)), dataset steps."""

    out: Path
    written: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    num_steps: int = 0


def ingest(recordings: str | os.PathLike, out: str | os.PathLike, *, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
           rate: float = 5.0, action_limit: float = 0.1, include_unlabeled: bool = False,
           log: Callable[[str], None] = print, command: str = "") -> IngestReport:
    """Turn every usable episode under `recordings` into one dataset file `out` (irvs_ros.data.store format).

    Skipped, each with a message through `log`: discarded and partial (unfinished) episodes, unreadable or too
    short bags, and unlabeled ones unless include_unlabeled (then counted as failures). action_limit (m) is the
    per-axis setpoint step bound recorded as meta["action_limits"]. IngestError when nothing is left.
    """
    if not (rate > 0 and np.isfinite(rate)):
        raise IngestError(f"rate must be a finite number > 0 (Hz), got {rate}")
    if not (action_limit > 0 and np.isfinite(action_limit)):
        raise IngestError(f"action_limit must be a finite number > 0 (m), got {action_limit}")
    width, height = image_size
    report = IngestReport(Path(out))
    entries = list_episodes(recordings)
    if not entries:
        raise IngestError(f"no episode bags found under {recordings}")
    obs_spec = {"state_dim": 4, "image_shape": [height, width, 3], "state_keys": list(STATE_KEYS)}
    meta = {"source": "recordings", "recordings": str(Path(recordings).resolve()), "control_rate_hz": float(rate),
            "action_limits": {"low": [-action_limit] * 2, "high": [action_limit] * 2},
            "image_size": [width, height], "command": command,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}

    def skip(name: str, reason: str) -> None:
        report.skipped.append((name, reason))
        log(f"skipping {name}: {reason}")

    writer = DatasetWriter(out, obs_spec=obs_spec, action_dim=2, meta=meta)
    try:
        for entry in entries:
            if entry.status == "partial":
                skip(entry.name, "unfinished recording (.partial: the recorder stopped before the episode ended)")
                continue
            if entry.status == "discarded":
                skip(entry.name, "discarded by the operator")
                continue
            try:
                info = read_episode_info(entry.bag)
                if info.outcome == "discarded":
                    skip(entry.name, "discarded by the operator")
                    continue
                if info.outcome == "unlabeled" and not include_unlabeled:
                    skip(entry.name, "no success / failure label (use --include-unlabeled to count it as a failure)")
                    continue
                steps = episode_steps(entry.bag, image_size, rate, info.success)
            except BagError as exc:
                skip(entry.name, f"not usable: {exc}")
                continue
            big = np.abs(steps["action"]) > action_limit
            if big.any():
                log(f"warning: {entry.name}: {int(big.any(axis=1).sum())} step(s) move the setpoint more than "
                    f"{action_limit} m per axis")
            writer.add_episode(state=steps["state"], image=steps["image"], action=steps["action"],
                               reward=steps["reward"], success=info.success,
                               info={"bag": entry.name, "task": info.task, "operator": info.operator,
                                     "outcome": info.outcome, "start_time": info.start_time,
                                     "end_time": info.end_time, "first_sample_time": float(steps["sample_time"][0])})
            report.written.append(entry.name)
            report.num_steps += len(steps["action"])
        if not report.written:
            raise IngestError(f"no usable episode under {recordings}: " +
                              "; ".join(f"{n}: {r}" for n, r in report.skipped))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    Dataset.open(out)  # what was written opens and checks
    return report
