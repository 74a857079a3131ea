"""Energy-based (implicit) policies: IBC with DFO, autoregressive DFO or Langevin (Florence et al. 2021), and
Implicit RvS (Piché et al. 2022).

Registered names and what each trains / how it acts:

- "ebm_dfo":      InfoNCE with uniform counter-examples; argmin by DFO (IBC B.1).
- "ebm_adfo":     one energy per action dimension j on the action prefix a[:j+1], InfoNCE with counter-examples
                  that vary dimension j given the positive's prefix; argmin by autoregressive DFO (IBC B.2).
- "ebm_langevin": InfoNCE with Langevin counter-examples + gradient penalty; argmin by Langevin (IBC B.3).
- "irvs":         one energy over (a, G) given the observation, counter-examples over (a, G) jointly; argmin of
                  E(s, a, G) - eta_inv * G (IRvS eq. 8) by Langevin (default, as in the paper) or DFO.

Everything the network sees is normalized: states by the encoder's buffers, actions min-max to [-1, 1], and G
min-max to [-1, 1]; counter-examples and argmin candidates live in spec.normalized_bounds() for actions and
[-1, 1] for G. `predict` runs the numpy optimizers of `irvs_ros.runtime.argmin` on the torch energy with the
parameters recorded in the exported file, so torch and ONNX act alike for the same rng.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from irvs_ros.learn import counter_examples
from irvs_ros.learn.algorithms.base import Algorithm, ExportGraph, register
from irvs_ros.learn.config_schema import ConfigError
from irvs_ros.learn.losses import gradient_penalty, info_nce
from irvs_ros.learn.nets import EnergyHead, ImageEncoderFields, ObservationEncoder
from irvs_ros.runtime import argmin
from irvs_ros.runtime.spec import PolicySpec

# Energy evaluations in `predict` are split so that one torch call sees at most this many candidates.
_MAX_CANDIDATES_PER_CALL = 65536


# ----------------------------------------------------------------------------------------------------------
# Configs


@dataclass
class _EnergyNetConfig(ImageEncoderFields):
    """Network and counter-example fields shared by all energy-based algorithms.

    width, depth: dense layers of the energy head (depth counts hidden layers; even for a ResNet).
    resnet: pre-activation ResNet dense blocks instead of a plain MLP (IBC E.1).
    dropout: dropout rate in the head during training (IBC B.1 finds it does not help EBMs: 0).
    spectral_norm: spectrally normalized dense layers (IBC B.3.1, IRvS A.2).
    coord_conv, image_pooling, image_channels, image_stem_stride: image encoder (nets.ImageEncoderFields).
    num_counter_examples: negatives per training sample.
    """

    width: int = 512
    depth: int = 8
    resnet: bool = True
    dropout: float = 0.0
    spectral_norm: bool = False
    num_counter_examples: int = 8

    def validate(self) -> None:
        self.validate_image()
        if self.width < 1:
            raise ConfigError(f"width: must be >= 1, got {self.width}")
        if self.depth < 1:
            raise ConfigError(f"depth: must be >= 1, got {self.depth}")
        if self.resnet and self.depth % 2:
            raise ConfigError(f"depth: a ResNet has two dense layers per block, expected an even depth, got "
                              f"{self.depth}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.num_counter_examples < 1:
            raise ConfigError(f"num_counter_examples: must be >= 1, got {self.num_counter_examples}")


@dataclass
class _DfoFields:
    """Derivative-free optimizer at inference (IBC B.1: sigma_init 0.33, K 0.5, 3 iterations); dfo_init_samples:
    a larger first round (runtime.argmin.DfoConfig.init_samples; 0 = dfo_samples).

    dfo_counter_example_fraction: the share of training counter-examples drawn by the same DFO rounds on the
    current model (`learn.counter_examples.dfo`, from num_counter_examples uniform samples; IBC's reference agent
    calls it fraction_dfo_samples); the rest stay uniform. 0 = all uniform (IBC B.1)."""

    dfo_samples: int = 1024
    dfo_iterations: int = 3
    dfo_noise_scale: float = 0.33
    dfo_noise_shrink: float = 0.5
    dfo_init_samples: int = 0
    dfo_counter_example_fraction: float = 0.0

    def dfo_config(self) -> argmin.DfoConfig:
        return argmin.DfoConfig(num_samples=self.dfo_samples, iterations=self.dfo_iterations,
                                noise_scale=self.dfo_noise_scale, noise_shrink=self.dfo_noise_shrink,
                                init_samples=self.dfo_init_samples)

    def validate_dfo(self) -> None:
        try:
            self.dfo_config()
        except argmin.ArgminError as e:
            msg = str(e).replace("DfoConfig.num_samples", "dfo_samples").replace("DfoConfig.", "dfo_")
            raise ConfigError(msg) from e
        if not 0.0 <= self.dfo_counter_example_fraction <= 1.0:
            raise ConfigError(f"dfo_counter_example_fraction: must be in [0, 1], got "
                              f"{self.dfo_counter_example_fraction}")


@dataclass
class _LangevinFields:
    """Langevin dynamics: the training chain uses iterations and step_init -> step_final; inference runs the
    same chain from `langevin_samples` uniform candidates, then a second chain from `langevin_second_chain_step`
    (None: no second chain). Gradient penalty max(0, ||dE/dy||_inf - grad_margin)^2 at the final chain step,
    weighted by grad_penalty_weight (IBC B.3.1; 0 disables it)."""

    langevin_iterations: int = 100
    langevin_step_init: float = 0.5
    langevin_step_final: float = 1e-5
    langevin_decay_power: float = 2.0
    langevin_delta_clip: float = 0.5
    langevin_noise_scale: float = 0.5
    langevin_second_chain_step: float | None = 1e-5
    langevin_samples: int = 512
    grad_margin: float = 1.0
    grad_penalty_weight: float = 1.0

    def langevin_config(self) -> argmin.LangevinConfig:
        return argmin.LangevinConfig(num_samples=self.langevin_samples, iterations=self.langevin_iterations,
                                     step_init=self.langevin_step_init, step_final=self.langevin_step_final,
                                     decay_power=self.langevin_decay_power, delta_clip=self.langevin_delta_clip,
                                     noise_scale=self.langevin_noise_scale,
                                     second_chain_step=self.langevin_second_chain_step)

    def validate_langevin(self) -> None:
        try:
            self.langevin_config()
        except argmin.ArgminError as e:
            msg = str(e).replace("LangevinConfig.num_samples", "langevin_samples")
            msg = msg.replace("LangevinConfig.", "langevin_")
            raise ConfigError(msg) from e
        if self.grad_margin < 0 or self.grad_penalty_weight < 0:
            raise ConfigError(f"grad_margin and grad_penalty_weight must be >= 0, got {self.grad_margin}, "
                              f"{self.grad_penalty_weight}")


@dataclass
class EbmDfoConfig(_EnergyNetConfig, _DfoFields):
    """IBC with DFO. Defaults: IBC appendix D.5, real-world pushing from pixels (the product's setting):
    1024x4 dense, regular layers, 256 counter-examples, 1024 DFO samples, 3 iterations; DFO noise from B.1."""

    width: int = 1024
    depth: int = 4
    num_counter_examples: int = 256

    def validate(self) -> None:
        _EnergyNetConfig.validate(self)
        self.validate_dfo()


@dataclass
class EbmAdfoConfig(_EnergyNetConfig, _DfoFields):
    """IBC with autoregressive DFO. Defaults: IBC appendix D.4 (planar sweeping): 20 dense ResNet layers,
    1024 counter-examples and 1024 inference samples per action dimension; DFO noise from B.1. The table gives
    no dense width; 256 is our choice. Counter-examples and samples are per action dimension."""

    width: int = 256
    depth: int = 20
    num_counter_examples: int = 1024
    dfo_samples: int = 1024

    def validate(self) -> None:
        _EnergyNetConfig.validate(self)
        self.validate_dfo()
        if self.dfo_init_samples:
            raise ConfigError("dfo_init_samples: the autoregressive DFO scores dfo_samples in every round (set 0)")


@dataclass
class EbmLangevinConfig(_EnergyNetConfig, _LangevinFields):
    """IBC with Langevin. Defaults: IBC appendix D.1 (D4RL) = IRvS appendix A.2: 512x8 spectral-norm dense
    layers, 8 counter-examples, 100 Langevin iterations, step 0.5 -> 1e-5 (power 2), delta clip 0.5, noise 0.5,
    second inference chain from 1e-5, gradient penalty at the final step with margin 1. The number of inference
    samples (512) is not in the tables (the runtime's LangevinConfig default)."""

    spectral_norm: bool = True

    def validate(self) -> None:
        _EnergyNetConfig.validate(self)
        self.validate_langevin()


@dataclass
class IrvsConfig(_EnergyNetConfig, _LangevinFields, _DfoFields):
    """Implicit RvS. Defaults: IRvS appendix A.2 (= EbmLangevinConfig) and eta_inv = 1, the value the paper
    recommends for all tasks (sec. 5.2.2). method "langevin" (paper) or "dfo": the counter-examples follow the
    method (Langevin chain or uniform) and so does the argmin; with "dfo" consider num_counter_examples = 256
    (IBC's DFO setting)."""

    spectral_norm: bool = True
    eta_inv: float = 1.0
    method: Literal["langevin", "dfo"] = "langevin"

    def validate(self) -> None:
        _EnergyNetConfig.validate(self)
        self.validate_langevin()
        self.validate_dfo()
        if not (np.isfinite(self.eta_inv) and self.eta_inv >= 0):
            raise ConfigError(f"eta_inv: must be finite and >= 0, got {self.eta_inv}")


# ----------------------------------------------------------------------------------------------------------
# Shared machinery


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


class _ExportModule(nn.Module):
    """Traced graph: (state?, image?, feat_in, candidates) -> (feat, energy [, energy_grad]) or (feat, energy_ar)."""

    def __init__(self, encoder: ObservationEncoder, heads: nn.ModuleList, output: str, has_state: bool,
                 has_image: bool) -> None:
        super().__init__()
        self.encoder, self.heads, self.output = encoder, heads, output
        self.has_state, self.has_image = has_state, has_image

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args = list(inputs)
        state = args.pop(0) if self.has_state else None
        image = args.pop(0) if self.has_image else None
        feat_in, candidates = args
        feat = self.encoder(state, image)
        if self.output == "energy_ar":
            return feat, torch.stack([h(feat_in, candidates[..., : j + 1]) for j, h in enumerate(self.heads)], -1)
        if self.output == "energy_grad":
            energy, grad = self.heads[0].energy_and_grad(feat_in, candidates)
            return feat, energy, grad
        return feat, self.heads[0](feat_in, candidates)


class _EnergyAlgorithm(Algorithm):
    """Encoder + energy head(s) over normalized (action [, G]); subclasses define the loss and the argmin."""

    has_return: ClassVar[bool] = False

    def __init__(self, spec: PolicySpec, config: Any) -> None:
        super().__init__(spec, config)
        self.encoder = config.observation_encoder(spec)
        center, half = spec.stats.action_scale()
        self.register_buffer("action_center", torch.as_tensor(center, dtype=torch.float32))
        self.register_buffer("action_half", torch.as_tensor(half, dtype=torch.float32))
        low, high = spec.normalized_bounds()
        if self.has_return:
            low, high = np.append(low, -1.0), np.append(high, 1.0)
        self.register_buffer("var_low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("var_high", torch.as_tensor(high, dtype=torch.float32))
        self.var_dim = spec.action_dim + int(self.has_return)
        self.heads = nn.ModuleList(self._make_heads())

    def _head(self, var_dim: int) -> EnergyHead:
        c = self.config
        return EnergyHead(self.encoder.out_dim, var_dim, c.width, c.depth, c.resnet, c.dropout, c.spectral_norm)

    def _make_heads(self) -> list[EnergyHead]:
        return [self._head(self.var_dim)]

    # --- batches ---------------------------------------------------------------------------------------
    def _features(self, state: torch.Tensor | None, image: torch.Tensor | None) -> torch.Tensor:
        dev = self.action_center.device
        return self.encoder(None if state is None else state.to(dev), None if image is None else image.to(dev))

    def _positives(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalized targets (B, D): action in [-1, 1] (and G in [-1, 1] for IRvS)."""
        if "action" not in batch:
            raise KeyError("batch lacks 'action' (B, A)")
        action = batch["action"].to(self.action_center.device, torch.float32)
        if action.dim() != 2 or action.shape[1] != self.spec.action_dim:
            raise ValueError(f"action has shape {tuple(action.shape)}, expected (B, {self.spec.action_dim})")
        y = (action - self.action_center) / self.action_half
        if self.has_return:
            if "return" not in batch:
                raise KeyError(f"{self.name} trains on returns: batch lacks 'return' (B,)")
            c, h = self.spec.stats.return_scale()
            g = (batch["return"].to(y.device, torch.float32).reshape(-1, 1) - c) / h
            if g.shape[0] != y.shape[0]:
                raise ValueError(f"return has {g.shape[0]} rows, action has {y.shape[0]}")
            y = torch.cat([y, g], dim=1)
        return y

    def _encode_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        for key, needed in (("state", self.spec.obs.state_dim > 0), ("image", self.spec.obs.image_shape is not None)):
            if needed and key not in batch:
                raise KeyError(f"batch lacks {key!r}, which this policy's observation spec requires")
        return self._features(batch.get("state"), batch.get("image")), self._positives(batch)

    def _uniform_negatives(self, batch: int, num: int, generator: torch.Generator) -> torch.Tensor:
        return counter_examples.uniform(self.var_low, self.var_high, batch, num, generator)

    def _dfo_negatives(self, energy_fn: Callable[[torch.Tensor], torch.Tensor], low: torch.Tensor,
                       high: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Counter-examples (B, N, D) over the box [low, high] of D variables: the first N - k uniform, the last
        k = round(dfo_counter_example_fraction * N) from DFO rounds on `energy_fn` (no gradient)."""
        c = self.config
        n = c.num_counter_examples
        k = int(round(c.dfo_counter_example_fraction * n))
        parts = [counter_examples.uniform(low, high, batch, n - k, generator)] if k < n else []
        if k:
            hard = counter_examples.dfo(energy_fn, low, high, batch, n, c.dfo_iterations, c.dfo_noise_scale,
                                        c.dfo_noise_shrink, generator)
            parts.append(hard[:, :k])
        return torch.cat(parts, dim=1)

    def _infonce_uniform(self, feat: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """InfoNCE against uniform counter-examples (IBC B.1), a share of them DFO-drawn when the config asks."""
        head, feat_fixed = self.heads[0], feat.detach()
        neg = self._dfo_negatives(lambda x: head(feat_fixed, x), self.var_low, self.var_high, y.shape[0], generator)
        energies = head(feat, torch.cat([y.unsqueeze(1), neg], dim=1))
        return info_nce(energies, 0)

    def _langevin_loss(self, feat: torch.Tensor, y: torch.Tensor,
                       generator: torch.Generator) -> dict[str, torch.Tensor]:
        """InfoNCE against Langevin counter-examples + IBC's gradient penalty at the chain's final samples."""
        c = self.config
        head = self.heads[0]
        init = self._uniform_negatives(y.shape[0], c.num_counter_examples, generator)
        feat_fixed = feat.detach()
        steps = counter_examples.langevin_steps(c.langevin_iterations, c.langevin_step_init, c.langevin_step_final,
                                                c.langevin_decay_power)
        neg = counter_examples.langevin(lambda x: head.energy_and_grad(feat_fixed, x), init, self.var_low,
                                        self.var_high, steps, c.langevin_noise_scale, c.langevin_delta_clip, generator)
        energies = head(feat, torch.cat([y.unsqueeze(1), neg], dim=1))
        nce = info_nce(energies, 0)
        out = {"info_nce": nce.detach()}
        loss = nce
        if c.grad_penalty_weight > 0:
            _, grad = head.energy_and_grad(feat, neg)
            gp = gradient_penalty(grad, c.grad_margin)
            loss = loss + c.grad_penalty_weight * gp
            out["grad_penalty"] = gp.detach()
        out["loss"] = loss
        return out

    # --- acting ----------------------------------------------------------------------------------------
    def _obs_features(self, obs: dict[str, np.ndarray]) -> torch.Tensor:
        state, image = self.spec.obs.validate(obs)
        return self._features(None if state is None else torch.from_numpy(state),
                              None if image is None else torch.from_numpy(np.ascontiguousarray(image)))

    def _chunks(self, feat: torch.Tensor, x: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if x.ndim != 3 or x.shape[0] != feat.shape[0]:
            raise ValueError(f"candidates must be (B={feat.shape[0]}, N, D), got {x.shape}")
        rows = max(1, _MAX_CANDIDATES_PER_CALL // max(1, x.shape[1]))
        y = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(feat.device)
        for i in range(0, x.shape[0], rows):
            yield feat[i:i + rows], y[i:i + rows]

    def _energy_fn(self, feat: torch.Tensor) -> argmin.EnergyFn:
        head = self.heads[0]

        def fn(x: np.ndarray) -> np.ndarray:
            return torch.cat([head(f, y) for f, y in self._chunks(feat, x)]).cpu().numpy()

        return fn

    def _energy_grad_fn(self, feat: torch.Tensor) -> argmin.EnergyGradFn:
        head = self.heads[0]

        def fn(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            parts = [head.energy_and_grad(f, y) for f, y in self._chunks(feat, x)]
            return (torch.cat([p[0] for p in parts]).cpu().numpy(), torch.cat([p[1] for p in parts]).cpu().numpy())

        return fn

    def _argmin(self, feat: torch.Tensor, rng: np.random.Generator) -> argmin.ArgminResult:
        raise NotImplementedError

    def _solve(self, obs: dict[str, np.ndarray], rng: np.random.Generator) -> argmin.ArgminResult:
        with _eval_mode(self):
            feat = self._obs_features(obs)
            return self._argmin(feat, rng)

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.var_low.cpu().numpy(), self.var_high.cpu().numpy()

    def energies(self, obs: dict[str, np.ndarray], candidates: np.ndarray) -> np.ndarray:
        """Untilted energies (B, N) of normalized candidates (B, N, D), as the runtime's `Policy.energy` (for the
        autoregressive model its full-prefix model E_{D-1})."""
        with _eval_mode(self), torch.no_grad():
            feat = self._obs_features(obs)
            if isinstance(self, EbmAdfo):
                return self._energy_ar_fn(feat)(candidates)[..., -1]
            return self._energy_fn(feat)(candidates)

    def predict(self, obs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Actions (B, A) float32 in raw units: the argmin of the energy, unnormalized."""
        x = self._solve(obs, rng).x
        return self.spec.stats.unnormalize_action(x[:, : self.spec.action_dim])

    # --- export ----------------------------------------------------------------------------------------
    _export_output: ClassVar[str] = "energy"

    def _argmin_metadata(self) -> dict[str, Any]:
        raise NotImplementedError

    def export_graph(self) -> ExportGraph:
        """Eval-mode copy of encoder + head(s), spectral norm folded into plain weights; I/O as in base.py."""
        encoder = copy.deepcopy(self.encoder).cpu().eval()
        heads = nn.ModuleList(h.plain_copy().cpu() for h in self.heads)
        has_state, has_image = self.spec.obs.state_dim > 0, self.spec.obs.image_shape is not None
        module = _ExportModule(encoder, heads, self._export_output, has_state, has_image).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        b, n = 2, 3
        gen = torch.Generator().manual_seed(0)
        inputs: list[torch.Tensor] = []
        names: list[str] = []
        axes: dict[str, dict[int, str]] = {}
        if has_state:
            inputs.append(torch.randn(b, self.spec.obs.state_dim, generator=gen))
            names.append("state")
            axes["state"] = {0: "obs_batch"}
        if has_image:
            inputs.append(torch.randint(0, 256, (b, *self.spec.obs.image_shape), generator=gen, dtype=torch.uint8))
            names.append("image")
            axes["image"] = {0: "obs_batch"}
        inputs.append(torch.randn(b, self.encoder.out_dim, generator=gen))
        inputs.append(torch.rand(b, n, self.var_dim, generator=gen) * 2 - 1)
        names += ["feat_in", "candidates"]
        axes["feat_in"] = {0: "batch"}
        axes["candidates"] = {0: "batch", 1: "num"}
        outputs = ["feat"] + (["energy", "energy_grad"] if self._export_output == "energy_grad"
                              else [self._export_output])
        axes["feat"] = {0: "obs_batch"}
        for name in outputs[1:]:
            axes[name] = {0: "batch", 1: "num"}
        return ExportGraph(module=module, example_inputs=tuple(inputs), input_names=names, output_names=outputs,
                           dynamic_axes=axes, argmin=self._argmin_metadata())

    def _base_metadata(self, method: str, eta_inv: float, cfg: Any) -> dict[str, Any]:
        return {"method": method, "variable_dim": self.var_dim, "has_return": self.has_return,
                "eta_inv": float(eta_inv), **dataclasses.asdict(cfg)}


# ----------------------------------------------------------------------------------------------------------
# Algorithms


@register
class EbmDfo(_EnergyAlgorithm):
    """Implicit BC, derivative-free optimizer (IBC B.1)."""

    name = "ebm_dfo"
    config_cls = EbmDfoConfig

    def compute_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        feat, y = self._encode_batch(batch)
        loss = self._infonce_uniform(feat, y, generator)
        return {"loss": loss, "info_nce": loss.detach()}

    def _argmin(self, feat: torch.Tensor, rng: np.random.Generator) -> argmin.ArgminResult:
        low, high = self._bounds()
        return argmin.dfo(self._energy_fn(feat), low, high, feat.shape[0], self.config.dfo_config(), rng)

    def _argmin_metadata(self) -> dict[str, Any]:
        return self._base_metadata("dfo", 0.0, self.config.dfo_config())


@register
class EbmAdfo(_EnergyAlgorithm):
    """Implicit BC, autoregressive DFO (IBC B.2): model j scores the action prefix a[:j+1]; encoder shared.

    Training: model j's counter-examples keep the positive's prefix a[:j] and draw dimension j uniformly,
    so model j learns the conditional p(a_j | s, a_<j) up to a prefix-dependent constant. The argmin
    (`runtime.argmin.autoregressive_dfo`) therefore chooses one dimension at a time with the chosen prefix fixed,
    and never compares E_j between candidates with different prefixes.
    """

    name = "ebm_adfo"
    config_cls = EbmAdfoConfig
    _export_output = "energy_ar"

    def _make_heads(self) -> list[EnergyHead]:
        return [self._head(j + 1) for j in range(self.var_dim)]

    def compute_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        feat, y = self._encode_batch(batch)
        b, n = y.shape[0], self.config.num_counter_examples
        hard = self.config.dfo_counter_example_fraction > 0
        # (B, N, D); column j is model j's varying dimension. With DFO-drawn counter-examples each model draws
        # its own column instead, from its own energy.
        u = None if hard else self._uniform_negatives(b, n, generator)
        feat_fixed = feat.detach()
        losses = []
        for j, head in enumerate(self.heads):
            prefix = y[:, None, :j].expand(b, n, j)
            if hard:
                def energy_j(x: torch.Tensor, head: EnergyHead = head, prefix: torch.Tensor = prefix) -> torch.Tensor:
                    return head(feat_fixed, torch.cat([prefix, x], dim=2))

                column = self._dfo_negatives(energy_j, self.var_low[j: j + 1], self.var_high[j: j + 1], b, generator)
            else:
                column = u[..., j: j + 1]
            neg = torch.cat([prefix, column], dim=2)
            energies = head(feat, torch.cat([y[:, None, : j + 1], neg], dim=1))
            losses.append(info_nce(energies, 0))
        loss = torch.stack(losses).sum()
        return {"loss": loss, "info_nce": loss.detach() / len(losses)}

    def _energy_ar_fn(self, feat: torch.Tensor) -> argmin.EnergyArFn:
        def fn(x: np.ndarray) -> np.ndarray:
            out = [torch.stack([h(f, y[..., : j + 1]) for j, h in enumerate(self.heads)], -1)
                   for f, y in self._chunks(feat, x)]
            return torch.cat(out).cpu().numpy()

        return fn

    def _energy_column_fn(self, feat: torch.Tensor) -> argmin.EnergyColumnFn:
        def fn(x: np.ndarray, j: int) -> np.ndarray:
            head = self.heads[j]
            return torch.cat([head(f, y[..., : j + 1]) for f, y in self._chunks(feat, x)]).cpu().numpy()

        return fn

    def _argmin(self, feat: torch.Tensor, rng: np.random.Generator) -> argmin.ArgminResult:
        low, high = self._bounds()
        return argmin.autoregressive_dfo(self._energy_column_fn(feat), low, high, feat.shape[0],
                                         self.config.dfo_config(), rng)

    def _argmin_metadata(self) -> dict[str, Any]:
        return self._base_metadata("adfo", 0.0, self.config.dfo_config())


@register
class EbmLangevin(_EnergyAlgorithm):
    """Implicit BC, Langevin dynamics with gradient penalty (IBC B.3)."""

    name = "ebm_langevin"
    config_cls = EbmLangevinConfig
    _export_output = "energy_grad"

    def compute_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        feat, y = self._encode_batch(batch)
        return self._langevin_loss(feat, y, generator)

    def _argmin(self, feat: torch.Tensor, rng: np.random.Generator) -> argmin.ArgminResult:
        low, high = self._bounds()
        return argmin.langevin(self._energy_grad_fn(feat), low, high, feat.shape[0],
                               self.config.langevin_config(), rng)

    def _argmin_metadata(self) -> dict[str, Any]:
        return self._base_metadata("langevin", 0.0, self.config.langevin_config())


@register
class Irvs(_EnergyAlgorithm):
    """Implicit RvS: E(s, a, G) over normalized (a, G); acts by argmin of E - eta_inv * G (IRvS eq. 8).

    eta_inv = 0 is IBC's argmin over (a, G): the tilt wrappers return the energy unchanged.
    """

    name = "irvs"
    config_cls = IrvsConfig
    has_return = True

    @property
    def _export_output(self) -> str:  # type: ignore[override]
        return "energy_grad" if self.config.method == "langevin" else "energy"

    def compute_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        feat, y = self._encode_batch(batch)
        if self.config.method == "langevin":
            return self._langevin_loss(feat, y, generator)
        loss = self._infonce_uniform(feat, y, generator)
        return {"loss": loss, "info_nce": loss.detach()}

    def _argmin(self, feat: torch.Tensor, rng: np.random.Generator) -> argmin.ArgminResult:
        low, high = self._bounds()
        c = self.config
        if c.method == "langevin":
            fn = argmin.tilt_energy_grad(self._energy_grad_fn(feat), c.eta_inv)
            return argmin.langevin(fn, low, high, feat.shape[0], c.langevin_config(), rng)
        fn = argmin.tilt_energy(self._energy_fn(feat), c.eta_inv)
        return argmin.dfo(fn, low, high, feat.shape[0], c.dfo_config(), rng)

    def predict_with_return(self, obs: dict[str, np.ndarray], rng: np.random.Generator
                            ) -> tuple[np.ndarray, np.ndarray]:
        """(actions (B, A) float32 raw units, predicted return-to-go G (B,) float32 raw units)."""
        x = self._solve(obs, rng).x
        a = self.spec.action_dim
        return self.spec.stats.unnormalize_action(x[:, :a]), self.spec.stats.unnormalize_return(x[:, a])

    def _argmin_metadata(self) -> dict[str, Any]:
        c = self.config
        cfg = c.langevin_config() if c.method == "langevin" else c.dfo_config()
        return self._base_metadata(c.method, c.eta_inv, cfg)
