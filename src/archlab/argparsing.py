"""Command-line parsing shared by ``archlab`` and its benchmarks.

It sits on the bottom floor (no archlab imports) so that the benchmark modules, which parse
their own options, need not import the CLI above them.
"""

from __future__ import annotations

import argparse
import re
from typing import Any


class ArgumentParser(argparse.ArgumentParser):
    """argparse with each option's default at the end of its help line and the description
    and epilog (examples) printed as written. Used by every ``archlab`` page, the benchmarks'
    included, so a user never has to read the source for a default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        """argparse's own mistakes (a missing flag, ``--top-k abc``, an unknown option) in the
        house format: one line, exit 2, instead of a usage block followed by the message."""
        command = self.prog.removeprefix("archlab").strip()
        where = f"{command}: " if command else ""
        hint = f"; see '{self.prog} --help'"
        self.exit(2, f"archlab: error: {where}{message}{hint}\n")

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        text, default = kwargs.get("help"), kwargs.get("default")
        # None / False / []: "not given" (said in the help text where it matters), not a value
        unset = default is None or default is False or default is argparse.SUPPRESS \
            or (isinstance(default, (list, tuple)) and not default)
        if text and text is not argparse.SUPPRESS and "default" not in text and not unset:
            shown = ",".join("none" if v is None else str(v) for v in default) \
                if isinstance(default, (tuple, list)) else str(default)
            kwargs["help"] = f"{text} (default: {shown.replace('%', '%%')})"
        return super().add_argument(*names, **kwargs)


def plain(doc: str) -> str:
    """A module docstring's first paragraph as help text: a benchmark's page then says what
    its module says, without the reST markup (double backquotes, roles such as :func:) and
    the leading "archlab bench X:" title that make sense only in the source."""
    text = doc.strip().split("\n\n")[0]
    text = re.sub(r"^``archlab [^`]+``:\s*", "", text)
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    text = text.replace("``", "")
    return text[:1].upper() + text[1:]
