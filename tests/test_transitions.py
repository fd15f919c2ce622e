"""Re-noise identities on synthetic latents whose clean latent x0 and noise are known."""

import pytest
import torch

from fresco_plugin.layout import TokenGeometry, TokenLayout, pack, unpack
from fresco_plugin.noise import FreshNoise, NoiseField
from fresco_plugin.registry import get_strategy
from fresco_plugin.transitions import Transition, bilinear_children, expand_tokens

GEOMETRY = TokenGeometry(channels=16, patch=2, rows=64, cols=64)


def _setup(sigma: float, promote_every: int = 4, seed: int = 0):
    """A half-resolution state x = (1 - sigma) x0 + sigma * field with the exact velocity v = field - x0."""
    g = torch.Generator().manual_seed(seed)
    field = NoiseField.from_hash([seed + 1], GEOMETRY.channels, 128, 128)
    layout = TokenLayout.uniform(1, GEOMETRY, 1, torch.device("cpu"))
    eps = field.tokens(layout, GEOMETRY)
    x0 = torch.randn(eps.shape, generator=g) * 0.5 + 0.3
    x = (1 - sigma) * x0 + sigma * eps
    promote = torch.zeros(1, layout.num_tokens, dtype=torch.bool)
    promote[:, ::promote_every] = True
    return field, layout, x0, x, eps - x0, promote


def _run(strategy, expansion, sigma, restart, promote_every=4, fresh=True, **options):
    field, layout, x0, x, v, promote = _setup(sigma, promote_every)
    t = Transition(
        latents=x, velocity=v, sigma=torch.tensor(sigma), restart_sigma=torch.tensor(restart), layout=layout,
        promote=promote, geometry=GEOMETRY, field=field, fresh=FreshNoise([9]) if fresh else None,
        expansion=expansion,
    )
    out, new_layout, reached = get_strategy(strategy)(**options)(t)
    kept_count = int((~promote).sum())
    signal = torch.cat([x0[~promote].unsqueeze(0), expand_tokens(x0[promote].unsqueeze(0), GEOMETRY,
                                                                   "dct" if expansion == "dct" else "nearest")], 1)
    return out, new_layout, float(reached), signal, kept_count, field


