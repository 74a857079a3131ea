"""Camera frame -> policy input: the centre crop with the policy image's aspect ratio, resized (numpy only).

One implementation for both sides of a policy: `data.ingest` (recorded frames -> training images) and the
policy node (`nodes.image_ops`, live frames -> network input), so training and acting see the same pixels.
The resize box-averages when the crop is an integer multiple of the target (the sim's training images are made
that way: `sim.camera.Camera.render` renders the same crop at 2x and box-averages), else samples the nearest
pixel centres.
"""

from __future__ import annotations

import numpy as np


class ImageError(ValueError):
    """An image array or message that cannot be used (shape, encoding, size, dtype)."""


def crop_box(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of the largest centred crop of a height x width frame with the
    aspect ratio target_width:target_height (pixels)."""
    if height < 1 or width < 1:
        raise ImageError(f"frame size must be >= 1, got {width}x{height}")
    if target_height < 1 or target_width < 1:
        raise ImageError(f"target size must be >= 1, got {target_width}x{target_height}")
    if width * target_height > height * target_width:  # wider than the target: crop the sides
        ch, cw = height, int(round(height * target_width / target_height))
    else:
        ch, cw = int(round(width * target_height / target_width)), width
    ch, cw = max(1, min(ch, height)), max(1, min(cw, width))
    return (height - ch) // 2, (width - cw) // 2, ch, cw


def crop_resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop of `rgb` (H, W, 3) with the aspect ratio width:height, resized to (height, width, 3) uint8.

    ImageError for an array that is not (H, W, 3) or a target size < 1.
    """
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ImageError(f"expected an (H, W, 3) image, got shape {a.shape}")
    top, left, ch, cw = crop_box(a.shape[0], a.shape[1], height, width)
    crop = a[top: top + ch, left: left + cw]
    if (ch, cw) == (height, width):
        return np.ascontiguousarray(crop, dtype=np.uint8)
    if ch % height == 0 and cw % width == 0:
        fy, fx = ch // height, cw // width
        if crop.dtype == np.uint8:
            return _box_mean_uint8(crop, fy, fx)
        return crop.reshape(height, fy, width, fx, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    rows = ((np.arange(height) + 0.5) * ch / height).astype(int)
    cols = ((np.arange(width) + 0.5) * cw / width).astype(int)
    return np.ascontiguousarray(crop[rows][:, cols], dtype=np.uint8)


def _box_mean_uint8(crop: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Mean of each fy x fx block of the uint8 `crop` (fy * h, fx * w, 3), rounded half to even: (h, w, 3) uint8.

    Bit-identical to a float64 mean of the blocks followed by `round` (the general path): the block sums are exact
    integers, so both round the same rational number; a .5 tie is exactly representable and rint sends it to even,
    and any other mean lies at least 1 / (2 fy fx) from a tie, far beyond the division's rounding error.
    """
    h, w, n = crop.shape[0] // fy, crop.shape[1] // fx, fy * fx
    # The narrowest integer accumulator that cannot overflow keeps the sums exact and the memory traffic small.
    acc = np.uint16 if n * 255 <= 0xFFFF else np.uint32 if n * 255 <= 0xFFFFFFFF else np.uint64
    # Whole-row adds, then einsum over the column blocks: tight inner loops, several times faster than a .sum
    # over the block axes of the 5-d view.
    rows = crop[0::fy].astype(acc)
    for i in range(1, fy):
        rows += crop[i::fy]
    sums = np.einsum("hwjc->hwc", rows.reshape(h, w, fx, 3))
    # float32 holds sums < 2**16 exactly and its error stays far below 1 / (2 * 257); larger blocks need float64.
    real = np.float32 if acc is np.uint16 else np.float64
    return np.rint(sums.astype(real) / real(n)).astype(np.uint8)
