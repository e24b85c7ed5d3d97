"""The layer index (``gradscope/layers``): a table in the Text tab, read back by ``gradscope report``.

Each series' network order, name, kind, type, activation family, module, call
index and shape, as a markdown table that TensorBoard's Text tab draws, followed
by one JSON object per layer inside an HTML comment, which the Text tab does not
show and :func:`parse_layers_text` reads (as it reads the JSON lines that earlier
versions showed instead of the table).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from gradscope.history import LayerInfo

__all__ = ["layers_text", "parse_layers_text"]


def layers_text(infos: Sequence[LayerInfo]) -> str:
    """The ``gradscope/layers`` text: a markdown table of the layers for the Text tab,
    then one JSON object per layer in an HTML comment (not shown) that
    :func:`parse_layers_text` reads back.

    Example:
        >>> text = layers_text([LayerInfo("features.1", "activation", 0, "ReLU", "relu",
        ...                               "features.1", shape=(16, 12))])
        >>> print(text.splitlines()[4])
        | 0 | `features.1` | activation | ReLU | relu | `features.1` | 0 | 16×12 |
        >>> parse_layers_text(text)[0].shape
        (16, 12)
    """
    lines = ["gradscope layer index: each series' network order, kind, type and activation "
             "family (`gradscope report` reads it back).", "",
             "| order | name | kind | type | family | module | call | shape |",
             "|---:|---|---|---|---|---|---:|---|"]
    for info in infos:
        shape = "×".join(str(n) for n in info.shape) if info.shape is not None else "–"
        cells = [str(info.order), _code(info.name), info.kind, _escape(info.type),
                 _escape(info.family or "–"),
                 _code(info.module) if info.module is not None else "–", str(info.call), shape]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "<!-- gradscope layer index, one JSON object per layer:"]
    for info in infos:
        d = {"name": info.name, "kind": info.kind, "order": info.order, "type": info.type,
             "family": info.family, "module": info.module, "call": info.call,
             "shape": list(info.shape) if info.shape is not None else None}
        lines.append(json.dumps(d).replace(">", "\\u003e"))  # no "-->" ends the comment early
    lines.append("-->")
    return "\n".join(lines)


def _escape(cell: str) -> str:
    """A markdown table cell's text: ``|`` escaped."""
    return cell.replace("|", "\\|")


def _code(name: str) -> str:
    """A name as a code span (``_`` and ``*`` in it are not emphasis); ``"(root)"`` for ""."""
    return f"`{_escape(name)}`" if name else "(root)"


def parse_layers_text(text: str) -> list[LayerInfo]:
    """Inverse of :func:`layers_text` (lines that are not layer objects are skipped; the
    index of earlier versions, JSON lines without the table, is read the same way)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            d = json.loads(line)
            if d.get("shape") is not None:
                d["shape"] = tuple(d["shape"])
            out.append(LayerInfo(**d))
        except (ValueError, TypeError):
            continue
    return out
