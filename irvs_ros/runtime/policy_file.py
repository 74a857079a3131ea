"""Load one ONNX policy file and act with it (numpy + onnxruntime only; never torch).

The file is what `irvs_ros.learn.export.export_policy` writes: a graph that follows the I/O conventions
of `irvs_ros.learn.algorithms.base` and, in `metadata_props`, everything needed to act (see `METADATA_KEYS`).

Explicit policies (argmin method "none") run the graph once per decision. Implicit policies run it once
for the observation encoding "feat", then hand energy callables built on further runs with "feat_in" and
"candidates" to the argmin in `irvs_ros.runtime.argmin` (the same code the trainer's torch `predict`
uses), apply the IRvS tilt -eta_inv * G for files with a return column, and unnormalize the chosen action.
Each of those runs goes to a session over the subgraph its outputs need (`runtime.subgraph`), so an energy
evaluation never re-runs the image encoder. Files converted by `runtime.precision` (int8 / fp16) load the same way.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from irvs_ros.runtime import argmin as am
from irvs_ros.runtime.spec import ObsSpec, PolicySpec, SpecError
from irvs_ros.runtime.subgraph import SubgraphError, expose_concat_inputs, prune_to_outputs

FORMAT_VERSION = 1
"""Version of the policy-file layout this runtime reads and `export_policy` writes."""

PREFIX = "irvs."
METADATA_KEYS = ("format_version", "algorithm", "spec", "argmin", "eta_inv", "train_config",
                 "dataset_fingerprint", "created", "torch_version")
"""Keys (after the "irvs." prefix) every policy file carries in its metadata_props."""

ARGMIN_METHODS = ("none", "dfo", "adfo", "langevin")
# Outputs each argmin method needs from the graph besides the observation inputs (base.py conventions).
_METHOD_OUTPUTS = {"none": ("action",), "dfo": ("feat", "energy"), "adfo": ("feat", "energy_ar"),
                   "langevin": ("feat", "energy", "energy_grad")}
# Output groups an implicit method runs separately, each on its own subgraph session.
_METHOD_PARTS = {"dfo": (("feat",), ("energy",)), "adfo": (("feat",), ("energy_ar",)),
                 "langevin": (("feat",), ("energy", "energy_grad"))}
# argmin keys that describe the graph rather than tune the optimizer: overrides may not change them.
_STRUCTURAL_KEYS = ("method", "variable_dim", "has_return", "low", "high")


class PolicyFileError(ValueError):
    """A policy file is missing, unreadable, of another format, or inconsistent with itself or its use."""


# ------------------------------------------------------------------------------------------------------
# Pieces shared with the exporter (learn/export.py checks a graph with the same rules before writing it)


def expected_io(method: str, obs: ObsSpec) -> tuple[list[str], list[str]]:
    """(graph input names, required graph output names) for an argmin method and observation spec."""
    if method not in ARGMIN_METHODS:
        raise PolicyFileError(f"unknown argmin method {method!r}; expected one of {list(ARGMIN_METHODS)}")
    inputs = (["state"] if obs.state_dim > 0 else []) + (["image"] if obs.image_shape is not None else [])
    if method != "none":
        inputs += ["feat_in", "candidates"]
    return inputs, list(_METHOD_OUTPUTS[method])


def check_io_names(method: str, obs: ObsSpec, input_names: list[str], output_names: list[str]) -> None:
    """Raise PolicyFileError unless the graph's input names are exactly those of `method` and its outputs
    include the required ones."""
    want_in, want_out = expected_io(method, obs)
    if sorted(input_names) != sorted(want_in):
        raise PolicyFileError(f"graph inputs {sorted(input_names)} do not match argmin method {method!r} with "
                              f"this observation spec: expected {sorted(want_in)}")
    missing = [n for n in want_out if n not in output_names]
    if missing:
        raise PolicyFileError(f"graph lacks output(s) {missing} needed by argmin method {method!r} "
                              f"(graph outputs: {sorted(output_names)})")


def check_argmin(argmin: dict, spec: PolicySpec) -> None:
    """Raise PolicyFileError unless the argmin metadata is complete and consistent with `spec`."""
    method = argmin.get("method")
    if method not in ARGMIN_METHODS:
        raise PolicyFileError(f"argmin method {method!r} is unknown; expected one of {list(ARGMIN_METHODS)}")
    if method == "none":
        return
    for key in ("variable_dim", "has_return"):
        if key not in argmin:
            raise PolicyFileError(f"argmin metadata for method {method!r} lacks {key!r}")
    want = spec.action_dim + (1 if argmin["has_return"] else 0)
    if int(argmin["variable_dim"]) != want:
        raise PolicyFileError(f"argmin variable_dim {argmin['variable_dim']} does not match action_dim "
                              f"{spec.action_dim}{' + 1 return column' if argmin['has_return'] else ''} = {want}")
    optimizer_config(argmin)  # parameter types and ranges


def variable_bounds(spec: PolicySpec, argmin: dict) -> tuple[np.ndarray, np.ndarray]:
    """Box of the argmin variable in normalized units: (low (D,), high (D,)) float32.

    argmin["low"] / argmin["high"] when the file records them; otherwise the spec's widened action bounds
    normalized by the dataset min/max, plus [-1, 1] for the return column G of IRvS files.
    """
    if "low" in argmin and "high" in argmin:
        return np.asarray(argmin["low"], np.float32), np.asarray(argmin["high"], np.float32)
    low, high = spec.normalized_bounds()
    if argmin.get("has_return"):
        low, high = np.append(low, np.float32(-1.0)), np.append(high, np.float32(1.0))
    return low.astype(np.float32), high.astype(np.float32)


def optimizer_config(argmin: dict) -> am.DfoConfig | am.LangevinConfig | None:
    """The argmin module's config dataclass for this method, from the matching keys of `argmin`."""
    method = argmin.get("method")
    cls = {"dfo": am.DfoConfig, "adfo": am.DfoConfig, "langevin": am.LangevinConfig}.get(method)
    if cls is None:
        return None
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in argmin.items() if k in names})
    except (TypeError, ValueError) as e:
        raise PolicyFileError(f"bad {method!r} argmin parameters: {e}") from e


