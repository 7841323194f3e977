"""Train a sparse autoencoder on a trained run's activations at one site.

    archlab sae train runs/lm --site blocks.1.out --out runs/sae --set architecture=topk --set k=16

The activations are streamed: each step draws a batch of windows from the run's own training
data through its objective's sampler (a pure function of the SAE's seed and the step), runs
the frozen model to the site under :func:`~archlab.models.capture.capture` and trains on those
tokens; nothing is held beyond one batch. The SAE folder holds ``sae.yaml`` (the resolved
settings and the run they read), ``metrics.jsonl``, ``checkpoint.safetensors`` (written through
the training checkpoint code: atomic, checksummed, with the optimiser) and ``summary.json``.
``--resume`` continues exactly where a stop left off (the same tensors as an unbroken run);
one process writes a folder at a time; Ctrl-C / SIGTERM end the step, save it and exit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from archlab.analysis.sae import SparseAutoencoder, auxk_loss, reconstruction_loss
from archlab.atomic import write_text_atomic
from archlab.config import apply_overrides, load_yaml
from archlab.models.capture import capture, site_module
from archlab.models.lm import IGNORE_INDEX
from archlab.registry import ConfigError, from_dict, to_dict
from archlab.train.checkpoint import CHECKPOINT, load_checkpoint, read_checkpoint, save_checkpoint
from archlab.train.objectives import objective_for
from archlab.train.optim import lr_at
from archlab.train.runlock import RunLock, trim_metrics
from archlab.train.trainer import STOP_SIGNALS, Interrupted

SETTINGS = "sae.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


@dataclass
class SAEConfig:
    """Every knob of ``archlab sae train`` (``--set KEY=VALUE``)."""

    site: str = ""                     # where the activations are read (archlab.models.capture)
    architecture: Literal["relu", "topk", "batchtopk"] = "topk"
    expansion: int = 8                 # latents = expansion × the site's width ...
    latents: int = 0                   # ... unless given here
    k: int = 16                        # active latents per token (topk, batchtopk)
    pre_bias: Literal["tied", "untied", "none"] = "tied"
    unit_decoder: bool = True          # decoder rows kept at unit norm
    l1: float = 1.0                    # the ReLU SAE's sparsity coefficient λ (scaled inputs, E‖x‖ = √d)
    l1_warmup: int = 0                 # steps over which λ rises linearly from 0
    normalize: bool = True             # scale inputs so that their mean norm is √d
    tokens: int = 1_000_000            # training budget, in activation tokens
    batch: int = 8                     # windows per step
    seq_len: int = 0                   # window length (0: the run's train.seq_len)
    lr: float = 1e-3
    warmup: int = 50                   # steps of linear learning-rate warmup, then cosine decay ...
    min_lr_ratio: float = 0.1          # ... to lr × this at the end
    dead_window: int = 100_000         # a latent silent for this many tokens is dead
    dead: Literal["auto", "auxk", "resample", "none"] = "auto"  # auto: auxk for topk kinds, resample for relu
    aux_k: int = 0                     # AuxK's latents (0: half the site's width)
    aux_coef: float = 1 / 32           # AuxK's weight α
    resample_every: int = 0            # steps between resamplings of dead latents (0: 4 in the budget)
    seed: int = 0
    ckpt_every: int = 200              # steps between checkpoints
    log_every: int = 10                # steps between metrics.jsonl records
    eval_tokens: int = 32_768          # tokens ``archlab sae report`` scores (validation split)

    @property
    def dead_method(self) -> str:
        if self.dead != "auto":
            return self.dead
        return "resample" if self.architecture == "relu" else "auxk"


_POSITIVE = ("expansion", "k", "tokens", "batch", "dead_window", "ckpt_every", "log_every", "eval_tokens")
_NONNEGATIVE = ("latents", "l1_warmup", "seq_len", "warmup", "aux_k", "resample_every", "seed")
# knobs an architecture or dead-latent method does not read: a changed value would do nothing
_ONLY = {"k": ("architecture", ("topk", "batchtopk")), "l1": ("architecture", ("relu",)),
         "l1_warmup": ("architecture", ("relu",)), "aux_k": ("dead", ("auxk",)), "aux_coef": ("dead", ("auxk",)),
         "resample_every": ("dead", ("resample",))}


def parse_sae_config(raw: dict, overrides: list[str] | None = None) -> SAEConfig:
    """Settings from a mapping and ``--set`` items, checked in one line each (nothing runs first)."""
    cfg = from_dict(SAEConfig, apply_overrides(dict(raw), overrides), "sae")
    for name in _POSITIVE:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"sae.{name}: must be ≥ 1, got {getattr(cfg, name)}")
    for name in _NONNEGATIVE:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"sae.{name}: must be ≥ 0, got {getattr(cfg, name)}")
    for name in ("lr", "l1", "aux_coef"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"sae.{name}: must be > 0, got {getattr(cfg, name)}")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError(f"sae.min_lr_ratio: must be in [0, 1], got {cfg.min_lr_ratio}")
    if not cfg.site:
        raise ConfigError("sae.site: required (--site), e.g. blocks.1.out; 'archlab sae sites RUN' lists them")
    if cfg.dead == "auxk" and cfg.architecture == "relu":
        raise ConfigError("sae.dead: auxk needs architecture topk or batchtopk; a relu SAE takes resample or none")
    default = SAEConfig()
    for name, (key, allowed) in _ONLY.items():
        value = cfg.dead_method if key == "dead" else getattr(cfg, key)
        if getattr(cfg, name) != getattr(default, name) and value not in allowed:
            raise ConfigError(f"sae.{name}: only read when {key} is {' or '.join(allowed)} ({key} is {value}); "
                              f"leave it out")
    return cfg


# --------------------------------------------------------------------- the activations


class ActivationSource:
    """Batches of (inputs, targets, activations at the site) from a loaded run's data, a pure
    function of (seed, step). ``split``: the run's train split for training, validation for
    the report."""

    def __init__(self, run: Any, site: str, *, batch: int, seq_len: int, seed: int, split: str = "train"):
        self.run, self.site = run, site
        cfg = run.cfg
        self.objective = objective_for(cfg)
        if self.objective.inputs != "tokens" and seq_len:
            raise ConfigError("sae.seq_len: a speech run's batches are utterances; leave it out")
        train = dataclasses.replace(cfg.train, batch=batch, seed=seed, seq_len=seq_len or cfg.train.seq_len)
        limit = getattr(cfg.model, "max_seq_len", None)
        if limit and train.seq_len > limit:
            raise ConfigError(f"sae.seq_len: {train.seq_len} is longer than the model's context "
                              f"(model.max_seq_len {limit})")
        self.cfg = dataclasses.replace(cfg, train=train)
        try:  # an unknown site: one line now, not after the data is read
            site_module(run.model, site)
        except KeyError as e:
            raise ConfigError(f"--site: {e.args[0]}") from None
        streams = self.objective.prepare(self.cfg, run.tokenizer, run.path.parent)
        if split not in streams:
            raise ConfigError(f"sae: the run has no '{split}' split (it has {', '.join(streams)})")
        self.sampler = self.objective.sampler(streams[split], self.cfg, ignore_index=IGNORE_INDEX, rank=0, world=1)
        self.seq_len = train.seq_len

    @torch.no_grad()
    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = self.sampler.batch(step)
        with capture(self.run.model, [self.site]) as acts:
            self.run.model(x, targets=y)  # with targets every family runs: a speech decoder reads them
        a = acts.get(self.site)
        if not isinstance(a, torch.Tensor):
            raise ConfigError(f"sae.site: {self.site!r} is not a single tensor per forward pass; "
                              "choose a block, its mixer or its ffn")
        return x, y, a.float()


# --------------------------------------------------------------------- training


def build_sae(cfg: SAEConfig, d_in: int) -> SparseAutoencoder:
    latents = cfg.latents or cfg.expansion * d_in
    if cfg.architecture != "relu" and cfg.k > latents:
        raise ConfigError(f"sae.k: {cfg.k} active latents of {latents}; allowed: 1..{latents}")
    g = torch.Generator().manual_seed(cfg.seed)
    return SparseAutoencoder(d_in, latents, architecture=cfg.architecture, k=cfg.k, pre_bias=cfg.pre_bias,
                             unit_decoder=cfg.unit_decoder, generator=g)


def sae_step(sae: SparseAutoencoder, opt: torch.optim.Optimizer, acts: torch.Tensor, *, l1: float | None,
             dead_window: int, aux: tuple[int, float] | None) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """One optimiser step of ``sae`` on activations (N, d): the loss (reconstruction, plus
    ``l1`` × the weighted L1 when given, plus ``aux = (k_aux, α)`` × AuxK over the latents dead
    for ``dead_window`` tokens), the decoder-row constraint and the dead-latent counters.
    Returns the scaled inputs, the detached reconstruction and the step's numbers."""
    xs = acts * sae.scale
    pre = sae.pre_activations(acts)
    if sae.architecture == "topk":  # k rows per token: the decoder never sees the dense (N, m) latents
        vals, idx = sae.topk_sparse(pre)
        x_hat = sae.decode_sparse(vals, idx)
        z = None
    else:
        z = sae.activate(pre)
        if l1 is not None:
            x_hat, l1_terms = sae.decode_with_l1(z)
        else:
            x_hat = z @ sae.W_dec + sae.b_dec
    recon = reconstruction_loss(xs, x_hat)
    loss = recon
    out: dict[str, float] = {}
    if l1 is not None:
        sp = l1_terms.mean()  # = sparsity_loss(z, W_dec)
        loss = loss + l1 * sp
        out.update(l1_coef=l1, sparsity=float(sp.detach()))
    if aux is not None:
        a = auxk_loss(sae, pre, xs - x_hat, sae.dead(dead_window), aux[0])
        loss = loss + aux[1] * a
        out["auxk"] = float(a.detach())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    sae.project_decoder_grad()
    opt.step()
    sae.normalise_decoder()
    with torch.no_grad():
        if z is None:
            on = vals > 0
            fired = torch.zeros(sae.latents, dtype=torch.bool)
            fired[idx[on]] = True
            sae.track_fired(fired, acts.shape[0])
            l0 = float(on.sum()) / acts.shape[0]
        else:
            sae.track(z)
            l0 = float(torch.count_nonzero(z)) / acts.shape[0]  # z ≥ 0; (z > 0).sum() is 7× slower
        x_hat = x_hat.detach()
        var = (xs - xs.mean(0)).pow(2).sum()
        out.update(loss=float(loss.detach()), mse=float(recon.detach()) / sae.d_in,
                   explained_variance=float(1 - (xs - x_hat).pow(2).sum() / var) if var > 0 else math.nan, l0=l0)
    return xs, x_hat, out


