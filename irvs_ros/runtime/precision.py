"""Convert a policy file to a lower precision for faster CPU (or GPU) decisions, keeping the file contract.

`convert_policy(src, dst, "int8" | "fp16", calibration=...)` writes a policy file with the same graph inputs and
outputs and the same irvs.* metadata, plus `irvs.precision` (the precision) and `irvs.quantization` (JSON: what
was converted and how close the converted energies are to fp32 on the calibration observations). `load_policy`
loads it and `Policy.act` works unchanged. numpy + onnx + onnxruntime only; never torch.

What is converted: the per-candidate dense layers of the energy head, i.e. every MatMul whose second input is a
constant (K, M) weight with K, M >= `min_features` and whose first input has rank >= 3 (B, N, K) (it runs once
per candidate). In the IBC real-world configuration these are >99% of the arithmetic of a decision. The image
encoder (convolutions), the per-observation feature projection, the candidate projection (K = action dim), the
energy output layer (M = 1), residual additions and ReLUs stay fp32.

- "int8": weights symmetric int8 per output column; activations uint8 (asymmetric) with
  * static scales from `calibration` observations (the fp32 policy runs its own argmin on them and the range of
    every quantized layer input is recorded): QuantizeLinear + com.microsoft MatMulIntegerToFloat with the bias
    folded in; an input that is the output of a ReLU is quantized from the ReLU's input with zero point 0, which
    applies the ReLU for free. Fastest: onnxruntime's MLAS runs u8 x s8 GEMMs with AMX-INT8 / AVX512-VNNI.
  * dynamic scales (min / max of each input at run time) when `calibration` is None: com.microsoft
    DynamicQuantizeMatMul with the bias folded in. No data needed, slower (two extra passes per layer).
  Accumulation is exact int32 on VNNI/AMX; on x86 CPUs without VNNI, u8 x s8 products can saturate (consider
  fp32 there).
- "fp16": weights float16, activations cast to float16 around each converted MatMul (for the CUDA provider;
  onnxruntime's CPU fp16 MatMul is slower than fp32).
- "bf16" is refused: onnxruntime's CPU provider has no bfloat16 MatMul kernel (NOT_IMPLEMENTED), so AMX-BF16 is
  not reachable through it; int8 is the AMX path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from irvs_ros.runtime import argmin as am
from irvs_ros.runtime.policy_file import PREFIX, Policy, PolicyFileError, load_policy, variable_bounds
from irvs_ros.runtime.spec import SpecError
from irvs_ros.runtime.subgraph import prune_to_outputs

PRECISIONS = ("int8", "fp16")
"""Precisions `convert_policy` writes (fp32 is what `irvs export` writes)."""

_MS_DOMAIN = "com.microsoft"
_REFUSED = {
    "bf16": "onnxruntime's CPU execution provider has no bfloat16 MatMul kernel (a bf16 MatMul fails with "
            "NOT_IMPLEMENTED in onnxruntime 1.31), so AMX-BF16 cannot be used through it; use 'int8' (AMX-INT8 / "
            "VNNI through MLAS) on the CPU or 'fp16' for the CUDA provider",
    "fp32": "fp32 is what `irvs export` writes already; convert to one of the lower precisions",
}


class PrecisionError(ValueError):
    """A precision conversion that cannot be done: unknown precision, a file with nothing to convert, bad
    calibration data, or a converted graph that does not load."""


def convert_policy(src: str | os.PathLike, dst: str | os.PathLike, precision: str,
                   calibration: dict[str, np.ndarray] | None = None, *, min_features: int = 64, seed: int = 0,
                   threads: int = 0) -> Path:
    """Write `src` (an fp32 policy file) converted to `precision` at `dst` and return `dst`.

    calibration: observations {"state": (C, S) float32, "image": (C, H, W, 3) uint8} like those the policy will
        see (e.g. dataset frames). int8 only: with them, activation scales are static (fast); None = dynamic
        int8 activations. fp16 ignores it. C = 16..64 is plenty.
    min_features: MatMuls with a weight smaller than this on either side stay fp32.
    seed: seed of the argmin sampling during calibration and of the agreement check.
    threads: intra-op threads of the sessions used while converting (0 = onnxruntime's default).
    The converted file is checked before it replaces `dst`: it must load with `load_policy`, and its energies on
    the calibration observations (or on random ones of the right shape) are compared with fp32; the errors are
    stored in irvs.quantization. Raises PrecisionError, PolicyFileError (bad `src`) or SpecError (calibration
    observations of the wrong shape).
    """
    precision = str(precision).lower()
    if precision in _REFUSED:
        raise PrecisionError(f"precision {precision!r} is not supported: {_REFUSED[precision]}")
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}")
    if isinstance(min_features, bool) or not isinstance(min_features, int) or min_features < 1:
        raise PrecisionError(f"min_features must be an int >= 1, got {min_features!r}")
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise PrecisionError(f"write the converted policy to another file than its source {src}")
    policy = load_policy(src, threads=threads)
    if policy.precision != "fp32":
        raise PrecisionError(f"{src} is already converted to {policy.precision!r}; convert the fp32 export instead")
    if policy.explicit:
        raise PrecisionError(f"{src} is an explicit policy (argmin method 'none'): its network runs once per "
                             "decision, so there are no per-candidate layers worth converting")
    if calibration is not None:
        if not isinstance(calibration, dict) or not calibration:
            raise PrecisionError(f"calibration must be a dict of observation arrays, got {type(calibration).__name__}")
        policy.spec.obs.validate(calibration)  # SpecError with what was expected
        if _batch_size(calibration) < 1:
            raise PrecisionError("calibration holds no observations (batch size 0)")
    data = src.read_bytes()
    model = onnx.load_from_string(data)
    targets = _find_targets(model, min_features)
    if not targets:
        raise PrecisionError(f"{src} has no per-candidate MatMul with a constant weight of at least {min_features} x "
                             f"{min_features} to convert")
    rng = np.random.default_rng(seed)
    obs = calibration if calibration is not None else _random_observations(policy, rng)
    details: dict[str, Any] = {"layers": len(targets), "weights": None, "activations": None}
    if precision == "int8":
        ranges = None
        if calibration is not None:
            ranges = _calibrate(data, targets, policy, calibration, rng, threads)
            details["calibration_observations"] = int(_batch_size(calibration))
        _to_int8(model, targets, ranges)
        details["weights"] = "int8 symmetric per output column"
        details["activations"] = "uint8 static (calibrated min/max)" if ranges else "uint8 dynamic (per run min/max)"
    else:
        _to_fp16(model, targets)
        details["weights"] = details["activations"] = "float16"
    _drop_unused(model.graph)
    details["source_sha256"] = hashlib.sha256(data).hexdigest()
    _set_metadata(model, {"precision": precision})
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        details["check"] = _check_against(policy, model, tmp, obs, seed, threads)
        _set_metadata(model, {"precision": precision, "quantization": json.dumps(details, sort_keys=True)})
        tmp.write_bytes(model.SerializeToString())
        load_policy(tmp, threads=threads)  # the file as written must load
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


# ------------------------------------------------------------------------------------------------------------
# Which MatMuls


def _find_targets(model: onnx.ModelProto, min_features: int) -> list[onnx.NodeProto]:
    """MatMul nodes with a constant float (K, M) weight, K, M >= min_features, and an input of rank >= 3."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # onnx raises InferenceError / ValidationError subclasses
        raise PrecisionError(f"shape inference of the policy graph failed: {e}") from e
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
             if v.type.tensor_type.HasField("shape")}
    targets = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        if w.data_type != TensorProto.FLOAT or len(w.dims) != 2 or min(w.dims) < min_features:
            continue
        if ranks.get(node.input[0], 0) >= 3:
            targets.append(node)
    return targets


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _bias_add(graph: onnx.GraphProto, node: onnx.NodeProto, width: int) -> tuple[onnx.NodeProto, np.ndarray] | None:
    """(Add node, bias (M,)) when the MatMul's only consumer adds a constant (M,) bias, else None."""
    y = node.output[0]
    users = _consumers(graph).get(y, [])
    if len(users) != 1 or users[0].op_type != "Add" or y in {o.name for o in graph.output}:
        return None
    add = users[0]
    other = add.input[1] if add.input[0] == y else add.input[0]
    inits = {t.name: t for t in graph.initializer}
    if other not in inits:
        return None
    bias = numpy_helper.to_array(inits[other])
    if bias.dtype != np.float32 or bias.size != width or bias.shape[-1:] != (width,):
        return None
    return add, bias.reshape(width)


