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

The check runs at ``apply_fresco`` (a cache enabled earlier), at ``transformer.enable_cache`` (a cache enabled later:
the runner guards that method on this transformer instance until ``remove_fresco``), and at every call.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_cache", "guard_enable_cache", "unguard_enable_cache"]

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


def guard_enable_cache(transformer: Any, promotion_rounds: int) -> None:
    """Make ``transformer.enable_cache`` refuse, on this instance only, the caches Fresco cannot run with."""
    if not hasattr(transformer, "enable_cache"):
        return
    original = transformer.enable_cache

    def enable_cache(config: Any) -> None:
        check_cache(config, promotion_rounds=promotion_rounds)
        original(config)

    enable_cache.__doc__ = original.__doc__
    enable_cache._fresco_guard = True  # type: ignore[attr-defined]
    transformer.enable_cache = enable_cache


def unguard_enable_cache(transformer: Any) -> None:
    guard = transformer.__dict__.get("enable_cache")
    if guard is not None and getattr(guard, "_fresco_guard", False):
        del transformer.enable_cache
