"""Sparse autoencoders: the module, its losses and its metrics (pure tensor code, no I/O).

A sparse autoencoder reads an activation x ∈ R^d and writes it as a sparse, non-negative
combination of m = expansion · d learned directions (the decoder rows):

    x̃ = (x − b_pre)                         the pre-encoder bias: b_pre = b_dec ("tied", the
                                            usual choice), its own parameter ("untied"), or 0
    z = σ(x̃ W_enc + b_enc)                  σ: ReLU, TopK (the k largest pre-activations of
                                            each token, ReLU'd), or BatchTopK (the k·B largest
                                            over a batch of B tokens; at inference a threshold)
    x̂ = z W_dec + b_dec

Losses (per token, averaged over the batch):

    reconstruction   Σ_d (x − x̂)²
    ReLU: + λ Σ_i z_i ‖W_dec,i‖₂            the L1 penalty weighted by decoder-row norms
                                            (Anthropic, April 2024): with free decoder norms the
                                            penalty cannot be dodged by shrinking z and growing
                                            W_dec; with unit rows it is the plain L1
    TopK/BatchTopK: + α · AuxK              Gao et al. (2024): the k_aux largest (raw) pre-activations
                                            among *dead* latents reconstruct the residual
                                            e = x − x̂; AuxK = Σ_d (e − ê)² / Σ_d (e − ē)²,
                                            α = 1/32 by default

Metrics (over a set of tokens, :func:`sae_metrics`):

    mse                    mean over tokens and dimensions of (x − x̂)²
    explained_variance     1 − Σ (x − x̂)² / Σ (x − x̄)²   (x̄: the mean over the tokens)
    l0                     mean number of non-zero latents per token
    fraction_recovered     (L_zero − L_sae) / (L_zero − L_clean): the language-model loss with
                           the reconstruction spliced in, against the clean model and against
                           zero-ablating the site (1: as good as clean; 0: no better than zero)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("relu", "topk", "batchtopk")
PRE_BIAS = ("tied", "untied", "none")


class SparseAutoencoder(nn.Module):
    """``forward(x)`` → (x̂, z) for activations x (..., d_in). Buffers: ``scale`` (the factor
    inputs are multiplied by before encoding, so that E‖x‖ = √d; 1 until
    :meth:`fit_scale`), ``since_fired`` (tokens since each latent was last non-zero) and, for
    BatchTopK, ``threshold`` (the inference cut-off)."""

    def __init__(self, d_in: int, latents: int, *, architecture: str = "topk", k: int = 32,
                 pre_bias: str = "tied", unit_decoder: bool = True, generator: torch.Generator | None = None):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture: '{architecture}'; allowed: {', '.join(ARCHITECTURES)}")
        if pre_bias not in PRE_BIAS:
            raise ValueError(f"pre_bias: '{pre_bias}'; allowed: {', '.join(PRE_BIAS)}")
        if architecture != "relu" and not 1 <= k <= latents:
            raise ValueError(f"k: {k} active latents of {latents}; allowed: 1..{latents}")
        self.d_in, self.latents, self.architecture, self.k = d_in, latents, architecture, k
        self.pre_bias, self.unit_decoder = pre_bias, unit_decoder
        w = torch.randn(latents, d_in, generator=generator)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w)                      # (m, d): unit rows
        self.W_enc = nn.Parameter(w.t().clone())          # (d, m): the decoder's transpose at init
        self.b_enc = nn.Parameter(torch.zeros(latents))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if pre_bias == "untied":
            self.b_pre = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("since_fired", torch.zeros(latents, dtype=torch.float64))
        self.register_buffer("threshold", torch.zeros(()))

    # ----------------------------------------------------------------- the map

    def _centre(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_bias == "tied":
            return x - self.b_dec
        if self.pre_bias == "untied":
            return x - self.b_pre
        return x

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d) in input units -> pre-activations (..., m)."""
        xc = self._centre(x * self.scale)
        if xc.dim() == 2:  # the bias added inside the product: one pass over (N, m) fewer
            return torch.addmm(self.b_enc, xc, self.W_enc)
        return xc @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.architecture == "relu":
            return F.relu(pre)
        if self.architecture == "topk" or (self.architecture == "batchtopk" and self.training):
            if self.architecture == "topk":
                vals, idx = pre.topk(self.k, dim=-1)
                return torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))
            flat = pre.reshape(-1)
            n = min(flat.numel(), self.k * (flat.numel() // self.latents))
            vals, idx = flat.topk(n)
            return torch.zeros_like(flat).scatter(0, idx, F.relu(vals)).reshape(pre.shape)
        return pre * (pre > self.threshold)  # BatchTopK at inference: a per-token rule

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activations(x))

    def decode_with_l1(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z W_dec + b_dec, Σ_i z_i ‖W_dec,i‖₂ per token) in the scaled units, from one product
        with the decoder extended by its row norms: the L1 term's gradient then rides on the
        decoder's backward product instead of two more passes over the (N, m) latents."""
        aug = torch.cat([self.W_dec, self.W_dec.norm(dim=1, keepdim=True)], 1)  # (m, d + 1)
        out = z @ aug
        return out[:, :-1] + self.b_dec, out[:, -1]

    def topk_sparse(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TopK's latents as (values (N, k), indices (N, k)): the same z as :meth:`activate`
        without the dense (N, m) tensor."""
        vals, idx = pre.topk(self.k, dim=-1)
        return F.relu(vals), idx

    def decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Σ_j vals_j W_dec[idx_j] + b_dec in the scaled units: k rows gathered per token instead
        of an (N, m) × (m, d) product, forward and backward (``embedding_bag``)."""
        return F.embedding_bag(idx, self.W_dec, per_sample_weights=vals, mode="sum") + self.b_dec

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latents (..., m) -> reconstruction (..., d) in input units."""
        return (z @ self.W_dec + self.b_dec) / self.scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z

    # ----------------------------------------------------------------- training helpers

    @torch.no_grad()
    def fit_scale(self, x: torch.Tensor, normalize: bool = True) -> None:
        """Start from a batch ``x`` (N, d): with ``normalize``, set ``scale`` so that the mean
        norm of ``x`` becomes √d (else 1); set ``b_dec`` (and an untied ``b_pre``) to the mean of
        the scaled tokens, a better start than 0: the bias carries the offset."""
        mean_norm = float(x.norm(dim=-1).mean())
        self.scale.fill_(math.sqrt(self.d_in) / mean_norm if normalize and mean_norm > 0 else 1.0)
        self.b_dec.copy_((x * self.scale).mean(0))
        if self.pre_bias == "untied":
            self.b_pre.copy_(self.b_dec)

    @torch.no_grad()
    def track_fired(self, fired: torch.Tensor, tokens: int) -> None:
        """``fired`` (m,) bool: which latents were non-zero on a batch of ``tokens`` tokens."""
        self.since_fired += tokens
        self.since_fired[fired] = 0

    @torch.no_grad()
    def track(self, z: torch.Tensor) -> None:
        """Count the tokens since each latent fired; for BatchTopK, follow the inference
        threshold (a running mean of the smallest positive activation of each batch)."""
        z = z.reshape(-1, self.latents)
        self.track_fired(z.amax(0) > 0, z.shape[0])  # z ≥ 0: its column max says whether it fired
        if self.architecture == "batchtopk":
            pos = z[z > 0]
            if pos.numel():
                low = pos.min()
                self.threshold.copy_(low if float(self.threshold) == 0 else 0.99 * self.threshold + 0.01 * low)

    def dead(self, window: int) -> torch.Tensor:
        """Boolean mask of the latents that have not fired in the last ``window`` tokens."""
        return self.since_fired >= window

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the part of each decoder row's gradient along the row (with unit rows, the
        step then moves on the sphere's tangent; the renorm after it is a small correction)."""
        if self.unit_decoder and self.W_dec.grad is not None:
            w, g = self.W_dec, self.W_dec.grad
            g -= (g * w).sum(1, keepdim=True) * w

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        if self.unit_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


# --------------------------------------------------------------------- losses


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Σ_d (x − x̂)², averaged over tokens."""
    return (x - x_hat).pow(2).sum(-1).mean()


def sparsity_loss(z: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Σ_i z_i ‖W_dec,i‖₂ (z ≥ 0), averaged over tokens: the decoder-norm-weighted L1 (as one
    matrix-vector product: a third of the elementwise form's time, forward and backward)."""
    return (z @ W_dec.norm(dim=1)).mean()


def auxk_loss(sae: SparseAutoencoder, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor,
              k_aux: int) -> torch.Tensor:
    """Gao et al.'s auxiliary loss: the ``k_aux`` largest pre-activations among dead latents
    (raw, not ReLU'd, as sae-lens does: a latent whose pre-activation sank far below zero
    would otherwise get no gradient and stay dead) reconstruct the main reconstruction's residual (no decoder bias), normalised by
    the residual's variance. 0 when no latent is dead. Inputs in the SAE's scaled units."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k = min(k_aux, n_dead)
    masked = pre.masked_fill(~dead, -math.inf)
    vals, idx = masked.topk(k, dim=-1)
    z_aux = torch.zeros_like(pre).scatter(-1, idx, vals)  # no ReLU: a latent far below 0 still gets a gradient
    e_hat = z_aux @ sae.W_dec
    e = residual.detach()
    denom = (e - e.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return (e - e_hat).pow(2).sum(-1).mean() / denom


# --------------------------------------------------------------------- metrics


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 − Σ (x − x̂)² / Σ (x − x̄)² over the tokens of x (N, d)."""
    x, x_hat = x.double(), x_hat.double()
    total = (x - x.mean(0)).pow(2).sum()
    return float(1 - (x - x_hat).pow(2).sum() / total) if total > 0 else math.nan


def sae_metrics(x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor) -> dict[str, float]:
    """Reconstruction and sparsity of one set of tokens: x, x̂ (N, d), z (N, m)."""
    x2, xh2 = x.reshape(-1, x.shape[-1]), x_hat.reshape(-1, x.shape[-1])
    z2 = z.reshape(-1, z.shape[-1])
    return {"mse": float((x2.double() - xh2.double()).pow(2).mean()),
            "explained_variance": explained_variance(x2, xh2),
            "l0": float((z2 > 0).sum(-1).double().mean()),
            "alive_fraction": float((z2 > 0).any(0).double().mean())}


def fraction_recovered(clean: float, spliced: float, zero: float) -> float:
    """(L_zero − L_sae) / (L_zero − L_clean)."""
    gap = zero - clean
    return (zero - spliced) / gap if gap != 0 else math.nan


__all__ = ["ARCHITECTURES", "PRE_BIAS", "SparseAutoencoder", "auxk_loss", "explained_variance",
           "fraction_recovered", "reconstruction_loss", "sae_metrics", "sparsity_loss"]
