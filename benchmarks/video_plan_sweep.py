"""Which plan shape keeps video realism at each budget? Candidate plans on the shipped video model, scored as
``fresco bench --video`` scores them (frame KID, checker adherence, flicker, flicker where promotion boundaries move;
95% bootstrap intervals), each against its own stock sampler at equal counted FLOPs, on a prompt set drawn with
another seed than the bench's, so a plan chosen here is not chosen on the bench's own prompts.

    python benchmarks/video_plan_sweep.py --set 5x --prompts 24 --held-out 8 --out sweep.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from fresco_plugin.config import PRESETS, FrescoConfig
from fresco_plugin.tools.bench import _json_safe
from fresco_plugin.tools.shipped_model import CLIPS_DIR, clip_prompt_set
from fresco_plugin.tools.video_bench import BASELINE_STEPS, BUDGETS, VideoMethod, run_video_benchmark

# hunyuan-video-5x before this sweep: the paper's NFE (18), a 10-step sketch promoting a quarter, restart at the shift
FIVE = FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(10, 8), promotion_ratio=0.25, restart_shift_scale=1.0)
# the picture presets' rule, which the video presets followed until the no-round set: a 3-step sketch with one
# promotion round (a half at 3x, a tenth at 5x and 10x), restart at twice the shift
RULE = {budget: PRESETS[f"flux-dev-{budget}"] for budget in ("3x", "5x", "10x")}
RULE_FIVE = RULE["5x"]
RESTARTS = (2.0, 3.0, 4.0)
# variants paired with their budget's first plan
PAIRED_SETS = ("no-round", "round-free", "unguided-restart", "3x-sketch", "3x-long-sketch", "trajectory",
               "3x-fresh-noise", "3x-sketch-shift", "3x-restart", "restart-spacing", "10x-restart",
               "10x-sketch-shift")
SKETCH_SHIFTS = (2.0, 1.5, 1.0, 0.5, 0.25)  # below the shipped video model's static shift of 3
LOW_SHIFT_RESTARTS = (2.0, 2.5, 4.0)  # around the unguided 3 the 3x preset kept when its sketch moved to shift 0.5
UNGUIDED_RESTARTS = (4.0, 6.0)  # beyond the presets' 3, without guidance only
# beyond the 10x preset's unguided restart before this set (4): x6 flickered less than x4 and x3; as the restart nears
# pure noise the plan nears four plain steps, which flicker less than its five-step peer
UNGUIDED_10X_RESTARTS = (6.0, 8.0, 12.0)
# a 10x sketch that ends cleaner (the model's shift 3 lands its 3 steps at sigma 0.8; 1 at 0.57, 0.5 at 0.4), each
# with a lower restart than the preset's 8, which mostly drowns the sketch (sigma 0.97)
SKETCH_SHIFTS_10X = (1.0, 0.5)
SKETCH_SHIFT_10X_RESTARTS = (3.0, 4.0, 8.0)
ROUNDS = {"ratio 0.5": dict(promotion_ratio=0.5), "ratio 0.1": dict(promotion_ratio=0.1),
          "no round": dict(promotion_rounds=0)}


def candidates(name: str) -> list[tuple[str, str, FrescoConfig]]:
    """(budget, label, plan) of a set; plans of one budget share a FLOPs peer (the first one's)."""
    if name == "5x":  # the 5x preset's shape against the rule, and each change alone (two FLOPs, two peers)
        return [("5x (10+8)", "old hunyuan-video-5x (10+8, ratio 0.25, restart x1)", FIVE),
                ("5x (10+8)", "10+8, ratio 0.25, restart x2", replace(FIVE, restart_shift_scale=2.0)),
                ("5x (3+9)", "rule (3+9, ratio 0.1, restart x2)", RULE_FIVE),
                ("5x (3+9)", "3+9, ratio 0.1, restart x1", replace(RULE_FIVE, restart_shift_scale=1.0))]
    plans = RULE
    if name == "restart":  # unguided lost realism at every budget: restart higher still
        return [(budget, f"{budget} restart x{scale:g}", replace(plan, restart_shift_scale=scale))
                for budget, plan in plans.items() for scale in RESTARTS]
    if name == "round":  # the promotion round's share (3x's 0.5 was chosen by picture fidelity), and no round
        return [(budget, f"{budget} {label}", replace(plans[budget], **overrides))
                for budget in ("3x", "10x") for label, overrides in ROUNDS.items()]
    if name == "no-round":  # the round sweep's lead on more prompts, each variant paired with its budget's plan
        return [(budget, f"{budget} {label}", replace(plan, **overrides)) for budget, plan in plans.items()
                for label, overrides in ROUNDS.items()
                if label != "ratio 0.5" or plan.promotion_ratio == 0.5]
    if name == "round-free":  # what is left of the unguided gap: the video presets restarting higher, a shorter sketch
        # the presets as they were then: restart x2 in both regimes (they now restart x3 without guidance)
        presets = {budget: replace(PRESETS[preset], unguided_restart_shift_scale=None)
                   for budget, preset in BUDGETS.items()}
        out = [(budget, f"{budget} {BUDGETS[budget]}", plan) for budget, plan in presets.items()]
        out += [(budget, f"{budget} restart x3", replace(plan, restart_shift_scale=3.0))
                for budget, plan in presets.items()]
        return [*out, ("10x", "10x 2-step sketch", replace(presets["10x"], stage_steps=(2, 4)))]
    if name == "unguided-restart":  # the presets' unguided restart (3) against higher ones: run with --regime unguided
        presets = {budget: PRESETS[preset] for budget, preset in BUDGETS.items()}
        out = [(budget, f"{budget} {BUDGETS[budget]}", plan) for budget, plan in presets.items()]
        return out + [(budget, f"{budget} unguided restart x{scale:g}",
                       replace(plan, unguided_restart_shift_scale=scale))
                      for budget, plan in presets.items() for scale in UNGUIDED_RESTARTS]
    if name == "10x-restart":  # run with --regime unguided; paired with the preset as it was before this set
        preset = replace(PRESETS[BUDGETS["10x"]], unguided_restart_shift_scale=4.0)
        return [("10x", f"10x {BUDGETS['10x']}", preset),
                *[("10x", f"10x unguided restart x{scale:g}", replace(preset, unguided_restart_shift_scale=scale))
                  for scale in UNGUIDED_10X_RESTARTS]]
    if name == "10x-sketch-shift":  # run with --regime unguided; paired with the preset
        preset = PRESETS[BUDGETS["10x"]]
        full_shift = json.loads((CLIPS_DIR / "scheduler" / "scheduler_config.json").read_text())["shift"]
        return [("10x", f"10x {BUDGETS['10x']}", preset),
                *[("10x", f"10x sketch shift {shift:g}, unguided restart x{scale:g}",
                   replace(preset, stage_shifts=(shift, full_shift), unguided_restart_shift_scale=scale))
                  for shift in SKETCH_SHIFTS_10X for scale in SKETCH_SHIFT_10X_RESTARTS]]
    if name == "restart-spacing":  # a restart's level kept, its steps spaced as the stage's own shift spaces them
        return [item for budget, preset in BUDGETS.items() for item in (
            (budget, f"{budget} {preset}", PRESETS[preset]),
            (budget, f"{budget} own spacing", replace(PRESETS[preset], restart_spacing="own")))]
    if name in ("3x-sketch", "3x-long-sketch"):  # unguided 3x lost realism at every restart: the same full stage
        # after a shorter sketch, or after a longer one (realism rose with the sketch's length up to the preset's 3;
        # 5 steps cost what the 17-step peer costs)
        preset = PRESETS[BUDGETS["3x"]]
        lengths = (2, 1) if name == "3x-sketch" else (4, 5, 6)
        return [("3x", f"3x {BUDGETS['3x']}", preset),
                *[("3x", f"3x {steps}-step sketch ({steps}+16)", replace(preset, stage_steps=(steps, 16)))
                  for steps in lengths]]
    if name == "3x-fresh-noise":  # independent noise at the switch instead of the field's (Bottleneck's choice)
        preset = PRESETS[BUDGETS["3x"]]
        return [("3x", f"3x {BUDGETS['3x']}", preset),
                ("3x", "3x fresh noise at the switch", replace(preset, strategy="fresh-noise"))]
    if name == "3x-sketch-shift":  # a sketch that leaves high noise sooner, before the same full stage
        preset = PRESETS[BUDGETS["3x"]]
        full_shift = json.loads((CLIPS_DIR / "scheduler" / "scheduler_config.json").read_text())["shift"]
        return [("3x", f"3x {BUDGETS['3x']}", preset),
                *[("3x", f"3x sketch shift {shift:g}", replace(preset, stage_shifts=(shift, full_shift)))
                  for shift in SKETCH_SHIFTS]]
    if name == "3x-restart":  # the sketch at shift 0.5 hands over a cleaner layout: does the unguided restart fit?
        preset = PRESETS[BUDGETS["3x"]]
        return [("3x", f"3x {BUDGETS['3x']}", preset),
                *[("3x", f"3x unguided restart x{scale:g}", replace(preset, unguided_restart_shift_scale=scale))
                  for scale in LOW_SHIFT_RESTARTS]]
    if name == "trajectory":  # re-noise back along each token's own velocity instead of with the field's value
        presets = {budget: PRESETS[preset] for budget, preset in BUDGETS.items()}
        out = [(budget, f"{budget} {BUDGETS[budget]}", plan) for budget, plan in presets.items()]
        trajectory = {"renoise": "trajectory"}
        return out + [(budget, f"{budget} trajectory renoise", replace(plan, strategy_options=trajectory))
                      for budget, plan in presets.items()]
    if name == "frame-shared-detail":  # its methods are frame_shared_detail_methods()
        return []
    # tube: promotions decided per place for all frames at once, against token by token
    return [(budget, f"{budget} by {unit}", replace(plan, promotion_unit=unit))
            for budget, plan in plans.items() for unit in ("token", "tube")]


def frame_shared_detail_methods() -> list[VideoMethod]:
    """The 50-step baseline, 5 plain steps and the 10x preset from the stock noise, and each again from that noise
    with its fine detail shared across latent frames (a still background's prior): the stock samplers paired with
    their stock-noise selves, Fresco with the plain steps from the shared noise, its FLOPs peer on equal noise."""
    shared = "frame-shared detail"
    plan = PRESETS[BUDGETS["10x"]]
    return [VideoMethod("baseline", steps=BASELINE_STEPS), VideoMethod("steps@10x", budget="10x"),
            VideoMethod(f"10x {BUDGETS['10x']}", config=plan, budget="10x"),
            VideoMethod("baseline, shared detail", steps=BASELINE_STEPS, against="baseline", initial_noise=shared),
            VideoMethod("steps@10x, shared detail", budget="10x", against="steps@10x", initial_noise=shared),
            VideoMethod(f"10x {BUDGETS['10x']}, shared detail", config=plan, budget="10x",
                        against="steps@10x, shared detail", initial_noise=shared)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="5x",
                        choices=["5x", "restart", "tube", "round", "no-round", "round-free", "unguided-restart",
                                 "3x-sketch", "3x-long-sketch", "trajectory", "3x-fresh-noise",
                                 "3x-sketch-shift", "3x-restart", "restart-spacing", "10x-restart",
                                 "10x-sketch-shift", "frame-shared-detail"],
                        help="5x: the 5x preset's shape against the picture presets' rule, and each change alone; "
                             "restart: each budget's plan with its full-resolution stage restarting at 2, 3 and 4 "
                             "times its shift; tube: each budget's plan promoting token by token and by tube; "
                             "round: the 3x and 10x plans promoting a half, a tenth, or with no round; no-round: "
                             "each budget's plan as it is, promoting a tenth, and with no round, each paired with "
                             "the plan as it is; round-free: the video presets as they are, restarting at 3x "
                             "their shift, and 10x with a 2-step sketch, each paired with the preset; "
                             "unguided-restart: the video presets restarting at 3 (as they are), 4 and 6 times their "
                             "shift without guidance, paired with the preset (use --regime unguided); 3x-sketch: "
                             "the 3x preset (3+16) against a 2- and a 1-step sketch before the same 16 steps, paired "
                             "with it; 3x-long-sketch: the same against a 4-, 5- and 6-step sketch; trajectory: "
                             "each video preset re-noising along each token's velocity, paired with the preset; "
                             "3x-fresh-noise: the 3x preset with independent noise at the switch, paired with it; "
                             "3x-sketch-shift: the 3x preset with its sketch at shift 2, 1.5, 1, 0.5 and 0.25 "
                             "instead of the model's 3, paired with it; 3x-restart: the 3x preset (sketch at shift "
                             "0.5) restarting at 2, 2.5 and 4 times its shift without guidance instead of 3, paired "
                             "with it (use --regime unguided); restart-spacing: each video preset with its restart's "
                             "steps spaced by the stage's own shift from the level the restart starts at, paired "
                             "with the preset; 10x-restart: the 10x preset restarting at 6, 8 and 12 times its "
                             "shift without guidance instead of 4, paired with it (use --regime unguided); "
                             "10x-sketch-shift: the 10x preset with its sketch at shift 1 and 0.5 instead of the "
                             "model's 3, each restarting at 3, 4 and 8 times its shift without guidance, paired with "
                             "the preset (use --regime unguided); frame-shared-detail: the baseline, 5 plain steps "
                             "and the 10x preset from the stock noise and from that noise with its 2x2 detail "
                             "shared across latent frames; the stock samplers paired with their stock-noise selves, "
                             "Fresco with 5 plain steps on the shared noise")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7, help="prompt-set seed (the bench uses 2026)")
    parser.add_argument("--regime", default="both", choices=["unguided", "guided", "both"])
    parser.add_argument("--out", default="video_plan_sweep.json")
    args = parser.parse_args()
    methods = frame_shared_detail_methods() if args.set == "frame-shared-detail" else [
        VideoMethod("baseline", steps=BASELINE_STEPS)]
    first_of = {}
    for budget, label, config in candidates(args.set):
        if budget not in first_of:
            methods.append(VideoMethod(f"steps@{budget}", budget=budget))
            first_of[budget] = label
        against = first_of[budget] if args.set in PAIRED_SETS and label != first_of[budget] else None
        methods.append(VideoMethod(label, config=config, budget=budget, against=against))
    regimes = ("unguided", "guided") if args.regime == "both" else (args.regime,)
    start = time.perf_counter()
    report = run_video_benchmark(clip_prompt_set(args.prompts, args.held_out, seed=args.seed), regimes=regimes,
                                 methods=methods)
    report = {k: v for k, v in report.items() if not k.startswith("_")}
    report["seconds"] = time.perf_counter() - start
    with open(args.out, "w") as f:
        json.dump(_json_safe(report), f, indent=1)
    print_rows(report)


