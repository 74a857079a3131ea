"""Decision latency of the IBC real-world policy on this CPU, per precision and threading (issue 4, "Benchmarks").
Writes bench/results/policy_latency.json and policy_latency.md (--results: another path, without extension).

    .venv/bin/python bench/policy_latency.py [--decisions 200] [--e2e-decisions 60]
        [--trained FILE.onnx --calibration DATASET.h5] [--work out/bench/policy_latency]

Policy: IBC with DFO in the real-world configuration (IBC appendix D.5; irvs_ros EbmDfoConfig defaults): 120x90 RGB,
4-layer ConvMaxPool encoder (32-64-128-256, CoordConv, spatial soft-argmax), 1024-wide energy head of depth 4 (the
config's pre-activation ResNet: 4 hidden 1024x1024 layers), late fusion (image encoded once per decision), DFO
with 1024 samples x 3 iterations, 2-D delta action. --trained: a trained fp32 file of that architecture (timing and
action agreement on it); without it the timing uses random weights (seed 0), which is as slow as trained ones.

Variants: fp32 "naive" (the runtime before this benchmark's changes: one session over the whole graph, so each of
the 3 energy evaluations also re-ran the image encoder on a dummy image, plus one extra run for the chosen energy),
fp32 with subgraph sessions, int8 with static (calibrated) or dynamic activation scales, fp16 (for the record: slow
on CPUs), each with 1 or 2 intra-op threads; bf16 is recorded as unsupported (no onnxruntime CPU kernel).

Measured: (a) Policy.act alone, variants interleaved round-robin on the same images and seeds so load drift hits
all alike; (b) end to end through real policy_node processes over DDS (one process and ROS domain per variant,
interleaved), "image received -> setpoint": the probe publishes a camera image (640x360 like the D415 stream, or
120x90), lets it arrive (10 ms, doubled after a miss, up to 50 ms), then publishes the /clock tick at which the
node decides (use_sim_time; the previous image is stale by then, so a decision can only use the new one) and times
on its wall clock from the tick until the setpoint arrives: conversion, crop/resize, act, publish and two small
DDS hops;
(c) action agreement with fp32: the same observations and seeds, distance of the chosen actions as a fraction of
the action range and in metres, next to fp32's own seed-to-seed spread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PERIOD = 0.2
NATIVE = (360, 640)  # the D415 stream the robot's camera node publishes (H, W)
DOMAIN_BASE = 221  # policy_node domains 221.. (tests use 100..219)
E2E_VARIANTS = ("fp32 t1", "int8 static t1", "int8 static t2 no-spin", "int8 dynamic t1")


# ------------------------------------------------------------------------------------------------------------
# Machine and files


def machine() -> dict:
    info = {"hostname": platform.node(), "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", "").strip()
        flags = fields.get("Flags", "").split()
        info["cpu_flags"] = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                                         "amx_int8", "amx_bf16") if f in flags]
    except (OSError, subprocess.SubprocessError):
        info["cpu"] = platform.processor()
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["commit"] = ""
    return info


def build_untrained(path: Path) -> Path:
    """The IBC real-world architecture with random weights (torch seed 0), exported like `irvs export` does."""
    import torch

    from irvs_ros.learn.algorithms import make_algorithm
    from irvs_ros.learn.export import export_policy
    from irvs_ros.runtime.spec import NormStats, ObsSpec, PolicySpec, widened_bounds

    torch.manual_seed(0)
    amin, amax = np.array([-0.02, -0.02]), np.array([0.02, 0.02])  # 5 Hz deltas of a 0.1 m/s push, metres
    low, high = widened_bounds(amin, amax)
    stats = NormStats((), (), tuple(amin), tuple(amax), 0.0, 1.0)
    spec = PolicySpec(ObsSpec(0, (90, 120, 3), ()), 2, stats, tuple(low), tuple(high), 5.0)
    algo = make_algorithm("ebm_dfo", spec, {})
    return export_policy(algo, path, train_config={"note": "random weights, latency benchmark"})


def dataset_images(path: str | None, count: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """(count, H, W, 3) uint8: frames taken evenly across a dataset store's episodes, else uniform random images."""
    if not path:
        return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)
    from irvs_ros.data.store import Dataset

    ds = Dataset.open(path)
    steps = np.linspace(0, ds.num_steps - 1, min(count, ds.num_steps)).round().astype(int)
    episodes = np.searchsorted(ds.episode_ends, steps, side="right")
    frames = []
    for e in np.unique(episodes):
        ep = ds.episode(int(e))
        frames.append(np.asarray(ep["image"])[steps[episodes == e] - int(ds.episode_starts[e])])
    return np.concatenate(frames)


