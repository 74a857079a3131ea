"""`irvs demo` and its episode driver without the shipped model: the lockstep gate (pure), sim_node's pause / reset /
episode-end services (in process), and the demo graph as processes over real DDS on sim time with an untrained
IRvS image policy exported here: episodes run to their time limit, a seed gives the same episode twice (lockstep),
results and the video are written, bad options are clear errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from irvs_ros.nodes.lockstep import DECISION_NS, NUDGE_NS, LockstepError, LockstepGate

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
# test_launch_bringup's range (220-232), another residue; the graph runs while no other module of this session does.
DOMAIN = 220 + (os.getpid() + 3) % 13
START_XY = (0.3, -0.4)    # the push tasks' effector start (m)
EPISODE_S = 2.0           # simulated s per episode here: 10 decisions


# ------------------------------------------------------------------------------------------------ lockstep gate

def _gate(**kw) -> LockstepGate:
    return LockstepGate(0.01, 0.2, kw.pop("timeout", 2.0), **kw)


def _later(delay: float, fn, *args) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay), fn(*args)), daemon=True)
    t.start()
    return t


def test_gate_waits_for_engaged_streams_only():
    gate = _gate()
    t = time.monotonic()
    assert gate.wait(0.05) == [] and time.monotonic() - t < 0.05  # nothing engaged yet: no waiting
    gate.command(0.05)
    _later(0.1, gate.command, 0.06)
    t = time.monotonic()
    calls: list[int] = []
    assert gate.wait(0.06, republish=calls.append) == []
    assert time.monotonic() - t >= 0.09
    assert calls and set(calls) == {NUDGE_NS}  # the late command was nudged with the clock a hair past the tick
    assert gate.missing(0.06) == [] and gate.timeouts["command"] == 0
    disabled = _gate(enabled=False)
    disabled.command(0.01)
    assert disabled.wait(0.5) == []


def test_gate_orders_the_decision_after_the_command_and_pose():
    gate = _gate()
    gate.command(1.0)
    gate.pose(1.0)
    gate.start_episode(1.0)
    assert [gate.is_decision_time(t) for t in (1.0, 1.1, 1.2, 1.21, 1.4)] == [False, False, True, False, True]
    assert gate.decisions(2.0) == 5 and gate.decisions(1.19) == 0
    events: list[str] = []

    def republish(offset_ns: int) -> None:
        events.append(f"clock+{offset_ns}")
        if offset_ns == DECISION_NS:  # the policy fires only now; it answers
            _later(0.01, gate.setpoint, 1.2 + DECISION_NS * 1e-9)

    def interpolator() -> None:
        events.append("command")
        gate.command(1.2)
        gate.pose(1.2)

    _later(0.03, interpolator)
    assert gate.wait(1.2, republish=republish) == []
    assert "command" in events and events.index("command") < events.index(f"clock+{DECISION_NS}"), events
    assert all(e != f"clock+{DECISION_NS}" for e in events[:events.index("command")])


def test_gate_sends_the_frame_again_while_a_setpoint_is_late():
    gate = _gate()
    gate.start_episode(1.0)
    events: list = []

    def resend() -> None:  # the first frame again was lost as well; the policy answers the second
        events.append("frame")
        if events.count("frame") == 2:
            gate.setpoint(1.2 + DECISION_NS * 1e-9)

    gate.command(1.2)
    gate.pose(1.2)
    assert gate.wait(1.2, republish=events.append, resend=resend) == []
    assert events == [DECISION_NS, DECISION_NS, "frame", DECISION_NS, "frame"], events
    events.clear()  # a setpoint in time: the frame is not sent again
    gate.command(1.4)
    gate.pose(1.4)
    _later(0.005, gate.setpoint, 1.4 + DECISION_NS * 1e-9)
    assert gate.wait(1.4, republish=events.append, resend=resend) == [] and events == [DECISION_NS], events


def test_gate_times_out_disengages_and_reengages():
    gate = _gate(timeout=0.3)
    gate.start_episode(0.0)
    t = time.monotonic()
    assert gate.wait(0.2) == ["setpoint"] and 0.25 < time.monotonic() - t < 2.0
    assert gate.timeouts["setpoint"] == 1 and not gate.engaged("setpoint")
    t = time.monotonic()
    assert gate.wait(0.4) == [] and time.monotonic() - t < 0.1  # no policy: the sim goes on without waiting
    assert gate.take_late_answers() == []
    gate.setpoint(0.4)
    assert gate.engaged("setpoint") and gate.missing(0.6) == ["setpoint"]
    # The first answer after the timeout is noted (sim_node logs how late it came and what it was stamped).
    [(stream, stamp, at, wall_late)] = gate.take_late_answers()
    assert (stream, stamp, at) == ("setpoint", 0.4, 0.2) and 0.0 <= wall_late < 2.0
    assert gate.take_late_answers() == []
    waiting = threading.Thread(target=gate.wait, args=(0.6,), daemon=True)
    waiting.start()
    gate.release()
    waiting.join(timeout=1.0)
    assert not waiting.is_alive()
    with pytest.raises(LockstepError, match="whole number of ticks"):
        LockstepGate(0.01, 0.205, 1.0)
    with pytest.raises(LockstepError, match="timeout must be a finite number > 0"):
        LockstepGate(0.01, 0.2, 0.0)


# ------------------------------------------------------------------------------------------------ sim_node services

def test_sim_node_pauses_resets_and_ends_episodes_by_time_and_success():
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    from std_srvs.srv import SetBool, Trigger

    from irvs_ros.nodes.graph import InProcessGraph, ServiceCaller
    from irvs_ros.nodes.sim_node import SimNode

    def trigger(caller, name):
        resp = caller.call(Trigger, name, Trigger.Request())
        assert resp.success, resp.message
        return json.loads(resp.message)

    def wait_paused(caller, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = trigger(caller, "/sim_node/task_state")
            if state["paused"]:
                return state
            time.sleep(0.05)
        raise AssertionError("the sim did not pause")

    with InProcessGraph(domain_id=DOMAIN) as g:
        sim = g.add(SimNode(**g.node_kwargs(real_time_factor=0.0, image_width=64, image_height=36, camera_rate=5.0)))
        caller = ServiceCaller(g.context)
        try:
            assert caller.call(SetBool, "/sim_node/pause", SetBool.Request(data=True)).success
            t_paused = trigger(caller, "/sim_node/task_state")["sim_time"]
            time.sleep(0.3)
            assert trigger(caller, "/sim_node/task_state")["sim_time"] == t_paused  # simulated time stands still
            params = [Parameter("seed", value=4).to_parameter_msg(),
                      Parameter("episode_time_limit", value=0.5).to_parameter_msg(),
                      Parameter("pause_on_success", value=True).to_parameter_msg()]
            assert all(r.successful for r in caller.call(SetParameters, "/sim_node/set_parameters",
                                                         SetParameters.Request(parameters=params)).results)
            start = trigger(caller, "/sim_node/reset")
            assert start["seed"] == 4 and start["episode_time"] == 0.0 and start["paused"]
            assert caller.call(SetBool, "/sim_node/pause", SetBool.Request(data=False)).success
            end = wait_paused(caller)
            assert end["pause_reason"] == "time_limit" and end["episode_steps"] == 2
            assert abs(end["episode_time"] - 0.5) < 1e-9  # whole ticks: exactly the limit

            # Success ends the episode at the first decision time: put the block into the fixture's pocket.
            start = trigger(caller, "/sim_node/reset")
            goal = start["state"]
            with sim._sim_lock:
                sim.robot.cell.set_block_pose(np.array(goal["goal_xy"]), goal["goal_yaw"][0])
            assert caller.call(SetBool, "/sim_node/pause", SetBool.Request(data=False)).success
            end = wait_paused(caller)
            assert end["pause_reason"] == "success" and end["success"] and end["reward_level"] == 1.0
            assert end["episode_steps"] == 1 and abs(end["episode_time"] - 0.2) < 1e-9
        finally:
            caller.close()


# ------------------------------------------------------------------------------------------------ the demo graph

@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory) -> Path:
    """An untrained IRvS image policy (DFO argmin, deltas within +-0.022 m) exported to ONNX."""
    import torch

    from irvs_ros.learn.algorithms import make_algorithm
    from irvs_ros.learn.export import export_policy
    from irvs_ros.runtime.spec import NormStats, ObsSpec, PolicySpec

    torch.manual_seed(0)
    stats = NormStats((), (), (-0.02, -0.02), (0.02, 0.02), 0.0, 1.0)
    spec = PolicySpec(ObsSpec(0, (18, 24, 3), ()), 2, stats, (-0.022, -0.022), (0.022, 0.022), 5.0)
    algo = make_algorithm("irvs", spec, {"width": 16, "depth": 2, "method": "dfo", "num_counter_examples": 8,
                                         "dfo_samples": 64})
    return export_policy(algo, tmp_path_factory.mktemp("policy") / "tiny_irvs.onnx")


def _demo(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "irvs_ros.cli", "demo", *argv], capture_output=True, text=True,
                          timeout=timeout)


def test_demo_rejects_bad_options_and_missing_models(tmp_path, monkeypatch):
    from irvs_ros.commands import demo

    out = _demo("--model", str(tmp_path / "nope.onnx"), "--out", str(tmp_path))
    assert out.returncode == 2 and f"no policy file {tmp_path / 'nope.onnx'}" in out.stderr
    out = _demo("--episodes", "2", "--video-episode", "2", "--out", str(tmp_path))
    assert out.returncode == 2 and "--video-episode 2 is not one of the 2 episodes" in out.stderr
    out = _demo("--reruns", "-1", "--out", str(tmp_path))
    assert out.returncode == 2 and "--reruns must be >= 0, got -1" in out.stderr
    monkeypatch.setattr(demo, "REPO_ROOT", tmp_path)
    with pytest.raises(demo.DemoArgumentError, match="the shipped policy models/push_insert.onnx is missing"):
        demo.model_path(None)


def test_irvs_demo_runs_episodes_prints_results_and_writes_a_video(tiny_policy, tmp_path):
    video = tmp_path / "episode.gif"
    out = _demo("--model", str(tiny_policy), "--episodes", "1", "--seed", "7", "--time-limit", "1.0",
                "--out", str(tmp_path), "--video", str(video), "--domain-id", str(DOMAIN))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "episode 1/1  seed 7: failure  reward 0.0  steps   5  sim   1.0 s" in out.stdout, out.stdout
    assert "success rate 0% (0/1), partial 0%" in out.stdout
    result = json.loads((tmp_path / "push_insert_results.json").read_text())
    assert result["seeds"] == [7] and result["episodes"] == 1 and result["success_rate"] == 0.0
    assert result["lockstep_timeouts"] == 0 and result["sim_overrides"]["lockstep"] is True
    episode = result["per_episode"][0]
    assert episode["end"] == "time_limit" and episode["steps"] == 5 and episode["frames"] == 7
    assert episode["decisions"] == episode["decisions_on_time"] == 5

    from irvs_ros.sim.video import video_info

    info = video_info(video)  # the reset scene and the 6 frames the policy decided on: 5 Hz of sim time
    assert (info.width, info.height) == (320, 180) and abs(info.duration_s - 1.4) < 0.05
    assert "sim_node" in (tmp_path / "nodes.log").read_text()


@pytest.fixture(scope="module")
def graph(tiny_policy, tmp_path_factory):
    """The demo's graph (processes, lockstep) on the tiny policy, and an EpisodeRunner on it."""
    from irvs_ros.commands.bringup import Bringup
    from irvs_ros.commands.demo import graph_env, graph_nodes
    from irvs_ros.nodes.episode_runner import EpisodeRunner

    log_path = tmp_path_factory.mktemp("graph") / "nodes.log"
    env = graph_env(DOMAIN)
    with open(log_path, "w") as log:
        procs = Bringup(graph_nodes(tiny_policy, None, "push_insert"), env, log)
        procs.start()
        try:
            with EpisodeRunner(domain_id=DOMAIN) as runner:
                runner.wait_until_ready(timeout=120, alive=procs.dead)
                runner.log_path = log_path
                yield runner
        finally:
            procs.stop()


