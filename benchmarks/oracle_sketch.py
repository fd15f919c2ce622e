"""Is it the sketch or the switch? Fresco's unguided realism loss split in two, on the shipped scenes model.

At the switch to full resolution Fresco hands the full-resolution stage the sketch's clean-latent estimate, expanded
2x2, re-noised with the coordinate-bound field at the restart sigma. Here the same plan (the budget's preset without
its promotion round, so the whole latent switches at once) gets, in place of the sketch's estimate, an *oracle*: the
clean-latent estimate of the stock full-resolution sampler (50-step schedule, the stock shift) run from the field's own
full-resolution noise down to the sigma the sketch ends at.

- ``oracle low band``: the oracle averaged over each 2x2 group and copied back, the most a perfect half-resolution
  sketch could hand over. If this variant matches fewer steps at equal FLOPs, what Fresco loses is the sketch's
  content (what the low-resolution model draws), not the switch.
- ``oracle full``: the oracle at full detail. If even this loses to fewer steps, the restart and the steps left after
  it cost realism whatever the sketch.

Both oracles cost a stock run of the sampler's first steps at full resolution, counted in their FLOPs (so their FLOPs
ratio is not the budget's: they are diagnostics, not methods). Also recorded, per switch: how far the sketch's own
expanded estimate lies from the oracle's low band (latent RMS and correlation). Unguided only (the regime where
Fresco loses, BENCHMARKS.md); scored as ``fresco bench`` scores, on the sweep prompt set (seed 7, not the bench's).

    python benchmarks/oracle_sketch.py --prompts 64 --held-out 16 --out benchmarks/results/oracle_sketch.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from unguided_sweep import BUDGET_PRESETS, FULL_SHIFT, print_rows

from fresco_plugin.config import PRESETS
from fresco_plugin.layout import TokenLayout, pack, unpack
from fresco_plugin.registry import register_strategy
from fresco_plugin.tools.bench import BASELINE_STEPS, Method, _json_safe, run_benchmark
from fresco_plugin.tools.shipped_model import SIZE, TEXT_TOKENS, load_scenes_pipeline, prompt_set
from fresco_plugin.transitions import FrescoRule, Transition, _split, expand_tokens


class _Oracle:
    """The pipeline whose transformer the oracle runs, the text inputs of its latest call, and per-switch figures."""

    def __init__(self):
        self.pipe: Any = None
        self.text: dict[str, Any] = {}
        self.switches: list[dict[str, float]] = []

    def attach(self, pipe) -> None:
        self.pipe = pipe

        def remember(module, args, kwargs):  # unguided: the sketch's last call carries the prompt
            self.text = {k: kwargs[k] for k in ("encoder_hidden_states", "pooled_projections", "txt_ids")}

        pipe.transformer.register_forward_pre_hook(remember, with_kwargs=True)

    @torch.no_grad()
    def clean_estimate(self, noise: torch.Tensor, sigma_end: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """``x - sigma * v`` of the stock full-resolution sampler started at ``noise`` and stopped at ``sigma_end``."""
        text = dict(self.text)
        ids = self.pipe._prepare_latent_image_ids(1, rows, cols, noise.device, torch.float32)
        base = np.linspace(1.0, 1.0 / BASELINE_STEPS, BASELINE_STEPS)
        stock = FULL_SHIFT * base / (1 + (FULL_SHIFT - 1) * base)
        end = float(sigma_end)
        sigmas = [float(s) for s in stock if s > end + 1e-6] + [end]

        def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
            return self.pipe.transformer(hidden_states=x, timestep=torch.full((x.shape[0],), sigma), img_ids=ids,
                                         return_dict=False, **text)[0].float()

        x = noise.float()
        for sigma, following in zip(sigmas[:-1], sigmas[1:]):
            x = x + (following - sigma) * velocity(x, sigma)
        return x - end * velocity(x, end)


ORACLE = _Oracle()


class OracleSketchRule(FrescoRule):
    """Fresco's whole-latent switch, the sketch's clean estimate replaced by the oracle's (``band``: low, full)."""

    def __init__(self, band: str = "low"):
        super().__init__()
        if band not in ("low", "full"):
            raise ValueError(f"oracle band={band!r}: use 'low' or 'full'")
        self.band = band

    def __call__(self, t: Transition):
        if not bool(t.promote.all()) or t.layout.coarsest_level != 1 or t.geometry.num_frames != 1:
            raise ValueError("the oracle replaces a whole half-resolution image sketch at once: promotion_rounds=0")
        s = _split(t)
        g = t.geometry
        batch = t.latents.shape[0]
        noise_full = self.noise(t, TokenLayout.uniform(batch, g, 0, t.latents.device))
        oracle = ORACLE.clean_estimate(noise_full, t.sigma, g.rows, g.cols)
        picture = unpack(oracle, g.rows, g.cols, g.patch)
        low = pack(F.avg_pool2d(picture, 2).repeat_interleave(2, -1).repeat_interleave(2, -2), g.patch)
        place = (s.layout.row * g.cols + s.layout.col).unsqueeze(-1).expand(-1, -1, oracle.shape[-1])
        sketch = expand_tokens(s.parents_x0, g, "nearest")
        reference = low.gather(1, place)
        ORACLE.switches.append(dict(
            band=self.band, sigma=float(t.sigma),
            sketch_rms_from_oracle_low=float((sketch - reference).pow(2).mean().sqrt()),
            oracle_low_rms=float(reference.pow(2).mean().sqrt()),
            correlation=float(torch.corrcoef(torch.stack([sketch.flatten(), reference.flatten()]))[0, 1])))
        signal = (low if self.band == "low" else oracle).gather(1, place)
        target = t.restart_sigma
        children = (1.0 - target) * signal + target * self.noise(t, s.layout)
        return children.to(t.latents.dtype), s.layout, target