# ------------------------------------------------------------------------------------------------------
# The policy


@dataclass
class _Io:
    name: str
    shape: list  # ints for fixed axes, str / None for dynamic ones
    dtype: str


class Policy:
    """An ONNX policy ready to act. Build it with `load_policy`.

    spec: observation spec, normalization stats, action bounds, control rate.
    algorithm: registered algorithm name the file was trained with.
    argmin: {"method", "variable_dim", "has_return", "eta_inv", ...optimizer parameters} in use.
    metadata: the file's irvs.* metadata, prefix stripped, as stored (strings).
    providers: onnxruntime execution providers of the session, in priority order.
    precision: "fp32", or the precision `runtime.precision.convert_policy` gave the file ("int8", "fp16").
    """

    def __init__(self, session: ort.InferenceSession, spec: PolicySpec, algorithm: str, argmin: dict,
                 metadata: dict[str, str], path: Path,
                 parts: dict[tuple[str, ...], ort.InferenceSession] | None = None) -> None:
        self._session = session
        # Sessions over subgraphs, keyed by the outputs they compute; runs fall back to the whole graph.
        self._parts = dict(parts or {})
        self._part_inputs = {k: {i.name for i in s.get_inputs()} for k, s in self._parts.items()}
        self.spec = spec
        self.algorithm = algorithm
        self.argmin = argmin
        self.metadata = metadata
        self.path = path
        self.providers: list[str] = list(session.get_providers())
        self.precision: str = metadata.get("precision", "fp32")
        self._inputs = {i.name: _Io(i.name, list(i.shape), i.type) for i in session.get_inputs()}
        self._method: str = argmin["method"]
        self._has_return = bool(argmin.get("has_return", False))
        self._eta_inv = float(argmin.get("eta_inv", 0.0))
        self._cfg = optimizer_config(argmin)
        self._low, self._high = variable_bounds(spec, argmin) if self._method != "none" else (None, None)
        # Inputs not needed by a run still have to be fed: empty (batch 0) tensors cost nothing, since
        # onnxruntime runs the whole graph whatever the requested outputs. A provider that rejects empty
        # tensors gets batch-1 dummies instead (decided once, on the first failure).
        self._dummy_batch = 0

    # -- public API ---------------------------------------------------------------------------------

    @property
    def explicit(self) -> bool:
        """True for policies whose graph outputs the action directly (argmin method "none")."""
        return self._method == "none"

    @property
    def eta_inv(self) -> float:
        """Tilt toward high return used by `act` (0 for IBC / files without a return column)."""
        return self._eta_inv

    @property
    def train_config(self) -> dict:
        """The training config the file records ({} when empty), with the export's own keys (export_weights,
        export_step, export_argmin)."""
        return json.loads(self.metadata.get("train_config") or "{}")

    def act(self, obs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Actions (B, A) float32 in raw units for a batch of observations ("state" (B, S), "image" (B, H, W, 3))."""
        return self.act_with_info(obs, rng)[0]

    def act_with_info(self, obs: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """Actions (B, A) raw units, and info: "energy" (B,) untilted energy of the chosen candidate (None for
        explicit policies), "return" (B,) the chosen return-to-go G in raw units (None without a return column)."""
        state, image = self.spec.obs.validate(obs)
        if self._method == "none":
            (action,) = self._run(["action"], self._obs_feed(state, image))
            action = self._check_output("action", action, (self._batch(state, image), self.spec.action_dim))
            return self._finite_action(action), {"energy": None, "return": None}
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        feat = self._feat(state, image)
        batch = feat.shape[0]
        try:
            if self._method == "dfo":
                fn = self._energy_fn(feat)
                tilted = am.tilt_energy(fn, self._eta_inv) if self._has_return else fn
                result = am.dfo(tilted, self._low, self._high, batch, self._cfg, rng)
            elif self._method == "adfo":
                fn_col = self._energy_column_fn(feat)
                tilted = am.tilt_energy_column(fn_col, self._eta_inv) if self._has_return else fn_col
                result = am.autoregressive_dfo(tilted, self._low, self._high, batch, self._cfg, rng)
            else:
                fn_grad = self._energy_grad_fn(feat)
                tilted = am.tilt_energy_grad(fn_grad, self._eta_inv) if self._has_return else fn_grad
                result = am.langevin(tilted, self._low, self._high, batch, self._cfg, rng)
        except am.ArgminError as e:
            raise PolicyFileError(f"argmin over the policy's energy failed ({self.path.name}): {e}") from e
        x = result.x
        action = self._finite_action(self.spec.stats.unnormalize_action(x[:, : self.spec.action_dim]))
        # The untilted energy E(obs, x) of the chosen candidate: the optimizer scored it with the tilted energy
        # E - eta_inv * G (adfo: its last column), so adding the tilt back needs no further graph run.
        energy = result.energy.astype(np.float32)
        if self._has_return and self._eta_inv != 0:
            energy = energy + np.float32(self._eta_inv) * x[:, -1]
        g = self.spec.stats.unnormalize_return(x[:, -1]) if self._has_return else None
        return action, {"energy": energy.astype(np.float32), "return": g}

    def energy(self, obs: dict[str, np.ndarray], candidates: np.ndarray) -> np.ndarray:
        """Untilted energies (B, N) of normalized candidates (B, N, D); for adfo files the full model E_{D-1}."""
        feat, cand = self._feat_and_candidates(obs, candidates)
        if self._method == "adfo":
            return self._energy_ar_fn(feat)(cand)[..., -1]
        return self._energy_fn(feat)(cand)

    def energy_ar(self, obs: dict[str, np.ndarray], candidates: np.ndarray) -> np.ndarray:
        """Per-dimension energies (B, N, D) of an autoregressive (adfo) file; column j is model j."""
        if self._method != "adfo":
            raise PolicyFileError(f"energy_ar needs an adfo policy file; this one uses {self._method!r}")
        feat, cand = self._feat_and_candidates(obs, candidates)
        return self._energy_ar_fn(feat)(cand)

    def energy_and_grad(self, obs: dict[str, np.ndarray], candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Untilted energies (B, N) and dE/dcandidates (B, N, D) from the graph; needs a langevin file."""
        if self._method != "langevin":
            raise PolicyFileError(f"energy gradients are exported only for langevin policies; this one uses "
                                  f"{self._method!r}")
        feat, cand = self._feat_and_candidates(obs, candidates)
        return self._energy_grad_fn(feat)(cand)

    def __repr__(self) -> str:
        return (f"Policy({self.path.name!r}, algorithm={self.algorithm!r}, method={self._method!r}, "
                f"eta_inv={self._eta_inv}, providers={self.providers})")

    # -- graph runs ---------------------------------------------------------------------------------

    def _run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        part = self._part_for(outputs)
        if part is not None:
            names = self._part_inputs[part]
            try:
                values = self._parts[part].run(list(part), {k: v for k, v in feed.items() if k in names})
            except Exception as e:
                raise PolicyFileError(f"running {self.path.name} for {outputs} failed: {e}") from e
            by_name = dict(zip(part, values, strict=True))
            return [by_name[o] for o in outputs]
        for name in self._inputs:
            if name not in feed:
                feed[name] = self._dummy(name)
        try:
            return self._session.run(outputs, feed)
        except Exception as e:  # onnxruntime raises its own exception types per provider
            if self._dummy_batch == 0 and any(feed[n].shape[0] == 0 for n in feed):
                self._dummy_batch = 1
                feed = {n: (self._dummy(n) if v.shape[0] == 0 else v) for n, v in feed.items()}
                try:
                    return self._session.run(outputs, feed)
                except Exception as e2:
                    raise PolicyFileError(f"running {self.path.name} for {outputs} failed: {e2}") from e2
            raise PolicyFileError(f"running {self.path.name} for {outputs} failed: {e}") from e

    def _part_for(self, outputs: list[str]) -> tuple[str, ...] | None:
        for key in self._parts:
            if set(outputs) <= set(key):
                return key
        return None

    def _dummy(self, name: str) -> np.ndarray:
        io = self._inputs[name]
        shape = [self._dummy_batch] + [d if isinstance(d, int) else 1 for d in io.shape[1:]]
        return np.zeros(shape, np.uint8 if io.dtype == "tensor(uint8)" else np.float32)

    @staticmethod
    def _obs_feed(state: np.ndarray | None, image: np.ndarray | None) -> dict[str, np.ndarray]:
        feed = {}
        if state is not None:
            feed["state"] = np.ascontiguousarray(state, np.float32)
        if image is not None:
            feed["image"] = np.ascontiguousarray(image, np.uint8)
        return feed

    @staticmethod
    def _batch(state: np.ndarray | None, image: np.ndarray | None) -> int:
        return int(state.shape[0] if state is not None else image.shape[0])

    def _check_output(self, name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        value = np.asarray(value)
        if value.shape != shape:
            raise PolicyFileError(f"graph output {name!r} has shape {value.shape}, expected {shape}")
        return value.astype(np.float32, copy=False)

    def _finite_action(self, action: np.ndarray) -> np.ndarray:
        if not np.all(np.isfinite(action)):
            bad = np.unique(np.nonzero(~np.isfinite(action))[0]).tolist()
            raise PolicyFileError(f"policy {self.path.name} produced a NaN/inf action for batch rows {bad}; "
                                  "refusing to return it")
        return np.ascontiguousarray(action, np.float32)

    def _feat(self, state: np.ndarray | None, image: np.ndarray | None) -> np.ndarray:
        (feat,) = self._run(["feat"], self._obs_feed(state, image))
        feat = np.asarray(feat, np.float32)
        if feat.ndim != 2 or feat.shape[0] != self._batch(state, image):
            raise PolicyFileError(f"graph output 'feat' has shape {feat.shape}, expected (B, F)")
        if not np.all(np.isfinite(feat)):
            raise PolicyFileError(f"policy {self.path.name} produced a NaN/inf observation encoding")
        return feat

    def _feat_and_candidates(self, obs: dict[str, np.ndarray], candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._method == "none":
            raise PolicyFileError("an explicit policy (argmin method 'none') has no energy")
        state, image = self.spec.obs.validate(obs)
        feat = self._feat(state, image)
        cand = np.asarray(candidates, np.float32)
        dim = int(self.argmin["variable_dim"])
        if cand.ndim != 3 or cand.shape[0] != feat.shape[0] or cand.shape[2] != dim:
            raise SpecError(f"candidates have shape {cand.shape}, expected ({feat.shape[0]}, N, {dim})")
        return feat, cand

    def _candidates_feed(self, feat: np.ndarray, cand: np.ndarray) -> dict[str, np.ndarray]:
        return {"feat_in": feat, "candidates": np.ascontiguousarray(cand, np.float32)}

    def _energy_fn(self, feat: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        def fn(cand: np.ndarray) -> np.ndarray:
            (energy,) = self._run(["energy"], self._candidates_feed(feat, cand))
            return self._check_output("energy", energy, cand.shape[:2])

        return fn

    def _energy_ar_fn(self, feat: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        def fn(cand: np.ndarray) -> np.ndarray:
            (energy,) = self._run(["energy_ar"], self._candidates_feed(feat, cand))
            return self._check_output("energy_ar", energy, cand.shape)

        return fn

    def _energy_column_fn(self, feat: np.ndarray) -> am.EnergyColumnFn:
        full = self._energy_ar_fn(feat)

        def fn(cand: np.ndarray, j: int) -> np.ndarray:
            part = (f"energy_ar_{j}",)
            if part not in self._parts:
                return full(cand)[..., j]
            (energy,) = self._run(list(part), self._candidates_feed(feat, cand))
            return self._check_output(part[0], energy, (*cand.shape[:2], 1))[..., 0]

        return fn

    def _energy_grad_fn(self, feat: np.ndarray) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        def fn(cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            energy, grad = self._run(["energy", "energy_grad"], self._candidates_feed(feat, cand))
            return (self._check_output("energy", energy, cand.shape[:2]),
                    self._check_output("energy_grad", grad, cand.shape))

        return fn


# ------------------------------------------------------------------------------------------------------
# Loading


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, then CPU."""
    available = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The irvs.* metadata of a policy file, prefix stripped (no validation beyond opening the file)."""
    return _metadata(_open_session(Path(path), ["CPUExecutionProvider"]))


def session_options(threads: int = 0, spinning: bool = True) -> ort.SessionOptions:
    """onnxruntime session options of a policy: all graph optimizations, sequential execution.

    threads: intra-op threads; 0 = onnxruntime's default (one per physical core).
    spinning: whether idle intra-op threads busy-wait for work (lower latency when cores are free; set False when
        other processes need the cores between decisions).
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise PolicyFileError(f"threads must be an int >= 0 (0 = onnxruntime's default), got {threads!r}")
    options = ort.SessionOptions()
    # Fatal only: failures surface as exceptions with their message, provider fallbacks through `providers`,
    # and the one expected failure (a graph that rejects empty dummy inputs, see Policy._run) stays quiet.
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def load_policy(path: str | os.PathLike, *, eta_inv: float | None = None, argmin_overrides: dict | None = None,
                expected_obs: ObsSpec | None = None, providers: list[str] | None = None, threads: int = 0,
                spinning: bool = True) -> Policy:
    """Open and check a policy file.

    eta_inv: tilt toward high return; None uses the file's irvs.eta_inv (only files with a return column
        accept a non-zero value).
    argmin_overrides: optimizer parameters to change (e.g. {"num_samples": 1024}); unknown keys and keys
        that describe the graph ("method", "variable_dim", "has_return", "low", "high") are refused.
    expected_obs: the observation layout the caller will feed; a different one in the file is a SpecError.
    providers: onnxruntime execution providers; None = CUDA when available, else CPU.
    threads, spinning: CPU threading of the sessions, see `session_options` (defaults: onnxruntime's).
    Raises PolicyFileError for a missing, corrupt, foreign or inconsistent file.
    """
    path = Path(path)
    options = session_options(threads, spinning)
    providers = providers or default_providers()
    session = _open_session(path, providers, options)
    meta = _metadata(session)
    missing = [PREFIX + k for k in METADATA_KEYS if k not in meta]
    if "format_version" not in meta:
        raise PolicyFileError(f"{path} is an ONNX file but not an irvs policy file: its metadata lacks "
                              f"'{PREFIX}format_version' (write policy files with `irvs export`)")
    if meta["format_version"] != str(FORMAT_VERSION):
        raise PolicyFileError(f"{path} has policy format version {meta['format_version']!r}; this runtime reads "
                              f"version {FORMAT_VERSION} (re-export the checkpoint with this version of irvs_ros)")
    if missing:
        raise PolicyFileError(f"{path} lacks metadata key(s) {missing}")
    try:
        spec = PolicySpec.from_json(meta["spec"])
    except (ValueError, KeyError, TypeError) as e:
        raise PolicyFileError(f"{path}: metadata '{PREFIX}spec' is not a valid policy spec: {e}") from e
    argmin = _json_dict(meta, "argmin", path)
    try:
        file_eta = float(meta["eta_inv"])
    except ValueError as e:
        raise PolicyFileError(f"{path}: metadata '{PREFIX}eta_inv' is not a number: {meta['eta_inv']!r}") from e
    _json_dict(meta, "train_config", path)
    check_argmin(argmin, spec)
    argmin = dict(argmin)
    if argmin_overrides:
        argmin.update(checked_argmin_overrides(argmin, argmin_overrides, path.name))
    eta = file_eta if eta_inv is None else float(eta_inv)
    if not math.isfinite(eta) or eta < 0:
        raise PolicyFileError(f"eta_inv must be finite and >= 0, got {eta}")
    if eta != 0 and not argmin.get("has_return", False):
        raise PolicyFileError(f"eta_inv = {eta} needs a policy with a return column (IRvS); {path.name} "
                              f"({meta['algorithm']}) has none")
    argmin["eta_inv"] = eta
    check_argmin(argmin, spec)
    check_io_names(argmin["method"], spec.obs, [i.name for i in session.get_inputs()],
                   [o.name for o in session.get_outputs()])
    _check_input_shapes(session, spec, argmin)
    if expected_obs is not None and expected_obs != spec.obs:
        raise SpecError(f"{path.name} was trained on observations {spec.obs.to_dict()}, but the caller feeds "
                        f"{expected_obs.to_dict()}: {_obs_diff(spec.obs, expected_obs)}")
    return Policy(session, spec, meta["algorithm"], argmin, meta, path,
                  _part_sessions(path, argmin["method"], providers, options, int(argmin.get("variable_dim", 0))))


def _part_sessions(path: Path, method: str, providers: list[str], options: ort.SessionOptions,
                   variable_dim: int = 0) -> dict[tuple[str, ...], ort.InferenceSession]:
    """One session per output group of an implicit method, each on the subgraph those outputs need, and for adfo
    one per model ("energy_ar_j") when energy_ar is the Concat of `variable_dim` models; {} when the graph cannot
    be cut (onnx missing): runs then use the whole graph with dummy inputs, as before."""
    groups = _METHOD_PARTS.get(method)
    if not groups:
        return {}
    try:
        data = path.read_bytes()
        parts = {g: ort.InferenceSession(prune_to_outputs(data, g)[0], sess_options=options, providers=providers)
                 for g in groups}
        if method == "adfo":
            # One session per model of the autoregressive energy: the argmin scores model j alone (D x less work).
            try:
                exposed, names = expose_concat_inputs(data, "energy_ar")
            except SubgraphError:
                return parts  # another graph layout: model j is then a column of the full energy_ar
            if len(names) != variable_dim:
                return parts
            for name in names:
                parts[(name,)] = ort.InferenceSession(prune_to_outputs(exposed, [name])[0], sess_options=options,
                                                      providers=providers)
        return parts
    except ImportError:
        return {}
    except (OSError, SubgraphError) as e:
        raise PolicyFileError(f"{path}: cannot split the graph into its parts {list(groups)}: {e}") from e
    except Exception as e:  # onnxruntime's own exception types
        raise PolicyFileError(f"{path}: a part {list(groups)} of the graph does not load: {e}") from e


def _open_session(path: Path, providers: list[str], options: ort.SessionOptions | None = None
                  ) -> ort.InferenceSession:
    if not path.exists():
        raise PolicyFileError(f"policy file not found: {path}")
    if not path.is_file():
        raise PolicyFileError(f"policy path is not a file: {path}")
    if path.stat().st_size == 0:
        raise PolicyFileError(f"policy file is empty: {path}")
    available = ort.get_available_providers()
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise PolicyFileError(f"onnxruntime providers {unknown} are not available here; available: {available}")
    options = options or session_options()
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises InvalidProtobuf / Fail / InvalidGraph for bad bytes
        raise PolicyFileError(f"{path} is not a readable ONNX policy file (corrupt, truncated or not ONNX): "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e


def _metadata(session: ort.InferenceSession) -> dict[str, str]:
    custom = session.get_modelmeta().custom_metadata_map
    return {k[len(PREFIX):]: v for k, v in custom.items() if k.startswith(PREFIX)}


def _json_dict(meta: dict[str, str], key: str, path: Path) -> dict:
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise PolicyFileError(f"{path}: metadata '{PREFIX}{key}' is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise PolicyFileError(f"{path}: metadata '{PREFIX}{key}' must be a JSON object, got {type(value).__name__}")
    return value


def checked_argmin_overrides(argmin: dict, overrides: dict, where: str) -> dict:
    """`overrides` of the optimizer parameters in `argmin` (a policy's argmin metadata), checked: PolicyFileError
    for keys that describe the graph (`where` names it in the message), for eta_inv, or for keys the method lacks."""
    structural = sorted(k for k in overrides if k in _STRUCTURAL_KEYS)
    if structural:
        raise PolicyFileError(f"argmin_overrides may not change {structural}: they describe the graph in {where}")
    if "eta_inv" in overrides:
        raise PolicyFileError("pass eta_inv as load_policy(eta_inv=...), not in argmin_overrides")
    cfg = optimizer_config(argmin)
    allowed = sorted(f.name for f in fields(cfg)) if cfg is not None else []
    unknown = sorted(k for k in overrides if k not in allowed)
    if unknown:
        raise PolicyFileError(f"unknown argmin override(s) {unknown} for method {argmin['method']!r}; "
                              f"allowed: {allowed}")
    return dict(overrides)


def _check_input_shapes(session: ort.InferenceSession, spec: PolicySpec, argmin: dict[str, Any]) -> None:
    """Fixed axes of the graph inputs must agree with the spec (dynamic axes are str / None)."""
    want: dict[str, tuple] = {}
    if spec.obs.state_dim > 0:
        want["state"] = (spec.obs.state_dim,)
    if spec.obs.image_shape is not None:
        want["image"] = tuple(spec.obs.image_shape)
    if argmin["method"] != "none":
        want["candidates"] = (None, int(argmin["variable_dim"]))
    dtypes = {"state": "tensor(float)", "image": "tensor(uint8)", "feat_in": "tensor(float)",
              "candidates": "tensor(float)"}
    for i in session.get_inputs():
        if i.type != dtypes.get(i.name, i.type):
            raise PolicyFileError(f"graph input {i.name!r} has type {i.type}, expected {dtypes[i.name]}")
        if i.name not in want:
            continue
        tail = tuple(i.shape[1:])
        expect = want[i.name]
        ok = len(tail) == len(expect) and all(e is None or not isinstance(t, int) or t == e
                                              for t, e in zip(tail, expect, strict=True))
        if not ok:
            raise PolicyFileError(f"graph input {i.name!r} has shape {list(i.shape)}, but the spec implies "
                                  f"(B, {', '.join('N' if e is None else str(e) for e in expect)})")


def _obs_diff(a: ObsSpec, b: ObsSpec) -> str:
    parts = []
    for name in ("state_dim", "image_shape", "state_keys"):
        if getattr(a, name) != getattr(b, name):
            parts.append(f"{name} {getattr(a, name)} (file) != {getattr(b, name)} (expected)")
    return "; ".join(parts)
