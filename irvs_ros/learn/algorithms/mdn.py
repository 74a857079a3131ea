"""Explicit Mixture Density Network behavioural cloning (IBC's "MDN" baseline; Bishop 1994).

The network outputs K diagonal Gaussians over the normalized action (in [-1, 1] by the dataset min / max)
and mixture logits. Training maximizes the likelihood with the logits divided by the training temperature.
IBC appendix D.2 also lists a test temperature and a test variance exponent: at test time the logits are
divided by the test temperature and each component's standard deviation is raised to the variance
exponent; those shape the distribution `sample` draws from.

Acting (`predict` and the exported graph) is deterministic: the action is the mean of the most likely
component, argmax_k of the mixture weights. The test temperature does not change which component that is
and the variance exponent does not move a mean, so they affect only `sample`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from irvs_ros.learn.algorithms.base import Algorithm, ExportGraph, register
from irvs_ros.learn.algorithms.mse import (
    ActionScale,
    check_dense_config,
    explicit_export_graph,
    module_device,
    obs_to_tensors,
)
from irvs_ros.learn.config_schema import ConfigError
from irvs_ros.learn.nets import DenseNet, ImageEncoderFields
from irvs_ros.runtime.spec import PolicySpec

# Bounds on log standard deviations in normalized action units: keeps the likelihood finite when a
# component collapses onto a single training action, and stops a flat component from absorbing everything.
LOG_STD_MIN, LOG_STD_MAX = -7.0, 2.0


@dataclass
class MdnConfig(ImageEncoderFields):
    """Mixture density network policy.

    num_components: K Gaussians (IBC pixels MDN: 26).
    width, depth, resnet, dropout: the dense trunk (as for MSE; IBC's MDN tables: 512 x 8, dropout 0.1).
    training_temperature: mixture logits are divided by it in the training likelihood.
    test_temperature, test_variance_exponent: logits / test_temperature and std ** exponent for `sample`.
    coord_conv, image_pooling, image_channels, image_stem_stride: image encoder (nets.ImageEncoderFields).
    """

    num_components: int = 8
    width: int = 256
    depth: int = 4
    resnet: bool = False
    dropout: float = 0.1
    training_temperature: float = 1.0
    test_temperature: float = 1.0
    test_variance_exponent: float = 1.0

    def validate(self) -> None:
        self.validate_image()
        check_dense_config(self.width, self.depth, self.resnet, self.dropout)
        if self.num_components < 1:
            raise ConfigError(f"num_components must be >= 1, got {self.num_components}")
        for name in ("training_temperature", "test_temperature", "test_variance_exponent"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value}")


class _MdnNet(nn.Module):
    """Observation -> mixture parameters in normalized action units."""

    def __init__(self, spec: PolicySpec, cfg: MdnConfig) -> None:
        super().__init__()
        self.k, self.a = cfg.num_components, spec.action_dim
        self.encoder = cfg.observation_encoder(spec)
        self.head = DenseNet(self.encoder.out_dim, self.k * (1 + 2 * self.a), cfg.width, cfg.depth, cfg.resnet,
                             cfg.dropout)
        self.scale = ActionScale(spec)

    def mixture(self, state: torch.Tensor | None, image: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (B, K), means (B, K, A), log_std (B, K, A)), untempered, normalized action units."""
        out = self.head(self.encoder(state, image))
        b = out.shape[0]
        logits = out[:, : self.k]
        mean = out[:, self.k: self.k * (1 + self.a)].reshape(b, self.k, self.a)
        log_std = out[:, self.k * (1 + self.a):].reshape(b, self.k, self.a).clamp(LOG_STD_MIN, LOG_STD_MAX)
        return logits, mean, log_std

    def forward(self, state: torch.Tensor | None, image: torch.Tensor | None) -> torch.Tensor:
        """Raw action (B, A): the mean of the component with the largest mixture weight."""
        logits, mean, _ = self.mixture(state, image)
        idx = torch.argmax(logits, dim=1)  # (B,)
        best = torch.gather(mean, 1, idx[:, None, None].expand(-1, 1, self.a)).squeeze(1)
        return self.scale.unnormalize(best)


def mixture_log_likelihood(logits: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor,
                           target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(target) (B,) under the mixture softmax(logits / temperature) of diagonal Gaussians.

    logits (B, K), mean / log_std (B, K, A), target (B, A); all in the same (normalized) units.
    """
    log_w = torch.log_softmax(logits / temperature, dim=1)
    z = (target[:, None, :] - mean) * torch.exp(-log_std)
    log_n = (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)  # (B, K)
    return torch.logsumexp(log_w + log_n, dim=1)


@register
class MdnBC(Algorithm):
    """Explicit behavioural cloning with a mixture density network (negative log-likelihood loss)."""

    name = "mdn"
    config_cls = MdnConfig

    def __init__(self, spec: PolicySpec, config: MdnConfig) -> None:
        super().__init__(spec, config)
        self.net = _MdnNet(spec, config)

    @property
    def encoder(self) -> nn.Module:
        """The observation encoder (its features feed the trainer's auxiliary state loss)."""
        return self.net.encoder

    def compute_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        logits, mean, log_std = self.net.mixture(batch.get("state"), batch.get("image"))
        target = self.net.scale.normalize(batch["action"].to(mean.dtype))
        nll = -mixture_log_likelihood(logits, mean, log_std, target, self.config.training_temperature).mean()
        with torch.no_grad():
            weights = torch.softmax(logits / self.config.training_temperature, dim=1)
            entropy = -(weights * torch.log(weights.clamp_min(1e-12))).sum(1).mean()
        return {"loss": nll, "nll": nll.detach(), "mixture_entropy": entropy}

    @torch.no_grad()
    def predict(self, obs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Raw actions (B, A): the mean of the most likely component (deterministic; `rng` unused)."""
        was_training = self.training
        self.eval()
        try:
            state, image = obs_to_tensors(self.spec, obs, module_device(self))
            return self.net(state, image).cpu().numpy().astype(np.float32)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def sample(self, obs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Raw actions (B, A) drawn from the test-time mixture: component ~ softmax(logits / test_temperature),
        action ~ N(mean, (std ** test_variance_exponent)^2) in normalized units, then unnormalized."""
        was_training = self.training
        self.eval()
        try:
            state, image = obs_to_tensors(self.spec, obs, module_device(self))
            logits, mean, log_std = (t.cpu().numpy().astype(np.float64) for t in self.net.mixture(state, image))
        finally:
            self.train(was_training)
        z = logits / self.config.test_temperature
        w = np.exp(z - z.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        rows = np.arange(w.shape[0])
        comp = np.array([rng.choice(w.shape[1], p=p) for p in w])
        std = np.exp(log_std[rows, comp] * self.config.test_variance_exponent)
        a_norm = mean[rows, comp] + std * rng.standard_normal(std.shape)
        return self.spec.stats.unnormalize_action(a_norm.astype(np.float32))

    def export_graph(self) -> ExportGraph:
        return explicit_export_graph(self.net, self.spec)
