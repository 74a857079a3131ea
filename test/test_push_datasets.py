"""Demo datasets of the xArm6 cell tasks: images at training resolution, quality levels, worker independence."""

from collections import Counter

import numpy as np
import pytest

from irvs_ros import cli
from irvs_ros.data.store import Dataset
from irvs_ros.sim.registry import make_env
from irvs_ros.sim.rollout import (
    DECOY_INSERT_DISTANCE,
    MIXED_BLEND,
    DecoyGoal,
    collect_demos,
    demo_env_seed,
    episode_quality,
    resolve_quality,
)


def test_image_dataset_has_training_images_and_does_not_depend_on_workers(tmp_path, capsys):
    out = tmp_path / "push_img.h5"
    assert cli.main(["demos", "--env", "push", "--episodes", "3", "--seed", "5", "--workers", "2", "--images",
                     "--image-size", "32x24", "--quality", "mixed", "max_steps=4", "--out", str(out)]) == 0
    assert "wrote 3 episodes (12 steps)" in capsys.readouterr().out
    ds = Dataset.open(out)
    ds.verify()
    assert ds.obs_spec["state_dim"] == 10 and ds.obs_spec["image_shape"] == [24, 32, 3] and ds.action_dim == 2
    arrays = ds.arrays()
    assert arrays["image"].shape == (12, 24, 32, 3) and arrays["image"].dtype == np.uint8
    assert arrays["state"].shape == (12, 10) and arrays["state"].dtype == np.float32
    for key in ("action", "reward", "return"):
        assert arrays[key].dtype == np.float32 and len(arrays[key]) == 12
    assert np.all(np.abs(arrays["action"]) <= 0.1 + 1e-7)
    assert ds.meta["env"] == "push"
    assert ds.meta["env_kwargs"] == {"max_steps": 4, "image": True, "image_size": [32, 24]}
    quality = ds.meta["quality"]
    assert quality["level"] == "mixed" and quality["action_noise"] == 0.01
    assert quality["blend"] == {"expert": 0.5, "noisy": 0.3, "weak": 0.2} and "decoy" in quality["weak_behaviour"]
    infos = ds.episode_info()
    assert [i["quality"] for i in infos] == [episode_quality("mixed", 5, i) for i in range(3)]
    assert [i["env_seed"] for i in infos] == [demo_env_seed(5, i) for i in range(3)]
    # The image recorded with each step is the observation it was taken in: the first one is the reset image.
    env = make_env("push", image=True, image_size=(32, 24))
    try:
        first, _ = env.reset(seed=demo_env_seed(5, 0))
    finally:
        env.close()
    np.testing.assert_array_equal(arrays["image"][0], first["image"])
    np.testing.assert_array_equal(arrays["state"][0], first["state"])
    assert not np.array_equal(arrays["image"][0], arrays["image"][3])  # the arm moved during the episode

    # One process gives the very same episodes as two (each worker has its own simulator).
    single = collect_demos("push", ds.meta["env_kwargs"], 3, seed=5, quality="mixed", action_noise=0.01)
    np.testing.assert_array_equal(np.concatenate([e["image"] for e in single]), arrays["image"])
    for key in ("state", "action", "reward"):
        np.testing.assert_array_equal(np.concatenate([e[key] for e in single]), arrays[key])
    assert [e["info"] for e in single] == infos


def test_mixed_blend_is_exact_per_block_and_seeded():
    labels = [episode_quality("mixed", 7, i) for i in range(100)]
    assert Counter(labels) == {"expert": 50, "noisy": 30, "weak": 20}
    for block in range(10):
        assert Counter(labels[10 * block:10 * block + 10]) == dict(MIXED_BLEND)
    assert labels != [episode_quality("mixed", 8, i) for i in range(100)]
    assert {episode_quality("noisy", 7, i) for i in range(5)} == {"noisy"}
    assert resolve_quality(None, 0.0) == "expert" and resolve_quality(None, 0.02) == "noisy"
    with pytest.raises(ValueError, match="expert demonstrations have no action noise"):
        resolve_quality("expert", 0.01)
    with pytest.raises(ValueError, match="needs an action noise > 0"):
        resolve_quality("mixed", 0.0)
    with pytest.raises(ValueError, match="unknown quality"):
        episode_quality("great", 0, 0)


