"""Random-weight diffusers pipelines built from configs (no downloads): tiny ones for tests and the offline examples,
and FLUX.1 at its real size for GPU timing and start-up checks; ``end_gloo_ranks`` ends the examples' offline
multi-process runs."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

__all__ = ["end_gloo_ranks", "random_flux_pipeline", "random_hunyuan_video_pipeline", "tiny_flux2_klein_pipeline",
           "tiny_flux2_pipeline", "tiny_flux_img2img_pipeline", "tiny_flux_kontext_pipeline", "tiny_flux_pipeline",
           "tiny_hunyuan_video15_i2v_pipeline", "tiny_hunyuan_video15_pipeline", "tiny_hunyuan_video_pipeline",
           "tiny_qwen_image_edit_pipeline", "tiny_qwen_image_pipeline", "tiny_wan_pipeline", "tiny_z_image_pipeline"]


def tiny_flux_pipeline(*, guidance_embeds: bool = True, static_shift: bool = False, seed: int = 0,
                       num_attention_heads: int = 2, transformer_class: type | None = None):
    """A FLUX-architecture pipeline of a few thousand parameters, without text encoders (pass prompt embeddings).

    ``guidance_embeds=True`` with dynamic shifting mimics FLUX.1-dev (guidance-distilled); ``guidance_embeds=False``
    with ``static_shift=True`` mimics FLUX.1-schnell (timestep-distilled, static shift 1.0). ``transformer_class``
    (a subclass of ``FluxTransformer2DModel``, such as xDiT's wrapper) gets the same weights for the same seed.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = (transformer_class or FluxTransformer2DModel)(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=num_attention_heads, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=[4, 6, 6],
        guidance_embeds=guidance_embeds,
    )
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        scaling_factor=1.0, shift_factor=0.0,
    )
    if static_shift:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096,
            base_shift=0.5, max_shift=1.15,
        )
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)


def tiny_flux_kontext_pipeline(**options):
    """:func:`tiny_flux_pipeline`'s components as a ``FluxKontextPipeline`` (image editing); same options."""
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline.from_pipe(tiny_flux_pipeline(**options))


def tiny_flux_img2img_pipeline(**options):
    """:func:`tiny_flux_pipeline`'s components as a ``FluxImg2ImgPipeline``; same options."""
    from diffusers import FluxImg2ImgPipeline

    return FluxImg2ImgPipeline.from_pipe(tiny_flux_pipeline(**options))


def tiny_flux2_pipeline(*, seed: int = 0, klein: bool = False):
    """A FLUX.2-architecture pipeline of a few thousand parameters, without its text encoder (pass ``prompt_embeds``):
    ``Flux2Pipeline`` (guidance embedded, as FLUX.2-dev) or, with ``klein=True``, ``Flux2KleinPipeline`` (true CFG).
    The VAE's batch-norm statistics are set away from 0 and 1 so decoding exercises them."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Pipeline,
        Flux2Transformer2DModel,
    )

    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=not klein,
    )
    vae = AutoencoderKLFlux2(
        block_out_channels=(4,), layers_per_block=1, latent_channels=4, norm_num_groups=1, sample_size=32,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), use_quant_conv=False,
        use_post_quant_conv=False, mid_block_add_attention=False,
    )
    vae.bn.running_mean.uniform_(-0.5, 0.5)
    vae.bn.running_var.uniform_(0.5, 2.0)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096, time_shift_type="exponential",
    )
    if klein:
        return Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                                  transformer=transformer)
    return Flux2Pipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)


def tiny_flux2_klein_pipeline(*, seed: int = 0):
    """:func:`tiny_flux2_pipeline` as ``Flux2KleinPipeline``."""
    return tiny_flux2_pipeline(seed=seed, klein=True)


def tiny_qwen_image_pipeline(*, seed: int = 0, guidance_embeds: bool = False):
    """A Qwen-Image-architecture pipeline of a few thousand parameters, without its text encoder (pass
    ``prompt_embeds``), with Qwen-Image's own scheduler (dynamic shift, terminal shift 0.02)."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                 latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0, shift_terminal=0.02,
        time_shift_type="exponential", use_dynamic_shifting=True,
    )
    return QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)


