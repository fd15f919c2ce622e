"""GPU wall time against FLOPs, Fresco beside its peers, side by side in one process.

FLUX.1-dev and FLUX.1-schnell transformers at their real size (random bf16 weights; nothing is downloaded),
1024x1024, 512 text tokens, latents out. Each treatment of the transformer times the stock 50-step run and every row
under that same treatment:

- ``eager``; ``compiled``: ``compile_repeated_blocks(fullgraph=True, dynamic=True)``, the sequence dimension dynamic
  from the first call; ``graphs``: the same with ``mode="reduce-overhead"``, CUDA graphs per block and distinct token
  count; ``float8``: torchao's float8 dynamic activations and weights, compiled as ``compiled``.
- rows: the Fresco presets, stock at the step count whose FLOPs match each preset, diffusers' FirstBlockCache and
  TaylorSeer (default configs) on the 50-step run (eager), float8 alone and with Fresco.

Per row: median seconds, wall ratio against the treatment's stock 50-step run, FLOPs ratio, wall / FLOPs, peak
memory. Per treatment: one forward's time at every token count the plans use (so a shortfall splits into the kernels'
efficiency at small token counts and the loop's own time), compiles and CUDA-graph counters, and reserved memory.
Fresco's own work per generation is timed with a model that costs nothing, in the sampler alone and (eager) in
whole pipeline calls beside the stock 50-step call, so the fixed cost per generation splits into the sampler's, the
runner's and the pipeline's. The JSON is rewritten after every row; no treatment starts after ``--budget`` seconds.

    python benchmarks/gpu_wall_table.py --out gpu_wall_table.json
    python benchmarks/gpu_wall_table.py --tiny   # the same path on the CPU, one block of each kind (a smoke check)
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from fresco_plugin import FrescoConfig, apply_fresco, last_fresco_run, remove_fresco
from fresco_plugin.flops import count_plan_flops, forward_flops
from fresco_plugin.layout import TokenGeometry, TokenLayout
from fresco_plugin.noise import NoiseField
from fresco_plugin.sampler import min_score_history, sample
from fresco_plugin.schedule import plan_stages, static_schedules

BASELINE_STEPS = 50
TEXT_TOKENS = 512
LONG_RUN = 4.0  # seconds: one generation this long is timed once
DEV_PRESETS = ("flux-dev-3x", "flux-dev-5x", "flux-dev-10x")
SCHNELL_PRESET = "flux-schnell-22x"
TREATMENTS = ("dev/eager", "schnell/eager", "dev/compiled", "schnell/compiled", "dev/graphs", "dev/float8",
              "schnell/graphs")


class Table:
    """The run's state: device, the JSON being written, and the time budget."""

    def __init__(self, out: str, tiny: bool, budget: float, repeats: int):
        self.device = "cpu" if tiny else "cuda"
        self.tiny, self.out, self.budget, self.repeats = tiny, out, budget, repeats
        self.size = 256 if tiny else 1024
        self.full_tokens = (self.size // 16) ** 2
        self.started = time.perf_counter()
        self.result: dict[str, Any] = dict(
            device=torch.cuda.get_device_name() if not tiny else "cpu (--tiny: one block of each kind)",
            torch=torch.__version__, size=self.size, text_tokens=TEXT_TOKENS, baseline_steps=BASELINE_STEPS,
            treatments={}, overhead=[], skipped=[])

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def save(self) -> None:
        self.result["seconds"] = self.elapsed()
        with open(self.out, "w") as handle:
            json.dump(self.result, handle, indent=2)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def build(table: Table, schnell: bool):
    from fresco_plugin.tools.tiny import random_flux_pipeline

    pipe = random_flux_pipeline(device=table.device, dtype=torch.bfloat16, schnell=schnell, shrink=table.tiny)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(table: Table) -> dict[str, Any]:
    g = torch.Generator(table.device).manual_seed(1)
    return dict(prompt_embeds=torch.randn(1, TEXT_TOKENS, 4096, generator=g, device=table.device, dtype=torch.bfloat16),
                pooled_prompt_embeds=torch.randn(1, 768, generator=g, device=table.device, dtype=torch.bfloat16),
                height=table.size, width=table.size, output_type="latent")


def generation_seconds(table: Table, pipe, kwargs: dict, repeats: int) -> tuple[float, float]:
    """Median wall time of up to ``repeats`` generations and their peak allocated memory (GB)."""
    times = []
    if table.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    while len(times) < repeats and sum(times) < LONG_RUN:
        table.sync()
        start = time.perf_counter()
        pipe(**kwargs, generator=torch.Generator(table.device).manual_seed(0))
        table.sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if table.device == "cuda" else 0.0
    return statistics.median(times), peak


def forward_seconds(table: Table, transformer, tokens: int, schnell: bool, repeats: int = 5) -> float:
    """Median time of one transformer forward at ``tokens`` image tokens, as the pipeline calls it."""
    d = dict(device=table.device, dtype=torch.bfloat16)
    inputs = dict(hidden_states=torch.randn(1, tokens, 64, **d),
                  encoder_hidden_states=torch.randn(1, TEXT_TOKENS, 4096, **d),
                  pooled_projections=torch.randn(1, 768, **d), timestep=torch.full((1,), 0.5, **d),
                  guidance=None if schnell else torch.full((1,), 3.5, device=table.device),
                  img_ids=torch.zeros(tokens, 3, device=table.device), txt_ids=torch.zeros(TEXT_TOKENS, 3, **d),
                  return_dict=False)
    times = []
    with torch.no_grad():
        for i in range(repeats + 2):  # two warm-ups: a new shape may compile or record a graph
            table.sync()
            start = time.perf_counter()
            transformer(**inputs)
            table.sync()
            if i >= 2:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def fresco_overhead_seconds(table: Table, config: FrescoConfig, repeats: int = 3) -> float:
    """Fresco's own work in one generation (layouts, scores, transitions, ordering, noise) with a free model."""
    side = table.size // 16
    geometry = TokenGeometry(16, 2, side, side)
    stages = plan_stages(config, None, min_score_history=min_score_history(config))
    field = NoiseField.from_hash([0], 16, 2 * side, 2 * side, device=table.device, dtype=torch.bfloat16)
    first = field.tokens(TokenLayout.uniform(1, geometry, stages[0].level, torch.device(table.device)), geometry)
    free = lambda latents, positions, step: latents * 0.01  # noqa: E731  a "model" that costs nothing
    times = []
    for _ in range(repeats + 1):
        table.sync()
        start = time.perf_counter()
        sample(free, first, config=config, stages=stages, schedules=static_schedules(stages), geometry=geometry,
               field=field)
        table.sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def free_model_seconds(table: Table, pipe, kwargs: dict, presets: tuple[str, ...], stock: bool) -> dict[str, float]:
    """Whole generations with a transformer that costs nothing: what the pipeline (and Fresco, per preset) spends
    beyond the model, set-up, schedules and host waits included; ``stock``: also the stock 50-step call."""
    pipe.transformer.forward = lambda hidden_states, *args, **named: (hidden_states * 0.01,)  # this instance only
    out = {}
    try:
        if stock:
            out["stock 50 steps"] = generation_seconds(table, pipe, {**kwargs, "num_inference_steps": BASELINE_STEPS},
                                                       3)[0]
        for name in presets:
            apply_fresco(pipe, FrescoConfig.preset(name))
            try:
                generation_seconds(table, pipe, kwargs, 1)
                out[name] = generation_seconds(table, pipe, kwargs, 3)[0]
            finally:
                remove_fresco(pipe)
    finally:
        del pipe.transformer.forward
    return out


def plan_flops(name: str, size: int):
    return count_plan_flops(name, "flux-schnell" if name.startswith("flux-schnell") else "flux-dev", height=size,
                            width=size)


def dynamo_counters() -> dict[str, dict[str, int]]:
    from torch._dynamo.utils import counters

    return {group: dict(counters[group]) for group in ("stats", "inductor") if counters[group]}


def treat(pipe, treatment: str) -> None:
    """Give the pipeline's transformer the treatment, as a user would."""
    if treatment in ("compiled", "float8"):
        if treatment == "float8":
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

            quantize_(pipe.transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        pipe.transformer.compile_repeated_blocks(fullgraph=True, dynamic=True)
    elif treatment == "graphs":
        pipe.transformer.compile_repeated_blocks(fullgraph=True, dynamic=True, mode="reduce-overhead")


def run_treatment(table: Table, key: str) -> None:
    model, treatment = key.split("/")
    schnell = model == "schnell"
    record: dict[str, Any] = dict(rows=[], forwards={}, errors=[])
    table.result["treatments"][key] = record
    table.save()  # a treatment killed by the time limit still shows, with no rows
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()  # each treatment reports its own compiles and graph records
    pipe = build(table, schnell)
    kwargs = call_kwargs(table)
    before = torch.cuda.memory_reserved() / 2**30 if table.device == "cuda" else 0.0
    started = time.perf_counter()
    treat(pipe, treatment)
    # the first call compiles (or records) the full-resolution shape; its time is reported, not counted
    generation_seconds(table, pipe, {**kwargs, "num_inference_steps": 2}, 1)
    record["first_call_seconds"] = time.perf_counter() - started
    if schnell:  # the presets' FLOPs ratios count against FLUX.1-dev's 50 steps, so its wall time does too
        record["reference_seconds"] = table.result["treatments"].get(f"dev/{treatment}", {}).get("stock_seconds")
    else:
        stock, peak = generation_seconds(table, pipe, {**kwargs, "num_inference_steps": BASELINE_STEPS},
                                         table.repeats)
        record.update(stock_seconds=stock, stock_peak_gb=peak, reference_seconds=stock)
        if treatment == "float8":  # against bf16 under the same compile, where that ran
            compiled = table.result["treatments"].get("dev/compiled", {})
            record["reference_seconds"] = compiled.get("stock_seconds") or stock
            row = _row("stock 50 steps", BASELINE_STEPS, 1.0, stock, peak, table, key)
            record["rows"].append({**row, "tokens_per_step": [table.full_tokens] * BASELINE_STEPS})

    presets = (SCHNELL_PRESET,) if schnell else DEV_PRESETS
    rows: list[tuple[str, Callable[[], Any], Callable[[], Any], dict]] = []
    for name in presets:
        config = FrescoConfig.preset(name)
        flops = plan_flops(name, table.size)
        rows.append((f"fresco {name}", lambda c=config: apply_fresco(pipe, c), lambda: remove_fresco(pipe),
                     dict(flops_ratio=flops.speedup, plan=name)))
        if treatment != "float8":
            peer = max(1, round(BASELINE_STEPS / flops.speedup))
            rows.append((f"stock {peer} steps", lambda: None, lambda: None,
                         dict(flops_ratio=BASELINE_STEPS / peer, steps=peer)))
    if treatment == "eager" and not schnell:
        from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

        for cache in (FirstBlockCacheConfig(), TaylorSeerCacheConfig()):
            rows.append((f"stock 50 steps + {type(cache).__name__}", lambda c=cache: pipe.transformer.enable_cache(c),
                         lambda: pipe.transformer.disable_cache(), dict(steps=BASELINE_STEPS)))

    for label, enter, leave, extra in rows:
        try:
            enter()
            call = dict(kwargs)
            if "steps" in extra:
                call["num_inference_steps"] = extra["steps"]
            if "plan" in extra:  # warm-up: the plan's new token counts compile or record here
                generation_seconds(table, pipe, call, 1)
            graphs_before = dynamo_counters().get("stats", {}).get("unique_graphs", 0)
            seconds, peak = generation_seconds(table, pipe, call, table.repeats)
            row = _row(label, extra.get("steps"), extra.get("flops_ratio"), seconds, peak, table, key)
            row["compiled_while_timed"] = dynamo_counters().get("stats", {}).get("unique_graphs", 0) - graphs_before
            if "plan" in extra:
                row.update(plan=extra["plan"], tokens_per_step=list(last_fresco_run(pipe).tokens_per_step))
            elif "flops_ratio" in extra:  # a stock run: every step at full resolution
                row["tokens_per_step"] = [table.full_tokens] * extra["steps"]
            record["rows"].append(row)
        except Exception:  # noqa: BLE001  a failed row is a result too; the rest still run
            record["errors"].append(f"{label}: {traceback.format_exc(limit=3)}")
            print(record["errors"][-1], flush=True)
        finally:
            leave()
        table.save()

    planned = (n for name in presets for stage in plan_flops(name, table.size).stages for n in stage.tokens_per_step)
    counts = sorted(set(planned) | {table.full_tokens})
    for n in counts:
        try:
            seconds = forward_seconds(table, pipe.transformer, n, schnell)
            flops = forward_flops("flux-schnell" if schnell else "flux-dev", n)
            record["forwards"][str(n)] = dict(seconds=seconds, tflops_per_s=flops / seconds / 1e12)
        except Exception:  # noqa: BLE001
            record["errors"].append(f"forward at {n} tokens: {traceback.format_exc(limit=3)}")
    full = record["forwards"].get(str(table.full_tokens), {}).get("seconds")
    for row in record["rows"]:
        if row.get("tokens_per_step") and all(str(n) in record["forwards"] for n in row["tokens_per_step"]):
            forwards = sum(record["forwards"][str(n)]["seconds"] for n in row["tokens_per_step"])
            row["forwards_seconds"] = forwards
            row["loop_seconds"] = row["seconds"] - forwards  # what the generation spends beyond its model calls
    if full is not None and record.get("stock_seconds"):
        record["stock_loop_seconds"] = record["stock_seconds"] - BASELINE_STEPS * full
    if treatment == "eager":
        try:
            record["free_model_seconds"] = free_model_seconds(table, pipe, kwargs, presets, stock=not schnell)
            print(f"[{table.elapsed():6.1f} s] {key}: with a free model {record['free_model_seconds']}", flush=True)
        except Exception:  # noqa: BLE001
            record["errors"].append(f"free model: {traceback.format_exc(limit=3)}")
    record["counters"] = dynamo_counters()
    if table.device == "cuda":
        record["reserved_gb"] = torch.cuda.memory_reserved() / 2**30
        record["reserved_gb_before"] = before
    table.save()


def _row(label: str, steps: int | None, flops_ratio: float | None, seconds: float, peak: float, table: Table,
         key: str) -> dict[str, Any]:
    reference = table.result["treatments"][key].get("reference_seconds")
    wall = reference / seconds if reference else None
    row = dict(row=label, seconds=seconds, peak_gb=peak, wall_ratio=wall, flops_ratio=flops_ratio,
               wall_over_flops=wall / flops_ratio if wall and flops_ratio else None)
    if steps is not None:
        row["steps"] = steps
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
    print(f"[{table.elapsed():6.1f} s] {key}: {shown}", flush=True)
    return row


def markdown(result: dict[str, Any]) -> str:
    """The tables BENCHMARKS.md shows, from a run's JSON."""
    lines = ["| treatment | run | seconds | wall ratio | FLOPs ratio | wall / FLOPs | beyond its forwards (ms) | peak "
             "memory |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for key, record in result["treatments"].items():
        if record.get("stock_seconds") is not None and not key.endswith("float8"):
            loop = record.get("stock_loop_seconds")
            lines.append(f"| {key} | stock 50 steps | {record['stock_seconds']:.2f} | 1 | 1 | 1 | "
                         f"{fmt(loop and loop * 1000, '.0f')} | {record['stock_peak_gb']:.2f} GB |")
        for row in record["rows"]:
            loop = row.get("loop_seconds")
            lines.append(f"| {key} | {row['row']} | {row['seconds']:.2f} | {fmt(row['wall_ratio'], '.2f')} | "
                         f"{fmt(row['flops_ratio'], '.2f')} | {fmt(row['wall_over_flops'], '.3f')} | "
                         f"{fmt(loop and loop * 1000, '.0f')} | {row['peak_gb']:.2f} GB |")
        if not record.get("rows"):
            errors = [line for e in record.get("errors", []) for line in e.splitlines() if "Error:" in line]
            why = errors[-1].strip()[:160] if errors else "no generation finished before the process's time limit"
            lines.append(f"| {key} | {why} | | | | | | |")
    keys = [k for k, r in result["treatments"].items() if r.get("forwards")]
    if keys:
        lines += ["", "| image tokens | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        counts = sorted({int(n) for k in keys for n in result["treatments"][k]["forwards"]})
        for n in counts:
            cells = [result["treatments"][k]["forwards"].get(str(n)) for k in keys]
            lines.append(f"| {n} | " + " | ".join("-" if c is None else f"{c['seconds'] * 1000:.1f} ms "
                                                   f"({c['tflops_per_s']:.0f} TFLOP/s)" for c in cells) + " |")
    free = [(k, run, seconds) for k, r in result["treatments"].items()
            for run, seconds in r.get("free_model_seconds", {}).items()]
    if free:
        lines += ["", "| treatment | whole generation with a free model | ms |", "|---|---|---|"]
        lines += [f"| {k} | {run} | {seconds * 1000:.1f} |" for k, run, seconds in free]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_wall_table.json")
    parser.add_argument("--markdown", metavar="JSON", help="print the tables of an earlier run's JSON and exit")
    parser.add_argument("--budget", type=float, default=420.0, help="start no treatment after this many seconds")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--treatments", nargs="+", default=list(TREATMENTS), choices=TREATMENTS)
    parser.add_argument("--tiny", action="store_true", help="one block of each kind on the CPU (a smoke check)")
    args = parser.parse_args()
    if args.markdown:
        with open(args.markdown) as handle:
            print(markdown(json.load(handle)))
        return
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("gpu_wall_table.py needs a CUDA GPU; --tiny runs the same path on the CPU")
    table = Table(args.out, args.tiny, args.budget, args.repeats)
    for name in DEV_PRESETS + (SCHNELL_PRESET,):
        seconds = fresco_overhead_seconds(table, FrescoConfig.preset(name))
        table.result["overhead"].append(dict(preset=name, seconds=seconds))
        print(f"Fresco's own work, {name}: {seconds * 1000:.1f} ms", flush=True)
    table.save()
    for key in args.treatments:
        if table.elapsed() > args.budget:
            table.result["skipped"].append(key)
            print(f"[{table.elapsed():6.1f} s] {key}: skipped, past the {args.budget:.0f} s budget", flush=True)
            continue
        print(f"[{table.elapsed():6.1f} s] {key}", flush=True)
        try:
            run_treatment(table, key)
        except Exception:  # noqa: BLE001
            table.result["treatments"].setdefault(key, {}).setdefault("errors", []).append(traceback.format_exc())
            print(traceback.format_exc(), flush=True)
        gc.collect()  # the treatment's pipeline, compiled code and CUDA graphs go before the next is built
        torch._dynamo.reset()
        if table.device == "cuda":
            torch.cuda.empty_cache()
        table.save()
    print(json.dumps(table.result, indent=1)[:4000])


if __name__ == "__main__":
    main()
