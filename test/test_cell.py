"""The simulated cell: control through control/, effector in the plane, NaN actions, observations, camera."""

import hashlib

import numpy as np
import pytest

from irvs_ros.sim.camera import CameraConfig
from irvs_ros.sim.push_tasks import STATE_DIM, PushTaskEnv


@pytest.fixture(scope="module")
def env():
    e = PushTaskEnv("push")
    yield e
    e.close()


def test_effector_tracks_setpoints_in_the_plane(env):
    obs, _ = env.reset(seed=0)
    assert obs["state"].shape == (STATE_DIM,) and obs["state"].dtype == np.float32
    start = env.cell.setpoint.copy()
    z = []
    for a in ([0.05, 0.0], [0.05, 0.05], [0.0, 0.07], [-0.03, 0.0]):
        obs, *_ = env.step(np.array(a))
        z.append(env.cell.effector_xyz()[2])
    np.testing.assert_allclose(env.cell.setpoint, start + [0.07, 0.12], atol=1e-9)
    # The block may be in the way; check tracking only when the arm is free (it is, from the start pose).
    assert np.linalg.norm(env.cell.effector_xyz()[:2] - env.cell.setpoint) < 3e-3
    assert np.all(np.abs(np.array(z) - 0.06) < 3e-3)


def test_actions_bounded_per_step(env):
    env.reset(seed=0)
    before = env.cell.setpoint.copy()
    env.step(np.array([0.5, -0.5]))
    np.testing.assert_allclose(env.cell.setpoint - before, [0.1, -0.1], atol=1e-9)


def test_nan_action_is_rejected_without_moving_the_arm(env):
    env.reset(seed=2)
    env.step(np.array([0.02, 0.02]))
    env.step(np.array([0.0, 0.0]))
    q0, sp0 = env.cell.joint_positions(), env.cell.setpoint.copy()
    _, _, _, _, info = env.step(np.array([np.nan, 0.01]))
    assert info["rejected"]
    np.testing.assert_array_equal(env.cell.setpoint, sp0)
    assert np.abs(env.cell.joint_positions() - q0).max() < 1e-3
    with pytest.raises(ValueError):
        env.step(np.zeros(3))


def test_workspace_limit_holds_in_the_sim(env):
    env.reset(seed=0)
    for _ in range(12):
        env.step(np.array([-0.1, -0.1]))
    sp = env.cell.setpoint
    assert env.cell.interpolator.envelope.contains(sp)
    assert sp[1] >= -0.5 - 1e-9 and sp[0] >= 0.15 - 1e-9
    assert np.linalg.norm(env.cell.effector_xyz()[:2] - sp) < 3e-3



def test_camera_image_shape_block_visible_and_seeded():
    env = PushTaskEnv("push", image=True)
    try:
        obs, _ = env.reset(seed=3)
        img = obs["image"]
        assert img.shape == (90, 120, 3) and img.dtype == np.uint8
        assert env.observation_space["image"].shape == img.shape
        block_xy, yaw = env.cell.block_pose()[:2], env.cell.block_pose()[2]
        env.cell.set_block_pose(block_xy + np.array([0.08, 0.05]), yaw)
        moved = env.camera.render()
        changed = np.abs(moved.astype(int) - img.astype(int)).sum(axis=2) > 30
        assert changed.sum() >= 10, f"only {changed.sum()} pixels changed when the block moved"
        # Same seed -> identical image; a different seed -> a different one.
        again, _ = env.reset(seed=3)
        other, _ = env.reset(seed=4)
        digest = [hashlib.sha1(o["image"].tobytes()).hexdigest() for o in (obs, again, other)]
        assert digest[0] == digest[1] != digest[2]
        native = env.render()
        assert native.shape == (360, 640, 3) and native.dtype == np.uint8
    finally:
        env.close()


def test_camera_perturbation_changes_the_view_per_episode():
    env = PushTaskEnv("push", image=True, camera_perturbation=True)
    try:
        a, _ = env.reset(seed=1)
        eye_a = env.camera.eye.copy()
        b, _ = env.reset(seed=2)
        assert np.abs(env.camera.eye - eye_a).max() > 1e-4
        assert np.abs(env.camera.eye - np.array(CameraConfig.from_yaml().eye)).max() < 0.06
        c, _ = env.reset(seed=1)
        np.testing.assert_array_equal(a["image"], c["image"])
    finally:
        env.close()


def _oracle_states(env, seed, steps):
    from irvs_ros.sim.push_oracle import InsertOracle, PushOracle

    oracle = PushOracle() if env.task == "push" else InsertOracle(pocket=env.pocket)
    obs, _ = env.reset(seed=seed)
    oracle.reset()
    states = [obs["state"]]
    for _ in range(steps):
        obs, *_ = env.step(oracle(obs))
        states.append(obs["state"])
    return np.array(states)


def test_seeded_episode_same_in_a_fresh_world_and_after_other_episodes():
    # The arm stays loaded across resets; everything it can touch is re-created, so history must not matter.
    fresh = PushTaskEnv("push_insert")
    used = PushTaskEnv("push_insert")
    try:
        a = _oracle_states(fresh, 5, 12)
        _oracle_states(used, 7, 12)
        _oracle_states(used, 8, 12)
        b = _oracle_states(used, 5, 12)
    finally:
        fresh.close()
        used.close()
    np.testing.assert_array_equal(a, b)