def _producer(graph: onnx.GraphProto, name: str) -> onnx.NodeProto | None:
    for node in graph.node:
        if name in node.output:
            return node
    return None


# ------------------------------------------------------------------------------------------------------------
# int8 and fp16 rewrites


def _quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight (K, M), float32 scale (M,)): symmetric per output column, zero point 0."""
    scale = np.abs(w).max(axis=0) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale


def _activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """uint8 (scale, zero point) covering [min(lo, 0), max(hi, 0)] (zero exactly representable)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0 or not np.isfinite(hi - lo):
        return 1.0, 0
    scale = (hi - lo) / 255.0
    return scale, int(np.clip(np.rint(-lo / scale), 0, 255))


def _to_int8(model: onnx.ModelProto, targets: list[onnx.NodeProto],
             ranges: dict[str, tuple[float, float]] | None) -> None:
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    weights: dict[str, tuple[str, str, str]] = {}
    quantized_inputs: dict[str, tuple[str, str, str]] = {}
    new_inits: list[onnx.TensorProto] = []
    for k, node in enumerate(targets):
        a, b = node.input[0], node.input[1]
        w = numpy_helper.to_array(inits[b]).astype(np.float32)
        if b not in weights:
            q, scale = _quantize_weight(w)
            names = (f"{b}_int8", f"{b}_int8_scale", f"{b}_int8_zero")
            new_inits += [numpy_helper.from_array(q, names[0]), numpy_helper.from_array(scale, names[1]),
                          numpy_helper.from_array(np.zeros(scale.shape, np.int8), names[2])]
            weights[b] = names
        wq, ws, wz = weights[b]
        found = _bias_add(graph, node, w.shape[1])
        out = found[0].output[0] if found else node.output[0]
        bias_name = ""
        if found:
            bias_name = f"{node.output[0]}_bias_{k}"
            new_inits.append(numpy_helper.from_array(found[1].astype(np.float32), bias_name))
            graph.node.remove(found[0])
        index = list(graph.node).index(node)
        graph.node.remove(node)
        if ranges is None:
            new = [helper.make_node("DynamicQuantizeMatMul", _trim([a, wq, ws, wz, bias_name]), [out],
                                    name=f"{node.name or out}_dqmm", domain=_MS_DOMAIN)]
        else:
            if a not in quantized_inputs:
                scale, zero = _activation_qparams(*ranges[a])
                src = a
                relu = _producer(graph, a)
                if zero == 0 and relu is not None and relu.op_type == "Relu":
                    src = relu.input[0]  # quantizing with zero point 0 clamps at 0: the ReLU comes free
                names = (f"{a}_u8", f"{a}_u8_scale", f"{a}_u8_zero")
                new_inits += [numpy_helper.from_array(np.array(scale, np.float32), names[1]),
                              numpy_helper.from_array(np.array(zero, np.uint8), names[2])]
                qnode = helper.make_node("QuantizeLinear", [src, names[1], names[2]], [names[0]],
                                         name=f"{a}_quantize")
                # Right after whatever produces `src` (graph inputs: at the top), so the graph stays sorted.
                pos = _position_after(graph, src)
                graph.node.insert(pos, qnode)
                index += 1 if pos <= index else 0
                quantized_inputs[a] = names
            aq, as_, az = quantized_inputs[a]
            new = [helper.make_node("MatMulIntegerToFloat", _trim([aq, wq, as_, ws, az, wz, bias_name]), [out],
                                    name=f"{node.name or out}_mmitf", domain=_MS_DOMAIN)]
        for j, n in enumerate(new):
            graph.node.insert(index + j, n)
    graph.initializer.extend(new_inits)
    _ensure_opset(model, _MS_DOMAIN, 1)