def tiny_qwen_image_edit_pipeline(*, seed: int = 0):
    """:func:`tiny_qwen_image_pipeline`'s transformer and scheduler as a ``QwenImageEditPipeline``, with an 8x VAE of
    the same width: stock resizes the reference to a 1024x1024 area, which that keeps at 64x64 tokens."""
    from diffusers import AutoencoderKLQwenImage, QwenImageEditPipeline

    base = tiny_qwen_image_pipeline(seed=seed)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, False, False], latents_mean=[0.0] * 4,
                                 latents_std=[1.0] * 4)
    return QwenImageEditPipeline(scheduler=base.scheduler, vae=vae, text_encoder=None, tokenizer=None, processor=None,
                                 transformer=base.transformer)


def tiny_hunyuan_video_pipeline(*, patch_size_t: int = 1, seed: int = 0, num_attention_heads: int = 2,
                                transformer_class: type | None = None):
    """A HunyuanVideo-architecture pipeline with 2x2 patches (as the real one), without text encoders.

    Pass ``prompt_embeds`` (B, L, 16), ``pooled_prompt_embeds`` (B, 8) and ``prompt_attention_mask`` (B, L).
    ``transformer_class`` (a subclass of ``HunyuanVideoTransformer3DModel``) gets the same weights for the same seed.
    """
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    torch.manual_seed(seed)
    transformer = (transformer_class or HunyuanVideoTransformer3DModel)(
        in_channels=4, out_channels=4, num_attention_heads=num_attention_heads, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=patch_size_t, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    )
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8,) * 4, layers_per_block=1,
        norm_num_groups=4,
    )
    return HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None,
                                tokenizer_2=None)


