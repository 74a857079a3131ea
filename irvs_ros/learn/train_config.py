"""Typed training configuration: loaded from YAML, overridden with `key=value` (dotted keys), saved with the run.

A config file looks like::

    name: particle_2d_mse
    dataset: data/particle2.h5
    algorithm: mse
    params: {width: 128, depth: 16, resnet: true}
    steps: 100000
    batch_size: 512
    eval: {env: particle, env_kwargs: {n_dim: 2}, episodes: 100, every: 10000}

Overrides are parsed as YAML scalars: `steps=200`, `lr=5e-4`, `params.dropout=0.0`, `eval.env=null`,
`adam_betas=[0.9,0.99]`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from irvs_ros.learn.config_schema import ConfigError, from_dict, to_dict


@dataclass
class EvalConfig:
    """Periodic policy evaluation in simulation (rank 0 only).

    env: environment name for `irvs_ros.sim.rollout.evaluate`; None disables evaluation.
    env_kwargs: keyword arguments of that environment (e.g. the particle dimension).
    episodes: seeded episodes per evaluation.
    every: evaluate every this many training steps; 0 evaluates only once, after the last step.
    seed: seed of the evaluation episodes and of the policy's sampling rng.
    """

    env: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    episodes: int = 20
    every: int = 0
    seed: int = 10_000

    def validate(self) -> None:
        if self.episodes <= 0:
            raise ConfigError(f"eval.episodes: must be > 0, got {self.episodes}")
        if self.every < 0:
            raise ConfigError(f"eval.every: must be >= 0 (0 = only at the end), got {self.every}")


@dataclass
class TrainConfig:
    """One training run.

    name / out_dir: the run directory is out_dir/name unless the command line gives --out.
    dataset: path of a dataset store (`irvs_ros.data.store.Dataset.open`).
    algorithm / params: registered algorithm name and its hyper-parameters (validated by the algorithm's config).
    steps: total optimizer steps (a resumed run continues up to this number).
    lr, lr_decay, lr_decay_every: Adam learning rate with exponential decay, lr * lr_decay ** (step // lr_decay_every)
        (IBC appendix B.1: 1e-3, 0.99 every 100 steps).
    adam_betas, weight_decay: Adam settings (IBC: default betas 0.9, 0.999).
    grad_clip: max global gradient norm, or None for no clipping.
    ema_decay: keep an exponential moving average of the weights with this decay (learn.weight_average; 0 =
        off); in-training evaluation runs it and `irvs export` exports it by default. 0.999 averages over about
        the last 1000 steps.
    keep_top_fraction: keep only this fraction of episodes, ranked by episode return (1.0 keeps all; IBC's
        return-filtered BC keeps the top 0.5).
    observation: "all" trains on everything the dataset observes; "image" on the camera image alone (a pixel
        policy that needs no state at run time, like the robot graph's policy_node), ignoring the dataset's state;
        "state" on the state alone, ignoring the dataset's images (a state policy from a pixel dataset).
    state_keys: with observation "image", named entries of the dataset's state the policy sees besides the image
        (e.g. [setpoint_xy], the effector's commanded position, which the robot graph's policy node has); the
        dataset's meta["state_layout"] or its env names them. Empty: the image alone.
    aux_state_weight: weight of a training-only loss regressing the dataset's whole recorded state (block and
        fixture poses in simulation; yaws as cos/sin) linearly from the observation features (learn.aux_state);
        teaches a pixel encoder where things are. 0 = off. Not part of the exported policy.
    image_shift: random-shift augmentation of training images by up to this many pixels (edge-replicated,
        per sample; 0 = off). A regularizer for pixel policies trained on few demonstrations.
    control_rate_hz: decisions per second recorded in the policy spec; None takes the dataset's
        meta["control_rate_hz"] (else 5 Hz).
    device: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N".
    flush_denormal: treat denormal floats (|x| < 1.2e-38) as zero in CPU math while training. x86 CPUs take a
        slow path on them, and InfoNCE puts the softmax weights of easily told counter-examples there as it
        converges: particle EBM-DFO training fell from 33 to 8 steps/s by step 3000 without it, with the same
        losses (bench/results/denormals.md).
    log_every / checkpoint_every: in optimizer steps; the last step always logs and checkpoints.
    ddp_find_unused_parameters: passed to DistributedDataParallel (needed when a loss leaves parameters unused).
    """

    dataset: str
    algorithm: str
    params: dict[str, Any] = field(default_factory=dict)
    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    steps: int = 1000
    batch_size: int = 512
    lr: float = 1e-3
    lr_decay: float = 0.99
    lr_decay_every: int = 100
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float | None = None
    ema_decay: float = 0.0
    keep_top_fraction: float = 1.0
    observation: Literal["all", "image", "state"] = "all"
    state_keys: tuple[str, ...] = ()
    image_shift: int = 0
    aux_state_weight: float = 0.0
    control_rate_hz: float | None = None
    device: str = "auto"
    flush_denormal: bool = True
    log_every: int = 100
    checkpoint_every: int = 5000
    ddp_find_unused_parameters: bool = False
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        def positive(name: str) -> None:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)}")

        for name in ("batch_size", "lr", "lr_decay_every", "log_every", "checkpoint_every"):
            positive(name)
        if self.steps < 0:
            raise ConfigError(f"steps: must be >= 0, got {self.steps}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ConfigError(f"lr_decay: must be in (0, 1], got {self.lr_decay}")
        if not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ConfigError(f"adam_betas: each must be in [0, 1), got {list(self.adam_betas)}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and not (self.grad_clip > 0 and math.isfinite(self.grad_clip)):
            raise ConfigError(f"grad_clip: must be a positive number or null, got {self.grad_clip}")
        if not (math.isfinite(self.ema_decay) and 0.0 <= self.ema_decay < 1.0):
            raise ConfigError(f"ema_decay: must be in [0, 1) (0 = off), got {self.ema_decay}")
        if not 0.0 < self.keep_top_fraction <= 1.0:
            raise ConfigError(f"keep_top_fraction: must be in (0, 1], got {self.keep_top_fraction}")
        if self.state_keys and self.observation != "image":
            raise ConfigError(f"state_keys: only with observation 'image' (observation 'all' sees the whole state), "
                              f"got state_keys {list(self.state_keys)} with observation {self.observation!r}")
        if len(set(self.state_keys)) != len(self.state_keys):
            raise ConfigError(f"state_keys: each key once, got {list(self.state_keys)}")
        if not (math.isfinite(self.aux_state_weight) and self.aux_state_weight >= 0):
            raise ConfigError(f"aux_state_weight: must be finite and >= 0, got {self.aux_state_weight}")
        if self.image_shift < 0:
            raise ConfigError(f"image_shift: must be >= 0 pixels, got {self.image_shift}")
        if self.control_rate_hz is not None and self.control_rate_hz <= 0:
            raise ConfigError(f"control_rate_hz: must be > 0 or null, got {self.control_rate_hz}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if not self.name or "/" in self.name:
            raise ConfigError(f"name: must be a non-empty file name without '/', got {self.name!r}")
        if not self.dataset:
            raise ConfigError("dataset: must be a path, got an empty string")


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads `1e-3` as a float (PyYAML's YAML 1.1 rules need `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML text with safe loading and YAML 1.2-style floats (`5e-4` is a number, not a string)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (["a", "b", "c"], value parsed as a YAML scalar / flow value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value (e.g. steps=200 or params.hidden=64)")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise ConfigError(f"override {text!r}: empty component in dotted key {key!r}")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from e
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of the plain config `data` with each `key=value` override applied (dotted keys nest)."""
    out = _deep_copy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"override {text!r}: {where} is {child!r}, not a mapping, so it has no sub-keys")
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def config_from_dict(data: dict) -> TrainConfig:
    """Validate a plain dict into a TrainConfig (ConfigError names the offending key)."""
    return from_dict(TrainConfig, data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config file, apply `key=value` overrides, and validate it (ConfigError on any problem)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return config_from_dict(apply_overrides(data, list(overrides or [])))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def check_algorithm_params(config: TrainConfig) -> None:
    """Fail early (before loading data) if the algorithm is unknown or its params do not validate."""
    import irvs_ros.learn.algorithms  # noqa: F401 - populates the registry
    from irvs_ros.learn.algorithms.base import ALGORITHMS

    cls = ALGORITHMS.get(config.algorithm)
    if cls is None:
        raise ConfigError(f"algorithm: unknown {config.algorithm!r}; known: {sorted(ALGORITHMS)}")
    from_dict(cls.config_cls, config.params, where=f"params ({config.algorithm})")


def config_to_yaml(config: TrainConfig) -> str:
    """The resolved config as YAML text (what is saved as RUN/config.yaml)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(config_to_yaml(config))
