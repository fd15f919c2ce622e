"""Which part of the 10x plan costs realism without guidance? Variants of ``flux-dev-10x`` on the shipped scenes model,
scored as ``fresco bench`` scores (KID on the realism encoder, whole-check adherence, 95% bootstrap intervals, paired
against the stock sampler at equal FLOPs), on a prompt set drawn with another seed than the bench's, so a plan chosen
here is not chosen on the bench's own prompts.

    python benchmarks/unguided_sweep.py --prompts 64 --held-out 16 --out sweep.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace

import numpy as np

from fresco_plugin.config import PRESETS, FrescoConfig
from fresco_plugin.flops import count_plan_flops
from fresco_plugin.speedup import BANDS, SketchShape, most_full_steps
from fresco_plugin.tools.bench import BASELINE_STEPS, RESAMPLES, Method, _json_safe, run_benchmark
from fresco_plugin.tools.shipped_model import SIZE, TEXT_TOKENS, prompt_set

TEN = PRESETS["flux-dev-10x"]
FULL_SHIFT = 3.16  # the scenes scheduler's shift at 256 tokens (e^max_shift), what the full-resolution stage gets
VARIANTS = {
    "preset": {},
    "no round": dict(promotion_rounds=0),
    "2-step sketch": dict(stage_steps=(2, 4), promotion_rounds=0),
    "1-step sketch": dict(stage_steps=(1, 4), promotion_rounds=0),
    "sketch at the full shift": dict(stage_shifts=(FULL_SHIFT, FULL_SHIFT)),
    "sketch at twice the full shift": dict(stage_shifts=(2 * FULL_SHIFT, FULL_SHIFT)),
    "nearest expansion": dict(expansion="nearest"),
    "hash field": dict(noise_source="hash"),
    "anchor positions": dict(position_mode="anchor"),
}
SKETCH_SHIFT = 1.65  # the scenes scheduler's shift at 64 tokens (e^base_shift): what the half-resolution sketch gets
# a full-resolution stage that restarts higher than its own schedule, so it revises the sketch more
RESTART_VARIANTS = {
    "preset": {},
    "full stage at shift 6": dict(stage_shifts=(SKETCH_SHIFT, 6.0)),
    "full stage at shift 12": dict(stage_shifts=(SKETCH_SHIFT, 12.0)),
    "2-step sketch, full stage at shift 6": dict(stage_steps=(2, 4), promotion_rounds=0,
                                                 stage_shifts=(SKETCH_SHIFT, 6.0)),
}
# the promotion round's choices, re-measured under the presets' restart (the ratio was chosen by fidelity before it)
ROUND_VARIANTS = {
    "preset": {},
    "ratio 0.3": dict(promotion_ratio=0.3),
    "ratio 0.5": dict(promotion_ratio=0.5),
    "no round": dict(promotion_rounds=0),
    "unsettled first": dict(promotion_order="unsettled_first"),
    "latent step variance": dict(score="latent_step_variance"),
    "channel variance": dict(score="channel_variance"),
    "dct expansion": dict(expansion="dct"),
}
SETS = {"plan": VARIANTS, "restart": RESTART_VARIANTS, "round": ROUND_VARIANTS}
SET_NAMES = [*sorted(SETS), "presets", "shapes", "default", "rounds", "round-free", "expansion", "sketch-shift",
             "low-restart", "trajectory", "restart-spacing", "unified"]
# each budget's promotion round promoting a tenth or nothing (the video sweep's lead), paired with the preset
BUDGET_ROUNDS = {"ratio 0.1": dict(promotion_ratio=0.1), "no round": dict(promotion_rounds=0)}
# the two changes that lowered unguided KID in every budget's sweep, each inside noise alone (no round: "rounds";
# restart 3: preset_restart3_sweep.json), alone and together, paired with the preset
BUDGET_ROUND_FREE = {"no round": dict(promotion_rounds=0), "unguided restart 3": dict(unguided_restart_shift_scale=3.0),
                     "no round, unguided restart 3": dict(promotion_rounds=0, unguided_restart_shift_scale=3.0)}
# the children's clean latent interpolated across token borders instead of copied flat into each 2x2 group
BUDGET_EXPANSION = {"bilinear expansion": dict(expansion="bilinear")}
# the sketch at a lower shift than its own e^0.5 (so its three steps end nearer the clean picture and hand a sharper x0
# to the restart), the full-resolution stage at its own e^1.15 (then x2, as in the presets)
BUDGET_SKETCH_SHIFT = {f"sketch shift {shift:g}": dict(stage_shifts=(shift, math.exp(1.15))) for shift in (1.0, 0.6)}
# where the clean latent still carries a fifth of the state (the restart before the presets' x2), does the expansion
# matter?
BUDGET_LOW_RESTART = {f"restart x{scale:g}{', bilinear' if expansion == 'bilinear' else ''}":
                      dict(restart_shift_scale=scale, expansion=expansion)
                      for scale in (1.0, 1.5) for expansion in ("hadamard", "bilinear")}
# re-noise back along each token's own velocity (its predicted noise) instead of with the field's value
BUDGET_TRAJECTORY = {"trajectory renoise": dict(strategy_options={"renoise": "trajectory"})}
# the restart's raised first sigma, then the stage's own shift's spacing down to the stock last sigma (the video
# presets' choice at 3x unguided and 5x; first measured on the model shipped before as an experiment-only "stock tail")
BUDGET_RESTART_SPACING = {"own spacing": dict(restart_spacing="own")}
# the unified field's fidelity lead over fresh noise at the switch (the near-lossless issue asks +5 dB at equal plans)
# against the restart: a higher restart redraws more of the picture from the noise, whichever noise it is
UNIFIED_RESTART_SCALES = (1.0, 1.5, 2.0)


def unified_variants(scales) -> dict[str, dict]:
    return {f"restart x{scale:g}{', fresh noise' if fresh else ''}":
            dict(restart_shift_scale=scale, **(dict(strategy="fresh-noise") if fresh else {}))
            for scale in scales for fresh in (False, True)}


BUDGET_VARIANTS = {"rounds": BUDGET_ROUNDS, "round-free": BUDGET_ROUND_FREE, "expansion": BUDGET_EXPANSION,
                   "sketch-shift": BUDGET_SKETCH_SHIFT, "low-restart": BUDGET_LOW_RESTART,
                   "trajectory": BUDGET_TRAJECTORY, "restart-spacing": BUDGET_RESTART_SPACING}
# sketch lengths re-measured once the full-resolution stage restarts higher (the presets' 3 was chosen by fidelity
# before it): each with the most full-resolution steps that still reach the budget on FLUX.1-dev, as for_speedup plans
SHAPE_BUDGETS = {"5x": 5.0, "10x": 10.0}
SHAPE_SKETCH_STEPS = (1, 2, 3, 4)
BUDGET_PRESETS = {"3x": "flux-dev-3x", "5x": "flux-dev-5x", "10x": "flux-dev-10x"}
# the default FrescoConfig() follows the call's steps: candidates for its target, each with its band's promotion ratio,
# at FLUX.1-dev's pipeline default (28 steps) and at the presets' 50
DEFAULT_TARGETS = (3.0, 5.0)
DEFAULT_CALL_STEPS = (28, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7, help="prompt-set seed (the bench uses 2026)")
    parser.add_argument("--regime", default="unguided", choices=["unguided", "guided", "both"])
    parser.add_argument("--set", default="plan", choices=SET_NAMES,
                        help="which variants: plan (the first sweep), restart (higher full-resolution restarts), "
                        "round (the 10x preset's promotion round: ratio, order, score, expansion), "
                        "presets (each budget's preset with and without --restart-shift-scale, against its steps@), "
                        "shapes (sketch lengths at 5x and 10x with the presets' restart, against steps@), or default "
                        "(FrescoConfig(target_speedup=T) on calls of 28 and 50 steps, against the stock call and "
                        "steps@ at equal FLOPs), or rounds (each "
                        "--budgets preset promoting a tenth and with no round, paired with the preset and steps@), or "
                        "round-free (each --budgets preset with no round, restarting at 3x its shift without "
                        "guidance, and both, paired with the preset and steps@), or expansion (each --budgets preset "
                        "with the bilinear expansion, paired with the preset and steps@), or sketch-shift (each "
                        "--budgets preset with its sketch at shift 1 and 0.6, paired with the preset and steps@), or "
                        "low-restart (each --budgets preset restarting at x1 and x1.5, each with the Hadamard and "
                        "the bilinear expansion, paired with the preset and steps@), or trajectory (each --budgets "
                        "preset re-noising along each token's velocity, paired with the preset and steps@), or "
                        "restart-spacing (each --budgets preset with restart_spacing='own', paired with the preset "
                        "and steps@), or unified "
                        "(each --budgets preset restarting at each --unified-scales, by default x1, x1.5 and x2, "
                        "with the unified field and with fresh noise at the switch: PSNR to the baseline, paired with "
                        "the preset and steps@)")
    parser.add_argument("--budgets", nargs="+", default=list(BUDGET_PRESETS), choices=list(BUDGET_PRESETS),
                        help="the budgets of the sets paired with the preset (rounds, round-free, expansion, "
                        "sketch-shift, low-restart, trajectory, unified)")
    parser.add_argument("--restart-shift-scale", type=float, default=2.0)
    parser.add_argument("--unified-scales", type=float, nargs="+", default=UNIFIED_RESTART_SCALES,
                        help="the unified set's restart scales")
    parser.add_argument("--out", default="unguided_sweep.json")
    args = parser.parse_args()
    methods = [Method("baseline", "baseline", steps=BASELINE_STEPS)]
    if args.set == "default":
        for call_steps in DEFAULT_CALL_STEPS:
            if call_steps != BASELINE_STEPS:
                methods.append(Method(f"stock {call_steps} steps", "stock call", steps=call_steps))
            for target in DEFAULT_TARGETS:
                ratio = next(shape for low, shape in reversed(BANDS) if target >= low).promotion_ratio
                config = FrescoConfig(target_speedup=target, promotion_ratio=ratio)
                budget = f"{target:g}x of {call_steps}"
                methods += [Method(f"steps@{budget}", "fewer steps", budget=budget),
                            Method(f"default {budget}", "FrescoConfig(target_speedup=...)", config=config,
                                   steps=call_steps, budget=budget)]
    elif args.set == "shapes":
        for budget, target in SHAPE_BUDGETS.items():
            methods.append(Method(f"steps@{budget}", "fewer steps", budget=budget))
            ratio = next(shape for low, shape in reversed(BANDS) if target >= low).promotion_ratio
            for sketch in SHAPE_SKETCH_STEPS:
                shape = SketchShape(sketch, ratio)
                full, _ = most_full_steps(shape, target)
                if full is not None:
                    rounds = "one round" if sketch >= 3 else "no round"
                    methods.append(Method(f"{sketch}+{full} steps, {rounds}@{budget}", f"Fresco {budget} shapes",
                                          config=shape.config(full), budget=budget))
    elif args.set in BUDGET_VARIANTS or args.set == "unified":
        variants = unified_variants(args.unified_scales) if args.set == "unified" else BUDGET_VARIANTS[args.set]
        for budget in args.budgets:
            preset = PRESETS[BUDGET_PRESETS[budget]]
            methods += [Method(f"steps@{budget}", "fewer steps", budget=budget),
                        Method(f"fresco@{budget}", "Fresco", config=preset, budget=budget)]
            methods += [Method(f"fresco {label}@{budget}", f"Fresco, {label}", config=replace(preset, **overrides),
                               budget=budget, against=f"fresco@{budget}")
                        for label, overrides in variants.items() if replace(preset, **overrides) != preset]
    elif args.set == "presets":
        for budget, preset in BUDGET_PRESETS.items():
            scaled = replace(PRESETS[preset], restart_shift_scale=args.restart_shift_scale)
            methods += [Method(f"steps@{budget}", "fewer steps", budget=budget),
                        Method(f"fresco@{budget}", "Fresco", config=PRESETS[preset], budget=budget),
                        Method(f"fresco-restart-{args.restart_shift_scale:g}@{budget}", "Fresco, higher restart",
                               config=scaled, budget=budget)]
    else:
        methods.append(Method("steps@10x", "fewer steps", budget="10x"))
        for name, overrides in SETS[args.set].items():
            config = replace(TEN, **overrides)
            speedup = count_plan_flops(config, "flux-dev").speedup
            methods.append(Method(f"{name} ({speedup:.1f}x)", "Fresco 10x variants", config=config, budget="10x"))
    regimes = ("unguided", "guided") if args.regime == "both" else (args.regime,)
    start = time.perf_counter()
    report = run_benchmark(prompt_set(args.prompts, args.held_out, seed=args.seed), methods, regimes=regimes,
                           label="sweep")
    report = {k: v for k, v in report.items() if not k.startswith("_")}
    report["seconds"] = time.perf_counter() - start
    report["size"], report["text_tokens"] = SIZE, TEXT_TOKENS
    if args.set == "unified":
        report["unified_field_leads"] = unified_field_leads(report, regimes)
    with open(args.out, "w") as f:
        json.dump(_json_safe(report), f, indent=1)
    print_rows(report, regimes)
    for lead in report.get("unified_field_leads", []):
        print(f"{lead['regime']:9s} unified field - fresh noise, {lead['plan']:28s} PSNR {lead['psnr']['value']:+.2f} "
              f"[{lead['psnr']['ci'][0]:+.2f}, {lead['psnr']['ci'][1]:+.2f}] dB")


def unified_field_leads(report: dict, regimes) -> list[dict]:
    """Per plan of the unified set: the field's PSNR to the baseline minus fresh noise's, paired per prompt, with a
    95% percentile-bootstrap interval over prompts."""
    leads = []
    for regime in regimes:
        rows = {row["method"]: row for row in report["regimes"][regime]["methods"]}
        for name, fresh in rows.items():
            if ", fresh noise@" not in name:
                continue
            unified_name = name.replace(", fresh noise", "")
            budget = name.rsplit("@", 1)[1]
            unified = rows.get(unified_name) or rows[f"fresco@{budget}"]  # the preset's own restart is its row
            difference = np.asarray(unified["per_prompt"]["psnr"]) - np.asarray(fresh["per_prompt"]["psnr"])
            resampled = np.random.default_rng(0).integers(len(difference), size=(RESAMPLES, len(difference)))
            low, high = np.percentile(difference[resampled].mean(1), [2.5, 97.5])
            leads.append(dict(regime=regime, plan=unified_name.replace("fresco ", ""),
                              psnr=dict(value=float(difference.mean()), ci=[float(low), float(high)])))
    return leads


def print_rows(report: dict, regimes) -> None:
    """One line per method and regime: FLOPs, KID and adherence, and the paired differences against its steps@."""
    def figure(entry: dict) -> str:
        return f"{entry['value']:9.1f} [{entry['ci'][0]:9.1f}, {entry['ci'][1]:9.1f}]"

    for regime in regimes:
        for row in report["regimes"][regime]["methods"]:
            versus, other = row["versus_fewer_steps"], row.get("versus_other")
            print(f"{regime:9s} {row['method']:42s} FLOPs {row['flops_ratio']:5.2f}  KID {figure(row['kid'])}  "
                  f"adherence {row['adherence']['whole']['value']:.2f}"
                  + (f"  PSNR {row['psnr']:.2f}" if row.get("psnr") is not None else "") + "".join(
                      f"  KID - {v['method']} {figure(v['kid'])}  adherence - it {v['adherence']['value']:+.2f} "
                      f"{v['adherence']['ci']}" for v in (versus, other) if v is not None))


if __name__ == "__main__":
    main()
