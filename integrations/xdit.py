"""Fresco on xDiT (xfuser 0.7.0): its sequence-parallel runner path, and ``--fresco-preset`` for its argument parser.

Supported: a stock diffusers ``FluxPipeline`` or ``HunyuanVideoPipeline`` whose transformer is xDiT's runner-path
wrapper (``xFuserFlux1Transformer2DWrapper``, ``xFuserHunyuanVideoTransformer3DWrapper``: what xDiT's runner builds
when ``pipefusion_parallel_degree`` is 1), with Ulysses and/or ring degree. The wrapper splits each forward's image
sequence over the sequence-parallel group and gathers the output, so a token count that changes between forwards is
fine as long as it divides the degree. Fresco keeps it so (promotion counts round to the degree, like under diffusers'
context parallelism; a stage grid that cannot is refused), because the wrappers cannot take an uneven count: the
HunyuanVideo one does not try, and the FLUX one appends zero tokens that attention does not mask (they would change
the result; in xfuser 0.7.0 that path fails outright, calling a ``_pad_to_sp_divisible`` the class does not define).
Promotion decisions are rank 0's, broadcast over the sequence-parallel group.

Refused, with the alternative named: xDiT's own pipelines (``xFuserFluxPipeline`` and the other PipeFusion-capable
``xFuser*Pipeline`` wrappers) fix the token layout from height and width once per call, so the token count cannot
change inside a generation; CFG parallelism splits the batch of each forward in two, and Fresco calls the
transformer once per guidance branch.

xfuser cannot be imported without a GPU; :mod:`fresco_plugin.tools.xdit_cpu` is the shim the tests use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xfuser import xFuserArgs

from fresco_plugin.config import PRESETS, FrescoConfig

from ._context_parallel import ContextParallel

__all__ = ["FrescoXFuserArgs", "context_parallel", "refuse_xdit_pipeline", "xdit_sequence_parallel"]

_RUNNER_PATH_ALTERNATIVE = (
    "build the stock diffusers pipeline with xDiT's runner-path transformer wrapper (xFuserFlux1Transformer2DWrapper "
    "or xFuserHunyuanVideoTransformer3DWrapper: what its runner builds with pipefusion_parallel_degree=1) and "
    "parallelize with ulysses_degree / ring_degree"
)


def xdit_sequence_parallel(transformer: Any) -> tuple[int, int, Any] | None:
    """``(ulysses, ring, group)`` of the sequence-parallel split xDiT applies to this runner-path transformer, or
    ``None`` when the sequence is not split."""
    from xfuser.core.distributed import (
        get_classifier_free_guidance_world_size,
        get_pipeline_parallel_world_size,
        get_ring_parallel_world_size,
        get_sequence_parallel_world_size,
        get_sp_group,
        get_ulysses_parallel_world_size,
        model_parallel_is_initialized,
    )
    from xfuser.model_executor.models.transformers.base_transformer import xFuserTransformerBaseWrapper

    if isinstance(transformer, xFuserTransformerBaseWrapper):
        raise ValueError(f"{type(transformer).__name__} is xDiT's PipeFusion-capable transformer wrapper, which fixes "
                         f"the token layout once per call; Fresco changes it within a call: {_RUNNER_PATH_ALTERNATIVE}")
    if not model_parallel_is_initialized():
        return None  # Fresco applied before xDiT's groups exist; its wrapper cannot run without them and says so
    if get_pipeline_parallel_world_size() > 1:
        raise ValueError(f"xDiT PipeFusion (pipefusion_parallel_degree={get_pipeline_parallel_world_size()}) cannot "
                         f"follow a token count that changes within a call; {_RUNNER_PATH_ALTERNATIVE}")
    if get_classifier_free_guidance_world_size() > 1:
        raise ValueError("xDiT CFG parallelism splits each forward's batch over 2 ranks, but Fresco calls the "
                         "transformer once per guidance branch; turn use_cfg_parallel off and give those ranks to "
                         "ulysses_degree or ring_degree")
    if get_sequence_parallel_world_size() == 1:
        return None
    return get_ulysses_parallel_world_size(), get_ring_parallel_world_size(), get_sp_group().device_group


def context_parallel(transformer: Any) -> ContextParallel | None:
    """xDiT's context-parallel probe: its split, Ulysses and ring over the sequence-parallel group (attention there
    takes no key mask, so uneven stages are refused rather than padded)."""
    split = xdit_sequence_parallel(transformer)
    return None if split is None else ContextParallel(*split)


def refuse_xdit_pipeline(pipe: Any, config: FrescoConfig) -> Any:
    """The adapter registered for xDiT's own pipelines: refuse, naming the supported path."""
    raise ValueError(f"Fresco does not run on xDiT's {type(pipe).__name__}: its PipeFusion loop slices the latents "
                     f"once per call from height and width, and Fresco changes the token count within a call; "
                     f"{_RUNNER_PATH_ALTERNATIVE}, then apply_fresco(pipe, ...)")


@dataclass
class FrescoXFuserArgs(xFuserArgs):
    """xDiT's engine arguments plus Fresco's: use it where xDiT's example scripts use ``xFuserArgs``.

    ``FrescoXFuserArgs.add_cli_args(parser)`` adds ``--fresco-preset NAME`` to xDiT's options;
    ``FrescoXFuserArgs.from_cli_args(args).fresco_config()`` is the chosen preset (``None`` when Fresco is off).
    """

    fresco_preset: str | None = None

    @staticmethod
    def add_cli_args(parser: Any) -> Any:
        parser = xFuserArgs.add_cli_args(parser)
        group = parser.add_argument_group("Fresco Options")
        # xDiT's options are spelled with underscores; its parser also takes them with dashes (--fresco-preset)
        group.add_argument("--fresco_preset", type=str, default=None, choices=sorted(PRESETS), metavar="NAME",
                           help=f"sample with Fresco's preset NAME ({', '.join(sorted(PRESETS))}); off when omitted")
        return parser

    def fresco_config(self) -> FrescoConfig | None:
        return None if self.fresco_preset is None else FrescoConfig.preset(self.fresco_preset)
