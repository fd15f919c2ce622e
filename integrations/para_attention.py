"""Fresco with ParaAttention's first-block cache (and its TaylorSeer mode) and its context parallelism.

Nothing here needs calling: turn ParaAttention on the way its README says (``apply_cache_on_pipe`` and/or
``parallelize_pipe``) and ``apply_fresco`` in either order. Supported range: para-attn 0.3.38 with diffusers 0.34
(ParaAttention does not run on newer diffusers: its issue #49); tested in its own environment by
``tests/para_attention/run.sh``.

Why Fresco has to know about it. ParaAttention keeps its cache settings in a wrapper it puts around the pipeline
class's ``__call__``, which opens one cache context per call; Fresco hosts its own denoising loop, so that wrapper
may never run. Fresco reads the settings back from the wrapper (or from the context it opened) and opens the
contexts itself: one per guidance branch and per image whose token layout differs from the batch's (so no image is
handed another's cached residual), all restarted whenever the token count changes (a stale residual, or TaylorSeer's
derivatives, belong to the old token set). Under context parallelism the image sequence must split evenly at every
stage and every rank must take the same promotion decision: :func:`context_parallel` is ParaAttention's probe for
:mod:`fresco_plugin.integrations._context_parallel`, with the mesh read from its transformer wrapper.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from ._context_parallel import ContextParallel

__all__ = ["ParaAttentionCaches", "context_parallel", "para_attention_caches", "para_attention_mesh",
           "rewrap_pipeline_class"]

# CacheContext fields that hold a run's state rather than its settings
_STATE_FIELDS = {"taylorseer", "alter_taylorseer", "buffers", "incremental_name_counters", "executed_steps",
                 "is_alter_cache"}


def _closure(function: Any) -> dict[str, Any]:
    function = getattr(function, "__func__", function)
    if getattr(function, "__closure__", None) is None:
        return {}
    return dict(inspect.getclosurevars(function).nonlocals)


def _is_para_attention(function: Any, part: str) -> bool:
    code = getattr(getattr(function, "__func__", function), "__code__", None)
    return code is not None and "para_attn" in code.co_filename and part in code.co_filename


def _wrappers(call: Callable[..., Any] | None) -> dict[str, dict[str, Any]]:
    """ParaAttention's ``__call__`` wrappers around ``call``, by kind (``cache``, ``parallel``), with the keyword
    arguments each was applied with (the cache's settings)."""
    found: dict[str, dict[str, Any]] = {}
    while call is not None and _is_para_attention(call, "para_attn"):
        names = _closure(call)
        if _is_para_attention(call, "first_block_cache"):
            found.setdefault("cache", dict(names.get("kwargs", {})))
        elif _is_para_attention(call, "context_parallel"):
            found.setdefault("parallel", {})
        call = names.get("original_call")
    return found


class ParaAttentionCaches:
    """ParaAttention cache contexts for one generation, one per name (guidance branch, or image of a split batch)."""

    def __init__(self, settings: dict[str, Any]):
        from para_attn.first_block_cache import utils

        self._utils = utils
        # each branch has its own context here, which is what the alternating cache emulates inside one context
        self.settings = {**settings, "enable_alter_cache": False}
        self.contexts: dict[str, Any] = {}

        self._steps_done = 0

    def reset(self, *, within_generation: bool = False) -> None:
        # fresh buffers, but within a generation the step count goes on: a warm-up covers its first steps, not each
        # stage's
        if within_generation:
            self._steps_done = max((c.executed_steps for c in self.contexts.values()), default=self._steps_done)
        else:
            self._steps_done = 0
        self.contexts.clear()

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        if name not in self.contexts:
            self.contexts[name] = self._utils.create_cache_context(**self.settings)
            self.contexts[name].executed_steps = self._steps_done
        with self._utils.cache_context(self.contexts[name]):
            yield


def para_attention_caches(pipe: Any) -> ParaAttentionCaches | None:
    """Contexts for ``pipe.transformer`` when ParaAttention's first-block cache is on it, else None."""
    if not getattr(pipe.transformer, "_is_cached", False):
        return None
    from para_attn.first_block_cache import utils

    current = utils.get_current_cache_context()  # its wrapper ran around this call (applied after Fresco)
    if current is not None:
        settings = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)
                    if f.init and f.name not in _STATE_FIELDS}
        return ParaAttentionCaches(settings)
    for cls in type(pipe).__mro__:
        settings = _wrappers(cls.__dict__.get("__call__")).get("cache")
        if settings is not None:
            return ParaAttentionCaches(settings)
    raise ValueError(
        "ParaAttention's first-block cache is on pipe.transformer, but its settings were not found on the pipeline: "
        "turn it on with para_attn.first_block_cache.diffusers_adapters.apply_cache_on_pipe(pipe, "
        "residual_diff_threshold=...), which Fresco reads them from"
    )


def para_attention_mesh(transformer: Any) -> tuple[Any, Any] | None:
    """The device mesh ``parallelize_pipe`` split this transformer over (dims batch, ring, ulysses) and its flattened
    sequence mesh, or None."""
    if not getattr(transformer, "_is_parallelized", False):
        return None
    forward = transformer.forward
    while forward is not None:
        names = _closure(forward)
        if _is_para_attention(forward, "context_parallel") and "seq_mesh" in names:
            return names["mesh"], names["seq_mesh"]
        forward = names.get("original_forward")  # the first-block cache wraps the parallel forward, or the reverse
    raise ValueError(
        "pipe.transformer is marked parallel by ParaAttention but its mesh was not found; parallelize it with "
        "para_attn.context_parallel.diffusers_adapters.parallelize_pipe (para-attn 0.3.38)"
    )


def context_parallel(transformer: Any) -> ContextParallel | None:
    """The sequence split ``parallelize_pipe`` applied to this transformer (its context-parallel probe)."""
    found = para_attention_mesh(transformer)
    if found is None:
        return None
    mesh, sequence_mesh = found
    if mesh["batch"].size() > 1:
        raise ValueError(f"ParaAttention splits the batch over {mesh['batch'].size()} ranks; Fresco's token layouts "
                         "can differ per image, so parallelize the sequence only (init_context_parallel_mesh without "
                         "max_batch_dim_size)")
    ring, ulysses = mesh["ring"].size(), mesh["ulysses"].size()
    if ring * ulysses == 1:
        return None
    # its Ulysses attention takes a whole-sequence key mask; its ring attention does not
    return ContextParallel(ulysses, ring, sequence_mesh.get_group(), masks_pads=ring == 1)


def rewrap_pipeline_class(pipe: Any, fresco_class: type) -> None:
    """Fresco is stepping aside: if ParaAttention was applied after it, its wrapper sits on Fresco's pipeline class;
    apply it to the pipeline's own class the same way, so the stock call keeps the cache context (or the shared
    seed) ParaAttention set up."""
    wrapped = _wrappers(fresco_class.__dict__.get("__call__"))
    already = _wrappers(type(pipe).__call__)
    if "cache" in wrapped and "cache" not in already:
        from para_attn.first_block_cache.diffusers_adapters import apply_cache_on_pipe

        apply_cache_on_pipe(pipe, shallow_patch=True, **wrapped["cache"])
    if "parallel" in wrapped and "parallel" not in already:
        from para_attn.context_parallel.diffusers_adapters import parallelize_pipe

        parallelize_pipe(pipe, shallow_patch=True)
