"""Orthogonal transforms of each head's queries and keys *before* RoPE.

With R(·) the rotary map and Q an orthogonal matrix applied identically to q and k (row
vectors, x ↦ x·Q), the score becomes

    (q_m Q R(m)) · (k_n Q R(n)) = q_m Q R(n − m) Qᵀ k_nᵀ,

so Q chooses which directions of the head space turn at which rotary frequency, and the score
still depends on positions only through n − m. Applied *after* RoPE the same Q cancels:
(q R(m) Q)·(k R(n) Q) = q R(m) Q Qᵀ R(n)ᵀ kᵀ = q R(n − m) kᵀ (the Echo seed's mistake).

Parameterisations (all return an n×n matrix per group, G = 1 shared or one per key head):

* :class:`GivensRounds`: K rounds of disjoint channel pairs from a round-robin tournament
  (:func:`round_robin_pairs`); round k is G_k = ∏ over its pairs of a plane rotation by a
  trainable angle, so a round is one vectorised op and K = n − 1 rounds touch every pair once
  (n(n − 1)/2 angles). Before RoPE the channels are relabelled (:func:`rope_aware_pairs`) so
  that no angle of the last round turns a plane RoPE leaves invariant: such an angle would
  commute with RoPE and cancel in the score (exactly zero gradient).
* :class:`OrthogonalMatrix`: a full matrix R, either exactly orthogonal, R = R₀·exp(A − Aᵀ)
  (R₀ a fixed random orthogonal matrix, A trainable and zero at init; "trivialisation",
  Lezcano-Casado & Martínez-Rubio, 2019), or unconstrained with the penalty
  λ·‖R Rᵀ − I‖²_F returned by ``aux_losses()`` and added to the training loss by the LM.

The product ∏G_k·R is formed once per forward (Givens matrices built in one scatter, then
multiplied as a balanced tree: ⌈log₂ K⌉ batched matmuls). Attention folds it into the q and k
rows of its projection weights when that is cheaper than turning the activations (B·T ≥ the
model width: W_h ← MᵀW_h costs D²·dim per head, q·M costs B·T·D² per head), which is exact
and differentiable in M (``pre_rotation``; tests/test_rotation_findings.py); otherwise
(decoding a token) it is applied to q and k with a single matmul each. :class:`ConditionalRotary` instead predicts the angles from each token's hidden
state, so its rotation differs per token and is applied round by round.

What a static rotation (all but :class:`ConditionalRotary`) buys: q·M and k·M with M fixed
per forward are x·(W_q M) and x·(W_k M), so plain RoPE on reparameterised projections
computes the same scores (tests/test_rotation_findings.py). The schemes change
the optimisation of W_q, W_k, not the set of functions the model can represent; and of M
itself only the part outside the matrices commuting with every R(m) acts (RoPE's own planes,
any rotation of the channels RoPE leaves alone), so SO(n)'s n(n − 1)/2 dimensions overstate
the acting ones by r/2 + p(p − 1)/2 (r rotary, p = n − r pass-through channels).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from archlab.nn.positional.rope import RotaryEmbedding, params_key

Scope = Literal["shared", "head"]


def round_robin_pairs(n: int) -> torch.Tensor:
    """(n − 1, n/2, 2) channel pairs by the circle method: in round r, channel n − 1 meets r and
    (r + i) mod (n − 1) meets (r − i) mod (n − 1) for i = 1 … n/2 − 1. Each round pairs every
    channel exactly once; over the n − 1 rounds every unordered pair meets exactly once."""
    if n < 2 or n % 2:
        raise ValueError(f"Givens rounds need an even dimension ≥ 2, got {n}")
    m = n - 1
    rounds = []
    for r in range(m):
        pairs = [(r, n - 1)] + [((r + i) % m, (r - i) % m) for i in range(1, n // 2)]
        rounds.append(pairs)
    return torch.tensor(rounds, dtype=torch.long)


def rope_planes(rot_dim: int) -> set[tuple[int, int]]:
    """The planes RoPE turns: channel c with c + r/2 for c < r/2 (rotate-half layout)."""
    half = rot_dim // 2
    return {(c, c + half) for c in range(half)}


def commutes_with_rope(i: int, j: int, rot_dim: int) -> bool:
    """Whether a rotation in the plane (i, j) commutes with every RoPE rotation R(m): a plane
    RoPE turns itself (two 2-D rotations of one plane commute), or two channels RoPE leaves
    unchanged (≥ rot_dim). Such a rotation as the last step before RoPE cancels in the score."""
    i, j = min(i, j), max(i, j)
    return (i, j) in rope_planes(rot_dim) or i >= rot_dim


def _last_round_matching(n: int, rot_dim: int) -> list[tuple[int, int]]:
    """A perfect matching of the n channels with as few planes commuting with RoPE as possible:
    pass-through channel r + i with rotary channel i (i < min(p, r)), the remaining rotary
    channels as neighbours (c, c + 1) (never a RoPE plane (c, c + r/2) unless r = 2), and only
    pass-through channels left over (p > r, i.e. rope fraction < ½) with each other."""
    r = rot_dim
    p = n - r
    m = min(p, r)
    out = [(i, r + i) for i in range(m)]
    out += [(c, c + 1) for c in range(m, r, 2)]
    out += [(c, c + 1) for c in range(r + m, n, 2)]
    return out


def _cycles(last: list[tuple[int, int]], prev: list[tuple[int, int]]) -> list[list[int]]:
    """The union of two perfect matchings is disjoint cycles alternating between them: the
    indices of ``last``'s edges in the order each cycle meets them."""
    edge_of = {c: e for e, pair in enumerate(last) for c in pair}
    partner = {a: b for x, y in prev for a, b in ((x, y), (y, x))}
    seen, out = set(), []
    for first in range(len(last)):
        cycle, e, enter = [], first, last[first][0]
        while e not in seen:
            seen.add(e)
            cycle.append(e)
            a, b = last[e]
            leave = b if enter == a else a  # cross the edge, then follow prev to the next edge
            enter = partner[leave]
            e = edge_of[enter]
        if cycle:
            out.append(cycle)
    return out


