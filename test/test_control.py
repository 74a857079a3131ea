"""control/: safety envelope, 5 Hz -> 100 Hz interpolation, xArm6 IK (kinematics only, no simulation)."""

import numpy as np
import pytest

from irvs_ros.control.envelope import Envelope, EnvelopeConfig, EnvelopeError
from irvs_ros.control.ik import IKError, XArmIK
from irvs_ros.control.interpolation import Interpolator


@pytest.fixture(scope="module")
def ik():
    solver = XArmIK()
    yield solver
    solver.close()


def test_ik_reaches_50_random_workspace_setpoints_within_1mm(ik):
    env = Envelope()
    rng = np.random.default_rng(3)
    points = []
    while len(points) < 50:
        xy = rng.uniform([0.15, -0.5], [0.7, 0.5])
        if env.contains(xy):
            points.append(xy)
    # Include the extreme reachable points: the reach limit across the box and the box's near edge.
    points += [env.clamp(np.array([0.7, 0.5])), env.clamp(np.array([0.7, -0.5])), env.clamp(np.array([0.15, 0.0])),
               np.array([0.7, 0.0]), np.array([0.15, 0.5])]
    for xy in points:
        ik.reset()
        q = ik.solve(xy)
        assert q.shape == (6,)
        assert np.all(q >= ik.lower) and np.all(q <= ik.upper), f"joint limits violated at {xy}: {q}"
        err = np.linalg.norm(ik.fk(q) - np.array([xy[0], xy[1], 0.06]))
        assert err < 1e-3, f"IK misses {xy} by {err * 1000:.2f} mm"
        # Tool points down: the TCP frame's z axis is world -z.
        _, quat = ik.fk_pose(q)
        x, y, z, w = quat
        tool_z_world_z = 1 - 2 * (x * x + y * y)
        assert tool_z_world_z < -0.9999


def test_ik_warm_started_stream_stays_accurate(ik):
    ik.reset()
    xs = np.linspace(0.25, 0.6, 60)
    ys = 0.3 * np.sin(np.linspace(0, 3, 60))
    for x, y in zip(xs, ys, strict=True):
        q = ik.solve(np.array([x, y]))
        assert np.linalg.norm(ik.fk(q)[:2] - [x, y]) < 1e-3


def test_ik_rejects_bad_targets(ik):
    with pytest.raises(IKError):
        ik.solve(np.array([np.nan, 0.1]))
    with pytest.raises(IKError):
        ik.solve(np.zeros(4))


def test_envelope_clamps_outside_box_and_reach():
    env = Envelope()
    c = env.config
    for xy in ([1.0, 0.0], [0.0, 0.0], [0.4, -0.9], [0.7, 0.5], [-1.0, 2.0], [0.1, 0.05]):
        out = env.clamp(np.array(xy))
        assert env.contains(out), f"{xy} -> {out} outside"
        assert c.x_min <= out[0] <= c.x_max and c.y_min <= out[1] <= c.y_max
    inside = np.array([0.4, 0.1])
    np.testing.assert_array_equal(env.clamp(inside), inside)
    # Through filter: a far setpoint is step-clipped first, then clamped to the box.
    res = env.filter(np.array([0.9, 0.0]), np.array([0.68, 0.0]))
    assert res.accepted and res.workspace_clamped
    assert res.xy[0] == pytest.approx(0.7)


def test_envelope_clips_large_steps():
    env = Envelope(EnvelopeConfig(max_setpoint_step=0.05))
    ref = np.array([0.4, 0.0])
    res = env.filter(np.array([0.6, -0.01]), ref)
    assert res.accepted and res.step_clamped and not res.workspace_clamped
    np.testing.assert_allclose(res.xy, [0.45, -0.01])
    res = env.apply_delta(ref, np.array([0.01, 0.02]))
    assert not res.step_clamped
    np.testing.assert_allclose(res.xy, [0.41, 0.02])


def test_envelope_tick_limits_speed():
    c = EnvelopeConfig(max_speed=0.3, max_tick_step=0.01)
    env = Envelope(c)
    assert c.tick_step_limit == pytest.approx(0.003)
    out = env.limit_tick(np.array([0.4, 0.0]), np.array([0.5, 0.1]))
    assert np.linalg.norm(out - [0.4, 0.0]) == pytest.approx(0.003)


def test_nan_and_inf_setpoints_are_rejected_without_moving():
    interp = Interpolator(start_xy=np.array([0.4, -0.1]), now=0.0)
    t = 0.0
    for _ in range(10):
        t += 0.01
        interp.tick(t)
    for bad in ([np.nan, 0.0], [0.4, np.inf], [-np.inf, np.nan]):
        res = interp.set_setpoint(np.array(bad), t)
        assert not res.accepted and "non-finite" in res.reason
        for _ in range(20):
            t += 0.01
            np.testing.assert_array_equal(interp.tick(t), [0.4, -0.1])
    assert interp.rejected == 3
    np.testing.assert_array_equal(interp.target, [0.4, -0.1])
    assert not Envelope().apply_delta(np.array([0.4, 0.0]), np.array([np.nan, 0.0])).accepted


