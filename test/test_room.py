"""IRvS toy environments: the didactic four-corner room (3.2), left-most-goal navigation (5.1), the registry."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from irvs_ros.sim.leftmost import LeftmostEnv, LeftmostOracle
from irvs_ros.sim.registry import make_env, make_oracle
from irvs_ros.sim.rollout import run_oracle_episode
from irvs_ros.sim.room import CORNER_REWARDS, CORNERS, RoomEnv, RoomOracle, heading_reward

# ---------------------------------------------------------------------------------------------- room


def test_room_oracle_visits_each_corner_equally_and_returns_separate_the_goals():
    env = make_env("room")
    counts = np.zeros(4, int)
    for seed in range(400):
        oracle = make_oracle("room", env, np.random.default_rng(seed))
        ep = run_oracle_episode(env, oracle, seed)
        goal = ep["info"]["goal"]
        assert goal == oracle.goal  # the oracle always reaches the corner it picked
        assert ep["success"] == (goal == 3)
        counts[goal] += 1
        # The heading reward makes every step of a behaviour episode worth its corner's value, so the
        # return-to-go is that value whatever the start: four separate returns.
        np.testing.assert_array_equal(ep["reward"], CORNER_REWARDS[goal])
    assert counts.sum() == 400 and counts.min() >= 70 and counts.max() <= 130, counts


def test_room_dynamics_termination_and_truncation():
    env = RoomEnv(max_step=0.1, goal_radius=0.1, max_steps=40)
    obs, info = env.reset(seed=0)
    assert info["goal"] == -1
    pos = obs["state"].astype(np.float64)
    obs, r, terminated, truncated, info = env.step(np.array([0.05, -0.03]))
    np.testing.assert_allclose(obs["state"], pos + [0.05, -0.03], atol=1e-6)  # position += action
    assert r == heading_reward(pos, np.array([0.05, -0.03]))
    obs, *_ = env.step(np.array([3.0, 0.0]))  # clipped to the step limit
    np.testing.assert_allclose(obs["state"], pos + [0.15, -0.03], atol=1e-6)
    # Driving to the top-right corner terminates there with success; walls clip the position.
    steps = 0
    while True:
        obs, r, terminated, truncated, info = env.step(np.array([0.1, 0.1]))
        steps += 1
        assert r == 1.0 and np.all(np.abs(obs["state"]) <= 1.0)
        if terminated or truncated:
            break
    assert terminated and not truncated and info["goal"] == 3 and info["success"]
    # Standing still: no corner, reward 0, truncated after max_steps.
    env.reset(seed=1)
    for _ in range(40):
        _, r, terminated, truncated, info = env.step(np.zeros(2))
        assert r == 0.0 and not terminated
    assert truncated and info["goal"] == -1 and not info["success"]
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.inf, 0.0]))


def test_heading_reward_values():
    assert heading_reward(np.zeros(2), np.array([0.1, 0.1])) == 1.0
    assert heading_reward(np.zeros(2), np.array([-0.1, -0.1])) == -1.0
    assert heading_reward(np.zeros(2), np.array([0.1, -0.1])) == -0.25
    assert heading_reward(np.zeros(2), np.array([-0.1, 0.1])) == 0.5
    assert heading_reward(np.array([0.9, 0.0]), np.array([0.0, 0.1])) == 1.0  # along the wall up to (1, 1)
    assert heading_reward(np.zeros(2), np.zeros(2)) == 0.0


def test_room_oracle_heads_straight_within_the_step_limit():
    oracle = RoomOracle(np.random.default_rng(0), max_step=0.1, noise=0.0)
    oracle.goal = 2
    a = oracle({"state": np.array([0.5, 0.0], np.float32)})
    d = CORNERS[2] - [0.5, 0.0]
    np.testing.assert_allclose(a, d * 0.1 / np.max(np.abs(d)), atol=1e-6)
    np.testing.assert_allclose(oracle({"state": np.array([-0.95, 0.97], np.float32)}), [-0.05, 0.03], atol=1e-6)


# ---------------------------------------------------------------------------------------------- leftmost


@pytest.mark.parametrize("n_dim", [2, 8])
def test_leftmost_oracle_is_optimal(n_dim):
    env = make_env("leftmost", n_dim=n_dim)
    oracle = make_oracle("leftmost", env)
    for seed in range(50):
        obs, _ = env.reset(seed=seed)
        s = obs["state"].astype(np.float64)
        pos, g1, g2 = s[:n_dim], s[n_dim:2 * n_dim], s[2 * n_dim:]
        assert np.all(np.abs(pos) <= 1) and np.all(np.abs(g1) <= 0.1) and np.all(np.abs(g2) <= 0.1)
        best = g1 if g1[0] <= g2[0] else g2
        oracle.reset()
        a = oracle(obs)
        np.testing.assert_allclose(a, best - pos, atol=1e-6)  # a* = g* - s
        _, r, terminated, _, info = env.step(a)
        assert r == 1.0 and terminated and info["success"] and info["goal"] == info["leftmost"]


def test_leftmost_suboptimal_oracle_reaches_the_other_goal():
    env = LeftmostEnv(n_dim=3)
    oracle = LeftmostOracle(3, np.random.default_rng(0), p_optimal=0.0)
    for seed in range(20):
        ep = run_oracle_episode(env, oracle, seed)
        g1, g2 = ep["state"][0, 3:6], ep["state"][0, 6:]
        if np.linalg.norm(g1 - g2) < env.success_tol:
            continue  # goals closer than the tolerance: reaching either one reaches the left-most
        assert not ep["success"] and ep["reward"].tolist() == [0.0]
        assert ep["info"]["goal"] == 1 - ep["info"]["leftmost"]
    mixed = LeftmostOracle(3, np.random.default_rng(1), p_optimal=0.5)
    rate = np.mean([run_oracle_episode(env, mixed, seed)["success"] for seed in range(200)])
    assert 0.35 < rate < 0.65


def test_leftmost_discontinuity_and_goal_radius():
    tight = LeftmostEnv(n_dim=2, delta=1e-3)
    free = LeftmostEnv(n_dim=2, delta=None)
    wide = LeftmostEnv(n_dim=2, goal_radius=0.5)
    gaps_tight, gaps_free, spread = [], [], []
    for seed in range(200):
        s = tight.reset(seed=seed)[0]["state"]
        gaps_tight.append(abs(s[4] - s[2]))
        s = free.reset(seed=seed)[0]["state"]
        gaps_free.append(abs(s[4] - s[2]))
        spread.append(np.max(np.abs(wide.reset(seed=seed)[0]["state"][2:])))
    assert max(gaps_tight) <= 1e-3 + 1e-6
    assert np.mean(gaps_free) > 0.03  # independent goals: mean |gap| = 0.2 / 3
    assert 0.4 < max(spread) <= 0.5
    assert wide.action_space.high[0] == pytest.approx(1.5)
    # A multi-step variant: the oracle's first jump already lands on the goal.
    env = LeftmostEnv(n_dim=2, max_steps=3)
    ep = run_oracle_episode(env, make_oracle("leftmost", env), 5)
    assert ep["success"] and len(ep["reward"]) == 1


# ---------------------------------------------------------------------------------------------- registry


def test_registry_errors_are_clear():
    with pytest.raises(ValueError, match="unknown environment 'cartpole'.*leftmost.*particle.*room"):
        make_env("cartpole")
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['n_dim'\]"):
        make_env("room", n_dim=2)
    with pytest.raises(ValueError, match="needs a ParticleEnv, got RoomEnv"):
        make_oracle("particle", make_env("room"))
    with pytest.raises(ValueError, match="oracle.*no parameter"):
        make_oracle("room", make_env("room"), np.random.default_rng(0), speed=2)
    assert make_env("leftmost", n_dim=4, delta=0.01).observation_space["state"].shape == (12,)


@pytest.mark.parametrize("name", ["room", "leftmost"])
@pytest.mark.filterwarnings("ignore:.*infinity", "ignore:.*symmetric and normalized")
def test_gymnasium_api(name):
    check_env(make_env(name), skip_render_check=True)