def total_steps(cfg: SAEConfig, tokens_per_step: int) -> int:
    return max(1, -(-cfg.tokens // tokens_per_step))


class SAETrainer:
    """Owns one SAE folder while it trains (see the module doc)."""

    def __init__(self, run: Any, run_path: str | Path, cfg: SAEConfig, out: str | Path, *, resume: bool = False,
                 progress: bool = True, log: Any = None):
        self.run, self.cfg, self.dir = run, cfg, Path(out)
        self.run_path = str(Path(run_path).resolve())
        self.progress, self.log = progress, log or (lambda line: print(line, file=sys.stderr, flush=True))
        ckpt = self.dir / CHECKPOINT
        if resume:
            if not ckpt.exists():
                raise ConfigError(f"--resume: {self.dir} holds no SAE checkpoint; start it without --resume")
            saved = load_yaml(self.dir / SETTINGS, "the SAE folder's sae.yaml")
            old = {k: v for k, v in saved.get("sae", {}).items() if k != "tokens"}
            new = {k: v for k, v in to_dict(cfg).items() if k != "tokens"}
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if diff:
                raise ConfigError(f"--resume: settings differ from the folder's sae.yaml at {', '.join(diff[:5])}; "
                                  f"only tokens may change")
        elif ckpt.exists():
            raise ConfigError(f"--out {self.dir}: already holds an SAE; pass --resume to continue it or "
                              "choose another folder")
        self.resume = resume
        self.source = ActivationSource(run, cfg.site, batch=cfg.batch, seq_len=cfg.seq_len, seed=cfg.seed)
        first = self.source.batch(0)[2]
        self.d_in = int(first.shape[-1])
        self.sae = build_sae(cfg, self.d_in)
        self.tokens_per_step = int(first[..., 0].numel())
        self.total = total_steps(cfg, self.tokens_per_step)
        self.k_aux = cfg.aux_k or max(1, self.d_in // 2)
        self.resample_every = cfg.resample_every or max(1, self.total // 5)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        self.step = 0
        if not resume:  # a resume loads both from the checkpoint
            self.sae.fit_scale(first.reshape(-1, self.d_in), normalize=cfg.normalize)
        self._stop: int | None = None

    # ----------------------------------------------------------------- one step

    def l1_at(self, step: int) -> float:
        w = self.cfg.l1_warmup
        return self.cfg.l1 * (min(1.0, (step + 1) / w) if w else 1.0)

    def train_step(self, step: int) -> dict[str, Any]:
        cfg, sae = self.cfg, self.sae
        lr = lr_at(step, lr=cfg.lr, warmup=cfg.warmup, total=self.total, min_ratio=cfg.min_lr_ratio)
        for g in self.opt.param_groups:
            g["lr"] = lr
        acts = self.source.batch(step)[2].reshape(-1, self.d_in)
        rec: dict[str, Any] = {"step": step + 1, "tokens": (step + 1) * self.tokens_per_step, "lr": lr}
        xs, x_hat, terms = sae_step(sae, self.opt, acts, l1=self.l1_at(step) if cfg.architecture == "relu" else None,
                                    dead_window=cfg.dead_window, aux=(self.k_aux, cfg.aux_coef)
                                    if cfg.dead_method == "auxk" else None)
        rec.update(terms)
        if cfg.dead_method == "resample" and (step + 1) % self.resample_every == 0 and step + 1 < self.total:
            rec["resampled"] = self.resample(xs, x_hat, step)
        rec["dead_fraction"] = float(sae.dead(cfg.dead_window).float().mean())
        return rec

    @torch.no_grad()
    def resample(self, xs: torch.Tensor, x_hat: torch.Tensor, step: int) -> int:
        """Re-initialise the dead latents toward inputs the SAE reconstructs worst (drawn with
        probability ∝ squared error): decoder row = that input's residual direction, encoder
        column = it × 0.2 × the mean norm of the live encoder columns, bias 0, and their Adam
        moments cleared. Returns how many were resampled."""
        sae = self.sae
        dead = sae.dead(self.cfg.dead_window).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        err = (xs - x_hat).pow(2).sum(-1)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        pick = torch.multinomial(err.clamp_min(1e-12), dead.numel(), replacement=True, generator=g)
        d = xs[pick] - x_hat[pick]
        d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        alive = ~sae.dead(self.cfg.dead_window)
        enc_norm = float(sae.W_enc[:, alive].norm(dim=0).mean()) if alive.any() else 1.0
        sae.W_dec[dead] = d
        sae.W_enc[:, dead] = d.t() * 0.2 * enc_norm
        sae.b_enc[dead] = 0
        for p, index in ((sae.W_dec, (dead,)), (sae.W_enc, (slice(None), dead)), (sae.b_enc, (dead,))):
            state = self.opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][index] = 0
        sae.since_fired[dead] = 0
        return int(dead.numel())

    # ----------------------------------------------------------------- the loop

    def _state(self) -> dict[str, Any]:
        return {"step": self.step, "sae": to_dict(self.cfg), "run": self.run_path, "d_in": self.d_in,
                "latents": self.sae.latents, "tokens_per_step": self.tokens_per_step}

    def save(self) -> None:
        save_checkpoint(self.dir / CHECKPOINT, model=self.sae, optimizer=self.opt, state=self._state())

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop is not None:
            raise Interrupted(signum, f"interrupted again by {signal.Signals(signum).name}; "
                                      "not saved beyond the last checkpoint")
        self._stop = signum

    def fit(self) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.dir).acquire()
        old_handlers = {}
        bar = None
        try:
            if self.resume:
                state = load_checkpoint(self.dir / CHECKPOINT, model=self.sae, optimizer=self.opt)
                self.step = int(state["step"])
                trim_metrics(self.dir / METRICS, self.step)
            else:
                (self.dir / METRICS).unlink(missing_ok=True)
            write_text_atomic(self.dir / SETTINGS, _settings_yaml(self.cfg, self.run_path, self.d_in,
                                                                  self.sae.latents))
            for sig in STOP_SIGNALS:
                try:
                    old_handlers[sig] = signal.signal(sig, self._on_signal)
                except ValueError:  # not the main thread
                    break
            if self.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=self.total, initial=self.step, unit="step", dynamic_ncols=True, file=sys.stderr)
            start, first_step = time.perf_counter(), self.step
            rec: dict[str, Any] = {}
            with (self.dir / METRICS).open("a") as f:
                while self.step < self.total:
                    rec = self.train_step(self.step)
                    self.step += 1
                    last = self.step == self.total
                    if self.step % self.cfg.log_every == 0 or last:
                        f.write(json.dumps(rec) + "\n")
                        f.flush()
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(mse=f"{rec['mse']:.4f}", l0=f"{rec['l0']:.1f}",
                                        dead=f"{rec['dead_fraction']:.2f}")
                    if self.step % self.cfg.ckpt_every == 0 or last or self._stop is not None:
                        self.save()
                    if self._stop is not None:
                        name = signal.Signals(self._stop).name
                        raise Interrupted(self._stop, f"interrupted by {name}: SAE checkpoint saved at step "
                                                      f"{self.step}; continue with --resume")
            seconds = time.perf_counter() - start
            trained = (self.step - first_step) * self.tokens_per_step
            summary = {"steps": self.step, "tokens": self.step * self.tokens_per_step, "site": self.cfg.site,
                       "d_in": self.d_in, "latents": self.sae.latents, "seconds": seconds,
                       "tokens_per_second": trained / seconds if seconds > 0 else None,
                       **{k: rec[k] for k in ("mse", "explained_variance", "l0", "dead_fraction") if k in rec}}
            write_text_atomic(self.dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
            return summary
        finally:
            if bar is not None:
                bar.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            lock.release()


def _settings_yaml(cfg: SAEConfig, run_path: str, d_in: int, latents: int) -> str:
    import yaml

    return yaml.safe_dump({"run": run_path, "d_in": d_in, "latents": latents, "sae": to_dict(cfg)},
                          sort_keys=False)


def load_sae(folder: str | Path) -> tuple[SparseAutoencoder, SAEConfig, dict]:
    """A trained SAE folder -> (the SAE in eval mode, its settings, the checkpoint state)."""
    ckpt = Path(folder) / CHECKPOINT
    if not ckpt.is_file():
        raise ConfigError(f"{folder}: no SAE here (no {CHECKPOINT}); train one with archlab sae train")
    tensors, meta = read_checkpoint(ckpt)
    state = meta.get("state", {})
    if "sae" not in state or "d_in" not in state:
        raise ConfigError(f"{ckpt}: not an SAE checkpoint (a model run? archlab eval reads those)")
    cfg = from_dict(SAEConfig, state["sae"], "sae")
    sae = build_sae(cfg, int(state["d_in"]))
    load_checkpoint(ckpt, model=sae, restore_rng=False, read=(tensors, meta))
    return sae.eval(), cfg, state


__all__ = ["ActivationSource", "SAEConfig", "SAETrainer", "build_sae", "load_sae", "parse_sae_config", "sae_step"]