def rope_aware_pairs(n: int, rounds: int, rot_dim: int) -> torch.Tensor:
    """(K, n/2, 2): the first K rounds of :func:`round_robin_pairs` with the channels
    relabelled so that round K − 1, the one right before RoPE, is :func:`_last_round_matching`.
    A relabelling keeps the tournament: each round pairs every channel once, K = n − 1 rounds
    meet every pair once.

    With rotary width r ≥ n/2 (and n > 2) every angle then acts. With r < n/2 the last round
    must pair (p − r)/2 pass-through planes, which cancel; their edges are spread along the
    cycles that rounds K − 2 and K − 1 form together, so that (while p ≤ 3r) no pair of round
    K − 2 falls inside those channels and nothing else is inert. :func:`inert_angles` lists
    what remains."""
    K = resolve_rounds(rounds, n)
    base = round_robin_pairs(n)[:K]
    if not 2 <= rot_dim <= n or rot_dim % 2:
        raise ValueError(f"rotary width {rot_dim} must be even and in 2 … {n}")
    last = [(a, b) for a, b in base[K - 1].tolist()]
    target = _last_round_matching(n, rot_dim)
    inert = [t for t in target if t[0] >= rot_dim]  # pass-through planes (only when r < n/2)
    acting = [t for t in target if t[0] < rot_dim]
    order = list(range(len(last)))
    if inert and K >= 2:
        # non-adjacent slots of every cycle first (every other edge), then the rest
        spread = [c[i] for c in _cycles(last, [tuple(e) for e in base[K - 2].tolist()])
                  for i in range(0, len(c) - len(c) % 2, 2)]
        order = spread + [e for e in order if e not in set(spread)]
    where = {e: t for e, t in zip(order, inert + acting)}
    perm = torch.empty(n, dtype=torch.long)
    for e, (a, b) in enumerate(last):
        perm[a], perm[b] = where[e]
    return perm[base]


