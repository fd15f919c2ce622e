"""Z-Image specifics beyond the adapter contract: the rope lookup at arbitrary positions is the table at integer ones,
and a grid sent as a one-row strip with its real positions is the grid's forward."""

import torch

from fresco_plugin import FrescoConfig, apply_fresco, remove_fresco
from fresco_plugin.integrations.diffusers_z_image import z_image_rope_at
from fresco_plugin.layout import pack, unpack
from fresco_plugin.tools.tiny import tiny_z_image_pipeline


def test_the_rope_at_integer_positions_is_the_stock_table():
    rope = tiny_z_image_pipeline().transformer.rope_embedder
    ids = torch.stack(torch.meshgrid(torch.tensor([0, 33]), torch.arange(5), torch.arange(7), indexing="ij"),
                      dim=-1).reshape(-1, 3)
    assert torch.equal(z_image_rope_at(rope, ids.to(torch.float32)), rope(ids.to(torch.int32)))


def test_a_grid_sent_as_a_strip_at_its_positions_is_the_grid_s_forward():
    pipe = tiny_z_image_pipeline()
    apply_fresco(pipe, FrescoConfig(stage_scales=(0.5, 1.0)))
    transformer, rope = pipe.transformer, pipe.transformer.rope_embedder
    latents = torch.randn(1, 4, 12, 20, generator=torch.Generator().manual_seed(0))  # a 6x10 token grid
    caption = [torch.randn(5, 16, generator=torch.Generator().manual_seed(1))]
    t = torch.tensor([0.3])
    grid = transformer([latents.unsqueeze(2)[0]], t, caption, return_dict=False)[0][0]
    tokens = pack(latents, 2)
    strip = unpack(tokens, 1, 60, 2)  # (1, 4, 2, 120): the 60 tokens in a row
    rows, cols = torch.meshgrid(torch.arange(6.0), torch.arange(10.0), indexing="ij")
    rope.armed = (torch.stack([torch.zeros(60), rows.flatten(), cols.flatten()], dim=1), 60, 64)
    out = transformer([strip.unsqueeze(2)[0]], t, caption, return_dict=False)[0][0]
    assert rope.armed is None  # one lookup only: the caption's is stock's
    assert torch.allclose(pack(out.squeeze(1)[None], 2), pack(grid.squeeze(1)[None], 2), atol=1e-5)
    remove_fresco(pipe)
    assert type(pipe.transformer.rope_embedder).__name__ == "RopeEmbedder"
