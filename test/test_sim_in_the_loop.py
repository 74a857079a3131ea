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
EPISODES = 6
FIRST_SEED = 1000          # as `irvs eval --seed 1000`: the same scenes without ROS
# The shipped model (models/push_insert.md) inserted 3 of these six on the graph in each of two runs, but not the same
# three (1000, 1004, 1005 beside a training run; 1000, 1001, 1002 idle): over 150 decisions the lockstep's leftover
# timing differences (nodes.lockstep) flip single episodes of this policy. 9/20 in the gym at seeds 1000..1019.
MEASURED_SUCCESSES = 3     # successes of the shipped model in these EPISODES (measured 2026-12-03: 3/6 twice)
# Episodes below the measured count that still pass (see the module docstring). Two: CI has run on Intel Xeon and on
# AMD EPYC machines, and onnxruntime's kernels differ between them; single episodes flip even between runs on one
# machine (above). If all six were redrawn at the model's 45%,
# P(0 successes) = 3% while P(< 2) = 16%.
MARGIN = 2
# A lockstep wait that times out (2 s) lets the sim go on; a few happen while the node processes warm up on a
# loaded machine (0 in these 6 episodes beside a training run when this model was measured; 13 in 4 episodes at
# load 4 with an earlier one), so allow a few. `irvs demo` runs such an episode again from its seed once.
MAX_LOCKSTEP_TIMEOUTS = 20
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
        f"the lockstep went on without an answer {result['lockstep_timeouts']} times:\n{out.stdout}{out.stderr}")
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