def _to_fp16(model: onnx.ModelProto, targets: list[onnx.NodeProto]) -> None:
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    weights: dict[str, str] = {}
    casts: dict[str, str] = {}
    new_inits = []
    for node in targets:
        a, b = node.input[0], node.input[1]
        if b not in weights:
            weights[b] = f"{b}_fp16"
            new_inits.append(numpy_helper.from_array(numpy_helper.to_array(inits[b]).astype(np.float16), weights[b]))
        index = list(graph.node).index(node)
        nodes = []
        if a not in casts:
            casts[a] = f"{a}_fp16"
            nodes.append(helper.make_node("Cast", [a], [casts[a]], to=TensorProto.FLOAT16, name=f"{a}_to_fp16"))
        y16 = f"{node.output[0]}_fp16"
        nodes.append(helper.make_node("MatMul", [casts[a], weights[b]], [y16], name=f"{node.name or y16}_fp16"))
        nodes.append(helper.make_node("Cast", [y16], [node.output[0]], to=TensorProto.FLOAT,
                                      name=f"{node.name or y16}_to_fp32"))
        graph.node.remove(node)
        for j, n in enumerate(nodes):
            graph.node.insert(index + j, n)
    graph.initializer.extend(new_inits)


def _trim(inputs: list[str]) -> list[str]:
    """Drop trailing empty (omitted optional) inputs."""
    while inputs and not inputs[-1]:
        inputs = inputs[:-1]
    return inputs