def upscale_to_native(image: np.ndarray) -> np.ndarray:
    """A 640x360 camera frame whose centre 480x360 crop box-averages back to the 120x90 image (4x4 blocks)."""
    big = np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)  # 360 x 480
    out = np.zeros((*NATIVE, 3), np.uint8)
    out[:, 80:560] = big
    return out


# ------------------------------------------------------------------------------------------------------------
# Policies under test


class NaiveFp32:
    """The runtime before this benchmark's changes, for the baseline: one onnxruntime session over the whole graph
    with default options; every run feeds all inputs (batch-1 zero dummies for the unneeded ones, since the graph
    rejects empty images), so each energy evaluation re-runs the encoder; one more run scores the chosen action."""

    def __init__(self, path: Path) -> None:
        from irvs_ros.runtime.policy_file import load_policy

        self.policy = load_policy(path)
        options = ort.SessionOptions()
        options.log_severity_level = 4
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feat_dim = int(self.session.get_inputs()[1].shape[1])
        self.dummy = {"image": np.zeros((1, 90, 120, 3), np.uint8), "feat_in": np.zeros((1, feat_dim), np.float32),
                      "candidates": np.zeros((1, 1, 2), np.float32)}

    def act(self, obs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        from irvs_ros.runtime import argmin as am
        from irvs_ros.runtime.policy_file import optimizer_config, variable_bounds

        p = self.policy
        (feat,) = self.session.run(["feat"], {**self.dummy, "image": obs["image"]})

        def energy(c: np.ndarray) -> np.ndarray:
            return self.session.run(["energy"], {**self.dummy, "feat_in": feat, "candidates": c})[0]

        low, high = variable_bounds(p.spec, p.argmin)
        result = am.dfo(energy, low, high, 1, optimizer_config(p.argmin), rng)
        energy(result.x[:, None, :])
        return p.spec.stats.unnormalize_action(result.x)


def make_variants(files: dict[str, Path], with_fp16: bool, slow_every: int) -> list[dict]:
    """Variants under test; `every` = the variant acts in every k-th round of (a) only (the slow fp32 ones)."""

    def var(name: str, precision: str, key: str, threads: int, spinning: bool = True, **extra) -> dict:
        return {"name": name, "precision": precision, "file": files[key], "threads": threads, "spinning": spinning,
                "every": 1, **extra}

    v = [var("fp32 naive (before)", "fp32", "fp32", 0, naive=True, every=slow_every),
         var("fp32 t2", "fp32", "fp32", 2, every=slow_every), var("fp32 t1", "fp32", "fp32", 1, every=slow_every),
         var("int8 static t1", "int8 static", "int8_static", 1),
         var("int8 static t2", "int8 static", "int8_static", 2),
         var("int8 static t2 no-spin", "int8 static", "int8_static", 2, spinning=False),
         var("int8 dynamic t1", "int8 dynamic", "int8_dynamic", 1)]
    if with_fp16:
        v.append(var("fp16 t1", "fp16", "fp16", 1, every=slow_every))
    return v


def load_variant(v: dict):
    from irvs_ros.runtime.policy_file import load_policy

    if v.get("naive"):
        return NaiveFp32(v["file"])
    return load_policy(v["file"], threads=v["threads"], spinning=v["spinning"], providers=["CPUExecutionProvider"])


def stats_ms(samples: list[float]) -> dict:
    a = np.asarray(samples, np.float64) * 1e3
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "min": float(a.min())}


