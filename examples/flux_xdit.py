"""Fresco on FLUX with xDiT's sequence parallelism (its runner path), one process per GPU: xDiT's own options, plus
``--fresco-preset NAME``.

    torchrun --nproc_per_node 2 examples/flux_xdit.py --model black-forest-labs/FLUX.1-dev --ulysses_degree 2 \\
        --fresco-preset flux-dev-10x --prompt "a red fox in a snowy forest" --height 1024 --width 1024

Without ``--fresco-preset`` it is a stock xDiT run (``--num_inference_steps`` then applies; a preset sets its own).
PipeFusion (``--pipefusion_parallel_degree`` > 1) and ``--use_cfg_parallel`` are refused with Fresco on.

Offline, on any CPU (2 gloo processes through fresco_plugin.tools.xdit_cpu, a tiny random-weight pipeline;
checks the plumbing only; needs ``pip install xfuser==0.7.0`` and ``pip install --no-deps triton``):
    torchrun --standalone --nproc_per_node 2 examples/flux_xdit.py --tiny --model tiny --ulysses_degree 2 \\
        --fresco-preset flux-dev-5x
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)  # a rank that dies must not leave the others waiting forever


def main() -> None:
    tiny = "--tiny" in sys.argv
    if tiny:  # must happen before xfuser is imported
        sys.argv.remove("--tiny")
        from fresco_plugin.tools.xdit_cpu import import_xfuser_on_cpu

        import_xfuser_on_cpu()
    from diffusers import FluxPipeline
    from xfuser.config import FlexibleArgumentParser
    from xfuser.core.distributed import (
        get_runtime_state,
        get_world_group,
        init_distributed_environment,
        initialize_runtime_state,
    )
    from xfuser.model_executor.models.transformers.transformer_flux import xFuserFlux1Transformer2DWrapper

    from fresco_plugin import apply_fresco, last_fresco_run
    from fresco_plugin.integrations.xdit import FrescoXFuserArgs

    parser = FlexibleArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    engine_args = FrescoXFuserArgs.from_cli_args(FrescoXFuserArgs.add_cli_args(parser).parse_args())
    if not tiny:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # before the process group, as xDiT does
    dist.init_process_group("gloo" if tiny else "nccl", timeout=COLLECTIVE_TIMEOUT)
    init_distributed_environment()
    engine_config, input_config = engine_args.create_config()
    rank = get_world_group().rank

    if tiny:
        from fresco_plugin.tools.tiny import tiny_flux_pipeline

        pipe = tiny_flux_pipeline(num_attention_heads=4, transformer_class=xFuserFlux1Transformer2DWrapper)
        g = torch.Generator().manual_seed(input_config.seed)
        call = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g),
                    pooled_prompt_embeds=torch.randn(1, 32, generator=g),
                    height=64, width=64, output_type="latent")
        text_tokens, device = 8, "cpu"
    else:
        model = engine_config.model_config.model
        transformer = xFuserFlux1Transformer2DWrapper.from_pretrained(model, subfolder="transformer",
                                                                     torch_dtype=torch.bfloat16)
        pipe = FluxPipeline.from_pretrained(model, transformer=transformer, torch_dtype=torch.bfloat16)
        device = f"cuda:{get_world_group().local_rank}"
        pipe = pipe.to(device)
        call = dict(prompt=input_config.prompt, height=input_config.height, width=input_config.width,
                    guidance_scale=input_config.guidance_scale, max_sequence_length=input_config.max_sequence_length,
                    output_type=input_config.output_type)
        text_tokens = input_config.max_sequence_length
    initialize_runtime_state(pipe, engine_config)  # builds xDiT's groups from the engine config
    get_runtime_state().set_input_parameters(batch_size=1, num_inference_steps=input_config.num_inference_steps,
                                             max_condition_sequence_length=text_tokens, split_text_embed_in_sp=True)

    fresco = engine_args.fresco_config()
    if fresco is not None:
        apply_fresco(pipe, fresco)
    else:
        call["num_inference_steps"] = input_config.num_inference_steps
    if rank != 0:
        pipe.set_progress_bar_config(disable=True)
    output = pipe(**call, generator=torch.Generator(device).manual_seed(input_config.seed)).images
    if rank == 0:
        if fresco is not None:
            tokens = list(last_fresco_run(pipe).tokens_per_step)
            print(f"{dist.get_world_size()} ranks, Fresco {engine_args.fresco_preset}, image tokens per step {tokens}")
        if not tiny and input_config.output_type == "pil":
            out = Path("fresco-out/flux_xdit.png")
            out.parent.mkdir(parents=True, exist_ok=True)
            output[0].save(out)
            print(f"wrote {out.resolve()}")
    if tiny:
        from fresco_plugin.tools.tiny import end_gloo_ranks

        end_gloo_ranks()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
