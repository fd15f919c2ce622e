import pytest
import torch

from fresco_plugin.layout import TokenGeometry, TokenLayout, pack
from fresco_plugin.noise import FreshNoise, NoiseField, hash_normal, seeds_from_generators

MASK = (1 << 64) - 1


def _splitmix_reference(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _normal_reference(seed: int, *coordinates: int) -> float:
    import math

    key = _splitmix_reference(seed)
    for c in coordinates:
        key = _splitmix_reference(key ^ c)
    first = _splitmix_reference(key)
    second = _splitmix_reference(key ^ 0xD1B54A32D192ED03)
    u1 = ((first >> 11) + 1) * 2.0**-53
    u2 = (second >> 11) * 2.0**-53
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


def test_hash_matches_unsigned_64_bit_reference():
    # large seeds and coordinates exercise the wrap-around multiply and the logical shifts
    for seed, coords in [(0, (0, 0, 0)), (2**61 + 12345, (17, 3, 9)), (987654321, (4095, 4095, 63))]:
        got = hash_normal(seed, *(torch.tensor(c) for c in coords)).item()
        assert got == pytest.approx(_normal_reference(seed, *coords), abs=1e-12)


def _field(seed=7, channels=16, rows=128, cols=128):
    return NoiseField.from_hash([seed], channels, rows, cols, dtype=torch.float64)


def test_field_is_standard_normal_and_white():
    x = _field().level(0)[0]  # (C, H, W): 262k values
    assert abs(x.mean().item()) < 0.01
    assert abs(x.var().item() - 1.0) < 0.01
    corr = lambda a, b: torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()  # noqa: E731
    assert abs(corr(x[:, 1:], x[:, :-1])) < 0.01  # neighbouring rows
    assert abs(corr(x[:, :, 1:], x[:, :, :-1])) < 0.01  # neighbouring cols
    assert abs(corr(x[1:], x[:-1])) < 0.01  # neighbouring channels
    # a normal's fourth moment is 3: catches a uniform or clipped generator that mean/var alone would miss
    assert abs((x**4).mean().item() - 3.0) < 0.05


def test_coarse_levels_are_haar_pooled_unit_variance_and_nested():
    field = _field()
    level1, level2 = field.level(1), field.level(2)
    fine = field.level(0)
    assert torch.allclose(level1, fine.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2)) / 2)
    assert torch.allclose(level2, level1.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2)) / 2)
    for level in (level1, level2):
        assert abs(level.var().item() - 1.0) < 0.03
        assert abs(level.mean().item()) < 0.03


def test_token_lookup_reads_each_token_at_its_own_coordinates():
    geometry = TokenGeometry(channels=4, patch=2, rows=8, cols=8)
    field = NoiseField.from_hash([3, 4], 4, 16, 16)
    layout = TokenLayout.uniform(2, geometry, 1, torch.device("cpu"))
    assert torch.equal(field.tokens(layout, geometry), pack(field.level(1), 2))
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, [0, 5]] = True
    mixed, kept, promoted = layout.promote(mask)
    tokens = field.tokens(mixed, geometry)
    full = pack(field.level(0), 2)
    child = mixed.row[0, -1] * 8 + mixed.col[0, -1]
    assert torch.equal(tokens[0, -1], full[0, child])  # a child reads the full-resolution field
    assert torch.equal(tokens[:, :14], pack(field.level(1), 2)[:, kept[0]])  # kept tokens read their coarse value


def test_field_values_do_not_depend_on_batch_position():
    pair = NoiseField.from_hash([11, 22], 4, 8, 8).level(0)
    alone = NoiseField.from_hash([22], 4, 8, 8).level(0)
    assert torch.equal(pair[1], alone[0])
    moved = NoiseField.from_hash([22], 4, 8, 8, dtype=torch.bfloat16).level(0)
    assert torch.equal(moved[0], alone[0].to(torch.bfloat16))


def test_seeds_follow_the_generators():
    a = seeds_from_generators(torch.Generator().manual_seed(1), 2)
    b = seeds_from_generators(torch.Generator().manual_seed(1), 2)
    c = seeds_from_generators([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], 2)
    assert a == b and a[0] != a[1]
    assert c[0] == a[0] and c[1] != a[1]
    with pytest.raises(ValueError, match="one generator per image"):
        seeds_from_generators([torch.Generator()], 2)


def test_fresh_noise_is_per_image():
    both = FreshNoise([1, 2]).sample((3, 4), dtype=torch.float32, device=torch.device("cpu"))
    second = FreshNoise([2]).sample((3, 4), dtype=torch.float32, device=torch.device("cpu"))
    assert torch.equal(both[1], second[0])
    assert not torch.equal(both[0], both[1])
