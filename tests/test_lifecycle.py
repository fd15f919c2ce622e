"""A Fresco pipeline as an object: pickle, deepcopy, pipelines sharing one transformer, from_pipe, garbage
collection. Each guarantee holds for the image and the video adapters alike (the video ones carry a rope hook)."""

import copy
import gc
import pickle

import diffusers
import pytest
import torch

from fresco_plugin import FrescoConfig, apply_fresco, fresco_config_of, remove_fresco
from fresco_plugin.integrations.tiny import tiny_flux_pipeline, tiny_hunyuan_video_pipeline

CONFIG = FrescoConfig(stage_scales=(0.5, 1.0), stage_steps=(4, 4), promotion_rounds=1, promotion_ratio=0.3)


def _flux():
    pipe = tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _flux_call(pipe, seed=0):
    g = torch.Generator().manual_seed(1)
    return pipe(prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g),
                height=64, width=64, output_type="latent", generator=torch.Generator().manual_seed(seed)).images


def _video():
    pipe = tiny_hunyuan_video_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _video_call(pipe, seed=0):
    g = torch.Generator().manual_seed(1)
    return pipe(prompt_embeds=torch.randn(1, 8, 16, generator=g), pooled_prompt_embeds=torch.randn(1, 8, generator=g),
                prompt_attention_mask=torch.ones(1, 8, dtype=torch.long), height=64, width=80, num_frames=5,
                output_type="latent", generator=torch.Generator().manual_seed(seed)).frames


KINDS = {"flux": (_flux, _flux_call, diffusers.FluxPipeline),
         "hunyuan-video": (_video, _video_call, diffusers.HunyuanVideoPipeline)}


@pytest.fixture(params=list(KINDS))
def kind(request):
    return KINDS[request.param]


def test_a_fresco_pipeline_pickles_as_stock_plus_config(kind):
    make, call, stock_class = kind
    pipe = make()
    stock = call(pipe)
    apply_fresco(pipe, CONFIG)
    fresco = call(pipe)
    restored = pickle.loads(pickle.dumps(pipe))
    assert fresco_config_of(restored) == CONFIG and type(restored).__name__ == stock_class.__name__
    assert torch.equal(call(restored), fresco)
    remove_fresco(restored)
    assert type(restored) is stock_class and torch.equal(call(restored), stock)
    assert torch.equal(call(pipe), fresco)  # the original never noticed
    plain = pickle.loads(pickle.dumps(remove_fresco(pipe)))  # and a stock one stays stock
    assert type(plain) is stock_class and fresco_config_of(plain) is None


def test_a_deep_copy_owns_its_hooks(kind):
    make, call, stock_class = kind
    pipe = make()
    stock = call(pipe)
    apply_fresco(pipe, CONFIG)
    fresco = call(pipe)
    twin = copy.deepcopy(pipe)
    assert twin.transformer is not pipe.transformer
    assert torch.equal(call(twin), fresco)
    remove_fresco(twin)  # takes the copy's hooks off the copy's transformer only
    assert torch.equal(call(twin), stock) and torch.equal(call(pipe), fresco)
    if hasattr(pipe.transformer, "rope"):
        assert not twin.transformer.rope._forward_hooks and len(pipe.transformer.rope._forward_hooks) == 1


def test_pipelines_sharing_a_transformer_each_get_fresco_and_release_it_when_collected(kind):
    make, call, stock_class = kind
    first = make()
    stock = call(first)
    apply_fresco(first, CONFIG)
    fresco = call(first)
    second = stock_class.from_pipe(first)  # the same transformer, a stock pipeline
    assert second.transformer is first.transformer and torch.equal(call(second), stock)
    apply_fresco(second, CONFIG)  # a second Fresco pipeline on that transformer
    assert torch.equal(call(second), fresco) and torch.equal(call(first), fresco)
    transformer = first.transformer
    del first
    gc.collect()
    if hasattr(transformer, "rope"):  # the collected pipeline's hook went with it
        assert len(transformer.rope._forward_hooks) == 1
    assert torch.equal(call(second), fresco)
    remove_fresco(second)
    assert torch.equal(call(second), stock)
    if hasattr(transformer, "rope"):
        assert not transformer.rope._forward_hooks


def test_the_fresco_class_itself_builds_stock_pipelines(kind):
    make, call, stock_class = kind
    pipe = make()
    stock = call(pipe)
    apply_fresco(pipe, CONFIG)
    built = type(pipe).from_pipe(pipe)  # a class method of the per-instance class: no Fresco was applied to it
    assert fresco_config_of(built) is None and torch.equal(call(built), stock)
