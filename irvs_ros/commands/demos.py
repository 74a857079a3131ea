"""`irvs demos`: generate scripted demonstrations of a chosen quality into a dataset store file.

    irvs demos --env particle --n-dim 2 --episodes 2000 --seed 0 --out data/particle2.h5 [--workers 2]
    irvs demos --env leftmost delta=0.001 goal_radius=0.1 --oracle p_optimal=0.5 --out data/leftmost.h5
    irvs demos --env push_insert --episodes 1000 --workers 2 --quality mixed --images --out data/insert_mixed.h5
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HELP = "generate oracle demonstrations into a dataset store"

QUALITY_HELP = ("expert: the oracle; noisy: the oracle with Gaussian action noise (--noise); mixed: in every block "
                "of 10 episodes 5 expert, 3 noisy and 2 weak ones (push: the oracle pushing the block "
                "0.06-0.10 m away from the target; push_insert: inserting into a decoy fixture 0.07-0.10 m "
                "sideways; toy envs: uniform random actions), so failures are in the data. Each episode's info "
                "records its quality. Default: noisy if --noise > 0, else expert")


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


def parse_image_size(text: str) -> tuple[int, int]:
    """"WIDTHxHEIGHT" (e.g. "120x90") -> (width, height) in pixels."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m or min(int(m.group(1)), int(m.group(2))) < 1:
        raise ValueError(f"image size must be WIDTHxHEIGHT with positive integers, e.g. 120x90; got {text!r}")
    return int(m.group(1)), int(m.group(2))


