"""The procedural clips and their checker: true clips pass, clips that break the prompt fail."""

import numpy as np
import pytest

from fresco_plugin.tools.video_scenes import (
    DIRECTIONS,
    check_clip,
    clip_for_prompt,
    is_held_out_clip,
    parse_clip_prompt,
    render_clip,
    sample_clip,
)

PROMPT = "a red circle moving right on a striped background"


@pytest.mark.parametrize("size", [64, 32])
def test_the_checker_passes_every_true_clip(size):
    rng = np.random.default_rng(0)
    clips = [sample_clip(rng, held_out=None) for _ in range(150)]
    failed = [c.prompt for c in clips if not check_clip(render_clip(c, 9, size), c.prompt).passed]
    assert not failed


@pytest.mark.parametrize("wrong", ["a red circle moving left on a striped background",
                                   "a red circle moving up on a striped background",
                                   "a blue circle moving right on a striped background",
                                   "a red square moving right on a striped background"])
def test_the_checker_fails_a_clip_that_breaks_the_prompt(wrong):
    frames = render_clip(clip_for_prompt(PROMPT, np.random.default_rng(1)), 9, 64)
    assert check_clip(frames, PROMPT).passed and not check_clip(frames, wrong).passed


def test_a_still_object_is_not_motion_and_grey_frames_hold_no_object():
    frames = render_clip(clip_for_prompt(PROMPT, np.random.default_rng(2)), 9, 64)
    assert check_clip(frames, PROMPT).found == 1.0
    assert not check_clip(np.repeat(frames[:1], 9, axis=0), PROMPT).motion_ok
    assert not check_clip(np.full_like(frames, 0.5), PROMPT).object_ok
    assert check_clip((frames * 255).round().astype(np.uint8), PROMPT).passed  # decoded uint8 frames read alike


def test_the_background_stays_and_the_object_moves_along_its_direction():
    rng = np.random.default_rng(3)
    for direction, (dx, dy) in DIRECTIONS.items():
        clip = clip_for_prompt(f"a green triangle moving {direction} on a checkered background", rng)
        frames = render_clip(clip, 9, 64)
        moving = np.abs(np.diff(frames, axis=0)).max(axis=(0, 3)) > 0
        assert 0 < moving.mean() < 0.6  # the path's pixels change, the rest of the background does not
        read = check_clip(frames, clip.prompt)
        assert read.passed and read.travel[0] == pytest.approx(
            np.dot(np.subtract(clip.end, clip.start), (dx, dy)), abs=0.05)


def test_prompts_parse_back_and_a_fixed_eighth_of_combinations_is_held_out():
    spec = parse_clip_prompt(PROMPT)
    assert (spec.color, spec.shape, spec.direction, spec.background) == ("red", "circle", "right", "striped")
    assert spec.prompt == PROMPT
    with pytest.raises(ValueError, match="a <colour> <shape> moving <direction>"):
        parse_clip_prompt("a red circle above a blue square on a striped background")
    rng = np.random.default_rng(4)
    held = [is_held_out_clip(sample_clip(rng, held_out=None).prompt) for _ in range(2000)]
    assert 0.06 < np.mean(held) < 0.2
    assert all(is_held_out_clip(sample_clip(rng, held_out=True).prompt) for _ in range(20))
    assert not any(is_held_out_clip(sample_clip(rng, held_out=False).prompt) for _ in range(20))
    # the split depends on the object and its motion, not the background
    assert len({is_held_out_clip(f"a red circle moving right on a {b} background")
                for b in ("plain", "striped", "checkered", "dotted")}) == 1
