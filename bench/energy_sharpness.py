"""How well a state-based EBM policy file's energy singles out the demonstrated action, on its own dataset.

For `--states` steps drawn from a dataset store it reports, in the dataset's raw action units:
- `policy_error`: mean |a - a_demo| of the file's own argmin (Policy.act);
- `uniform_error`: the same for the lowest-energy of `--candidates` uniform candidates in the argmin's box
  (an argmin that only samples; the file's argmin should be at least as close);
- `lower_fraction`: the mean fraction of those uniform candidates whose energy is below the demonstrated action's
  (0 = the demonstration is the energy's minimum; a flat energy gives a large fraction).

    .venv/bin/python bench/energy_sharpness.py --policy P.onnx --dataset D.h5 [--states 200] [--candidates 4096]
        [--results bench/results/NAME]

Writes NAME.json with the command and machine when --results is given. Used on the particle policies
(bench/results/particle_langevin_*.md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any


def measure(policy_path: str, dataset_path: str, states: int, candidates: int, seed: int) -> dict[str, Any]:
    """The three figures above for one policy file and dataset store."""
    import numpy as np

    from irvs_ros.data.store import Dataset
    from irvs_ros.runtime.policy_file import load_policy, variable_bounds

    policy = load_policy(policy_path)
    if policy.spec.obs.image_shape is not None or policy.explicit:
        raise SystemExit(f"error: {policy_path} is not a state-only energy policy")
    arrays = Dataset.open(dataset_path).arrays(["state", "action"])
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(arrays["action"]), min(states, len(arrays["action"])), replace=False)
    obs = {"state": arrays["state"][idx].astype(np.float32)}
    demo = arrays["action"][idx].astype(np.float32)
    acted = policy.act(obs, np.random.default_rng(seed + 1))
    low, high = variable_bounds(policy.spec, policy.argmin)
    a = policy.spec.action_dim
    if low.shape[0] > a:
        raise SystemExit(f"error: {policy_path} scores (action, return); this measure is for action-only energies")
    cand = rng.uniform(low, high, (len(idx), candidates, low.shape[0])).astype(np.float32)
    energy = policy.energy(obs, cand)
    best = cand[np.arange(len(idx)), energy.argmin(axis=1), :a]
    demo_norm = policy.spec.stats.normalize_action(demo).astype(np.float32)
    demo_energy = policy.energy(obs, demo_norm[:, None, :])[:, 0]
    return {"policy": policy_path, "algorithm": policy.algorithm, "argmin": policy.argmin.get("method"),
            "dataset": dataset_path, "states": len(idx), "candidates": candidates, "seed": seed,
            "policy_error": float(np.abs(acted - demo).mean()),
            "uniform_error": float(np.abs(policy.spec.stats.unnormalize_action(best) - demo).mean()),
            "lower_fraction": float((energy < demo_energy[:, None]).mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--states", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", help="results path without extension (writes .json)")
    args = parser.parse_args(argv)
    if args.states <= 0 or args.candidates <= 0:
        parser.error("--states and --candidates must be > 0")
    result = measure(args.policy, args.dataset, args.states, args.candidates, args.seed)
    print(json.dumps(result, indent=1))
    if args.results:
        from irvs_ros.commands.pipeline import machine_info

        result["command"] = "python bench/energy_sharpness.py " + shlex.join(argv if argv is not None
                                                                              else sys.argv[1:])
        result["machine"] = machine_info()
        Path(args.results).with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
