"""The ``fresco`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from fresco_plugin.config import PRESET_BASELINES, PRESETS, FrescoConfig

__all__ = ["main"]


def _load_config(args: argparse.Namespace) -> FrescoConfig:
    if args.config and args.preset:
        raise SystemExit("fresco flops: give --preset or --config, not both")
    if args.config:
        fields = _read_json("--config", args.config)
        if not isinstance(fields, dict):
            raise ValueError(f"--config {args.config} must hold a JSON object of FrescoConfig fields")
        unknown = set(fields) - set(FrescoConfig.field_names())
        if unknown:
            raise SystemExit(f"fresco flops: {args.config} has unknown FrescoConfig fields: "
                             f"{', '.join(sorted(unknown))}")
        return FrescoConfig(**fields)
    return FrescoConfig.preset(args.preset or "flux-dev-10x")


def _read_json(option: str, path: str) -> object:
    """A JSON file named on the command line; a missing or malformed one exits naming the option and the file."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except OSError as error:
        raise ValueError(f"{option} {path}: {error.strerror} (give the path of a JSON file)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{option} {path} is not JSON: {error}") from None


def _flops(args: argparse.Namespace) -> int:
    from fresco_plugin.flops import count_plan_flops

    if args.recorded:
        return _recorded_flops(args)
    config = _load_config(args)
    # a preset is measured against its own model and step count unless the command names others
    model, baseline_steps = PRESET_BASELINES[args.preset or "flux-dev-10x"] if not args.config else ("flux-dev", 50)
    report = count_plan_flops(
        config, args.model or model, height=args.height, width=args.width, frames=args.frames, steps=args.steps,
        baseline_steps=baseline_steps if args.baseline_steps is None else args.baseline_steps,
        text_tokens=args.text_tokens, guidance_scale=args.guidance_scale, true_cfg_scale=args.true_cfg_scale,
    )
    print(report.to_json() if args.json else report.table())
    return 0


def _recorded_flops(args: argparse.Namespace) -> int:
    from fresco_plugin.tools.flops_trace import ForwardRecord, recorded_flops

    if args.config or args.preset:
        raise SystemExit("fresco flops: --recorded prices a recorded run; drop --preset/--config")
    run = _read_json("--recorded", args.recorded)
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


def _plan(args: argparse.Namespace) -> int:
    from fresco_plugin.flops import count_plan_flops

    config = FrescoConfig.for_speedup(args.target, model=args.model, height=args.height, width=args.width,
                                      frames=args.frames, steps_budget=args.steps_budget)
    report = count_plan_flops(config, args.model, height=args.height, width=args.width, frames=args.frames,
                              baseline_steps=args.steps_budget)
    fields = json.dumps(report.config, indent=2)
    print(fields if args.json else f"{report.table()}\n\nFrescoConfig fields:\n{fields}")
    return 0


