"""``fresco bench``: quality against compute for Fresco and its peers, side by side on the shipped scenes model.

Every method renders the same prompts with the same seeds at 128x128. Per method: transformer FLOPs counted from the
forwards that really ran (skipped cache blocks excluded) over the 50-step baseline's; wall time of the denoising
call over the baseline's, timed in this process with prompts as the outer loop and methods inside it, so machine
drift hits every method alike; fidelity to the baseline picture of the same seed (PSNR and SSIM on decoded pictures
and on latents; null PSNR in the JSON means identical); prompt adherence read by :func:`fresco_plugin.scenes.check_adherence`; and a distribution figure,
the sliced Wasserstein distance between 7x7 patches of the method's pictures and of the true renders of the prompts.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import PRESETS, FrescoConfig
from ..flops import ForwardRecorder
from ..scenes import check_adherence, parse_prompt, render
from .shipped_model import SIZE, TEXT_TOKENS, ScenePrompt, load_scenes_pipeline, prompt_set

__all__ = ["Method", "MethodResult", "benchmark_methods", "run_benchmark", "main"]

BASELINE_STEPS = 50
BUDGETS = {"3x": "flux-dev-3x", "5x": "flux-dev-5x", "10x": "flux-dev-10x"}
STACK_FBC_THRESHOLD = 0.1


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # methods of one family form one curve in the plot
    steps: int | None = None  # stock num_inference_steps; None with a Fresco config (its plan fixes the steps)
    config: FrescoConfig | None = None
    cache: Callable[[], Any] | None = None  # a diffusers cache config, built fresh per use
    int8: bool = False  # run on an int8 weight-only (torchao) copy of the transformer


def benchmark_methods() -> list[Method]:
    """The full method list: baseline, fewer steps, Fresco presets and knob variants, the peers and ablations at the
    same three stage plans, and FirstBlockCache alone."""
    from diffusers.hooks import FirstBlockCacheConfig

    methods = [Method("baseline", "baseline", steps=BASELINE_STEPS)]
    methods += [Method(f"steps-{n}", "fewer steps", steps=n) for n in (25, 12, 8, 5)]
    peers = {
        "fresco": ("Fresco", {}),
        "fresco-no-progressive": ("Fresco w/o progressive promotion (all tokens at once)", dict(promotion_rounds=0)),
        "fresco-no-unified-field": ("Fresco w/o unified noise field (fresh noise at switches)",
                                    dict(strategy="fresh-noise")),
        "bottleneck": ("fresh noise, whole latent (Bottleneck-style)", dict(strategy="fresh-noise", promotion_rounds=0)),
        "ralu-whole": ("RALU, whole-latent upsampling", dict(strategy="ralu", promotion_rounds=0)),
        "ralu-edge": ("RALU, edge-selected upsampling", dict(strategy="ralu", score="channel_variance",
                                                            promotion_order="unsettled_first", position_mode="anchor")),
        "dct-rewind": ("SGLang DCT rewind, whole latent", dict(strategy="dct-rewind", promotion_rounds=0)),
    }
    for key, (family, overrides) in peers.items():
        for budget, preset in BUDGETS.items():
            methods.append(Method(f"{key}@{budget}", family, config=replace(PRESETS[preset], **overrides)))
    variants = {
        "ratio-0.25": dict(promotion_ratio=0.25), "ratio-0.5": dict(promotion_ratio=0.5),
        "unsettled-first": dict(promotion_order="unsettled_first"),
        "latent-variance": dict(score="latent_step_variance"), "nearest-expansion": dict(expansion="nearest"),
    }
    for key, overrides in variants.items():
        methods.append(Method(f"fresco@5x:{key}", "Fresco 5x plan, one knob changed",
                              config=replace(PRESETS["flux-dev-5x"], **overrides)))
    for threshold in (0.05, 0.1, 0.2):
        methods.append(Method(f"fbc-{threshold}", "FirstBlockCache (diffusers), 50 steps", steps=BASELINE_STEPS,
                              cache=lambda t=threshold: FirstBlockCacheConfig(threshold=t)))
    # the stack: each part alone is above (fresco@5x, fbc-0.1); here int8 alone and the combinations
    fbc = lambda: FirstBlockCacheConfig(threshold=STACK_FBC_THRESHOLD)  # noqa: E731
    five = PRESETS["flux-dev-5x"]
    stack = "stacks: Fresco 5x / FirstBlockCache / int8 weights"
    methods += [Method("int8", stack, steps=BASELINE_STEPS, int8=True),
                Method("fresco@5x+fbc", stack, config=five, cache=fbc),
                Method("fresco@5x+int8", stack, config=five, int8=True),
                Method("fresco@5x+fbc+int8", stack, config=five, cache=fbc, int8=True)]
    return methods


@dataclass
class MethodResult:
    method: Method
    seconds: list[float] = field(default_factory=list)
    flops: list[int] = field(default_factory=list)
    latents: list[torch.Tensor] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)


class _Runner:
    """Renders one prompt with one method on the shipped pipeline; turns Fresco and caches on and off around it."""

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.full_precision = pipe.transformer
        self._int8: torch.nn.Module | None = None

    def int8_transformer(self) -> torch.nn.Module:
        if self._int8 is None:
            import copy
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torchao.quantization import Int8WeightOnlyConfig, quantize_

            self._int8 = copy.deepcopy(self.full_precision)
            quantize_(self._int8, Int8WeightOnlyConfig())
        return self._int8

    def embed(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        if prompt not in self.embeddings:
            with torch.no_grad():
                embeds, pooled, _ = self.pipe.encode_prompt(prompt, prompt_2=None, max_sequence_length=TEXT_TOKENS)
            self.embeddings[prompt] = (embeds, pooled)
        return self.embeddings[prompt]

    def __call__(self, method: Method, prompt: ScenePrompt) -> tuple[torch.Tensor, float, int]:
        from .. import apply_fresco, remove_fresco

        embeds, pooled = self.embed(prompt.prompt)
        kwargs: dict[str, Any] = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=SIZE, width=SIZE,
                                      output_type="latent", generator=torch.Generator().manual_seed(prompt.seed))
        if method.steps is not None:
            kwargs["num_inference_steps"] = method.steps
        self.pipe.transformer = self.int8_transformer() if method.int8 else self.full_precision
        if method.config is not None:
            apply_fresco(self.pipe, method.config)
        if method.cache is not None:
            self.pipe.transformer.enable_cache(method.cache())
        try:
            with ForwardRecorder(self.pipe.transformer) as recorder:
                start = time.perf_counter()
                latents = self.pipe(**kwargs).images
                seconds = time.perf_counter() - start
        finally:
            if method.cache is not None:
                self.pipe.transformer.disable_cache()
            if method.config is not None:
                remove_fresco(self.pipe)
            self.pipe.transformer = self.full_precision
        return latents, seconds, recorder.flops()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """Unpacked latents (C, H, W) and the decoded picture (H, W, 3) in [0, 1]."""
        pipe = self.pipe
        unpacked = pipe._unpack_latents(latents, SIZE, SIZE, pipe.vae_scale_factor)
        scaled = unpacked / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        picture = pipe.image_processor.postprocess(pipe.vae.decode(scaled, return_dict=False)[0], output_type="np")
        return unpacked[0].float(), picture[0]


# -------------------------------------------------------------------------------------------------- metrics
def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, peak: float = 1.0) -> float:
    mse = float(((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def ssim(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian window) over channels, of two (H, W, 3) pictures or two (C, H, W)
    latents (a last dimension of at most 4 after a first one above 4 is read as channels-last)."""
    x, y = (torch.as_tensor(v, dtype=torch.float64) for v in (a, b))
    if x.shape[-1] <= 4 and x.shape[0] > 4:  # (H, W, C) picture -> (C, H, W)
        x, y = x.permute(2, 0, 1), y.permute(2, 0, 1)
    window = min(window, x.shape[-1], x.shape[-2])
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).expand(x.shape[0], 1, window, window)

    def blur(v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(v[None], kernel, groups=v.shape[0])[0]

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(value.mean())


def patch_swd(pictures: Sequence[np.ndarray], reference: Sequence[np.ndarray], patch: int = 7, count: int = 8192,
              projections: int = 128, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between random ``patch`` x ``patch`` RGB patches of two picture sets (x 1e3)."""
    rng = np.random.default_rng(seed)

    def patches(images: Sequence[np.ndarray]) -> np.ndarray:
        stack = np.stack(images).astype(np.float64)
        n, h, w, _ = stack.shape
        i, y, x = rng.integers(n, size=count), rng.integers(h - patch + 1, size=count), \
            rng.integers(w - patch + 1, size=count)
        offsets = np.arange(patch)
        rows = (y[:, None] + offsets)[:, :, None]
        cols = (x[:, None] + offsets)[:, None, :]
        return stack[i[:, None, None], rows, cols].reshape(count, -1)

    a, b = patches(pictures), patches(reference)
    directions = rng.standard_normal((a.shape[1], projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    return float(np.abs(np.sort(a @ directions, axis=0) - np.sort(b @ directions, axis=0)).mean() * 1e3)


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.inf


# -------------------------------------------------------------------------------------------------- the run
def run_benchmark(prompts: list[ScenePrompt], methods: list[Method], *, pipe: Any = None,
                  progress: bool = True) -> dict[str, Any]:
    """Runs every method on every prompt (prompts outer, methods inner) and returns all figures as a dict."""
    from tqdm.auto import tqdm

    pipe = pipe or load_scenes_pipeline(progress=False)
    pipe.set_progress_bar_config(disable=True)
    runner = _Runner(pipe)
    repeat = Method("baseline (timed again)", "baseline", steps=BASELINE_STEPS)
    order = [*methods, repeat]
    if order[0].name != "baseline":
        raise ValueError("the first method must be the baseline")
    results = {m.name: MethodResult(m) for m in order}
    runner(Method("warm-up", "baseline", steps=2), prompts[0])  # first-call costs stay out of the timings
    bar = tqdm(total=len(prompts) * len(order), desc="fresco bench", unit="run", disable=not progress)
    for prompt in prompts:
        for method in order:
            latents, seconds, flops = runner(method, prompt)
            unpacked, picture = runner.decode(latents)
            result = results[method.name]
            result.seconds.append(seconds)
            result.flops.append(flops)
            result.latents.append(unpacked)
            result.images.append(picture)
            bar.update()
    bar.close()

    base, again = results["baseline"], results[repeat.name]
    baseline_seconds = [(a + b) / 2 for a, b in zip(base.seconds, again.seconds)]
    truth = [render(p.scene, SIZE) for p in prompts]
    rows = []
    for method in order:
        r = results[method.name]
        latent_range = [float(b.max() - b.min()) for b in base.latents]
        checks = [check_adherence(img, p.prompt) for img, p in zip(r.images, prompts)]
        specs = [parse_prompt(p.prompt) for p in prompts]
        adherence = [c.passed(spec) for c, spec in zip(checks, specs)]
        per_prompt = dict(
            psnr=[psnr(img, b) for img, b in zip(r.images, base.images)],
            ssim=[ssim(img, b) for img, b in zip(r.images, base.images)],
            latent_psnr=[psnr(lat, b, peak=rng) for lat, b, rng in zip(r.latents, base.latents, latent_range)],
            latent_ssim=[ssim(lat, b, data_range=rng, window=7) for lat, b, rng in zip(r.latents, base.latents,
                                                                                       latent_range)],
            adherent=[bool(a) for a in adherence], seconds=r.seconds, flops=r.flops,
        )
        held = [a for a, p in zip(adherence, prompts) if p.held_out]
        seen = [a for a, p in zip(adherence, prompts) if not p.held_out]
        rows.append(dict(
            method=method.name, family=method.family,
            config=None if method.config is None else _config_fields(method.config),
            steps=method.steps, flops_ratio=sum(base.flops) / sum(r.flops),
            wall_ratio=sum(baseline_seconds) / sum(r.seconds),
            psnr=_mean(per_prompt["psnr"]), ssim=_mean(per_prompt["ssim"]),
            latent_psnr=_mean(per_prompt["latent_psnr"]), latent_ssim=_mean(per_prompt["latent_ssim"]),
            adherence=float(np.mean(adherence)), adherence_train=float(np.mean(seen)) if seen else None,
            adherence_held_out=float(np.mean(held)) if held else None,
            # the checker's parts: both objects in their colours, both shapes right, the relation right
            objects_found=float(np.mean([all(c.found) for c in checks])),
            shapes_right=float(np.mean([all(c.shapes_ok(spec)) for c, spec in zip(checks, specs)])),
            relation_right=float(np.mean([c.relation_ok for c in checks])),
            patch_swd=patch_swd(r.images, truth),
            identical_to_baseline=all(torch.equal(a, b) for a, b in zip(r.latents, base.latents)),
            per_prompt=per_prompt,
        ))
    truth_adherence = [check_adherence(t, p.prompt).passed(parse_prompt(p.prompt)) for t, p in zip(truth, prompts)]
    return dict(
        model="fresco_plugin/models/scenes-flux", size=SIZE, text_tokens=TEXT_TOKENS,
        prompts=[dict(prompt=p.prompt, seed=p.seed, held_out=p.held_out) for p in prompts],
        ground_truth_adherence=float(np.mean(truth_adherence)),
        ground_truth_patch_swd_floor=patch_swd(truth, truth, seed=1),
        baseline_seconds_first=sum(base.seconds), baseline_seconds_again=sum(again.seconds),
        methods=rows, torch=torch.__version__, threads=torch.get_num_threads(), commit=_commit(),
        _pictures={name: r.images for name, r in results.items()},
    )


def _config_fields(config: FrescoConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except OSError:
        return None


def _json_safe(value: Any) -> Any:
    """Standard JSON: an infinite PSNR (pictures identical to the baseline) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def sanity_problems(report: dict[str, Any]) -> list[str]:
    """What ``--quick`` asserts: every method ran, every figure is finite, the baseline repeats bit for bit."""
    problems = []
    for row in report["methods"]:
        finite = ["flops_ratio", "wall_ratio", "ssim", "latent_ssim", "adherence", "patch_swd"]
        if row["method"] not in ("baseline", "baseline (timed again)"):
            finite += ["psnr", "latent_psnr"]
        bad = [k for k in finite if not (isinstance(row[k], float) and math.isfinite(row[k]))
               and not (k in ("psnr", "latent_psnr") and row[k] == math.inf and row["identical_to_baseline"])]
        if bad:
            problems.append(f"{row['method']}: non-finite {', '.join(bad)}")
    again = next(r for r in report["methods"] if r["method"] == "baseline (timed again)")
    if not again["identical_to_baseline"]:
        problems.append("the baseline run twice gave different latents")
    return problems


# -------------------------------------------------------------------------------------------------- outputs
def table(report: dict[str, Any]) -> str:
    head = (f"| method | FLOPs ratio | wall ratio | PSNR | SSIM | latent PSNR | latent SSIM | adherence | "
            f"held-out adherence | objects | relation | patch SWD |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in report["methods"]:
        held = "-" if r["adherence_held_out"] is None else f"{r['adherence_held_out']:.2f}"
        image_psnr, latent_psnr = (f"{v:.2f}" if math.isfinite(v) else "identical" for v in (r["psnr"],
                                                                                          r["latent_psnr"]))
        lines.append(f"| {r['method']} | {r['flops_ratio']:.2f} | {r['wall_ratio']:.2f} | {image_psnr} | "
                     f"{r['ssim']:.3f} | {latent_psnr} | {r['latent_ssim']:.3f} | {r['adherence']:.2f} | "
                     f"{held} | {r['objects_found']:.2f} | {r['relation_right']:.2f} | {r['patch_swd']:.1f} |")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    families: dict[str, list[dict[str, Any]]] = {}
    for row in report["methods"]:
        if row["method"] != "baseline (timed again)":
            families.setdefault(row["family"], []).append(row)
    panels = (("psnr", "PSNR to the 50-step baseline (dB)"), ("ssim", "SSIM to the 50-step baseline"),
              ("relation_right", "relation right (checker)"))
    colors = plt.get_cmap("tab20").colors
    for axis, (key, label) in zip(axes, panels):
        for index, (family, rows) in enumerate(families.items()):
            rows = sorted(rows, key=lambda r: r["flops_ratio"])
            xs = [r["flops_ratio"] for r in rows]
            ys = [r[key] if r[key] is not None and math.isfinite(r[key]) else np.nan for r in rows]
            if family == "baseline":
                if key != "psnr":  # the baseline's PSNR to itself is infinite
                    axis.plot(xs, ys, "k*", markersize=12, label="50-step baseline")
                continue
            loose = "one knob" in family or family.startswith("stacks")  # points, not a budget curve
            axis.plot(xs, ys, "s" if loose else "o-", label=family, markersize=5, color=colors[index % len(colors)])
        axis.set_xscale("log")
        axis.set_xlabel("transformer FLOPs saving vs 50-step baseline (x)")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper right")
    figure.suptitle(f"fresco bench on the shipped scenes model: {len(report['prompts'])} prompts, commit "
                    f"{report['commit']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def picture_grid(report: dict[str, Any], methods: Sequence[str], path: Path, prompts: int = 4) -> None:
    """The first ``prompts`` prompts (rows) under the named methods (columns), for a quick look."""
    from PIL import Image

    pictures = report["_pictures"]
    rows = [np.concatenate([pictures[m][i] for m in methods], axis=1) for i in range(min(prompts, len(report["prompts"])))]
    Image.fromarray((np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)).save(path)


# -------------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", type=int, default=64, help="prompt count (default 64)")
    parser.add_argument("--held-out", type=int, default=16, help="how many of them come from the held-out split")
    parser.add_argument("--quick", action="store_true",
                        help="3 prompts; checks sanity only (every method runs, finite figures, exact baseline repeat)")
    parser.add_argument("--only", nargs="+", metavar="METHOD", help="run these methods (and the baseline) only")
    parser.add_argument("--out", type=Path, default=Path("bench_results"), help="folder for bench.json and plots")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    count, held_out = (3, 1) if args.quick else (args.prompts, args.held_out)
    methods = benchmark_methods()
    if args.only:
        unknown = set(args.only) - {m.name for m in methods}
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; known: {', '.join(m.name for m in methods)}")
        methods = [m for m in methods if m.name == "baseline" or m.name in args.only]
    report = run_benchmark(prompt_set(count, held_out), methods)
    args.out.mkdir(parents=True, exist_ok=True)
    pictures = report.pop("_pictures")
    (args.out / "bench.json").write_text(json.dumps(_json_safe(report), indent=1) + "\n")
    report["_pictures"] = pictures
    plot(report, args.out / "bench.png")
    shown = [m for m in ("baseline", "steps-8", "fresco@3x", "fresco@5x", "fresco@10x", "bottleneck@10x",
                         "ralu-whole@10x") if m in pictures]
    picture_grid(report, shown, args.out / "bench_pictures.png")
    print(table(report))
    print(f"\nwrote {args.out / 'bench.json'}, {args.out / 'bench.png'}, {args.out / 'bench_pictures.png'} "
          f"(picture columns: {', '.join(shown)})")
    problems = sanity_problems(report)
    for problem in problems:
        print(f"fresco bench: {problem}")
    return 1 if problems else 0
