"""N-D particle integrator (IBC C.5): PD dynamics, success rule, reward, oracle, determinism."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from irvs_ros.sim.particle import ParticleEnv, ParticleOracle
from irvs_ros.sim.registry import make_env, make_oracle
from irvs_ros.sim.rollout import run_oracle_episode


def _split(state, n):
    return state[:n], state[n:2 * n], state[2 * n:3 * n], state[3 * n:]


def _pd_from_rest(e0, t, kp=10.0, kd=5.0):
    """Exact continuous solution of e'' = -kp e - kd e' with e(0) = e0, e'(0) = 0 (underdamped for 10 / 5)."""
    sigma, wd = kd / 2, np.sqrt(kp - kd ** 2 / 4)
    return e0 * np.exp(-sigma * t) * (np.cos(wd * t) + sigma / wd * np.sin(wd * t))


@pytest.mark.parametrize("n_dim", [2, 8])
def test_oracle_solves_the_task(n_dim):
    env = make_env("particle", n_dim=n_dim)
    oracle = make_oracle("particle", env, np.random.default_rng(0))
    results = [run_oracle_episode(env, oracle, seed) for seed in range(30)]
    assert np.mean([r["success"] for r in results]) >= 0.95
    for r in results:
        assert r["action"].shape == (50, n_dim) and r["state"].shape == (50, 4 * n_dim)
        # The last reward is 1 exactly for a success; rewards are the stage values.
        assert set(np.unique(r["reward"])) <= {0.0, 0.5, 1.0}
        assert (r["reward"][-1] == 1.0) == r["success"]


def test_held_target_follows_the_pd_law():
    env = ParticleEnv(n_dim=3)
    obs, _ = env.reset(seed=3)
    pos0, vel0, _, _ = _split(obs["state"].astype(np.float64), 3)
    assert np.all(vel0 == 0)
    target = np.array([0.9, 0.1, 0.5])

    # One decision = 10 semi-implicit Euler steps of dt = 0.005 with kp = 10, kd = 5.
    q, v = pos0.copy(), np.zeros(3)
    for _ in range(10):
        v = v + (10.0 * (target - q) - 5.0 * v) * 0.005
        q = q + v * 0.005
    obs, *_ = env.step(target)
    pos1, vel1, _, _ = _split(obs["state"].astype(np.float64), 3)
    np.testing.assert_allclose(pos1, q, atol=1e-6)
    np.testing.assert_allclose(vel1, v, atol=1e-5)

    # Over the whole episode (2.5 s of simulated time) the particle tracks the continuous PD solution,
    # overshoots the target slightly (damping ratio 0.79) and settles on it.
    errors = [pos1 - target]
    for _ in range(49):
        obs, *_ = env.step(target)
        errors.append(obs["state"][:3].astype(np.float64) - target)
    errors = np.array(errors)
    times = 0.05 * np.arange(1, 51)
    expected = np.stack([_pd_from_rest(e, times) for e in pos0 - target], axis=1)
    assert np.max(np.abs(errors - expected)) < 0.01 * np.max(np.abs(pos0 - target))
    crossing = np.argmax(np.sign(errors[:, 0]) != np.sign(errors[0, 0]))
    assert 1.1 < times[crossing] < 1.4  # first zero crossing of this PD system at ~1.28 s
    assert np.max(np.abs(errors[-1])) < 0.01 * np.max(np.abs(pos0 - target))  # settled to < 1% of the step


def test_success_needs_goal1_first():
    env = ParticleEnv(n_dim=2)
    # Find an episode where goal 1 lies well off the straight path from the start to goal 2.
    for seed in range(100):
        obs, _ = env.reset(seed=seed)
        pos, _, g1, g2 = _split(obs["state"].astype(np.float64), 2)
        d = g2 - pos
        off_path = np.linalg.norm((g1 - pos) - np.clip((g1 - pos) @ d / (d @ d), 0, 1) * d)
        if off_path > 0.2:
            break
    info = {}
    rewards = []
    for _ in range(50):
        _, r, terminated, truncated, info = env.step(g2)
        rewards.append(r)
    assert truncated and not terminated
    assert info["dist_goal2"] < 0.05 and not info["visited_goal1"]
    assert not info["success"] and max(rewards) == 0.0


def test_oracle_switches_goals_by_watching_positions():
    oracle = ParticleOracle(n_dim=2)
    g1, g2 = np.array([0.2, 0.2]), np.array([0.8, 0.6])

    def obs(pos):
        return {"state": np.concatenate([pos, [0.0, 0.0], g1, g2]).astype(np.float32)}

    np.testing.assert_allclose(oracle(obs([0.5, 0.5])), g1)
    np.testing.assert_allclose(oracle(obs([0.212, 0.2])), g1)  # 0.012 away: not yet within 0.01
    np.testing.assert_allclose(oracle(obs([0.205, 0.2])), g2)
    np.testing.assert_allclose(oracle(obs([0.5, 0.5])), g2)  # stays switched
    oracle.reset()
    np.testing.assert_allclose(oracle(obs([0.5, 0.5])), g1)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        oracle({"state": np.zeros(6)})


def test_same_seed_same_episode_and_different_seeds_differ():
    env = make_env("particle", n_dim=4)
    oracle = make_oracle("particle", env)
    a, b, c = (run_oracle_episode(env, oracle, s) for s in (7, 7, 8))
    for key in ("state", "action", "reward"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.allclose(a["state"][0], c["state"][0])


def test_actions_are_checked_and_clipped():
    env = ParticleEnv(n_dim=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan, 0.5]))
    with pytest.raises(ValueError, match=r"expected \(2,\)"):
        env.step(np.zeros(3))
    clipped, same = ParticleEnv(n_dim=2), ParticleEnv(n_dim=2)
    clipped.reset(seed=1)
    same.reset(seed=1)
    np.testing.assert_array_equal(clipped.step(np.array([5.0, -2.0]))[0]["state"],
                                  same.step(np.array([1.0, 0.0]))[0]["state"])
    with pytest.raises(ValueError, match="n_dim"):
        ParticleEnv(n_dim=0)


@pytest.mark.filterwarnings("ignore:.*infinity")  # positions and velocities are unbounded by design
def test_gymnasium_api():
    env = ParticleEnv(n_dim=2)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and "success" in info
    np.testing.assert_array_equal(env.action_space.low, [0, 0])
    np.testing.assert_array_equal(env.action_space.high, [1, 1])


def test_evaluate_counts_how_particle_episodes_end():
    from irvs_ros.sim.particle import OUTCOMES
    from irvs_ros.sim.rollout import OraclePolicy, evaluate

    def goal(which):  # always command goal `which` (batched act_fn on the raw state)
        return lambda obs: obs["state"][:, (2 + which) * 2:(3 + which) * 2]

    class LeaveGoal1:  # goal 1 until within 0.01 of it (as the oracle), then the box corner away from goal 2
        def reset(self, indices):
            self.left = np.zeros(len(indices), bool)

        def __call__(self, obs):
            s = obs["state"]
            self.left |= np.linalg.norm(s[:, :2] - s[:, 4:6], axis=1) < 0.01
            return np.where(self.left[:, None], np.where(s[:, 6:8] < 0.5, 1.0, 0.0), s[:, 4:6])

    def ends(act_fn):
        result = evaluate("particle", {"n_dim": 2}, act_fn, 20, seed=0)
        assert list(result["outcomes"]) == list(OUTCOMES) and sum(result["outcomes"].values()) == 20
        assert result["outcomes"]["success"] == round(20 * result["success_rate"])
        return result["outcomes"]

    assert ends(goal(0))["held_goal1"] == 20
    straight = ends(goal(1))
    # It ends at goal 2 every time: a success only when goal 1 lay on its way.
    assert straight["success"] + straight["missed_goal1"] == 20 and straight["missed_goal1"] >= 15
    left = ends(LeaveGoal1())
    assert left["success"] == 0 and left["missed_goal2"] >= 17  # the others never came within 0.01 of goal 1
    assert ends(OraclePolicy("particle", {"n_dim": 2}, seed=0))["success"] >= 19
