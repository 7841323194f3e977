"""archlab: a laboratory for transformer architecture ideas."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so that `import archlab` stays light (no torch): `from archlab import HierarchicalTransformer`.
    if name == "HierarchicalTransformer":
        from archlab.models.hierarchical import HierarchicalTransformer

        return HierarchicalTransformer
    raise AttributeError(f"module 'archlab' has no attribute {name!r}")
