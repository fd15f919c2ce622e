"""Deriving FLOPs from the real architectures: traced counts, recorded runs, and the stored forward costs.

The core prices plans from each model's stored forward cost (``fresco_plugin/model_configs/forward_flops.json``), plain
arithmetic. This module is where those costs come from: each named transformer is built on the meta device from its
public config (no weights, no memory) and a forward is traced with torch's FLOP counter (``torch.utils.flop_counter``:
2 FLOPs per multiply-add, matrix products and attention). Every product in these transformers is linear or bilinear
in the image and text token counts, so a forward's FLOPs are an exact polynomial of degree 2 in the two: nine traces
(each running one block of every block list and counting the others as its copies) give its coefficients
(``derive_forward_flops``), and ``python -m fresco_plugin.tools.flops_trace --write`` rewrites
the stored file (a test checks the two agree). :class:`ForwardRecorder` prices a run as it really ran, blocks a
feature cache skipped excluded. Requires diffusers.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import cache
from typing import Any

import torch

from fresco_plugin.flops import FORWARD_FLOPS_FILE, MODELS, model_spec

__all__ = ["ForwardRecord", "ForwardRecorder", "TransformerFlops", "derive_forward_flops", "flux_closed_form_flops",
           "recorded_flops"]

_Quadratic = tuple[Fraction, Fraction, Fraction]
# HunyuanVideo-1.5's pipeline pads its glyph (byT5) text to 256 tokens and its image stream (SigLIP) to 729, zeros in
# text to video; the Qwen tokens (1000) are the text count the coefficients take
HUNYUAN_VIDEO15_GLYPH_TOKENS = 256
HUNYUAN_VIDEO15_IMAGE_TOKENS = 729


class TransformerFlops:
    """FLOPs of one forward of a transformer as a function of its image-token count.

    Every matrix product in these transformers is linear in the token count (projections, MLPs, cross-attention)
    or quadratic (joint self-attention), so the count is an exact quadratic in ``n``: it is traced at three sizes and
    interpolated with exact rational arithmetic (``trace`` gives a direct count for checking that).
    """

    _FIT_SIZES = (256, 512, 1024)

    def __init__(self, family: str, config: dict[str, Any], text_tokens: int):
        self.family, self.config, self.text_tokens = family, dict(config), text_tokens
        self._transformer = None
        self._coefficients: tuple[_Quadratic, dict[str, _Quadratic]] | None = None  # whole forward, per block

    @classmethod
    def for_model(cls, name: str, text_tokens: int | None = None) -> TransformerFlops:
        spec = model_spec(name)
        return _shared_counter(spec.priced_as, spec.text_tokens if text_tokens is None else text_tokens)

    def __call__(self, image_tokens: int) -> int:
        return self._evaluate(self._fit()[0], image_tokens)

    def block(self, kind: str, image_tokens: int) -> int:
        """FLOPs of one block of the block list ``kind`` (e.g. ``"single_transformer_blocks"``) in one forward."""
        blocks = self._fit()[1]
        if kind not in blocks:
            raise ValueError(f"{self.family} has no block list {kind!r}; it has {', '.join(blocks)}")
        return self._evaluate(blocks[kind], image_tokens)

    def block_counts(self) -> dict[str, int]:
        """How many blocks each block list holds."""
        if self._transformer is None:
            self._transformer = self._build()
        return {name: len(child) for name, child in self._transformer.named_children()
                if isinstance(child, torch.nn.ModuleList)}

    def trace(self, image_tokens: int) -> int:
        """FLOPs of one whole forward at ``image_tokens``, traced with torch's FLOP counter on the meta device."""
        return self._trace_parts(image_tokens)[0]

    def _trace_parts(self, image_tokens: int, one_block_each: bool = False) -> tuple[int, dict[str, int]]:
        """A forward's total and the FLOPs of the first block of each block list. The blocks of a list are alike, so
        ``one_block_each`` runs only the first of each and counts the rest as copies of it: the same total, a few
        times faster on the deep models (``trace`` runs them all, which is how the two are checked against each
        other)."""
        from torch.utils.flop_counter import FlopCounterMode

        if self._transformer is None:
            self._transformer = self._build()
        if self.family == "hunyuan-video15":
            return self._trace_hunyuan_video15(image_tokens)
        counts = self.block_counts()
        blocks_run = _first_block_of_each_list(self._transformer) if one_block_each else nullcontext()
        with torch.no_grad(), FlopCounterMode(display=False) as counter, blocks_run:
            self._transformer(**self._inputs(image_tokens), return_dict=False)
        per_module = counter.get_flop_counts()
        root = type(self._transformer).__name__
        blocks = {kind: int(sum(per_module.get(f"{root}.{kind}.0", {}).values())) for kind in counts}
        total = int(counter.get_total_flops())
        if one_block_each:
            total += sum((counts[kind] - 1) * blocks[kind] for kind in counts if counts[kind])
        return total, blocks

    def _trace_hunyuan_video15(self, image_tokens: int) -> tuple[int, dict[str, int]]:
        """HunyuanVideo-1.5's forward reads its image stream's values (zeros: text to video) and keeps only the valid
        text tokens, which the meta device cannot do; its parts are traced one by one instead, as the forward calls
        them. The joint sequence is always the Qwen tokens, the glyph tokens and the image-stream tokens, valid or not
        (the pipeline pads each to its fixed length)."""
        from torch.utils.flop_counter import FlopCounterMode

        model, c, t, n = self._transformer, self.config, self.text_tokens, image_tokens
        width = c["num_attention_heads"] * c["attention_head_dim"]
        joint_text = t + HUNYUAN_VIDEO15_GLYPH_TOKENS + HUNYUAN_VIDEO15_IMAGE_TOKENS
        with torch.device("meta"), torch.no_grad(), FlopCounterMode(display=False) as counter:
            hidden = torch.empty(1, c["in_channels"], 1, 1, n)  # a 1-frame, 1 x n strip (patch 1)
            timestep = torch.empty(1)
            rotary = model.rope(hidden)
            temb = model.time_embed(timestep)
            hidden = model.x_embedder(hidden)
            model.context_embedder(torch.empty(1, t, c["text_embed_dim"]), timestep, torch.ones(1, t))
            model.context_embedder_2(torch.empty(1, HUNYUAN_VIDEO15_GLYPH_TOKENS, c["text_embed_2_dim"]))
            model.image_embedder(torch.empty(1, HUNYUAN_VIDEO15_IMAGE_TOKENS, c["image_embed_dim"]))
            text, mask = torch.empty(1, joint_text, width), torch.ones(1, joint_text, dtype=torch.bool)
            with FlopCounterMode(display=False) as first_block:
                hidden, text = model.transformer_blocks[0](hidden, text, temb, mask, rotary)
            for block in model.transformer_blocks[1:]:
                hidden, text = block(hidden, text, temb, mask, rotary)
            model.proj_out(model.norm_out(hidden, temb))
        return int(counter.get_total_flops()), {"transformer_blocks": int(first_block.get_total_flops())}

    def _fit(self):
        if self._coefficients is None:
            traces = [(n, *self._trace_parts(n, one_block_each=True)) for n in self._FIT_SIZES]
            self._coefficients = (
                _quadratic_through([(n, total) for n, total, _ in traces]),
                {kind: _quadratic_through([(n, blocks[kind]) for n, _, blocks in traces]) for kind in traces[0][2]},
            )
        return self._coefficients

    def _evaluate(self, coefficients: tuple[Fraction, Fraction, Fraction], image_tokens: int) -> int:
        c0, c1, c2 = coefficients
        value = c0 + c1 * image_tokens + c2 * image_tokens * image_tokens
        if value.denominator != 1:
            raise RuntimeError(f"the FLOP count of {self.family} is not a quadratic in the token count")
        return int(value)

    def _build(self):
        return _meta_transformer(self.family, json.dumps(self.config, sort_keys=True))

    def _inputs(self, n: int) -> dict[str, Any]:
        c, t = self.config, self.text_tokens
        with torch.device("meta"):
            if self.family == "flux":
                inputs = dict(
                    hidden_states=torch.empty(1, n, c["in_channels"]),
                    encoder_hidden_states=torch.empty(1, t, c["joint_attention_dim"]),
                    pooled_projections=torch.empty(1, c["pooled_projection_dim"]), timestep=torch.empty(1),
                    img_ids=torch.empty(n, 3), txt_ids=torch.empty(t, 3),
                )
                if c.get("guidance_embeds"):
                    inputs["guidance"] = torch.empty(1)
                return inputs
            if self.family == "flux2":  # no pooled text vector; positions on four axes; Klein embeds no guidance
                return dict(hidden_states=torch.empty(1, n, c["in_channels"]), timestep=torch.empty(1),
                            encoder_hidden_states=torch.empty(1, t, c["joint_attention_dim"]),
                            img_ids=torch.empty(n, 4), txt_ids=torch.empty(t, 4),
                            guidance=torch.empty(1) if c["guidance_embeds"] else None)
            if self.family == "z-image":  # a list of latent grids, 2x2 patches; its rope table caps each side
                rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
                return dict(x=[torch.empty(c["in_channels"], 1, 2 * rows, 2 * (n // rows))], t=torch.empty(1),
                            cap_feats=[torch.empty(t, c["cap_feat_dim"])])
            if self.family == "qwen-image":  # packed tokens; positions from img_shapes (a 1 x n strip)
                return dict(hidden_states=torch.empty(1, n, c["in_channels"]), timestep=torch.empty(1),
                            encoder_hidden_states=torch.empty(1, t, c["joint_attention_dim"]), img_shapes=[[(1, 1, n)]])
            # video models take a latent grid: one frame of n tokens, as square as n allows (Wan's rope table caps
            # each side at rope_max_seq_len)
            patch = c["patch_size"] if self.family == "hunyuan-video" else c["patch_size"][-1]
            rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
            hidden = torch.empty(1, c["in_channels"], 1, patch * rows, patch * (n // rows))
            if self.family == "hunyuan-video":
                return dict(hidden_states=hidden, timestep=torch.empty(1),
                            encoder_hidden_states=torch.empty(1, t, c["text_embed_dim"]),
                            encoder_attention_mask=torch.ones(1, t, dtype=torch.long),
                            pooled_projections=torch.empty(1, c["pooled_projection_dim"]), guidance=torch.empty(1))
            return dict(hidden_states=hidden, timestep=torch.empty(1),
                        encoder_hidden_states=torch.empty(1, t, c["text_dim"]))


@dataclass
class ForwardRecord:
    """One transformer forward as it really ran."""

    batch: int
    image_tokens: int
    text_tokens: int
    blocks_run: dict[str, int]  # per block list, how many blocks computed (a feature cache may skip the others)


class ForwardRecorder:
    """Records every forward of a FLUX or Wan transformer while it is active: batch, token counts, and which blocks
    really computed. A feature cache (FirstBlockCache, TaylorSeer, ...) that reuses a block's output never calls that
    block's layers, so a block counts as run only when one of its own sub-modules is called. ``flops()`` then prices
    the run exactly with the per-block counts of :class:`TransformerFlops`::

        with ForwardRecorder(pipe.transformer) as recorder:
            pipe(prompt)
        print(recorder.flops())
    """

    # FLUX takes packed tokens (hidden_states.shape[1]); Wan a latent grid or a one-row strip of tokens (Fresco's
    # mixed stages), whose patch count is the token count either way
    _FAMILIES = {"FluxTransformer2DModel": "flux", "WanTransformer3DModel": "wan"}

    def __init__(self, transformer: torch.nn.Module):
        name = type(transformer).__name__
        if name not in self._FAMILIES:
            raise ValueError(f"ForwardRecorder reads {' and '.join(self._FAMILIES)} transformers; got {name}")
        self.family = self._FAMILIES[name]
        self.transformer = transformer
        self.records: list[ForwardRecord] = []
        self._handles: list[Any] = []
        self._computed: set[tuple[str, int]] = set()

    def __enter__(self) -> ForwardRecorder:
        self._handles.append(self.transformer.register_forward_pre_hook(self._on_forward, with_kwargs=True))
        for kind, blocks in self.transformer.named_children():
            if isinstance(blocks, torch.nn.ModuleList):
                for index, block in enumerate(blocks):
                    for layer in block.children():
                        self._handles.append(layer.register_forward_pre_hook(self._on_layer(kind, index)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        text = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2 if self.family == "wan"
                                                                                                else 1]
        if self.family == "wan":
            tokens = math.prod(hidden.shape[2:]) // math.prod(module.config.patch_size)
        else:
            tokens = hidden.shape[1]
        kinds = [name for name, child in module.named_children() if isinstance(child, torch.nn.ModuleList)]
        self.records.append(ForwardRecord(hidden.shape[0], tokens, text.shape[1], dict.fromkeys(kinds, 0)))
        self._computed = set()

    def _on_layer(self, kind: str, index: int):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            if self.records and (kind, index) not in self._computed:
                self._computed.add((kind, index))
                self.records[-1].blocks_run[kind] += 1

        return hook

    def flops(self) -> int:
        """Transformer FLOPs of everything recorded, skipped blocks excluded."""
        return recorded_flops(self.records, {k: v for k, v in self.transformer.config.items() if not k.startswith("_")},
                              self.family)

    def to_dict(self) -> dict[str, Any]:
        config = {k: v for k, v in self.transformer.config.items() if not k.startswith("_")}
        return {"family": self.family, "config": json.loads(json.dumps(config, default=list)),
                "forwards": [asdict(r) for r in self.records]}


def recorded_flops(records: list[ForwardRecord], config: dict[str, Any], family: str = "flux") -> int:
    """Prices recorded forwards: the full forward at each size, less the blocks that did not compute."""
    total = 0
    for record in records:
        counter = _counter_for(family, json.dumps(config, sort_keys=True, default=list), record.text_tokens)
        n = record.image_tokens
        skipped = sum((counter.block_counts()[kind] - run) * counter.block(kind, n)
                      for kind, run in record.blocks_run.items())
        total += record.batch * (counter(n) - skipped)
    return total


@cache
def _counter_for(family: str, config_json: str, text_tokens: int) -> TransformerFlops:
    return TransformerFlops(family, json.loads(config_json), text_tokens)


def _quadratic_through(points: list[tuple[int, int]]) -> tuple[Fraction, Fraction, Fraction]:
    """Exact coefficients (c0, c1, c2) of the quadratic through three points (Lagrange, in rationals)."""
    (x0, y0), (x1, y1), (x2, y2) = points
    c2 = Fraction(y0, (x0 - x1) * (x0 - x2)) + Fraction(y1, (x1 - x0) * (x1 - x2)) + Fraction(y2, (x2 - x0) * (x2 - x1))
    c1 = Fraction(y1 - y0, x1 - x0) - c2 * (x0 + x1)
    c0 = y0 - c1 * x0 - c2 * x0 * x0
    return c0, c1, c2


@contextmanager
def _first_block_of_each_list(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, each of ``model``'s block lists holds only its first block (the forwards loop over them)."""
    lists = {name: child for name, child in model.named_children() if isinstance(child, torch.nn.ModuleList)}
    try:
        for name, blocks in lists.items():
            setattr(model, name, torch.nn.ModuleList(list(blocks)[:1]))
        yield
    finally:
        for name, blocks in lists.items():
            setattr(model, name, blocks)


@cache
def _meta_transformer(family: str, config_json: str) -> torch.nn.Module:
    """One meta-device build per architecture (seconds for the large ones), shared by every text-token count."""
    import diffusers

    classes = {"flux": diffusers.FluxTransformer2DModel, "hunyuan-video": diffusers.HunyuanVideoTransformer3DModel,
               "wan": diffusers.WanTransformer3DModel, "qwen-image": diffusers.QwenImageTransformer2DModel,
               "flux2": diffusers.Flux2Transformer2DModel, "z-image": diffusers.ZImageTransformer2DModel,
               "hunyuan-video15": diffusers.HunyuanVideo15Transformer3DModel}
    with torch.device("meta"):
        return classes[family](**json.loads(config_json))


@cache
def _shared_counter(name: str, text_tokens: int) -> TransformerFlops:
    spec = model_spec(name)
    return TransformerFlops(spec.family, spec.config(), text_tokens)


def flux_closed_form_flops(config: dict[str, Any], image_tokens: int, text_tokens: int) -> int:
    """FLOPs of one FLUX transformer forward by hand (2 per multiply-add), for cross-checking the counter.

    Double block: q/k/v/out and the 4x MLP for both streams, ``24 S D^2``, attention ``4 S^2 D``, two adaLN
    projections ``24 D^2``. Single block: q/k/v, MLP in and the fused output ``24 S D^2``, attention ``4 S^2 D``,
    adaLN ``6 D^2``. Plus embedders and the output head. ``S`` = image + text tokens, ``D`` = model width.
    """
    d = config["num_attention_heads"] * config["attention_head_dim"]
    n, t = image_tokens, text_tokens
    s = n + t
    channels = config["in_channels"]
    blocks = config["num_layers"] * (24 * s * d * d + 4 * s * s * d + 24 * d * d)
    blocks += config["num_single_layers"] * (24 * s * d * d + 4 * s * s * d + 6 * d * d)
    conditioning = 2 * (256 * d + d * d) * (2 if config.get("guidance_embeds") else 1)
    conditioning += 2 * (config["pooled_projection_dim"] * d + d * d)
    embed = 2 * n * channels * d + 2 * t * config["joint_attention_dim"] * d
    head = 2 * d * 2 * d + 2 * n * d * channels * config["patch_size"] ** 2
    return blocks + conditioning + embed + head


# text-token counts the fits trace at; any three distinct counts give the same exact coefficients
_TEXT_FIT_SIZES = (64, 128, 256)


def derive_forward_flops(name: str) -> list[list[int]]:
    """Coefficients ``c[i][j]`` of ``model``'s forward FLOPs ``sum c[i][j] * image**i * text**j``, exact: a quadratic
    in the image tokens at three text-token counts, each coefficient then a quadratic in the text tokens."""
    per_text = [TransformerFlops(model_spec(name).family, model_spec(name).config(), t)._fit()[0]
                for t in _TEXT_FIT_SIZES]
    coefficients = []
    for power in range(3):
        in_text = _quadratic_through([(t, c[power]) for t, c in zip(_TEXT_FIT_SIZES, per_text)])
        if any(c.denominator != 1 for c in in_text):
            raise RuntimeError(f"the FLOP count of {name} is not a polynomial of degree 2 in the token counts")
        coefficients.append([int(c) for c in in_text])
    return coefficients


def main() -> None:
    parser = argparse.ArgumentParser(description="Derive each named model's forward FLOPs from its traced "
                                                 "architecture; --write stores them for the core")
    parser.add_argument("--write", action="store_true", help=f"rewrite {FORWARD_FLOPS_FILE}")
    args = parser.parse_args()
    derived = {name: derive_forward_flops(name) for name, spec in MODELS.items() if spec.architecture is None}
    about = ("FLOPs of one transformer forward: sum of c[i][j] * image_tokens**i * text_tokens**j (torch's FLOP "
             "counter, 2 per multiply-add); derived by python -m fresco_plugin.tools.flops_trace --write")
    lines = [f"  {json.dumps(name)}: {json.dumps(c)}" for name, c in {"_about": about, **derived}.items()]
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    if args.write:
        from importlib import resources

        path = resources.files("fresco_plugin").joinpath(FORWARD_FLOPS_FILE)
        with open(str(path), "w") as handle:
            handle.write(text)
        print(f"wrote {path}")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
