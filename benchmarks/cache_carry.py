"""FirstBlockCache under Fresco: start the cache cold at every token-count change (what Fresco does), or carry its
residuals onto the new token set?

Fresco resets every stateful cache when the token count changes (a stage switch or a promotion round): the cached
tensors belong to the old token set. The alternative tried here maps FirstBlockCache's cached residuals onto the new
token set the way the latents go: each promoted token's children take its residual, unchanged tokens keep theirs
(each new token takes the old token whose position is nearest: its parent, or itself). The cache may then skip the
first forward after a change too, which a cold cache never does. On the shipped model, per preset and threshold:
forwards skipped, transformer FLOPs over the 50-step baseline's, fidelity (SSIM of the decoded pictures) to the
stock picture and to the same Fresco plan without a cache, and, with carried residuals, FirstBlockCache's relative
change of the first block's residual at the forwards right after a change (it skips where that is <= threshold):

    python benchmarks/cache_carry.py --prompts 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.hooks import FirstBlockCacheConfig
from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK, FBCHeadBlockHook

from fresco_plugin import PRESETS
from fresco_plugin.integrations._diffusers_runner import TransformerDenoiser
from fresco_plugin.tools.bench import BASELINE_STEPS, Method, _Runner, ssim
from fresco_plugin.tools.shipped_model import load_scenes_pipeline, prompt_set

PRESET_NAMES = ("flux-dev-3x", "flux-dev-5x", "flux-dev-10x")
THRESHOLDS = (0.1, 0.2, 0.3)


class _CarriedFirstBlockCache:
    """In place of Fresco's cache reset: FirstBlockCache's state mapped onto the new token set."""

    def __init__(self, transformer: Any):
        self.transformer = transformer
        self.previous: torch.Tensor | None = None  # token positions of the last forward
        self.current: torch.Tensor | None = None

    def reset(self) -> None:
        if self.previous is None:  # the generation's first forward
            self.transformer._reset_stateful_cache()
            return
        nearest = torch.cdist(self.current.float(), self.previous.float(), p=float("inf")).argmin(dim=1)
        hook = self.transformer.transformer_blocks[0]._diffusers_hook.get_hook(_FBC_LEADER_BLOCK_HOOK)
        for state in hook.state_manager._state_cache.values():
            if state.head_block_residual is not None:
                state.head_block_residual = state.head_block_residual[:, nearest]
            if state.tail_block_residuals is not None:
                image, text = state.tail_block_residuals
                state.tail_block_residuals = (image[:, nearest], text)

    def scope(self, name: str) -> contextlib.AbstractContextManager[Any]:
        return self.transformer.cache_context(name)


@contextlib.contextmanager
def carrying_residuals() -> Iterator[None]:
    original = TransformerDenoiser.__call__

    def call(self: TransformerDenoiser, latents: torch.Tensor, positions: torch.Tensor, step: Any) -> torch.Tensor:
        if not isinstance(self.caches, _CarriedFirstBlockCache):
            self.caches = _CarriedFirstBlockCache(self.pipe.transformer)
        self.caches.current = positions[0]
        try:
            return original(self, latents, positions, step)
        finally:
            self.caches.previous = positions[0]

    TransformerDenoiser.__call__ = call
    try:
        yield
    finally:
        TransformerDenoiser.__call__ = original


@contextlib.contextmanager
def recording_decisions(decisions: list[tuple[int, float | None]]) -> Iterator[None]:
    """Per forward: the image-token count and FirstBlockCache's relative change of the first block's residual
    (None when it had nothing cached: it computes)."""
    original = FBCHeadBlockHook._should_compute_remaining_blocks

    def decide(self: FBCHeadBlockHook, residual: torch.Tensor) -> bool:
        cached = self.state_manager.get_state().head_block_residual
        change = None if cached is None else ((residual - cached).abs().mean() / cached.abs().mean()).item()
        decisions.append((residual.shape[1], change))
        return original(self, residual)

    FBCHeadBlockHook._should_compute_remaining_blocks = decide
    try:
        yield
    finally:
        FBCHeadBlockHook._should_compute_remaining_blocks = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    runner = _Runner(load_scenes_pipeline(progress=False))
    runner.pipe.set_progress_bar_config(disable=True)
    rows: dict[str, dict[str, list[float]]] = {}

    def record(name: str, **values: float) -> None:
        for key, value in values.items():
            rows.setdefault(name, {}).setdefault(key, []).append(value)

    for prompt in prompt_set(args.prompts, args.prompts // 4):
        latents, _, baseline_flops = runner(Method("baseline", "", steps=BASELINE_STEPS), prompt)
        stock = runner.decode(latents)[1]
        for preset in PRESET_NAMES:
            config = PRESETS[preset]
            latents, _, flops = runner(Method(preset, "", config=config), prompt)
            plain = runner.decode(latents)[1]
            record(f"{preset} no cache", ssim_to_stock=ssim(plain, stock), flops_ratio=baseline_flops / flops,
                   skipped=0.0)
            for threshold in THRESHOLDS:
                for mode in ("reset", "carry"):
                    decisions: list[tuple[int, float | None]] = []
                    method = Method(preset, "", config=config,
                                    cache=lambda t=threshold: FirstBlockCacheConfig(threshold=t))
                    with recording_decisions(decisions), (
                            carrying_residuals() if mode == "carry" else contextlib.nullcontext()):
                        latents, _, flops = runner(method, prompt)
                    picture = runner.decode(latents)[1]
                    # the forwards right after a token-count change: only a carried cache has anything to compare
                    after_change = [c for (n, c), (before, _) in zip(decisions[1:], decisions) if n != before]
                    values = dict(ssim_to_stock=ssim(picture, stock), ssim_to_no_cache=ssim(picture, plain),
                                  flops_ratio=baseline_flops / flops,
                                  skipped=float(sum(c is not None and c <= threshold for _, c in decisions)))
                    if mode == "carry":
                        values["change_after_switch"] = float(np.mean(after_change))
                    record(f"{preset} fbc {threshold} {mode}", **values)
    print(f"{args.prompts} prompts; means over prompts")
    print(f"{'method':32s} {'skipped':>8s} {'FLOPs x':>8s} {'SSIM stock':>10s} {'SSIM no-cache':>13s} "
          f"{'change after a token-count change':>34s}")
    summary = {}
    for name, values in rows.items():
        mean = {key: float(np.mean(v)) for key, v in values.items()}
        summary[name] = mean
        print(f"{name:32s} {mean['skipped']:8.2f} {mean['flops_ratio']:8.2f} {mean['ssim_to_stock']:10.3f} "
              f"{mean.get('ssim_to_no_cache', 1.0):13.3f} {mean.get('change_after_switch', float('nan')):34.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"prompts": args.prompts, "means": summary, "per_prompt": rows}, indent=1))


if __name__ == "__main__":
    main()
