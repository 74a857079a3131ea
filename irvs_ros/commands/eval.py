"""`irvs eval`: run a policy file (or the oracle) for N seeded episodes of a simulated environment.

    irvs eval --policy models/particle2.onnx --env particle --n-dim 2 --episodes 100 --seed 1000 --out results.json
    irvs eval --policy oracle --env push_insert --episodes 100 --video videos/ --video-episodes 0,3

Episode i resets with seed + i; the policy's own sampling uses numpy.random.default_rng(seed). Without --env
the environment recorded in the policy file (spec.extra "env" / "env_kwargs", from the dataset) is used. A policy
whose observation spec has an image gets an environment with images of the matching size (obs["image"]
(B, H, W, 3) uint8). Prints a JSON summary (success rate, mean reward, mean final reward; for push_insert the
full and partial insertion rates) and writes it, with per-episode results, to --out. --video saves the
env.render() frames (640x360 for the xArm6 cell, one per 5 Hz step) of the chosen episodes as MP4 or GIF.
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
    parser.add_argument("--argmin", action="append", default=None, metavar="KEY=VALUE",
                        help="argmin setting to change (repeatable), e.g. iterations=5, num_samples=4096 for DFO "
                             "(default: the file's)")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="run episodes one by one (batch 1) instead of in lockstep")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="episodes run in lockstep per group (default: 10 for push / push_insert, else all)")
    parser.add_argument("--video", default=None, metavar="DIR", help="save videos of chosen episodes into DIR")
    parser.add_argument("--video-episodes", default=None, metavar="I,J,...",
                        help="episode indices (0-based) to record with --video (default 0)")
    parser.add_argument("--video-format", choices=("mp4", "gif"), default=None,
                        help="video format (default mp4 when imageio-ffmpeg is installed, else gif)")
    parser.add_argument("--video-fps", type=float, default=None,
                        help="frames per second (default: the env's render_fps, 5 = real time for the cell)")


def policy_for_env(path: str | Path, env_name: str | None, env_kwargs: dict[str, Any], *, seed: int,
                   eta_inv: float | None = None, argmin: dict[str, Any] | None = None
                   ) -> tuple[Any, str, dict[str, Any], dict[str, Any]]:
    """Load a policy file for rollouts: (act_fn, env name, env kwargs, description).

    Without `env_name` the environment recorded in the file is used (its kwargs under `env_kwargs`); a pixel
    policy gets images of its size; `argmin` changes the file's argmin settings (e.g. {"iterations": 5}). The
    policy's sampling uses numpy.random.default_rng(seed). ValueError (SpecError, PolicyFileError) when the file
    does not fit the environment.
    """
    import numpy as np

    from irvs_ros.runtime.policy_file import load_policy
    from irvs_ros.runtime.spec import observation_adapter
    from irvs_ros.sim.registry import make_env, state_layout

    policy = load_policy(path, eta_inv=eta_inv, argmin_overrides=argmin)
    rng = np.random.default_rng(seed)
    spec = policy.spec
    description = {"algorithm": policy.algorithm, "eta_inv": policy.eta_inv, "argmin": policy.argmin.get("method"),
                   **({"argmin_overrides": dict(argmin)} if argmin else {}),
                   "dataset_fingerprint": policy.metadata.get("dataset_fingerprint")}
    if env_name is None:
        env_name = spec.extra.get("env")
        if env_name is None:
            raise ValueError(f"{path} records no environment: pass --env")
        env_kwargs = {**(spec.extra.get("env_kwargs") or {}), **env_kwargs}
    env_kwargs = _with_policy_images(spec, env_kwargs)
    probe = make_env(env_name, **env_kwargs)
    try:
        _check_fit(spec, probe)
    finally:
        probe.close()
    adapt = observation_adapter(spec.obs, state_layout(env_name))
    return (lambda obs: policy.act(adapt(obs), rng)), env_name, env_kwargs, description


def _with_policy_images(spec: Any, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """env_kwargs with image=True and the policy's image size when the policy sees images (ValueError on a clash)."""
    if spec.obs.image_shape is None:
        return env_kwargs
    h, w, _ = spec.obs.image_shape
    given = env_kwargs.get("image_size")
    if given is not None and [int(v) for v in given] != [w, h]:
        raise ValueError(f"the policy sees {w}x{h} images but the environment parameters ask for "
                         f"{given[0]}x{given[1]}")
    if env_kwargs.get("image") is False:
        raise ValueError(f"the policy needs {w}x{h} images but the environment parameters say image=false")
    return {**env_kwargs, "image": True, "image_size": [w, h]}