def _parser() -> argparse.ArgumentParser:
    from fresco_plugin.flops import MODELS

    parser = argparse.ArgumentParser(prog="fresco", description="Fresco dynamic-resolution sampling tools")
    parser.add_argument("--verbose", action="store_true",
                        help="show third-party libraries' import warnings and loading bars (hidden by default)")
    commands = parser.add_subparsers(dest="command", required=True)
    flops = commands.add_parser(
        "flops", help="transformer FLOPs of a Fresco plan vs the model's full-resolution baseline",
        description="Count the transformer FLOPs of a Fresco plan on the real architecture (built on the meta "
                    "device from its public config) and compare with the model's full-resolution run (50 steps unless "
                    "the preset names another count).",
    )
    flops.add_argument("--model", choices=sorted(MODELS),
                       help="architecture (default: the preset's model; flux-dev with --config)")
    flops.add_argument("--preset", choices=sorted(PRESETS), help="a FrescoConfig preset (default: flux-dev-10x)")
    flops.add_argument("--config", help="a JSON file of FrescoConfig fields (instead of --preset)")
    flops.add_argument("--height", type=int, help="pixels (default: the model's usual size)")
    flops.add_argument("--width", type=int, help="pixels (default: the model's usual size)")
    flops.add_argument("--frames", type=int, help="video frames, 4k + 1 (default: the video model's usual count)")
    flops.add_argument("--steps", type=int,
                       help="the call's num_inference_steps, for a config that follows them (stage_steps unset: the "
                            "default FrescoConfig() runs a third of them); default: the model's usual count. Pass "
                            "the same --baseline-steps to compare with that call")
    flops.add_argument("--baseline-steps", type=int,
                       help="steps of the full-resolution baseline (default: the preset's, as docs/configuration.md "
                            "lists them; 50 with --config)")
    flops.add_argument("--text-tokens", type=int, help="text sequence length (default: the pipeline's)")
    flops.add_argument("--guidance-scale", type=float, default=None,
                       help="guidance scale; a CFG model (Wan) runs two forwards per step unless it is <= 1, "
                            "guidance-distilled models (FLUX, HunyuanVideo) embed it at no extra forward "
                            "(default: the model's)")
    flops.add_argument("--true-cfg-scale", type=float, default=1.0,
                       help="> 1 counts two forwards per step, true classifier-free guidance (default: %(default)s)")
    flops.add_argument("--json", action="store_true", help="machine-readable output; the ratio is 'speedup'")
    flops.add_argument("--recorded", help="a JSON file from ForwardRecorder.to_dict(): price those forwards "
                                            "(blocks a cache skipped excluded) instead of a plan")
    flops.set_defaults(run=_flops)

    plan = commands.add_parser(
        "plan", help="the best measured Fresco plan that reaches a FLOPs speedup on an architecture and size",
        description="Pick the plan of the measured best shape (a short half-resolution sketch with a promotion "
                    "round, the rest at full resolution) with the most steps that still reaches --target, counted "
                    "as `fresco flops` counts. Prints the plan's FrescoConfig fields (a JSON file `fresco flops "
                    "--config` and FrescoConfig(**fields) take) and its FLOPs table.",
    )
    plan.add_argument("--target", type=float, required=True, help="transformer-FLOPs speedup to reach, e.g. 8")
    plan.add_argument("--model", default="flux-dev", choices=sorted(MODELS), help="architecture (default: %(default)s)")
    plan.add_argument("--height", type=int, help="pixels (default: the model's usual size)")
    plan.add_argument("--width", type=int, help="pixels (default: the model's usual size)")
    plan.add_argument("--frames", type=int, help="video frames, 4k + 1 (default: the video model's usual count)")
    plan.add_argument("--steps-budget", type=int, default=50,
                      help="steps of the full-resolution run the speedup is counted against (default: %(default)s)")
    plan.add_argument("--json", action="store_true", help="print only the FrescoConfig fields as JSON")
    plan.set_defaults(run=_plan)

    demo = commands.add_parser(
        "demo", help="the shipped scenes model: stock vs Fresco presets vs fewer steps, side by side in a PNG grid",
        description="Renders a few prompts with the shipped scenes model (offline): the stock 50-step sampler, Fresco "
                    "at 3x/5x/10x and the stock sampler at the step count of Fresco 10x's FLOPs. Writes a PNG grid "
                    "(FLOPs, wall-time, fidelity and checker figures, token-resolution maps) and prints a table.",
    )
    demo.set_defaults(run=_app("demo"))
    bench = commands.add_parser(
        "bench", help="quality vs compute of Fresco and its peers on the shipped scenes model",
        description="Every method on a fixed prompt set with fixed seeds, unguided and with true CFG: realism (KID "
                    "to true renders on the shipped scene encoder, patch SWD), prompt adherence, fidelity to the "
                    "baseline, counted FLOPs and measured wall-time ratios, 95% bootstrap intervals and paired "
                    "differences against the baseline and against fewer steps at equal FLOPs. Writes bench.json, "
                    "bench.png and bench_pictures.png.",
    )
    bench.set_defaults(run=_app("bench"))
    _app_arguments(demo, "demo")
    _app_arguments(bench, "bench")
    return parser


def _quiet_third_party() -> None:
    """Third-party import chatter (torchao's optional kernels, torch's pytree deprecations, transformers' torchvision
    notice, loading bars) is not the command's output; ``--verbose`` keeps it."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("torchao", "torch.utils._pytree", "diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category,
                                module=r"(torch|torchao|diffusers|transformers|accelerate|huggingface_hub|libcst)\b")


def _app(name: str):
    def run(args: argparse.Namespace) -> int:
        return _app_module(name).main(args)

    return run


def _app_module(name: str):
    import importlib

    return importlib.import_module(f"fresco_plugin.tools.{name}")


def _app_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    try:
        _app_module(name).add_arguments(parser)
    except ImportError as error:  # diffusers missing: say how to get it when the command runs
        parser.set_defaults(run=lambda args, e=error: _missing(name, e))


def _missing(name: str, error: ImportError) -> int:
    print(f"fresco {name} needs the diffusers extra: pip install -e \".[diffusers]\" ({error})", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if "--verbose" not in arguments:
        _quiet_third_party()  # before the parser imports anything heavy
    args = _parser().parse_args(arguments)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"fresco {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
