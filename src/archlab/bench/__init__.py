"""Benchmarks: speed, memory and training quality of archlab's parts, side by side with peers.

One harness (:mod:`.harness`: shapes, timed steps, the matmul peak, foreign-CPU detection), one
interleaving runner (:mod:`.interleave`), the shared options (:mod:`.options`), the peers
(:mod:`.peers`) and one module per benchmark. The lab (:mod:`archlab.lab`) does not import this
package; results are committed under ``docs/results/bench/``.
"""

from __future__ import annotations

# ``archlab bench NAME [options]``: NAME -> (module, function taking (argv, mode) -> exit code,
# one-line summary). A benchmark is one module with a ``main(argv, mode)``; adding one is one
# line here. ``archlab bench NAME --help`` is that module's own page.
BENCHES: dict[str, tuple[str, str, str]] = {
    "train": ("archlab.bench.throughput", "main", "training tokens/s and MFU at the reference shape, vs x-transformers"),
    "generate": ("archlab.bench.throughput", "main", "cached decoding tokens/s at the reference shape, vs x-transformers"),
    "all": ("archlab.bench.throughput", "main", "train, then generate, in one run"),
    "scaling": ("archlab.bench.scaling", "main", "time and peak memory of one block per mixer against sequence length"),
    "hier": ("archlab.bench.hierarchical", "main", "hierarchical family vs simple-hierarchical-transformer"),
    "local": ("archlab.bench.local", "main", "sliding-window attention vs full attention and local-attention"),
    "variants": ("archlab.bench.variants", "main", "training-step time of config variants against a baseline"),
    "quality": ("archlab.bench.quality", "main", "validation bpb after equal training, archlab vs x-transformers"),
    "frontend": ("archlab.bench.frontend", "main", "log-mel feature speed vs transformers' and openai-whisper's"),
    "echo": ("archlab.bench.echo", "main", "Echo vs transformers' Whisper of the same dims: training step, greedy decoding"),
    "retnet": ("archlab.bench.retnet", "main", "RetNet vs yet-another-retnet: training step by length, recurrent decoding"),
    "method": ("archlab.bench.method", "main", "step time and peak memory: backprop vs forward-gradient steps"),
    "compress": ("archlab.bench.compress", "main", "lossless weight compression: archlab's codec vs zipnn and plain zstd"),
    "sae": ("archlab.bench.sae", "main", "sparse-autoencoder training tokens/s vs sae-lens on the same activations"),
}
