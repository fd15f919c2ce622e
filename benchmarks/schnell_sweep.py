"""Which restart lets `flux-schnell-22x`'s one full-resolution step draw the texture? Variants of the preset on the
schnell-like student, scored as ``fresco bench --distilled`` scores them (against the dev-like 50-step baseline and
the schnell-like student at the step count of equal FLOPs), on a prompt set drawn with another seed than the bench's.

    python benchmarks/schnell_sweep.py --prompts 64 --held-out 16 --out schnell_sweep.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from unguided_sweep import print_rows

from fresco_plugin.config import PRESETS
from fresco_plugin.tools.bench import BASELINE_STEPS, DISTILLED, Method, _json_safe, run_benchmark
from fresco_plugin.tools.shipped_model import SCHNELL_STEPS, VARIANTS, prompt_set

TWENTY_TWO = PRESETS["flux-schnell-22x"]
# On schnell's unshifted 4-step schedule the full-resolution step starts at sigma 0.25; a shift s on that stage
# starts it at s / (3 + s): 0.4 at 2, 0.5 at 3, 0.625 at 5, 0.77 at 10.
RESTART_SCALES = (1.0, 2.0, 3.0, 5.0, 10.0)
# Plans with two full-resolution steps (a sketch too short for a promotion round runs none), each at the stock
# restart and at twice it: (sketch steps, full-resolution steps, restart scale).
PLANS = ((3, 1, 1.0), (1, 2, 1.0), (1, 2, 2.0), (2, 2, 1.0), (2, 2, 2.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7, help="prompt-set seed (the bench uses 2026)")
    parser.add_argument("--set", choices=("restart", "plans", "dev"), default="restart",
                        help="restart: the preset at higher full-resolution restarts; plans: two full-resolution "
                             "steps after a 1- or 2-step sketch; dev: the same plans on the dev-like student (is it "
                             "the plan or the step-distilled student?)")
    parser.add_argument("--schnell", type=Path, help="another schnell-like student's folder to run instead of the "
                        "shipped one (for example one trained with `distill_scenes_model.py schnell --objective "
                        "data-states --output <folder>`)")
    parser.add_argument("--restart-scales", type=float, nargs="+", default=RESTART_SCALES,
                        help="the restart set's scales; a scale s starts the full-resolution step at s / (3 + s)")
    parser.add_argument("--out", default="schnell_sweep.json")
    args = parser.parse_args()
    if args.schnell is not None:
        VARIANTS["schnell"] = args.schnell
    student = "dev" if args.set == "dev" else "schnell"
    methods = [Method("baseline", "baseline", steps=BASELINE_STEPS, model="dev"),
               Method(f"{student}-{SCHNELL_STEPS}", f"{student}-like alone", steps=SCHNELL_STEPS, model=student),
               Method("steps@22x", f"{student}-like alone", budget="22x", model=student)]
    if args.set == "restart":
        # one plain step from pure noise: where an ever higher restart tends, less the sketch's layout
        methods.append(Method("schnell-1", "schnell-like alone", steps=1, model="schnell"))
        for scale in args.restart_scales:
            methods.append(Method(f"restart x{scale:g}@22x", "flux-schnell-22x, full-resolution restart",
                                  config=replace(TWENTY_TWO, restart_shift_scale=scale), budget="22x",
                                  model="schnell"))
    else:
        methods.append(Method(f"{student}-3", f"{student}-like alone", steps=3, model=student))
        for sketch, full, scale in PLANS:
            rounds = {} if sketch >= 3 else dict(promotion_rounds=0)
            methods.append(Method(f"{sketch}+{full} x{scale:g}@22x", "sketch + full-resolution steps",
                                  config=replace(TWENTY_TWO, stage_steps=(sketch, full), restart_shift_scale=scale,
                                                 **rounds), budget="22x", model=student))
    start = time.perf_counter()
    report = run_benchmark(prompt_set(args.prompts, args.held_out, seed=args.seed), methods, regimes=[DISTILLED],
                           label="schnell sweep")
    report = {k: v for k, v in report.items() if not k.startswith("_")}
    report["seconds"] = time.perf_counter() - start
    with open(args.out, "w") as f:
        json.dump(_json_safe(report), f, indent=1)

    print_rows(report, [DISTILLED])


if __name__ == "__main__":
    main()