def print_rows(report: dict) -> None:
    """One line per Fresco plan and regime: its peer's steps, the paired differences against it, and the flicker
    where its promotion boundaries move against the baseline's in the same places."""
    def figure(entry: dict, scale: float = 1.0) -> str:
        return f"{entry['value'] * scale:+8.1f} [{entry['ci'][0] * scale:+8.1f}, {entry['ci'][1] * scale:+8.1f}]"

    steps = report["equal_flops_steps"]
    for regime, block in report["regimes"].items():
        for row in block["methods"]:
            versus, boundary = row["versus_fewer_steps"], row["boundary_flicker"]
            if versus is None:
                if row.get("versus_other"):  # a stock method paired with another (frame-shared-detail)
                    other = row["versus_other"]
                    print(f"{regime:9s} {row['method']:48s} against {other['method']}: KID {figure(other['kid'])}  "
                          f"patch SWD {figure(other['patch_swd'])}  flicker x1e3 {figure(other['flicker'], 1e3)}")
                continue
            moving = ("no moving boundary" if "versus_baseline" not in boundary else
                      f"boundary flicker - baseline x1e3 {figure(boundary['versus_baseline'], 1e3)} "
                      f"({boundary['clips']} clips, {boundary['share']:.2f} of entries)")
            other = row.get("versus_other")
            print(f"{regime:9s} {row['method']:48s} FLOPs {row['flops_ratio']:5.2f} (peer {steps[row['budget']]:2d} "
                  f"steps)  KID - peer {figure(versus['kid'])}  adherence - peer {figure(versus['adherence'])}  "
                  f"patch SWD - peer {figure(versus['patch_swd'])}  "
                  f"flicker - peer x1e3 {figure(versus['flicker'], 1e3)}  {moving}" + (
                      "" if other is None else f"  against {other['method']}: KID {figure(other['kid'])}  adherence "
                                               f"{figure(other['adherence'])}  flicker x1e3 "
                                               f"{figure(other['flicker'], 1e3)}"))


if __name__ == "__main__":
    main()
