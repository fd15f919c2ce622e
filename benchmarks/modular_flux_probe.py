"""Could Fresco be a denoise block of diffusers' modular FLUX pipeline? A probe on a tiny random-weight FLUX
(docs/adapters.md, "Diffusers' modular pipelines"): it prints whether the classic pipeline's components move into a
modular one without copies, whether stock modular and classic give the same pictures, whether a block that owns the
whole loop (Euler with the update Fresco's sampler uses) repeats stock modular bit for bit, and what becomes of
``callback_on_step_end``. A few seconds on a CPU.

    python benchmarks/modular_flux_probe.py
"""

from __future__ import annotations

import warnings

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxAutoBlocks, FluxTransformer2DModel
from diffusers.modular_pipelines import ComponentSpec, InputParam, ModularPipelineBlocks, OutputParam

from fresco_plugin.tools.tiny import tiny_flux_pipeline

CALL = dict(height=16, width=16, num_inference_steps=4, guidance_scale=3.5, output_type="np")
LOOP_INPUTS = ("latents", "timesteps", "prompt_embeds", "pooled_prompt_embeds", "txt_ids", "img_ids")


class WholeLoop(ModularPipelineBlocks):
    """Where a Fresco block would sit: it owns the loop, so it could change the token set between steps."""

    model_name = "flux"

    @property
    def expected_components(self):
        return [ComponentSpec("scheduler", FlowMatchEulerDiscreteScheduler),
                ComponentSpec("transformer", FluxTransformer2DModel)]

    @property
    def inputs(self):
        return [InputParam("guidance"), InputParam("joint_attention_kwargs")] + [
            InputParam(name, required=True) for name in LOOP_INPUTS]

    @property
    def intermediate_outputs(self):
        return [OutputParam("latents")]

    @torch.no_grad()
    def __call__(self, components, state):
        block = self.get_block_state(state)
        sigmas, x = components.scheduler.sigmas, block.latents  # set_timesteps already shifted them (its own mu)
        for i, t in enumerate(block.timesteps):
            velocity = components.transformer(
                hidden_states=x, timestep=t.expand(x.shape[0]).to(x.dtype) / 1000, guidance=block.guidance,
                encoder_hidden_states=block.prompt_embeds, pooled_projections=block.pooled_prompt_embeds,
                txt_ids=block.txt_ids, img_ids=block.img_ids, joint_attention_kwargs=block.joint_attention_kwargs,
                return_dict=False)[0]
            x = (x.float() + (sigmas[i + 1] - sigmas[i]) * velocity.float()).to(x.dtype)
        block.latents = x
        self.set_block_state(state, block)
        return components, state


def modular(classic, whole_loop: bool):
    blocks = FluxAutoBlocks()
    blocks.sub_blocks.pop("text_encoder")  # the probe passes embeddings
    if whole_loop:
        blocks.sub_blocks["denoise"].sub_blocks["denoise"] = WholeLoop()
    pipe = blocks.init_pipeline()
    pipe.update_components(**{k: v for k, v in classic.components.items() if v is not None},
                           image_processor=classic.image_processor)
    return pipe


def main() -> None:
    classic = tiny_flux_pipeline()
    generator = torch.Generator().manual_seed(0)
    embeds = dict(prompt_embeds=torch.randn(1, 8, 32, generator=generator),
                  pooled_prompt_embeds=torch.randn(1, 32, generator=generator))
    seeded = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    stock = classic(**embeds, **CALL, generator=seeded()).images
    plain = modular(classic, whole_loop=False)
    print("modular pipeline shares the classic transformer object:", plain.transformer is classic.transformer)
    stock_modular = plain(**embeds, **CALL, generator=seeded()).get("images")
    print("stock modular == classic FluxPipeline, bit for bit:", bool((torch.tensor(stock_modular)
                                                                       == torch.tensor(stock)).all()))
    looped = modular(classic, whole_loop=True)(**embeds, **CALL, generator=seeded()).get("images")
    print("a block owning the whole loop == stock modular, bit for bit:", bool((torch.tensor(looped)
                                                                                == torch.tensor(stock_modular)).all()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain(**embeds, **CALL, generator=seeded(), callback_on_step_end=lambda *args: {})
    said = [str(w.message) for w in caught if "callback_on_step_end" in str(w.message)]
    print("callback_on_step_end:", said[0] if said else "no warning (taken)")


if __name__ == "__main__":
    main()
