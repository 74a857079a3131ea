"""Demo generation, seeded evaluation rollouts, and the `irvs demos` / `irvs eval` commands."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from irvs_ros import cli
from irvs_ros.data.store import Dataset
from irvs_ros.runtime import policy_file
from irvs_ros.runtime.spec import NormStats, ObsSpec, PolicySpec
from irvs_ros.sim.registry import make_env
from irvs_ros.sim.rollout import OraclePolicy, collect_demos, evaluate


def _same_episodes(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("state", "action", "reward"):
            np.testing.assert_array_equal(x[key], y[key])
        assert x["success"] == y["success"] and x["info"] == y["info"]


def test_collect_demos_is_deterministic_and_independent_of_workers():
    one = collect_demos("particle", {"n_dim": 2}, 10, seed=3)
    again = collect_demos("particle", {"n_dim": 2}, 10, seed=3)
    parallel = collect_demos("particle", {"n_dim": 2}, 10, seed=3, workers=2)
    _same_episodes(one, again)
    _same_episodes(one, parallel)
    other = collect_demos("particle", {"n_dim": 2}, 10, seed=4)
    assert not np.allclose(one[0]["state"][0], other[0]["state"][0])
    assert all(ep["success"] for ep in one)
    assert [ep["info"]["index"] for ep in one] == list(range(10))
    # Demo starts do not coincide with evaluation starts (which reset with seed + i), even for equal seeds.
    env = make_env("particle", n_dim=2)
    eval_starts = np.array([env.reset(seed=3 + i)[0]["state"] for i in range(10)])
    demo_starts = np.array([ep["state"][0] for ep in one])
    assert np.min(np.abs(eval_starts[:, None] - demo_starts[None]).max(axis=2)) > 0


def test_action_noise_and_only_success():
    clean = collect_demos("particle", {"n_dim": 2}, 20, seed=0)
    noisy = collect_demos("particle", {"n_dim": 2}, 20, seed=0, action_noise=0.05)
    assert not np.allclose(clean[0]["action"], noisy[0]["action"])
    for ep in noisy:  # the recorded action is the executed one, within the env's limits
        assert ep["action"].min() >= 0.0 and ep["action"].max() <= 1.0
    rate = np.mean([ep["success"] for ep in noisy])
    assert rate < 0.9  # heavy noise breaks some episodes ...
    kept = collect_demos("particle", {"n_dim": 2}, 20, seed=0, action_noise=0.05, only_success=True)
    assert len(kept) == 20 and all(ep["success"] for ep in kept)  # ... which only_success replaces
    assert max(ep["info"]["index"] for ep in kept) >= 20
    with pytest.raises(RuntimeError, match="succeeded"):
        list(collect_demos("particle", {"n_dim": 2}, 5, seed=0, action_noise=5.0, only_success=True))
    with pytest.raises(ValueError, match="unknown environment"):
        collect_demos("pendulum", {}, 5, seed=0)


def _goal2_policy(n):
    """Stateless policy: always command goal 2 (often misses goal 1)."""
    return lambda obs: obs["state"][:, 3 * n:]


def _room_controller(obs):
    """Deterministic room policy that heads for the nearest corner (episodes end at different times)."""
    pos = obs["state"].astype(np.float64)
    corner = np.where(pos >= 0, 1.0, -1.0)
    d = corner - pos
    return 0.1 * d / np.maximum(np.abs(d).max(axis=1, keepdims=True), 0.1)


@pytest.mark.parametrize("env_name,kwargs,make_act", [
    ("particle", {"n_dim": 2}, lambda: _goal2_policy(2)),
    ("room", {}, lambda: _room_controller),
    ("room", {}, lambda: OraclePolicy("room", {}, 500)),  # stateful, reset per episode
])
def test_lockstep_evaluation_matches_one_at_a_time(env_name, kwargs, make_act):
    batch_sizes = []
    act = make_act()

    def recording(obs):
        batch_sizes.append(len(obs["state"]))
        return act(obs)

    if hasattr(act, "reset"):
        recording.reset = act.reset
    batched = evaluate(env_name, kwargs, recording, 12, seed=500)
    assert set(batch_sizes) == {12}
    batch_sizes.clear()
    single = evaluate(env_name, kwargs, recording, 12, seed=500, batch=False)
    assert set(batch_sizes) == {1}
    assert batched == single
    assert [e["seed"] for e in batched["per_episode"]] == list(range(500, 512))
    assert batched["episodes"] == 12
    assert batched["success_rate"] == np.mean([e["success"] for e in batched["per_episode"]])


def test_evaluate_rejects_bad_actions():
    with pytest.raises(ValueError, match=r"shape \(3, 3\), expected \(3, 2\)"):
        evaluate("particle", {"n_dim": 2}, lambda obs: np.zeros((3, 3)), 3, 0)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate("room", {}, lambda obs: np.full((2, 2), np.nan), 2, 0)


def test_irvs_demos_then_eval_oracle(tmp_path, capsys):
    out = tmp_path / "p2.h5"
    assert cli.main(["demos", "--env", "particle", "--n-dim", "2", "--episodes", "6", "--seed", "0",
                     "--out", str(out)]) == 0
    assert "wrote 6 episodes (300 steps)" in capsys.readouterr().out
    ds = Dataset.open(out)
    assert ds.num_episodes == 6 and ds.action_dim == 2 and ds.obs_spec["state_dim"] == 8
    assert ds.meta["env"] == "particle" and ds.meta["env_kwargs"] == {"n_dim": 2}
    assert ds.meta["action_limits"] == {"low": [0.0, 0.0], "high": [1.0, 1.0]}
    assert ds.meta["command"].startswith("irvs demos --env particle --n-dim 2 --episodes 6")
    assert ds.success.all()
    np.testing.assert_array_equal(ds.arrays(["action"])["action"],
                                  np.concatenate([e["action"] for e in collect_demos("particle", {"n_dim": 2}, 6, 0)]))

    results = tmp_path / "r.json"
    assert cli.main(["eval", "--policy", "oracle", "--env", "particle", "--n-dim", "2", "--episodes", "8",
                     "--seed", "1000", "--out", str(results)]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    written = json.loads(results.read_text())
    assert printed["success_rate"] == written["success_rate"] == 1.0
    # A progress bar on stderr over the episodes as they end (stdout stays the JSON).
    assert "eval particle" in captured.err and "8/8" in captured.err and "8 successes" in captured.err
    assert len(written["per_episode"]) == 8 and written["policy"] == "oracle"
    assert written["command"].startswith("irvs eval --policy oracle --env particle --n-dim 2")

    # Environment parameters as KEY=VALUE, oracle options, and clear errors for bad ones.
    assert cli.main(["demos", "--env", "leftmost", "delta=0.001", "--oracle", "p_optimal=0.0", "--episodes", "5",
                     "--out", str(tmp_path / "l.h5")]) == 0
    ds = Dataset.open(tmp_path / "l.h5")
    assert ds.meta["env_kwargs"] == {"delta": 0.001} and ds.meta["quality"]["oracle_kwargs"] == {"p_optimal": 0.0}
    state = ds.arrays(["state"])["state"]
    assert np.all(np.abs(state[:, 4] - state[:, 2]) <= 0.001 + 1e-6)  # second goal's x within delta of the first
    capsys.readouterr()
    assert cli.main(["eval", "--policy", "oracle", "--env", "room", "n_dim=3"]) == 2
    assert "has no parameter(s) ['n_dim']" in capsys.readouterr().err
    assert cli.main(["demos", "--env", "room", "oops", "--out", str(tmp_path / "x.h5")]) == 2
    assert "not KEY=VALUE" in capsys.readouterr().err


def _goal1_policy_file(path, n=2):
    """A hand-built explicit ONNX policy file that commands goal 1 (state columns 2n..3n), no torch involved."""
    node = helper.make_node("Slice", ["state", "starts", "ends", "axes"], ["action"])
    inits = [helper.make_tensor(name, TensorProto.INT64, [1], [v]) for name, v in
             (("starts", 2 * n), ("ends", 3 * n), ("axes", 1))]
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, ["B", 4 * n])
    action = helper.make_tensor_value_info("action", TensorProto.FLOAT, ["B", n])
    graph = helper.make_graph([node], "goal1", [state], [action], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    spec = PolicySpec(ObsSpec(4 * n), n, NormStats((0.5,) * 4 * n, (0.3,) * 4 * n, (0.0,) * n, (1.0,) * n),
                      (0.0,) * n, (1.0,) * n, extra={"env": "particle", "env_kwargs": {"n_dim": n}})
    meta = {"format_version": str(policy_file.FORMAT_VERSION), "algorithm": "handmade", "spec": spec.to_json(),
            "argmin": json.dumps({"method": "none", "eta_inv": 0.0}), "eta_inv": "0.0", "train_config": "{}",
            "dataset_fingerprint": "", "created": "2026-01-01T00:00:00+00:00", "torch_version": "none"}
    for key in policy_file.METADATA_KEYS:
        model.metadata_props.add(key=policy_file.PREFIX + key, value=meta[key])
    onnx.save(model, str(path))


def test_irvs_eval_runs_a_policy_file(tmp_path, capsys):
    path = tmp_path / "goal1.onnx"
    _goal1_policy_file(path)
    out = tmp_path / "r.json"
    # --env omitted: the environment recorded in the policy file is used.
    assert cli.main(["eval", "--policy", str(path), "--episodes", "10", "--seed", "7", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    expected = evaluate("particle", {"n_dim": 2}, lambda obs: obs["state"][:, 4:6], 10, 7)
    assert result["env"] == "particle" and result["algorithm"] == "handmade"
    assert result["per_episode"] == expected["per_episode"]
    assert result["success_rate"] == 0.0 and result["mean_reward"] > 0.3  # reaches goal 1, never goal 2
    capsys.readouterr()
    assert cli.main(["eval", "--policy", str(path), "--env", "particle", "--n-dim", "3"]) == 2
    assert "state_dim=8, action_dim=2" in capsys.readouterr().err
    assert cli.main(["eval", "--policy", str(tmp_path / "missing.onnx"), "--env", "room"]) == 2
    assert "not found" in capsys.readouterr().err


# ---------------------------------------------------------------------- the xArm6 cell: eval, images, videos
def test_eval_oracle_on_push_insert_reports_rates_and_saves_a_video(tmp_path, capsys):
    from irvs_ros.sim.video import video_info

    out, videos = tmp_path / "insert.json", tmp_path / "videos"
    assert cli.main(["eval", "--policy", "oracle", "--env", "push_insert", "--episodes", "2", "--seed", "1000",
                     "--video", str(videos), "--video-episodes", "1", "--video-format", "mp4",
                     "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    for key in ("success_rate", "mean_reward", "mean_final_reward", "full_insertion_rate", "partial_insertion_rate"):
        assert printed[key] == written[key]
    episodes = written["per_episode"]
    levels = [e["reward_level"] for e in episodes]
    assert written["full_insertion_rate"] == np.mean([lv == 1.0 for lv in levels]) == written["success_rate"]
    assert written["partial_insertion_rate"] == np.mean([lv == 0.5 for lv in levels])
    assert written["success_rate"] == 1.0  # the oracle inserts fully on these seeds
    assert all(e["inserted_fraction"] >= 0.95 and e["final_reward"] == 1.0 for e in episodes)
    assert written["mean_final_reward"] == 1.0 and 0 < written["mean_reward"] < 1.0
    # One video, of episode 1: the reset frame plus one 640x360 frame per step.
    (video,) = written["videos"]
    assert episodes[1]["video"] == video and "video" not in episodes[0]
    assert sorted(p.name for p in videos.iterdir()) == ["push_insert_episode001_seed1001.mp4"]
    info = video_info(video)
    assert (info.width, info.height) == (640, 360)
    assert info.frames == episodes[1]["length"] + 1
    assert info.duration_s == pytest.approx((episodes[1]["length"] + 1) / 5.0)


def test_video_files_are_valid_gif_and_mp4(tmp_path):
    from irvs_ros.sim.video import VideoError, VideoWriter, video_info, write_video

    yy, xx = np.mgrid[0:36, 0:64]
    base = np.stack([xx * 4, yy * 7, np.full_like(xx, 90)], axis=-1).astype(np.uint8)
    frames = []
    for k in range(6):  # a block moving over a gradient
        frame = base.copy()
        frame[10:20, 8 * k:8 * k + 10] = (30, 60, 220)
        frames.append(frame)
    frames.insert(3, frames[2].copy())  # a still frame, as when the arm waits
    for suffix in ("gif", "mp4"):
        path = write_video(tmp_path / f"v.{suffix}", frames, fps=5.0)
        info = video_info(path)
        assert (info.width, info.height) == (64, 36)
        assert info.duration_s == pytest.approx(7 / 5.0)
        if suffix == "mp4":
            assert info.frames == 7
        else:  # Pillow shows two identical consecutive frames as one frame of twice the duration
            assert info.frames == 6
    # Frames as they were: the GIF's first frame is close to the first image (adaptive palette).
    from PIL import Image

    with Image.open(tmp_path / "v.gif") as im:
        first = np.asarray(im.convert("RGB"), dtype=np.int16)
    assert np.abs(first - frames[0]).mean() < 4
    with pytest.raises(VideoError, match=r"must end in one of \['.mp4', '.gif'\]"):
        VideoWriter(tmp_path / "v.avi")
    with pytest.raises(VideoError, match="uint8"):
        write_video(tmp_path / "bad.gif", [np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(VideoError, match="even width and height"):
        write_video(tmp_path / "odd.mp4", [np.zeros((5, 4, 3), np.uint8)])
    with pytest.raises(VideoError, match="is 8x4, the video is 4x4"):
        write_video(tmp_path / "sizes.gif", [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 8, 3), np.uint8)])
    with pytest.raises(VideoError, match="no frames"):
        write_video(tmp_path / "empty.gif", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gif", "v.mp4"]  # failures leave no file behind
    (tmp_path / "fake.mp4").write_bytes(b"not a video")
    with pytest.raises(VideoError, match="not a readable MP4"):
        video_info(tmp_path / "fake.mp4")


def _image_policy_file(path, image_hw=(24, 32), env_kwargs=None):
    """Explicit ONNX policy that moves by 0.02 * (mean red, mean green of the image / 127.5 - 1): it needs images."""
    h, w = image_hw
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),
             helper.make_node("Slice", ["m", "starts", "ends", "axes"], ["rg"]),
             helper.make_node("Sub", ["rg", "half"], ["c"]),
             helper.make_node("Mul", ["c", "gain"], ["action"])]
    inits = [helper.make_tensor(name, TensorProto.INT64, [1], [v]) for name, v in
             (("starts", 0), ("ends", 2), ("axes", 1))]
    inits += [helper.make_tensor("half", TensorProto.FLOAT, [], [127.5]),
              helper.make_tensor("gain", TensorProto.FLOAT, [], [0.02 / 127.5])]
    inputs = [helper.make_tensor_value_info("state", TensorProto.FLOAT, ["B", 10]),
              helper.make_tensor_value_info("image", TensorProto.UINT8, ["B", h, w, 3])]
    action = helper.make_tensor_value_info("action", TensorProto.FLOAT, ["B", 2])
    graph = helper.make_graph(nodes, "image_policy", inputs, [action], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    spec = PolicySpec(ObsSpec(10, image_shape=(h, w, 3)), 2, NormStats((0.0,) * 10, (1.0,) * 10, (-0.1,) * 2,
                                                                      (0.1,) * 2), (-0.1,) * 2, (0.1,) * 2,
                      extra={"env": "push", "env_kwargs": env_kwargs or {"max_steps": 3}})
    meta = {"format_version": str(policy_file.FORMAT_VERSION), "algorithm": "handmade", "spec": spec.to_json(),
            "argmin": json.dumps({"method": "none", "eta_inv": 0.0}), "eta_inv": "0.0", "train_config": "{}",
            "dataset_fingerprint": "", "created": "2026-01-01T00:00:00+00:00", "torch_version": "none"}
    for key in policy_file.METADATA_KEYS:
        model.metadata_props.add(key=policy_file.PREFIX + key, value=meta[key])
    onnx.save(model, str(path))


def test_eval_gives_image_policies_images_of_their_size(tmp_path, capsys):
    path = tmp_path / "image_policy.onnx"
    _image_policy_file(path)
    out = tmp_path / "r.json"
    assert cli.main(["eval", "--policy", str(path), "--episodes", "2", "--seed", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["env"] == "push" and result["env_kwargs"] == {"max_steps": 3, "image": True, "image_size": [32, 24]}
    seen = []

    def same_policy(obs):
        assert obs["image"].dtype == np.uint8 and obs["image"].shape == (2, 24, 32, 3)
        seen.append(obs["image"])
        return 0.02 * (obs["image"].astype(np.float64).mean(axis=(1, 2))[:, :2] / 127.5 - 1.0)

    expected = evaluate("push", result["env_kwargs"], same_policy, 2, 3)
    assert len(seen) == 3
    for got, want in zip(result["per_episode"], expected["per_episode"], strict=True):
        assert got["length"] == want["length"] == 3
        assert got["goal_distance"] == pytest.approx(want["goal_distance"], abs=1e-6)
    # The policy moved the arm by what it saw (not a zero action).
    assert not np.allclose(same_policy({"image": seen[0]}), 0.0)
    capsys.readouterr()
    clash = tmp_path / "clash.onnx"
    _image_policy_file(clash, env_kwargs={"max_steps": 3, "image": True, "image_size": [120, 90]})
    assert cli.main(["eval", "--policy", str(clash), "--episodes", "1"]) == 2
    assert "the policy sees 32x24 images but the environment parameters ask for 120x90" in capsys.readouterr().err
    assert cli.main(["eval", "--policy", "oracle", "--env", "particle", "--episodes", "2", "--video",
                     str(tmp_path / "v")]) == 2
    assert "cannot render frames" in capsys.readouterr().err
    assert cli.main(["eval", "--policy", "oracle", "--env", "push", "--episodes", "2", "--video",
                     str(tmp_path / "v"), "--video-episodes", "2"]) == 2
    assert "must name episodes 0..1" in capsys.readouterr().err
