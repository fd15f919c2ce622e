"""The realism yardstick: the shipped scene encoder and KID on its features."""

import numpy as np
import pytest
import torch

from fresco_plugin.tools.scene_features import embed_pictures, kid, kid_bootstrap, load_feature_encoder
from fresco_plugin.tools.scenes import render, sample_scene, scene_for_prompt


def test_kid_is_unbiased_near_zero_for_one_distribution_and_large_for_another():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((200, 16)), rng.standard_normal((200, 16))
    shifted = rng.standard_normal((200, 16)) + 1.0
    same, different = kid(a, b), kid(a, shifted)
    assert abs(same) < 0.2 * different
    resamples = rng.integers(200, size=(50, 200))
    spread = kid_bootstrap(a, shifted, resamples)
    assert spread.shape == (50,) and np.percentile(spread, 2.5) > 0


def test_kid_on_a_resample_ignores_pairs_of_the_same_draw():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((10, 4))
    index = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8])  # a repeat must not count as a pair with itself
    assert np.isfinite(kid(a, a, index)) and abs(kid(a, a, index)) < 1e-9


@pytest.fixture(scope="module")
def encoder():
    return load_feature_encoder()


def test_the_shipped_encoder_puts_true_renders_nearer_each_other_than_damaged_ones(encoder):
    rng = np.random.default_rng(5)
    scenes = [sample_scene(rng, held_out=None) for _ in range(48)]
    truth = embed_pictures(encoder, [render(s, 128) for s in scenes])
    again = embed_pictures(encoder, [render(scene_for_prompt(s.prompt, rng), 128) for s in scenes])
    # blur (what a sampler that averages gives: 4x4 means, smoothly upsampled) and speckle (noise at 0.1)
    blurred = [_smooth(render(s, 128), 4) for s in scenes]
    noisy = [np.clip(render(s, 128) + rng.normal(0, 0.1, (128, 128, 3)), 0, 1).astype(np.float32) for s in scenes]
    floor = kid(again, truth)
    for damaged in (blurred, noisy):
        assert kid(embed_pictures(encoder, damaged), truth) > max(20 * abs(floor), 1000)


def _smooth(picture, factor):
    t = torch.from_numpy(picture).permute(2, 0, 1)[None]
    t = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(t, factor), scale_factor=factor,
                                        mode="bilinear")
    return t[0].permute(1, 2, 0).numpy()
