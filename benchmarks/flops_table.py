"""The FLOPs table of BENCHMARKS.md: every preset on its model at the paper's settings, via `fresco flops`'s counter.

    python benchmarks/flops_table.py
"""

from __future__ import annotations

from fresco_plugin.config import PRESET_BASELINES
from fresco_plugin.flops import count_plan_flops

# every preset on the model and step count it is named for, then two more settings
ROWS = [(preset, model, {"baseline_steps": steps}) for preset, (model, steps) in PRESET_BASELINES.items()] + [
    ("hunyuan-video-5x", "wan2.1-t2v-14b", {}),
    ("flux-dev-10x", "flux-dev", {"height": 2048, "width": 2048}),
]


def main() -> None:
    print("| preset | model | size | steps | image tokens per step (distinct) | Fresco TFLOPs | baseline | "
          "baseline TFLOPs | speedup |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, model, size in ROWS:
        r = count_plan_flops(preset, model, **size)
        tokens = " / ".join(
            ",".join(str(n) for n in dict.fromkeys(s.tokens_per_step)) for s in r.stages
        )
        shape = f"{r.height}x{r.width}" + (f"x{r.frames}f" if r.frames > 1 else "")
        steps = "+".join(str(s.steps) for s in r.stages)
        print(f"| {preset} | {model} | {shape} | {steps} | {tokens} | {r.total_flops / 1e12:,.1f} | "
              f"{r.baseline_model} x{r.baseline_steps}, {r.forwards_per_step} fwd/step | "
              f"{r.baseline_flops / 1e12:,.1f} | {r.speedup:.2f}x |")


if __name__ == "__main__":
    main()
