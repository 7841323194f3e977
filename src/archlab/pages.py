"""Pages of blocks rendered as Markdown and as one self-contained HTML file: what the lab's
comparison reports and the analysis tools' reports (``archlab redshift``) are written with.

A page is a list of blocks: ``("h1"|"h2"|"p", text)``, ``("kv", [(key, value, is_code)])``,
``("table", header, rows)`` and ``("img", name, caption)`` for ``plots/<name>.png``. The HTML
inlines each PNG as a base64 data URI, so the one file can be mailed or attached.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

Block = tuple


def md_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|")

    align = ["---" if i == 0 or h in ("status", "verdict") else "---:" for i, h in enumerate(header)]
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_md(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if b[0] in ("h1", "h2"):
            parts.append(("# " if b[0] == "h1" else "## ") + b[1])
        elif b[0] == "p":
            parts.append(b[1])
        elif b[0] == "kv":
            parts.append("\n".join(f"- **{k}**: " + (f"`{v}`" if code else str(v)) for k, v, code in b[1]))
        elif b[0] == "table":
            parts.append(md_table(b[1], b[2]))
        elif b[0] == "img":
            parts.append(f"![{b[2]}](plots/{b[1]}.png)\n\n*{b[2]}* (`plots/{b[1]}.png`)")
    return "\n\n".join(parts) + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:0.9em;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "figure{margin:1em 0}figcaption{font-size:0.85em;color:#555}img{max-width:100%}"
        "code{background:#f4f4f4;padding:1px 4px}")


def render_html(blocks: list[Block], plot_paths: dict[str, Path]) -> str:
    """One self-contained page: PNGs inlined as data URIs; each figure names its file in alt and caption."""
    e = html.escape
    body = []
    for b in blocks:
        if b[0] in ("h1", "h2", "p"):  # *x* is the only inline markup the blocks use
            body.append(f"<{b[0]}>" + re.sub(r"\*([^*\n]+)\*", r"<em>\1</em>", e(b[1])) + f"</{b[0]}>")
        elif b[0] == "kv":
            items = "".join(f"<li><b>{e(k)}</b>: " + (f"<code>{e(str(v))}</code>" if code else e(str(v))) + "</li>"
                            for k, v, code in b[1])
            body.append(f"<ul>{items}</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "img":
            data = base64.b64encode(plot_paths[b[1]].read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="plots/{b[1]}.png">'
                        f"<figcaption>{e(b[2])} (<code>plots/{b[1]}.png</code>)</figcaption></figure>")
    title = e(blocks[0][1]) if blocks and blocks[0][0] == "h1" else "archlab report"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


__all__ = ["Block", "md_table", "render_html", "render_md"]