def env_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Environment kwargs from positional KEY=VALUE items plus --n-dim (and --images / --image-size if present)."""
    kwargs = parse_kwargs(args.env_kwargs, "environment parameter")
    if args.n_dim is not None:
        if "n_dim" in kwargs and kwargs["n_dim"] != args.n_dim:
            raise ValueError(f"--n-dim {args.n_dim} conflicts with n_dim={kwargs['n_dim']}")
        kwargs["n_dim"] = args.n_dim
    images, size = getattr(args, "images", False), getattr(args, "image_size", None)
    if size is not None and not images:
        raise ValueError("--image-size needs --images")
    if images:
        if "image" in kwargs or "image_size" in kwargs:
            raise ValueError("give images with --images / --image-size, not as image=... / image_size=... parameters")
        kwargs["image"] = True
        kwargs["image_size"] = list(parse_image_size(size or "120x90"))
    return kwargs


def command_line(name: str, args: argparse.Namespace, positional: str = "env_kwargs",
                 leading: tuple[str, ...] = ()) -> str:
    """A canonical `irvs NAME ...` command line that reproduces the parsed arguments; the `leading` positionals
    (e.g. ("run",)) come right after NAME, the `positional` list last."""
    parts = ["irvs", name, *(str(getattr(args, dest)) for dest in leading)]
    for dest, value in vars(args).items():
        if dest == positional or dest in leading or value is None or value is False:
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
    parser.add_argument("--env", "--task", dest="env", required=env_required,
                        help="environment (--task is the same): particle | room | leftmost | push | push_insert")
    parser.add_argument("--n-dim", type=int, default=None, help="dimension N of particle / leftmost")
    parser.add_argument("env_kwargs", nargs="*", metavar="KEY=VALUE",
                        help="more environment parameters, e.g. delta=0.001 goal_radius=0.2 max_steps=3")
    parser.add_argument("--oracle", action="append", default=None, metavar="KEY=VALUE",
                        help="oracle option (repeatable): room noise=0.05, leftmost p_optimal=0.5, "
                             "push noise_std=0.002, ...")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_env_arguments(parser)
    parser.add_argument("--episodes", type=int, default=2000, help="number of episodes (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; episode i depends on (seed, i) only")
    parser.add_argument("--out", required=True, help="dataset file to write (.h5)")
    parser.add_argument("--workers", type=int, default=1,
                        help="parallel worker processes, each with its own simulator (the data do not depend on it)")
    parser.add_argument("--quality", choices=("expert", "noisy", "mixed"), default=None, help=QUALITY_HELP)
    parser.add_argument("--noise", type=float, default=None,
                        help="Gaussian action noise std of the noisy episodes, as a fraction of the action range "
                             "(recorded as executed); default with --quality noisy / mixed: 0.01 for push and "
                             "push_insert (2 mm per step), 0.05 for the toy envs")
    parser.add_argument("--images", action="store_true",
                        help="record camera images at training resolution (push / push_insert)")
    parser.add_argument("--image-size", default=None, metavar="WxH", help="image width x height (default 120x90)")
    parser.add_argument("--only-success", action="store_true", help="keep successful episodes only")


def _quality_and_noise(args: argparse.Namespace) -> tuple[str, float]:
    from irvs_ros.sim.rollout import default_noise, resolve_quality

    noise = args.noise
    if noise is not None and not 0.0 <= noise < float("inf"):
        raise ValueError(f"--noise must be a finite value >= 0, got {noise}")
    if noise is None:
        noise = default_noise(args.env) if args.quality in ("noisy", "mixed") else 0.0
    return resolve_quality(args.quality, noise), float(noise)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from irvs_ros.data.store import Dataset, DatasetWriter
    from irvs_ros.runtime.spec import ObsSpec
    from irvs_ros.sim.registry import make_env, state_layout
    from irvs_ros.sim.rollout import MIXED_BLEND, iter_demos, weak_behaviour_description

    try:
        env_kwargs = env_kwargs_from_args(args)
        oracle_kwargs = parse_kwargs(args.oracle, "oracle option")
        quality, noise = _quality_and_noise(args)
        env = make_env(args.env, **env_kwargs)
        spaces = env.observation_space.spaces
        image_shape = tuple(int(v) for v in spaces["image"].shape) if "image" in spaces else None
        low, high = env.action_space.low, env.action_space.high
        env.close()
    except (ValueError, TypeError) as exc:
        print(f"irvs demos: {exc}", file=sys.stderr)
        return 2
    obs_spec = ObsSpec(state_dim=int(spaces["state"].shape[0]), image_shape=image_shape).to_dict()
    blend = {name: n / 10 for name, n in MIXED_BLEND} if quality == "mixed" else {quality: 1.0}
    quality_meta = {"policy": "oracle", "level": quality, "blend": blend, "action_noise": noise,
                    "noise_units": "std as a fraction of the action range (high - low), per component",
                    "oracle_kwargs": oracle_kwargs, "only_success": bool(args.only_success)}
    if quality == "mixed":
        quality_meta["weak_behaviour"] = weak_behaviour_description(args.env)
    meta = {"env": args.env, "env_kwargs": env_kwargs, "action_limits": {"low": low.tolist(), "high": high.tolist()},
            "quality": quality_meta, "seed": args.seed, "command": command_line("demos", args),
            "generator": "irvs_ros.sim.rollout.iter_demos"}
    layout = state_layout(args.env)
    if layout is not None:
        meta["state_layout"] = [list(entry) for entry in layout]
    start = time.perf_counter()
    try:
        episodes = iter_demos(args.env, env_kwargs, args.episodes, args.seed, workers=args.workers,
                              action_noise=noise, only_success=args.only_success, oracle_kwargs=oracle_kwargs,
                              quality=quality)
    except ValueError as exc:
        print(f"irvs demos: {exc}", file=sys.stderr)
        return 2
    successes, mean_rewards, steps = [], [], 0
    by_quality: dict[str, list[bool]] = {}
    with DatasetWriter(args.out, obs_spec=obs_spec, action_dim=int(low.shape[0]), meta=meta) as writer:
        for ep in tqdm(episodes, total=args.episodes, desc=f"demos {args.env}", unit="ep", mininterval=0.5):
            writer.add_episode(state=ep["state"], action=ep["action"], reward=ep["reward"], success=ep["success"],
                               info=ep["info"], image=ep.get("image"))
            successes.append(ep["success"])
            mean_rewards.append(float(np.mean(ep["reward"])))
            by_quality.setdefault(ep["info"]["quality"], []).append(ep["success"])
            steps += len(ep["action"])
    ds = Dataset.open(args.out)
    elapsed = time.perf_counter() - start
    print(f"wrote {ds.num_episodes} episodes ({ds.num_steps} steps) to {Path(args.out)} in {elapsed:.1f} s "
          f"({steps / elapsed:.0f} env steps/s with {args.workers} worker(s))")
    per_quality = ", ".join(f"{q} {len(v)} ({100 * np.mean(v):.0f}%)" for q, v in sorted(by_quality.items()))
    print(f"  env {args.env} {env_kwargs}; quality {quality}: success {100 * np.mean(successes):.1f}% "
          f"[{per_quality}]; mean reward {np.mean(mean_rewards):.4f}; return range [{ds.stats['return_min']:.3f}, "
          f"{ds.stats['return_max']:.3f}]; fingerprint {ds.fingerprint[:16]}")
    return 0
