"""The whole acceleration stack in one call: quantized weights, Fresco, a feature cache.

    from diffusers.hooks import FirstBlockCacheConfig
    from torchao.quantization import Int8WeightOnlyConfig
    from fresco_plugin.integrations.stack import apply_stack, remove_stack

    apply_stack(pipe, "flux-dev-10x", cache=FirstBlockCacheConfig(threshold=0.05),
                quantization=Int8WeightOnlyConfig())
    image = pipe(prompt).images[0]
    remove_stack(pipe)  # cache off, Fresco off; the weights stay quantized

Everything is checked before anything changes (a cache Fresco cannot run with, a quantization this machine cannot
run), then applied in the one order that always works: quantize the transformer, apply Fresco, enable the cache.
``quantization`` is a torchao config (anything ``torchao.quantization.quantize_`` takes) or an optimum-quanto weight
type (``qint8``, ``qfloat8``; weights only: static activations need :func:`.quanto.calibrate_activations`).
Quantization cannot be undone in place: reload the transformer to get full-precision weights back.
"""

from __future__ import annotations

from typing import Any

import torch

from ..api import apply_fresco, fresco_config_of, remove_fresco
from ..config import FrescoConfig
from .diffusers_caches import check_cache

__all__ = ["apply_stack", "remove_stack"]

_FLOAT8_DYNAMIC = ("Float8DynamicActivationFloat8WeightConfig",)


def _quantizer(quantization: Any):
    """The function that quantizes a transformer in place with ``quantization``, after checking it can run here."""
    module = type(quantization).__module__ or ""
    name = type(quantization).__name__
    if module.startswith("torchao"):
        if name in _FLOAT8_DYNAMIC:
            capable = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
            if not capable:
                raise ValueError(
                    f"{name} needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper); on this machine use "
                    "Float8WeightOnlyConfig or Int8DynamicActivationInt8WeightConfig"
                )
        from torchao.quantization import quantize_

        return lambda transformer: quantize_(transformer, quantization)
    if module.startswith("optimum.quanto") and name == "qtype":
        from optimum.quanto import freeze, quantize

        def quanto_weights(transformer: torch.nn.Module) -> None:
            quantize(transformer, weights=quantization)
            freeze(transformer)

        return quanto_weights
    raise ValueError(
        f"apply_stack: quantization must be a torchao config (e.g. torchao.quantization.Int8WeightOnlyConfig()) or an "
        f"optimum-quanto weight type (optimum.quanto.qint8 / qfloat8), not {module}.{name}"
    )


def apply_stack(pipe: Any, fresco: FrescoConfig | str | None = None, *, cache: Any = None,
                quantization: Any = None) -> Any:
    """Quantize ``pipe.transformer`` (optional), apply Fresco, enable ``cache`` (optional, a diffusers cache config).
    Returns ``pipe``. Raises ``ValueError`` before changing anything when a part cannot run."""
    config = FrescoConfig.preset(fresco) if isinstance(fresco, str) else (fresco or FrescoConfig())
    if fresco_config_of(pipe) is not None:
        raise ValueError("Fresco is already applied to this pipeline; call remove_stack(pipe) first")
    transformer = pipe.transformer
    if cache is not None:
        if not hasattr(transformer, "enable_cache"):
            raise ValueError(f"{type(transformer).__name__} has no enable_cache (diffusers' CacheMixin)")
        if getattr(transformer, "is_cache_enabled", False):
            raise ValueError("the transformer already has a cache; call pipe.transformer.disable_cache() first, or "
                             "leave cache=None to keep it")
        check_cache(cache, promotion_rounds=config.promotion_rounds)
    quantize = _quantizer(quantization) if quantization is not None else None
    if quantize is not None:
        quantize(transformer)
    apply_fresco(pipe, config)
    if cache is not None:
        transformer.enable_cache(cache)
    return pipe


def remove_stack(pipe: Any) -> Any:
    """Turn the cache (if any) and Fresco off. Quantized weights stay quantized."""
    transformer = pipe.transformer
    if getattr(transformer, "is_cache_enabled", False):
        transformer.disable_cache()
    return remove_fresco(pipe)
