"""Fresco on FLUX.1-dev (or FLUX.1-schnell): the same pipeline call, fewer transformer FLOPs.

On a GPU with the weights available:
    python examples/flux_dev.py --prompt "a cat holding a sign that says hello world" --preset flux-dev-10x
    python examples/flux_dev.py --model black-forest-labs/FLUX.1-schnell --preset flux-schnell-22x

Offline, on any CPU (a tiny random-weight FLUX pipeline built from configs; checks the plumbing, not the pictures):
    python examples/flux_dev.py --tiny
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fresco_plugin import PRESETS, FrescoConfig, apply_fresco, remove_fresco


def _timed(pipe, **kwargs):
    seen: list[int] = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kw: seen.append(kw["hidden_states"].shape[1]), with_kwargs=True
    )
    start = time.perf_counter()
    output = pipe(**kwargs)
    elapsed = time.perf_counter() - start
    hook.remove()
    return output, elapsed, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="black-forest-labs/FLUX.1-dev")
    parser.add_argument("--preset", default="flux-dev-10x", choices=sorted(PRESETS))
    parser.add_argument("--prompt", default="a red fox in a snowy forest, golden hour, highly detailed")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--baseline-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="fresco-out/flux",
                        help="path prefix of the two pictures written (stock and Fresco)")
    parser.add_argument("--tiny", action="store_true", help="offline run on a tiny random-weight pipeline")
    args = parser.parse_args()

    if args.tiny:
        from fresco_plugin.tools.tiny import tiny_flux_pipeline

        schnell = args.preset.startswith("flux-schnell")
        pipe = tiny_flux_pipeline(guidance_embeds=not schnell, static_shift=schnell)
        g = torch.Generator().manual_seed(args.seed)
        call = dict(prompt_embeds=torch.randn(1, 16, 32, generator=g),
                    pooled_prompt_embeds=torch.randn(1, 32, generator=g),
                    height=128, width=128, output_type="latent")
    else:
        from diffusers import FluxPipeline

        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        pipe = FluxPipeline.from_pretrained(args.model, torch_dtype=dtype)
        pipe.to("cuda" if torch.cuda.is_available() else "cpu")
        call = dict(prompt=args.prompt, height=args.height, width=args.width)

    generator = lambda: torch.Generator(device="cpu").manual_seed(args.seed)  # noqa: E731
    stock, stock_time, stock_tokens = _timed(pipe, **call, num_inference_steps=args.baseline_steps,
                                             generator=generator())
    apply_fresco(pipe, FrescoConfig.preset(args.preset))
    fresco, fresco_time, fresco_tokens = _timed(pipe, **call, generator=generator())
    remove_fresco(pipe)
    again, _, _ = _timed(pipe, **call, num_inference_steps=args.baseline_steps, generator=generator())

    print(f"stock : {len(stock_tokens)} steps x {stock_tokens[0]} tokens, {stock_time:.2f} s")
    print(f"fresco: {len(fresco_tokens)} steps, tokens per step {fresco_tokens}, {fresco_time:.2f} s "
          f"(wall-time ratio {stock_time / fresco_time:.2f}x, token-steps ratio "
          f"{sum(stock_tokens) / sum(fresco_tokens):.2f}x)")
    identical = all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in
                    zip(_as_tensors(stock.images), _as_tensors(again.images)))
    print(f"after remove_fresco the pipeline is bit-identical to stock: {identical}")
    if not args.tiny:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        stock.images[0].save(f"{args.out}_stock.png")
        fresco.images[0].save(f"{args.out}_{args.preset}.png")
        print(f"wrote {args.out}_stock.png and {args.out}_{args.preset}.png")
    if not identical:
        raise SystemExit("remove_fresco did not restore the stock pipeline")


def _as_tensors(images):
    if isinstance(images, torch.Tensor):
        return [images]
    import numpy as np

    return [torch.from_numpy(np.asarray(image)) for image in images]


if __name__ == "__main__":
    main()
