"""Lazy registration of model type ``"archlab"`` with Hugging Face ``transformers``.

Why lazy: on a typical machine ``import transformers`` plus the imports that registration
needs (``AutoConfig``, ``AutoModelForCausalLM``, ``PreTrainedModel``) take several seconds
(measured ≈ 5 s here, see ``tests/test_hf.py::test_import_archlab_stays_fast``), far above
the budget of ``import archlab`` for the CLI. So ``import archlab`` only installs a tiny
:data:`sys.meta_path` finder (this module imports nothing but ``sys``/``threading``) that
never imports ``transformers`` itself; it waits for the program to import it.

Mechanism, in three triggers that all end in :func:`sync`:

1. ``transformers.models.auto.configuration_auto`` finishes importing (anything that touches
   ``AutoConfig``): the finder's loader wrapper runs :func:`sync`, which registers
   :class:`~archlab.hf.configuration.ArchlabConfig` under ``"archlab"``. Cheap: that module
   only needs ``transformers.configuration_utils``, which is loaded by then.
2. ``transformers.models.auto.modeling_auto`` finishes importing: the model class is
   registered with ``AutoModelForCausalLM`` *if it is wanted* (see 3). It is not registered
   unconditionally because defining it imports ``transformers.modeling_utils`` (≈ 3.5 s), and
   ``modeling_auto`` is also imported by e.g. ``AutoTokenizer`` users who never touch archlab.
3. The model class becomes wanted when an :class:`ArchlabConfig` is instantiated or
   :mod:`archlab.hf.modeling` is imported. Every path to an archlab model through the Auto
   classes instantiates the config first (``from_pretrained`` reads ``config.json`` into an
   ``ArchlabConfig``; ``from_config`` receives one), and the Auto classes look the model class
   up by ``type(config)`` only after that, so the registration is always in place in time.

Once both auto modules have been imported the finder removes itself from ``sys.meta_path``.
If ``transformers`` was imported before ``archlab``, :func:`install` registers on the spot.
A failure while registering is reported as a ``RuntimeWarning`` and never breaks the
import of ``transformers``. Versions of ``transformers`` older than 5 are skipped silently
(the interop targets the v5 cache and config APIs); :mod:`archlab.hf` raises a clear
``ImportError`` for them when used directly.
"""

from __future__ import annotations

import _thread
import sys

# Deliberately no `typing`/`threading` import: this module runs on every `import archlab`,
# and those two cost ~20 ms cold. Annotations below are strings (postponed), never evaluated.

MODEL_TYPE = "archlab"
_CONFIG_AUTO = "transformers.models.auto.configuration_auto"
_MODELING_AUTO = "transformers.models.auto.modeling_auto"
_WATCHED = frozenset((_CONFIG_AUTO, _MODELING_AUTO))
MIN_TRANSFORMERS_MAJOR = 5

# RLock: registering imports archlab.hf.modeling, whose last line calls want_model() -> sync().
_lock = _thread.RLock()


class _State:
    config_registered = False
    model_registered = False
    model_wanted = False


def transformers_supported() -> bool:
    """Whether the imported ``transformers`` (if any) is a version this interop supports."""
    tf = sys.modules.get("transformers")
    version = getattr(tf, "__version__", None)
    if not isinstance(version, str):
        return False
    try:
        return int(version.split(".")[0]) >= MIN_TRANSFORMERS_MAJOR
    except ValueError:
        return False


def _ready(name: str, attr: str) -> object:
    """The module ``name`` if it is imported far enough to have ``attr`` (else None: a module
    still executing further up the stack will run :func:`sync` again when it finishes)."""
    mod = sys.modules.get(name)
    return mod if mod is not None and hasattr(mod, attr) else None


def sync() -> None:
    """Register whatever can be registered now; idempotent and cheap when nothing is new."""
    with _lock:
        if not transformers_supported():
            return
        cfg_auto = _ready(_CONFIG_AUTO, "AutoConfig")
        if cfg_auto is not None and not _State.config_registered:
            _State.config_registered = True
            from archlab.hf.configuration import ArchlabConfig

            cfg_auto.AutoConfig.register(MODEL_TYPE, ArchlabConfig, exist_ok=True)
        mdl_auto = _ready(_MODELING_AUTO, "AutoModelForCausalLM")
        if mdl_auto is not None and _State.model_wanted and not _State.model_registered:
            # Set first: importing archlab.hf.modeling re-enters sync() from its last line.
            _State.model_registered = True
            from archlab.hf.configuration import ArchlabConfig
            from archlab.hf.modeling import ArchlabForCausalLM

            mdl_auto.AutoModelForCausalLM.register(ArchlabConfig, ArchlabForCausalLM, exist_ok=True)
        if all(n in sys.modules for n in _WATCHED):
            uninstall()


def want_model() -> None:
    """Mark the model class as needed (an ArchlabConfig exists or the modeling module loaded)."""
    with _lock:
        if _State.model_wanted:
            return
        _State.model_wanted = True
    sync()


def _safe_sync() -> None:
    try:
        sync()
    except Exception as e:  # never break `import transformers` because of archlab
        import warnings

        warnings.warn(f"archlab: could not register model type '{MODEL_TYPE}' with transformers: {e!r}",
                      RuntimeWarning, stacklevel=2)


class _NotifyingLoader:
    """Wraps the real loader of a watched module and runs :func:`sync` after it executed.

    The module gets its real loader back before executing, so ``__loader__``/``__spec__``
    (used by ``inspect``, ``importlib.resources``, reloads) never show this wrapper.
    """

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def create_module(self, spec: object) -> object:
        create = getattr(self._inner, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: object) -> None:
        module.__loader__ = self._inner
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._inner
        self._inner.exec_module(module)
        _safe_sync()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


class _AutoModuleWatcher:
    """A ``sys.meta_path`` finder that only reacts to the two transformers auto modules.

    It asks the finders behind it for the real spec and swaps in :class:`_NotifyingLoader`;
    for every other module it returns None at the cost of one set lookup.
    """

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname not in _WATCHED:
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _NotifyingLoader(spec.loader)
                return spec
        return None

    def invalidate_caches(self) -> None:
        pass


_watcher = _AutoModuleWatcher()


def install() -> None:
    """Called by ``import archlab``: put the watcher in place (or register at once if
    transformers' auto modules are already imported)."""
    if any(n in sys.modules for n in _WATCHED):
        _safe_sync()
    if not all(n in sys.modules for n in _WATCHED) and _watcher not in sys.meta_path:
        sys.meta_path.insert(0, _watcher)


def uninstall() -> None:
    if _watcher in sys.meta_path:
        sys.meta_path.remove(_watcher)


def register() -> None:
    """Eager registration: import the transformers Auto modules and register config and model.

    For programs that want the Auto classes ready without relying on the lazy triggers.
    """
    import transformers

    if not transformers_supported():
        raise ImportError(
            f"archlab.hf needs transformers>={MIN_TRANSFORMERS_MAJOR}, found {transformers.__version__}"
        )
    import transformers.models.auto.configuration_auto  # noqa: F401  (runs sync via the watcher)
    import transformers.models.auto.modeling_auto  # noqa: F401

    want_model()
    sync()
