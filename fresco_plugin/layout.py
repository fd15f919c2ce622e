"""Token layout: which token lives at which level and position.

Latents are packed the way FLUX packs them: a token is a ``patch x patch`` block of latent pixels over all
channels, flattened channel-major (``C, patch, patch``). A token at level ``l`` covers ``2**l x 2**l`` full-resolution
tokens; level 0 is full resolution. Its children at level ``l - 1`` sit at rows ``2r, 2r + 1`` and cols
``2c, 2c + 1`` of the finer token grid, so every stage's grid is a subset of the full-resolution grid.

Each image of a batch has its own layout (promotion is decided per image), but all images hold the same number of
tokens, so latents stay one ``(B, N, D)`` tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TokenGeometry", "TokenLayout", "pack", "unpack"]


def pack(latents: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W)`` latent pixels -> ``(B, (H/patch)(W/patch), C*patch*patch)`` tokens in raster order."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpack(tokens: torch.Tensor, rows: int, cols: int, patch: int) -> torch.Tensor:
    """Inverse of :func:`pack` for a raster-ordered ``rows x cols`` token grid."""
    b, _, d = tokens.shape
    c = d // (patch * patch)
    x = tokens.view(b, rows, cols, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, rows * patch, cols * patch)


@dataclass(frozen=True)
class TokenGeometry:
    """The full-resolution token grid of one generation."""

    channels: int  # latent channels (16 for FLUX)
    patch: int  # latent pixels per token side (2 for FLUX)
    rows: int  # full-resolution token rows
    cols: int  # full-resolution token cols

    @property
    def token_dim(self) -> int:
        return self.channels * self.patch * self.patch

    @property
    def num_tokens(self) -> int:
        return self.rows * self.cols

    def grid(self, level: int) -> tuple[int, int]:
        """Token rows and cols of a uniform grid at ``level``."""
        return self.rows >> level, self.cols >> level

    def check_level(self, level: int) -> None:
        factor = 1 << level
        if self.rows % factor or self.cols % factor:
            raise ValueError(
                f"a {self.rows}x{self.cols} token grid does not divide into whole tokens at 1/{factor} resolution"
            )


@dataclass(frozen=True)
class TokenLayout:
    """Per-image token identities, each ``(B, N)`` int64: level, and row/col on that level's token grid."""

    level: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor

    @classmethod
    def uniform(cls, batch_size: int, geometry: TokenGeometry, level: int, device: torch.device) -> TokenLayout:
        rows, cols = geometry.grid(level)
        row = torch.arange(rows, device=device).repeat_interleave(cols)
        col = torch.arange(cols, device=device).repeat(rows)
        level_ids = torch.full_like(row, level)
        expand = lambda t: t.unsqueeze(0).expand(batch_size, -1).contiguous()  # noqa: E731
        return cls(expand(level_ids), expand(row), expand(col))

    @property
    def batch_size(self) -> int:
        return self.level.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.level.shape[1]

    @property
    def coarsest_level(self) -> int:
        return int(self.level.max())

    def positions(self, base_level: int, mode: str = "center") -> torch.Tensor:
        """``(B, N, 2)`` row/col positions in units of the ``base_level`` token grid.

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
        return torch.stack([rows / base, cols / base], dim=-1)

    def gather(self, index: torch.Tensor) -> TokenLayout:
        return TokenLayout(self.level.gather(1, index), self.row.gather(1, index), self.col.gather(1, index))

    def promote(self, mask: torch.Tensor) -> tuple[TokenLayout, torch.Tensor, torch.Tensor]:
        """Replace the masked tokens by their four children, appended after the kept tokens.

        ``mask`` must select the same number of tokens in every image. Returns the new layout, the indices of the kept
        tokens and the indices of the promoted ones (each ``(B, n)``, ascending).
        """
        counts = mask.sum(dim=1)
        if not bool((counts == counts[0]).all()):
            raise ValueError("promotion must select the same number of tokens in every image of a batch")
        kept = _true_indices(~mask)
        promoted = _true_indices(mask)
        parents = self.gather(promoted)
        offsets = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], device=mask.device)
        child_row = (parents.row.unsqueeze(-1) * 2 + offsets[:, 0]).flatten(1)
        child_col = (parents.col.unsqueeze(-1) * 2 + offsets[:, 1]).flatten(1)
        child_level = (parents.level.unsqueeze(-1) - 1).expand(-1, -1, 4).flatten(1)
        kept_layout = self.gather(kept)
        layout = TokenLayout(
            torch.cat([kept_layout.level, child_level], 1),
            torch.cat([kept_layout.row, child_row], 1),
            torch.cat([kept_layout.col, child_col], 1),
        )
        return layout, kept, promoted

    def raster_order(self, geometry: TokenGeometry) -> torch.Tensor:
        """Indices that sort an all-full-resolution layout into raster order."""
        if self.coarsest_level != 0:
            raise ValueError("only a layout of full-resolution tokens has a raster order")
        return torch.argsort(self.row * geometry.cols + self.col, dim=1)


def _true_indices(mask: torch.Tensor) -> torch.Tensor:
    """Column indices of the true entries of each row, ascending (rows hold equal counts)."""
    batch = mask.shape[0]
    return mask.nonzero()[:, 1].view(batch, -1)
