"""Sim-in-the-loop: the shipped push-insert policy on the whole ROS graph, as `make demo` runs it.

`irvs demo` brings up the push_insert graph in simulation (sim_node, interpolator_node, policy_node on
models/push_insert.onnx; separate processes over real DDS on sim time, sim_node in lockstep) and runs EPISODES
seeded episodes (scene seeds FIRST_SEED...). Lockstep makes an episode depend almost only on its seed, the model
and the parameters, not on CPU load; the margin (MARGIN episodes below the count measured when the model was
shipped) covers what is left: numerical differences between machines (another CPU or onnxruntime build can flip a
near-tied argmin) and the lockstep's leftover timing differences, which a long episode can amplify into another
outcome (see MEASURED_SUCCESSES).

Skipped while models/push_insert.onnx is not shipped. When it lands: run
    irvs demo --episodes EPISODES --seed FIRST_SEED --no-video
and set MEASURED_SUCCESSES to the successes it prints (and EPISODES so that the test stays within CI's time:
a failed episode runs the task's full 30 s of sim time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "push_insert.onnx"
EPISODES = 10
FIRST_SEED = 1000          # as `irvs eval --seed 1000`: the same scenes without ROS
# The shipped model (models/push_insert.md: the 24k-step weights at 4096 DFO samples) inserted 3 of these ten on the
# graph on the idle machine twice (1000, 1006, 1009; 801 s; and 1001, 1005, 1006; 618 s), and 5 and 4 of the first
# six in two other runs: over 150
# decisions the lockstep's leftover timing differences (nodes.lockstep) flip single episodes of this policy. In the
# gym it inserts 4 of these ten (1002, 1003, 1005, 1006) and 29/50 at seeds 1000..1049.
MEASURED_SUCCESSES = 3     # successes of the shipped model in these EPISODES (measured 2026-12-04)
# Episodes below the measured count that still pass (see the module docstring). Two: CI has run on Intel Xeon and on
# AMD EPYC machines, and onnxruntime's kernels differ between them; single episodes flip even between runs on one
# machine (above). If all ten were redrawn at the 40% these scenes get in the gym, P(0 successes) = 0.6%.
MARGIN = 2
# A lockstep wait that times out (2 s) lets the sim go on and `irvs demo` runs such an episode again from its seed
# once, so a timeout costs time, not validity. Measured in these 10 episodes: 2 (AMD EPYC VM) and 0 (Intel Xeon VM)
# on idle machines, 0 in 4 beside two busy processes (Xeon), 24 in one clean-clone `make test` on the EPYC VM and 43
# in one CI run (all setpoints). Their cause: rclpy's MultiThreadedExecutor let policy_node's decision timer miss the
# held clock (nodes.graph.PoolExecutor); with PoolExecutor 0 in these 10 episodes beside a training run (EPYC VM,
# 2026-12-07, 5 successes), and 0 in this test in a clean-clone `make test` beside one (4 successes, 359 s wall
# against the 1,390 s of the CI run with 43). The failure message lists the late streams (command, pose or
# setpoint). A broken lockstep times out at every tick (thousands); the executor's bug gave 24-43: 10 tells both.
MAX_LOCKSTEP_TIMEOUTS = 10
MAX_STEPS = 150            # push_insert's episode length (5 Hz decisions, 30 s of sim time)
DOMAIN = 220 + (os.getpid() + 10) % 13  # test_launch_bringup's range, another residue (see test_demo_command)

pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="models/push_insert.onnx is not shipped yet; this test "
                                "runs the whole graph on it once it is")


def test_shipped_policy_reaches_its_success_rate_on_the_graph(tmp_path):
    assert 0 <= MEASURED_SUCCESSES - MARGIN <= EPISODES
    out = subprocess.run([sys.executable, "-m", "irvs_ros.cli", "demo", "--episodes", str(EPISODES), "--seed",
                          str(FIRST_SEED), "--no-video", "--out", str(tmp_path), "--domain-id", str(DOMAIN)],
                         capture_output=True, text=True, timeout=60 + EPISODES * 240)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "push_insert_results.json").read_text())
    assert result["model"] == str(MODEL) and result["task"] == "push_insert"
    assert result["seeds"] == list(range(FIRST_SEED, FIRST_SEED + EPISODES)) and result["episodes"] == EPISODES
    assert result["lockstep_timeouts"] <= MAX_LOCKSTEP_TIMEOUTS, (
        f"the lockstep went on without an answer {result['lockstep_timeouts']} times "
        f"({result['lockstep_timeouts_by_stream']}):\n{out.stdout}{out.stderr}")
    for e in result["per_episode"]:
        # An episode ends at its first decision with a full insertion, else after the task's 150 decisions.
        assert e["end"] == ("success" if e["success"] else "time_limit"), e
        assert (e["reward_level"] == 1.0) == e["success"] and e["reward_level"] in (0.0, 0.5, 1.0)
        assert 1 <= e["steps"] <= MAX_STEPS and (e["success"] or e["steps"] == MAX_STEPS), e
    successes = sum(e["success"] for e in result["per_episode"])
    print(out.stdout)
    assert successes >= MEASURED_SUCCESSES - MARGIN, (
        f"{successes}/{EPISODES} successes on the graph; the shipped model reached {MEASURED_SUCCESSES} "
        f"(margin {MARGIN}):\n{out.stdout}")
