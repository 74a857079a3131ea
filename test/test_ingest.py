"""Episode bags -> dataset: sampling at the policy rate (newest image / pose / setpoint, setpoint deltas, success
reward), skipped episodes (discarded, partial, unlabeled, damaged) with messages, `irvs ingest` end to end, and
one training step of the "mse" algorithm on the result. Bags are written with irvs_ros.data.bags (rosbags)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from irvs_ros.commands import ingest as ingest_cmd
from irvs_ros.data.bags import (
    EE_POSE_TOPIC,
    IMAGE_TOPIC,
    JOINT_STATES_TOPIC,
    SETPOINT_TOPIC,
    BagError,
    EpisodeBagWriter,
    EpisodeInfo,
    bag_summary,
    label_finished_episode,
    list_episodes,
    read_episode_info,
    typestore,
)
from irvs_ros.data.ingest import episode_steps, image_rgb
from irvs_ros.data.store import Dataset

T0_NS = 100_000_000_000  # bag clock at the start of each synthetic episode (100 s)
SP_STEP = np.array([0.01, -0.02])


def _stamp(t_ns: int):
    return typestore().types["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9)


def _header(t_ns: int):
    return typestore().types["std_msgs/msg/Header"](stamp=_stamp(t_ns), frame_id="link_base")


def _pose(t_ns: int, x: float, y: float) -> bytes:
    ts = typestore()
    pose = ts.types["geometry_msgs/msg/Pose"](position=ts.types["geometry_msgs/msg/Point"](x=x, y=y, z=0.06),
                                              orientation=ts.types["geometry_msgs/msg/Quaternion"](x=0, y=0, z=0, w=1))
    msg = ts.types["geometry_msgs/msg/PoseStamped"](header=_header(t_ns), pose=pose)
    return ts.serialize_cdr(msg, "geometry_msgs/msg/PoseStamped")


def _image(t_ns: int, frame: int, h: int = 120, w: int = 160) -> bytes:
    """A frame whose pixels all hold (frame % 256, 7, 200), so a sampled image names its frame."""
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = frame % 256, 7, 200
    ts = typestore()
    msg = ts.types["sensor_msgs/msg/Image"](header=_header(t_ns), height=h, width=w, encoding="rgb8", is_bigendian=0,
                                            step=3 * w, data=rgb.reshape(-1))
    return ts.serialize_cdr(msg, "sensor_msgs/msg/Image")


def _joint_state(t_ns: int) -> bytes:
    ts = typestore()
    msg = ts.types["sensor_msgs/msg/JointState"](header=_header(t_ns), name=["joint1"], position=np.zeros(1),
                                                 velocity=np.zeros(0), effort=np.zeros(0))
    return ts.serialize_cdr(msg, "sensor_msgs/msg/JointState")


def image_times(duration: float) -> list[int]:
    return [T0_NS + int(i * 1e9 / 30) for i in range(int(duration * 30))]


def setpoint_times(duration: float) -> list[int]:
    return [T0_NS + int(0.1e9) + int(j * 0.2e9) for j in range(int(duration * 5))]


def pose_times(duration: float) -> list[int]:
    return [T0_NS + int(0.3e9) + int(i * 0.02e9) for i in range(int((duration - 0.3) * 50))]


def sp_xy(j: int) -> np.ndarray:
    return np.array([0.3, 0.1]) + j * SP_STEP


def ee_xy(t_ns: int) -> np.ndarray:
    s = (t_ns - T0_NS) * 1e-9
    return np.array([0.3 + 0.04 * s, 0.1 - 0.03 * s])


def write_episode(root, name: str, outcome: str = "success", duration: float = 3.0, finish: str = "stop") -> None:
    """A synthetic episode: images 30 Hz (from 0 s), setpoints 5 Hz (from 0.1 s), poses and joint states 50 Hz
    (from 0.3 s), all until `duration` s."""
    writer = EpisodeBagWriter(root, EpisodeInfo(name=name, task="push", operator="tester", start_time=T0_NS * 1e-9))
    writer.write_info(T0_NS)
    events = [(t, IMAGE_TOPIC, _image(t, i)) for i, t in enumerate(image_times(duration))]
    events += [(t, SETPOINT_TOPIC, _pose(t, *sp_xy(j))) for j, t in enumerate(setpoint_times(duration))]
    events += [(t, EE_POSE_TOPIC, _pose(t, *ee_xy(t))) for t in pose_times(duration)]
    events += [(t, JOINT_STATES_TOPIC, _joint_state(t)) for t in pose_times(duration)]
    for t, topic, raw in sorted(events, key=lambda e: e[0]):
        writer.write(topic, t, raw)
    writer.info.outcome = outcome
    end = T0_NS + int(duration * 1e9)
    if finish == "abort":
        writer.abort()
    else:
        writer.finish(end, discarded=finish == "discard")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_image_decoding_handles_row_padding_and_rejects_unknown_encodings():
    rng = np.random.default_rng(0)
    ts = typestore()
    rgb = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    padded = np.zeros((4, 18), np.uint8)  # bgr8 with 3 bytes of row padding
    padded[:, :15] = rgb[:, :, ::-1].reshape(4, 15)
    msg = ts.types["sensor_msgs/msg/Image"](header=_header(0), height=4, width=5, encoding="bgr8", is_bigendian=0,
                                            step=18, data=padded.reshape(-1))
    assert np.array_equal(image_rgb(msg), rgb)
    msg.encoding = "mono16"
    with pytest.raises(BagError, match="unsupported image encoding 'mono16'"):
        image_rgb(msg)


def test_episode_is_sampled_at_the_policy_rate(tmp_path):
    write_episode(tmp_path, "episode_0001", "success", duration=3.0)
    bag = tmp_path / "episode_0001"
    summary = bag_summary(bag)
    assert summary[IMAGE_TOPIC] == ("sensor_msgs/msg/Image", 90)
    assert summary[SETPOINT_TOPIC] == ("geometry_msgs/msg/PoseStamped", 15)
    info = read_episode_info(bag)
    assert (info.task, info.operator, info.outcome, info.end_time) == ("push", "tester", "success", 103.0)

    steps = episode_steps(bag, image_size=(40, 30), rate=5.0, success=True)
    # Samples half a period after the setpoints (t = 0.2 + 0.2 k s); the first with a pose (from 0.3 s) is 0.4 s.
    times = steps["sample_time"]
    np.testing.assert_allclose(times, 100.0 + 0.2 + 0.2 * np.arange(1, 1 + len(times)), atol=1e-9)
    assert len(times) == 12  # 0.4 ... 2.6 s; the sample at 2.8 s (the last before the end) only gives the last action
    t_ns = np.rint(times * 1e9).astype(np.int64)
    j = np.array([max(i for i, s in enumerate(setpoint_times(3.0)) if s <= t) for t in t_ns])
    np.testing.assert_allclose(steps["state"][:, 2:], np.stack([sp_xy(i) for i in j]), atol=1e-6)
    newest_pose = [max(s for s in pose_times(3.0) if s <= t) for t in t_ns]
    np.testing.assert_allclose(steps["state"][:, :2], np.stack([ee_xy(s) for s in newest_pose]), atol=1e-6)
    np.testing.assert_allclose(steps["action"], np.tile(SP_STEP, (12, 1)), atol=1e-6)
    frames = [max(i for i, s in enumerate(image_times(3.0)) if s <= t) for t in t_ns]
    assert steps["image"].shape == (12, 30, 40, 3) and steps["image"].dtype == np.uint8
    assert steps["image"][:, 0, 0, 0].tolist() == frames and np.all(steps["image"][..., 1] == 7)
    assert steps["reward"].tolist() == [0.0] * 11 + [1.0]
    assert episode_steps(bag, (40, 30), 5.0, success=False)["reward"].sum() == 0.0
    # At 2 Hz: samples every 0.5 s from 0.35 s.
    assert len(episode_steps(bag, (40, 30), rate=2.0)["action"]) == 5


def _run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="irvs ingest")
    ingest_cmd.add_arguments(parser)
    return ingest_cmd.run(parser.parse_args(list(argv)))


def test_ingest_skips_unusable_episodes_and_the_dataset_trains(tmp_path, capsys):
    rec = tmp_path / "rec"
    write_episode(rec, "episode_0001", "success")
    write_episode(rec, "episode_0002", "failure", duration=2.0)
    write_episode(rec, "episode_0003", "unlabeled")
    write_episode(rec, "episode_0004", "success", finish="discard")
    write_episode(rec, "episode_0005", "success", finish="abort")
    write_episode(rec, "episode_0006", "success")
    mcap = rec / "episode_0006" / "episode_0006.mcap"
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])  # damaged after it was finished
    write_episode(rec, "episode_0007", "unlabeled", duration=1.5)
    label_finished_episode(rec / "episode_0007", "success")  # labelled after the episode ended
    write_episode(rec, "episode_0008", "failure", duration=0.5)  # too short for one action
    assert [(e.name, e.status) for e in list_episodes(rec)] == [
        ("episode_0001", "complete"), ("episode_0002", "complete"), ("episode_0003", "complete"),
        ("episode_0004", "discarded"), ("episode_0005", "partial"), ("episode_0006", "complete"),
        ("episode_0007", "complete"), ("episode_0008", "complete")]

    out = tmp_path / "ds.h5"
    assert _run_cli(str(rec), "--out", str(out), "--image-size", "40x30") == 0
    text = capsys.readouterr().out
    assert "skipping episode_0003: no success / failure label" in text
    assert "skipping episode_0004: discarded by the operator" in text
    assert "skipping episode_0005: unfinished recording (.partial" in text
    assert "skipping episode_0006: not usable: cannot read the bag" in text
    assert "skipping episode_0008: not usable" in text and "too short" in text
    assert "wrote 3 episode(s)" in text

    ds = Dataset.open(out)
    assert ds.num_episodes == 3 and ds.success.tolist() == [True, False, True]
    assert ds.obs_spec == {"state_dim": 4, "image_shape": [30, 40, 3], "state_keys": ["effector_xy", "setpoint_xy"]}
    assert ds.action_dim == 2 and ds.meta["control_rate_hz"] == 5.0
    assert ds.meta["action_limits"] == {"low": [-0.1, -0.1], "high": [0.1, 0.1]}
    assert [i["bag"] for i in ds.episode_info()] == ["episode_0001", "episode_0002", "episode_0007"]
    arrays = ds.arrays()
    assert arrays["image"].shape == (ds.num_steps, 30, 40, 3) and arrays["state"].shape == (ds.num_steps, 4)
    assert np.diff(ds.episode_ends, prepend=0).tolist() == [12, 7, 5]
    assert arrays["reward"][ds.episode_ends - 1].tolist() == [1.0, 0.0, 1.0] and arrays["reward"].sum() == 2.0

    # With --include-unlabeled the unlabeled episode is kept as a failure.
    assert _run_cli(str(rec), "--out", str(tmp_path / "all.h5"), "--image-size", "40x30", "--include-unlabeled") == 0
    assert Dataset.open(tmp_path / "all.h5").success.tolist() == [True, False, False, True]

    from irvs_ros.learn.train_config import config_from_dict
    from irvs_ros.learn.trainer import train

    cfg = config_from_dict({"dataset": str(out), "algorithm": "mse", "steps": 1, "batch_size": 8, "device": "cpu",
                            "params": {"width": 16, "depth": 2, "dropout": 0.0}, "log_every": 1,
                            "checkpoint_every": 1, "eval": {"env": None}})
    result = train(cfg, tmp_path / "run")
    assert (result.run_dir / "checkpoints" / "last.pt").exists()


def test_ingest_errors_are_clear(tmp_path, capsys):
    rec = tmp_path / "rec"
    write_episode(rec, "episode_0001", "success", finish="discard")
    assert _run_cli(str(rec), "--out", str(tmp_path / "x.h5")) == 2
    err = capsys.readouterr().err
    assert "no usable episode" in err and "episode_0001: discarded by the operator" in err
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.partial").exists()
    assert _run_cli(str(rec), "--out", str(tmp_path / "x.h5"), "--image-size", "120by90") == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
    assert _run_cli(str(tmp_path / "nothing"), "--out", str(tmp_path / "x.h5")) == 2
    assert "no recordings folder" in capsys.readouterr().err
    with pytest.raises(BagError, match="exists already"):
        EpisodeBagWriter(rec, EpisodeInfo(name="episode_0001"))
    with pytest.raises(BagError, match="outcome must be one of"):
        EpisodeInfo(name="x", outcome="great")