def test_seeded_episodes_are_reproducible_in_lockstep(graph, tmp_path):
    from irvs_ros.sim.registry import make_env
    from irvs_ros.sim.video import video_info

    seen = []
    summary = graph.run([11, 12, 11], time_limit=EPISODE_S, video=tmp_path / "seed11.mp4", on_result=seen.append)
    first, other, again = summary.episodes
    assert seen == summary.episodes and [e.seed for e in seen] == [11, 12, 11]
    for e in summary.episodes:
        assert e.end == "time_limit" and not e.success and e.reward_level == 0.0 and not e.partial
        assert e.steps == 10 and abs(e.sim_time - EPISODE_S) < 1e-6
        # One setpoint per decision time, each at its time.
        assert e.lockstep_timeouts == 0 and e.decisions == e.decisions_on_time == 10, \
            (e, graph.log_path.read_text()[-3000:])
    # The scene is the gym task's scene for the seed.
    env = make_env("push_insert")
    try:
        want = {s: env.reset(seed=s)[1]["state_dict"] for s in (11, 12)}
    finally:
        env.close()
    assert np.allclose(first.final_state["goal_xy"], want[11]["goal_xy"], atol=1e-6)
    assert np.allclose(other.final_state["goal_xy"], want[12]["goal_xy"], atol=1e-6)
    # The policy moved the arm, and the same seed gave the same episode (same images, argmin samples, timing).
    assert np.linalg.norm(np.subtract(first.final_state["effector_xy"], START_XY)) > 0.005
    # Mostly to the bit; a message delivered a tick late to a CPU-starved node moves an episode by ~0.1 mm.
    for key in ("effector_xy", "block_xy", "block_yaw"):
        assert np.allclose(first.final_state[key], again.final_state[key], atol=1e-3), key
    assert not np.allclose(first.final_state["effector_xy"], other.final_state["effector_xy"], atol=1e-3)
    # The video of the first episode: the reset scene and its 11 decision frames (the last one at the end time),
    # 320x180, 5 per simulated second.
    assert summary.video == first.video and first.frames == 12 and other.video is None
    info = video_info(first.video)
    assert (info.width, info.height, info.frames) == (320, 180, 12)
    d = summary.to_dict()
    assert d["episodes"] == 3 and d["success_rate"] == 0.0 and len(d["per_episode"]) == 3
    assert d["reruns"] == sum(e.reruns for e in summary.episodes) <= 1, graph.log_path.read_text()[-3000:]