def inert_angles(pairs: torch.Tensor, rot_dim: int) -> torch.Tensor:
    """(K, n/2) bool: the angles of a Givens chain x·G_0⋯G_{K−1} followed by RoPE that cannot
    change any score, so their gradient is exactly zero.

    Turning pair (a, b) of round k changes x·M by x·M·X with X = u vᵀ − v uᵀ, u = e_a·S and
    v = e_b·S for S the rounds after k. The score q M R(n − m) Mᵀ kᵀ moves by q M (X R − R X) Mᵀ
    kᵀ, zero for all q, k, positions exactly when X commutes with every R: a RoPE plane or a
    plane of pass-through channels when nothing follows (the last round), or for earlier rounds
    when the later rounds never mix a or b with a rotary channel (u, v stay in the pass-through
    block; generic angles otherwise spread them). tests/test_rotation_findings.py checks this
    list against autograd."""
    K, h, _ = pairs.shape
    out = torch.zeros(K, h, dtype=torch.bool)
    partner = torch.empty(K, 2 * h, dtype=torch.long)
    for k in range(K):
        partner[k, pairs[k, :, 0]], partner[k, pairs[k, :, 1]] = pairs[k, :, 1], pairs[k, :, 0]
    for k in range(K):
        for slot, (a, b) in enumerate(pairs[k].tolist()):
            if k == K - 1:
                out[k, slot] = commutes_with_rope(a, b, rot_dim)
                continue
            reach = {a, b}
            for later in range(k + 1, K):
                reach |= {int(partner[later, c]) for c in reach}
            out[k, slot] = min(reach) >= rot_dim
    return out


