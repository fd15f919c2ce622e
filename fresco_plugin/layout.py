"""Token layout: which token lives at which level and position.

Latents are packed the way FLUX packs them: a token is a ``patch x patch`` block of latent pixels over all
channels, flattened channel-major (``C, patch, patch``); video latents ``(B, C, F, H, W)`` pack frame by frame (a
temporal patch of 1, as in HunyuanVideo and Wan). A token at level ``l`` covers ``2**l x 2**l`` full-resolution tokens
of its frame; level 0 is full resolution. Its children at level ``l - 1`` sit at rows ``2r, 2r + 1`` and cols
``2c, 2c + 1`` of the finer grid, so every stage's grid is a subset of the full-resolution grid.

A side that does not halve evenly (720p video has 45 token rows) is padded: coarse grids round up, and the children
that fall outside the full-resolution grid are dropped when the last stage begins (generate slightly larger, crop).

Each image of a batch has its own layout (promotion is decided per image), but all images hold the same number of
tokens, so latents stay one ``(B, N, D)`` tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TokenGeometry", "TokenLayout", "pack", "unpack"]


def pack(latents: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W)`` or ``(B, C, F, H, W)`` latent pixels -> ``(B, N, C*patch*patch)`` tokens in raster order."""
    if latents.ndim == 4:
        latents = latents.unsqueeze(2)
    b, c, f, h, w = latents.shape
    x = latents.reshape(b, c, f, h // patch, patch, w // patch, patch).permute(0, 2, 3, 5, 1, 4, 6)
    return x.reshape(b, f * (h // patch) * (w // patch), c * patch * patch)


def unpack(tokens: torch.Tensor, rows: int, cols: int, patch: int, frames: int | None = None) -> torch.Tensor:
    """Inverse of :func:`pack` for a raster-ordered grid; ``frames=None`` gives 4-D image latents."""
    b, _, d = tokens.shape
    c = d // (patch * patch)
    x = tokens.reshape(b, frames or 1, rows, cols, c, patch, patch).permute(0, 4, 1, 2, 5, 3, 6)
    x = x.reshape(b, c, frames or 1, rows * patch, cols * patch)
    return x if frames is not None else x.squeeze(2)


@dataclass(frozen=True)
class TokenGeometry:
    """The full-resolution token grid of one generation."""

    channels: int  # latent channels (16 for FLUX)
    patch: int  # latent pixels per token side (2 for FLUX)
    rows: int  # full-resolution token rows
    cols: int  # full-resolution token cols
    frames: int | None = None  # latent frames of a video; None for an image

    @property
    def token_dim(self) -> int:
        return self.channels * self.patch * self.patch

    @property
    def num_frames(self) -> int:
        return self.frames or 1

    @property
    def num_tokens(self) -> int:
        return self.num_frames * self.rows * self.cols

    def grid(self, level: int) -> tuple[int, int]:
        """Token rows and cols of the grid at ``level`` (a side that does not halve evenly rounds up)."""
        factor = 1 << level
        return -(-self.rows // factor), -(-self.cols // factor)

    def divides(self, level: int) -> bool:
        """Whether the full grid splits into whole tokens at ``level`` (no padding needed)."""
        factor = 1 << level
        return self.rows % factor == 0 and self.cols % factor == 0


@dataclass(frozen=True)
class TokenLayout:
    """Per-image token identities, each ``(B, N)`` int64: level, frame, and row/col on that level's grid."""

    level: torch.Tensor
    frame: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor

    @classmethod
    def uniform(cls, batch_size: int, geometry: TokenGeometry, level: int, device: torch.device) -> TokenLayout:
        rows, cols = geometry.grid(level)
        frame, row, col = torch.meshgrid(torch.arange(geometry.num_frames, device=device),
                                         torch.arange(rows, device=device), torch.arange(cols, device=device),
                                         indexing="ij")
        expand = lambda t: t.reshape(1, -1).expand(batch_size, -1).contiguous()  # noqa: E731
        return cls(expand(torch.full_like(row, level)), expand(frame), expand(row), expand(col))

    @property
    def num_tokens(self) -> int:
        return self.level.shape[1]

    @property
    def coarsest_level(self) -> int:
        return int(self.level.max())

    def positions(self, base_level: int, mode: str = "center") -> torch.Tensor:
        """``(B, N, 3)`` frame/row/col positions, rows and cols in units of the ``base_level`` token grid.

        Base-level tokens sit on the integer grid (so a uniform stage sees the same positions as a stock run at that
        resolution). Finer tokens get fractional positions: ``"center"`` places each token at the centre of the area
        it covers, ``"anchor"`` at its top-left corner (RALU's convention: parent + {0, 1/2}).
        """
        # float32 holds these quarter-integer positions exactly on any realistic grid (and MPS has no float64)
        size = 2.0 ** self.level.to(torch.float32)
        base = 2.0**base_level
        rows = self.row.to(torch.float32) * size
        cols = self.col.to(torch.float32) * size
        if mode == "center":
            offset = (size - 1.0) / 2.0 - (base - 1.0) / 2.0
            rows, cols = rows + offset, cols + offset
        elif mode != "anchor":
            raise ValueError(f"unknown position mode {mode!r}; use 'center' or 'anchor'")
        return torch.stack([self.frame.to(torch.float32), rows / base, cols / base], dim=-1)

    def places(self) -> torch.Tensor:
        """``(B, N)`` int64: one id per level, row and col, the same in every frame (a token's space-time tube)."""
        rows, cols = int(self.row.max()) + 1, int(self.col.max()) + 1
        return (self.level * rows + self.row) * cols + self.col

    def gather(self, index: torch.Tensor) -> TokenLayout:
        return TokenLayout(*(t.gather(1, index) for t in (self.level, self.frame, self.row, self.col)))

    def promote(self, mask: torch.Tensor, count: int | None = None) -> tuple[TokenLayout, torch.Tensor, torch.Tensor]:
        """Replace the masked tokens by their four children, appended after the kept tokens.

        ``mask`` must select the same number of tokens in every image. Returns the new layout, the indices of the kept
        tokens and the indices of the promoted ones (each ``(B, n)``, ascending). A caller that knows that number
        passes it as ``count``: then nothing is read back from the device (and the check is the caller's).
        """
        if count is None:
            counts = mask.sum(dim=1)
            if not bool((counts == counts[0]).all()):
                raise ValueError("promotion must select the same number of tokens in every image of a batch")
        kept = true_indices(~mask, None if count is None else mask.shape[1] - count)
        promoted = true_indices(mask, count)
        parents = self.gather(promoted)
        # the children's (row, col) offsets (0, 0), (0, 1), (1, 0), (1, 1), made on the device: a tensor built from
        # host data would be a copy that waits for the device
        child = torch.arange(4, device=mask.device)
        four = lambda t: t.unsqueeze(-1).expand(-1, -1, 4).flatten(1)  # noqa: E731
        children = TokenLayout(
            four(parents.level - 1), four(parents.frame),
            (parents.row.unsqueeze(-1) * 2 + child // 2).flatten(1),
            (parents.col.unsqueeze(-1) * 2 + child % 2).flatten(1),
        )
        kept_layout = self.gather(kept)
        layout = TokenLayout(*(torch.cat([a, b], 1) for a, b in zip(
            (kept_layout.level, kept_layout.frame, kept_layout.row, kept_layout.col),
            (children.level, children.frame, children.row, children.col),
        )))
        return layout, kept, promoted

    def inside(self, geometry: TokenGeometry) -> torch.Tensor:
        """``(B, N)`` mask of the tokens that cover any of the real (unpadded) full-resolution grid."""
        return ((self.row << self.level) < geometry.rows) & ((self.col << self.level) < geometry.cols)

    def level_map(self, geometry: TokenGeometry) -> torch.Tensor:
        """``(B, frames, rows, cols)`` int8: the level of the token covering each full-resolution token's area (what
        ran at which resolution), for pictures and diagnostics."""
        batch = self.level.shape[0]
        top = int(self.level.max())
        rows, cols = geometry.grid(0)
        # padded grids (odd sizes) cover a little more than the picture: paint them whole, then crop
        padded_rows = max(rows, int(((self.row + 1) << self.level).max()))
        padded_cols = max(cols, int(((self.col + 1) << self.level).max()))
        out = torch.zeros(batch, geometry.num_frames, padded_rows, padded_cols, dtype=torch.int8,
                          device=self.level.device)
        images = torch.arange(batch, device=self.level.device)[:, None].expand_as(self.level)
        for level in range(top + 1):
            at = self.level == level
            if not bool(at.any()):
                continue
            b, f, r, c = images[at], self.frame[at], self.row[at] << level, self.col[at] << level
            for dr in range(1 << level):
                for dc in range(1 << level):
                    out[b, f, r + dr, c + dc] = level
        return out[:, :, :rows, :cols]

    def raster_order(self, extent: tuple[int, int] | None = None) -> torch.Tensor:
        """Indices that sort a single-level layout into (frame, row, col) raster order.

        ``extent`` (rows, cols), any bound above every token's row and col, spares reading the layout back from the
        device (and the single-level check, which is then the caller's).
        """
        if extent is None:
            if bool((self.level != self.level[:, :1]).any()):
                raise ValueError("only a layout whose tokens share one level has a raster order")
            extent = int(self.row.max()) + 1, int(self.col.max()) + 1
        rows, cols = extent
        return torch.argsort((self.frame * rows + self.row) * cols + self.col, dim=1)


def true_indices(mask: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """Column indices of the true entries of each row, ascending (rows hold equal counts). With ``count``, that
    number, no read from the device: a stable sort puts the true entries first, in order."""
    if count is None:
        return mask.nonzero()[:, 1].view(mask.shape[0], -1)
    return torch.sort(mask.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :count]
