"""archlab: a laboratory for transformer architecture ideas."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so that `import archlab` stays light (no torch): `from archlab import HierarchicalTransformer`.
    if name == "HierarchicalTransformer":
        from archlab.models.hierarchical import HierarchicalTransformer

        return HierarchicalTransformer
    raise AttributeError(f"module 'archlab' has no attribute {name!r}")

# --- transformers interop hook (owner: archlab.hf) --------------------------------------------
# Registers model type "archlab" with transformers' Auto classes lazily, only once the program
# imports transformers' auto modules; a few ms at import otherwise. See archlab/hf/_hook.py.
from archlab.hf._hook import install as _install_hf_hook  # noqa: E402

_install_hf_hook()
del _install_hf_hook
# --- end transformers interop hook ---------------------------------------------------------------
