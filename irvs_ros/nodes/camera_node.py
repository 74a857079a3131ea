"""camera_node: RealSense colour images on the realsense-ros topics, from a swappable frame source.

Publishes `/camera/camera/color/image_raw` (sensor_msgs/Image rgb8, sensor-data QoS, frame_id
`camera_color_optical_frame`) and `/camera/camera/color/camera_info` (sensor_msgs/CameraInfo of the opened
stream), as realsense-ros' `rs_launch.py` does, so either driver can feed the graph; and `/diagnostics` (source,
frames, measured rate, timeouts, last error).

The source (`frame_sources`) is a live RealSense (`source: realsense`, 640x360 RGB at 30 Hz by default) or a
recording played through librealsense (`source: playback`, `playback_file`). A source that cannot start (no
camera, missing file) is a `NodeConfigError` at construction: the console script prints it and exits 2. Frames
are read in the node's own thread; images are stamped with the node clock when they are read. If the source
fails later (cable pulled), the error is reported on /diagnostics and the source is restarted every
`restart_period` seconds.
"""

from __future__ import annotations

import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from irvs_ros.nodes.common import (
    DIAG_ERROR,
    DIAG_OK,
    DIAG_WARN,
    SENSOR_QOS,
    NodeConfigError,
    Param,
    declare_parameters,
    diagnostic_array,
    diagnostic_status,
    one_of,
    positive,
    run_node,
)
from irvs_ros.nodes.frame_sources import SOURCE_KINDS, FrameSource, FrameSourceError, StreamInfo, make_frame_source
from irvs_ros.nodes.image_ops import image_msg

NODE_NAME = "camera_node"


def _int_in(lo: int, hi: int):
    return lambda v: None if lo <= v <= hi else f"an integer in [{lo}, {hi}]"


PARAMS: dict[str, Param] = {
    "source": Param(str, "frame source: realsense (live camera) or playback (recording)", one_of(*SOURCE_KINDS)),
    "serial_number": Param(str, "serial of the RealSense to open; empty = the first one"),
    "playback_file": Param(str, "RealSense recording (.db3 / .bag) for source playback"),
    "playback_real_time": Param(bool, "play the recording at its recorded rate"),
    "playback_repeat": Param(bool, "loop the recording"),
    "width": Param(int, "colour width (px) asked of a live camera", _int_in(8, 1920)),
    "height": Param(int, "colour height (px) asked of a live camera", _int_in(8, 1080)),
    "fps": Param(int, "colour frame rate (Hz) asked of a live camera", _int_in(1, 90)),
    "image_topic": Param(str, "colour image out (Image rgb8)"),
    "camera_info_topic": Param(str, "colour camera info out (CameraInfo)"),
    "frame_id": Param(str, "frame_id of images and camera info"),
    "frame_timeout": Param(float, "seconds without a frame before it counts as a timeout", positive),
    "restart_period": Param(float, "seconds between restarts of a failed source", positive),
    "diagnostics_period": Param(float, "seconds between /diagnostics messages", positive),
}


def camera_info_msg(info: StreamInfo, frame_id: str) -> CameraInfo:
    """CameraInfo (pinhole K, P; distortion as librealsense reports it) of an opened stream."""
    msg = CameraInfo()
    msg.header.frame_id = frame_id
    msg.width, msg.height = info.width, info.height
    msg.distortion_model = "plumb_bob" if info.distortion_model in ("none", "brown_conrady") else info.distortion_model
    msg.d = list(info.coeffs)
    msg.k = [info.fx, 0.0, info.ppx, 0.0, info.fy, info.ppy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [info.fx, 0.0, info.ppx, 0.0, 0.0, info.fy, info.ppy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


class CameraNode(Node):
    """The camera driver (see module docstring). `source` replaces the one the parameters describe (tests,
    other cameras); `close()` stops the reader thread and the source."""

    def __init__(self, source: FrameSource | None = None, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            self.params = p = declare_parameters(self, NODE_NAME, PARAMS)
            self.source = source or make_frame_source(
                p["source"], width=p["width"], height=p["height"], fps=p["fps"], serial=p["serial_number"],
                playback_file=p["playback_file"], real_time=p["playback_real_time"], repeat=p["playback_repeat"])
            self.info = self.source.start()
        except FrameSourceError as e:
            self.destroy_node()
            raise NodeConfigError(f"{NODE_NAME}: {e}") from e
        except NodeConfigError:
            self.destroy_node()
            raise
        self.get_logger().info(f"{self.source.describe()}: {self.info.device} colour {self.info.width}x"
                               f"{self.info.height} @ {self.info.fps:g} Hz -> {p['image_topic']}")
        self._info_msg = camera_info_msg(self.info, p["frame_id"])
        self.frames = 0
        self.timeouts = 0
        self.restarts = 0
        self.error = ""
        self._rate_mark = (time.monotonic(), 0)
        self.measured_rate = float("nan")
        self._stop = threading.Event()
        self._img_pub = self.create_publisher(Image, p["image_topic"], SENSOR_QOS)
        self._info_pub = self.create_publisher(CameraInfo, p["camera_info_topic"], SENSOR_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        self._thread = threading.Thread(target=self._run, name="camera-reader", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ reader thread
    def _run(self) -> None:
        p = self.params
        while not self._stop.is_set():
            try:
                frame = self.source.read(p["frame_timeout"])
            except Exception as e:  # the device went away or the stream broke: report, then restart the source
                self._fail(e)
                continue
            if frame is None:
                self.timeouts += 1
                continue
            stamp = self.get_clock().now().to_msg()
            self._img_pub.publish(image_msg(frame.rgb, stamp, p["frame_id"]))
            self._info_msg.header.stamp = stamp
            self._info_pub.publish(self._info_msg)
            self.frames += 1
            self.error = ""

    def _fail(self, e: Exception) -> None:
        self.error = f"{type(e).__name__}: {e}"
        self.get_logger().error(f"frame source failed: {self.error}; restarting in {self.params['restart_period']} s",
                                throttle_duration_sec=5.0)
        self.source.stop()
        while not self._stop.wait(self.params["restart_period"]):
            try:
                self.info = self.source.start()
            except FrameSourceError as err:
                self.error = str(err)
                continue
            self.restarts += 1
            return

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        t0, n0 = self._rate_mark
        if now > t0:
            self.measured_rate = (self.frames - n0) / (now - t0)
        self._rate_mark = (now, self.frames)
        if self.error:
            level, message = DIAG_ERROR, self.error
        elif self.frames == 0 or self.measured_rate < 0.5 * self.info.fps:
            level, message = DIAG_WARN, f"frame rate {self.measured_rate:.3g} Hz below half of {self.info.fps:g} Hz"
        else:
            level, message = DIAG_OK, "streaming"
        values = {"source": self.source.describe(), "device": self.info.device, "width": self.info.width,
                  "height": self.info.height, "fps": self.info.fps, "frames": self.frames,
                  "rate": self.measured_rate, "timeouts": self.timeouts, "restarts": self.restarts}
        status = diagnostic_status(f"{self.get_name()}: camera", level, message, values, self.info.device)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [status]))

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop the reader thread and the frame source (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self.source.stop()


def main(args: list[str] | None = None) -> int:
    return run_node(CameraNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