def _position_after(graph: onnx.GraphProto, name: str) -> int:
    for i, node in enumerate(graph.node):
        if name in node.output:
            return i + 1
    return 0


def _ensure_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, version))


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs are used, then initializers nothing reads (the fp32 weights)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input} | outputs
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    props.update({PREFIX + k: v for k, v in values.items()})
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


# ------------------------------------------------------------------------------------------------------------
# Calibration and the agreement check


def _batch_size(obs: dict[str, np.ndarray]) -> int:
    return int(next(iter(obs.values())).shape[0])


def _random_observations(policy: Policy, rng: np.random.Generator, n: int = 4) -> dict[str, np.ndarray]:
    obs: dict[str, np.ndarray] = {}
    spec = policy.spec.obs
    if spec.state_dim > 0:
        mean = np.asarray(policy.spec.stats.state_mean, np.float32)
        std = np.asarray(policy.spec.stats.state_std, np.float32)
        obs["state"] = (mean + std * rng.standard_normal((n, spec.state_dim))).astype(np.float32)
    if spec.image_shape is not None:
        obs["image"] = rng.integers(0, 256, (n, *spec.image_shape), dtype=np.uint8)
    return obs


class _GraphRunner:
    """Runs a whole policy graph (all inputs fed) for some outputs; `energy_fn` builds the argmin callables."""

    def __init__(self, model_bytes: bytes, outputs: list[str], threads: int) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        pruned, self.inputs = prune_to_outputs(model_bytes, outputs)
        self.session = ort.InferenceSession(pruned, options, providers=["CPUExecutionProvider"])
        self.outputs = outputs

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.outputs, {k: v for k, v in feed.items() if k in self.inputs})
        return dict(zip(self.outputs, values, strict=True))


