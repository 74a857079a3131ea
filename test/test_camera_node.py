"""camera_node over real DDS, fed through librealsense's own machinery without a camera: frames with a known
pattern are injected into an `rs.software_device` colour sensor, recorded with `rs.recorder` to a .db3 file, and
replayed by the node's playback source through a real `rs.pipeline`; a subscriber must get those frames."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from irvs_ros.nodes.camera_node import CameraNode
from irvs_ros.nodes.common import SENSOR_QOS, NodeConfigError
from irvs_ros.nodes.frame_sources import FrameSourceError, RealSensePlaybackSource, make_frame_source
from irvs_ros.nodes.graph import InProcessGraph, TopicLog
from irvs_ros.nodes.image_ops import image_array

rs = pytest.importorskip("pyrealsense2")

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
DOMAIN = 10 + (os.getpid() % 40) * 2 + 0  # unique per test module (last term) and per process
W, H, FPS, N_FRAMES = 64, 48, 30, 12
FX, FY = 61.5, 62.5


def pattern(i: int) -> np.ndarray:
    """Frame i: red ramps along x, green along y, blue encodes the frame index (all exact in rgb8)."""
    img = np.zeros((H, W, 3), np.uint8)
    img[:, :, 0] = (np.arange(W) * 4)[None, :]
    img[:, :, 1] = (np.arange(H) * 5)[:, None]
    img[:, :, 2] = 10 * (i + 1)
    return img


def record(path: str) -> None:
    """Inject N_FRAMES pattern frames into a software device's colour sensor while rs.recorder writes `path`."""
    dev = rs.software_device()
    sensor = dev.add_sensor("Color")
    intr = rs.intrinsics()
    intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy = W, H, FX, FY, W / 2, H / 2
    intr.model, intr.coeffs = rs.distortion.none, [0.0] * 5
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp = rs.stream.color, 0, 0, W, H, FPS, 3
    vs.fmt, vs.intrinsics = rs.format.rgb8, intr
    profile = sensor.add_video_stream(vs)
    recorder = rs.recorder(path, dev)
    rec_sensor = recorder.query_sensors()[0]  # frames reach the file only through the recorder's sensor
    queue = rs.frame_queue(N_FRAMES + 2)
    rec_sensor.open(profile)
    rec_sensor.start(queue)
    for i in range(N_FRAMES):
        f = rs.software_video_frame()
        f.pixels, f.bpp, f.stride = pattern(i).tobytes(), 3, 3 * W
        f.timestamp, f.domain, f.frame_number = i * 1000.0 / FPS, rs.timestamp_domain.hardware_clock, i
        f.profile = profile.as_video_stream_profile()
        sensor.on_video_frame(f)
        assert queue.wait_for_frame(2000).get_frame_number() == i
        time.sleep(1.0 / FPS)  # playback paces by the recorded arrival times: record at the camera's cadence
    rec_sensor.stop()
    rec_sensor.close()
    del rec_sensor, recorder  # the recorder closes the file when released


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("rs") / "injected.db3")
    record(path)
    assert os.path.getsize(path) > 0  # frames are stored compressed: the size says little
    return path


def test_playback_source_returns_the_injected_frames(recording):
    source = RealSensePlaybackSource(recording, real_time=False, repeat=False)
    info = source.start()
    try:
        assert (info.width, info.height, info.fps) == (W, H, FPS)
        assert (info.fx, info.fy) == pytest.approx((FX, FY))
        frames = []
        while (frame := source.read(timeout=2.0)) is not None:
            frames.append(frame)
    finally:
        source.stop()
    assert [f.frame_number for f in frames] == list(range(N_FRAMES))
    for i, f in enumerate(frames):
        assert f.rgb.dtype == np.uint8 and np.array_equal(f.rgb, pattern(i)), i


def test_node_publishes_replayed_frames_like_realsense_ros(recording):
    with InProcessGraph(domain_id=DOMAIN) as g:
        probe = g.add(Node("probe", context=g.context))
        images = TopicLog(probe, Image, "/camera/camera/color/image_raw", SENSOR_QOS)
        infos = TopicLog(probe, CameraInfo, "/camera/camera/color/camera_info", SENSOR_QOS)
        node = g.add(CameraNode(**g.node_kwargs(source="playback", playback_file=recording)))
        assert images.wait_for(2 * N_FRAMES, timeout=20.0), f"only {len(images)} images"
        items = images.items
        assert node.frames >= 2 * N_FRAMES
    msgs = [m for _, m in items]
    for m in msgs:
        assert m.encoding == "rgb8" and (m.height, m.width, m.step) == (H, W, 3 * W)
        assert m.header.frame_id == "camera_color_optical_frame"
    # The content is the injected pattern, exactly, and the recording loops (repeat) in frame order.
    blues = []
    for m in msgs:
        img = image_array(m)
        i = int(img[0, 0, 2]) // 10 - 1
        assert 0 <= i < N_FRAMES and np.array_equal(img, pattern(i)), i
        blues.append(i)
    assert set(blues) == set(range(N_FRAMES)), blues
    in_order = sum((b - a) % N_FRAMES == 1 for a, b in zip(blues, blues[1:], strict=False))
    assert in_order >= 0.5 * (len(blues) - 1), blues
    # Played in real time: about the recorded 30 Hz.
    times = [t for t, _ in items]
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 15.0 < rate < 45.0, rate
    info = infos.messages[-1]
    assert (info.width, info.height) == (W, H)
    assert info.k[0] == pytest.approx(FX) and info.k[4] == pytest.approx(FY) and info.k[2] == pytest.approx(W / 2)


def test_no_camera_or_no_file_is_a_clear_error_at_start(tmp_path):
    ctx = rs.context()
    if len(ctx.query_devices()) > 0:
        pytest.skip("a RealSense camera is connected")
    with InProcessGraph(domain_id=DOMAIN) as g:
        with pytest.raises(NodeConfigError, match="no RealSense camera is connected"):
            CameraNode(**g.node_kwargs(source="realsense"))
        with pytest.raises(NodeConfigError, match="does not exist"):
            CameraNode(**g.node_kwargs(source="playback", playback_file=str(tmp_path / "missing.db3")))
        with pytest.raises(NodeConfigError, match="needs a playback_file"):
            CameraNode(**g.node_kwargs(source="playback"))
        with pytest.raises(NodeConfigError, match="width"):
            CameraNode(**g.node_kwargs(width=4))
    with pytest.raises(FrameSourceError, match="must be one of"):
        make_frame_source("webcam")
    not_a_recording = tmp_path / "junk.db3"
    not_a_recording.write_bytes(b"not a rosbag")
    start = time.monotonic()
    with pytest.raises(FrameSourceError, match="junk.db3"):
        RealSensePlaybackSource(not_a_recording).start()
    assert time.monotonic() - start < 10.0
