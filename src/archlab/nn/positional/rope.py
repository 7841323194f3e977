"""Rotary position embedding (Su et al., 2021, "RoFormer").

Pairs of channels (c, c + r/2) of each head's q and k are rotated by the angle pos·θ_c with
θ_c = base^{−2c/r}, r = the rotary width (``fraction`` of the head dimension, even). Because
R(m)ᵀR(n) = R(n − m), the score q_mᵀk_n depends on positions only through n − m. Channels
past r pass through unchanged (partial rotary, as in GPT-NeoX).
"""

from __future__ import annotations

import torch

from archlab.nn.positional.base import PositionalScheme, per_position


def rotary_width(head_dim: int, fraction: float) -> int:
    return int(head_dim * fraction) // 2 * 2


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2·cos.shape[-1] channels of x (…, T, D) by the given per-position angles."""
    half = cos.shape[-1]
    rot = 2 * half
    x1, x2 = x[..., :half], x[..., half:rot]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    parts = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
    if rot < x.shape[-1]:
        parts.append(x[..., rot:])
    return torch.cat(parts, dim=-1)


class RotaryEmbedding(PositionalScheme):
    uses_rotate = True

    def __init__(self, *, head_dim: int, base: float = 10000.0, fraction: float = 1.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rot_dim = rotary_width(head_dim, fraction)
        if self.rot_dim < 2:
            raise ValueError(f"rotary width {self.rot_dim} from head_dim {head_dim} × fraction {fraction} is < 2")
        self.base = float(base)
        self._memo: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        """θ_c = base^{−2c/r} in float64. Computed, not a buffer: casting the model to a low
        precision must not round the frequencies (that would blur long-range positions)."""
        return self.base ** (-torch.arange(0, self.rot_dim, 2, dtype=torch.float64, device=device) / self.rot_dim)

    def set_base(self, base: float) -> None:
        """Change the base (used by learning-dynamics controllers); invalidates cached angles."""
        self.base = float(base)
        self._memo = None

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """pos · θ for every position and frequency: (…, T, r/2) in float64."""
        return positions.to(torch.float64).unsqueeze(-1) * self.inv_freq(positions.device)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables, float64 for a float64 model, else float32 (cast to q's dtype later)."""
        dt = torch.float64 if dtype == torch.float64 else torch.float32
        # All layers sharing this scheme get the same positions tensor within one forward:
        # computing cos/sin once per forward instead of once per layer.
        # Under torch.compile the graph is traced once and Python-side state would force a
        # recompile, so the memo is only used eagerly.
        eager = not torch.compiler.is_compiling()
        memo = self._memo
        if eager and memo is not None and memo[0] is positions and memo[1].dtype == dt:
            return memo[1], memo[2]
        ang = self.angles(positions)
        cos, sin = per_position(ang.cos().to(dt)), per_position(ang.sin().to(dt))
        if eager and (not torch.is_grad_enabled() or not any(p.requires_grad for p in self.parameters())):
            self._memo = (positions, cos, sin)
        return cos, sin

    def rotate(self, q, k, q_pos, k_pos):
        cos, sin = self.cos_sin(q_pos, q.dtype)
        if k_pos is not q_pos:
            kcos, ksin = self.cos_sin(k_pos, k.dtype)
        else:
            kcos, ksin = cos, sin
        return apply_rotary(q, cos, sin), apply_rotary(k, kcos, ksin)