# ------------------------------------------------------------------------------------------------------------
# (a) Policy.act alone


def bench_act(variants: list[dict], images: np.ndarray, decisions: int) -> dict[str, dict]:
    policies = {v["name"]: load_variant(v) for v in variants}
    for p in policies.values():  # warm-up: first runs allocate and pack weights
        for i in range(3):
            p.act({"image": images[i % len(images)][None]}, np.random.default_rng(i))
    times: dict[str, list[float]] = {name: [] for name in policies}
    for k in range(decisions):
        obs = {"image": images[k % len(images)][None]}
        for v in variants:
            if k % v["every"]:
                continue
            t0 = time.perf_counter()
            policies[v["name"]].act(obs, np.random.default_rng(1000 + k))
            times[v["name"]].append(time.perf_counter() - t0)
    return {name: stats_ms(t) for name, t in times.items()}


# ------------------------------------------------------------------------------------------------------------
# (c) action agreement


def agreement(files: dict[str, Path], images: np.ndarray, seeds: int = 1) -> dict:
    """Per converted precision: |a - a_fp32| / action range (max over the 2 dims) and in metres, same seeds;
    fp32 vs fp32 with other seeds (DFO's own spread) as the yardstick."""
    from irvs_ros.runtime.policy_file import load_policy

    ref = load_policy(files["fp32"], providers=["CPUExecutionProvider"], threads=1)
    span = np.asarray(ref.spec.action_high) - np.asarray(ref.spec.action_low)
    base = [ref.act({"image": im[None]}, np.random.default_rng(5000 + i))[0] for i, im in enumerate(images)]
    base = np.asarray(base)

    def summary(actions: np.ndarray) -> dict:
        d_frac = np.max(np.abs(actions - base) / span, axis=1)
        d_m = np.linalg.norm(actions - base, axis=1)
        return {"median_frac": float(np.median(d_frac)), "p95_frac": float(np.percentile(d_frac, 95)),
                "max_frac": float(d_frac.max()), "mean_frac": float(d_frac.mean()),
                "median_m": float(np.median(d_m)), "p95_m": float(np.percentile(d_m, 95)), "max_m": float(d_m.max())}

    out = {"observations": int(len(images)), "action_range_m": [float(s) for s in span]}
    other = np.asarray([ref.act({"image": im[None]}, np.random.default_rng(90000 + i))[0]
                        for i, im in enumerate(images)])
    out["fp32 other seed"] = summary(other)
    for key, label in (("int8_static", "int8 static"), ("int8_dynamic", "int8 dynamic"), ("fp16", "fp16")):
        if key not in files:
            continue
        p = load_policy(files[key], providers=["CPUExecutionProvider"], threads=1)
        acts = np.asarray([p.act({"image": im[None]}, np.random.default_rng(5000 + i))[0]
                           for i, im in enumerate(images)])
        out[label] = summary(acts)
        out[label]["energy_check"] = json.loads(p.metadata["quantization"])["check"]
    return out


# ------------------------------------------------------------------------------------------------------------
# (b) end to end through policy_node processes


