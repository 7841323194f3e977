"""The catalogue: every built-in part registered by kind, with the dataclass of its knobs.

``nn/`` holds pure modules; this package maps config names onto them, one module per registry
group (positions, mixers, ffn, norms, residual, init, methods, families, compressors, dynamics, warm, tasks). A new part is one module in ``nn/`` plus one
registration in its group's module here, and the shared property tests (parametrised over
the registries) cover it from then on. The synthetic tasks (``tasks.py``) live here too: their
knobs and generators depend only on the registry and numpy, and the config validates
``data.task`` against them, so they sit on the config's floor; ``data/taskdata.py`` turns them
into token streams.
"""

from archlab.catalog import compressors, dynamics, families, ffn, init, methods, mixers, norms, positions, residual, warm  # noqa: F401
from archlab.catalog import tasks  # noqa: F401  (synthetic tasks: knobs and generators)
from archlab.catalog.context import BuildContext

__all__ = ["BuildContext"]
