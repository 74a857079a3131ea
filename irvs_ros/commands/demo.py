"""`irvs demo`: the main job: the push-insert policy graph in simulation, seeded episodes, success rate, a video.

    irvs demo                                   # models/push_insert.onnx, 5 episodes from seed 1000
    irvs demo --episodes 10 --seed 0 --eta-inv 1.0 --video out/demo/run.mp4
    irvs demo --particle                        # the earlier end-to-end particle demo (train, export, evaluate)

Brings up the `push_insert` graph of launch/push_insert.launch.py with use_sim:=true (sim_node, interpolator_node,
policy_node on the policy file: `nodes.graph_description`, as `irvs bringup push_insert --sim` starts it), each
node its own process over real DDS on sim time, plus demo settings for sim_node: lockstep (each tick waits for
the graph's answer, so results do not depend on CPU load), as fast as that allows, and the camera at the policy
rate. Then `nodes.episode_runner` runs the seeded episodes (episode i: scene seed + i, the task's own length on
sim time), prints each result and the success rate, writes the results JSON and a video of one episode (the
camera frames the policy saw; MP4, or GIF where MP4 cannot be written). Node logs go to OUT/nodes.log.

Episode seeds match `irvs eval --seed` (episode i resets with seed + i), so
`irvs eval --policy models/push_insert.onnx --env push_insert --seed 1000 --episodes 5` runs the same scenes
without ROS (the gym task, no lockstep needed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HELP = "the main job: the push_insert policy graph in simulation, seeded episodes, success rate and a video"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "models/push_insert.onnx"
GRAPH = "push_insert"
# sim_node settings of the demo on top of the graph description's: see the module docstring.
SIM_OVERRIDES: dict[str, Any] = {"lockstep": True, "real_time_factor": 0.0, "camera_rate": 5.0}
PARTICLE_OPTIONS = ("config", "n_dim", "demos", "steps")


class DemoError(RuntimeError):
    """The demo cannot run (missing policy file, a node that failed to start, ...)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--particle", action="store_true",
                        help="run the earlier particle demo instead (oracle demos -> train -> export -> evaluate); "
                             "its options --config/--n-dim/--demos/--steps imply it")
    parser.add_argument("--model", default=None,
                        help=f"policy file (.onnx, from `irvs export`; default {DEFAULT_MODEL} of the package)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes (default 5; particle: 100)")
    parser.add_argument("--seed", type=int, default=None,
                        help="episode i uses scene seed + i (default 1000, as irvs eval; particle: demo and "
                             "training seed, default 0)")
    parser.add_argument("--eta-inv", dest="eta_inv", type=float, default=None,
                        help="IRvS tilt toward high return (default: the policy file's)")
    parser.add_argument("--argmin-samples", dest="argmin_samples", type=int, default=None,
                        help="argmin candidates per decision (default: the policy file's)")
    parser.add_argument("--task", choices=("push", "push_insert"), default=None,
                        help="simulated task (default: the one the policy file was trained on, else push_insert)")
    parser.add_argument("--time-limit", dest="time_limit", type=float, default=None,
                        help="simulated seconds per episode (default: the task's, push_insert 30 s, push 16 s)")
    parser.add_argument("--video", default=None, help="video file (.mp4 or .gif; default OUT/<task>_seed<S>.mp4)")
    parser.add_argument("--video-episode", dest="video_episode", type=int, default=0,
                        help="which episode (0-based) the video shows (default 0)")
    parser.add_argument("--no-video", dest="no_video", action="store_true", help="write no video")
    parser.add_argument("--out", default="out/demo", help="output folder (results, video, node logs)")
    parser.add_argument("--domain-id", dest="domain_id", type=int, default=None,
                        help="ROS_DOMAIN_ID of the demo graph (default: one derived from the process id; discovery "
                             "stays on this machine)")
    parser.add_argument("--startup-timeout", dest="startup_timeout", type=float, default=180.0,
                        help="wall seconds the nodes get to come up (default 180)")
    parser.add_argument("--reruns", type=int, default=1,
                        help="times an episode whose lockstep timed out (its result then depends on CPU load) is run "
                             "again from its seed (default 1)")
    particle = parser.add_argument_group("particle demo (--particle)")
    particle.add_argument("--config", default=None,
                          help="training config name in config/ (default demo_particle_ebm_dfo)")
    particle.add_argument("--n-dim", dest="n_dim", type=int, default=None, help="particle dimension N (default 2)")
    particle.add_argument("--demos", type=int, default=None, help="oracle demonstrations (default 1000)")
    particle.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")


def run(args: argparse.Namespace) -> int:
    if args.particle or any(getattr(args, k) is not None for k in PARTICLE_OPTIONS):
        return run_particle(args)
    try:
        return run_graph_demo(args)
    except DemoError as e:
        print(f"irvs demo: {e}", file=sys.stderr)
        return 2 if isinstance(e, DemoArgumentError) else 1


# ---------------------------------------------------------------------------------------------- the robot graph


class DemoArgumentError(DemoError):
    """Bad options or a missing policy file."""