def test_decoy_goals_lead_away_from_the_true_goal():
    rng = np.random.default_rng(0)
    block, goal = np.array([0.4, -0.2]), np.array([0.45, 0.15])
    for _ in range(20):
        push = DecoyGoal(lambda obs: obs["state"][7:9].copy(), "push", rng)
        decoy = push.decoy_xy(block, goal, np.pi)
        # Farther from the target than the block's start, so pushing there moves the block away from it.
        assert np.linalg.norm(decoy - goal) > np.linalg.norm(block - goal) + 0.025
        insert = DecoyGoal(lambda obs: obs["state"][7:9].copy(), "push_insert", rng)
        decoy = insert.decoy_xy(block, goal, np.pi / 2)   # fixture axis along +y: decoy moved along x
        assert DECOY_INSERT_DISTANCE[0] <= abs(decoy[0] - goal[0]) <= DECOY_INSERT_DISTANCE[1]
        assert decoy[1] == pytest.approx(goal[1])
    # The wrapped oracle sees the decoy; the recorded observation keeps the true goal.
    state = np.array([0.3, -0.4, 0.3, -0.4, *block, 0.0, *goal, np.pi], dtype=np.float32)
    seen = DecoyGoal(lambda obs: obs["state"][7:9].copy(), "push", np.random.default_rng(1))({"state": state})
    assert not np.allclose(seen, goal, atol=0.05) and np.allclose(state[7:9], goal)


def test_noisy_and_weak_episodes_succeed_less_than_expert(tmp_path, capsys):
    # Ten mixed episodes: 5 expert, 3 noisy (heavy noise: 1 cm std per step), 2 weak (decoy goal).
    out = tmp_path / "push_mixed.h5"
    assert cli.main(["demos", "--env", "push", "--episodes", "10", "--seed", "2", "--workers", "2", "--quality",
                     "mixed", "--noise", "0.05", "--out", str(out)]) == 0
    capsys.readouterr()
    ds = Dataset.open(out)
    infos = ds.episode_info()
    by_quality: dict[str, list[bool]] = {}
    for info, ok in zip(infos, ds.success, strict=True):
        by_quality.setdefault(info["quality"], []).append(bool(ok))
        assert info["action_noise"] == (0.05 if info["quality"] == "noisy" else 0.0)
    assert {q: len(v) for q, v in by_quality.items()} == dict(MIXED_BLEND)
    assert all(by_quality["expert"])
    assert not any(by_quality["weak"]) and not any(by_quality["noisy"])
    for info in infos:
        if info["quality"] == "weak":
            assert info["goal_distance"] > 0.1   # pushed away, not a near miss
    assert ds.success.mean() < 1.0 and ds.meta["quality"]["level"] == "mixed"
    # Returns (average future reward) separate the qualities: only expert episodes reach return 1 at the end.
    returns = ds.arrays(["return"])["return"]
    last = returns[ds.episode_ends - 1]
    assert np.all(last[ds.success] == 1.0) and np.all(last[~ds.success] == 0.0)


def test_bad_image_arguments_are_clear(tmp_path, capsys):
    assert cli.main(["demos", "--env", "push", "--episodes", "1", "--image-size", "32x24",
                     "--out", str(tmp_path / "x.h5")]) == 2
    assert "--image-size needs --images" in capsys.readouterr().err
    assert cli.main(["demos", "--env", "push", "--episodes", "1", "--images", "--image-size", "32by24",
                     "--out", str(tmp_path / "x.h5")]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
    assert cli.main(["demos", "--env", "particle", "--episodes", "1", "--images", "--out", str(tmp_path / "x.h5")]) == 2
    assert "has no parameter(s) ['image', 'image_size']" in capsys.readouterr().err
    assert cli.main(["demos", "--env", "push", "--episodes", "1", "--quality", "expert", "--noise", "0.1",
                     "--out", str(tmp_path / "x.h5")]) == 2
    assert "expert demonstrations have no action noise" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()
