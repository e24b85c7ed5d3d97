"""Readable layer names for the dashboard: ``features.3 · ReLU``, ``1 · ReLU after Linear 784→256``.

A series is named by its module path (``features.3``, ``layer1.0.relu[1]``), which
says little in a ``Sequential`` whose layers are ``0``, ``1``, ``2``. :func:`layer_labels`
adds what the layer index knows: the module's type, a parameterised layer's widths (``in→out``
from its weight's shape) and, for a call-site whose last name part is a bare index, the
parameterised layer just before it in the same container. The images, heat maps and a
single run's per-layer chart titles use these labels; the scalar tags keep the names
(``gradscope report`` and your own scripts read them).

Example:
    >>> from gradscope.history import LayerInfo
    >>> infos = [LayerInfo("0", "layer", 0, "Linear", module="0"),
    ...          LayerInfo("0.weight", "parameter", 0, "Parameter", module="0", shape=(256, 784)),
    ...          LayerInfo("1", "activation", 0, "ReLU", family="relu", module="1"),
    ...          LayerInfo("features.3", "activation", 1, "ReLU", module="features.3")]
    >>> labels = layer_labels(infos)
    >>> labels["0"], labels["1"], labels["features.3"]
    ('0 · Linear 784→256', '1 · ReLU after Linear 784→256', 'features.3 · ReLU')
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gradscope.history import LayerInfo

__all__ = ["layer_labels", "widths"]

_INDEX = re.compile(r"^(.*?)(\d+)$")


def widths(shape: tuple[int, ...] | None) -> str:
    """``in→out`` of a weight shaped ``(out, in, ...)`` (Linear, ConvNd), else ``""``."""
    if shape is None or len(shape) < 2:
        return ""
    return f"{shape[1]}→{shape[0]}"


def layer_labels(infos: Iterable[LayerInfo]) -> dict[str, str]:
    """Every activation call-site's and parameterised layer's label (see the module's docstring)."""
    infos = list(infos)
    weights = {i.module: i.shape for i in infos
               if i.kind == "parameter" and i.name.endswith(".weight")}
    layers: dict[str, str] = {}  # module -> "Linear 784→256"
    for i in infos:
        if i.kind == "layer" and i.module is not None:
            layers[i.module] = f"{i.type} {widths(weights.get(i.module))}".rstrip()
    out: dict[str, str] = {}
    for i in infos:
        if i.kind == "layer":
            out[i.name] = f"{i.name} · {layers.get(i.module or '', i.type)}"
        elif i.kind == "activation":
            label = f"{i.name} · {i.type}"
            before = _before(i.module, layers) if i.module is not None else None
            out[i.name] = f"{label} after {before}" if before else label
    return out


def _before(module: str, layers: dict[str, str]) -> str | None:
    """The parameterised sibling just before a module named by a bare index (``seq.4`` ->
    ``seq.3`` or an earlier one), or ``None``."""
    m = _INDEX.match(module)
    if m is None or (m.group(1) and not m.group(1).endswith(".")):
        return None
    prefix, index = m.group(1), int(m.group(2))
    for j in range(index - 1, -1, -1):
        found = layers.get(f"{prefix}{j}")
        if found is not None:
            return found
    return None
