"""What a gradscope TensorBoard run contains besides scalars: tags, layout, layer index.

The custom-scalars layout is derived from the metric specs of
:mod:`gradscope.metrics`: a health section with the metrics that have a
``health`` position, then one section per ``section`` (forward, backward,
update) with the metrics a run has. The layer index (``gradscope/layers``) is
the text ``gradscope report`` reads back to know each series' kind and order.

Example:
    >>> layout = custom_scalars_layout(["saturation", "grad_out_norm"])
    >>> list(layout)
    ['gradscope: health (key metrics by layer)', 'gradscope: backward (gradients)']
    >>> layout["gradscope: backward (gradients)"]
    {'grad_out_norm': ['Multiline', ['^grad_out_norm/']]}
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

from gradscope import metrics
from gradscope.history import LayerInfo

__all__ = [
    "FINDINGS_TAG",
    "GRADIENT_FLOW_TAG",
    "HEALTH_SECTION",
    "LAYERS_TAG",
    "SECTION_TITLES",
    "TIME_GRADIENT_TAG",
    "UNIT_HEALTH_TAG",
    "check_logdir",
    "custom_scalars_layout",
    "findings_markdown",
    "layers_text",
    "parse_layers_text",
    "scalar_tag",
]

HEALTH_SECTION = "gradscope: health (key metrics by layer)"
#: Section titles, by :data:`gradscope.metrics.SECTIONS`.
SECTION_TITLES = {
    "forward": "gradscope: forward (activations)",
    "backward": "gradscope: backward (gradients)",
    "update": "gradscope: updates and weights",
    "recurrent": "gradscope: recurrent layers (through time, gates)",
}

#: Text tag holding the layer index.
LAYERS_TAG = "gradscope/layers"
#: Text tag holding the findings.
FINDINGS_TAG = "gradscope/findings"
#: Image tags.
GRADIENT_FLOW_TAG = "gradscope/gradient_flow"
UNIT_HEALTH_TAG = "gradscope/unit_health"
TIME_GRADIENT_TAG = "gradscope/time_gradient"

def scalar_tag(layer: str, metric: str, kind: Optional[str] = None) -> str:
    """The TensorBoard tag of one series: ``metric/layer``, or ``param/metric/name``.

    Example:
        >>> scalar_tag("features.3", "dead_units", "activation")
        'dead_units/features.3'
        >>> scalar_tag("fc1.weight", "grad_norm", "parameter")
        'param/grad_norm/fc1.weight'
    """
    if kind == "parameter":
        return f"param/{metric}/{layer}"
    return f"{metric}/{layer}"


def layers_text(infos: Sequence[LayerInfo]) -> str:
    """The ``gradscope/layers`` text: one JSON object per layer, as a markdown code block."""
    lines = ["gradscope layer index (read by `gradscope report`):", ""]
    for info in infos:
        d = {"name": info.name, "kind": info.kind, "order": info.order, "type": info.type,
             "family": info.family, "module": info.module, "call": info.call,
             "shape": list(info.shape) if info.shape is not None else None}
        lines.append("    " + json.dumps(d))
    return "\n".join(lines)


def parse_layers_text(text: str) -> list[LayerInfo]:
    """Inverse of :func:`layers_text` (lines that are not layer objects are skipped)."""
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


def check_logdir(logdir: Union[str, os.PathLike], *, argument: str = "logdir") -> Path:
    """Create ``logdir`` if needed and prove it is writable; raise a clear error if not."""
    path = Path(logdir).expanduser()
    fix = (f"pass a directory you can write to, e.g. {argument}='runs/exp1', or fix its "
           "permissions")
    if path.exists() and not path.is_dir():
        raise ValueError(f"watch({argument}={str(logdir)!r}): this path is a file, not a "
                         f"directory; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".gradscope-write-test-"):
            pass
    except OSError as err:
        raise ValueError(
            f"watch({argument}={str(logdir)!r}): cannot write TensorBoard events there "
            f"({type(err).__name__}: {err.strerror or err}); {fix}"
        ) from err
    return path


def custom_scalars_layout(present: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: per section, one ``Multiline`` chart per metric.

    Each chart matches ``^<metric>/`` so every layer of that metric is a line,
    including layers that appear later in the run. The health section lists every
    health metric whatever the run has (a chart is empty when a run has no such
    layer), so that TensorBoard, which merges the layouts of the runs it shows,
    keeps its order for every run; the other sections only the ``present`` metrics.
    Metrics that are not gradscope's go to a last section.
    """
    have = set(present)
    chart = lambda m: ["Multiline", [f"^{re.escape(m)}/"]]  # noqa: E731
    layout: dict[str, dict[str, list[Any]]] = {
        HEALTH_SECTION: {m.name: chart(m.name) for m in metrics.health()}}
    for section in metrics.SECTIONS:
        charts = {m.name: chart(m.name) for m in metrics.METRICS.values()
                  if m.section == section and m.health is None and m.name in have}
        if charts:
            layout[SECTION_TITLES[section]] = charts
    other = {m: chart(m) for m in present if m not in metrics.METRICS}
    if other:
        layout["gradscope: other"] = other
    return layout


def findings_markdown(findings: Sequence[Any]) -> str:
    """The findings as a markdown list (the ``gradscope/findings`` text)."""
    if not findings:
        return "No findings: no rule of `gradscope.findings` fires on this run so far."
    # The message already names the layer and the first step.
    return "\n".join(f"- **{f.severity}** · `{f.rule}`: {f.message}" for f in findings)