@pytest.mark.parametrize("sigma,restart", [(0.6, 0.6), (0.6, 0.75), (0.3, 0.5)])
def test_fresco_hadamard_lands_exactly_on_the_restart_sigma(sigma, restart):
    out, layout, reached, signal, kept, field = _run("fresco", "hadamard", sigma, restart)
    assert reached == pytest.approx(restart)
    noise = field.tokens(layout, GEOMETRY)
    # every token, kept or new, is (1 - s') * its clean latent + s' * the field at its own coordinates
    assert torch.allclose(out, (1 - restart) * signal + restart * noise, atol=1e-5)
    assert layout.num_tokens == kept + 4 * (GEOMETRY.num_tokens // 4 // 4)


def test_hadamard_children_noise_is_white_unit_and_pools_to_the_parent_noise():
    out, layout, _, signal, kept, field = _run("fresco", "hadamard", 0.6, 0.7, promote_every=1)
    residual = (out - 0.3 * signal) / 0.7  # (B, 4k, D): the children's noise
    assert abs(residual.var().item() - 1.0) < 0.02
    children = residual[0].view(-1, 4, GEOMETRY.token_dim)
    corr = torch.corrcoef(torch.stack([children[:, 0].flatten(), children[:, 3].flatten()]))[0, 1]
    assert abs(corr.item()) < 0.02  # siblings are independent
    parents = field.tokens(TokenLayout.uniform(1, GEOMETRY, 1, torch.device("cpu")), GEOMETRY)[0]
    blocks = residual[0].view(-1, 2, 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(-1, 16, 4, 4)
    pooled = blocks.unfold(1 + 1, 2, 2).unfold(3, 2, 2).sum((-1, -2)) / 2  # Haar low-pass of each child block
    assert torch.allclose(pooled.reshape(-1, 16 * 4), parents, atol=1e-5)  # same noise, one level down


def test_nearest_expansion_copies_noise_into_siblings():
    """The interpolation ablation: copying the re-noised parent correlates its children's noise."""
    out, _, _, signal, kept, _ = _run("fresco", "nearest", 0.6, 0.6, promote_every=1)
    residual = (out - 0.4 * signal) / 0.6
    blocks = residual[0].view(-1, 2, 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(-1, 16, 4, 4)
    corr = torch.corrcoef(torch.stack([blocks[..., 0, 0].flatten(), blocks[..., 0, 1].flatten()]))[0, 1]
    assert corr.item() > 0.99


def test_dct_expansion_keeps_field_noise_and_interpolates_signal():
    out, layout, _, signal, _, field = _run("fresco", "dct", 0.5, 0.6)
    assert torch.allclose(out, 0.4 * signal + 0.6 * field.tokens(layout, GEOMETRY), atol=1e-5)


def _residual_stats(out, signal, target):
    residual = (out - (1 - target) * signal) / target
    return residual.mean().item(), residual.std().item()


def test_fresh_noise_is_consistent_in_variance_but_not_the_field():
    out, layout, reached, signal, kept, field = _run("fresh-noise", "hadamard", 0.5, 0.7)
    mean, std = _residual_stats(out, signal, reached)
    assert abs(mean) < 0.02 and abs(std - 1.0) < 0.02
    residual = (out - 0.3 * signal) / 0.7
    corr = torch.corrcoef(torch.stack([residual.flatten(), field.tokens(layout, GEOMETRY).flatten()]))[0, 1]
    assert corr.item() < 0.9  # kept tokens keep part of their own noise; new noise is independent


def test_dct_rewind_reaches_two_sigma_over_one_plus_sigma():
    sigma = 0.5
    out, _, reached, _, kept, _ = _run("dct-rewind", "hadamard", sigma, sigma, promote_every=1)
    assert reached == pytest.approx(2 * sigma / (1 + sigma))
    _, _, _, x0_dct, _, _ = _run("fresco", "dct", sigma, sigma, promote_every=1)
    mean, std = _residual_stats(out, x0_dct, reached)
    assert abs(mean) < 0.02 and abs(std - 1.0) < 0.03


def test_ralu_noise_is_white_after_the_copy():
    sigma, z = 0.6, 2.0
    out, _, reached, signal, _, _ = _run("ralu", "hadamard", sigma, sigma, promote_every=1, noise_ratio=z)
    e = 1 - sigma
    beta = 1 / (z * (1 - e) + e)
    assert reached == pytest.approx(1 - beta * e)
    residual = out - beta * (1 - sigma) * signal  # RALU copies the noisy parent, so the signal scales by beta
    blocks = residual[0].view(-1, 2, 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(-1, 16, 4, 4)
    corr = torch.corrcoef(torch.stack([blocks[..., 0, 0].flatten(), blocks[..., 0, 1].flatten()]))[0, 1]
    assert abs(corr.item()) < 0.03  # the correlated noise cancels the copy's correlation
    assert abs(residual.std().item() - reached) < 0.02


def test_ralu_rejects_a_noise_ratio_below_two():
    with pytest.raises(ValueError, match="Z >= 2"):
        get_strategy("ralu")(noise_ratio=1.5)


def test_expand_tokens_keeps_the_block_mean():
    tokens = torch.randn(2, 5, GEOMETRY.token_dim)
    for mode in ("nearest", "dct"):
        children = expand_tokens(tokens, GEOMETRY, mode).view(2, 5, 4, GEOMETRY.token_dim)
        assert torch.allclose(children.mean((2, 3)), tokens.mean(-1), atol=1e-5)


def _ramp_tokens(geometry: TokenGeometry, level: int) -> torch.Tensor:
    """A clean latent that is one plane over the full-resolution latent pixels, read at ``level``'s pixel centres."""
    rows, cols = geometry.grid(level)
    size = 1 << level
    y = (torch.arange(rows * geometry.patch) + 0.5) * size - 0.5  # pixel centres in full-resolution pixel units
    x = (torch.arange(cols * geometry.patch) + 0.5) * size - 0.5
    plane = 0.3 * y[:, None] - 0.2 * x[None, :] + torch.arange(geometry.channels)[:, None, None].float()
    return pack(plane.unsqueeze(0).contiguous(), geometry.patch)


def test_bilinear_expansion_keeps_the_field_and_the_parents_and_follows_a_plane():
    sigma, restart = 0.5, 0.7
    geometry = TokenGeometry(channels=4, patch=2, rows=8, cols=12)
    field = NoiseField.from_hash([3], geometry.channels, 16, 24)
    layout = TokenLayout.uniform(1, geometry, 1, torch.device("cpu"))
    x0, eps = _ramp_tokens(geometry, 1), field.tokens(layout, geometry)
    promote = torch.ones(1, layout.num_tokens, dtype=torch.bool)
    t = Transition(latents=(1 - sigma) * x0 + sigma * eps, velocity=eps - x0, sigma=torch.tensor(sigma),
                   restart_sigma=torch.tensor(restart), layout=layout, promote=promote, geometry=geometry,
                   field=field, fresh=None, expansion="bilinear")
    out, new_layout, reached = get_strategy("fresco")()(t)
    assert float(reached) == pytest.approx(restart)
    signal = (out - restart * field.tokens(new_layout, geometry)) / (1 - restart)  # the field noise, untouched
    fine = _ramp_tokens(geometry, 0)
    truth = fine.gather(1, (new_layout.row * geometry.cols + new_layout.col).unsqueeze(-1).expand(-1, -1, 16))
    inside = (new_layout.row > 0) & (new_layout.row < geometry.rows - 1) & \
             (new_layout.col > 0) & (new_layout.col < geometry.cols - 1)
    assert torch.allclose(signal[inside], truth[inside], atol=1e-4)  # a plane comes back exactly, not in steps
    # every 2x2 group of children averages to its parent, borders included
    order = new_layout.raster_order()
    picture = unpack(signal.gather(1, order.unsqueeze(-1).expand(-1, -1, 16)), geometry.rows, geometry.cols, 2)
    assert torch.allclose(pack(torch.nn.functional.avg_pool2d(picture, 2), 2), x0, atol=1e-4)


def test_bilinear_expansion_reads_already_promoted_neighbours():
    """After a round, the picture the rest expands from averages the finer tokens over the area they cover."""
    geometry = TokenGeometry(channels=2, patch=2, rows=8, cols=8)
    layout = TokenLayout.uniform(1, geometry, 1, torch.device("cpu"))
    first = torch.zeros(1, layout.num_tokens, dtype=torch.bool)
    first[:, ::3] = True
    mixed, _, _ = layout.promote(first)
    coarse, fine = _ramp_tokens(geometry, 1), _ramp_tokens(geometry, 0)
    at = lambda tokens, lay, cols: tokens.gather(  # noqa: E731
        1, (lay.row * cols + lay.col).unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    on_level1 = mixed.level == 1
    on_level1_grid = TokenLayout(mixed.level, mixed.frame, mixed.row.clamp(max=3), mixed.col.clamp(max=3))
    x0 = torch.where(on_level1.unsqueeze(-1), at(coarse, on_level1_grid, 4), at(fine, mixed, 8))
    rest, _, _ = mixed.promote(on_level1)
    children = TokenLayout(*(t[:, -4 * int(on_level1.sum()):] for t in (rest.level, rest.frame, rest.row, rest.col)))
    signal = bilinear_children(x0, mixed, children, geometry)
    inside = (children.row > 0) & (children.row < 7) & (children.col > 0) & (children.col < 7)
    assert torch.allclose(signal[inside], at(fine, children, 8)[inside], atol=1e-4)


def _haar_low(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, 4k, D)`` children in promotion order -> ``(B, k, D)``: each 2x2 group of latent pixels summed / 2."""
    b, n, _ = tokens.shape
    c, p = GEOMETRY.channels, GEOMETRY.patch
    children = tokens.view(b, n // 4, 2, 2, c, p, p).permute(0, 1, 4, 2, 5, 3, 6).reshape(b, n // 4, c, 2 * p, 2 * p)
    return children.view(b, n // 4, c, p, 2, p, 2).sum((4, 6)).reshape(b, n // 4, c * p * p) / 2


@pytest.mark.parametrize("expansion", ["hadamard", "nearest", "bilinear"])
def test_trajectory_renoise_equals_the_field_on_a_straight_path(expansion):
    field_out, layout, _, _, _, _ = _run("fresco", expansion, 0.5, 0.8)
    trajectory_out, same_layout, _, _, _, _ = _run("fresco", expansion, 0.5, 0.8, renoise="trajectory")
    assert torch.equal(layout.row, same_layout.row)
    assert torch.allclose(trajectory_out, field_out, atol=1e-5)


@pytest.mark.parametrize("restart", [0.6, 0.85])  # a round at the same sigma, and a stage switch that rewinds
def test_trajectory_renoise_follows_each_tokens_own_velocity(restart):
    """With a velocity that is not the straight path's, the new state lies on the line the velocity draws."""
    sigma = 0.6
    field, layout, x0, x, _, promote = _setup(sigma)
    velocity = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    t = Transition(latents=x, velocity=velocity, sigma=torch.tensor(sigma), restart_sigma=torch.tensor(restart),
                   layout=layout, promote=promote, geometry=GEOMETRY, field=field, fresh=None, expansion="hadamard")
    out, new_layout, reached = get_strategy("fresco")(renoise="trajectory")(t)
    kept = int((~promote).sum())
    assert torch.allclose(out[:, :kept], x[~promote].unsqueeze(0) + (restart - sigma) * velocity[~promote], atol=1e-5)
    predicted_x0, predicted_noise = x - sigma * velocity, x + (1 - sigma) * velocity
    children_noise = (out[:, kept:] - (1 - restart) * expand_tokens(predicted_x0[promote].unsqueeze(0), GEOMETRY,
                                                                    "nearest")) / restart
    assert torch.allclose(_haar_low(children_noise), predicted_noise[promote].unsqueeze(0), atol=1e-4)
    # the detail bands are still the field's
    field_detail = field.tokens(new_layout, GEOMETRY)[:, kept:]
    field_detail = field_detail - expand_tokens(_haar_low(field_detail) / 2, GEOMETRY, "nearest")
    assert torch.allclose(children_noise - expand_tokens(_haar_low(children_noise) / 2, GEOMETRY, "nearest"),
                          field_detail, atol=1e-4)
    assert float(reached) == pytest.approx(restart)


def test_fresco_renoise_must_be_named():
    with pytest.raises(ValueError, match="'field'.*'trajectory'"):
        get_strategy("fresco")(renoise="velocity")


def test_bilinear_expansion_keeps_video_frames_apart():
    """Video latents interpolate within each frame: a plane that moves from frame to frame comes back per frame."""
    geometry = TokenGeometry(channels=2, patch=2, rows=6, cols=8, frames=3)
    layout = TokenLayout.uniform(1, geometry, 1, torch.device("cpu"))
    still = TokenGeometry(channels=2, patch=2, rows=6, cols=8)
    coarse = torch.cat([_ramp_tokens(still, 1) + 10.0 * f for f in range(3)], dim=1)  # frame-major, as pack orders
    fine = torch.cat([_ramp_tokens(still, 0) + 10.0 * f for f in range(3)], dim=1)
    new, _, _ = layout.promote(torch.ones(1, layout.num_tokens, dtype=torch.bool))
    signal = bilinear_children(coarse, layout, new, geometry)
    place = (new.frame * geometry.rows + new.row) * geometry.cols + new.col
    truth = fine.gather(1, place.unsqueeze(-1).expand(-1, -1, fine.shape[-1]))
    inside = (new.row > 0) & (new.row < geometry.rows - 1) & (new.col > 0) & (new.col < geometry.cols - 1)
    assert torch.allclose(signal[inside], truth[inside], atol=1e-4)