def model_path(given: str | None) -> Path:
    """The policy file: `given` (relative to the working directory), else the package's models/push_insert.onnx
    (source checkout, else the installed share/irvs_ros/models)."""
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise DemoArgumentError(f"no policy file {path}")
        return path.resolve()
    candidates = [REPO_ROOT / DEFAULT_MODEL]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("irvs_ros")) / DEFAULT_MODEL)
    except Exception:  # no ament index: a plain pip install
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise DemoArgumentError(f"the shipped policy {DEFAULT_MODEL} is missing (looked in {[str(c) for c in candidates]});"
                            f" train and export one (see README) or pass --model FILE")


def policy_task(model: Path) -> str | None:
    """The push task a policy file was trained on (spec.extra["env"]), or None when it records none."""
    from irvs_ros.runtime.policy_file import PolicyFileError, load_policy
    from irvs_ros.runtime.spec import SpecError

    try:
        policy = load_policy(model, providers=["CPUExecutionProvider"])
    except (PolicyFileError, SpecError) as e:
        raise DemoArgumentError(f"{model}: {e}") from None
    if policy.spec.obs.image_shape is None:
        raise DemoArgumentError(f"{model} is a state-only policy; the graph's policy_node acts on camera images")
    env = policy.spec.extra.get("env")
    return env if env in ("push", "push_insert") else None


def graph_nodes(model: Path, eta_inv: float | None, task: str, argmin_samples: int | None = None) -> list:
    """The nodes of the push_insert graph in simulation for `model`, with the demo's sim_node settings."""
    from irvs_ros.nodes import graph_description as gd

    given = {"use_sim": "true", "model": str(model)}
    if eta_inv is not None:
        given["eta_inv"] = repr(float(eta_inv))
    if argmin_samples is not None:
        given["argmin_samples"] = str(int(argmin_samples))
    try:
        nodes = gd.resolve(GRAPH, given)
    except gd.GraphDescriptionError as e:
        raise DemoArgumentError(str(e)) from None
    out = []
    for node in nodes:
        if node.executable == "sim_node":
            node = dataclasses.replace(node, overrides={**node.overrides, **SIM_OVERRIDES, "task": task})
        out.append(node)
    return out


def graph_env(domain_id: int) -> dict[str, str]:
    """Environment of the demo's processes (nodes and runner): ROS domain `domain_id`, discovery on this machine
    only (a demo must never reach a robot graph on the network), and config/fastdds.xml as the Fast DDS profile
    (short heartbeats: lockstep waits for every reliable sample) unless a profile file is set already."""
    from irvs_ros.nodes.graph_description import dds_profile_env

    env = dict(os.environ, PYTHONUNBUFFERED="1", ROS_DOMAIN_ID=str(domain_id))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.update(dds_profile_env(env))
    return env


