"""The procedural scene grammar and its prompt-adherence checker."""

import numpy as np
import pytest

from fresco_plugin.tools.scenes import RELATIONS, check_adherence, is_held_out, parse_prompt, render, sample_scene

OPPOSITE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}


def _scenes(count, held_out=False, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, held_out=held_out) for _ in range(count)]


@pytest.mark.parametrize("size", [64, 96, 128])
def test_the_checker_reads_every_true_render(size):
    for scene in _scenes(60, held_out=size == 96):
        check = check_adherence(render(scene, size), scene.prompt)
        assert check.passed(parse_prompt(scene.prompt)), (scene.prompt, check)


def test_the_checker_rejects_wrong_relations_colours_and_shapes():
    for scene in _scenes(40, seed=1):
        picture = render(scene, 128)
        spec = parse_prompt(scene.prompt)
        flipped = scene.prompt.replace(f" {spec.relation} ", f" {OPPOSITE[spec.relation]} ")
        assert not check_adherence(picture, flipped).passed(parse_prompt(flipped))
        a, b = scene.first, scene.second
        swapped_colors = scene.prompt.replace(f"a {a.color} {a.shape}", f"a {b.color} {a.shape}", 1)
        swapped_colors = swapped_colors.replace(f"a {b.color} {b.shape}", f"a {a.color} {b.shape}", 1) \
            if swapped_colors != scene.prompt else swapped_colors
        if a.shape != b.shape:  # same shapes: swapping colours is the same picture read the other way round
            assert not check_adherence(picture, swapped_colors).passed(parse_prompt(swapped_colors))
        other_shape = next(s for s in ("circle", "square", "triangle") if s != a.shape)
        wrong_shape = scene.prompt.replace(f"a {a.color} {a.shape}", f"a {a.color} {other_shape}", 1)
        assert not check_adherence(picture, wrong_shape).passed(parse_prompt(wrong_shape))


def test_a_blank_picture_passes_nothing():
    scene = _scenes(1)[0]
    check = check_adherence(np.full((128, 128, 3), 0.5, np.float32), scene.prompt)
    assert check.found == (False, False) and not check.relation_ok


def test_held_out_prompts_never_come_from_the_training_split():
    assert not any(is_held_out(s.prompt) for s in _scenes(200))
    assert all(is_held_out(s.prompt) for s in _scenes(50, held_out=True))
    for scene in _scenes(20, held_out=True, seed=3):  # the split is by objects and relation, whatever the background
        for background in ("plain", "striped", "checkered", "dotted"):
            assert is_held_out(scene.prompt.replace(f"on a {scene.background}", f"on a {background}"))


def test_prompts_outside_the_grammar_are_refused_with_the_grammar():
    with pytest.raises(ValueError, match="the grammar is 'a <colour> <shape> <relation>"):
        parse_prompt("a photo of a cat")
    with pytest.raises(ValueError, match="not a scene prompt"):
        parse_prompt("a red circle above a red square on a plain background")  # one colour per object
    assert {parse_prompt(s.prompt).relation for s in _scenes(100)} == set(RELATIONS)
