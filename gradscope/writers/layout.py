"""What a gradscope TensorBoard run contains besides scalars: tags, layout, layer index.

The custom-scalars layout is derived from the metric specs of
:mod:`gradscope.metrics` and the run's series: first the ``run`` metrics (one
line per run, tagged ``0_health/<metric>`` so that they also sort first in the
Scalars and Time Series tabs, each chart titled with the threshold its finding
uses: :func:`run_chart_title`), then one category per per-layer health metric (those with a
``health`` position), then one section per ``section`` (forward, backward,
update). Per-layer charts are grouped by module block so that none draws more
than about :data:`CHART_LINES` lines (:func:`group_layers`, :func:`chart_lines`).
The layer index (``gradscope/layers``) is a table in the Text tab and the text
``gradscope report`` reads back to know each series' kind and order.

Example:
    >>> layout = custom_scalars_layout({"grad_out_norm": ["act1", "act2"]})
    >>> list(layout)[:2]
    ['gradscope: run health (one line per run)', 'gradscope: saturation by layer (saturated outputs)']
    >>> layout["gradscope: backward (gradients)"]
    {'grad_out_norm · act1–act2': ['Multiline', ['^(?:grad_out_norm/act1|grad_out_norm/act2)$']]}
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from gradscope import metrics
from gradscope.findings.thresholds import Thresholds
from gradscope.writers.layer_index import layers_text, parse_layers_text
from gradscope.writers.paths import dir_problem

__all__ = [
    "CHART_LINES",
    "CLOSED_SECTIONS",
    "COVERAGE_TAG",
    "FINDINGS_TAG",
    "GRADIENT_FLOW_TAG",
    "HEALTH_PREFIX",
    "LAYERS_TAG",
    "LOG10_RUN",
    "OTHER_SECTION",
    "RUN_SECTION",
    "SECTION_TITLES",
    "TIME_GRADIENT_TAG",
    "UNIT_HEALTH_TAG",
    "chart_lines",
    "check_logdir",
    "custom_scalars_layout",
    "findings_markdown",
    "group_layers",
    "health_title",
    "layers_text",
    "layout_summary",
    "parse_layers_text",
    "run_chart_title",
    "run_value",
    "scalar_tag",
]

#: Section titles, by :data:`gradscope.metrics.SECTIONS`.
SECTION_TITLES = {
    "run": "gradscope: run health (one line per run)",
    "forward": "gradscope: forward (activations)",
    "backward": "gradscope: backward (gradients)",
    "update": "gradscope: updates and weights",
    "recurrent": "gradscope: recurrent layers (through time, gates)",
}
RUN_SECTION = SECTION_TITLES["run"]
OTHER_SECTION = "gradscope: other"
#: Categories written closed (the page opens on the health charts).
CLOSED_SECTIONS = frozenset([*(SECTION_TITLES[s] for s in ("forward", "backward", "update")),
                             OTHER_SECTION])
#: The most lines a per-layer chart should draw (TensorBoard's palette repeats after ~10).
CHART_LINES = 12

#: Text tag holding the layer index.
LAYERS_TAG = "gradscope/layers"
#: Text tag holding the findings.
FINDINGS_TAG = "gradscope/findings"
#: Text tag holding the activation coverage.
COVERAGE_TAG = "gradscope/coverage"
#: Image tags.
GRADIENT_FLOW_TAG = "gradscope/gradient_flow"
UNIT_HEALTH_TAG = "gradscope/unit_health"
TIME_GRADIENT_TAG = "gradscope/time_gradient"

#: Group of the run-level health tags. TensorBoard's Scalars and Time Series tabs sort
#: groups by name, and a digit sorts before every letter, so these come first (before
#: ``activations/`` and ``dead_units/``). Runs written by earlier versions used ``run/``;
#: neither is read back (``gradscope report`` recomputes the run-level values from the layers).
HEALTH_PREFIX = "0_health"
#: Run-level metrics that span decades, written as their log10 (tag ``<metric>_log10``)
#: so that 3e-5 is not drawn as 0 next to a healthy 1e-3 on a linear axis.
LOG10_RUN = frozenset({"min_update_ratio", "max_update_ratio"})


def scalar_tag(layer: str, metric: str, kind: Optional[str] = None) -> str:
    """The TensorBoard tag of one series: ``metric/layer``, ``param/metric/name`` or
    ``0_health/metric`` (``0_health/metric_log10`` for :data:`LOG10_RUN`).

    Example:
        >>> scalar_tag("features.3", "dead_units", "activation")
        'dead_units/features.3'
        >>> scalar_tag("fc1.weight", "grad_norm", "parameter")
        'param/grad_norm/fc1.weight'
        >>> scalar_tag("", "worst_saturation", "run")
        '0_health/worst_saturation'
        >>> scalar_tag("", "min_update_ratio", "run")
        '0_health/min_update_ratio_log10'
    """
    if kind == "parameter":
        return f"param/{metric}/{layer}"
    if kind == "run":
        return f"{HEALTH_PREFIX}/{metric}_log10" if metric in LOG10_RUN \
            else f"{HEALTH_PREFIX}/{metric}"
    return f"{metric}/{layer}"


def run_value(metric: str, value: float) -> float:
    """The value written for a run-level metric: its log10 for :data:`LOG10_RUN`
    (``-inf`` for 0, as ``backprop_log10_ratio``), else the value itself.

    Example:
        >>> run_value("min_update_ratio", 1e-3), run_value("worst_saturation", 0.25)
        (-3.0, 0.25)
    """
    if metric not in LOG10_RUN:
        return value
    if value > 0:
        return math.log10(value)
    return -math.inf if value == 0 else math.nan


def run_chart_title(metric: str, thresholds: Optional[Thresholds] = None) -> str:
    """The title of a run-level chart: its tag's name and the bounds of the findings
    that watch it (:class:`gradscope.findings.Thresholds`, in the chart's units).

    Example:
        >>> run_chart_title("min_update_ratio")
        'min_update_ratio_log10 · update_ratio_low below -5'
        >>> run_chart_title("backprop_log10_ratio", Thresholds(vanishing_ratio=1e-3))
        'backprop_log10_ratio · vanishing_gradients below -3, exploding_gradients above 2'
    """
    t = thresholds if thresholds is not None else Thresholds()
    log = math.log10
    bounds = {
        "worst_saturation": [("saturation", "above", t.saturation)],
        "worst_dead_units": [("dead_units", "above", t.dead_units)],
        "backprop_log10_ratio": [("vanishing_gradients", "below", log(t.vanishing_ratio)),
                                 ("exploding_gradients", "above", log(t.exploding_ratio))],
        "min_update_ratio": [("update_ratio_low", "below", log(t.update_ratio_low))],
        "max_update_ratio": [("update_ratio_high", "above", log(t.update_ratio_high))],
        "nonfinite_count": [("nonfinite", "above", 0.0)],
    }.get(metric, [])
    name = scalar_tag("", metric, "run").partition("/")[2]
    if not bounds:
        return name
    return f"{name} · " + ", ".join(f"{rule} {word} {value:.3g}" for rule, word, value in bounds)


def check_logdir(logdir: Union[str, os.PathLike], *, argument: str = "logdir") -> Path:
    """Create ``logdir`` if needed and prove it is writable; raise a clear error if not."""
    path = Path(logdir).expanduser()
    problem = dir_problem(path)
    if problem is not None:
        raise ValueError(f"watch({argument}={str(logdir)!r}): cannot write TensorBoard events "
                         f"there: {problem}; pass a directory you can write to, e.g. "
                         f"{argument}='runs/exp1', or fix its permissions")
    return path


def custom_scalars_layout(series: Mapping[str, Sequence[str]], *, runs: int = 1,
                          chart_lines: int = CHART_LINES,
                          thresholds: Optional[Thresholds] = None,
                          labels: Optional[Mapping[str, str]] = None,
                          ) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: ``{category: {chart title: ["Multiline", [regex]]}}``.

    A ``Multiline`` chart draws one line per run shown and per tag its regex matches
    (TensorBoard's ``re.match``). So each per-layer chart names its series
    exactly and holds at most ``max(1, chart_lines // runs)`` of them, grouped by
    :func:`group_layers`: a chart then draws at most ``max(chart_lines, runs)``
    lines. Categories, in order:

    * :data:`RUN_SECTION`: one chart per ``run`` metric (``0_health/<name>``, one line
      per run), every one listed whatever the run has, titled by
      :func:`run_chart_title` with ``thresholds``;
    * one category per per-layer health metric (:func:`health_title`), listed even
      when empty: TensorBoard merges the layouts of the runs it shows in the order
      it meets them, so every run lists them to keep their order;
    * the forward, backward and update sections (:data:`SECTION_TITLES`, written
      closed by :func:`layout_summary`), then metrics that are not gradscope's.

    Args:
        series: each metric's series (layer and call-site names) in network order.
        runs: how many runs will be viewed side by side (a grid's size).
        chart_lines: the most lines a per-layer chart should draw.
        thresholds: the findings' thresholds shown in the run-level charts' titles
            (default: :class:`gradscope.findings.Thresholds`'s defaults).
        labels: readable names of the layers (:mod:`gradscope.writers.labels`) for the
            titles of one-layer charts (``dead_units · 1 · ReLU after Linear 784→256``);
            the writer passes them for a single run only, since the layouts of runs
            shown together merge by title.
    """
    if not isinstance(runs, int) or runs < 1 or not isinstance(chart_lines, int) or chart_lines < 1:
        raise ValueError(f"custom_scalars_layout(runs={runs!r}, chart_lines={chart_lines!r}): "
                         "both must be ints >= 1")
    size = max(1, chart_lines // runs)
    layout: dict[str, dict[str, list[Any]]] = {RUN_SECTION: {
        run_chart_title(m.name, thresholds): _chart([scalar_tag("", m.name, "run")])
        for m in metrics.by_kind("run")}}
    for m in metrics.health():
        layout[health_title(m)] = _charts(m.name, series.get(m.name, ()), size, labels)
    for section in metrics.SECTIONS[1:]:
        charts: dict[str, list[Any]] = {}
        for m in metrics.METRICS.values():
            if m.section == section and m.health is None:
                charts.update(_charts(m.name, series.get(m.name, ()), size, labels))
        if charts:
            layout[SECTION_TITLES[section]] = charts
    other: dict[str, list[Any]] = {}
    for name, names in series.items():
        if name not in metrics.METRICS:
            other.update(_charts(name, names, size))
    if other:
        layout[OTHER_SECTION] = other
    return layout


def health_title(metric: metrics.Metric) -> str:
    """The category of a per-layer health metric: ``gradscope: grad_norm by layer (...)``."""
    return f"gradscope: {metric.name} by layer ({metric.label or metric.doc})"


def _chart(tags: Sequence[str]) -> list[Any]:
    """A ``Multiline`` chart of exactly these tags (one anchored regex)."""
    return ["Multiline", ["^(?:" + "|".join(re.escape(t) for t in tags) + ")$"]]


def _charts(metric: str, names: Sequence[str], size: int,
            labels: Optional[Mapping[str, str]] = None) -> dict[str, list[Any]]:
    named = labels or {}
    return {f"{metric} · {named.get(label, label)}": _chart([scalar_tag(n, metric) for n in group])
            for label, group in group_layers(names, size)}


def group_layers(names: Sequence[str], size: int) -> list[tuple[str, list[str]]]:
    """Groups of at most ``size`` series, cut along the module tree, labelled by block.

    Series are grouped by their top-level block (``layer1`` for ``layer1.0.conv1``;
    a call-site ``relu[1]`` belongs to its module ``relu``). Neighbouring blocks that
    fit share a group (``"conv1–bn1"``); a block larger than ``size`` is split by
    its sub-blocks (``layer3.0``, ``layer3.1``, ...), recursively; a leaf block
    still too large is cut into numbered pieces. A group of one series is labelled
    by its name.

    Example:
        >>> names = ["conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1", "layer1.1.conv1", "fc"]
        >>> for label, group in group_layers(names, 2):
        ...     print(label, group)
        conv1–bn1 ['conv1', 'bn1']
        layer1.0 ['layer1.0.conv1', 'layer1.0.bn1']
        layer1.1.conv1 ['layer1.1.conv1']
        fc ['fc']
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"group_layers(size={size!r}): must be an int >= 1")
    return [(group[0] if len(group) == 1 else label, group)
            for label, group in _pack(list(names), 0, size)]


_CALL_INDEX = re.compile(r"\[\d+\]$")


def _path(name: str) -> list[str]:
    return _CALL_INDEX.sub("", name).split(".")


def _pack(names: list[str], depth: int, size: int) -> list[tuple[str, list[str]]]:
    """Blocks at ``depth`` of the module tree, packed in order into groups of <= ``size``."""
    blocks: dict[str, list[str]] = {}
    for n in names:
        blocks.setdefault(".".join(_path(n)[:depth + 1]), []).append(n)
    groups: list[tuple[str, list[str]]] = []
    keys: list[str] = []
    held: list[str] = []

    def close() -> None:
        if held:
            groups.append((keys[0] if len(keys) == 1 else f"{keys[0]}–{keys[-1]}", held[:]))
        keys.clear()
        held.clear()

    for key, members in blocks.items():
        if len(members) <= size:
            if len(held) + len(members) > size:
                close()
            keys.append(key)
            held.extend(members)
            continue
        close()
        if any(len(_path(n)) > depth + 1 for n in members):
            groups += _pack(members, depth + 1, size)
        else:
            pieces = [members[i:i + size] for i in range(0, len(members), size)]
            groups += [(f"{key} ({i + 1}/{len(pieces)})", p) for i, p in enumerate(pieces)]
    close()
    return groups


def layout_summary(layout: Mapping[str, Mapping[str, Sequence[Any]]]) -> Any:
    """The layout as the ``Summary`` that ``add_custom_scalars`` writes, detail sections closed.

    TensorBoard opens a category unless its ``closed`` flag is set; the forward,
    backward, update and other sections start closed so the page opens on the
    run-level and per-layer health charts.
    """
    from tensorboard.plugins.custom_scalar.layout_pb2 import Layout
    from torch.utils.tensorboard.summary import custom_scalars

    summary = custom_scalars(layout)
    tensor = summary.value[0].tensor
    proto = Layout.FromString(tensor.string_val[0])
    for category in proto.category:
        category.closed = category.title in CLOSED_SECTIONS
    tensor.string_val[0] = proto.SerializeToString()
    return summary


def chart_lines(layout: Mapping[str, Mapping[str, Sequence[Any]]],
                tags: Mapping[str, Iterable[str]]) -> dict[tuple[str, str], int]:
    """Lines each ``Multiline`` chart draws: the tags its regexes match, summed over runs.

    ``tags`` maps each run to its scalar tags. A tag is counted once per run even
    when several regexes of the chart match it.

    Example:
        >>> layout = custom_scalars_layout({"grad_norm": ["fc1", "fc2"]})
        >>> lines = chart_lines(layout, {"a": ["grad_norm/fc1", "grad_norm/fc2", "0_health/nonfinite_count"],
        ...                              "b": ["grad_norm/fc1", "0_health/nonfinite_count"]})
        >>> lines[(RUN_SECTION, run_chart_title("nonfinite_count"))], max(lines.values())
        (2, 3)
    """
    out = {}
    for category, charts in layout.items():
        for title, (_kind, regexes) in charts.items():
            patterns = [re.compile(r) for r in regexes]
            out[(category, title)] = sum(
                1 for run_tags in tags.values() for t in set(run_tags)
                if any(p.match(t) for p in patterns))
    return out


def findings_markdown(findings: Sequence[Any]) -> str:
    """The findings as a markdown list (the ``gradscope/findings`` text)."""
    if not findings:
        return "No findings: no rule of `gradscope.findings` fires on this run so far."
    # The message already names the layer and the steps.
    now = [f for f in findings if not getattr(f, "resolved", False)]
    before = [f for f in findings if getattr(f, "resolved", False)]
    parts = []
    for title, group in (("Holding now", now), ("Held before (resolved)", before)):
        if group:
            parts.append(f"**{title}**\n\n"
                         + "\n".join(f"- **{f.severity}** · `{f.rule}`: {f.message}" for f in group))
    return "\n\n".join(parts)
