"""`irvs demos`: generate oracle demonstrations on a toy environment into a dataset store file.

    irvs demos --env particle --n-dim 2 --episodes 2000 --seed 0 --out data/particle2.h5 [--workers 2] [--noise 0.0]
    irvs demos --env leftmost delta=0.001 goal_radius=0.1 --oracle p_optimal=0.5 --out data/leftmost.h5
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HELP = "generate oracle demonstrations into a dataset store"


def parse_kwargs(items: list[str] | None, what: str = "argument") -> dict[str, Any]:
    """KEY=VALUE strings -> dict; values parsed as YAML scalars (1, 0.5, true, none/null -> None)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} {item!r} is not KEY=VALUE")
        value = None if text.strip().lower() in ("none", "null", "~", "") else yaml.safe_load(text)
        out[key.strip().replace("-", "_")] = value
    return out


def env_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Environment kwargs from positional KEY=VALUE items plus --n-dim."""
    kwargs = parse_kwargs(args.env_kwargs, "environment parameter")
    if args.n_dim is not None:
        if "n_dim" in kwargs and kwargs["n_dim"] != args.n_dim:
            raise ValueError(f"--n-dim {args.n_dim} conflicts with n_dim={kwargs['n_dim']}")
        kwargs["n_dim"] = args.n_dim
    return kwargs


def command_line(name: str, args: argparse.Namespace, positional: str = "env_kwargs") -> str:
    """A canonical `irvs NAME ...` command line that reproduces the parsed arguments."""
    parts = ["irvs", name]
    for dest, value in vars(args).items():
        if dest == positional or value is None or value is False:
            continue
        flag = "--" + dest.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            for v in value:
                parts += [flag, str(v)]
        else:
            parts += [flag, str(value)]
    parts += list(getattr(args, positional, None) or [])
    return " ".join(shlex.quote(p) for p in parts)


def add_env_arguments(parser: argparse.ArgumentParser, env_required: bool = True) -> None:
    """--env, --n-dim and KEY=VALUE environment parameters (shared with `irvs eval`)."""
    parser.add_argument("--env", required=env_required, help="environment: particle | room | leftmost")
    parser.add_argument("--n-dim", type=int, default=None, help="dimension N of particle / leftmost")
    parser.add_argument("env_kwargs", nargs="*", metavar="KEY=VALUE",
                        help="more environment parameters, e.g. delta=0.001 goal_radius=0.2 max_steps=3")
    parser.add_argument("--oracle", action="append", default=None, metavar="KEY=VALUE",
                        help="oracle option (repeatable): room noise=0.05, leftmost p_optimal=0.5, ...")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_env_arguments(parser)
    parser.add_argument("--episodes", type=int, default=2000, help="number of episodes (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; episode i depends on (seed, i) only")
    parser.add_argument("--out", required=True, help="dataset file to write (.h5)")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="Gaussian action noise std as a fraction of the action range (recorded as executed)")
    parser.add_argument("--only-success", action="store_true", help="keep successful episodes only")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from irvs_ros.data.store import Dataset, DatasetWriter
    from irvs_ros.runtime.spec import ObsSpec
    from irvs_ros.sim.registry import make_env
    from irvs_ros.sim.rollout import iter_demos

    try:
        env_kwargs = env_kwargs_from_args(args)
        oracle_kwargs = parse_kwargs(args.oracle, "oracle option")
        env = make_env(args.env, **env_kwargs)
    except ValueError as exc:
        print(f"irvs demos: {exc}", file=sys.stderr)
        return 2
    low, high = env.action_space.low, env.action_space.high
    obs_spec = ObsSpec(state_dim=int(env.observation_space["state"].shape[0])).to_dict()
    meta = {"env": args.env, "env_kwargs": env_kwargs, "action_limits": {"low": low.tolist(), "high": high.tolist()},
            "quality": {"policy": "oracle", "oracle_kwargs": oracle_kwargs, "action_noise": args.noise,
                        "only_success": bool(args.only_success)},
            "seed": args.seed, "command": command_line("demos", args), "generator": "irvs_ros.sim.rollout.iter_demos"}
    start = time.perf_counter()
    try:
        episodes = iter_demos(args.env, env_kwargs, args.episodes, args.seed, workers=args.workers,
                              action_noise=args.noise, only_success=args.only_success, oracle_kwargs=oracle_kwargs)
    except ValueError as exc:
        print(f"irvs demos: {exc}", file=sys.stderr)
        return 2
    successes, mean_rewards = [], []
    with DatasetWriter(args.out, obs_spec=obs_spec, action_dim=int(low.shape[0]), meta=meta) as writer:
        for ep in tqdm(episodes, total=args.episodes, desc=f"demos {args.env}", unit="ep", mininterval=0.5):
            writer.add_episode(state=ep["state"], action=ep["action"], reward=ep["reward"], success=ep["success"],
                               info=ep["info"])
            successes.append(ep["success"])
            mean_rewards.append(float(np.mean(ep["reward"])))
    ds = Dataset.open(args.out)
    elapsed = time.perf_counter() - start
    print(f"wrote {ds.num_episodes} episodes ({ds.num_steps} steps) to {Path(args.out)} in {elapsed:.1f} s")
    print(f"  env {args.env} {env_kwargs}; oracle success {100 * np.mean(successes):.1f}%; "
          f"mean reward {np.mean(mean_rewards):.4f}; return range [{ds.stats['return_min']:.3f}, "
          f"{ds.stats['return_max']:.3f}]; fingerprint {ds.fingerprint[:16]}")
    return 0