class NodeUnderTest:
    """One policy_node process in its own ROS domain and the probe's publishers/subscription on that domain."""

    def __init__(self, variant: dict, domain: int, env: dict) -> None:
        from geometry_msgs.msg import PoseStamped
        from rclpy.node import Node
        from sensor_msgs.msg import Image

        from irvs_ros.nodes.common import COMMAND_QOS, SENSOR_QOS
        from irvs_ros.nodes.graph import ClockDriver, InProcessGraph

        self.variant, self.domain = variant, domain
        cmd = [str(Path(sys.executable).with_name("policy_node")), "--ros-args", "-p", f"model:={variant['file']}",
               "-p", "use_sim_time:=true", "-p", f"threads:={variant['threads']}",
               "-p", f"spinning:={'true' if variant['spinning'] else 'false'}", "-p", "max_image_age:=0.1",
               "-p", "start_from_ee_pose:=false", "-p", "providers:=cpu", "-p", "seed:=0"]
        self.proc = subprocess.Popen(cmd, env={**env, "ROS_DOMAIN_ID": str(domain)}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.graph = InProcessGraph(domain_id=domain).__enter__()
        self.probe = self.graph.add(Node(f"latency_probe_{domain}", context=self.graph.context))
        self.clock = ClockDriver(self.probe, step=PERIOD, rate=0.0, start=1.0)
        self.images = self.probe.create_publisher(Image, "/camera/camera/color/image_raw", SENSOR_QOS)
        self.arrived = threading.Event()
        self.arrival = 0.0
        self.probe.create_subscription(PoseStamped, "/irvs/setpoint", self._on_setpoint, COMMAND_QOS)
        self.image_wait = 0.01
        self.latencies: list[float] = []
        self.by_size: dict[str, list[float]] = {}
        self.misses: dict[str, int] = {}

    def _on_setpoint(self, msg) -> None:
        self.arrival = time.monotonic()
        self.arrived.set()

    def ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"policy_node ({self.variant['name']}) exited: {self.proc.stderr.read()[-2000:]}")
            if self.images.get_subscription_count() and self.clock.pub.get_subscription_count() and \
                    self.probe.count_publishers("/irvs/setpoint"):
                return True
            time.sleep(0.05)
        return False

    def decide(self, frame: np.ndarray, size: str, timeout: float = 3.0, record: bool = True) -> bool:
        from irvs_ros.nodes.common import stamp_of
        from irvs_ros.nodes.image_ops import image_msg

        # The node's timer fires at multiples of PERIOD of its clock (created at t = 0); decide at the next one.
        ticks = math.floor(self.clock.time / PERIOD + 1e-6) + 1
        due = round(ticks * PERIOD, 6)
        msg = image_msg(frame, stamp_of(due), "camera_color_optical_frame")
        self.arrived.clear()
        self.images.publish(msg)
        # "Image received -> setpoint": give the image time to arrive, then start the clock at the tick.
        time.sleep(self.image_wait)
        t0 = time.monotonic()
        self.clock.time = due + 1e-6
        self.clock.publish()
        ok = self.arrived.wait(timeout)
        if not ok:
            # The image came after the tick (the node held on the stale previous one) or was dropped (best-effort
            # QoS, as from a camera): count it, and give later images a little longer to arrive.
            if record:
                self.misses[size] = self.misses.get(size, 0) + 1
            self.image_wait = min(2 * self.image_wait, 0.05)
            return False
        if record:
            self.latencies.append(self.arrival - t0)
            self.by_size.setdefault(size, []).append(self.arrival - t0)
        return True

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.graph.__exit__(None, None, None)


def bench_e2e(variants: list[dict], images: np.ndarray, decisions: int, sizes: list[str]) -> dict[str, dict]:
    from irvs_ros.nodes.graph_description import dds_profile_env

    os.environ.update(dds_profile_env(os.environ))  # the graphs' Fast DDS profile, for this probe and the nodes
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    nodes = [NodeUnderTest(v, DOMAIN_BASE + i, env) for i, v in enumerate(variants)]
    try:
        for n in nodes:
            if not n.ready(120):
                raise RuntimeError(f"policy_node ({n.variant['name']}) not discovered in 120 s")
        frames = {"640x360": [upscale_to_native(im) for im in images[:20]], "120x90": list(images[:20])}
        for n in nodes:
            for k in range(3):
                n.decide(frames[sizes[0]][k], sizes[0], record=False)
        for k in range(decisions):
            size = sizes[k % len(sizes)]
            frame = frames[size][k % len(frames[size])]
            for n in nodes:
                n.decide(frame, size)
        out = {}
        for n in nodes:
            out[n.variant["name"]] = {**stats_ms(n.latencies), "misses": n.misses, "image_wait_s": n.image_wait,
                                      "by_image_size": {s: {**stats_ms(n.by_size.get(s, [])),
                                                            "misses": n.misses.get(s, 0)} for s in sizes}}
        return out
    finally:
        for n in nodes:
            n.close()


