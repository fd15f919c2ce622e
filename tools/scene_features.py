"""The realism yardstick of ``fresco bench``: a small image encoder trained on true scene renders, and the kernel
inception distance (KID) between two picture sets in its feature space.

FID and KID measure realism as a distance between a method's pictures and true data on the features of a network
trained on the true data (Inception on ImageNet). The scenes model has its own true data, so it has its own network:
:class:`SceneFeatureEncoder` is trained by ``training/train_feature_encoder.py`` to read every fact of a scene (both
objects' colour, shape, centre and size, the relation's axis, the background and its texture) from its 128-pixel
render, and its penultimate layer is the feature space. It never sees a generated picture: artefacts a generator makes
(fragmented shapes, smeared textures, speckle) move pictures away from where true renders sit.

KID (Binkowski et al. 2018) is the unbiased squared MMD with the cubic polynomial kernel ``(x.y / d + 1)^3``; unlike
FID it has no bias that depends on the sample size, which matters at a few hundred pictures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .scenes import BACKGROUNDS, COLORS, SHAPES, Scene

__all__ = ["FEATURES_DIR", "SceneFeatureEncoder", "kid", "kid_bootstrap", "load_feature_encoder", "scene_targets"]

FEATURES_DIR = Path(str(resources.files("fresco_plugin.tools").joinpath("models/scenes-features")))
INPUT_SIZE = 128
# Classification heads: (name, number of classes); regression targets: both centres (x, y), both half sizes, and
# the texture period.
HEADS = (("color_1", len(COLORS)), ("shape_1", len(SHAPES)), ("color_2", len(COLORS)), ("shape_2", len(SHAPES)),
         ("axis", 2), ("background", len(BACKGROUNDS)))
REGRESSION = 7


class SceneFeatureEncoder(nn.Module):
    """A 5-stage strided CNN (128 -> 4 pixels) whose flattened 4x4 map (where things are) feeds a 256-wide
    feature layer, then one linear read-out of every scene fact."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 96, 128), features: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
                       nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU()]
            channels = width
        self.trunk = nn.Sequential(*layers)
        spatial = INPUT_SIZE >> len(widths)
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(channels * spatial * spatial, features), nn.SiLU())
        self.readout = nn.Linear(features, sum(n for _, n in HEADS) + REGRESSION)
        self.config = dict(widths=list(widths), features=features)

    def embed(self, pictures: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` pictures in [0, 1] (resized to 128 if needed) -> ``(B, features)``."""
        if pictures.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            pictures = nn.functional.interpolate(pictures, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                                                 antialias=True, align_corners=False)
        return self.features(self.trunk(pictures * 2 - 1))

    def forward(self, pictures: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        out = self.readout(self.embed(pictures))
        logits, start = {}, 0
        for name, classes in HEADS:
            logits[name] = out[:, start:start + classes]
            start += classes
        return logits, out[:, start:]

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")


def scene_targets(scenes: Sequence[Scene]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """What the encoder learns to read from each scene's render. A picture shows "a above b" and "b below a" alike,
    so the objects are taken in reading order (the upper or the left one first) and the relation as its axis:
    every target is then a function of the picture."""
    colors, shapes, backgrounds = list(COLORS), list(SHAPES), list(BACKGROUNDS)
    ordered = [(s.second, s.first) if s.relation in ("below", "right of") else (s.first, s.second) for s in scenes]
    labels = {
        "color_1": [colors.index(a.color) for a, _ in ordered],
        "shape_1": [shapes.index(a.shape) for a, _ in ordered],
        "color_2": [colors.index(b.color) for _, b in ordered],
        "shape_2": [shapes.index(b.shape) for _, b in ordered],
        "axis": [int(s.relation in ("left of", "right of")) for s in scenes],
        "background": [backgrounds.index(s.background) for s in scenes],
    }
    values = [[*a.center, *b.center, a.half_size * 4, b.half_size * 4, s.texture_period * 10]
              for (a, b), s in zip(ordered, scenes)]
    return {k: torch.tensor(v) for k, v in labels.items()}, torch.tensor(values, dtype=torch.float32)


def load_feature_encoder(folder: Path = FEATURES_DIR) -> SceneFeatureEncoder:
    from safetensors.torch import load_file

    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the realism encoder is missing from {folder}; reinstall the package, or train it again with "
            "`python training/train_feature_encoder.py` (a few minutes on 2 CPU cores)"
        )
    encoder = SceneFeatureEncoder(**json.loads((folder / "config.json").read_text()))
    encoder.load_state_dict(load_file(str(folder / "model.safetensors")))
    return encoder.eval().requires_grad_(False)


@torch.no_grad()
def embed_pictures(encoder: SceneFeatureEncoder, pictures: Sequence[np.ndarray], batch: int = 64) -> np.ndarray:
    """Features of ``(H, W, 3)`` pictures in [0, 1], as float64 for the kernel sums."""
    out = []
    for start in range(0, len(pictures), batch):
        chunk = torch.from_numpy(np.stack(pictures[start:start + batch]).astype(np.float32)).permute(0, 3, 1, 2)
        out.append(encoder.embed(chunk).double().numpy())
    return np.concatenate(out)


def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid(features: np.ndarray, reference: np.ndarray, index: np.ndarray | None = None) -> float:
    """Unbiased squared MMD (x 1e3) between two feature sets of the same prompts. With ``index`` (a bootstrap
    resample of prompt positions, repeats allowed) only pairs of *different* draws enter the off-diagonal sums, so
    the estimate stays unbiased on the resample."""
    if index is None:
        index = np.arange(len(features))
    x, y = features[index], reference[index]
    distinct = index[:, None] != index[None, :]
    pairs = distinct.sum()
    if pairs == 0:  # a resample of one prompt drawn repeatedly: no pair of different draws, no estimate
        return math.nan
    kxx, kyy, kxy = _kernel(x, x), _kernel(y, y), _kernel(x, y)
    # cross terms pair a picture with the true render of another prompt's draw only, as within-set terms do
    return float((kxx[distinct].sum() + kyy[distinct].sum() - 2 * kxy[distinct].sum()) / pairs * 1e3)


def kid_bootstrap(features: np.ndarray, reference: np.ndarray, resamples: np.ndarray) -> np.ndarray:
    """KID on each row of ``resamples`` (``(R, n)`` prompt positions): the spread gives the confidence interval, and
    the same rows used for two methods give a paired difference."""
    return np.array([kid(features, reference, row) for row in resamples])
