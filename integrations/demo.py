"""``fresco demo``: the shipped scenes model, stock sampler vs Fresco presets, side by side in one PNG grid."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PRESETS
from .bench import BASELINE_STEPS, Method, run_benchmark, table
from .shipped_model import SIZE, prompt_set

__all__ = ["add_arguments", "main"]

DEMO_PRESETS = ("flux-dev-3x", "flux-dev-5x", "flux-dev-10x")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", type=int, default=4, help="how many prompts (the last one held out)")
    parser.add_argument("--presets", nargs="+", default=list(DEMO_PRESETS), choices=sorted(PRESETS))
    parser.add_argument("--out", type=Path, default=Path("fresco_demo.png"))


def _grid(report: dict[str, Any], columns: list[str], labels: list[str], path: Path) -> None:
    from PIL import Image, ImageDraw

    scale, caption, header = 2, 58, 16
    cell = SIZE * scale
    rows = report["prompts"]
    canvas = Image.new("RGB", (cell * len(columns), (cell + caption + header) * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    by_name = {r["method"]: r for r in report["methods"]}
    for i, prompt in enumerate(rows):
        top = i * (cell + caption + header)
        draw.text((4, top + 2), prompt["prompt"] + ("  (held-out prompt)" if prompt["held_out"] else ""), fill="black")
        for j, (name, label) in enumerate(zip(columns, labels)):
            picture = (report["_pictures"][name][i] * 255).round().astype(np.uint8)
            canvas.paste(Image.fromarray(picture).resize((cell, cell), Image.NEAREST), (j * cell, top + header))
            row = by_name[name]
            per = row["per_prompt"]
            lines = [label, f"FLOPs 1/{row['flops_ratio']:.2f}  wall 1/{row['wall_ratio']:.2f}"]
            if name == "baseline":
                lines.append("reference")
            else:
                lines.append(f"PSNR {per['psnr'][i]:.1f} dB  SSIM {per['ssim'][i]:.3f}")
            lines.append("checker: " + ("pass" if per["adherent"][i] else "FAIL"))
            for k, line in enumerate(lines):
                draw.text((j * cell + 4, top + header + cell + 2 + 13 * k), line, fill="black")
    canvas.save(path)


def main(args: argparse.Namespace) -> int:
    if args.prompts < 1:
        raise ValueError("--prompts must be at least 1")
    prompts = prompt_set(args.prompts, held_out=1 if args.prompts > 1 else 0, seed=7)
    methods = [Method("baseline", "baseline", steps=BASELINE_STEPS)]
    methods += [Method(preset, "Fresco", config=PRESETS[preset]) for preset in args.presets]
    report = run_benchmark(prompts, methods)
    columns = [m.name for m in methods]
    labels = [f"stock, {BASELINE_STEPS} steps"] + [f"Fresco {p}" for p in args.presets]
    _grid(report, columns, labels, args.out)
    print(table(report))
    print("FLOPs ratio: transformer FLOPs of the stock run over the method's (counted from the forwards that ran); "
          "wall ratio: measured here, same process.")
    print(f"wrote {args.out}")
    return 0
