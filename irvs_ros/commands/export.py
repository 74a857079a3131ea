"""`irvs export CHECKPOINT --out FILE.onnx`: write a trained checkpoint as one ONNX policy file.

CHECKPOINT is a checkpoint file or a run directory (its checkpoints/last.pt). After writing, the file is
loaded back with the runtime loader and, unless --no-verify, the torch policy and the ONNX policy act on
the same random observations with the same rng seed; a difference above --tolerance fails the command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the command imports numpy / torch only when it runs, so `irvs --help` stays fast
    import numpy as np

    from irvs_ros.runtime.spec import PolicySpec

HELP = "export a trained checkpoint to one ONNX policy file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint .pt file or run directory")
    parser.add_argument("--out", required=True, metavar="FILE.onnx", help="policy file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip acting with torch and ONNX Runtime on random observations and comparing")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest accepted |torch - onnx| action difference, as a fraction of the action "
                             "range (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the verification observations and rng")
    parser.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                        help="which weights to export: the moving average of a run trained with ema_decay > 0 "
                             "('ema'), the last optimizer step's ('raw'); 'auto' (default) takes the EMA when "
                             "the checkpoint has one")
    parser.add_argument("--argmin", action="append", default=None, metavar="KEY=VALUE",
                        help="argmin setting the file runs with instead of the trained one (repeatable), e.g. "
                             "num_samples=4096 for DFO; recorded in the file's training config as export_argmin")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from irvs_ros.commands.demos import parse_kwargs
    from irvs_ros.learn.checkpoint import load_for_export
    from irvs_ros.learn.export import export_policy
    from irvs_ros.runtime.policy_file import load_policy

    out = Path(args.out)
    if out.suffix != ".onnx":
        print(f"irvs export: error: --out should name a .onnx file, got {out}", file=sys.stderr)
        return 2
    try:
        overrides = parse_kwargs(args.argmin, "argmin setting")
        algo, train_config, fingerprint = load_for_export(args.checkpoint, args.weights)
        export_policy(algo, out, train_config=train_config, dataset_fingerprint=fingerprint, opset=args.opset,
                      argmin_overrides=overrides)
        policy = load_policy(out, providers=["CPUExecutionProvider"])
        # The torch policy acts with the trained settings: verify the file's graph with those.
        trained = policy.train_config.get("export_argmin", {}).get("trained")
        graph_policy = load_policy(out, providers=["CPUExecutionProvider"], argmin_overrides=trained) if trained \
            else policy
    except ValueError as e:  # CheckpointError, ExportError, PolicyFileError and bad KEY=VALUE items
        print(f"irvs export: error: {e}", file=sys.stderr)
        return 2
    spec = policy.spec
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB)")
    print(f"algorithm: {policy.algorithm}  argmin: {policy.argmin['method']}  eta_inv: {policy.eta_inv}  "
          f"weights: {train_config['export_weights']}")
    if trained:
        print(f"argmin settings changed from the trained {trained} to {overrides} (verified with the trained ones)")
    print(f"observation: {spec.obs.to_dict()}  action_dim: {spec.action_dim}  rate: {spec.control_rate_hz} Hz")
    if not args.verify:
        return 0
    obs = random_observations(spec, 4, np.random.default_rng(args.seed))
    energy_err = None
    if not policy.explicit:
        energy_err = energy_disagreement(algo, policy, obs, np.random.default_rng(args.seed + 2))
        print(f"verify: max |torch - onnx| energy / energy std = {energy_err:.2e} on 256 random candidates per "
              f"observation")
        if not energy_err <= args.tolerance:
            print(f"irvs export: error: torch and ONNX energies differ by {energy_err:.2e} of their spread "
                  f"(> --tolerance {args.tolerance})", file=sys.stderr)
            return 1
    torch_action = algo.predict(obs, np.random.default_rng(args.seed + 1))
    onnx_action = graph_policy.act(obs, np.random.default_rng(args.seed + 1))
    action_range = np.asarray(spec.action_high) - np.asarray(spec.action_low)
    err = float(np.max(np.abs(torch_action - onnx_action) / action_range))
    print(f"verify: max |torch - onnx| / action range = {err:.2e} on {len(torch_action)} random observations")
    if err <= args.tolerance:
        return 0
    if energy_err is not None and policy.argmin["method"] in ("dfo", "adfo"):
        # The energies agree, so the two runtimes score candidates alike; DFO's resampling draws by softmax(-E)
        # and keeps the best of many candidates, so energies a rounding error apart can send the same seed to a
        # different, equally good candidate (seen on trained push policies: 2e-3 of the range).
        print(f"verify: the chosen actions differ by {err:.2e} of the action range with energies that agree: a "
              f"near-tie in the sampling-based argmin, not a defect of the file")
        return 0
    print(f"irvs export: error: torch and ONNX actions differ by {err:.2e} of the action range "
          f"(> --tolerance {args.tolerance})", file=sys.stderr)
    return 1


def energy_disagreement(algo: Any, policy: Any, obs: dict[str, np.ndarray], rng: np.random.Generator,
                        num: int = 256) -> float:
    """max |E_torch - E_onnx| / std(E_torch) over `num` candidates per observation, uniform in the policy's
    normalized sampling box (action, and return for IRvS)."""
    import numpy as np  # noqa: F811 - runtime import, see TYPE_CHECKING above

    low, high = algo.var_low.cpu().numpy(), algo.var_high.cpu().numpy()
    batch = next(iter(obs.values())).shape[0]
    cand = rng.uniform(low, high, size=(batch, num, low.shape[0])).astype(np.float32)
    e_torch, e_onnx = algo.energies(obs, cand), policy.energy(obs, cand)
    return float(np.max(np.abs(e_torch - e_onnx)) / max(float(np.std(e_torch)), 1e-12))


def random_observations(spec: PolicySpec, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`batch` observations around the dataset statistics: state (B, S) ~ N(mean, std), uniform random image."""
    import numpy as np  # noqa: F811 - runtime import, see TYPE_CHECKING above

    obs = {}
    if spec.obs.state_dim > 0:
        stats = spec.stats.arrays()
        obs["state"] = (stats["state_mean"] + stats["state_std"] * rng.standard_normal(
            (batch, spec.obs.state_dim))).astype(np.float32)
    if spec.obs.image_shape is not None:
        obs["image"] = rng.integers(0, 256, (batch, *spec.obs.image_shape), dtype=np.uint8)
    return obs
