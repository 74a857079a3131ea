"""Training checkpoints: one torch file holding everything to resume exactly or to rebuild the policy for export.

A checkpoint is a dict (loadable with `torch.load(weights_only=True)`):
    format               CHECKPOINT_FORMAT
    step                 optimizer steps done
    algorithm, params    registered algorithm name and its hyper-parameters (plain dict)
    spec_json            PolicySpec.to_json()
    model                Algorithm.state_dict()
    optimizer, scheduler their state dicts (None for algorithms with nothing to train)
    rng                  per-rank RNG states (torch CPU / CUDA, numpy, python, the trainer's generators) or None
    config               the resolved TrainConfig as a plain dict
    dataset_fingerprint  the training dataset's fingerprint
    ema                  WeightAverage.state_dict() when the run keeps an EMA of the weights, else absent / None
    extra                free-form plain data (world size, last metrics, ...)
Files are written atomically (temporary file in the same directory, then rename), so a crash never leaves a
truncated checkpoint behind.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from irvs_ros.learn.algorithms.base import Algorithm, make_algorithm
from irvs_ros.learn.weight_average import WeightAverageError, averaged_state_dict
from irvs_ros.runtime.spec import PolicySpec

CHECKPOINT_FORMAT = "irvs_ros.checkpoint/1"
LAST_NAME = "last.pt"
REQUIRED_KEYS = ("format", "step", "algorithm", "params", "spec_json", "model", "config", "dataset_fingerprint")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not in the expected format."""


def step_checkpoint_name(step: int) -> str:
    """File name of the step-numbered checkpoint, e.g. step_00001000.pt."""
    return f"step_{step:08d}.pt"


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file next to `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_copy(src: str | Path, dst: str | Path) -> Path:
    """Copy `src` to `dst` through a temporary file and a rename."""
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dst


# RNG state ---------------------------------------------------------------------------------------------------
def capture_rng_state(generators: dict[str, torch.Generator] | None = None,
                      device: torch.device | str | None = None) -> dict[str, Any]:
    """Global torch CPU (and, for a CUDA `device`, that device's) RNG state, numpy and python RNG states, plus
    the named generators' states.

    Everything is converted to tensors / plain data so `torch.load(weights_only=True)` reads it back.
    """
    device = torch.device(device) if device is not None else None
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device is not None and device.type == "cuda" else None,
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None,
                      device: torch.device | str | None = None) -> None:
    """Inverse of `capture_rng_state`: restore the global RNGs (the CUDA one on `device`) and the named
    generators in place."""
    device = torch.device(device) if device is not None else None
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    saved = state.get("generators", {})
    for name, g in (generators or {}).items():
        if name not in saved:
            raise CheckpointError(f"checkpoint RNG state lacks generator {name!r} (has {sorted(saved)})")
        g.set_state(saved[name])


# Save / load ---------------------------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, *, algorithm: Algorithm, algorithm_name: str, params: dict, spec: PolicySpec,
                    step: int, config: dict, dataset_fingerprint: str,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    rng: list[dict] | dict | None = None, extra: dict | None = None,
                    ema: dict | None = None, copies: list[str | Path] = ()) -> Path:
    """Write a checkpoint atomically to `path` and to each of `copies` (e.g. RUN/checkpoints/last.pt)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "algorithm": str(algorithm_name),
        "params": dict(params),
        "spec_json": spec.to_json(),
        "model": {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
                  for k, v in algorithm.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng,
        "config": dict(config),
        "dataset_fingerprint": str(dataset_fingerprint),
        "ema": ema,
        "extra": dict(extra or {}),
    }
    path = atomic_torch_save(payload, path)
    for copy in copies:
        atomic_copy(path, copy)
    return path


def resolve_checkpoint_path(path_or_run_dir: str | Path) -> Path:
    """A checkpoint file, or RUN/checkpoints/last.pt for a run directory, or DIR/last.pt for a checkpoints dir."""
    p = Path(path_or_run_dir)
    if p.is_dir():
        for candidate in (p / "checkpoints" / LAST_NAME, p / LAST_NAME):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{p} is a directory without checkpoints/{LAST_NAME} or {LAST_NAME}")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    return p


def load_checkpoint(path_or_run_dir: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint written by `save_checkpoint` (CheckpointError when it is not one)."""
    path = resolve_checkpoint_path(path_or_run_dir)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem means "not a readable checkpoint"
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not an irvs_ros checkpoint (format {got!r}, expected {CHECKPOINT_FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}")
    ckpt["path"] = str(path)
    return ckpt


WEIGHTS = ("auto", "ema", "raw")


def weights_used(ckpt: dict[str, Any], weights: str = "auto") -> str:
    """Which weights `weights` picks from `ckpt`: "ema" or "raw" ("auto" = the EMA when the run kept one)."""
    if weights not in WEIGHTS:
        raise CheckpointError(f"weights: expected one of {WEIGHTS}, got {weights!r}")
    has_ema = bool(ckpt.get("ema"))
    if weights == "ema" and not has_ema:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')} holds no EMA weights (trained with ema_decay 0); "
                              "use the raw weights")
    return "ema" if weights == "ema" or (weights == "auto" and has_ema) else "raw"


def algorithm_from_checkpoint(ckpt: dict[str, Any], weights: str = "auto") -> Algorithm:
    """Rebuild the algorithm from a loaded checkpoint (spec + name + params) and load its weights; eval mode.

    weights: "auto" (the EMA of the weights when the run kept one, else the raw weights), "ema" or "raw".
    """
    spec = PolicySpec.from_json(ckpt["spec_json"])
    algorithm = make_algorithm(ckpt["algorithm"], spec, ckpt["params"])
    try:
        state = averaged_state_dict(ckpt["model"], ckpt.get("ema") if weights_used(ckpt, weights) == "ema" else None)
        algorithm.load_state_dict(state)
    except (RuntimeError, WeightAverageError) as e:
        raise CheckpointError(f"checkpoint weights do not fit algorithm {ckpt['algorithm']!r}: {e}") from e
    algorithm.eval()
    return algorithm


def load_for_export(path_or_run_dir: str | Path, weights: str = "auto") -> tuple[Algorithm, dict, str]:
    """(algorithm on CPU in eval mode, training config dict, dataset fingerprint) from a checkpoint or run dir.

    weights: as in `algorithm_from_checkpoint`; the config dict records the choice under "export_weights" and the
    checkpoint's optimizer step under "export_step" (the config's "steps" is the run's target).
    """
    ckpt = load_checkpoint(path_or_run_dir, map_location="cpu")
    algorithm = algorithm_from_checkpoint(ckpt, weights)
    config = {**dict(ckpt["config"]), "export_weights": weights_used(ckpt, weights), "export_step": int(ckpt["step"])}
    return algorithm, config, str(ckpt["dataset_fingerprint"])
