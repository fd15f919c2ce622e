"""Procedural captioned scenes: the shipped demo model's training data and its prompt-adherence checker.

A scene is two flat-coloured shapes in a stated relation over a textured, desaturated background, e.g.
"a red circle above a blue square on a striped background". The layout (where the shapes are) is global structure,
the background texture is fine detail; both matter to a sampler that starts at low resolution.

The same grammar reads a picture back: object colours are six evenly spaced saturated hues, backgrounds stay below a
saturation the objects never reach, so a pixel's hue says which object it belongs to; a shape is told by how much of
its bounding box it fills and by its top/bottom balance, and a relation by the two bounding-box centres.
Numpy only (no torch, no diffusers): the checker must work on any decoded picture.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BACKGROUNDS", "COLORS", "RELATIONS", "SHAPES", "AdherenceCheck", "Scene", "SceneObject", "check_adherence",
    "color_mask", "draw_object", "is_held_out", "parse_prompt", "render", "render_background", "sample_scene",
    "scene_for_prompt", "signed_distance",
]

COLORS: dict[str, float] = {"red": 0.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0, "blue": 240.0,
                            "magenta": 300.0}  # hue in degrees
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("above", "below", "left of", "right of")
BACKGROUNDS = ("plain", "striped", "checkered", "dotted")

# Placement: the related objects' centres are at least this far apart along the relation's axis, and at most
# _CROSS_JITTER apart across it, so the checker's relation margin (about a third of the gap) leaves no ambiguous
# pictures.
_MIN_GAP = 0.36
_CROSS_JITTER = 0.12
_HALF_SIZE = (0.14, 0.19)  # half the side of a shape's bounding box, as a fraction of the picture
# Checker thresholds (fractions of the picture / of a bounding box); see check_adherence.
_MIN_OBJECT_AREA = 0.008
_SQUARE_FILL = 0.9  # a square fills its box (1.0), a circle pi/4, a triangle 1/2
_TRIANGLE_BALANCE = 0.6  # area above the box's middle over area below: a triangle 1/3, circle and square 1
_RELATION_MARGIN = 0.13  # well inside the placement gap, so generated pictures need not be exact


@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    center: tuple[float, float]  # (x, y) in [0, 1], y down
    half_size: float


@dataclass(frozen=True)
class Scene:
    first: SceneObject
    relation: str
    second: SceneObject
    background: str
    background_rgb: tuple[float, float, float]
    texture_period: float  # fraction of the picture
    texture_vertical: bool

    @property
    def prompt(self) -> str:
        a, b = self.first, self.second
        return f"a {a.color} {a.shape} {self.relation} a {b.color} {b.shape} on a {self.background} background"


@dataclass(frozen=True)
class PromptSpec:
    first: tuple[str, str]  # (colour, shape)
    relation: str
    second: tuple[str, str]
    background: str


def parse_prompt(prompt: str) -> PromptSpec:
    """Reads a prompt of the grammar back; raises ValueError naming the grammar for anything else."""
    words = prompt.strip().lower().split()
    try:
        on = words.index("on")
        assert words[0] == "a" and words[on:on + 2] == ["on", "a"] and words[-1] == "background"
        background = " ".join(words[on + 2:-1])
        body = words[:on]
        relation = next(r for r in RELATIONS if " ".join(body[3:3 + len(r.split())]) == r)
        rest = body[3 + len(relation.split()):]
        assert rest[0] == "a" and len(rest) == 3
        spec = PromptSpec((body[1], body[2]), relation, (rest[1], rest[2]), background)
        assert {spec.first[0], spec.second[0]} <= COLORS.keys() and spec.first[0] != spec.second[0]
        assert {spec.first[1], spec.second[1]} <= set(SHAPES) and background in BACKGROUNDS
    except (AssertionError, IndexError, StopIteration, ValueError):
        raise ValueError(
            f"not a scene prompt: {prompt!r}; the grammar is 'a <colour> <shape> <relation> a <other colour> <shape> "
            f"on a <background> background' with colours {sorted(COLORS)}, shapes {list(SHAPES)}, relations "
            f"{list(RELATIONS)}, backgrounds {list(BACKGROUNDS)}"
        ) from None
    return spec


def is_held_out(prompt: str) -> bool:
    """About one object combination in eight never appears in training (decided by a fixed hash of the objects and
    relation, whatever the background), so held-out prompts test composition, not memory."""
    spec = parse_prompt(prompt)
    key = f"{spec.first} {spec.relation} {spec.second}".encode()
    return zlib.crc32(key) % 8 == 0


def sample_scene(rng: np.random.Generator, held_out: bool | None = False) -> Scene:
    """A random scene from the training split (with ``held_out=True`` the held-out split, with ``None`` either)."""
    while True:
        scene = _draw_scene(rng)
        if held_out is None or is_held_out(scene.prompt) == held_out:
            return scene


def scene_for_prompt(prompt: str | PromptSpec, rng: np.random.Generator) -> Scene:
    """A random true picture of ``prompt``: placement, sizes, background tone and texture drawn as in training."""
    return _draw_scene(rng, parse_prompt(prompt) if isinstance(prompt, str) else prompt)


def _draw_scene(rng: np.random.Generator, spec: PromptSpec | None = None) -> Scene:
    if spec is None:
        colors = rng.choice(list(COLORS), size=2, replace=False)
        shapes = rng.choice(SHAPES, size=2)
        relation = str(rng.choice(RELATIONS))
    else:
        colors, shapes, relation = (spec.first[0], spec.second[0]), (spec.first[1], spec.second[1]), spec.relation
    sizes = rng.uniform(*_HALF_SIZE, size=2)
    # Along the relation's axis: the first object on its side of the middle, the second on the other.
    margin = sizes.max() + 0.04
    along_first = rng.uniform(margin, 0.5 - _MIN_GAP / 2)
    along_second = rng.uniform(0.5 + _MIN_GAP / 2, 1 - margin)
    across_first = rng.uniform(0.35, 0.65)
    across_second = float(np.clip(across_first + rng.uniform(-_CROSS_JITTER, _CROSS_JITTER), 0.25, 0.75))
    if relation in ("below", "right of"):
        along_first, along_second = 1 - along_first, 1 - along_second
    if relation in ("above", "below"):
        centers = ((across_first, along_first), (across_second, along_second))
    else:
        centers = ((along_first, across_first), (along_second, across_second))
    objects = [SceneObject(str(c), str(s), (float(x), float(y)), float(h))
               for c, s, (x, y), h in zip(colors, shapes, centers, sizes)]
    gray = rng.uniform(0.3, 0.7)
    tint = rng.uniform(-0.06, 0.06, size=3)
    background = str(rng.choice(BACKGROUNDS)) if spec is None else spec.background
    return Scene(objects[0], relation, objects[1], background,
                 tuple(float(v) for v in np.clip(gray + tint, 0, 1)), float(rng.uniform(0.06, 0.1)),
                 bool(rng.integers(2)))


def _hue_to_rgb(hue: float, value: float = 0.92) -> np.ndarray:
    h = hue / 60.0
    x = 1 - abs(h % 2 - 1)
    sector = int(h) % 6
    rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][sector]
    return np.asarray(rgb, dtype=np.float32) * value


def signed_distance(obj: SceneObject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance from ``(x, y)`` (fractions of the picture) to the object's outline: negative inside."""
    cx, cy = obj.center
    r = obj.half_size
    dx, dy = x - cx, y - cy
    if obj.shape == "circle":
        return np.hypot(dx, dy) - r
    if obj.shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - r
    # Upright isosceles triangle in the box [cx-r, cx+r] x [cy-r, cy+r]: apex at the top middle.
    side = (np.abs(dx) * 2 - (dy + r)) / np.hypot(2.0, 1.0)
    return np.maximum(side, dy - r)


