"""Training methods: how one micro-batch's gradient reaches ``param.grad`` (``train.method``).

The trainer owns everything around it (batches, accumulation over micro-batches, DDP's gradient
sync, clipping, the optimiser step, skipping non-finite steps); a method computes the model's
output on a micro-batch and accumulates the gradient of ``loss / accum`` into the parameters.
``backprop`` is reverse-mode autodiff; a forward-gradient method registers beside it.
"""

from __future__ import annotations

from typing import Any

import torch

from archlab.train import distributed


class Backprop:
    """The exact gradient by backpropagation (``loss.backward()``)."""

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg

    def micro_step(self, trainer: Any, xs: torch.Tensor, ys: torch.Tensor, *, accum: int) -> tuple[Any, bool]:
        """The model output on (xs, ys) and whether its loss was finite on every rank; the
        gradient of ``loss / accum`` is accumulated only when it was (else nothing is touched)."""
        with trainer.autocast():
            out = trainer.forward(xs, targets=ys)
        loss = out.loss / accum
        finite = distributed.all_true(bool(torch.isfinite(loss)), trainer.dist, trainer.device)
        if finite:
            loss.backward()
        return out, finite


RECORD = "forward_gradient.jsonl"  # a forward-gradient run's per-step scalars, in its run folder


class ForwardGradient:
    """A gradient estimate without a backward pass (``train.method: forward_gradient``; the
    knobs and the estimators in :class:`archlab.catalog.methods.ForwardGradientConfig`).

    Per micro-batch: K perturbations ν_k, each regenerated from (seed, step, micro-batch, k)
    by its own generator; d_k = ∇L·ν_k by ``torch.func.jvp`` (forward mode: no activations are
    kept for a backward pass; attention runs on SDPA's math backend, the one with forward AD);
    then the estimate Σ c_k ν_k goes into ``param.grad`` and the trainer's optimiser step runs
    as for backprop. The scalars d_k are appended to ``forward_gradient.jsonl`` in the run
    folder: with the config, they are the whole run — ``replay`` takes them from such a file
    instead of computing them, regenerates the ν_k and reaches the same weights, bit for bit."""

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg
        self._replay: dict[tuple[int, int], dict] | None = None
        self._at: tuple[int, int] = (-1, 0)  # (step, micro-batch) of the last call
        self._trimmed = False

    # ----------------------------------------------------------------- perturbations

    @staticmethod
    def perturbation(params: list[torch.Tensor], fg: Any, step: int, micro: int, k: int) -> list[torch.Tensor]:
        g = torch.Generator(device=params[0].device)
        g.manual_seed(((fg.seed * 1_000_003 + step) * 1_009 + micro) * 100_003 + k)
        out = []
        for p in params:
            if fg.distribution == "gaussian":
                v = torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype)
            else:
                v = torch.randint(0, 2, p.shape, generator=g, device=p.device).to(p.dtype).mul_(2).sub_(1)
                if fg.distribution == "ternary" and fg.density < 1:
                    v.mul_(torch.rand(p.shape, generator=g, device=p.device) < fg.density)
            out.append(v)
        return out

    @staticmethod
    def coefficients(d: list[float], estimator: str) -> list[float]:
        """The weights c_k of Σ c_k ν_k from the directional derivatives d_k."""
        K = len(d)
        if estimator == "scaled":
            return [x / K for x in d]
        med = float(torch.tensor([abs(x) for x in d], dtype=torch.float64).median())
        return [(1.0 if x > 0 else -1.0 if x < 0 else 0.0) / K if abs(x) >= med else 0.0 for x in d]

    # ----------------------------------------------------------------- one micro-batch

    def _record_path(self, trainer: Any):
        return trainer.dir / RECORD

    def _load_replay(self, fg: Any) -> dict[tuple[int, int], dict]:
        import json
        from pathlib import Path

        from archlab.registry import ConfigError

        path = Path(fg.replay)
        if not path.is_file():
            raise ConfigError(f"train.forward_gradient.replay: {path} not found (a run's {RECORD})")
        recs = {}
        for line in path.read_text().splitlines():
            r = json.loads(line)
            recs[(int(r["step"]), int(r["micro"]))] = r
        return recs

    def micro_step(self, trainer: Any, xs: torch.Tensor, ys: torch.Tensor, *, accum: int) -> tuple[Any, bool]:
        import json
        import math

        from torch.func import functional_call, jvp
        from torch.nn.attention import SDPBackend, sdpa_kernel

        from archlab.models.lm import ModelOutput
        from archlab.train.runlock import trim_metrics

        fg = trainer.cfg.train.forward_gradient
        step = trainer.step + 1  # the step this micro-batch belongs to, counted as metrics.jsonl does
        micro = self._at[1] + 1 if self._at[0] == step else 0
        self._at = (step, micro)
        if not self._trimmed:  # a resumed run: the records after its checkpoint are trained again
            trim_metrics(self._record_path(trainer), trainer.step)
            self._trimmed = True
        named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
        names, params = [n for n, _ in named], [p for _, p in named]
        if fg.replay:
            if self._replay is None:
                self._replay = self._load_replay(fg)
            rec = self._replay.get((step, micro))
            if rec is None:
                from archlab.registry import ConfigError

                raise ConfigError(f"train.forward_gradient.replay: {fg.replay} has no record of step {step} "
                                  f"(micro-batch {micro}); it holds a shorter run")
            d, loss_v, nll_v = [float(x) for x in rec["d"]], float(rec["loss"]), float(rec["nll"])
        else:
            values = tuple(p.detach() for p in params)

            def loss_fn(*vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                with trainer.autocast():
                    out = functional_call(trainer.model, dict(zip(names, vals)), (xs,), {"targets": ys})
                return out.loss, out.nll.detach()

            d = []
            with sdpa_kernel(SDPBackend.MATH):
                for k in range(fg.perturbations):
                    tangents = tuple(self.perturbation(params, fg, step, micro, k))
                    loss, dk, nll = jvp(loss_fn, values, tangents, has_aux=True)
                    d.append(float(dk))
            loss_v, nll_v = float(loss), float(nll)
        finite = math.isfinite(loss_v) and all(math.isfinite(x) for x in d)
        if finite:
            with torch.no_grad():
                for k, c in enumerate(self.coefficients(d, fg.estimator)):
                    if c == 0.0:
                        continue
                    for p, v in zip(params, self.perturbation(params, fg, step, micro, k)):
                        if p.grad is None:
                            p.grad = torch.zeros_like(p)
                        p.grad.add_(v, alpha=c / accum)
        if not fg.replay and trainer.dist.rank == 0:
            with self._record_path(trainer).open("a") as f:
                f.write(json.dumps({"step": step, "micro": micro, "loss": loss_v, "nll": nll_v, "d": d}) + "\n")
        t = torch.tensor(loss_v)
        return ModelOutput(logits=torch.empty(0), loss=t, nll=torch.tensor(nll_v)), finite
