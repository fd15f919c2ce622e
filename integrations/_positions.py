"""Where Fresco tells a transformer its tokens' positions: one hook for images and video alike.

A transformer learns where a token sits in one of two ways. Either an input carries the positions (FLUX's ``img_ids``):
the denoiser passes Fresco's (possibly fractional) positions straight in and needs nothing here. Or the model builds
them from the latent grid it is given (HunyuanVideo's and Wan's rotary embeddings from the 5-D latents' shape; an image
model's from its grid the same way): then a uniform stage goes through the stock path as a grid, and a mixed coarse /
fine set goes as a one-row strip of tokens while a :class:`PositionHook` on the module that builds the positions (the
``rope`` module) answers with its output at the tokens' real positions. The patch embedding acts on each token alone,
so a strip embeds every token exactly as the grid would.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import torch

try:
    from diffusers.hooks.context_parallel import ContextParallelSplitHook
except ImportError:  # diffusers before its context parallelism (ParaAttention's 0.34): no plan splits anything
    ContextParallelSplitHook = None

from fresco_plugin.config import FrescoConfig
from fresco_plugin.layout import TokenGeometry, pack, unpack
from fresco_plugin.sampler import Step

from ._diffusers_runner import DiffusersFrescoRunner, TransformerDenoiser, pipeline_transformers

__all__ = ["GridPositionsRunner", "PositionHook", "PositionsAt", "StripDenoiser", "engine_split_degree",
           "split_like_the_engine", "whole_stock_answer"]

PositionsAt = Callable[[torch.nn.Module, torch.Tensor], Any]


class PositionHook:
    """A forward hook on the module that builds a transformer's positions: while ``positions`` is set, the module's
    answer is replaced by ``positions_at(module, positions)`` (its output at the tokens' real positions, not at its
    input's grid).

    A plain torch forward hook held in the module's own hook table: a deep copy of the pipeline copies it along with
    its runner, and several pipelines sharing one transformer each keep their own (only the calling one is set).
    """

    def __init__(self, positions_at: PositionsAt, owner: Any) -> None:
        self.positions_at = positions_at
        self.positions: torch.Tensor | None = None
        self._owner = weakref.ref(owner)

    @property
    def stale(self) -> bool:
        """Its runner is gone (garbage-collected, or this hook came back from a pickle without it)."""
        return self._owner is None or self._owner() is None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "positions": None, "_owner": None}

    def stand_in(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        """A forward pre-hook: while ``positions`` is set, what the module gets instead of its input (None: its input),
        for a module that cannot take a long strip at all; its stock answer is discarded anyway."""
        return None

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if self.positions is None:
            return None
        return split_like_the_engine(module, self.positions_at(module, self.positions.to(args[0].device)))


def _engine_splits(module: torch.nn.Module) -> list[ContextParallelSplitHook]:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None or ContextParallelSplitHook is None:
        return []
    return [hook for hook in registry.hooks.values() if isinstance(hook, ContextParallelSplitHook)]


def engine_split_degree(module: torch.nn.Module) -> int:
    """Over how many ranks a context-parallel plan splits this module's output (1: none does)."""
    configs = [hook.parallel_config for hook in _engine_splits(module)]
    return max((c.ring_degree * c.ulysses_degree for c in configs), default=1)


def split_like_the_engine(module: torch.nn.Module, answer: Any) -> Any:
    """``answer`` split over the ranks as a context-parallel plan that splits this module's output has split the
    stock one by now (diffusers' plans for Wan and Qwen-Image shard the rope module's output along the sequence)."""
    for hook in _engine_splits(module):
        answer = hook.post_forward(module, answer)
    return answer


def whole_stock_answer(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
    """The module's stock output before a context-parallel plan split it (``output`` itself when none did)."""
    return type(module).forward(module, *args, **kwargs) if _engine_splits(module) else output


def _attach(module: torch.nn.Module, hook: PositionHook) -> None:
    """Put ``hook`` on ``module`` after dropping hooks whose runner is gone; it leaves with its runner if that is
    dropped without ``remove_fresco``, even while the transformer lives on."""
    for registered in list(module._forward_hooks.values()):
        if isinstance(registered, PositionHook) and registered.stale:
            _detach(module, registered)
    module.register_forward_hook(hook, with_kwargs=True)
    if type(hook).stand_in is not PositionHook.stand_in:
        module.register_forward_pre_hook(hook.stand_in, with_kwargs=True)
    weakref.finalize(hook._owner(), _detach, module, hook)


def _detach(module: torch.nn.Module, hook: PositionHook) -> None:
    for key, registered in list(module._forward_hooks.items()):
        if registered is hook:
            del module._forward_hooks[key]
    for key, registered in list(module._forward_pre_hooks.items()):
        if getattr(registered, "__self__", None) is hook:
            del module._forward_pre_hooks[key]


class GridPositionsRunner(DiffusersFrescoRunner):
    """A runner for a transformer that builds its positions from the latent grid: one :class:`PositionHook` on the
    ``positions_module`` of each of the pipeline's transformers (two for Wan2.2's experts) for as long as Fresco is
    applied, answering with ``positions_at(module, positions)``, which must equal the stock output at integer
    positions (each adapter has a test that says so)."""

    positions_module: ClassVar[str] = "rope"
    positions_at: ClassVar[staticmethod]
    position_hook_class: ClassVar[type[PositionHook]] = PositionHook

    def __init__(self, pipe: Any, config: FrescoConfig):
        super().__init__(pipe, config)
        self.position_hook = self.position_hook_class(type(self).positions_at, self)
        for module in self._position_modules():
            _attach(module, self.position_hook)

    def close(self, fresco_class: type) -> None:
        for module in self._position_modules():
            _detach(module, self.position_hook)
        super().close(fresco_class)

    def _position_modules(self) -> list[torch.nn.Module]:
        return [getattr(transformer, self.positions_module) for transformer in pipeline_transformers(self.pipe)]

    def placed(self, denoiser: StripDenoiser, geometry: TokenGeometry) -> StripDenoiser:
        """``denoiser`` wired to this runner's hook and the call's token layout."""
        denoiser.position_hook, denoiser.patch = self.position_hook, geometry.patch
        denoiser.video = geometry.frames is not None
        return denoiser


class StripDenoiser(TransformerDenoiser):
    """Grid for whole raster-ordered grids (the stock path), strip plus the position hook otherwise.

    Subclasses implement ``call_transformer(hidden, text, step, rows)`` on the stock latent layout: ``(B, C, H, W)``
    for images, ``(B, C, F, H, W)`` for video (``video=True``).
    """

    position_hook: PositionHook
    patch: int
    video: bool = False
    _grid_cache: tuple[torch.Tensor, tuple[int, int, int] | None] | None = None
    padded_tokens = 0  # pad tokens at the end of this forward's strip, which call_transformer must mask out

    def forward(self, text: dict[str, Any], latents: torch.Tensor, positions: torch.Tensor, step: Step,
                rows: slice) -> torch.Tensor:
        tokens = latents.shape[1]
        pad = -tokens % self.pad_multiple
        grid = None if pad else step.grid if step.grid_known else self._grid(positions)
        if grid is not None:
            frames, height, width = grid
            hidden = unpack(latents, height, width, self.patch, frames=frames if self.video else None)
        else:
            if pad:  # an uneven stage under context parallelism: a strip with pad tokens, dropped from the output
                latents = torch.cat([latents, latents.new_zeros(latents.shape[0], pad, latents.shape[2])], dim=1)
                positions = torch.cat([positions, positions[:1].expand(pad, -1)])
            # a one-row strip of tokens
            hidden = unpack(latents, 1, latents.shape[1], self.patch, frames=1 if self.video else None)
            self.position_hook.positions = positions
        self.padded_tokens = pad
        try:
            output = self.call_transformer(hidden, text, step, rows)
        finally:
            self.position_hook.positions = None
            self.padded_tokens = 0
        return pack(output, self.patch)[:, :tokens]

    def call_transformer(self, hidden: torch.Tensor, text: dict[str, Any], step: Step, rows: slice) -> torch.Tensor:
        raise NotImplementedError

    def _grid(self, positions: torch.Tensor) -> tuple[int, int, int] | None:
        """(frames, rows, cols) when ``positions`` is a whole integer grid in raster order, else None."""
        if self._grid_cache is not None and self._grid_cache[0] is positions:
            return self._grid_cache[1]
        frames, rows, cols = (int(v) for v in positions.amax(dim=0).long() + 1)
        grid = None
        if frames * rows * cols == positions.shape[0]:
            axes = [torch.arange(n, device=positions.device, dtype=positions.dtype) for n in (frames, rows, cols)]
            whole = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
            grid = (frames, rows, cols) if torch.equal(whole, positions) else None
        self._grid_cache = (positions, grid)
        return grid