def _check_pairs(pairs: torch.Tensor, K: int, n: int) -> str | None:
    """Why ``pairs`` is not K rounds of perfect matchings of n channels (None if it is)."""
    if pairs.shape != (K, n // 2, 2) or pairs.dtype != torch.long:
        return f"shape {list(pairs.shape)} {pairs.dtype}, expected {[K, n // 2, 2]} int64"
    for k in range(K):
        if sorted(pairs[k].reshape(-1).tolist()) != list(range(n)):
            return f"round {k} does not pair each of the {n} channels once"
    return None


def resolve_rounds(rounds: int, n: int) -> int:
    """−1 means a full tournament (n − 1 rounds)."""
    return n - 1 if rounds == -1 else rounds


def givens_matrices(cos: torch.Tensor, sin: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """cos/sin (…, K, n/2), pairs (K, n/2, 2) -> the round matrices (…, K, n, n).

    For a pair (i, j) with angle a: G[i, i] = G[j, j] = cos a, G[i, j] = −sin a, G[j, i] = sin a,
    so the row vector x·G has x'_i = x_i cos a + x_j sin a, x'_j = x_j cos a − x_i sin a.
    Built by one out-of-place scatter (differentiable in the angles)."""
    h = pairs.shape[1]
    n = 2 * h
    i, j = pairs[..., 0], pairs[..., 1]
    index = torch.cat([i * n + i, j * n + j, i * n + j, j * n + i], dim=-1)  # (K, 2n)
    values = torch.cat([cos, cos, -sin, sin], dim=-1)  # (…, K, 2n)
    index = index.expand(values.shape)
    flat = values.new_zeros(*values.shape[:-1], n * n).scatter(-1, index, values)
    return flat.view(*values.shape[:-1], n, n)


def chain_product(mats: torch.Tensor) -> torch.Tensor:
    """mats (…, K, n, n) -> M_0 · M_1 ⋯ M_{K−1} (…, n, n), as a balanced tree of batched
    matmuls (order kept; ⌈log₂ K⌉ calls instead of K − 1)."""
    while mats.shape[-3] > 1:
        K = mats.shape[-3]
        paired = mats[..., 0:K - 1:2, :, :] @ mats[..., 1:K:2, :, :]
        mats = torch.cat([paired, mats[..., K - 1:, :, :]], dim=-3) if K % 2 else paired
    return mats[..., 0, :, :]


def apply_matrix(x: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """x (B, N, T, D) · M, M (G, D, D) with G = 1 (shared) or G dividing N (head h uses
    M[h // (N/G)], so a query head uses the matrix of the key head it reads)."""
    G = M.shape[0]
    if G == 1:
        return x @ M[0]
    B, N, T, D = x.shape
    return (x.view(B, G, N // G, T, D) @ M[:, None]).view(B, N, T, D)


class GivensRounds(nn.Module):
    """∏_{k<K} G_k per group, from trainable angles (G, K, n/2), init U(−π, π).

    A random start is as good as any for a rotation that sits right after the randomly
    initialised q/k projections (W·Q of a Gaussian W is again Gaussian), and it keeps the
    round count visible from the first step.

    ``rot_dim``: the width of the RoPE that follows; the pairs are then
    :func:`rope_aware_pairs` (no last-round angle cancels against RoPE), else the plain
    :func:`round_robin_pairs`. The pairs are saved with the weights (``pairs``), so a
    checkpoint keeps the planes its angles were trained in; a state dict without them (saved
    before they were stored) gets the plain round robin it was trained with."""

    def __init__(self, *, dim: int, rounds: int, groups: int = 1, rot_dim: int | None = None) -> None:
        super().__init__()
        K = resolve_rounds(rounds, dim)
        if not 1 <= K <= dim - 1:
            raise ValueError(f"Givens rounds {rounds}: allowed 1 … {dim - 1} or −1 (all) for dimension {dim}")
        self.dim, self.rot_dim = dim, rot_dim
        pairs = round_robin_pairs(dim)[:K] if rot_dim is None else rope_aware_pairs(dim, K, rot_dim)
        self.register_buffer("pairs", pairs)
        self.angles = nn.Parameter(torch.empty(groups, K, dim // 2).uniform_(-math.pi, math.pi))

    def inert(self) -> torch.Tensor:
        """(K, n/2) bool: angles that cannot act through the RoPE that follows (:func:`inert_angles`;
        none without ``rot_dim``). All False with the default pairs when rot_dim ≥ n/2 and n > 2."""
        if self.rot_dim is None:
            return torch.zeros(self.pairs.shape[:2], dtype=torch.bool)
        return inert_angles(self.pairs.cpu(), self.rot_dim)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "pairs"
        if key not in state_dict and prefix + "angles" in state_dict:
            # saved before the pairs were stored: those angles were trained in the plain round robin
            state_dict[key] = round_robin_pairs(self.dim)[:self.pairs.shape[0]].to(self.pairs.device)
        if key in state_dict:
            why = _check_pairs(state_dict[key].cpu(), self.pairs.shape[0], self.dim)
            if why is not None:
                error_msgs.append(f"{key}: not Givens rounds ({why})")
                return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def matrix(self) -> torch.Tensor:
        a = self.angles
        return chain_product(givens_matrices(a.cos(), a.sin(), self.pairs))


class OrthogonalMatrix(nn.Module):
    """An orthogonal n×n matrix per group (G, n, n), exact or penalised.

    ``penalty == 0``: R = R₀·exp(A − Aᵀ); R₀ ∈ O(n) random (a persistent buffer: it is part of
    the model), A trainable, zero at init. exp of a skew matrix is orthogonal, so R is
    orthogonal to rounding at every step. ``penalty = λ > 0``: R trainable and free, init R₀;
    ``aux_losses()`` returns {"orthogonality": λ·Σ_g ‖R_g R_gᵀ − I‖²_F}."""

    def __init__(self, *, dim: int, groups: int = 1, penalty: float = 0.0) -> None:
        super().__init__()
        if penalty < 0:
            raise ValueError(f"orthogonality penalty must be ≥ 0, got {penalty}")
        self.penalty = float(penalty)
        init = torch.empty(groups, dim, dim)
        for g in range(groups):
            nn.init.orthogonal_(init[g])
        if self.penalty == 0:
            self.register_buffer("origin", init)
            self.skew = nn.Parameter(torch.zeros(groups, dim, dim))
            self.weight = None
        else:
            self.origin, self.skew = None, None
            self.weight = nn.Parameter(init)

    def matrix(self) -> torch.Tensor:
        if self.weight is not None:
            return self.weight
        A = self.skew
        return self.origin @ torch.linalg.matrix_exp(A - A.transpose(-1, -2))

    def deviation(self) -> torch.Tensor:
        """Σ_g ‖R_g R_gᵀ − I‖²_F (zero exactly when every R_g is orthogonal)."""
        R = self.matrix()
        eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)
        return (R @ R.transpose(-1, -2) - eye).square().sum()

    def aux_losses(self) -> dict[str, torch.Tensor]:
        if self.penalty == 0:
            return {}
        return {"orthogonality": self.penalty * self.deviation()}


class RotatedRotary(RotaryEmbedding):
    """RoPE preceded by x ↦ x·(∏_k G_k)·R on every head's q and k (see the module docstring).

    ``givens_rounds``: 0 none, −1 a full tournament, K > 0 that many rounds; ``orthogonal``:
    include the full matrix R (``penalty`` 0: exact; > 0: penalised). ``scope``: one transform
    shared by all heads, or one per key/value head (query heads use their key head's). All
    RoPE options (learnable frequencies/scale/phase, multi-scale bases) apply after it."""

    def __init__(self, *, head_dim: int, givens_rounds: int = 0, orthogonal: bool = False, penalty: float = 0.0,
                 scope: Scope = "shared", heads: int = 1, kv_heads: int | None = None, **rope) -> None:
        super().__init__(head_dim=head_dim, heads=heads, kv_heads=kv_heads, **rope)
        if scope not in ("shared", "head"):
            raise ValueError(f"rotation scope '{scope}'; allowed: shared, head")
        if not givens_rounds and not orthogonal:
            raise ValueError("RotatedRotary needs Givens rounds, a full matrix, or both")
        G = self.kv_heads if scope == "head" else 1
        # Rounds right before RoPE avoid planes that commute with it; followed by the matrix R
        # instead, no plane cancels and the plain round robin is kept.
        self.givens = (GivensRounds(dim=head_dim, rounds=givens_rounds, groups=G,
                                    rot_dim=None if orthogonal else self.rot_dim) if givens_rounds else None)
        self.matrix = OrthogonalMatrix(dim=head_dim, groups=G, penalty=penalty) if orthogonal else None
        self._rot_memo: tuple | None = None

    def rotation(self, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The (G, D, D) matrix ∏G_k·R, built once per forward and shared by every layer that
        uses this scheme.

        Memo key: the parameters' versions (an optimiser step or ``load_state_dict`` changes
        them) and, when gradients are wanted, the identity of the forward's ``positions`` tensor
        (all layers of one forward receive the same one). A gradient-carrying memo is dropped as
        soon as the backward pass reaches it, so a later forward never reuses a freed graph."""
        if torch.compiler.is_compiling():  # traced once: no Python-side state
            return self._build()
        tensors = [t for m in (self.givens, self.matrix) if m is not None for t in (*m.parameters(), *m.buffers())]
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        key = (params_key(tensors), grad)
        memo = self._rot_memo
        if memo is not None and memo[0] == key and (not grad or memo[1] is positions):
            return memo[2]
        M = self._build()
        if not grad or positions is not None:
            entry = (key, positions if grad else None, M)
            self._rot_memo = entry
            if grad:
                M.register_hook(lambda g, entry=entry: self._drop_memo(entry) or g)
        return M

    def _build(self) -> torch.Tensor:
        mats = [m.matrix() for m in (self.givens, self.matrix) if m is not None]
        return mats[0] if len(mats) == 1 else mats[0] @ mats[1]

    def _drop_memo(self, entry: tuple) -> None:
        if self._rot_memo is entry:
            self._rot_memo = None

    def pre_rotation(self, positions: torch.Tensor) -> torch.Tensor:
        return self.rotation(positions)

    def rotate_rest(self, q, k, q_pos, k_pos):
        return super().rotate(q, k, q_pos, k_pos)

    def rotate(self, q, k, q_pos, k_pos):
        M = self.rotation(q_pos).to(q.dtype)
        return super().rotate(apply_matrix(q, M), apply_matrix(k, M), q_pos, k_pos)


class GivensApply(nn.Module):
    """Apply K Givens rounds with per-element angles directly: x·G_1(a_1)⋯G_K(a_K).

    Channels keep their order: round r maps x ↦ x ⊙ C_r + x[partner_r] ⊙ S_r, where partner_r
    swaps the two channels of each pair, C_r holds each channel's pair cosine and S_r its
    signed sine (+sin a for the first channel of a pair, −sin a for the second). One gather, one
    multiply and one fused multiply-add per round, no per-pair loop; C and S are expanded from
    the (…, K, n/2) angles once and shared by every tensor the rotation is applied to."""

    def __init__(self, *, dim: int, rounds: int) -> None:
        super().__init__()
        K = resolve_rounds(rounds, dim)
        if not 1 <= K <= dim - 1:
            raise ValueError(f"Givens rounds {rounds}: allowed 1 … {dim - 1} or −1 (all) for dimension {dim}")
        pairs = round_robin_pairs(dim)[:K]
        i, j = pairs[..., 0], pairs[..., 1]
        rows = torch.arange(K)[:, None]
        slot = torch.arange(dim // 2).expand(K, -1)
        partner, where, sign = (torch.empty(K, dim, dtype=torch.long), torch.empty(K, dim, dtype=torch.long),
                                torch.empty(K, dim))
        partner[rows, i], partner[rows, j] = j, i
        where[rows, i], where[rows, j] = slot, slot
        sign[rows, i], sign[rows, j] = 1.0, -1.0
        self.rounds = K
        self.register_buffer("partner", partner, persistent=False)
        self.register_buffer("slot", where, persistent=False)
        self.register_buffer("sign", sign, persistent=False)

    def tables(self, angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Angles (…, K, n/2) -> per-channel C, S (…, K, n)."""
        idx = self.slot.expand(*angles.shape[:-1], -1)
        a = torch.gather(angles, -1, idx)
        return a.cos(), a.sin() * self.sign.to(a.dtype)

    def forward(self, x: torch.Tensor, C: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
        """x (…, n); C, S (…, K, n) from :meth:`tables`, broadcastable to x's leading dims."""
        for r in range(self.rounds):
            x = torch.addcmul(x * C[..., r, :], x.index_select(-1, self.partner[r]), S[..., r, :])
        return x


class ConditionalRotary(RotaryEmbedding):
    """RoPE preceded by an input-dependent rotation: a small network maps each token's hidden
    state x_t (the attention input) to Givens angles a_t = f(x_t) ∈ R^{G×K×n/2}, and that
    token's q and k are turned by ∏_k G_k(a_t) before RoPE.

    Score: q_m Q(x_m) R(n − m) Q(x_n)ᵀ k_nᵀ. Because Q depends only on the token's own state, a
    key is rotated once when it is new and can be cached rotated (decoding is unchanged).
    f is linear (``hidden`` 0) or a one-hidden-layer SiLU MLP. ``scope``: one rotation per
    token shared by the heads, or one per key/value head."""

    uses_input = True

    def __init__(self, *, head_dim: int, dim: int, rounds: int = 2, hidden: int = 0, scope: Scope = "shared",
                 heads: int = 1, kv_heads: int | None = None, **rope) -> None:
        super().__init__(head_dim=head_dim, heads=heads, kv_heads=kv_heads, **rope)
        if scope not in ("shared", "head"):
            raise ValueError(f"rotation scope '{scope}'; allowed: shared, head")
        self.groups_rot = self.kv_heads if scope == "head" else 1
        self.givens = GivensApply(dim=head_dim, rounds=rounds)
        out = self.groups_rot * self.givens.rounds * head_dim // 2
        self.net = nn.Linear(dim, out) if hidden <= 0 else nn.Sequential(
            nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, out))

    def rotate(self, q, k, q_pos, k_pos, x: torch.Tensor | None = None):
        if x is None:
            raise ValueError("ConditionalRotary needs the hidden state: rotate(q, k, q_pos, k_pos, x=x)")
        B, T, _ = x.shape
        G, K, h = self.groups_rot, self.givens.rounds, self.head_dim // 2
        a = self.net(x).view(B, T, G, K, h).permute(0, 2, 1, 3, 4).unsqueeze(2)  # (B, G, 1, T, K, h)
        C, S = self.givens.tables(a.to(q.dtype))

        def turn(t: torch.Tensor) -> torch.Tensor:
            Bt, N, Tt, D = t.shape
            return self.givens(t.view(Bt, G, N // G, Tt, D), C, S).view(Bt, N, Tt, D)

        return super().rotate(turn(q), turn(k), q_pos, k_pos)
