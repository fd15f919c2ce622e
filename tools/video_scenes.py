"""Procedural captioned clips: a shipped video model's training data and its adherence checker.

A clip is one flat-coloured shape moving in a stated direction over a still, textured background, for example
"a red circle moving right on a striped background". Where the object is in each frame (its path) is the global
structure a low-resolution stage must get right, the background texture the fine detail; the frames must also agree
with each other, which a sampler that promotes tokens at different steps in neighbouring frames could break.

The checker reads a clip back frame by frame with the still-picture checker's colour and shape reading
(:mod:`fresco_plugin.tools.scenes`): the object must be found in its colour on most frames, read as its shape on most
of those, and its centre must travel along the stated direction by a clear margin, more than across it.
Numpy only, like the picture checker.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .scenes import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SceneObject,
    _color_mask,
    _hsv,
    _read_object,
    draw_object,
    render_background,
)

__all__ = ["DIRECTIONS", "Clip", "ClipCheck", "ClipSpec", "check_clip", "clip_for_prompt", "is_held_out_clip",
           "parse_clip_prompt", "render_clip", "sample_clip"]

DIRECTIONS: dict[str, tuple[float, float]] = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "down": (0.0, 1.0),
                                              "up": (0.0, -1.0)}  # unit (x, y) steps, y down

# The path: the centre travels _TRAVEL (a fraction of the picture) along the direction, centred on the middle, with a
# small constant offset across it. The checker asks for _MIN_TRAVEL of that, well inside, so generated clips need not
# be exact.
_TRAVEL = (0.34, 0.46)
_CROSS = 0.12
_HALF_SIZE = (0.13, 0.17)
_MIN_TRAVEL = 0.15
_MIN_FOUND = 2 / 3  # of the frames: the object's colour must be there on at least this share


@dataclass(frozen=True)
class ClipSpec:
    color: str
    shape: str
    direction: str
    background: str

    @property
    def prompt(self) -> str:
        return f"a {self.color} {self.shape} moving {self.direction} on a {self.background} background"


@dataclass(frozen=True)
class Clip:
    spec: ClipSpec
    start: tuple[float, float]  # the object's centre in the first frame, (x, y) fractions of the picture
    end: tuple[float, float]  # ... and in the last
    half_size: float
    background_rgb: tuple[float, float, float]
    texture_period: float
    texture_vertical: bool

    @property
    def prompt(self) -> str:
        return self.spec.prompt

    def center(self, frame: int, frames: int) -> tuple[float, float]:
        t = frame / max(frames - 1, 1)
        return (self.start[0] + t * (self.end[0] - self.start[0]), self.start[1] + t * (self.end[1] - self.start[1]))


def parse_clip_prompt(prompt: str) -> ClipSpec:
    """Reads a clip prompt back; raises ValueError naming the grammar for anything else."""
    words = prompt.strip().lower().split()
    try:
        assert len(words) == 9 and words[0] == "a" and words[3] == "moving" and words[5:7] == ["on", "a"]
        assert words[8] == "background"
        spec = ClipSpec(words[1], words[2], words[4], words[7])
        assert spec.color in COLORS and spec.shape in SHAPES and spec.direction in DIRECTIONS
        assert spec.background in BACKGROUNDS
    except AssertionError:
        raise ValueError(
            f"not a clip prompt: {prompt!r}; the grammar is 'a <colour> <shape> moving <direction> on a <background> "
            f"background' with colours {sorted(COLORS)}, shapes {list(SHAPES)}, directions {list(DIRECTIONS)}, "
            f"backgrounds {list(BACKGROUNDS)}"
        ) from None
    return spec


def is_held_out_clip(prompt: str) -> bool:
    """About one (colour, shape, direction) combination in eight never appears in training, whatever the
    background, so held-out prompts test composition, not memory."""
    spec = parse_clip_prompt(prompt)
    return zlib.crc32(f"{spec.color} {spec.shape} {spec.direction}".encode()) % 8 == 0


def sample_clip(rng: np.random.Generator, held_out: bool | None = False) -> Clip:
    """A random clip from the training split (``held_out=True``: the held-out split; ``None``: either)."""
    while True:
        spec = ClipSpec(str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)), str(rng.choice(list(DIRECTIONS))),
                        str(rng.choice(BACKGROUNDS)))
        if held_out is None or is_held_out_clip(spec.prompt) == held_out:
            return _draw_clip(rng, spec)


def clip_for_prompt(prompt: str | ClipSpec, rng: np.random.Generator) -> Clip:
    """A random true clip of ``prompt``: path, size, background tone and texture drawn as in training."""
    return _draw_clip(rng, parse_clip_prompt(prompt) if isinstance(prompt, str) else prompt)


def _draw_clip(rng: np.random.Generator, spec: ClipSpec) -> Clip:
    dx, dy = DIRECTIONS[spec.direction]
    travel = rng.uniform(*_TRAVEL)
    middle = 0.5 + rng.uniform(-0.05, 0.05)
    across = 0.5 + rng.uniform(-_CROSS, _CROSS)
    if dx:
        start, end = (middle - dx * travel / 2, across), (middle + dx * travel / 2, across)
    else:
        start, end = (across, middle - dy * travel / 2), (across, middle + dy * travel / 2)
    gray = rng.uniform(0.3, 0.7)
    tint = rng.uniform(-0.06, 0.06, size=3)
    return Clip(spec, tuple(float(v) for v in start), tuple(float(v) for v in end), float(rng.uniform(*_HALF_SIZE)),
                tuple(float(v) for v in np.clip(gray + tint, 0, 1)), float(rng.uniform(0.06, 0.1)),
                bool(rng.integers(2)))


def render_clip(clip: Clip, frames: int, size: int) -> np.ndarray:
    """The clip as RGB float32 frames ``(frames, size, size, 3)`` in [0, 1]: one still background, the object drawn
    at its place on the path in each frame."""
    background = render_background(clip.spec.background, clip.background_rgb, clip.texture_period,
                                   clip.texture_vertical, size)
    out = []
    for frame in range(frames):
        obj = SceneObject(clip.spec.color, clip.spec.shape, clip.center(frame, frames), clip.half_size)
        out.append(draw_object(background, obj).astype(np.float32))
    return np.stack(out)


@dataclass(frozen=True)
class ClipCheck:
    """What the checker read from one clip for one prompt."""

    found: float  # share of frames where the object's colour covers enough of the picture
    shape: str | None  # the shape read on most of those frames
    travel: tuple[float, float]  # (along the stated direction, across it), first to last found frame
    spec: ClipSpec

    @property
    def object_ok(self) -> bool:
        return self.found >= _MIN_FOUND

    @property
    def shape_ok(self) -> bool:
        return self.shape == self.spec.shape

    @property
    def motion_ok(self) -> bool:
        along, across = self.travel
        return along >= _MIN_TRAVEL and abs(across) < along

    @property
    def passed(self) -> bool:
        return self.object_ok and self.shape_ok and self.motion_ok


def check_clip(frames: np.ndarray, prompt: str | ClipSpec) -> ClipCheck:
    """Reads ``(F, H, W, 3)`` RGB frames in [0, 1] (or uint8) for a clip prompt: is the object there in its colour and
    shape, and does it move the stated way?"""
    spec = parse_clip_prompt(prompt) if isinstance(prompt, str) else prompt
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        frames = frames.astype(np.float32) / 255.0
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 2:
        raise ValueError(f"check_clip needs (frames >= 2, H, W, 3) RGB frames, got shape {frames.shape}")
    reads = []
    for frame in frames.astype(np.float32):
        hue, saturation, value = _hsv(frame)
        reads.append(_read_object(_color_mask(hue, saturation, value, spec.color)))
    found = [r for r in reads if r[0]]
    shapes = [r[1] for r in found]
    shape = max(set(shapes), key=shapes.count) if shapes else None
    travel = (0.0, 0.0)
    if len(found) >= 2:
        (x0, y0), (x1, y1) = found[0][2], found[-1][2]
        dx, dy = DIRECTIONS[spec.direction]
        travel = ((x1 - x0) * dx + (y1 - y0) * dy, (x1 - x0) * dy - (y1 - y0) * dx)
    return ClipCheck(len(found) / len(reads), shape, (float(travel[0]), float(travel[1])), spec)

