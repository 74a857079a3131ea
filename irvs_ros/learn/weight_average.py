"""Exponential moving average (EMA) of a model's trained parameters, kept beside the raw weights.

Why: an energy model's argmin picks among modes, so a small weight change late in training can flip which mode
wins at a state (push_insert evaluations swung 0-70% between checkpoints 2k steps apart). Averaging the weights
over the last ~1/(1-decay) steps gives a policy that does not depend on where the last few noisy gradient steps
left it (Polyak averaging; the EMA that diffusion_policy and LeRobot evaluate and ship).

The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so early checkpoints are not dominated by
the initial weights. Buffers (normalizer statistics, ...) are not averaged: they are not trained, and the
averaged model takes them from the raw one. The average never touches the optimizer or any RNG, so a run with
the EMA on trains bit-identical raw weights to the same run without it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class WeightAverageError(ValueError):
    """An EMA state does not fit the model it is loaded into, or a decay is out of range."""


def check_decay(decay: float) -> float:
    """`decay` as a float when it is in [0, 1) (0 = no averaging), else WeightAverageError."""
    decay = float(decay)
    if not (math.isfinite(decay) and 0.0 <= decay < 1.0):
        raise WeightAverageError(f"ema_decay: must be in [0, 1) (0 = off), got {decay}")
    return decay


class WeightAverage:
    """EMA of `module`'s floating-point parameters; `update(module)` after each optimizer step."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = check_decay(decay)
        self.updates = 0
        self.params: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in module.named_parameters() if p.is_floating_point()}

    def current_decay(self) -> float:
        """The decay the next update uses (warm-up, then `decay`)."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = self.current_decay()
        for name, p in module.named_parameters():
            if name in self.params:
                self.params[name].mul_(d).add_(p.detach(), alpha=1.0 - d)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint (CPU tensors; loadable with torch.load(weights_only=True))."""
        return {"decay": self.decay, "updates": self.updates,
                "params": {k: v.detach().cpu().clone() for k, v in self.params.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = sorted(set(self.params) - set(state["params"]))
        extra = sorted(set(state["params"]) - set(self.params))
        if missing or extra:
            raise WeightAverageError(f"EMA state does not fit the model: missing {missing}, unexpected {extra}")
        self.decay, self.updates = check_decay(state["decay"]), int(state["updates"])
        for name, value in state["params"].items():
            if value.shape != self.params[name].shape:
                raise WeightAverageError(f"EMA parameter {name}: shape {tuple(value.shape)}, the model has "
                                         f"{tuple(self.params[name].shape)}")
            self.params[name].copy_(value)

    @contextlib.contextmanager
    def swapped_into(self, module: nn.Module) -> Iterator[nn.Module]:
        """Run a block (evaluation) with the averaged parameters in `module`; the raw ones come back after."""
        raw = {name: p.detach().clone() for name, p in module.named_parameters() if name in self.params}
        _copy_into(module, self.params)
        try:
            yield module
        finally:
            _copy_into(module, raw)


@torch.no_grad()
def _copy_into(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Overwrite `module`'s parameters named in `tensors` with their values, in place."""
    for name, p in module.named_parameters():
        if name in tensors:
            p.copy_(tensors[name])


def averaged_state_dict(model_state: dict[str, Any], ema_state: dict[str, Any] | None) -> dict[str, Any]:
    """A full `state_dict` with the EMA's parameters over the raw model's (buffers from the raw model)."""
    if not ema_state:
        return dict(model_state)
    unknown = sorted(set(ema_state["params"]) - set(model_state))
    if unknown:
        raise WeightAverageError(f"EMA state names parameters the model lacks: {unknown}")
    return {**model_state, **ema_state["params"]}
