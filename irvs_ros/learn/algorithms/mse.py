"""Explicit MSE behavioural cloning (IBC's "MSE" baseline), and the pieces every explicit policy shares.

The network maps an observation to the action normalized to [-1, 1] by the dataset min / max and is
trained with the mean squared error there (IBC appendix E: the same MLP / ResNet, with an image encoder
for pixels). The exported graph unnormalizes, so its "action" output is in raw units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from irvs_ros.learn.algorithms.base import Algorithm, ExportGraph, register
from irvs_ros.learn.config_schema import ConfigError
from irvs_ros.learn.nets import DenseNet, ImageEncoderFields
from irvs_ros.runtime.spec import PolicySpec

# ------------------------------------------------------------------------------------------------------
# Shared by the explicit baselines (mse, mdn, nn)


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU for an empty module)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def obs_to_tensors(spec: PolicySpec, obs: dict[str, np.ndarray], device: torch.device
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Validated (state (B, S) float32 | None, image (B, H, W, 3) uint8 | None) torch tensors on `device`."""
    state, image = spec.obs.validate(obs)
    return (None if state is None else torch.as_tensor(state, device=device),
            None if image is None else torch.as_tensor(np.ascontiguousarray(image), device=device))


def obs_input_names(spec: PolicySpec) -> list[str]:
    """Observation inputs of an exported graph, in order: "state" and / or "image"."""
    return (["state"] if spec.obs.state_dim > 0 else []) + (["image"] if spec.obs.image_shape is not None else [])


def example_obs(spec: PolicySpec, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """CPU example inputs for tracing, matching `obs_input_names`."""
    out: list[torch.Tensor] = []
    if spec.obs.state_dim > 0:
        out.append(torch.zeros(batch, spec.obs.state_dim))
    if spec.obs.image_shape is not None:
        out.append(torch.zeros(batch, *spec.obs.image_shape, dtype=torch.uint8))
    return tuple(out)


class ObsGraph(nn.Module):
    """Adapter for tracing: forward(*inputs in `obs_input_names` order) -> fn(state, image)."""

    def __init__(self, policy: nn.Module, has_state: bool, has_image: bool) -> None:
        super().__init__()
        self.policy = policy
        self.has_state, self.has_image = has_state, has_image

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        it = iter(inputs)
        state = next(it) if self.has_state else None
        image = next(it) if self.has_image else None
        return self.policy(state, image)


def explicit_export_graph(policy: nn.Module, spec: PolicySpec) -> ExportGraph:
    """ExportGraph of an explicit policy: `policy(state, image)` -> raw action (B, A); argmin method "none"."""
    names = obs_input_names(spec)
    module = ObsGraph(policy, spec.obs.state_dim > 0, spec.obs.image_shape is not None)
    axes = {n: {0: "batch"} for n in [*names, "action"]}
    return ExportGraph(module=module, example_inputs=example_obs(spec), input_names=names, output_names=["action"],
                       dynamic_axes=axes, argmin={"method": "none"})


def check_dense_config(width: int, depth: int, resnet: bool, dropout: float) -> None:
    """ConfigError unless width x depth, resnet and dropout describe a valid DenseNet."""
    if width < 1 or depth < 1:
        raise ConfigError(f"width and depth must be >= 1, got {width} x {depth}")
    if resnet and depth % 2:
        raise ConfigError(f"a ResNet needs an even depth (two dense layers per block), got {depth}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")


class ActionScale(nn.Module):
    """Dataset min / max action scaling as buffers: a_norm = (a - center) / half_range, and back (raw units)."""

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__()
        center, half = spec.stats.action_scale()
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32))
        self.register_buffer("half_range", torch.as_tensor(half, dtype=torch.float32))

    def normalize(self, action: torch.Tensor) -> torch.Tensor:
        return (action - self.center) / self.half_range

    def unnormalize(self, action_norm: torch.Tensor) -> torch.Tensor:
        return action_norm * self.half_range + self.center


# ------------------------------------------------------------------------------------------------------
# MSE


@dataclass
class MseConfig(ImageEncoderFields):
    """Explicit MSE policy.

    width, depth: hidden dense layers (IBC "width x depth"); resnet: pre-activation residual blocks
        (depth must then be even).
    dropout: dropout rate after each hidden ReLU (IBC's MSE tables: 0.1).
    coord_conv, image_pooling, image_channels, image_stem_stride: image encoder (nets.ImageEncoderFields; pixels
        only; IBC pixels MSE: CoordConv on).
    """

    width: int = 256
    depth: int = 4
    resnet: bool = False
    dropout: float = 0.1

    def validate(self) -> None:
        self.validate_image()
        check_dense_config(self.width, self.depth, self.resnet, self.dropout)


class _MseActor(nn.Module):
    def __init__(self, spec: PolicySpec, cfg: MseConfig) -> None:
        super().__init__()
        self.encoder = cfg.observation_encoder(spec)
        self.head = DenseNet(self.encoder.out_dim, spec.action_dim, cfg.width, cfg.depth, cfg.resnet, cfg.dropout)
        self.scale = ActionScale(spec)

    def normalized(self, state: torch.Tensor | None, image: torch.Tensor | None) -> torch.Tensor:
        """Normalized action (B, A)."""
        return self.head(self.encoder(state, image))

    def forward(self, state: torch.Tensor | None, image: torch.Tensor | None) -> torch.Tensor:
        """Raw action (B, A)."""
        return self.scale.unnormalize(self.normalized(state, image))


@register
class MseBC(Algorithm):
    """Explicit behavioural cloning with a mean-squared-error loss on normalized actions."""

    name = "mse"
    config_cls = MseConfig

    def __init__(self, spec: PolicySpec, config: MseConfig) -> None:
        super().__init__(spec, config)
        self.actor = _MseActor(spec, config)

    @property
    def encoder(self) -> nn.Module:
        """The observation encoder (its features feed the trainer's auxiliary state loss)."""
        return self.actor.encoder

    def compute_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        pred = self.actor.normalized(batch.get("state"), batch.get("image"))
        target = self.actor.scale.normalize(batch["action"].to(pred.dtype))
        mse = ((pred - target) ** 2).mean()
        return {"loss": mse, "mse": mse.detach()}

    @torch.no_grad()
    def predict(self, obs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        was_training = self.training
        self.eval()
        try:
            state, image = obs_to_tensors(self.spec, obs, module_device(self))
            return self.actor(state, image).cpu().numpy().astype(np.float32)
        finally:
            self.train(was_training)

    def export_graph(self) -> ExportGraph:
        return explicit_export_graph(self.actor, self.spec)