def default_domain_id() -> int:
    """A ROS domain for this demo run, from the process id, apart from the test suite's 100..219."""
    return 30 + os.getpid() % 60


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def run_graph_demo(args: argparse.Namespace) -> int:
    episodes = 5 if args.episodes is None else args.episodes
    seed = 1000 if args.seed is None else args.seed
    if episodes < 1 or seed < 0:
        raise DemoArgumentError(f"--episodes must be >= 1 and --seed >= 0, got {episodes} and {seed}")
    if not 0 <= args.video_episode < episodes:
        raise DemoArgumentError(f"--video-episode {args.video_episode} is not one of the {episodes} episodes")
    if args.time_limit is not None and not args.time_limit > 0:
        raise DemoArgumentError(f"--time-limit must be > 0 simulated seconds, got {args.time_limit}")
    if args.reruns < 0:
        raise DemoArgumentError(f"--reruns must be >= 0, got {args.reruns}")
    if args.argmin_samples is not None and args.argmin_samples < 1:
        raise DemoArgumentError(f"--argmin-samples must be >= 1, got {args.argmin_samples}")
    domain = default_domain_id() if args.domain_id is None else args.domain_id
    if not 0 <= domain <= 232:
        raise DemoArgumentError(f"--domain-id must be in [0, 232], got {domain}")
    model = model_path(args.model)
    task = args.task or policy_task(model) or GRAPH
    nodes = graph_nodes(model, args.eta_inv, task, args.argmin_samples)
    seeds = list(range(seed, seed + episodes))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    video = None if args.no_video else Path(args.video or out / f"{task}_seed{seeds[args.video_episode]}.mp4")
    log_path = out / "nodes.log"

    env = graph_env(domain)
    for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE"):  # the runner's DDS too
        if key in env:
            os.environ[key] = env[key]
    print(f"[demo] policy {model}  task {task}  seeds {seeds[0]}..{seeds[-1]}  eta_inv "
          f"{'file' if args.eta_inv is None else args.eta_inv}  argmin samples "
          f"{'file' if args.argmin_samples is None else args.argmin_samples}", flush=True)
    print(f"[demo] starting {', '.join(n.name for n in nodes)} (ROS_DOMAIN_ID={domain}, lockstep on sim time); "
          f"node logs: {log_path}", flush=True)

    from irvs_ros.commands.bringup import Bringup
    from irvs_ros.nodes.episode_runner import EpisodeError, EpisodeRunner, describe_timeouts

    t0 = time.monotonic()
    with open(log_path, "w") as log:
        graph = Bringup(nodes, env, log)
        try:
            graph.start()
            with EpisodeRunner(domain_id=domain) as runner:
                try:
                    runner.wait_until_ready(timeout=args.startup_timeout, alive=graph.dead)
                except EpisodeError as e:
                    raise DemoError(f"{e}\n  last node log lines ({log_path}):\n{_log_tail(log_path)}") from None
                print(f"[demo] graph ready in {time.monotonic() - t0:.1f} s", flush=True)

                def report(result) -> None:
                    i = seeds.index(result.seed) + 1
                    print(f"episode {i}/{episodes}  {result.describe()}", flush=True)

                try:
                    summary = runner.run(seeds, time_limit=args.time_limit, video=video,
                                         video_episode=args.video_episode, on_result=report, reruns=args.reruns)
                except EpisodeError as e:
                    why = graph.dead()
                    raise DemoError(f"{e}{f' ({why})' if why else ''}\n  last node log lines ({log_path}):\n"
                                    f"{_log_tail(log_path)}") from None
        except KeyboardInterrupt:
            print("[demo] interrupted: stopping the graph", file=sys.stderr, flush=True)
            return 130
        finally:
            graph.stop()

    result = {"graph": GRAPH, "task": task, "model": str(model), "eta_inv": args.eta_inv,
              "argmin_samples": args.argmin_samples, "seeds": seeds,
              "time_limit": args.time_limit, "domain_id": domain, "sim_overrides": SIM_OVERRIDES,
              "total_wall_time": time.monotonic() - t0, **summary.to_dict()}
    results_path = out / f"{task}_results.json"
    results_path.write_text(json.dumps(result, indent=2) + "\n")
    n_ok = sum(e.success for e in summary.episodes)
    partial = f", partial {100 * summary.partial_rate:.0f}%" if task == "push_insert" else ""
    print(f"\nsuccess rate {100 * summary.success_rate:.0f}% ({n_ok}/{episodes}){partial}, mean reward "
          f"{summary.mean_reward:.2f}  ({result['total_wall_time']:.0f} s wall)")
    if result["reruns"]:
        print(f"[demo] {result['reruns']} episode run(s) had a lockstep timeout and were run again from their seed "
              f"(see {log_path})", file=sys.stderr)
    if result["lockstep_timeouts"]:
        late = describe_timeouts(result["lockstep_timeouts_by_stream"])
        print(f"[demo] warning: the lockstep went on without an answer {result['lockstep_timeouts']} time(s) "
              f"({late}); those episodes may depend on CPU load (see {log_path})", file=sys.stderr)
    if summary.video:
        print(f"video of seed {seeds[args.video_episode]}: {summary.video}")
    print(f"results: {results_path}")
    return 0


# ---------------------------------------------------------------------------------------------- the particle demo


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


def run_particle(args: argparse.Namespace) -> int:
    """The particle demo: oracle demos -> train an implicit policy -> export one ONNX file -> evaluate it with
    ONNX Runtime in seeded episodes -> print the success rate and draw a few episodes."""
    from irvs_ros.commands.pipeline import PipelineError, run_step, train_config_path, train_export_eval

    config_name = args.config or "demo_particle_ebm_dfo"
    n_dim = 2 if args.n_dim is None else args.n_dim
    n_demos = 1000 if args.demos is None else args.demos
    episodes = 100 if args.episodes is None else args.episodes
    seed = 0 if args.seed is None else args.seed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = out / f"particle{n_dim}d_{n_demos}.h5"
    eval_seed = 100_000
    try:
        config = train_config_path(config_name)
        if not dataset.exists():
            run_step(["demos", "--env", "particle", "--n-dim", str(n_dim), "--episodes", str(n_demos),
                      "--seed", str(seed), "--workers", "2", "--out", str(dataset)])
        overrides = [f"seed={seed}"] + ([f"steps={args.steps}"] if args.steps else [])
        name = f"{config_name}_{n_dim}d"
        summary = train_export_eval(config=config, dataset=dataset, workdir=out, name=name,
                                    overrides=overrides, env="particle", env_args=["--n-dim", str(n_dim)],
                                    episodes=episodes, eval_seed=eval_seed)
        picture = plot_episodes(Path(summary["policy_file"]), n_dim, eval_seed, out / "episodes.png")
    except PipelineError as exc:
        print(f"irvs demo: {exc}", file=sys.stderr)
        return 1
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{summary['algorithm']} ({config_name}) on the {n_dim}-D particle task: "
          f"success {100 * summary['success_rate']:.0f}% over "
          f"{summary['episodes']} seeded episodes (policy {summary['policy_file']}, "
          f"{summary['policy_bytes'] / 1e6:.2f} MB; train {summary['train_s']:.0f} s)")
    if picture:
        print(f"episodes drawn in {picture}")
    return 0
