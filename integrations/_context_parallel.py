"""Context parallelism as Fresco sees it, and the probes that find it on a transformer.

An engine that splits a transformer's sequence over ranks (diffusers' ``enable_parallelism``, ParaAttention's
``parallelize_pipe``, xDiT's runner path) answers one question through its probe: given a transformer, which split
does it apply, if any. The runner asks every registered probe and follows the first split found; a new engine
registers its own with :func:`register_context_parallel_probe` and the runner does not change.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from fresco_plugin.config import FrescoConfig
from fresco_plugin.layout import TokenGeometry
from fresco_plugin.schedule import StagePlan, plan_token_counts

__all__ = ["ContextParallel", "context_parallel_of", "register_context_parallel_probe", "ulysses_padding_mask"]


class ContextParallel:
    """One transformer's sequence split: Ulysses and ring degrees and the process group they span.

    The transformer splits the image and text sequences across ranks in every forward and gathers its output, so
    each forward's image sequence must divide the degree: promotion counts round to keep it so, and a stage grid that
    cannot is padded with tokens masked out of every key where the model and engine allow it (``masks_pads``),
    refused elsewhere. Every rank must take the same promotion decision: rank 0's is broadcast, so no rank can drift
    even where floating point differs.
    """

    def __init__(self, ulysses: int, ring: int, group: Any, masks_pads: bool = False):
        self.ulysses, self.ring, self.group = ulysses, ring, group
        self.degree = ulysses * ring
        # whether the engine's attention takes a whole-sequence key mask, so pad tokens can be hidden (Ulysses
        # attention in diffusers and ParaAttention; ring attention and xDiT's attention have no such path)
        self.masks_pads = masks_pads

    def check(self, transformer: Any, config: FrescoConfig, stages: list[StagePlan], geometry: TokenGeometry,
              text_tokens: int, can_pad: bool = False, appended_tokens: int = 0) -> None:
        """Refuse, before any forward, a split this call cannot keep even. ``appended_tokens``: tokens every forward
        appends after the image's own (an editing model's reference picture), split with them."""
        heads = transformer.config.num_attention_heads
        if heads % self.ulysses:
            raise ValueError(f"the transformer has {heads} attention heads, which Ulysses degree {self.ulysses} does "
                             "not divide; use a degree that divides the head count")
        if text_tokens % self.degree:
            raise ValueError(f"{text_tokens} text tokens do not split over context-parallel degree {self.degree}; "
                             f"use a max_sequence_length that is a multiple of {self.degree}")
        if appended_tokens % self.degree:
            raise ValueError(f"the {appended_tokens} reference-image tokens do not split over context-parallel degree "
                             f"{self.degree} (stock's sequence would not split either); resize the reference image so "
                             f"that its tokens number a multiple of {self.degree}")
        # with a threshold the counts depend on the image, but they round the same way; the grids are what can fail
        counts = plan_token_counts(replace(config, promotion_threshold=None), stages, geometry.rows, geometry.cols,
                                   geometry.num_frames)
        uneven = sorted({n for n in counts if n % self.degree})
        if uneven and not can_pad:
            raise ValueError(f"Fresco's stages would hold {uneven} image tokens, which context-parallel degree "
                             f"{self.degree} does not divide; choose a height and width whose token grid at every "
                             "stage scale is a multiple of the degree (Ulysses attention without ring pads such "
                             "stages with masked tokens for FLUX under diffusers or ParaAttention and for "
                             "HunyuanVideo under diffusers)")

    def rank0_decides(self, promote: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        decision = promote.to(torch.uint8)
        source = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        dist.broadcast(decision, src=source, group=self.group)
        return decision.bool()


Probe = Callable[[Any], ContextParallel | None]


@dataclass(frozen=True)
class _Registered:
    engine: str
    probe: Probe | str  # "module:function", imported the first time a transformer passes ``applies``
    applies: Callable[[Any], bool] | None

    def find(self, transformer: Any) -> ContextParallel | None:
        if self.applies is not None and not self.applies(transformer):
            return None
        probe = self.probe
        if isinstance(probe, str):
            module, _, name = probe.partition(":")
            probe = getattr(importlib.import_module(module), name)
        return probe(transformer)


_PROBES: list[_Registered] = []


def register_context_parallel_probe(engine: str, probe: Probe | str, *,
                                    applies: Callable[[Any], bool] | None = None) -> None:
    """Teach Fresco an engine's sequence parallelism.

    ``probe(transformer)`` returns the :class:`ContextParallel` split the engine applies to ``transformer``, ``None``
    when it applies none, or raises ``ValueError`` naming the fix when it applies one Fresco cannot follow. It may be
    given as ``"module:function"``, imported on first use; ``applies(transformer)``, a cheap test, then keeps an
    engine that cannot be imported everywhere (xDiT needs a GPU) from being imported for other transformers.
    Registering an engine name again replaces its probe.
    """
    if not engine or not isinstance(engine, str):
        raise ValueError(f"engine={engine!r}: give the engine's name")
    if not (callable(probe) or (isinstance(probe, str) and ":" in probe)):
        raise ValueError(f"probe={probe!r}: give a callable or 'module:function'")
    entry = _Registered(engine, probe, applies)
    for index, registered in enumerate(_PROBES):
        if registered.engine == engine:
            _PROBES[index] = entry
            return
    _PROBES.append(entry)


def context_parallel_of(transformer: Any) -> ContextParallel | None:
    """The sequence split the first registered engine reports for ``transformer``, or ``None``."""
    for registered in _PROBES:
        found = registered.find(transformer)
        if found is not None:
            return found
    return None


def _diffusers_context_parallel(transformer: Any) -> ContextParallel | None:
    """diffusers' ``transformer.enable_parallelism(config=ContextParallelConfig(...))`` (and our HunyuanVideo plan,
    which goes through it)."""
    parallel = getattr(transformer, "_parallel_config", None)
    config = getattr(parallel, "context_parallel_config", None)
    if config is None or config.ulysses_degree * config.ring_degree == 1:
        return None
    flattened = getattr(config, "_flattened_mesh", None)
    return ContextParallel(config.ulysses_degree, config.ring_degree,
                           flattened.get_group() if flattened is not None else None,
                           masks_pads=config.ring_degree == 1)


def ulysses_padding_mask(text_tokens: int, image_tokens: int, padded_tokens: int, degree: int,
                         device: torch.device) -> torch.Tensor:
    """The key mask that hides ``padded_tokens - image_tokens`` pad tokens appended to the image sequence, in the
    order Ulysses attention assembles the joint sequence: rank after rank, each rank's text shard then its image
    shard. Shape ``(1, 1, 1, text + padded)``, True where a key may be attended to."""
    image = (torch.arange(padded_tokens, device=device) < image_tokens).view(degree, padded_tokens // degree)
    text = torch.ones(degree, text_tokens // degree, dtype=torch.bool, device=device)
    return torch.cat([text, image], dim=1).view(1, 1, 1, -1)


register_context_parallel_probe("xdit", "fresco_plugin.integrations.xdit:context_parallel",
                                applies=lambda transformer: type(transformer).__module__.startswith("xfuser."))
register_context_parallel_probe("para_attention", "fresco_plugin.integrations.para_attention:context_parallel")
register_context_parallel_probe("diffusers", _diffusers_context_parallel)
