"""archlab: a laboratory for transformer architecture ideas."""

__version__ = "0.1.0"