def test_interpolation_is_linear_over_one_policy_period():
    interp = Interpolator(start_xy=np.array([0.4, 0.0]), now=0.0)
    interp.set_setpoint(np.array([0.45, 0.02]), 0.0)  # 0.054 m in 0.2 s: under the speed limit
    cmds = [interp.tick(0.01 * k) for k in range(1, 26)]
    for k, cmd in enumerate(cmds[:20], start=1):
        np.testing.assert_allclose(cmd, [0.4 + 0.05 * k / 20, 0.02 * k / 20], atol=1e-12)
    for cmd in cmds[20:]:
        np.testing.assert_allclose(cmd, [0.45, 0.02])
    # A new setpoint mid-segment restarts from the current command, not from the old target.
    interp.set_setpoint(np.array([0.45, 0.0]), 0.25)
    interp.tick(0.26)
    interp.set_setpoint(np.array([0.40, 0.0]), 0.26)
    start = interp.command
    np.testing.assert_allclose(interp.tick(0.27), start + (np.array([0.4, 0.0]) - start) / 20, atol=1e-12)


def test_timeout_decelerates_and_holds():
    c = EnvelopeConfig(max_speed=0.2, setpoint_timeout=0.3, max_decel=1.0)
    interp = Interpolator(c, start_xy=np.array([0.3, -0.3]), now=0.0)
    interp.set_setpoint(np.array([0.4, -0.3]), 0.0)  # the 0.2 m/s limit makes this take 0.5 s
    t, speeds, positions = 0.0, [], []
    for _ in range(120):
        t += 0.01
        positions.append(interp.tick(t))
        speeds.append(np.linalg.norm(interp.velocity))
    speeds = np.array(speeds)
    assert speeds[5] == pytest.approx(0.2)            # moving at the speed limit before the timeout
    assert interp.timed_out
    after = speeds[31:]                                 # timeout at t = 0.3 s
    assert np.all(np.diff(after) <= 1e-12)              # decelerating...
    assert np.all(np.diff(speeds[30:]) >= -c.max_decel * 0.01 - 1e-9)  # ...no harder than max_decel
    assert after[-1] == 0.0                             # ...to a stop
    final = positions[-1]
    assert final[0] < 0.4 - 1e-3                        # short of the stale target
    np.testing.assert_array_equal(positions[-1], positions[-30])  # and holding
    # A fresh setpoint resumes normal operation.
    interp.set_setpoint(final + [0.01, 0.0], t)
    assert not interp.timed_out


def test_envelope_config_validation():
    with pytest.raises(EnvelopeError):
        EnvelopeConfig(x_min=0.7, x_max=0.15)
    with pytest.raises(EnvelopeError):
        EnvelopeConfig(max_speed=0.0)
    with pytest.raises(EnvelopeError):
        Envelope().clamp(np.array([np.nan, 0.0]))


def test_analytic_and_pybullet_ik_agree_on_the_workspace():
    """The closed-form solver gives PyBullet's joints (same elbow branch) and hits the URDF chain's FK within 1 mm
    (in fact within a few micrometres: the URDF's rpy of 1.5708 is not exactly pi/2)."""
    env = Envelope()
    rng = np.random.default_rng(11)
    points = [env.clamp(rng.uniform([0.1, -0.6], [0.75, 0.6])) for _ in range(60)]
    with XArmIK(method="analytic") as fast, XArmIK(method="pybullet") as slow:
        for xy in points:
            fast.reset()
            slow.reset()
            qa, qb = fast.solve(xy), slow.solve(xy)
            assert np.abs(qa - qb).max() < 1e-3, f"solvers disagree at {xy}: {qa} vs {qb}"
            assert np.linalg.norm(fast.fk(qa) - [xy[0], xy[1], 0.06]) < 1e-5
            assert np.all(qa >= fast.lower) and np.all(qa <= fast.upper)
        assert fast.fallbacks == 0


def test_analytic_ik_keeps_free_joints_continuous_and_falls_back_out_of_reach():
    with XArmIK() as ik:
        q = ik.solve(np.array([0.4, 0.1]))
        # Seeded with the same pose turned by 2 pi on joints 1 and 6: the solution follows the seed, no full turn.
        seed = q + np.array([2 * np.pi, 0, 0, 0, 0, -2 * np.pi])
        seed[0] -= 4 * np.pi   # q1 - 2 pi, inside +-2 pi
        q2 = ik.solve(np.array([0.41, 0.1]), q_seed=seed)
        assert abs(q2[0] - seed[0]) < 0.1 and abs(q2[5] - seed[5]) < 0.1
        # Out of reach (2 m away): no closed-form solution; the numerical solver answers as best it can.
        before = ik.fallbacks
        ik.reset()
        q3 = ik.solve(np.array([2.0, 0.0]))
        assert ik.fallbacks == before + 1 and ik.last_error > 0.5
        assert np.all(q3 >= ik.lower) and np.all(q3 <= ik.upper)
    with pytest.raises(ValueError, match="unknown IK method"):
        XArmIK(method="newton")
