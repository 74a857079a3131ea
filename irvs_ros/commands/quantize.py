"""`irvs quantize IN --out OUT --precision int8 [--calibration DATASET]`: convert a policy file to a lower precision.

The converted file keeps the policy-file contract (same inputs, outputs and irvs.* metadata, plus irvs.precision
and irvs.quantization) and loads with `load_policy` like any other; see `irvs_ros.runtime.precision`. With
--calibration, int8 activation scales are static, from frames of that dataset (faster); without, dynamic. After
writing, the fp32 and converted policies act on the calibration (or random) observations with the same seeds and
the command prints how far apart the chosen actions are, as a fraction of the action range.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy / onnx are imported only when the command runs, so `irvs --help` stays fast
    import numpy as np

    from irvs_ros.runtime.policy_file import Policy

HELP = "convert a policy file to int8 (AMX / VNNI CPUs) or fp16 (GPU), keeping its metadata"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("policy", metavar="IN", help="fp32 policy .onnx file (irvs export)")
    parser.add_argument("--out", required=True, metavar="OUT.onnx", help="converted policy file to write")
    parser.add_argument("--precision", default="int8", help="int8 (default) or fp16")
    parser.add_argument("--calibration", metavar="DATASET",
                        help="dataset store (.h5) whose frames calibrate static int8 activation scales; "
                             "without it int8 activations are quantized dynamically (slower)")
    parser.add_argument("--calibration-samples", type=int, default=32,
                        help="observations taken evenly across the dataset's episodes (default 32)")
    parser.add_argument("--check-samples", type=int, default=16,
                        help="observations on which fp32 and converted actions are compared (default 16; 0 = skip)")
    parser.add_argument("--min-features", type=int, default=64,
                        help="MatMul weights smaller than this on either side stay fp32 (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the argmin sampling (default 0)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from irvs_ros.runtime.policy_file import PolicyFileError, load_policy
    from irvs_ros.runtime.precision import PrecisionError, convert_policy
    from irvs_ros.runtime.spec import SpecError

    out = Path(args.out)
    if out.suffix != ".onnx":
        print(f"irvs quantize: error: --out should name a .onnx file, got {out}", file=sys.stderr)
        return 2
    if args.calibration_samples < 1 or args.check_samples < 0:
        print("irvs quantize: error: --calibration-samples must be >= 1 and --check-samples >= 0", file=sys.stderr)
        return 2
    try:
        fp32 = load_policy(args.policy, providers=["CPUExecutionProvider"])
        calibration = None
        if args.calibration:
            calibration = dataset_observations(args.calibration, fp32, args.calibration_samples)
        convert_policy(args.policy, out, args.precision, calibration, min_features=args.min_features, seed=args.seed)
        converted = load_policy(out, providers=["CPUExecutionProvider"])
    except (PrecisionError, PolicyFileError, SpecError, OSError) as e:
        print(f"irvs quantize: error: {e}", file=sys.stderr)
        return 2
    details = json.loads(converted.metadata.get("quantization", "{}"))
    check = details.get("check", {})
    size, source = out.stat().st_size / 1024, Path(args.policy).stat().st_size / 1024
    print(f"wrote {out} ({size:.1f} KiB; source {source:.1f} KiB)")
    print(f"precision: {converted.precision}  layers: {details.get('layers')}  weights: {details.get('weights')}  "
          f"activations: {details.get('activations')}")
    print(f"energy |converted - fp32|: max {check.get('energy_max_abs_err', float('nan')):.3g} "
          f"(= {check.get('energy_max_err_over_std', float('nan')):.3g} fp32 std), mean "
          f"{check.get('energy_mean_abs_err', float('nan')):.3g}")
    if args.check_samples:
        rng = np.random.default_rng(args.seed)
        obs = calibration if calibration is not None else _random_obs(fp32, args.check_samples, rng)
        obs = {k: v[: args.check_samples] for k, v in obs.items()}
        dist = action_agreement(fp32, converted, obs, args.seed)
        print(f"chosen actions, same seeds, {len(dist)} observations: |converted - fp32| / action range: "
              f"median {np.median(dist):.3g}, max {np.max(dist):.3g}")
    return 0


def action_agreement(reference: Policy, other: Policy, obs: dict[str, np.ndarray], seed: int) -> np.ndarray:
    """(B,) max over action dimensions of |a_other - a_reference| / action range, acting one observation at a
    time with the same rng seed per observation."""
    import numpy as np

    spec = reference.spec
    span = np.asarray(spec.action_high, np.float64) - np.asarray(spec.action_low, np.float64)
    n = int(next(iter(obs.values())).shape[0])
    out = np.empty(n)
    for i in range(n):
        one = {k: v[i: i + 1] for k, v in obs.items()}
        a = reference.act(one, np.random.default_rng(seed + i))
        b = other.act(one, np.random.default_rng(seed + i))
        out[i] = float(np.max(np.abs(b - a) / span))
    return out


def dataset_observations(path: str, policy: Policy, count: int) -> dict[str, np.ndarray]:
    """`count` observations in the policy's layout, taken evenly across the episodes of a dataset store."""
    import numpy as np

    from irvs_ros.data.store import Dataset, DatasetError

    try:
        ds = Dataset.open(path)
    except (FileNotFoundError, DatasetError) as e:
        raise OSError(f"calibration dataset: {e}") from e
    obs = policy.spec.obs
    keys = (["state"] if obs.state_dim > 0 else []) + (["image"] if obs.image_shape is not None else [])
    missing = [k for k in keys if k not in ds.available_keys]
    if missing:
        raise OSError(f"calibration dataset {path} has no {missing}, which the policy observes")
    steps = np.linspace(0, ds.num_steps - 1, min(count, ds.num_steps)).round().astype(int)
    episodes = np.searchsorted(ds.episode_ends, steps, side="right")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for e in np.unique(episodes):
        ep = ds.episode(int(e))
        local = steps[episodes == e] - int(ds.episode_starts[e])
        for k in keys:
            parts[k].append(np.asarray(ep[k])[local])
    return {k: np.concatenate(v) for k, v in parts.items()}


def _random_obs(policy: Policy, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from irvs_ros.commands.export import random_observations

    return random_observations(policy.spec, n, rng)
