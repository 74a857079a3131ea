"""Swappable colour-frame sources for camera_node: a live RealSense device, or a RealSense recording played back.

Both go through a real `pyrealsense2.pipeline`; they differ only in how the pipeline is configured:

    source = make_frame_source("realsense", width=640, height=360, fps=30)      # a live D415 (any, or by serial)
    source = make_frame_source("playback", playback_file="run.db3")              # a .db3 (rosbag2) / .bag recording
    info = source.start()          # StreamInfo: size, fps, intrinsics, device name
    frame = source.read(timeout=1.0)  # Frame (H, W, 3) uint8 RGB, or None when no frame came in time
    source.stop()

Playback publishes the recording's own colour stream (its size and rate); the live source asks the device for
`width` x `height` at `fps` in RGB8. Anything unusable (no device, missing file, no colour stream, an unsupported
pixel format) raises `FrameSourceError` with what was expected and what was found.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOURCE_KINDS = ("realsense", "playback")


class FrameSourceError(RuntimeError):
    """A frame source cannot be opened or read (no camera, bad file, unsupported stream)."""


@dataclass(frozen=True)
class Frame:
    """One colour frame: rgb (H, W, 3) uint8; device timestamp in ms (librealsense's); frame number."""

    rgb: np.ndarray
    timestamp_ms: float
    frame_number: int


@dataclass(frozen=True)
class StreamInfo:
    """The colour stream as opened: size (px), rate (Hz), pinhole intrinsics (px) and where it comes from."""

    width: int
    height: int
    fps: float
    fx: float
    fy: float
    ppx: float
    ppy: float
    distortion_model: str
    coeffs: tuple[float, ...]
    device: str


class FrameSource:
    """Interface of a colour-frame source (see module docstring)."""

    def start(self) -> StreamInfo:
        raise NotImplementedError

    def read(self, timeout: float) -> Frame | None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _rs():
    try:
        import pyrealsense2 as rs
    except ImportError as e:  # e.g. libusb-1.0 missing: the wheel cannot load
        raise FrameSourceError(f"pyrealsense2 cannot be imported ({e}); install pyrealsense2 (and libusb-1.0-0)") from e
    return rs


def _to_rgb(data: np.ndarray, fmt_name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB copy of a frame buffer in RGB8 / BGR8 / RGBA8 / BGRA8.

    Always a copy: a librealsense frame must not outlive its read (frames come from a small pool that the
    device waits on, and a frame released after the pipeline stopped is not safe)."""
    if fmt_name in ("rgb8", "rgba8"):
        return np.array(data[:, :, :3], dtype=np.uint8, order="C", copy=True)
    if fmt_name in ("bgr8", "bgra8"):
        return np.array(data[:, :, 2::-1], dtype=np.uint8, order="C", copy=True)
    raise FrameSourceError(f"colour format {fmt_name} is not supported; expected rgb8, bgr8, rgba8 or bgra8")


class RealSensePipelineSource(FrameSource):
    """Colour frames from a pyrealsense2 pipeline; subclasses say how the pipeline config is made."""

    def __init__(self) -> None:
        self._pipeline = None
        self._format = ""
        self._lock = threading.Lock()

    def _config(self, rs):  # pragma: no cover - overridden
        raise NotImplementedError

    def _prepare(self, device) -> None:
        """Hook run on the resolved device before the pipeline starts (playback pacing)."""

    def start(self) -> StreamInfo:
        rs = _rs()
        config = self._config(rs)
        pipeline = rs.pipeline()
        try:
            # Resolve first: the pipeline then starts this very device, so settings made on it count from frame 0.
            self._prepare(config.resolve(pipeline).get_device())
            profile = pipeline.start(config)
        except RuntimeError as e:
            raise FrameSourceError(f"{self.describe()}: the RealSense pipeline did not start: {e}") from e
        try:
            color = profile.get_stream(rs.stream.color).as_video_stream_profile()
            fmt = str(color.format()).split(".")[-1]
            if fmt not in ("rgb8", "bgr8", "rgba8", "bgra8"):
                raise FrameSourceError(f"{self.describe()}: colour format {fmt} is not supported; "
                                       "expected rgb8, bgr8, rgba8 or bgra8")
            intr = color.get_intrinsics()
            device = profile.get_device()
            name = device.get_info(rs.camera_info.name) if device.supports(rs.camera_info.name) else "RealSense"
        except Exception:
            pipeline.stop()
            raise
        with self._lock:
            self._pipeline, self._format = pipeline, fmt
        return StreamInfo(width=int(intr.width), height=int(intr.height), fps=float(color.fps()), fx=float(intr.fx),
                          fy=float(intr.fy), ppx=float(intr.ppx), ppy=float(intr.ppy),
                          distortion_model=str(intr.model).split(".")[-1], coeffs=tuple(float(c) for c in intr.coeffs),
                          device=str(name))

    def read(self, timeout: float) -> Frame | None:
        with self._lock:
            pipeline, fmt = self._pipeline, self._format
        if pipeline is None:
            raise FrameSourceError(f"{self.describe()}: read() before start()")
        ok, frames = pipeline.try_wait_for_frames(max(1, int(timeout * 1000)))
        if not ok:
            return None
        color = frames.get_color_frame()
        if not color:
            return None
        rgb = _to_rgb(np.asanyarray(color.get_data()), fmt)
        result = Frame(rgb=rgb, timestamp_ms=float(color.get_timestamp()), frame_number=int(color.get_frame_number()))
        del color, frames  # hand the frames back to librealsense now
        return result

    def _before_stop(self, pipeline) -> None:
        """Hook run before the pipeline stops."""

    def stop(self) -> None:
        with self._lock:
            pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            try:
                self._before_stop(pipeline)
                pipeline.stop()
            except RuntimeError:  # already stopped (e.g. the device went away)
                pass


class RealSenseLiveSource(RealSensePipelineSource):
    """A connected RealSense camera (the first one, or the one with `serial`) streaming RGB8 at width x height @ fps."""

    def __init__(self, width: int, height: int, fps: int, serial: str = "") -> None:
        super().__init__()
        self.width, self.height, self.fps, self.serial = int(width), int(height), int(fps), str(serial)

    def describe(self) -> str:
        which = f"serial {self.serial}" if self.serial else "any serial"
        return f"RealSense camera ({which}) colour {self.width}x{self.height} @ {self.fps} Hz"

    def _config(self, rs):
        devices = rs.context().query_devices()
        serials = [d.get_info(rs.camera_info.serial_number) for d in devices
                   if d.supports(rs.camera_info.serial_number)]
        if not serials:
            raise FrameSourceError(f"no RealSense camera is connected (wanted: {self.describe()}); "
                                   "check the USB cable, or use source:=playback with a recording")
        if self.serial and self.serial not in serials:
            raise FrameSourceError(f"no RealSense camera with serial {self.serial!r}; connected: {serials}")
        config = rs.config()
        if self.serial:
            config.enable_device(self.serial)
        config.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
        return config


class RealSensePlaybackSource(RealSensePipelineSource):
    """A RealSense recording (.db3 rosbag2 from librealsense >= 2.56, or a legacy .bag) played through the pipeline.

    real_time: pace frames at the recorded rate (else as fast as they are read); repeat: loop at the end.
    """

    def __init__(self, path: str | Path, real_time: bool = True, repeat: bool = True) -> None:
        super().__init__()
        self.path, self.real_time, self.repeat = Path(path), bool(real_time), bool(repeat)

    def describe(self) -> str:
        return f"RealSense recording {self.path}"

    def _config(self, rs):
        if not self.path.is_file():
            raise FrameSourceError(f"RealSense recording {self.path} does not exist (expected a .db3 or .bag file)")
        config = rs.config()
        try:
            config.enable_device_from_file(str(self.path), repeat_playback=self.repeat)
        except RuntimeError as e:
            raise FrameSourceError(f"{self.describe()} cannot be opened: {e}") from e
        config.enable_stream(rs.stream.color)  # the file's own colour stream, whatever its size and format
        return config

    def _prepare(self, device) -> None:
        device.as_playback().set_real_time(self.real_time)

    def _before_stop(self, pipeline) -> None:
        # No frame in flight while the playback sensors stop (librealsense issue 9446: a stop racing a frame
        # delivery can crash).
        pipeline.get_active_profile().get_device().as_playback().pause()


def make_frame_source(kind: str, *, width: int = 640, height: int = 360, fps: int = 30, serial: str = "",
                      playback_file: str = "", real_time: bool = True, repeat: bool = True) -> FrameSource:
    """The frame source `kind` ("realsense" live device or "playback" of `playback_file`)."""
    if kind == "realsense":
        return RealSenseLiveSource(width, height, fps, serial)
    if kind == "playback":
        if not playback_file:
            raise FrameSourceError("source 'playback' needs a playback_file (a RealSense .db3 or .bag recording)")
        return RealSensePlaybackSource(playback_file, real_time=real_time, repeat=repeat)
    raise FrameSourceError(f"frame source must be one of {list(SOURCE_KINDS)}, got {kind!r}")
