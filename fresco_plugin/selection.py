"""Convergence scores and the choice of which tokens to promote."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .registry import register_score

__all__ = ["StepRecord", "select_promotions", "divisible_count"]


@dataclass(frozen=True)
class StepRecord:
    """What one denoising step leaves for the scores, in the layout of that step."""

    latents: torch.Tensor  # x_t before the step, (B, N, D)
    denoised: torch.Tensor  # predicted clean latent x0 = x_t - sigma * v, (B, N, D)


def _step_variance(values: Sequence[torch.Tensor]) -> torch.Tensor:
    stacked = torch.stack([v.float() for v in values])
    # written out: Tensor.var over the leading (step) dimension is ~20x slower on CPU than this
    deviation = stacked - stacked.mean(dim=0)
    return (deviation.square().sum(dim=0) / (stacked.shape[0] - 1)).mean(dim=-1)


@register_score("x0_step_variance", min_history=2)
def x0_step_variance(history: Sequence[StepRecord]) -> torch.Tensor:
    """How much each token's predicted clean latent still moves across the recorded steps (low = settled)."""
    return _step_variance([record.denoised for record in history])


@register_score("latent_step_variance", min_history=2)
def latent_step_variance(history: Sequence[StepRecord]) -> torch.Tensor:
    """Variance of the noisy latent itself across the recorded steps."""
    return _step_variance([record.latents for record in history])


@register_score("channel_variance", min_history=1)
def channel_variance(history: Sequence[StepRecord]) -> torch.Tensor:
    """Variance across the channels of the latest predicted clean token (flat tokens score low)."""
    return history[-1].denoised.float().var(dim=-1, unbiased=True)


def divisible_count(wanted: int, candidates: int, tokens: int, multiple: int, unit: int = 1) -> int:
    """The promotion count nearest ``wanted`` (within ``0..candidates``) that keeps the token count a multiple of
    ``multiple``: promoting ``k`` units of ``unit`` tokens each turns ``tokens`` into ``tokens + 3 * k * unit``. Ties
    go to the smaller count."""
    if multiple == 1:
        return wanted
    for offset in range(multiple + 1):
        for k in (wanted - offset, wanted + offset):
            if 0 <= k <= candidates and (tokens + 3 * k * unit) % multiple == 0:
                return k
    return 0


def select_promotions(
    scores: torch.Tensor,
    candidates: torch.Tensor,
    *,
    ratio: float,
    threshold: float | None,
    order: str,
    token_multiple: int = 1,
    tubes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask ``(B, N)`` of the candidates to promote.

    With a ratio every image promotes the same count, ``round(ratio * candidates)``. With a threshold each image
    promotes the candidates whose score passes it; the caller samples such images one by one. Either count is moved to
    the nearest one that keeps the token count a multiple of ``token_multiple`` (a sequence-parallel degree). Ties are
    broken by token index (a stable sort), so the choice is deterministic.

    ``tubes`` (``(B, N)`` int64, an id per candidate's place in its frame) makes the tokens of one place in every frame
    decide together on their mean score, so a promotion boundary stays where it is from frame to frame; the ratio and
    the threshold then count tubes.
    """
    tokens, unit, token_candidates = candidates.shape[1], 1, candidates
    if tubes is not None:
        scores, candidates, unit = _tube_scores(scores, candidates, tubes)
    settled_first = order == "settled_first"
    key = scores.float() if settled_first else -scores.float()
    key = torch.where(candidates, key, torch.inf)
    num_candidates = candidates.sum(dim=1)
    if threshold is None:
        count = torch.round(num_candidates.double() * ratio).long()
    else:
        passes = (scores <= threshold) if settled_first else (scores >= threshold)
        count = (passes & candidates).sum(dim=1)
    if token_multiple > 1:
        count = torch.tensor([divisible_count(int(k), int(n), tokens, token_multiple, unit)
                              for k, n in zip(count.tolist(), num_candidates.tolist())], device=count.device)
    ranks = torch.argsort(torch.argsort(key, dim=1, stable=True), dim=1)
    chosen = (ranks < count.unsqueeze(1)) & candidates
    return chosen if tubes is None else chosen.gather(1, tubes) & token_candidates


def _tube_scores(scores: torch.Tensor, candidates: torch.Tensor,
                 tubes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per tube id: the mean score of its candidate tokens, whether it has any, and the tokens a tube holds."""
    width = int(tubes.max()) + 1
    held = torch.zeros(scores.shape[0], width, device=scores.device).scatter_add_(1, tubes, candidates.float())
    total = torch.zeros_like(held).scatter_add_(1, tubes, torch.where(candidates, scores.float(), 0.0))
    has = held > 0
    sizes = held[has].unique()
    if sizes.numel() > 1:
        raise ValueError(f"promotion by tube needs tubes of one length; these hold {sizes.long().tolist()} tokens")
    return total / held.clamp(min=1), has, int(sizes[0]) if sizes.numel() else 1
