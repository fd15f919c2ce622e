"""``apply_fresco`` / ``remove_fresco``: one verb on, one verb off, per pipeline instance."""

from __future__ import annotations

import functools
from typing import Any

from .config import FrescoConfig
from .registry import find_adapter

__all__ = ["apply_fresco", "remove_fresco", "fresco_config_of", "fresco_class_of"]

_RUNNER = "_fresco_runner"
_FRESCO_CLASSES: dict[type, type] = {}


def fresco_class_of(cls: type) -> type:
    """A subclass of the pipeline's class whose ``__call__`` runs Fresco; the original class is never modified.

    ``pipe(...)`` looks ``__call__`` up on the type, not the instance, so a per-instance switch needs a per-instance
    type. The subclass keeps the name, module and call signature of the original.
    """
    fresco_cls = _FRESCO_CLASSES.get(cls)
    if fresco_cls is None:

        @functools.wraps(cls.__call__)
        def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, _RUNNER)(*args, **kwargs)

        fresco_cls = type(cls.__name__, (cls,), {
            "__call__": __call__, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__, "_fresco_original_class": cls,
        })
        _FRESCO_CLASSES[cls] = fresco_cls
    return fresco_cls


def apply_fresco(pipe: Any, config: FrescoConfig | str | None = None) -> Any:
    """Turn Fresco on for this pipeline instance; ``pipe(...)`` keeps its usual arguments.

    ``config`` is a :class:`FrescoConfig`, a preset name, or ``None`` for the defaults. Returns ``pipe``.
    """
    if isinstance(config, str):
        config = FrescoConfig.preset(config)
    elif config is None:
        config = FrescoConfig()
    elif not isinstance(config, FrescoConfig):
        raise ValueError(f"apply_fresco takes a FrescoConfig or a preset name, not {type(config).__name__}")
    if hasattr(pipe, _RUNNER):
        raise ValueError(
            "Fresco is already applied to this pipeline; call remove_fresco(pipe) before applying another config"
        )
    runner = find_adapter(pipe)(pipe, config)
    object.__setattr__(pipe, _RUNNER, runner)
    object.__setattr__(pipe, "__class__", fresco_class_of(type(pipe)))
    return pipe


def remove_fresco(pipe: Any) -> Any:
    """Undo :func:`apply_fresco`: the pipeline is the stock one again, bit for bit. A no-op without Fresco."""
    runner = pipe.__dict__.get(_RUNNER)
    if runner is None:
        return pipe
    object.__setattr__(pipe, "__class__", type(pipe)._fresco_original_class)
    object.__delattr__(pipe, _RUNNER)
    runner.close()
    return pipe


def fresco_config_of(pipe: Any) -> FrescoConfig | None:
    """The config Fresco runs this pipeline with, or ``None`` when Fresco is off."""
    runner = pipe.__dict__.get(_RUNNER)
    return None if runner is None else runner.config