def _obs_feed(policy: Policy, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    state, image = policy.spec.obs.validate(obs)
    feed = {}
    if state is not None:
        feed["state"] = np.ascontiguousarray(state, np.float32)
    if image is not None:
        feed["image"] = np.ascontiguousarray(image, np.uint8)
    return feed


def _solve(policy: Policy, energy_out: Callable[[np.ndarray], dict[str, np.ndarray]], batch: int,
           rng: np.random.Generator) -> am.ArgminResult:
    """The policy's own argmin (method, parameters, tilt) over an energy given as candidates -> graph outputs."""
    method, eta = policy.argmin["method"], policy.eta_inv
    tilt = policy.argmin.get("has_return", False) and eta > 0
    low, high = variable_bounds(policy.spec, policy.argmin)
    cfg = {"dfo": am.DfoConfig, "adfo": am.DfoConfig, "langevin": am.LangevinConfig}[method](
        **{k: v for k, v in policy.argmin.items() if k in _config_fields(method)})
    if method == "dfo":
        fn = lambda c: energy_out(c)["energy"]  # noqa: E731
        return am.dfo(am.tilt_energy(fn, eta) if tilt else fn, low, high, batch, cfg, rng)
    if method == "adfo":
        fn_ar = am.ar_columns(lambda c: energy_out(c)["energy_ar"])
        return am.autoregressive_dfo(am.tilt_energy_column(fn_ar, eta) if tilt else fn_ar, low, high, batch, cfg,
                                     rng)

    def grad_fn(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = energy_out(c)
        return out["energy"], out["energy_grad"]

    return am.langevin(am.tilt_energy_grad(grad_fn, eta) if tilt else grad_fn, low, high, batch, cfg, rng)


def _config_fields(method: str) -> set[str]:
    from dataclasses import fields

    return {f.name for f in fields(am.LangevinConfig if method == "langevin" else am.DfoConfig)}


_ENERGY_OUTPUTS = {"dfo": ["energy"], "adfo": ["energy_ar"], "langevin": ["energy", "energy_grad"]}


def _calibrate(data: bytes, targets: list[onnx.NodeProto], policy: Policy, calibration: dict[str, np.ndarray],
               rng: np.random.Generator, threads: int, chunk: int = 8) -> dict[str, tuple[float, float]]:
    """(min, max) of every target's input over the candidates the fp32 policy's argmin scores on `calibration`."""
    model = onnx.load_from_string(data)
    probes = sorted({t.input[0] for t in targets})
    graph_outputs = {o.name for o in model.graph.output}
    for name in probes:
        if name not in graph_outputs:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    method = policy.argmin["method"]
    outputs = _ENERGY_OUTPUTS[method]
    feat_runner = _GraphRunner(data, ["feat"], threads)
    runner = _GraphRunner(model.SerializeToString(), outputs + probes, threads)
    lo = {p: np.inf for p in probes}
    hi = {p: -np.inf for p in probes}
    n = _batch_size(calibration)
    for start in range(0, n, chunk):
        part = {k: v[start: start + chunk] for k, v in calibration.items()}
        feed = _obs_feed(policy, part)
        feat = feat_runner.run(feed)["feat"]

        def energy_out(c: np.ndarray, feed: dict = feed, feat: np.ndarray = feat) -> dict[str, np.ndarray]:
            out = runner.run({**feed, "feat_in": feat, "candidates": np.ascontiguousarray(c, np.float32)})
            for p in probes:
                lo[p] = min(lo[p], float(out[p].min()))
                hi[p] = max(hi[p], float(out[p].max()))
            return out

        _solve(policy, energy_out, feat.shape[0], rng)
    bad = [p for p in probes if not (np.isfinite(lo[p]) and np.isfinite(hi[p]))]
    if bad:
        raise PrecisionError(f"calibration produced non-finite activations at {bad}")
    return {p: (lo[p], hi[p]) for p in probes}


def _check_against(policy: Policy, model: onnx.ModelProto, tmp: Path, obs: dict[str, np.ndarray], seed: int,
                   threads: int) -> dict[str, float]:
    """Energies of the converted graph vs fp32 on uniform candidates over the argmin box for `obs` (at most 16
    observations): max / mean absolute error, both also relative to the fp32 energies' standard deviation."""
    tmp.write_bytes(model.SerializeToString())
    try:
        converted = load_policy(tmp, threads=threads)
    except (PolicyFileError, SpecError) as e:
        raise PrecisionError(f"the converted graph does not load: {e}") from e
    obs = {k: v[:16] for k, v in obs.items()}
    low, high = variable_bounds(policy.spec, policy.argmin)
    rng = np.random.default_rng(seed)
    b = _batch_size(obs)
    cand = (low + rng.random((b, 256, low.shape[0]), dtype=np.float32) * (high - low)).astype(np.float32)
    ref = policy.energy(obs, cand)
    got = converted.energy(obs, cand)
    err = np.abs(got.astype(np.float64) - ref)
    spread = float(ref.std()) or 1.0
    return {"energy_max_abs_err": float(err.max()), "energy_mean_abs_err": float(err.mean()),
            "energy_std_fp32": float(ref.std()), "energy_max_err_over_std": float(err.max() / spread),
            "energy_mean_err_over_std": float(err.mean() / spread), "observations": b, "candidates": 256}
