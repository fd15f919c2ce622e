"""Z-Image specifics beyond the adapter contract: the rope lookup at arbitrary positions is the table at integer ones,
its device-side table holds the formula at every position a layout takes, and a grid sent as a one-row strip with
its real positions is the grid's forward."""

import pytest
import torch

from fresco_plugin import FrescoConfig, apply_fresco, remove_fresco
from fresco_plugin.integrations.diffusers_z_image import _SpatialRope, z_image_rope_at
from fresco_plugin.layout import TokenGeometry, TokenLayout, pack, unpack
from fresco_plugin.tools.tiny import tiny_z_image_pipeline


def test_the_rope_at_integer_positions_is_the_stock_table():
    rope = tiny_z_image_pipeline().transformer.rope_embedder
    ids = torch.stack(torch.meshgrid(torch.tensor([0, 33]), torch.arange(5), torch.arange(7), indexing="ij"),
                      dim=-1).reshape(-1, 3)
    assert torch.equal(z_image_rope_at(rope, ids.to(torch.float32)), rope(ids.to(torch.int32)))


@pytest.mark.parametrize("mode", ["center", "anchor"])
def test_the_device_table_is_the_formula_at_every_level_s_positions(mode):
    """A three-level layout of an 8x12 grid (a 4x sketch with tokens promoted twice), its positions counted on each
    level's grid as ``position_units`` "final" and "stage" do: the table gives the formula's values exactly."""
    rope = tiny_z_image_pipeline().transformer.rope_embedder
    geometry = TokenGeometry(4, 2, 8, 12)
    layout = TokenLayout.uniform(1, geometry, 2, torch.device("cpu"))
    for count in (2, 3):
        mask = torch.zeros(1, layout.num_tokens, dtype=torch.bool)
        mask[0, torch.randperm(layout.num_tokens, generator=torch.Generator().manual_seed(count))[:count]] = True
        layout = layout.promote(mask, count)[0]
    assert set(layout.level.flatten().tolist()) == {0, 1, 2}
    table = _SpatialRope(rope, 12, 2, torch.device("cpu"))
    for grid_level in (0, 1, 2):
        positions = layout.positions(grid_level, mode)[0]
        assert torch.equal(table(positions), z_image_rope_at(rope, positions)[:, rope.axes_dims[0] // 2:])


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
    positions = torch.stack([torch.zeros(60), rows.flatten(), cols.flatten()], dim=1)
    rope.armed = (z_image_rope_at(rope, positions)[:, rope.axes_dims[0] // 2:], 60, 64)
    out = transformer([strip.unsqueeze(2)[0]], t, caption, return_dict=False)[0][0]
    assert rope.armed is None  # one lookup only: the caption's is stock's
    assert torch.allclose(pack(out.squeeze(1)[None], 2), pack(grid.squeeze(1)[None], 2), atol=1e-5)
    remove_fresco(pipe)
    assert type(pipe.transformer.rope_embedder).__name__ == "RopeEmbedder"
