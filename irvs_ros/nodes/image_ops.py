"""sensor_msgs/Image <-> numpy for the nodes; the camera frame -> policy input crop and resize is
`data.images.crop_resize` (re-exported here with its `ImageError`), the one implementation ingest uses too.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time as TimeMsg
from sensor_msgs.msg import Image

from irvs_ros.data.images import ImageError, crop_resize

__all__ = ["ImageError", "crop_resize", "image_array", "image_msg"]


def image_msg(rgb: np.ndarray, stamp: TimeMsg, frame_id: str) -> Image:
    """An rgb8 Image message from an (H, W, 3) uint8 array."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ImageError(f"expected an (H, W, 3) uint8 RGB array, got shape {a.shape} dtype {a.dtype}")
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = 3 * msg.width
    msg.data = np.ascontiguousarray(a).tobytes()
    return msg


def image_array(msg: Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB array of an rgb8 / bgr8 / rgba8 / bgra8 Image (row padding allowed)."""
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}.get(msg.encoding)
    if channels is None:
        raise ImageError(f"unsupported image encoding {msg.encoding!r}; expected rgb8, bgr8, rgba8 or bgra8")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h < 1 or w < 1 or step < w * channels or len(msg.data) < h * step:
        raise ImageError(f"image {w}x{h} {msg.encoding} with step {step} does not fit its {len(msg.data)} bytes")
    buf = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray, memoryview)) else msg.data,
                        dtype=np.uint8, count=h * step)
    a = buf.reshape(h, step)[:, : w * channels].reshape(h, w, channels)[:, :, :3]
    if msg.encoding.startswith("bgr"):
        a = a[:, :, ::-1]
    return np.ascontiguousarray(a)
