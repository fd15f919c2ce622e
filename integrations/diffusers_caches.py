"""Which diffusers feature caches compose with Fresco, and the refusal for those that cannot.

Fresco changes the token count inside one generation (every stage switch and promotion round). The runners reset the
transformer's stateful caches whenever it changes, and give every image its own cache context when the images of a
batch hold different token layouts. With that:

- ``FirstBlockCacheConfig``, ``TaylorSeerCacheConfig``, ``TextKVCacheConfig`` and ``SeaCacheConfig`` compose: each
  starts over at a new layout and caches again within it.
- ``PyramidAttentionBroadcastConfig`` composes unless a batch can split into per-image layouts (promotion rounds with
  more than one image): its state is one per transformer, not per cache context, so images would share it.
- ``MagCacheConfig`` is refused: its skip ratios are calibrated per step of one fixed-size run, and after a token-count
  change it either misaligns them (reset) or adds a stale residual to some tokens without a word (no reset).
- ``FasterCacheConfig`` is refused: it extrapolates block outputs and frequency deltas across steps at one resolution
  (and does not run on FLUX even without Fresco).

The check runs at ``apply_fresco`` (a cache enabled earlier) and when a Fresco call starts (a cache enabled later).
``transformer.enable_cache`` itself is left alone: other pipelines may share the transformer (``from_pipe``) and run
any cache stock.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_cache"]

_REFUSED = {
    "MagCacheConfig": "MagCache's skip ratios are calibrated per step of one fixed-size run; Fresco changes the token "
                      "count between stages, which would misalign them or reuse a stale residual",
    "FasterCacheConfig": "FasterCache extrapolates block outputs and frequency deltas across steps at one resolution; "
                         "Fresco changes the token count between stages",
}
_ALTERNATIVE = "use FirstBlockCacheConfig or TaylorSeerCacheConfig with Fresco, or call transformer.disable_cache()"


def check_cache(cache_config: Any, *, images: int | None = None, promotion_rounds: int = 0) -> None:
    """Raise ``ValueError`` for a cache config that cannot run with Fresco (``images``: the call's batch, if known)."""
    if cache_config is None:
        return
    name = type(cache_config).__name__
    if name in _REFUSED:
        raise ValueError(f"{name} does not compose with Fresco: {_REFUSED[name]}; {_ALTERNATIVE}")
    if name == "PyramidAttentionBroadcastConfig" and promotion_rounds > 0 and images is not None and images > 1:
        raise ValueError(
            "PyramidAttentionBroadcastConfig keeps one attention state per transformer, shared by every image, while "
            f"Fresco's promotion rounds give each of the {images} images its own token layout; generate one image per "
            "call, set FrescoConfig(promotion_rounds=0), or use FirstBlockCacheConfig"
        )
