"""Texture realism for both benchmarks: the sliced Wasserstein distance between 7x7 pixel patches of a method's
samples (pictures or clips) and of the true ones, with prompt-resample intervals.

Every method's sample of one prompt is read at the same places along the same directions, so paired differences
between methods compare like with like; a prompt resample draws whole samples, as every other figure's does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PATCH", "PATCHES", "PROJECTIONS", "patch_projections", "patch_swd_resamples"]

PATCH, PATCHES, PROJECTIONS = 7, 8192, 128  # patch side; patches over all samples; random directions


def patch_projections(samples: Sequence[np.ndarray], count: int = PATCHES,
                      projections: int = PROJECTIONS) -> np.ndarray:
    """``(projections, samples, per sample)``: ``count / samples`` random 7x7 patches of each sample (a picture,
    ``(height, width, channels)``, or a clip's frames, ``(frames, height, width, channels)``), projected on
    ``projections`` random unit directions. Places and directions depend only on the sample's position in the list
    and its shape."""
    clips = [s[None] if s.ndim == 3 else s for s in samples]
    frames, height, width, channels = clips[0].shape
    per_sample = -(-count // len(clips))
    directions = np.random.default_rng(0).standard_normal((PATCH * PATCH * channels, projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    offsets = np.arange(PATCH)
    out = []
    for i, clip in enumerate(clips):
        rng = np.random.default_rng([1, i])
        f, y, x = (rng.integers(n - size + 1, size=per_sample)
                   for n, size in ((frames, 1), (height, PATCH), (width, PATCH)))
        patches = clip.astype(np.float64)[f[:, None, None], (y[:, None] + offsets)[:, :, None],
                                          (x[:, None] + offsets)[:, None, :]]
        out.append(patches.reshape(per_sample, -1) @ directions)
    return np.stack(out).transpose(2, 0, 1).astype(np.float32)


def _sorted_patches(patches: np.ndarray, samples: np.ndarray | None = None) -> np.ndarray:
    """``(projections, patches)``: the patches of ``samples`` (all by default) sorted along each direction."""
    drawn = patches if samples is None else patches[:, samples]
    return np.sort(drawn.reshape(drawn.shape[0], -1), axis=1)


def patch_swd_resamples(methods: list[np.ndarray], truth: np.ndarray,
                        index: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """Each method's sliced Wasserstein-1 distance (x 1e3) between its patches and the true samples' (all from
    :func:`patch_projections`), with its value on every prompt resample of ``index``. Resampling repeats samples,
    which raises a distance between samples by itself, so the resamples are centred on the figure of the prompts
    drawn (KID's estimator is unbiased; this one is not)."""
    distance = lambda drawn, true: float(np.abs(drawn - true).mean() * 1e3)  # noqa: E731
    true_sorted = _sorted_patches(truth)
    figures = [distance(_sorted_patches(patches), true_sorted) for patches in methods]
    resampled = np.empty((len(methods), index.shape[0]))
    for r, samples in enumerate(index):
        true_sorted = _sorted_patches(truth, samples)
        for m, patches in enumerate(methods):
            resampled[m, r] = distance(_sorted_patches(patches, samples), true_sorted)
    resampled += np.array(figures)[:, None] - resampled.mean(axis=1, keepdims=True)
    return list(zip(figures, resampled))
