"""How well a state-based EBM policy file's energy singles out the demonstrated action, on its own dataset.

For `--states` steps drawn from a dataset store it reports, in the dataset's raw action units:
- `policy_error`: mean |a - a_demo| of the file's own argmin (Policy.act);
- `uniform_error`: the same for the lowest-energy of `--candidates` uniform candidates in the argmin's box
  (an argmin that only samples; the file's argmin should be at least as close);
- `lower_fraction`: the mean fraction of those uniform candidates whose energy is below the demonstrated action's
  (0 = the demonstration is the energy's minimum; a flat energy gives a large fraction);
- `policy_median_error`, `policy_within`: the median of |a - a_demo| and the fraction of states whose argmin is
  within `--tolerance` of the demonstration in every dimension (the particle task needs about 0.01:
  bench/results/particle_precision.md);
- with `--argmin K=V[,K=V...]` (repeatable), the policy figures again at each changed argmin setting
  (`settings`): if no setting moves them, the imprecision is the energy's minimum, not the optimizer's reach.
  Use a held-out dataset (`irvs demos` with another seed) to measure states the policy was not trained on.

    .venv/bin/python bench/energy_sharpness.py --policy P.onnx --dataset D.h5 [--states 200] [--candidates 4096]
        [--tolerance 0.01] [--argmin iterations=200 --argmin second_chain_step=0.1] [--results bench/results/NAME]

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


def _acted_figures(policy: Any, obs: dict[str, Any], demo: Any, seed: int, tolerance: float) -> dict[str, float]:
    """policy_error, policy_median_error, policy_within and act_s of one policy's argmin on (obs, demo)."""
    import time

    import numpy as np

    start = time.perf_counter()
    err = np.abs(policy.act(obs, np.random.default_rng(seed + 1)) - demo)
    return {"policy_error": float(err.mean()), "policy_median_error": float(np.median(err)),
            "policy_within": float((err.max(axis=1) <= tolerance).mean()),
            "act_s": round(time.perf_counter() - start, 2)}


def measure(policy_path: str, dataset_path: str, states: int, candidates: int, seed: int,
            tolerance: float = 0.01, settings: list[str] | None = None) -> dict[str, Any]:
    """The figures above for one policy file and dataset store; `settings` are "K=V[,K=V...]" argmin changes."""
    import numpy as np

    from irvs_ros.commands.demos import parse_kwargs
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
    acted = _acted_figures(policy, obs, demo, seed, tolerance)
    low, high = variable_bounds(policy.spec, policy.argmin)
    a = policy.spec.action_dim
    if low.shape[0] > a:
        raise SystemExit(f"error: {policy_path} scores (action, return); this measure is for action-only energies")
    cand = rng.uniform(low, high, (len(idx), candidates, low.shape[0])).astype(np.float32)
    energy = policy.energy(obs, cand)
    best = cand[np.arange(len(idx)), energy.argmin(axis=1), :a]
    demo_norm = policy.spec.stats.normalize_action(demo).astype(np.float32)
    demo_energy = policy.energy(obs, demo_norm[:, None, :])[:, 0]
    rows = []
    for setting in settings or []:
        changed = load_policy(policy_path, argmin_overrides=parse_kwargs(setting.split(","), "argmin setting"))
        rows.append({"setting": setting, **_acted_figures(changed, obs, demo, seed, tolerance)})
    return {"policy": policy_path, "algorithm": policy.algorithm, "argmin": policy.argmin.get("method"),
            "dataset": dataset_path, "states": len(idx), "candidates": candidates, "seed": seed,
            "tolerance": tolerance, **acted,
            "uniform_error": float(np.abs(policy.spec.stats.unnormalize_action(best) - demo).mean()),
            "lower_fraction": float((energy < demo_energy[:, None]).mean()), "settings": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--states", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="policy_within: every dimension within this of the demo (raw units)")
    parser.add_argument("--argmin", action="append", default=[], metavar="K=V[,K=V...]",
                        help="measure the argmin again at this changed setting (repeatable)")
    parser.add_argument("--results", help="results path without extension (writes .json)")
    args = parser.parse_args(argv)
    if args.states <= 0 or args.candidates <= 0 or args.tolerance <= 0:
        parser.error("--states, --candidates and --tolerance must be > 0")
    result = measure(args.policy, args.dataset, args.states, args.candidates, args.seed, args.tolerance,
                     args.argmin)
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
