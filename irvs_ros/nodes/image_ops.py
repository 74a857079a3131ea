"""sensor_msgs/Image <-> numpy, and the camera frame -> policy input crop and resize (numpy only).

The policy input is the centre crop of the camera frame with the policy image's aspect ratio, resized to the
policy's (H, W): box-averaged when the crop is an integer multiple of the target (the sim's training images are
made that way: `sim.camera.Camera.render` renders the same crop at 2x and box-averages), else sampled at the
nearest pixel centres.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time as TimeMsg
from sensor_msgs.msg import Image


class ImageError(ValueError):
    """An image message or array that cannot be used (encoding, size, dtype)."""


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


def crop_resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop of `rgb` (H, W, 3) with the aspect ratio width:height, resized to (height, width, 3) uint8."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ImageError(f"expected an (H, W, 3) image, got shape {a.shape}")
    if height < 1 or width < 1:
        raise ImageError(f"target size must be >= 1, got {width}x{height}")
    h, w = a.shape[:2]
    # Largest centred crop with the target aspect ratio.
    if w * height > h * width:
        ch, cw = h, int(round(h * width / height))
    else:
        ch, cw = int(round(w * height / width)), w
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = a[top: top + ch, left: left + cw]
    if (ch, cw) == (height, width):
        return np.ascontiguousarray(crop, dtype=np.uint8)
    if ch % height == 0 and cw % width == 0:
        fy, fx = ch // height, cw // width
        return crop.reshape(height, fy, width, fx, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    rows = ((np.arange(height) + 0.5) * ch / height).astype(int)
    cols = ((np.arange(width) + 0.5) * cw / width).astype(int)
    return np.ascontiguousarray(crop[rows][:, cols], dtype=np.uint8)
