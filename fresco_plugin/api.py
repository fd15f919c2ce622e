"""``apply_fresco`` / ``remove_fresco``: one verb on, one verb off, per pipeline instance."""

from __future__ import annotations

import functools
from typing import Any

from .config import FrescoConfig
from .registry import find_adapter

__all__ = ["apply_fresco", "remove_fresco", "fresco_config_of", "last_fresco_run"]

_RUNNER = "_fresco_runner"


def _fresco_class(cls: type) -> type:
    """A new subclass of the pipeline's class whose ``__call__`` runs Fresco; the original class is never modified.

    ``pipe(...)`` looks ``__call__`` up on the type, not the instance, so a per-instance switch needs a per-instance
    type: one per ``apply_fresco``, shared with no other pipeline, so what another library patches onto a pipeline's
    class (ParaAttention wraps ``__call__``) reaches that pipeline only. It keeps the name, module and call signature
    of the original.
    """

    @functools.wraps(cls.__call__)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        runner = self.__dict__.get(_RUNNER)
        if runner is None:  # made by the class itself (type(pipe).from_pipe(...)): a stock pipeline
            return cls.__call__(self, *args, **kwargs)
        return runner(*args, **kwargs)

    def __reduce_ex__(self: Any, protocol: int) -> tuple:
        # pickled as the stock pipeline's state plus the config; unpickling applies Fresco again
        runner = self.__dict__.get(_RUNNER)
        state = {k: v for k, v in self.__dict__.items() if k != _RUNNER}
        return _new_fresco_instance, (cls,), (state, None if runner is None else runner.config)

    def __setstate__(self: Any, pickled: tuple) -> None:
        state, config = pickled
        self.__dict__.update(state)
        object.__setattr__(self, "__class__", cls)
        if config is not None:
            apply_fresco(self, config)

    return type(cls.__name__, (cls,), {
        "__call__": __call__, "__reduce_ex__": __reduce_ex__, "__setstate__": __setstate__,
        "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
        "_fresco_original_class": cls,
    })


def _new_fresco_instance(cls: type) -> Any:
    fresco_cls = _fresco_class(cls)
    return fresco_cls.__new__(fresco_cls)


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
    object.__setattr__(pipe, "__class__", _fresco_class(type(pipe)))
    return pipe


def remove_fresco(pipe: Any) -> Any:
    """Undo :func:`apply_fresco`: the pipeline is the stock one again, bit for bit. A no-op without Fresco."""
    runner = pipe.__dict__.get(_RUNNER)
    if runner is None:
        return pipe
    fresco_cls = type(pipe)
    object.__setattr__(pipe, "__class__", fresco_cls._fresco_original_class)
    object.__delattr__(pipe, _RUNNER)
    runner.close(fresco_cls)
    return pipe


def fresco_config_of(pipe: Any) -> FrescoConfig | None:
    """The config Fresco runs this pipeline with, or ``None`` when Fresco is off."""
    runner = pipe.__dict__.get(_RUNNER)
    return None if runner is None else runner.config


def last_fresco_run(pipe: Any) -> Any:
    """What the pipeline's last Fresco call did (a :class:`fresco_plugin.sampler.SamplerResult`: tokens per step,
    sigmas, and which tokens ran at which resolution from which step), or ``None`` before the first call or without
    Fresco. With a batch that Fresco sampled image by image (a promotion threshold), the first image's run."""
    runner = pipe.__dict__.get(_RUNNER)
    return None if runner is None else runner.last_run
