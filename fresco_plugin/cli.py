"""The ``fresco`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .config import PRESETS, FrescoConfig

__all__ = ["main"]


def _load_config(args: argparse.Namespace) -> FrescoConfig:
    if args.config and args.preset:
        raise SystemExit("fresco flops: give --preset or --config, not both")
    if args.config:
        with open(args.config) as handle:
            fields = json.load(handle)
        unknown = set(fields) - set(FrescoConfig.field_names())
        if unknown:
            raise SystemExit(f"fresco flops: {args.config} has unknown FrescoConfig fields: {', '.join(sorted(unknown))}")
        return FrescoConfig(**fields)
    return FrescoConfig.preset(args.preset or "flux-dev-10x")


def _flops(args: argparse.Namespace) -> int:
    from .flops import count_plan_flops

    config = _load_config(args)
    report = count_plan_flops(
        config, args.model, height=args.height, width=args.width, frames=args.frames, steps=args.steps,
        baseline_steps=args.baseline_steps, text_tokens=args.text_tokens, guidance_scale=args.guidance_scale,
        true_cfg_scale=args.true_cfg_scale,
    )
    print(report.to_json() if args.json else report.table())
    return 0


def _parser() -> argparse.ArgumentParser:
    from .flops import MODELS

    parser = argparse.ArgumentParser(prog="fresco", description="Fresco dynamic-resolution sampling tools")
    commands = parser.add_subparsers(dest="command", required=True)
    flops = commands.add_parser(
        "flops", help="transformer FLOPs of a Fresco plan vs the 50-step full-resolution baseline",
        description="Count the transformer FLOPs of a Fresco plan on the real architecture (built on the meta "
                    "device from its public config) and compare with the model's 50-step full-resolution run.",
    )
    flops.add_argument("--model", default="flux-dev", choices=sorted(MODELS))
    flops.add_argument("--preset", choices=sorted(PRESETS), help="a FrescoConfig preset (default flux-dev-10x)")
    flops.add_argument("--config", help="a JSON file of FrescoConfig fields")
    flops.add_argument("--height", type=int, help="pixels (default: the model's usual size)")
    flops.add_argument("--width", type=int)
    flops.add_argument("--frames", type=int, help="video frames (4k + 1)")
    flops.add_argument("--steps", type=int, help="Fresco steps, when the config does not fix them")
    flops.add_argument("--baseline-steps", type=int, default=50)
    flops.add_argument("--text-tokens", type=int, help="text sequence length (default: the pipeline's)")
    flops.add_argument("--guidance-scale", type=float, default=None,
                       help="guidance scale; a CFG model (Wan) runs two forwards per step unless it is <= 1, "
                            "guidance-distilled models (FLUX, HunyuanVideo) embed it at no extra forward")
    flops.add_argument("--true-cfg-scale", type=float, default=1.0,
                       help="> 1 counts two forwards per step (true classifier-free guidance)")
    flops.add_argument("--json", action="store_true", help="machine-readable output; the ratio is 'speedup'")
    flops.set_defaults(run=_flops)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"fresco {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
