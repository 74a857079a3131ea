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