def _check_fit(spec: Any, env: Any) -> None:
    """SpecError-style ValueError when the policy's observation / action sizes do not fit the environment."""
    spaces = env.observation_space.spaces
    state_dim = int(spaces["state"].shape[0])
    action_dim = int(env.action_space.shape[0])
    if spec.obs.image_shape is not None:
        if "image" not in spaces:
            raise ValueError(f"the policy needs images {spec.obs.image_shape}, but this environment gives states only")
        if tuple(spaces["image"].shape) != tuple(spec.obs.image_shape):
            raise ValueError(f"the policy needs images {spec.obs.image_shape}, this environment gives "
                             f"{tuple(spaces['image'].shape)}")
    whole_state = spec.obs.state_keys == ("state",)
    if (spec.obs.state_dim and whole_state and spec.obs.state_dim != state_dim) or spec.action_dim != action_dim:
        raise ValueError(f"the policy was trained for state_dim={spec.obs.state_dim}, action_dim={spec.action_dim}; "
                         f"this environment has state_dim={state_dim}, action_dim={action_dim}")


def _video_plan(args: argparse.Namespace, env: Any, env_name: str) -> tuple[dict[int, Path], float]:
    """({episode index: video file}, fps) from --video / --video-episodes / --video-format / --video-fps (`env` may
    be None without --video)."""
    if args.video is None:
        if args.video_episodes is not None:
            raise ValueError("--video-episodes needs --video DIR")
        return {}, 5.0
    from irvs_ros.sim.video import default_format

    if "rgb_array" not in (env.metadata.get("render_modes") or []):
        raise ValueError(f"environment {env_name!r} cannot render frames, so it has no videos")
    try:
        chosen = sorted({int(s) for s in str(args.video_episodes or "0").split(",") if s.strip()})
    except ValueError as exc:
        raise ValueError(f"--video-episodes must be comma-separated episode indices, e.g. 0,3; got "
                         f"{args.video_episodes!r}") from exc
    if not chosen or min(chosen) < 0 or max(chosen) >= args.episodes:
        raise ValueError(f"--video-episodes {args.video_episodes!r} must name episodes 0..{args.episodes - 1}")
    fps = float(args.video_fps or env.metadata.get("render_fps") or 5.0)
    fmt = args.video_format or default_format()
    directory = Path(args.video)
    return {i: directory / f"{env_name}_episode{i:03d}_seed{args.seed + i}.{fmt}" for i in chosen}, fps


def run(args: argparse.Namespace) -> int:
    from irvs_ros.sim.registry import make_env
    from irvs_ros.sim.rollout import OraclePolicy, evaluate
    from irvs_ros.sim.video import VideoError

    act_fn: Any = None
    try:
        env_kwargs = env_kwargs_from_args(args)
        oracle_kwargs = parse_kwargs(args.oracle, "oracle option")
        description: dict[str, Any] = {}
        if args.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
        if args.policy == "oracle":
            if args.env is None:
                raise ValueError("--env is required with --policy oracle")
            env_name = args.env
            act_fn = OraclePolicy(env_name, env_kwargs, args.seed, **oracle_kwargs)
        else:
            if oracle_kwargs:
                raise ValueError("--oracle options apply to --policy oracle only")
            act_fn, env_name, env_kwargs, description = policy_for_env(
                args.policy, args.env, env_kwargs, seed=args.seed, eta_inv=args.eta_inv,
                argmin=parse_kwargs(args.argmin, "argmin setting"))
        # policy_for_env already built an environment to check the fit; build one here only to plan videos.
        probe = make_env(env_name, **env_kwargs) if args.video is not None else None
        try:
            videos, fps = _video_plan(args, probe, env_name)
        finally:
            if probe is not None:
                probe.close()
        start = time.perf_counter()
        result = evaluate(env_name, env_kwargs, act_fn, args.episodes, args.seed, batch=not args.one_at_a_time,
                          max_batch=args.batch_size, videos=videos, video_fps=fps, progress=True)
    except (ValueError, FileNotFoundError, VideoError) as exc:  # SpecError is a ValueError
        print(f"irvs eval: {exc}", file=sys.stderr)
        return 2
    finally:
        if hasattr(act_fn, "close"):
            act_fn.close()
    summary = {"policy": args.policy if args.policy == "oracle" else str(Path(args.policy)), **description,
               "env": env_name, "env_kwargs": env_kwargs, "episodes": result["episodes"], "seed": args.seed,
               "success_rate": result["success_rate"], "mean_reward": result["mean_reward"],
               "mean_return": result["mean_return"], "mean_final_reward": result["mean_final_reward"]}
    for key in ("full_insertion_rate", "partial_insertion_rate", "outcomes"):
        if key in result:
            summary[key] = result[key]
    if videos:
        summary["videos"] = [str(p) for p in videos.values()]
    summary.update(elapsed_s=round(time.perf_counter() - start, 3), command=command_line("eval", args))
    print(json.dumps(summary, indent=2))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**summary, "per_episode": result["per_episode"]}, indent=2) + "\n")
    return 0