def test_an_episode_with_a_lockstep_timeout_is_run_again_from_its_seed(monkeypatch):
    from irvs_ros.nodes.episode_runner import EpisodeResult, EpisodeRunner

    # Scripted episode results (their timeouts) on a real runner: which seeds run, how often, what is kept.
    timeouts = {3: [1, 0], 4: [0], 5: [2, 1, 1]}
    calls = []

    def run_episode(seed, *, time_limit=None, video=None):
        calls.append(seed)
        n = timeouts[seed].pop(0)
        return EpisodeResult(seed=seed, success=False, reward_level=0.0, end="time_limit", steps=1, sim_time=0.2,
                             wall_time=0.1, goal_distance=0.1, inserted_fraction=None, final_state={},
                             lockstep_timeouts=n, decisions=1, decisions_on_time=1,
                             timeouts_by_stream={"setpoint": n} if n else {})

    with EpisodeRunner(domain_id=DOMAIN) as runner:  # calls nothing of a graph
        monkeypatch.setattr(runner, "run_episode", run_episode)
        summary = runner.run([3, 4, 5], reruns=2)
        with pytest.raises(ValueError, match="reruns must be an integer >= 0"):
            runner.run([3], reruns=-1)
    assert calls == [3, 3, 4, 5, 5, 5]
    assert [(e.seed, e.reruns, e.lockstep_timeouts) for e in summary.episodes] == [(3, 1, 0), (4, 0, 0), (5, 2, 1)]
    d = summary.to_dict()
    assert d["reruns"] == 3 and d["lockstep_timeouts"] == 1 and d["lockstep_timeouts_by_stream"] == {"setpoint": 1}
    assert "without an answer: setpoint 1" in summary.episodes[2].describe()
    assert "run 2 times: lockstep timeouts" in summary.episodes[0].describe()
