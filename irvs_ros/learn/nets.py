"""Networks for implicit (energy-based) and explicit policies.

- `DenseNet`: ReLU MLP or pre-activation ResNet of dense layers (IBC appendix E.1), optional dropout and
  spectral normalization.
- `ConvMaxPool`: the 4-layer image encoder of IBC appendix E.2 (3x3 convs with 32-64-128-256 features
  interleaved with max-pooling, optional CoordConv, spatial soft-argmax or global average pooling). It takes
  raw uint8 images (B, H, W, 3) so an exported graph does too.
- `ObservationEncoder`: normalized state (+) image features -> one vector `feat` (B, F), computed once per
  decision (late fusion).
- `EnergyHead`: E(feat, candidates) -> (B, N) for N candidates per observation, with an analytic input
  gradient `energy_and_grad` so that an exported Langevin graph needs no autograd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from irvs_ros.learn.config_schema import ConfigError
from irvs_ros.runtime.spec import NormStats, ObsSpec, PolicySpec, SpecError

ImagePooling = Literal["spatial_softmax", "avg"]
IBC_CONV_CHANNELS = (32, 64, 128, 256)  # IBC appendix E.2


def _check_dense_args(in_dim: int, out_dim: int, width: int, depth: int, resnet: bool, dropout: float) -> None:
    if in_dim < 1 or out_dim < 1:
        raise ValueError(f"DenseNet needs in_dim >= 1 and out_dim >= 1, got in_dim={in_dim}, out_dim={out_dim}")
    if width < 1 or depth < 1:
        raise ValueError(f"DenseNet needs width >= 1 and depth >= 1, got width={width}, depth={depth}")
    if resnet and depth % 2:
        raise ValueError(f"a ResNet's depth counts dense layers, two per residual block: expected an even "
                         f"depth, got {depth}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


class DenseNet(nn.Module):
    """ReLU MLP or pre-activation ResNet: (..., in_dim) -> (..., out_dim).

    MLP:    h = relu(L_0 x); h = relu(L_k h) for k = 1..depth-1; y = L_out h.
    ResNet: h = L_0 x (projection); depth / 2 blocks h = h + L_b(relu(L_a(relu(h)))); y = L_out relu(h).
    `width x depth` follows IBC's tables: depth counts the hidden dense layers of the given width.
    Dropout (rate `dropout`) follows each hidden ReLU during training only. With `spectral_norm` every
    dense layer is spectrally normalized (Miyato et al.; IBC B.3.1): the net is then at most 1-Lipschitz (MLP) or
    2^(depth/2)-Lipschitz (ResNet) in its input, which bounds how steeply an energy can rise around the data.
    """

    def __init__(self, in_dim: int, out_dim: int, width: int, depth: int, resnet: bool = False,
                 dropout: float = 0.0, spectral_norm: bool = False) -> None:
        super().__init__()
        _check_dense_args(in_dim, out_dim, width, depth, resnet, dropout)
        self.in_dim, self.out_dim, self.width, self.depth = in_dim, out_dim, width, depth
        self.resnet = resnet
        self.dropout = dropout

        def dense(i: int, o: int) -> nn.Module:
            layer = nn.Linear(i, o)
            return _spectral_norm(layer) if spectral_norm else layer

        self.inp = dense(in_dim, width)
        self.hidden = nn.ModuleList(dense(width, width) for _ in range(depth if resnet else depth - 1))
        self.out = dense(width, out_dim)

    def plain_copy(self) -> DenseNet:
        """A new eval-mode DenseNet without spectral-norm parametrizations whose weights equal this one's
        current (eval) weights; for export, where the normalized weights are just weights."""
        copy = DenseNet(self.in_dim, self.out_dim, self.width, self.depth, self.resnet, self.dropout, False)
        copy = copy.to(self.inp.bias.device, self.inp.bias.dtype)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            for dst, (w, b) in zip((copy.inp, *copy.hidden, copy.out), self.weights(), strict=True):
                dst.weight.copy_(w)
                dst.bias.copy_(b)
        self.train(was_training)
        return copy.eval()

    def _drop(self, h: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(h, self.dropout, self.training) if self.dropout > 0 else h

    def trunk(self, pre0: torch.Tensor) -> torch.Tensor:
        """Hidden layers after the first dense layer's pre-activation `pre0` (..., width) -> (..., width)."""
        if self.resnet:
            h = pre0
            for k in range(0, len(self.hidden), 2):
                y = self.hidden[k](self._drop(torch.relu(h)))
                y = self.hidden[k + 1](self._drop(torch.relu(y)))
                h = h + y
            return self._drop(torch.relu(h))
        h = self._drop(torch.relu(pre0))
        for layer in self.hidden:
            h = self._drop(torch.relu(layer(h)))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk(self.inp(x)))

    # --- analytic input gradient (no autograd), used by EnergyHead ------------------------------------
    def weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, bias) of [inp, *hidden, out], each read once (spectral norm computed once per call)."""
        return [(m.weight, m.bias) for m in (self.inp, *self.hidden, self.out)]

    def trunk_with_cache(self, pre0: torch.Tensor, params: list[tuple[torch.Tensor, torch.Tensor]]
                         ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Deterministic (no dropout) `trunk` that also returns the pre-activations the backward pass needs."""
        hidden = params[1:-1]
        if self.resnet:
            h, cache = pre0, []
            for k in range(0, len(hidden), 2):
                (wa, ba), (wb, bb) = hidden[k], hidden[k + 1]
                pre_a = torch.matmul(torch.relu(h), wa.t()) + ba
                cache += [h, pre_a]
                h = h + torch.matmul(torch.relu(pre_a), wb.t()) + bb
            cache.append(h)
            return torch.relu(h), cache
        pres = [pre0]
        for w, b in hidden:
            pres.append(torch.matmul(torch.relu(pres[-1]), w.t()) + b)
        return torch.relu(pres[-1]), pres

    def trunk_backward(self, g: torch.Tensor, cache: list[torch.Tensor],
                       params: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """d(out)/d(pre0) given g = d(out)/d(trunk output) (..., width); reverse of `trunk_with_cache`."""
        hidden = params[1:-1]
        if self.resnet:
            g = g * (cache[-1] > 0).to(g.dtype)
            for k in range(len(hidden) - 2, -1, -2):
                (wa, _), (wb, _) = hidden[k], hidden[k + 1]
                h_in, pre_a = cache[k], cache[k + 1]
                gy = torch.matmul(g, wb) * (pre_a > 0).to(g.dtype)
                g = g + torch.matmul(gy, wa) * (h_in > 0).to(g.dtype)
            return g
        for i in range(len(hidden), 0, -1):
            g = torch.matmul(g * (cache[i] > 0).to(g.dtype), hidden[i - 1][0])
        return g * (cache[0] > 0).to(g.dtype)


class EnergyHead(nn.Module):
    """Energy E(feat, y) of N candidates y per observation feature: (B, F), (B, N, D) -> (B, N).

    A `DenseNet` on concat(feat, y) with one output. Its first layer is split into a feature part,
    applied once per observation, and a candidate part, applied to every candidate (late fusion).
    """

    def __init__(self, feat_dim: int, var_dim: int, width: int, depth: int, resnet: bool = False,
                 dropout: float = 0.0, spectral_norm: bool = False) -> None:
        super().__init__()
        if feat_dim < 0 or var_dim < 1:
            raise ValueError(f"EnergyHead needs feat_dim >= 0 and var_dim >= 1, got {feat_dim}, {var_dim}")
        self.feat_dim, self.var_dim = feat_dim, var_dim
        self.net = DenseNet(feat_dim + var_dim, 1, width, depth, resnet, dropout, spectral_norm)

    def plain_copy(self) -> EnergyHead:
        """Eval-mode copy with spectral norm folded into plain weights (see `DenseNet.plain_copy`)."""
        net = self.net
        copy = EnergyHead(self.feat_dim, self.var_dim, net.width, net.depth, net.resnet, net.dropout, False)
        copy.net = net.plain_copy()
        return copy.eval()

    def _check(self, feat: torch.Tensor, y: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # shapes are symbolic in an exported graph; checked when run eagerly
            return
        if feat.dim() != 2 or feat.shape[1] != self.feat_dim:
            raise ValueError(f"feat must be (B, {self.feat_dim}), got {tuple(feat.shape)}")
        if y.dim() != 3 or y.shape[2] != self.var_dim or y.shape[0] != feat.shape[0]:
            raise ValueError(f"candidates must be (B={feat.shape[0]}, N, {self.var_dim}), got {tuple(y.shape)}")

    def _pre0(self, feat: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        f = torch.matmul(feat, w[:, : self.feat_dim].t()) + b  # (B, width): once per observation
        return f.unsqueeze(1) + torch.matmul(y, w[:, self.feat_dim:].t())  # (B, N, width)

    def forward(self, feat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Energies (B, N); dropout active in training mode."""
        self._check(feat, y)
        w, b = self.net.inp.weight, self.net.inp.bias
        return self.net.out(self.net.trunk(self._pre0(feat, y, w, b))).squeeze(-1)

    def energy_and_grad(self, feat: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(energies (B, N), dE/dy (B, N, D)) by a hand-written backward pass; no dropout.

        Built from differentiable torch ops, so the gradient can itself be differentiated with respect to
        the parameters (gradient penalty) and traced into ONNX (no autograd in the graph).
        """
        self._check(feat, y)
        params = self.net.weights()
        w0, b0 = params[0]
        pre0 = self._pre0(feat, y, w0, b0)
        h, cache = self.net.trunk_with_cache(pre0, params)
        w_out, b_out = params[-1]
        energy = (torch.matmul(h, w_out.t()) + b_out).squeeze(-1)
        g = self.net.trunk_backward(w_out[0].expand_as(h), cache, params)
        grad = torch.matmul(g, w0[:, self.feat_dim:])
        return energy, grad


class SpatialSoftArgmax(nn.Module):
    """Expected (x, y) image coordinate in [-1, 1] of each channel's softmax: (B, C, H, W) -> (B, 2C)."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        ys, xs = torch.meshgrid(torch.linspace(-1.0, 1.0, height), torch.linspace(-1.0, 1.0, width), indexing="ij")
        self.register_buffer("coords", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        attn = torch.softmax(x.reshape(b, c, -1), dim=-1)  # (B, C, HW)
        return torch.matmul(attn, self.coords).reshape(b, 2 * c)


class ConvMaxPool(nn.Module):
    """IBC's "4-layer ConvMaxPool" image encoder: uint8 (B, H, W, 3) -> features (B, out_dim).

    conv3x3(32) - pool - conv3x3(64) - pool - conv3x3(128) - pool - conv3x3(256), ReLU after each conv,
    2x2 max-pooling, then spatial soft-argmax (keypoints, out_dim = 2 * 256) or global average pooling
    (out_dim = 256). CoordConv appends two pixel-coordinate channels in [-1, 1] to the input.
    `channels` sets the conv widths (their number = conv layers); `stem_stride` 2 makes the first conv strided
    (a quarter of the compute of every layer, for CPU training; IBC's encoder is stride 1).
    """

    def __init__(self, image_shape: tuple[int, int, int], coord_conv: bool = True,
                 pooling: ImagePooling = "spatial_softmax", channels: tuple[int, ...] = IBC_CONV_CHANNELS,
                 stem_stride: int = 1) -> None:
        super().__init__()
        h, w, c = image_shape
        if c != 3 or h < 8 or w < 8:
            raise ValueError(f"ConvMaxPool needs images (H >= 8, W >= 8, 3), got {image_shape}")
        if not channels or min(channels) < 1 or stem_stride not in (1, 2):
            raise ValueError(f"ConvMaxPool needs channels >= 1 and stem_stride 1 or 2, got {channels}, {stem_stride}")
        if pooling not in ("spatial_softmax", "avg"):
            raise ValueError(f"pooling must be 'spatial_softmax' or 'avg', got {pooling!r}")
        self.image_shape = (h, w, c)
        self.coord_conv, self.pooling = coord_conv, pooling
        if coord_conv:
            ys, xs = torch.meshgrid(torch.linspace(-1.0, 1.0, h), torch.linspace(-1.0, 1.0, w), indexing="ij")
            self.register_buffer("coord_map", torch.stack([xs, ys])[None], persistent=False)  # (1, 2, H, W)
        layers: list[nn.Module] = []
        in_ch = 3 + (2 if coord_conv else 0)
        for i, out_ch in enumerate(channels):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, stride=stem_stride if i == 0 else 1), nn.ReLU()]
            in_ch = out_ch
        self.convs = nn.Sequential(*layers)
        fh, fw = (h - 1) // stem_stride + 1, (w - 1) // stem_stride + 1
        for _ in range(len(channels) - 1):
            fh, fw = fh // 2, fw // 2
        if pooling == "spatial_softmax":
            self.pool: nn.Module = SpatialSoftArgmax(fh, fw)
            self.out_dim = 2 * in_ch
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.out_dim = in_ch

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        if self.coord_conv:
            x = torch.cat([x, self.coord_map.expand(x.shape[0], -1, -1, -1)], dim=1)
        x = self.pool(self.convs(x))
        return x.reshape(x.shape[0], -1)


class ObservationEncoder(nn.Module):
    """Raw observation -> feature vector `feat` (B, F): normalized state concatenated with image features.

    state: (B, S) float32 raw units (normalized inside with the dataset mean / std buffers).
    image: (B, H, W, 3) uint8 RGB.
    F = S + image encoder out_dim (each part only when the spec has it).
    """

    def __init__(self, obs: ObsSpec, stats: NormStats, coord_conv: bool = True,
                 pooling: ImagePooling = "spatial_softmax", channels: tuple[int, ...] = IBC_CONV_CHANNELS,
                 stem_stride: int = 1) -> None:
        super().__init__()
        if len(stats.state_mean) != obs.state_dim:
            raise SpecError(f"stats.state_mean has length {len(stats.state_mean)}, expected {obs.state_dim}")
        self.state_dim = obs.state_dim
        self.register_buffer("state_mean", torch.as_tensor(np.asarray(stats.state_mean, np.float32)))
        self.register_buffer("state_std", torch.as_tensor(np.asarray(stats.state_std, np.float32)))
        self.image: ConvMaxPool | None = None
        if obs.image_shape is not None:
            self.image = ConvMaxPool(obs.image_shape, coord_conv, pooling, tuple(channels), stem_stride)
        self.out_dim = self.state_dim + (self.image.out_dim if self.image is not None else 0)

    def forward(self, state: torch.Tensor | None = None, image: torch.Tensor | None = None) -> torch.Tensor:
        parts = []
        if self.state_dim > 0:
            if state is None:
                raise SpecError(f"this encoder needs a state (B, {self.state_dim})")
            parts.append((state.to(torch.float32) - self.state_mean) / self.state_std)
        if self.image is not None:
            if image is None:
                raise SpecError(f"this encoder needs an image (B, {', '.join(map(str, self.image.image_shape))})")
            parts.append(self.image(image))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


@dataclass
class ImageEncoderFields:
    """Image encoder hyper-parameters shared by every algorithm config (ignored by state-only policies).

    coord_conv, image_pooling: IBC E.2 (CoordConv; spatial soft-argmax keypoints or average pooling).
    image_channels: ConvMaxPool conv widths (IBC: 32-64-128-256). image_stem_stride: 2 = strided first conv.
    """

    coord_conv: bool = True
    image_pooling: ImagePooling = "spatial_softmax"
    image_channels: tuple[int, ...] = IBC_CONV_CHANNELS
    image_stem_stride: int = 1

    def validate_image(self) -> None:
        if not self.image_channels or min(self.image_channels) < 1:
            raise ConfigError(f"image_channels: expected widths >= 1, got {list(self.image_channels)}")
        if self.image_stem_stride not in (1, 2):
            raise ConfigError(f"image_stem_stride: must be 1 or 2, got {self.image_stem_stride}")

    def observation_encoder(self, spec: PolicySpec) -> ObservationEncoder:
        """The encoder of `spec`'s observations with these options."""
        return ObservationEncoder(spec.obs, spec.stats, self.coord_conv, self.image_pooling, self.image_channels,
                                  self.image_stem_stride)
