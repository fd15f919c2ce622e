"""torchao Float8DynamicActivationFloat8Weight with Fresco on a CUDA GPU of compute capability 8.9+ (not on CPU).

Quantizes a small random-weight FLUX transformer (bf16, big enough for the float8 kernels: width 1024), runs the
same Fresco plan with and without quantization and reports how far the latents move, next to how far quantization
moves the stock run. Writes a JSON file:

    python benchmarks/float8_dynamic_gpu.py --out float8_dynamic_gpu.json
"""

from __future__ import annotations

import argparse
import json

import torch

from fresco_plugin import FrescoConfig, apply_fresco, remove_fresco


def build():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4,
                                             attention_head_dim=128, num_attention_heads=8, joint_attention_dim=1024,
                                             pooled_projection_dim=256, guidance_embeds=True,
                                             axes_dims_rope=(16, 56, 56)).to(torch.bfloat16)
        vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=16,
                            norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4).to(torch.bfloat16)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, fresco: bool) -> torch.Tensor:
    g = torch.Generator("cuda").manual_seed(1)
    kwargs = dict(prompt_embeds=torch.randn(1, 128, 1024, generator=g, device="cuda", dtype=torch.bfloat16),
                  pooled_prompt_embeds=torch.randn(1, 256, generator=g, device="cuda", dtype=torch.bfloat16),
                  height=512, width=512, output_type="latent", generator=torch.Generator().manual_seed(0))
    if fresco:
        apply_fresco(pipe, FrescoConfig.preset("flux-dev-5x"))
    else:
        kwargs["num_inference_steps"] = 18
    out = pipe(**kwargs).images.float()
    if fresco:
        remove_fresco(pipe)
    return out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="float8_dynamic_gpu.json")
    args = parser.parse_args()
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    pipe = build()
    stock, fresco = run(pipe, False), run(pipe, True)
    quantize_(pipe.transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    stock_q, fresco_q = run(pipe, False), run(pipe, True)
    result = dict(device=torch.cuda.get_device_name(), capability=list(torch.cuda.get_device_capability()),
                  torch=torch.__version__, stock_moved_by_float8=relative(stock_q, stock),
                  fresco_moved_by_float8=relative(fresco_q, fresco), finite=bool(torch.isfinite(fresco_q).all()))
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