def test_only_the_tool_touches_the_block_and_the_block_rests_on_the_table(env):
    import pybullet as p

    env.reset(seed=0)
    cell, cid = env.cell, env.cell.client
    # Block against the tool: contacts with the tool link (and the table), none with another arm link.
    tcp = cell.effector_xyz()
    cell.set_block_pose(tcp[:2] + np.array([0.029, 0.0]), 0.0)
    for _ in range(5):
        p.stepSimulation(physicsClientId=cid)
    links = {c[3] for c in p.getContactPoints(cell.robot, cell.block, physicsClientId=cid)}
    assert links == {cell.tool_link}
    assert p.getContactPoints(cell.table, cell.block, physicsClientId=cid)
    # Block inside the upper arm: no contact (arm links other than the tool are filtered out).
    elbow = p.getLinkState(cell.robot, cell.joints[2], physicsClientId=cid)[4]
    p.resetBasePositionAndOrientation(cell.block, elbow, (0, 0, 0, 1), physicsClientId=cid)
    p.stepSimulation(physicsClientId=cid)
    assert not p.getContactPoints(cell.robot, cell.block, physicsClientId=cid)


def test_measured_tcp_matches_the_kinematic_model(env):
    env.reset(seed=1)
    for a in ([0.05, 0.02], [0.0, 0.08]):
        env.step(np.array(a))
        q = env.cell.joint_positions()
        np.testing.assert_allclose(env.cell.effector_xyz(), env.cell.ik.fk(q), atol=1e-6)


def test_legacy_configuration_still_runs_and_tracks():
    from irvs_ros.sim.cell import CellConfig
    from irvs_ros.sim.push_tasks import TaskConfig

    env = PushTaskEnv("push", config=TaskConfig(cell=CellConfig.legacy()))
    try:
        assert env.cell.ik.method == "pybullet"
        env.reset(seed=0)
        env.step(np.array([0.05, 0.03]))
        env.step(np.array([0.0, 0.0]))
        assert np.linalg.norm(env.cell.effector_xyz()[:2] - env.cell.setpoint) < 3e-3
    finally:
        env.close()


def test_cell_config_rejects_bad_simulation_settings():
    from irvs_ros.sim.cell import CellConfig, CellError

    with pytest.raises(CellError, match="solver"):
        CellConfig(solver_iterations=0)
    with pytest.raises(CellError, match="ik_method"):
        CellConfig(ik_method="magic")
    with pytest.raises(CellError, match="physics_hz"):
        CellConfig(physics_hz=200)
    with pytest.raises(CellError, match="physics_hz"):
        CellConfig(physics_hz=242)  # not a whole number of physics steps per 5 Hz policy period


def test_physics_steps_spread_evenly_over_the_ticks():
    from irvs_ros.sim.cell import CellConfig

    assert CellConfig(physics_hz=300).tick_substeps == (3,) * 20
    at_240 = CellConfig(physics_hz=240).tick_substeps  # IBC's physics rate: 2.4 physics steps per 100 Hz tick
    assert len(at_240) == 20 and sum(at_240) == 48 and set(at_240) == {2, 3}
    assert at_240[:5] == (2, 2, 3, 2, 3)  # every tick ends on the physics step closest below its own time
    assert CellConfig().physics_hz == 240


def test_layered_rendering_equals_a_full_render():
    # Table and fixture drawn once per episode, links out of view skipped: the image must not change at all.
    env = PushTaskEnv("push_insert", image=True, camera_perturbation=True)
    try:
        env.reset(seed=2)
        culled = []
        original = env.camera._outside_view
        env.camera._outside_view = lambda view_proj: culled.append(original(view_proj)) or culled[-1]
        for a in ([0.05, 0.05], [0.05, 0.1], [0.0, 0.1], [0.1, 0.1]):
            obs, *_ = env.step(np.array(a))
            np.testing.assert_array_equal(obs["image"], env.camera.render_full())
        # The arm's upper links are above the frame: the frustum test did leave them out.
        assert culled and all(len(c) >= 2 for c in culled)
        layered = env.render()
        saved, env.camera._static_shapes = env.camera._static_shapes, []
        np.testing.assert_array_equal(layered, env.render())
        env.camera._static_shapes = saved
        with pytest.raises(ValueError, match="no bodies"):
            env.camera.set_static([12345])
    finally:
        env.close()


def test_integer_box_downsample_matches_the_float_mean():
    from irvs_ros.sim.camera import box_downsample

    rng = np.random.default_rng(0)
    for s in (2, 3, 4):
        # A quarter of random 2x2 blocks have a mean ending in .5: np.round rounds those half to even.
        img = rng.integers(0, 256, (6 * s, 8 * s, 3), dtype=np.uint8)
        ref = img.reshape(6, s, 8, s, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        np.testing.assert_array_equal(box_downsample(img, s), ref)


def test_mesh_bounds_from_binary_and_ascii_stl_and_obj(tmp_path):
    import struct

    from irvs_ros.sim.camera import _read_mesh_bounds

    tri = np.array([[0.0, -1.0, 2.0], [3.0, 0.5, -2.0], [1.0, 4.0, 0.0]], dtype=np.float32)
    binary = tmp_path / "t.stl"
    binary.write_bytes(b"\0" * 80 + struct.pack("<I", 1) + np.zeros(3, np.float32).tobytes() + tri.tobytes()
                       + b"\0\0")
    ascii_stl = tmp_path / "a.stl"
    ascii_stl.write_text("solid t\nfacet normal 0 0 1\nouter loop\n"
                         + "".join(f"vertex {x} {y} {z}\n" for x, y, z in tri) + "endloop\nendfacet\nendsolid t\n")
    obj = tmp_path / "t.obj"
    obj.write_text("".join(f"v {x} {y} {z}\n" for x, y, z in tri) + "f 1 2 3\n")
    for path in (binary, ascii_stl, obj):
        np.testing.assert_allclose(_read_mesh_bounds(path), [[0, -1, -2], [3, 4, 2]], err_msg=str(path))
    assert _read_mesh_bounds(tmp_path / "missing.stl") is None