# ------------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decisions", type=int, default=200, help="rounds of Policy.act over the variants (default 200)")
    ap.add_argument("--slow-every", type=int, default=4, help="fp32 / fp16 variants act every Nth round only")
    ap.add_argument("--e2e-decisions", type=int, default=100, help="decisions per policy_node (default 100; 0 = skip)")
    ap.add_argument("--e2e-sizes", default="120x90,120x90,640x360",
                    help="camera image sizes the probe publishes, in turn (default: every third one native)")
    ap.add_argument("--trained", help="trained fp32 policy file of the benchmarked architecture")
    ap.add_argument("--calibration", help="dataset store (120x90 images) for int8 calibration and as observations")
    ap.add_argument("--trained-how", default="", help="how the --trained file was made (recorded verbatim)")
    ap.add_argument("--agreement-obs", type=int, default=100, help="observations for action agreement")
    ap.add_argument("--no-fp16", action="store_true", help="skip the fp16 variant (slow on CPUs)")
    ap.add_argument("--work", default=str(ROOT / "out" / "bench" / "policy_latency"), help="scratch directory")
    ap.add_argument("--results", default=str(RESULTS / "policy_latency"),
                    help="results path without extension (default bench/results/policy_latency)")
    args = ap.parse_args()

    from irvs_ros.runtime.precision import convert_policy

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    meta = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": machine(), "load_avg": {"start": os.getloadavg()}}
    print(json.dumps(meta), flush=True)
    untrained = build_untrained(work / "ibc_random_fp32.onnx")
    images = dataset_images(args.calibration, max(args.agreement_obs, 32), (90, 120, 3), seed=0)
    calib = images[np.linspace(0, len(images) - 1, 32).round().astype(int)]

    def convert_all(src: Path, tag: str) -> dict[str, Path]:
        files = {"fp32": src}
        files["int8_static"] = convert_policy(src, work / f"{tag}_int8_static.onnx", "int8", {"image": calib})
        files["int8_dynamic"] = convert_policy(src, work / f"{tag}_int8_dynamic.onnx", "int8")
        if not args.no_fp16:
            files["fp16"] = convert_policy(src, work / f"{tag}_fp16.onnx", "fp16")
        return files

    sets = {"random weights": convert_all(untrained, "random")}
    if args.trained:
        from irvs_ros.runtime.policy_file import read_metadata

        sets["trained"] = convert_all(Path(args.trained), "trained")
        trained_meta = read_metadata(args.trained)
        meta["trained_policy"] = {"file": args.trained, "train_config": json.loads(trained_meta["train_config"]),
                                  "dataset_fingerprint": trained_meta["dataset_fingerprint"],
                                  "calibration_dataset": args.calibration, "how": args.trained_how}
    timed = sets["trained" if args.trained else "random weights"]
    variants = make_variants(timed, not args.no_fp16, args.slow_every)
    results: dict = {"policy_timed": "trained" if args.trained else "random weights",
                     "bf16": "unsupported: onnxruntime's CPU provider has no bfloat16 MatMul kernel (NOT_IMPLEMENTED)",
                     "variants": [{k: (str(v) if isinstance(v, Path) else v) for k, v in var.items()}
                                  for var in variants]}
    meta["load_avg"]["before_act"] = os.getloadavg()
    results["act"] = bench_act(variants, images, args.decisions)
    meta["load_avg"]["after_act"] = os.getloadavg()
    print(json.dumps(results["act"], indent=1), flush=True)
    results["agreement"] = {name: agreement(files, images[: args.agreement_obs]) for name, files in sets.items()}
    meta["load_avg"]["after_agreement"] = os.getloadavg()
    print(json.dumps(results["agreement"], indent=1), flush=True)
    if args.e2e_decisions > 0:
        e2e_variants = [v for v in variants if v["name"] in E2E_VARIANTS]
        results["e2e"] = bench_e2e(e2e_variants, images, args.e2e_decisions, args.e2e_sizes.split(","))
        meta["load_avg"]["after_e2e"] = os.getloadavg()
        print(json.dumps(results["e2e"], indent=1), flush=True)
    meta["load_avg"]["end"] = os.getloadavg()
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(meta, results))
    return 0