def render(scene: Scene, size: int) -> np.ndarray:
    """The scene as an RGB float32 picture of shape (size, size, 3) in [0, 1], anti-aliased."""
    image = render_background(scene.background, scene.background_rgb, scene.texture_period, scene.texture_vertical,
                              size)
    for obj in (scene.first, scene.second):
        image = draw_object(image, obj)
    return image.astype(np.float32)


def render_background(background: str, rgb: tuple[float, float, float], period: float, vertical: bool,
                      size: int) -> np.ndarray:
    """A background of the grammar: a tone plus its texture at ``period`` (a fraction of the picture)."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(coords, coords)
    base = np.asarray(rgb, dtype=np.float32)
    u = x if vertical else y
    if background == "striped":
        pattern = np.where((u / period) % 1 < 0.5, 1.0, -1.0)
    elif background == "checkered":
        pattern = np.where(((x // period) + (y // period)) % 2 == 0, 1.0, -1.0)
    elif background == "dotted":
        cell_x, cell_y = (x / period) % 1 - 0.5, (y / period) % 1 - 0.5
        pattern = np.where(np.hypot(cell_x, cell_y) < 0.25, 1.0, 0.0)
    else:
        pattern = np.zeros_like(x)
    return np.clip(base + 0.13 * pattern[..., None].astype(np.float32), 0, 1).astype(np.float32)


def draw_object(image: np.ndarray, obj: SceneObject) -> np.ndarray:
    """``image`` with ``obj`` drawn over it, anti-aliased (a triangle's edge is computed in float64: cast the finished
    picture)."""
    size = image.shape[0]
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(coords, coords)
    alpha = np.clip(0.5 - signed_distance(obj, x, y) * size, 0, 1)[..., None]
    return image * (1 - alpha) + _hue_to_rgb(COLORS[obj.color]) * alpha


@dataclass(frozen=True)
class AdherenceCheck:
    """What the checker read from one picture for one prompt."""

    found: tuple[bool, bool]  # each object's colour covers enough of the picture
    shapes: tuple[str | None, str | None]  # the shape read for each object's colour
    relation_ok: bool

    @property
    def objects_ok(self) -> tuple[bool, bool]:
        return self.found

    def shapes_ok(self, spec: PromptSpec) -> tuple[bool, bool]:
        return (self.shapes[0] == spec.first[1], self.shapes[1] == spec.second[1])

    def passed(self, spec: PromptSpec) -> bool:
        return all(self.found) and all(self.shapes_ok(spec)) and self.relation_ok


def _hsv(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    maximum, minimum = image.max(-1), image.min(-1)
    chroma = maximum - minimum
    saturation = np.where(maximum > 0, chroma / np.maximum(maximum, 1e-8), 0)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    safe = np.maximum(chroma, 1e-8)
    hue = np.where(maximum == r, ((g - b) / safe) % 6, np.where(maximum == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return hue * 60.0, saturation, maximum


def _color_mask(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray, color: str) -> np.ndarray:
    distance = np.abs((hue - COLORS[color] + 180) % 360 - 180)
    return (saturation > 0.45) & (value > 0.35) & (distance < 30)


def color_mask(image: np.ndarray, color: str) -> np.ndarray:
    """The pixels of an RGB picture in [0, 1] that the checker reads as ``color``."""
    return _color_mask(*_hsv(image), color)


def _read_object(mask: np.ndarray) -> tuple[bool, str | None, tuple[float, float]]:
    size = mask.shape[0]
    area = mask.mean()
    if area < _MIN_OBJECT_AREA:
        return False, None, (np.nan, np.nan)
    rows, cols = np.nonzero(mask)
    # The box spans the rows and columns holding at least two mask pixels: stray single pixels (a generated
    # picture's speckle) do not stretch it, and a shape's own thin extremes still count.
    solid_rows = np.nonzero(mask.sum(1) >= 2)[0]
    solid_cols = np.nonzero(mask.sum(0) >= 2)[0]
    if len(solid_rows) == 0 or len(solid_cols) == 0:
        return False, None, (np.nan, np.nan)
    top, bottom = solid_rows[0], solid_rows[-1]
    left, right = solid_cols[0], solid_cols[-1]
    box = max(bottom - top + 1, 1) * max(right - left + 1, 1)
    fill = mask.sum() / box
    middle = (top + bottom) / 2
    balance = (rows < middle).sum() / max((rows >= middle).sum(), 1)
    if balance < _TRIANGLE_BALANCE:
        shape = "triangle"
    elif fill >= _SQUARE_FILL:
        shape = "square"
    else:
        shape = "circle"
    return True, shape, ((left + right + 1) / 2 / size, (top + bottom + 1) / 2 / size)


def check_adherence(image: np.ndarray, prompt: str | PromptSpec) -> AdherenceCheck:
    """Reads a (H, W, 3) RGB picture in [0, 1] (or uint8) for a scene prompt: is each object there in its colour and
    shape, and do the two stand in the stated relation?"""
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"check_adherence needs an (H, W, 3) RGB picture, got shape {image.shape}")
    hue, saturation, value = _hsv(image.astype(np.float32))
    reads = [_read_object(_color_mask(hue, saturation, value, color)) for color, _ in (spec.first, spec.second)]
    (found_a, shape_a, (xa, ya)), (found_b, shape_b, (xb, yb)) = reads
    relation_ok = False
    if found_a and found_b:
        relation_ok = {
            "above": yb - ya > _RELATION_MARGIN, "below": ya - yb > _RELATION_MARGIN,
            "left of": xb - xa > _RELATION_MARGIN, "right of": xa - xb > _RELATION_MARGIN,
        }[spec.relation]
    return AdherenceCheck((found_a, found_b), (shape_a, shape_b), bool(relation_ok))
