"""data.images.crop_resize: the one camera frame -> policy input mapping, shared by ingest and the policy node."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from irvs_ros.data import images, ingest
from irvs_ros.data.images import ImageError, crop_box, crop_resize


def test_ingest_and_the_policy_node_use_the_one_implementation():
    from irvs_ros.nodes import image_ops

    assert ingest.crop_resize is crop_resize and image_ops.crop_resize is crop_resize
    assert image_ops.ImageError is ImageError and issubclass(ImageError, ValueError)
    # Layer rule: data imports nothing else of the package.
    tree = ast.parse(Path(images.__file__).read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in modules if m and m.startswith("irvs_ros")}, modules


def test_centre_crop_keeps_the_target_aspect_ratio():
    assert crop_box(360, 640, 90, 120) == (0, 80, 360, 480)   # 16:9 frame, 4:3 target: the sides go
    assert crop_box(480, 360, 90, 120) == (105, 0, 270, 360)  # portrait frame: top and bottom go
    assert crop_box(90, 120, 90, 120) == (0, 0, 90, 120)


def test_integer_factors_are_box_averaged():
    frame = np.zeros((4, 8, 3), np.uint8)  # 2:1 frame -> 2x2 target: crop the centre 4x4, 2x2 boxes
    frame[:, 2:6, 0] = np.array([[0, 10, 20, 30], [2, 12, 22, 32], [100, 100, 0, 0], [101, 101, 1, 1]])
    frame[:, :2] = frame[:, 6:] = 255  # outside the crop: must not leak in
    out = crop_resize(frame, 2, 2)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[:, :, 0].tolist() == [[6, 26], [100, 0]]  # means 6, 26, 100.5 -> 100 (round half even), 0.5 -> 0
    assert np.all(out[:, :, 1:] == 0)


def test_other_factors_sample_the_nearest_pixel_centres():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)
    out = crop_resize(frame, 3, 3)
    idx = ((np.arange(3) + 0.5) * 7 / 3).astype(int)  # pixel centres 1.17, 3.5, 5.83 -> rows / cols 1, 3, 5
    assert idx.tolist() == [1, 3, 5]
    assert np.array_equal(out, frame[np.ix_(idx, idx)])
    assert np.array_equal(crop_resize(frame, 7, 7), frame)  # same size: unchanged


def test_bad_input_is_a_clear_error():
    with pytest.raises(ImageError, match=r"expected an \(H, W, 3\) image, got shape \(4, 4\)"):
        crop_resize(np.zeros((4, 4), np.uint8), 2, 2)
    with pytest.raises(ImageError, match="target size must be >= 1, got 0x2"):
        crop_resize(np.zeros((4, 4, 3), np.uint8), 2, 0)


def _reference_crop_resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """The original (slow) crop_resize, kept verbatim as the bit-exact reference for the fast box mean."""
    a = np.asarray(rgb)
    top, left, ch, cw = crop_box(a.shape[0], a.shape[1], height, width)
    crop = a[top: top + ch, left: left + cw]
    if (ch, cw) == (height, width):
        return np.ascontiguousarray(crop, dtype=np.uint8)
    if ch % height == 0 and cw % width == 0:
        fy, fx = ch // height, cw // width
        return crop.reshape(height, fy, width, fx, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    rows = ((np.arange(height) + 0.5) * ch / height).astype(int)
    cols = ((np.arange(width) + 0.5) * cw / width).astype(int)
    return np.ascontiguousarray(crop[rows][:, cols], dtype=np.uint8)


@pytest.mark.parametrize(
    ("frame_hw", "target_hw"),
    [
        ((360, 640), (90, 120)),   # factor 4, sides cropped
        ((180, 320), (90, 120)),   # factor 2
        ((480, 640), (96, 128)),   # factor 5, no crop
        ((270, 480), (90, 120)),   # factor 3 (odd block count 9)
        ((100, 60), (50, 10)),     # different factors per axis: 2 x 6
        ((17, 17), (1, 1)),        # 289-pixel block: wider accumulator than uint16
        ((20, 30), (20, 10)),      # factor 1 x 3
        ((360, 640), (64, 64)),    # non-integer factor: nearest pixel centres
        ((90, 120), (90, 120)),    # same size
    ],
)
def test_fast_box_mean_is_bit_identical_to_the_reference(frame_hw, target_hw):
    rng = np.random.default_rng(sum(frame_hw) * 1000 + sum(target_hw))
    h, w = frame_hw
    frames = [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        rng.integers(0, 2, (h, w, 3), dtype=np.uint8) * 255,  # extremes: many exact .5 ties and full-scale sums
        np.full((h, w, 3), 255, np.uint8),
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8)[:, :, ::-1],  # BGR -> RGB view: non-contiguous strides
        rng.integers(0, 256, (h, w, 3)).astype(np.float64),  # not uint8: the general path
    ]
    for frame in frames:
        out, ref = crop_resize(frame, *target_hw), _reference_crop_resize(frame, *target_hw)
        assert out.dtype == ref.dtype == np.uint8 and out.shape == ref.shape == (*target_hw, 3)
        assert np.array_equal(out, ref)


def test_exact_half_ties_round_to_even_like_the_reference():
    # 2x2 blocks whose sums are 4k + 2: means k + 0.5 for even and odd k (0.5, 1.5, 2.5, ..., 254.5).
    k = np.arange(255)
    block = np.stack([k, k + 1, k, k + 1], axis=-1).reshape(255, 2, 2)  # sum 4k + 2
    frame = np.zeros((2, 2 * 255, 3), np.uint8)
    frame[:, :, 0] = block.transpose(1, 0, 2).reshape(2, 510)
    frame[:, :, 1] = 7
    out = crop_resize(frame, 1, 255)
    assert np.array_equal(out, _reference_crop_resize(frame, 1, 255))
    assert out[0, :, 0].tolist() == [int(x) + (int(x) % 2) for x in k]  # k + 0.5 -> the even one of k, k + 1
    assert np.all(out[0, :, 1] == 7)


@pytest.mark.parametrize("frame_hw", [(360, 640), (180, 320)])
def test_camera_frames_to_policy_input_take_the_fast_path(frame_hw, monkeypatch):
    import time

    calls = []
    fast = images._box_mean_uint8
    monkeypatch.setattr(images, "_box_mean_uint8", lambda *a: calls.append(a[1:]) or fast(*a))
    frame = np.random.default_rng(3).integers(0, 256, (*frame_hw, 3), dtype=np.uint8)
    crop_resize(frame, 90, 120)
    factor = frame_hw[0] // 90
    assert calls == [(factor, factor)]
    monkeypatch.undo()

    def best_of(fn, repeats=7):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(frame, 90, 120)
            times.append(time.perf_counter() - t0)
        return min(times)

    # Loose on purpose (the machine is shared): the fast path is ~10x faster; require it to be at least 2x.
    assert best_of(crop_resize) < best_of(_reference_crop_resize) / 2
