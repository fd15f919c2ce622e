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

    if args.recorded:
        return _recorded_flops(args)
    config = _load_config(args)
    report = count_plan_flops(
        config, args.model, height=args.height, width=args.width, frames=args.frames, steps=args.steps,
        baseline_steps=args.baseline_steps, text_tokens=args.text_tokens, guidance_scale=args.guidance_scale,
        true_cfg_scale=args.true_cfg_scale,
    )
    print(report.to_json() if args.json else report.table())
    return 0


def _recorded_flops(args: argparse.Namespace) -> int:
    from .flops import ForwardRecord, recorded_flops

    if args.config or args.preset:
        raise SystemExit("fresco flops: --recorded prices a recorded run; drop --preset/--config")
    with open(args.recorded) as handle:
        run = json.load(handle)
    records = [ForwardRecord(**r) for r in run["forwards"]]
    total = recorded_flops(records, run["config"], run.get("family", "flux"))
    without_skips = [ForwardRecord(r.batch, r.image_tokens, r.text_tokens, {}) for r in records]
    full = recorded_flops(without_skips, run["config"], run.get("family", "flux"))
    blocks = run["config"]["num_layers"] + run["config"]["num_single_layers"]  # FLUX, the recorder's one family
    skipped = sum(1 for r in records if sum(r.blocks_run.values()) < blocks)
    print(f"{len(records)} forwards, {sum(r.batch for r in records)} image-forwards; {skipped} forward(s) skipped "
          f"blocks")
    print(f"recorded run: {total / 1e12:.4f} TFLOPs; the same forwards with every block computed: "
          f"{full / 1e12:.4f} TFLOPs; the cache saved {1 - total / full:.1%}")
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
    flops.add_argument("--recorded", help="a JSON file from ForwardRecorder.to_dict(): price those forwards "
                                            "(blocks a cache skipped excluded) instead of a plan")
    flops.set_defaults(run=_flops)

    demo = commands.add_parser(
        "demo", help="the shipped scenes model: stock vs Fresco presets, side by side in a PNG grid",
        description="Renders a few prompts with the shipped scenes model (offline), with the stock sampler and with "
                    "Fresco presets; writes a PNG grid with FLOPs, wall-time and fidelity figures, prints a table.",
    )
    demo.set_defaults(run=_app("demo"))
    bench = commands.add_parser(
        "bench", help="quality vs compute of Fresco and its peers on the shipped scenes model",
        description="Every method on a fixed prompt set with fixed seeds: counted FLOPs ratio, measured wall-time "
                    "ratio, fidelity (PSNR/SSIM on pictures and latents), prompt adherence, patch SWD. Writes "
                    "bench.json, bench.png and bench_pictures.png.",
    )
    bench.set_defaults(run=_app("bench"))
    _app_arguments(demo, "demo")
    _app_arguments(bench, "bench")
    return parser


def _app(name: str):
    def run(args: argparse.Namespace) -> int:
        return _app_module(name).main(args)

    return run


def _app_module(name: str):
    import importlib

    return importlib.import_module(f"fresco_plugin.integrations.{name}")


def _app_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    try:
        _app_module(name).add_arguments(parser)
    except ImportError as error:  # diffusers missing: say how to get it when the command runs
        parser.set_defaults(run=lambda args, e=error: _missing(name, e))


def _missing(name: str, error: ImportError) -> int:
    print(f"fresco {name} needs the diffusers extra: pip install -e \".[diffusers]\" ({error})", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"fresco {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