register_strategy("oracle-sketch", OracleSketchRule)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7, help="prompt-set seed (the bench uses 2026)")
    parser.add_argument("--budgets", nargs="+", default=["3x", "10x"], choices=list(BUDGET_PRESETS))
    parser.add_argument("--out", default="oracle_sketch.json")
    args = parser.parse_args()
    pipe = load_scenes_pipeline(progress=False)
    ORACLE.attach(pipe)
    methods = [Method("baseline", "baseline", steps=BASELINE_STEPS)]
    for budget in args.budgets:
        preset = PRESETS[BUDGET_PRESETS[budget]]
        whole = replace(preset, promotion_rounds=0)
        methods += [Method(f"steps@{budget}", "fewer steps", budget=budget),
                    Method(f"fresco@{budget}", "Fresco", config=preset, budget=budget),
                    Method(f"fresco no round@{budget}", "Fresco, no round", config=whole, budget=budget,
                           against=f"fresco@{budget}")]
        methods += [Method(f"oracle {band}@{budget}", f"Fresco, oracle {band} sketch",
                           config=replace(whole, strategy="oracle-sketch", strategy_options={"band": band}),
                           budget=budget, against=f"fresco no round@{budget}") for band in ("low", "full")]
    start = time.perf_counter()
    report = run_benchmark(prompt_set(args.prompts, args.held_out, seed=args.seed), methods, regimes=("unguided",),
                           pipe=pipe, label="oracle sketch")
    report = {k: v for k, v in report.items() if not k.startswith("_")}
    report["seconds"] = time.perf_counter() - start
    report["size"], report["text_tokens"] = SIZE, TEXT_TOKENS
    switches = {}
    for entry in ORACLE.switches:
        switches.setdefault(f"{entry['band']} at sigma {entry['sigma']:.3f}", []).append(entry)
    report["switches"] = {key: {name: float(np.mean([e[name] for e in entries]))
                                for name in ("sketch_rms_from_oracle_low", "oracle_low_rms", "correlation")}
                          | {"count": len(entries)} for key, entries in switches.items()}
    with open(args.out, "w") as f:
        json.dump(_json_safe(report), f, indent=1)
    print_rows(report, ("unguided",))
    for key, figures in report["switches"].items():
        print(key, {k: round(v, 3) for k, v in figures.items()})


if __name__ == "__main__":
    main()
