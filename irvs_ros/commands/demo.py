"""`irvs demo`: the main job, end to end on the 2-D particle task (until the robot graph exists).

Oracle demos -> train an implicit policy -> export one ONNX file -> evaluate it with ONNX Runtime in
seeded episodes -> print the success rate and write a picture of a few episodes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from irvs_ros.commands.pipeline import PipelineError, run_step, train_config_path, train_export_eval

HELP = "the main job: build, train, export and evaluate a policy end to end"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/demo", help="output folder (dataset, run, policy, results)")
    parser.add_argument("--config", default="demo_particle_ebm_dfo",
                        help="training config name in config/ (default: a small EBM-DFO that trains in minutes)")
    parser.add_argument("--n-dim", type=int, default=2, help="particle dimension N")
    parser.add_argument("--demos", type=int, default=1000, help="oracle demonstrations")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes")
    parser.add_argument("--seed", type=int, default=0, help="demo and training seed")


def plot_episodes(policy_file: Path, n_dim: int, seed: int, out: Path, episodes: int = 6) -> Path | None:
    """Draw a few evaluation episodes of the policy (first two coordinates) to a PNG; None if N < 2."""
    if n_dim < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from irvs_ros.runtime.policy_file import load_policy
    from irvs_ros.sim.registry import make_env

    policy = load_policy(policy_file)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.6))
    for i, ax in enumerate(axes.flat[:episodes]):
        env = make_env("particle", n_dim=n_dim)
        obs, _ = env.reset(seed=seed + i)
        path = [obs["state"][:2].copy()]
        goal1, goal2 = obs["state"][2 * n_dim:2 * n_dim + 2], obs["state"][3 * n_dim:3 * n_dim + 2]
        done, info = False, {}
        while not done:
            action = policy.act({"state": obs["state"][None]}, rng)[0]
            obs, _, terminated, truncated, info = env.step(action)
            path.append(obs["state"][:2].copy())
            done = terminated or truncated
        path = np.asarray(path)
        ax.plot(path[:, 0], path[:, 1], "-", color="tab:blue", lw=1.5)
        ax.plot(*path[0], "o", color="tab:blue", label="start")
        ax.add_patch(plt.Circle(goal1, 0.05, color="tab:orange", alpha=0.4, label="goal 1"))
        ax.add_patch(plt.Circle(goal2, 0.05, color="tab:green", alpha=0.4, label="goal 2"))
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_aspect("equal")
        ax.set_title(f"seed {seed + i}: {'success' if info.get('success') else 'failure'}", fontsize=9)
    axes.flat[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{policy.algorithm} policy ({policy_file.name}) on the {n_dim}-D particle task")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = out / f"particle{args.n_dim}d_{args.demos}.h5"
    eval_seed = 100_000
    try:
        config = train_config_path(args.config)
        if not dataset.exists():
            run_step(["demos", "--env", "particle", "--n-dim", str(args.n_dim), "--episodes", str(args.demos),
                      "--seed", str(args.seed), "--workers", "2", "--out", str(dataset)])
        overrides = [f"seed={args.seed}"] + ([f"steps={args.steps}"] if args.steps else [])
        name = f"{args.config}_{args.n_dim}d"
        summary = train_export_eval(config=config, dataset=dataset, workdir=out, name=name,
                                    overrides=overrides, env="particle", env_args=["--n-dim", str(args.n_dim)],
                                    episodes=args.episodes, eval_seed=eval_seed)
        picture = plot_episodes(Path(summary["policy_file"]), args.n_dim, eval_seed, out / "episodes.png")
    except PipelineError as exc:
        print(f"irvs demo: {exc}", file=sys.stderr)
        return 1
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{summary['algorithm']} ({args.config}) on the {args.n_dim}-D particle task: "
          f"success {100 * summary['success_rate']:.0f}% over "
          f"{summary['episodes']} seeded episodes (policy {summary['policy_file']}, "
          f"{summary['policy_bytes'] / 1e6:.2f} MB; train {summary['train_s']:.0f} s)")
    if picture:
        print(f"episodes drawn in {picture}")
    return 0
