"""The one small interface every algorithm implements, and the registry that names them.

Batches (torch, raw units; the algorithm owns its normalizer and normalizes internally):
    "state":  (B, S) float32          present when spec.obs.state_dim > 0
    "image":  (B, H, W, 3) uint8      present when spec.obs.image_shape is not None
    "action": (B, A) float32
    "return": (B,) float32            return-to-go G (average future reward), raw units

Observations for `predict` are the same keys as numpy arrays, without "action" / "return".

Exported ONNX graph conventions (see `ExportGraph`), shared with `irvs_ros.runtime.policy_file`:
    explicit policies (argmin method "none"):
        inputs  "state" (B, S) float32, "image" (B, H, W, 3) uint8   (each only if the spec has it)
        outputs "action" (B, A) float32 raw units
    implicit policies:
        inputs  "state", "image" as above, "feat_in" (B, F) float32, "candidates" (B, N, D) float32
        outputs "feat" (B, F)            observation encoding (depends on state/image only)
                "energy" (B, N)          E(feat_in, candidates)           [dfo, langevin]
                "energy_grad" (B, N, D)  dE/dcandidates, analytic          [langevin]
                "energy_ar" (B, N, D)    column j: model j on candidates[..., :j+1]   [adfo]
        candidates are in normalized units: actions in [-1, 1] by the dataset min/max, and for IRvS
        a last column G normalized to [-1, 1]; D = A (+1 with return). The tilt -eta_inv * G is NOT
        in the graph: the argmin applies it, so eta_inv stays a runtime parameter.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from irvs_ros.learn.config_schema import from_dict
from irvs_ros.runtime.spec import PolicySpec


@dataclass
class ExportGraph:
    """What the exporter traces (torch legacy ONNX exporter) plus the argmin metadata the runtime needs.

    argmin: {"method": "none" | "dfo" | "adfo" | "langevin", "variable_dim": D, "has_return": bool,
             "eta_inv": float, ...method parameters (num_samples, iterations, noise_scale, ...)}.
    """

    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    argmin: dict[str, Any] = field(default_factory=dict)


class Algorithm(nn.Module, abc.ABC):
    """Base class: one training loss, one way to act, one exportable graph.

    Subclasses set `name` and `config_cls` (a dataclass of their hyper-parameters).
    """

    name: ClassVar[str]
    config_cls: ClassVar[type]

    def __init__(self, spec: PolicySpec, config: Any) -> None:
        super().__init__()
        self.spec = spec
        self.config = config

    @abc.abstractmethod
    def compute_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Training losses for one batch. Must contain "loss" (scalar to minimize); other entries are logged.

        All randomness (counter-examples, Langevin noise) comes from `generator` so resume is exact.
        """

    @abc.abstractmethod
    def predict(self, obs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Actions (B, A) float32 in raw units for a batch of observations, computed with torch.

        Implicit policies run the numpy argmin from `irvs_ros.runtime.argmin` on a torch energy, with
        the same parameters the exported file records, so torch and ONNX agree for the same `rng`.
        """

    @abc.abstractmethod
    def export_graph(self) -> ExportGraph:
        """The module and metadata to export; see the module docstring for the I/O conventions."""

    def fit_dataset(self, arrays: dict[str, np.ndarray]) -> None:  # noqa: B027 - optional hook
        """Optional hook called once before training with the whole dataset (e.g. nearest neighbour)."""

    @property
    def trainable(self) -> bool:
        """False for algorithms with nothing to optimize (nearest neighbour)."""
        return any(p.requires_grad for p in self.parameters())


ALGORITHMS: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make an algorithm available by its `name`."""
    if cls.name in ALGORITHMS and ALGORITHMS[cls.name] is not cls:
        raise ValueError(f"algorithm {cls.name!r} registered twice")
    ALGORITHMS[cls.name] = cls
    return cls


def make_algorithm(name: str, spec: PolicySpec, params: dict | None = None) -> Algorithm:
    """Instantiate a registered algorithm with its config validated from `params`."""
    import irvs_ros.learn.algorithms  # noqa: F401 - populates the registry

    if name not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {name!r}; known: {sorted(ALGORITHMS)}")
    cls = ALGORITHMS[name]
    config = from_dict(cls.config_cls, params or {}, where=f"algorithm.{name}")
    return cls(spec, config)
