"""Context parallelism (Ulysses) for diffusers' HunyuanVideo and HunyuanVideo-1.5, which ship no context-parallel
plan, with or without Fresco.

    from diffusers import ContextParallelConfig
    from fresco_plugin.integrations.hunyuan_video_parallel import enable_hunyuan_video_parallelism

    enable_hunyuan_video_parallelism(pipe.transformer, ContextParallelConfig(ulysses_degree=world_size))

The plan splits the image and text sequences where they enter the first block and gathers the image tokens after
``proj_out``. Two things a plan alone cannot express are fixed by a hook on every block:

- the attention mask. HunyuanVideo builds it for the whole sequence, image tokens then (padded) text tokens, but
  Ulysses attention sees the sequence the all-to-all assembles: each rank's image shard followed by its text shard,
  rank after rank. The hook reorders the mask the same way, so padded text stays masked.
- the rotary embedding, computed for the whole image sequence before the blocks: each rank takes its shard.

Fresco pads an image sequence that cannot split evenly with tokens at its end; inside :func:`masked_padding` the
hooks also mask those out of every key.

HunyuanVideo-1.5 passes its blocks the text's mask only, and its attention processor builds a (query x key) mask from
the local sequence's length, which cannot describe the sequence Ulysses attention sees. Its blocks get HunyuanVideo
1.0's processor instead (the same projections, norms, rotary embedding and joint attention, with the mask as given)
and the hook hands them the whole-sequence key mask; the first block pads the joint text (Qwen, ByT5 and
image-embedding tokens) with masked tokens to a multiple of the degree. Padded text queries then attend where stock's
mask left them none; their outputs reach no other token (they stay masked as keys in every block) and are not
returned.

Ring attention is refused (it orders the sequence differently, and needs CUDA kernels anyway), and so is the
token-replace image-to-video variant (its first-frame token count is a whole-sequence notion).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

__all__ = ["HUNYUAN_VIDEO_CP_PLAN", "enable_hunyuan_video_parallelism", "has_hunyuan_video_parallelism",
           "interleave_mask", "masked_padding"]

HUNYUAN_VIDEO_CP_PLAN = {
    "transformer_blocks.0": {
        "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
        "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
    },
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
}
_BLOCK_HOOK = "fresco_hunyuan_video_sequence_shard"


def interleave_mask(mask: torch.Tensor, text_tokens: int, world: int) -> torch.Tensor:
    """``mask`` (..., image + text) in the order Ulysses attention sees the sequence: per rank, its image shard
    then its text shard."""
    image, text = mask[..., : mask.shape[-1] - text_tokens], mask[..., mask.shape[-1] - text_tokens:]
    parts = [part for pair in zip(image.chunk(world, -1), text.chunk(world, -1)) for part in pair]
    return torch.cat(parts, dim=-1)


class _ShardedSequenceHook(ModelHook):
    """Reorders the whole-sequence attention mask for Ulysses and gives the block this rank's rotary shard.

    Works whether the block's inputs are split already (every block after the first) or not yet (the first block,
    when the plan's split hook runs inside this one): split inputs are 1/world of the mask's length.
    """

    def __init__(self, world: int, rank: int, text_mask_only: bool = False):
        super().__init__()
        self.world, self.rank = world, rank
        # HunyuanVideo-1.5: the blocks get the text's (B, T) mask, widened here to the whole sequence's key mask
        self.text_mask_only = text_mask_only
        self.padded_tokens = 0  # the image sequence's last tokens are padding (see masked_padding)

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        # the same five inputs in both models' blocks (1.5 names the last one freqs_cis)
        names = ("hidden_states", "encoder_hidden_states", "temb", "attention_mask", "image_rotary_emb")
        values = dict(zip(names, args))
        values.update({k: v for k, v in kwargs.items() if k in names})
        if "freqs_cis" in kwargs:
            values["image_rotary_emb"] = kwargs["freqs_cis"]
        mask, rope = values.get("attention_mask"), values.get("image_rotary_emb")
        image, text = values["hidden_states"].shape[1], values["encoder_hidden_states"].shape[1]
        if mask is not None and self.text_mask_only:
            # the joint text (Qwen, ByT5 and image-embedding tokens: 1985 on the real model) seldom divides the degree:
            # the first block pads it with masked tokens before the plan splits it (the text's output is not returned)
            whole_text = -(-mask.shape[-1] // self.world) * self.world
            if text == mask.shape[-1] != whole_text:
                context = values["encoder_hidden_states"]
                values["encoder_hidden_states"] = torch.cat(
                    [context, context.new_zeros(context.shape[0], whole_text - text, context.shape[2])], dim=1)
                text = whole_text
            image_total = image * self.world if text != whole_text else image
            mask = mask.bool()
            mask = torch.cat([mask.new_ones(mask.shape[0], image_total), mask,
                              mask.new_zeros(mask.shape[0], whole_text - mask.shape[-1])], dim=-1)[:, None, None]
        length = mask.shape[-1] if mask is not None else None
        split = length is not None and image + text != length
        text_total = text * self.world if split else text
        if mask is not None:
            if self.padded_tokens:
                image_total = mask.shape[-1] - text_total
                mask = mask.clone()
                mask[..., image_total - self.padded_tokens:image_total] = False
            values["attention_mask"] = interleave_mask(mask, text_total, self.world)
        if rope is not None and rope[0].shape[0] == (length - text_total if length is not None else -1):
            values["image_rotary_emb"] = tuple(r.chunk(self.world, dim=0)[self.rank] for r in rope)
        if "freqs_cis" in kwargs:
            values["freqs_cis"] = values.pop("image_rotary_emb")
        positional = [values[name] for name in names[:len(args)]]
        return tuple(positional) + args[len(positional):], {k: values[k] if k in values else v
                                                            for k, v in kwargs.items()}


@contextlib.contextmanager
def masked_padding(transformer: Any, padded_tokens: int) -> Iterator[None]:
    """Within this context the last ``padded_tokens`` image tokens of every forward are masked out of every key."""
    hooks = [HookRegistry.check_if_exists_or_initialize(block).get_hook(_BLOCK_HOOK) for block in _blocks(transformer)]
    if any(hook is None for hook in hooks):
        raise ValueError("masked padding of HunyuanVideo's image sequence needs the block hooks of "
                         "enable_hunyuan_video_parallelism; enable context parallelism with it")
    for hook in hooks:
        hook.padded_tokens = padded_tokens
    try:
        yield
    finally:
        for hook in hooks:
            hook.padded_tokens = 0


def _blocks(transformer: Any) -> list[torch.nn.Module]:
    return [*transformer.transformer_blocks, *getattr(transformer, "single_transformer_blocks", ())]


def has_hunyuan_video_parallelism(transformer: Any) -> bool:
    """Whether ``transformer`` was split by :func:`enable_hunyuan_video_parallelism` (not by a plan of its own)."""
    return all(getattr(block, "_diffusers_hook", None) is not None
               and block._diffusers_hook.get_hook(_BLOCK_HOOK) is not None for block in _blocks(transformer))


def enable_hunyuan_video_parallelism(transformer: Any, config: Any) -> None:
    """``transformer.enable_parallelism`` with the plan above and the block hooks, for a HunyuanVideo or
    HunyuanVideo-1.5 transformer; ``config`` is a diffusers ``ContextParallelConfig`` (Ulysses). Call it on every rank
    after ``torch.distributed`` is initialised."""
    if getattr(config, "ring_degree", 1) not in (None, 1):
        raise ValueError("HunyuanVideo context parallelism here is Ulysses only (ring_degree=1): ring attention orders "
                         "the sequence differently and needs CUDA kernels")
    if transformer.config.get("image_condition_type") == "token_replace":
        raise ValueError("the token-replace image-to-video HunyuanVideo cannot be split: its first-frame token count "
                         "refers to the whole sequence; run it without context parallelism")
    heads = transformer.config.num_attention_heads
    if heads % config.ulysses_degree:
        raise ValueError(f"the transformer has {heads} attention heads, which Ulysses degree {config.ulysses_degree} "
                         "does not divide; use a degree that divides the head count")
    text_mask_only = not hasattr(transformer, "single_transformer_blocks")  # HunyuanVideo-1.5
    if text_mask_only:  # before enable_parallelism, which hands the processors it finds the parallel config
        for block in transformer.transformer_blocks:
            block.attn.set_processor(HunyuanVideoAttnProcessor2_0())
    transformer.enable_parallelism(config=config, cp_plan=HUNYUAN_VIDEO_CP_PLAN)
    mesh = transformer._parallel_config.context_parallel_config._flattened_mesh
    world, rank = mesh.size(), mesh.get_local_rank()
    for block in _blocks(transformer):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(
            _ShardedSequenceHook(world, rank, text_mask_only), _BLOCK_HOOK)