def tiny_hunyuan_video15_pipeline(*, seed: int = 0, guidance_scale: float = 6.0):
    """A HunyuanVideo-1.5-architecture pipeline without its text encoders (pass ``prompt_embeds``, ``prompt_embeds_2``
    and their masks), a 4x spatial, 4x temporal VAE, 1x1 patches as the real one, and the stock guider at
    ``guidance_scale``."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from diffusers.guiders import ClassifierFreeGuidance

    torch.manual_seed(seed)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=2 * 4 + 1, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_refiner_layers=1, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=8, rope_axes_dim=(4, 6, 6),
        target_size=64, task_type="t2v",
    )
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8, 8), layers_per_block=1,
                                      spatial_compression_ratio=4, temporal_compression_ratio=4)
    return HunyuanVideo15Pipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                  scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=None,
                                  tokenizer_2=None, guider=ClassifierFreeGuidance(guidance_scale=guidance_scale))


def tiny_hunyuan_video15_i2v_pipeline(*, seed: int = 0, guidance_scale: float = 6.0, use_meanflow: bool = False):
    """:func:`tiny_hunyuan_video15_pipeline`'s parts as ``HunyuanVideo15ImageToVideoPipeline``, with a tiny SigLIP
    image encoder (16x16 pictures, 4 image tokens) and its processor; ``use_meanflow`` as the step-distilled
    checkpoint (the transformer also takes the time the step lands on)."""
    from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Transformer3DModel
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    parts = tiny_hunyuan_video15_pipeline(seed=seed, guidance_scale=guidance_scale).components
    torch.manual_seed(seed + 1)
    config = dict(parts["transformer"].config)
    transformer = HunyuanVideo15Transformer3DModel(**{**{k: v for k, v in config.items() if not k.startswith("_")},
                                                      "task_type": "i2v", "use_meanflow": use_meanflow})
    image_encoder = SiglipVisionModel(SiglipVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                                         num_attention_heads=2, image_size=16, patch_size=8))
    feature_extractor = SiglipImageProcessor(size={"height": 16, "width": 16})
    return HunyuanVideo15ImageToVideoPipeline(**{**parts, "transformer": transformer, "image_encoder": image_encoder,
                                                 "feature_extractor": feature_extractor})


def tiny_wan_pipeline(*, seed: int = 0, two_experts: bool = False, expand_timesteps: bool = False):
    """A Wan2.1-architecture pipeline with an Euler flow-matching scheduler, without a text encoder; with
    ``two_experts`` a Wan2.2 A14B-style pair (``transformer_2`` below ``boundary_ratio`` 0.875, Wan2.2's), with
    ``expand_timesteps`` Wan2.2 TI2V's per-token timesteps.

    Pass ``prompt_embeds`` and ``negative_prompt_embeds`` (B, L, 32).
    """
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    def transformer() -> WanTransformer3DModel:
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )

    torch.manual_seed(seed)
    high_noise = transformer()
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    low_noise = transformer() if two_experts else None
    return WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=high_noise, transformer_2=low_noise,
                       boundary_ratio=0.875 if two_experts else None, expand_timesteps=expand_timesteps,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))


def random_flux_pipeline(*, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, schnell: bool = False,
                         seed: int = 0, shrink: bool = False):
    """FLUX.1-dev (or, with ``schnell``, FLUX.1-schnell) at its real size with random weights, from the embedded
    public config, without text encoders (pass prompt embeddings: 512 x 4096 and 768). The VAE is a tiny stand-in,
    so decode nothing: use ``output_type="latent"``. About 24 GB in bf16. ``shrink`` keeps the inputs' sizes but
    only one block of each kind, two heads wide: the same call path, small enough for a CPU smoke check."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from fresco_plugin.flops import MODELS

    config = MODELS["flux-schnell" if schnell else "flux-dev"].config()
    if shrink:
        config.update(num_layers=1, num_single_layers=1, num_attention_heads=2)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(**config)
            vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=16,
                                norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4,
                                up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.3611, shift_factor=0.1159)
    finally:
        torch.set_default_dtype(previous)
    if schnell:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)


def random_hunyuan_video_pipeline(*, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """HunyuanVideo at its real size (13B) with random weights, from the embedded public config, without text
    encoders (pass prompt embeddings: (1, L, 4096), pooled (1, 768) and a mask). The VAE is a tiny stand-in with the
    real compression (8x spatial, 4x temporal), so decode nothing: use ``output_type="latent"``. About 26 GB in bf16."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    from fresco_plugin.flops import MODELS

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            transformer = HunyuanVideoTransformer3DModel(**MODELS["hunyuan-video"].config())
            vae = AutoencoderKLHunyuanVideo(
                in_channels=3, out_channels=3, latent_channels=16, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
                up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8,) * 4, layers_per_block=1,
                norm_num_groups=4,
            )
    finally:
        torch.set_default_dtype(previous)
    return HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None,
                                tokenizer_2=None)


def tiny_z_image_pipeline(*, seed: int = 0):
    """A Z-Image-architecture pipeline of a few thousand parameters, without its text encoder (pass ``prompt_embeds``
    as a list of per-prompt tensors, and ``negative_prompt_embeds`` when ``guidance_scale > 0``)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        in_channels=4, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16,
        axes_dims=[4, 6, 6], axes_lens=[256, 64, 64],
    )
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        scaling_factor=0.5, shift_factor=0.1,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                                max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)


def end_gloo_ranks() -> None:
    """End an offline multi-process run: wait for every rank, tear the process group down, then exit at once.

    Gloo's worker threads can outlive ``destroy_process_group`` and abort a rank while Python finalizes ("terminate
    called without an active exception", SIGABRT) after all its work is done; CI saw it twice in a few hundred
    launches. Exiting without finalization skips that window. Only for these CPU smoke runs: the GPU paths exit
    normally."""
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
