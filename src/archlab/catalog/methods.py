"""Training methods by kind (``train.method``): how a step obtains its gradient. The methods
are built by :mod:`archlab.train.methods` (declared here so the config validates the name
without importing the trainer)."""

from __future__ import annotations

from archlab.registry import METHOD, PartConfig

METHOD.declare("backprop", PartConfig, "the exact gradient by backpropagation", build="archlab.train.methods:Backprop")
