"""Which ``transformers`` the interop supports, checked without importing it."""

from __future__ import annotations

import importlib.util
import sys

MIN_TRANSFORMERS_MAJOR = 5  # the interop targets the v5 cache and config APIs


def transformers_version() -> str | None:
    """The installed ``transformers`` version (None when it is not installed)."""
    tf = sys.modules.get("transformers")
    if tf is None:
        if importlib.util.find_spec("transformers") is None:
            return None
        import transformers as tf
    version = getattr(tf, "__version__", None)
    return version if isinstance(version, str) else None


def transformers_problem() -> str | None:
    """Why archlab.hf cannot work here, in words with the fix (None when it can)."""
    version = transformers_version()
    if version is None:
        return "needs transformers: pip install 'archlab[hf]'"
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = -1
    if major < MIN_TRANSFORMERS_MAJOR:
        return f"needs transformers>={MIN_TRANSFORMERS_MAJOR}, found {version}: pip install -U 'archlab[hf]'"
    return None
