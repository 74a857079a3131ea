"""Training losses of energy-based policies: InfoNCE (IBC sec. 2, IRvS eq. 2) and IBC's gradient penalty (B.3.1)."""

from __future__ import annotations

import torch


def info_nce(energies: torch.Tensor, positive_index: torch.Tensor | int = 0) -> torch.Tensor:
    """Mean InfoNCE loss: -log softmax(-E)[positive] over the positive and its counter-examples.

    energies: (B, M) energies of M = 1 + N_neg candidates per sample.
    positive_index: the positive's column, an int for all rows or a (B,) long tensor.
    Returns a scalar (mean over the batch; IBC and IRvS write the sum, which only rescales the learning rate).
    """
    if energies.dim() != 2 or energies.shape[1] < 2:
        raise ValueError(f"energies must be (B, M) with M >= 2 (positive + counter-examples), "
                         f"got {tuple(energies.shape)}")
    if isinstance(positive_index, int):
        if not 0 <= positive_index < energies.shape[1]:
            raise ValueError(f"positive_index {positive_index} outside [0, {energies.shape[1]})")
        positive_index = torch.full((energies.shape[0],), positive_index, dtype=torch.long, device=energies.device)
    elif positive_index.shape != (energies.shape[0],):
        raise ValueError(f"positive_index must be (B={energies.shape[0]},), got {tuple(positive_index.shape)}")
    return torch.nn.functional.cross_entropy(-energies, positive_index.to(energies.device))


def gradient_penalty(grad: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """IBC B.3.1: mean over samples and counter-examples of max(0, ||dE/dy||_inf - margin)^2.

    grad: (B, N, D) energy gradients at the counter-examples (IBC uses only the chain's final step).
    Returns a scalar. The mean over (B, N) matches the InfoNCE mean over B, i.e. per training sample the
    penalty is averaged over its counter-examples.
    """
    if grad.dim() != 3:
        raise ValueError(f"grad must be (B, N, D), got {tuple(grad.shape)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    norm = grad.abs().amax(dim=-1)
    return torch.relu(norm - margin).square().mean()
