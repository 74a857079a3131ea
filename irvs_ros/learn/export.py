"""Export a trained algorithm to one ONNX policy file that `irvs_ros.runtime.policy_file.load_policy` reads.

The graph is traced with torch's TorchScript-based ONNX exporter (`dynamo=False`): it can trace the
autograd calls of exported energy gradients, which the torch.export-based exporter cannot. Everything
the runtime needs besides the graph goes into `metadata_props` under "irvs.*" keys (DESIGN.md, "Policy file").
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path

import onnx
import torch

from irvs_ros.learn.algorithms.base import Algorithm
from irvs_ros.runtime.policy_file import (
    FORMAT_VERSION,
    PREFIX,
    PolicyFileError,
    check_argmin,
    check_io_names,
    checked_argmin_overrides,
)


class ExportError(ValueError):
    """An algorithm's export graph does not follow the policy-file conventions, or tracing it failed."""


def export_policy(algo: Algorithm, path: str | os.PathLike, *, train_config: dict | None = None,
                  dataset_fingerprint: str = "", opset: int = 17,
                  argmin_overrides: dict | None = None) -> Path:
    """Write `algo` as one ONNX policy file at `path` and return the path.

    The graph is `algo.export_graph()` traced on CPU in eval mode (the algorithm is put back on its device
    and in its training mode afterwards). Metadata: format version, algorithm name, policy spec (obs spec,
    stats, action bounds, control rate), argmin method and parameters, tilt eta_inv, training config,
    dataset fingerprint, creation time (UTC, ISO 8601) and torch version. The file is checked with
    onnx.checker before it replaces any file at `path`.
    argmin_overrides: optimizer settings the file should run with instead of the trained ones (e.g.
    {"num_samples": 4096}); the training config in the file records them under "export_argmin" as
    {"set": overrides, "trained": the values they replace}. Graph-describing keys are refused (ExportError).
    """
    path = Path(path)
    graph_device = _device_of(algo)
    was_training = algo.training
    algo.cpu().eval()
    try:
        graph = algo.export_graph()
        argmin = {"method": "none", **dict(graph.argmin)}
        argmin.setdefault("eta_inv", 0.0)
        try:
            check_io_names(argmin["method"], algo.spec.obs, list(graph.input_names), list(graph.output_names))
            check_argmin(argmin, algo.spec)
        except PolicyFileError as e:
            raise ExportError(f"{algo.name}: export graph breaks the policy-file conventions: {e}") from e
        if argmin_overrides:
            train_config = {**(train_config or {}), "export_argmin": _apply_overrides(algo, argmin, argmin_overrides)}
        eta_inv = float(argmin["eta_inv"])
        if not math.isfinite(eta_inv) or eta_inv < 0:
            raise ExportError(f"{algo.name}: argmin eta_inv must be finite and >= 0, got {eta_inv}")
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            # The legacy exporter announces its deprecation and warns about traced shape arithmetic.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", UserWarning)
            try:
                torch.onnx.export(graph.module, tuple(graph.example_inputs), buffer,
                                  input_names=list(graph.input_names), output_names=list(graph.output_names),
                                  dynamic_axes=dict(graph.dynamic_axes), opset_version=opset,
                                  do_constant_folding=True, dynamo=False)
            except Exception as e:
                raise ExportError(f"{algo.name}: tracing the export graph to ONNX failed: {e}") from e
    finally:
        algo.to(graph_device)
        algo.train(was_training)

    model = onnx.load_from_string(buffer.getvalue())
    model.producer_name = "irvs_ros"
    model.doc_string = f"irvs_ros policy: {algo.name} ({argmin['method']} argmin)"
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "algorithm": algo.name,
        "spec": algo.spec.to_json(),
        "argmin": json.dumps(argmin, sort_keys=True),
        "eta_inv": repr(eta_inv),
        "train_config": json.dumps(train_config or {}, sort_keys=True, default=str),
        "dataset_fingerprint": str(dataset_fingerprint),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
    }
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=PREFIX + key, value=value)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{algo.name}: exported ONNX model fails onnx.checker: {e}") from e

    # Write next to the target and rename, so a crash never leaves a half-written policy at `path`.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, path)
    return path


def _apply_overrides(algo: Algorithm, argmin: dict, overrides: dict) -> dict:
    """Apply argmin `overrides` in place (ExportError when refused); {"set": ..., "trained": ...} to record."""
    try:
        checked = checked_argmin_overrides(argmin, overrides, f"the {algo.name} export graph")
        check_argmin({**argmin, **checked}, algo.spec)  # types and ranges of the new values
    except PolicyFileError as e:
        raise ExportError(f"{algo.name}: {e}") from e
    trained = {k: argmin[k] for k in checked}
    argmin.update(checked)
    return {"set": checked, "trained": trained}


def _device_of(module: torch.nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")