def markdown(meta: dict, results: dict) -> str:
    m = meta["machine"]
    loads = "; ".join(f"{k} {', '.join(f'{x:.1f}' for x in v)}" for k, v in meta["load_avg"].items())
    act = results["act"]
    ref = act.get("fp32 naive (before)", {}).get("p50", float("nan"))
    lines = ["# Policy decision latency (IBC real-world configuration, CPU)", "",
             f"Command: `{meta['command']}`, {meta['date']}, commit {m.get('commit', '')}.", "",
             f"Machine: {m.get('cpu', '')}, {m['cores']} cores ({', '.join(m.get('cpu_flags', []))}); "
             f"Python {m['python']}, numpy {m['numpy']}, onnxruntime {m['onnxruntime']}. "
             f"Load average (1, 5, 15 min): {loads}. The machine is shared with other jobs: compare variants as "
             "ratios within this run.", "",
             "Policy: IBC + DFO, 120x90 RGB, ConvMaxPool 32-64-128-256, 1024-wide head of depth 4 (ResNet), late "
             "fusion, 1024 samples x 3 iterations. Timing on the "
             f"{results['policy_timed']} policy. bf16: {results['bf16']}. GPU (goal p99 <= 5 ms): not measured, "
             "this task has no GPU.", "",
             *([f"Trained policy: {meta['trained_policy']['how']} (train config "
                f"`{json.dumps(meta['trained_policy']['train_config'], sort_keys=True)}`, dataset fingerprint "
                f"{meta['trained_policy']['dataset_fingerprint']}).", ""] if "trained_policy" in meta else []),
             "## (a) Policy.act alone (ms; variants interleaved)", "",
             "| variant | n | min | p50 | p90 | p99 | max | p50 vs naive |", "|---|---|---|---|---|---|---|---|"]
    for name, s in act.items():
        lines.append(f"| {name} | {s['n']} | {s['min']:.1f} | {s['p50']:.1f} | {s['p90']:.1f} | {s['p99']:.1f} | "
                     f"{s['max']:.1f} | {ref / s['p50']:.1f}x |")
    if "e2e" in results:
        lines += ["", "## (b) End to end through policy_node processes over DDS (ms, probe wall clock: decision tick "
                  "published, image already received -> setpoint received). Images lost: decisions that timed out "
                  "(3 s) because the frame never reached the node, or came after the tick (best-effort QoS, as from "
                  "a camera).", "",
                  "| variant | image | n | min | p50 | p90 | p99 | max | images lost |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, s in results["e2e"].items():
            for size, t in s["by_image_size"].items():
                if not t["n"]:
                    lines.append(f"| {name} | {size} | 0 | | | | | | {t['misses']} |")
                    continue
                lines.append(f"| {name} | {size} | {t['n']} | {t['min']:.1f} | {t['p50']:.1f} | {t['p90']:.1f} | "
                             f"{t['p99']:.1f} | {t['max']:.1f} | {t['misses']} |")
    lines += ["", "## (c) Action agreement with fp32 (same observations and seeds)", "",
              "Distance of the chosen action from fp32's: max over the 2 action dimensions as a fraction of the "
              "action range, and Euclidean in mm. `fp32 other seed` is fp32 against itself with different seeds: "
              "the DFO's own resolution.", "",
              "| policy | variant | obs | median | p95 | max | median mm | p95 mm | max mm | energy err / std |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for policy, agg in results["agreement"].items():
        for name, s in agg.items():
            if not isinstance(s, dict):
                continue
            check = s.get("energy_check", {})
            err = f"{check['energy_mean_err_over_std']:.3f} mean, {check['energy_max_err_over_std']:.3f} max" \
                if check else ""
            lines.append(f"| {policy} | {name} | {agg['observations']} | {s['median_frac']:.4f} | "
                         f"{s['p95_frac']:.4f} | {s['max_frac']:.4f} | {1e3 * s['median_m']:.2f} | "
                         f"{1e3 * s['p95_m']:.2f} | {1e3 * s['max_m']:.2f} | {err} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
