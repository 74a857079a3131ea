"""`irvs eval`: run a policy file (or the oracle) for N seeded episodes of a toy environment.

    irvs eval --policy models/particle2.onnx --env particle --n-dim 2 --episodes 100 --seed 1000 --out results.json
    irvs eval --policy oracle --env room --episodes 200

Episode i resets with seed + i; the policy's own sampling uses numpy.random.default_rng(seed). Without --env
the environment recorded in the policy file (spec.extra "env" / "env_kwargs", from the dataset) is used.
Prints a JSON summary and writes it, with per-episode results, to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from irvs_ros.commands.demos import add_env_arguments, command_line, env_kwargs_from_args, parse_kwargs

HELP = "run a policy file (or the oracle) for N seeded episodes and report the success rate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, help="policy file (.onnx) or 'oracle'")
    add_env_arguments(parser, env_required=False)
    parser.add_argument("--episodes", type=int, default=100, help="number of episodes (default 100)")
    parser.add_argument("--seed", type=int, default=1000, help="episode i resets with seed + i (default 1000)")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--eta-inv", type=float, default=None, help="IRvS tilt toward high return (default: file's)")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="run episodes one by one (batch 1) instead of all in lockstep")


def _policy_act_fn(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """(act_fn, description) for a policy file, plus the env recorded in it when --env is not given."""
    import numpy as np

    from irvs_ros.runtime.policy_file import load_policy

    policy = load_policy(args.policy, eta_inv=args.eta_inv)
    rng = np.random.default_rng(args.seed)
    info = {"algorithm": policy.algorithm, "eta_inv": policy.eta_inv, "argmin": policy.argmin.get("method"),
            "dataset_fingerprint": policy.metadata.get("dataset_fingerprint"), "spec": policy.spec,
            "env": policy.spec.extra.get("env"), "env_kwargs": policy.spec.extra.get("env_kwargs") or {}}
    return (lambda obs: policy.act(obs, rng)), info


def _check_fit(spec: Any, env: Any) -> None:
    """SpecError-style ValueError when the policy's observation / action sizes do not fit the environment."""
    state_dim = int(env.observation_space["state"].shape[0])
    action_dim = int(env.action_space.shape[0])
    if spec.obs.image_shape is not None:
        raise ValueError(f"the policy needs images {spec.obs.image_shape}, but this environment gives states only")
    if spec.obs.state_dim != state_dim or spec.action_dim != action_dim:
        raise ValueError(f"the policy was trained for state_dim={spec.obs.state_dim}, action_dim={spec.action_dim}; "
                         f"this environment has state_dim={state_dim}, action_dim={action_dim}")


def run(args: argparse.Namespace) -> int:
    from irvs_ros.sim.registry import make_env
    from irvs_ros.sim.rollout import OraclePolicy, evaluate

    try:
        env_kwargs = env_kwargs_from_args(args)
        oracle_kwargs = parse_kwargs(args.oracle, "oracle option")
        description: dict[str, Any] = {}
        if args.policy == "oracle":
            if args.env is None:
                raise ValueError("--env is required with --policy oracle")
            env_name = args.env
            act_fn = OraclePolicy(env_name, env_kwargs, args.seed, **oracle_kwargs)
        else:
            if oracle_kwargs:
                raise ValueError("--oracle options apply to --policy oracle only")
            act_fn, description = _policy_act_fn(args)
            stored_env, stored_kwargs, spec = (description.pop(k) for k in ("env", "env_kwargs", "spec"))
            env_name = args.env or stored_env
            if env_name is None:
                raise ValueError(f"{args.policy} records no environment: pass --env")
            if args.env is None:
                env_kwargs = {**stored_kwargs, **env_kwargs}
            _check_fit(spec, make_env(env_name, **env_kwargs))
        start = time.perf_counter()
        result = evaluate(env_name, env_kwargs, act_fn, args.episodes, args.seed, batch=not args.one_at_a_time)
    except (ValueError, FileNotFoundError) as exc:
        print(f"irvs eval: {exc}", file=sys.stderr)
        return 2
    summary = {"policy": args.policy if args.policy == "oracle" else str(Path(args.policy)), **description,
               "env": env_name, "env_kwargs": env_kwargs, "episodes": result["episodes"], "seed": args.seed,
               "success_rate": result["success_rate"], "mean_reward": result["mean_reward"],
               "mean_return": result["mean_return"], "elapsed_s": round(time.perf_counter() - start, 3),
               "command": command_line("eval", args)}
    print(json.dumps(summary, indent=2))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**summary, "per_episode": result["per_episode"]}, indent=2) + "\n")
    return 0
