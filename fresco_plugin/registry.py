"""Open registries: sampling strategies (transition rules), convergence scores, and pipeline adapters.

A third party extends Fresco by registering under a new name; nothing here needs editing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "register_strategy", "get_strategy", "strategies",
    "register_score", "get_score", "scores",
    "register_adapter", "find_adapter", "adapters", "FrescoRunner",
]


class FrescoRunner(Protocol):
    """What an adapter returns for one pipeline: ``apply_fresco`` keeps it on the instance and sends the pipeline's
    calls to it; ``remove_fresco`` closes it."""

    config: Any  # the FrescoConfig it runs with
    last_run: Any  # the last call's fresco_plugin.sampler.SamplerResult, or None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The pipeline's own call, with its own arguments and output."""

    def close(self, fresco_class: type) -> None:
        """Fresco was removed from the pipeline; release hooks and guards. ``fresco_class`` is the per-instance class
        the pipeline had while Fresco ran (another library may have wrapped its ``__call__``)."""

_STRATEGIES: dict[str, Callable[..., Any]] = {}
_SCORES: dict[str, Callable[..., Any]] = {}
_ADAPTERS: dict[str, Callable[..., Any] | str] = {}


def _register(table: dict, kind: str, name: str, value: Any, replace: bool) -> None:
    if name in table and not replace:
        raise ValueError(f"a Fresco {kind} named {name!r} is already registered; pass replace=True to override it")
    table[name] = value


def register_strategy(name: str, factory: Callable[..., Any] | None = None, *, replace: bool = False):
    """Register a transition-rule factory ``factory(**strategy_options) -> TransitionRule``; usable as a decorator.
    A factory with ``needs_fresh_noise = True`` gets a seeded ``FreshNoise`` source in each transition."""
    if factory is None:
        return lambda f: (register_strategy(name, f, replace=replace), f)[1]
    _register(_STRATEGIES, "strategy", name, factory, replace)
    return factory


def get_strategy(name: str) -> Callable[..., Any]:
    _load_builtins()
    if name not in _STRATEGIES:
        raise ValueError(f"unknown Fresco strategy {name!r}; registered: {', '.join(sorted(_STRATEGIES))}")
    return _STRATEGIES[name]


def strategies() -> tuple[str, ...]:
    _load_builtins()
    return tuple(sorted(_STRATEGIES))


def register_score(name: str, fn: Callable[..., Any] | None = None, *, min_history: int = 1, replace: bool = False):
    """Register a convergence score ``fn(history) -> (B, N)``; ``min_history`` = recorded steps it needs."""
    if fn is None:
        return lambda f: (register_score(name, f, min_history=min_history, replace=replace), f)[1]
    fn.min_history = min_history  # type: ignore[attr-defined]
    _register(_SCORES, "score", name, fn, replace)
    return fn


def get_score(name: str) -> Callable[..., Any]:
    _load_builtins()
    if name not in _SCORES:
        raise ValueError(f"unknown Fresco score {name!r}; registered: {', '.join(sorted(_SCORES))}")
    return _SCORES[name]


def scores() -> tuple[str, ...]:
    _load_builtins()
    return tuple(sorted(_SCORES))


def register_adapter(pipeline_class_name: str, adapter: Callable[..., FrescoRunner] | str, *,
                     replace: bool = False) -> None:
    """Register the adapter for a pipeline class, by class name (the core imports no pipeline library). A package can
    also declare one as an entry point in the ``fresco_plugin.adapters`` group (name: the class name, value: the lazy
    ``"module:attribute"``).

    ``adapter`` is a callable ``adapter(pipe, config) -> FrescoRunner`` or a lazy ``"module:attribute"`` string.
    """
    _register(_ADAPTERS, "adapter", pipeline_class_name, adapter, replace)


def find_adapter(pipe: Any) -> Callable[..., FrescoRunner]:
    """The adapter of the nearest class in ``type(pipe).__mro__`` that has one."""
    _load_builtins()
    for cls in type(pipe).__mro__:
        entry = _ADAPTERS.get(cls.__name__)
        if entry is None:
            continue
        if isinstance(entry, str):
            module, attribute = entry.split(":")
            entry = getattr(importlib.import_module(module), attribute)
            _ADAPTERS[cls.__name__] = entry
        return entry
    supported = ", ".join(sorted(_ADAPTERS))
    raise ValueError(
        f"Fresco has no adapter for {type(pipe).__name__}; supported pipelines: {supported}. "
        "A new pipeline needs fresco_plugin.register_adapter(...)"
    )


def adapters() -> tuple[str, ...]:
    _load_builtins()
    return tuple(sorted(_ADAPTERS))


_loaded = False


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    # The core's own scores and rules register on import; pipeline adapters come from the installed packages'
    # "fresco_plugin.adapters" entry points (this package's integrations, and any third party's), as lazy strings.
    importlib.import_module("fresco_plugin.selection")
    importlib.import_module("fresco_plugin.transitions")
    for entry in importlib.metadata.entry_points(group="fresco_plugin.adapters"):
        _ADAPTERS.setdefault(entry.name, entry.value)
