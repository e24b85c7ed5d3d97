"""``gradscope report LOGDIR``: per-layer tables and findings from TensorBoard runs.

``LOGDIR`` is a run directory, a directory of runs, or one event file. A run is
recognised by the marker every gradscope writer puts first in its event file
(the ``gradscope/run`` text, :mod:`gradscope.events`), never by the shape of its
tags, which other tools share; event files of earlier versions are read when they
carry gradscope's layer index (``gradscope/layers``), one run per file. Files of
two runs in one directory are reported as two runs (``dir#<run id>``), never
merged. Each file is read record by record with its checksums checked: a file
cut short or corrupt gives a warning on stderr saying how much was read, and what
was read is reported; nothing in the input makes the command fail with a traceback.

Per run it prints a table of activation call-sites, one of parameterised layers
and one of recurrent layers (when there are any) at the last step (or the one
given by ``--step``), then the findings of :mod:`gradscope.findings`: those that
hold at the report step, then those that held before and resolved (episodes: the
steps they held over and their worst value, from the scalars the writer stored). With
several runs, a ranked table comes first: one row per run, worst first (most
error findings holding, then warnings, then infos), with the run-level health values
(:mod:`gradscope.runlevel`) and the rules that fired; the per-run detail follows
in that order. Up to :data:`SIDE_BY_SIDE` runs, comparison tables then put the
runs side by side, one per key metric.

Exit codes: 0 on success, 2 when ``LOGDIR`` does not exist or holds no gradscope run.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(); configure(p)
    >>> args = p.parse_args(["/nonexistent/runs"])
    >>> run(args)
    2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, TextIO

from gradscope import metrics
from gradscope.findings import SEVERITIES
from gradscope.history import History, encode_value
from gradscope.runs import RunFiles, RunReport, find_runs, load_run
from gradscope.writers.paths import read_problem

__all__ = ["EXAMPLES", "HELP", "RunFiles", "RunReport", "configure", "find_runs", "load_run",
           "rank", "render", "run", "run_health"]

HELP = "per-layer tables and findings from TensorBoard runs written by gradscope"
EXAMPLES = """\
examples:
  gradscope report runs/                       # every run under runs/, ranked worst first
  gradscope report runs/exp1 --step 2000       # values at step 2000 (the latest at or before it)
  gradscope report runs/ --format markdown     # or json, for notebooks and CI
"""

#: Table columns per series kind, from the metric specs: ``(header, candidate metrics)``
#: (a layer shows the first candidate it has).
ACTIVATION_COLUMNS = tuple(metrics.columns("activation"))
LAYER_COLUMNS = tuple(metrics.columns("layer"))
RECURRENT_COLUMNS = tuple(metrics.columns("recurrent"))
_COLUMNS = {"activation": ACTIVATION_COLUMNS, "layer": LAYER_COLUMNS, "recurrent": RECURRENT_COLUMNS}
#: Metrics compared side by side when there are several runs: the health metrics.
COMPARE = tuple((metrics.series_kind(m.name) or "activation", m.header or m.name)
                for m in metrics.health())
#: Columns of the ranked table: the ``run`` metrics, ``(header, (metric,))``.
RUN_COLUMNS = tuple(metrics.columns("run"))
#: Side-by-side tables are printed for at most this many runs (one column each).
SIDE_BY_SIDE = 6
#: The ranked table's text is cut to this width (findings are cut first).
WIDTH = 120
_SHORT_SEVERITY = {"error": "err", "warning": "warn"}


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradscope report``."""
    parser.add_argument("logdir", metavar="LOGDIR",
                        help="a TensorBoard run directory, a directory of runs, or one event file")
    parser.add_argument("--step", type=int, default=None, metavar="N",
                        help="report the values at this step (the latest recorded at or "
                             "before it) instead of the last step")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text",
                        help="output format: text (tables), markdown or json (default: text)")


def run(args: argparse.Namespace) -> int:
    """Run ``gradscope report``; returns the exit code."""
    return report(Path(args.logdir), step=args.step, fmt=args.format)


def report(logdir: Path, *, step: Optional[int] = None, fmt: str = "text",
           out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """Read the runs under ``logdir`` and print their report; returns the exit code.

    ``out`` and ``err`` default to ``sys.stdout`` and ``sys.stderr``.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    problem = read_problem(logdir)
    if problem is not None:
        print(f"gradscope report: {str(logdir)!r}: {problem}; pass the directory you gave "
              "watch(logdir=...), its parent, or one of its event files", file=err)
        return 2
    if step is not None and step < 0:
        print(f"gradscope report: --step {step} must be >= 0", file=err)
        return 2
    found = find_runs(logdir, err)
    runs = [r for r in (load_run(f, step, err) for f in found) if r is not None]
    if found and not runs:
        names = ", ".join(repr(f.name) for f in found[:4])
        print(f"gradscope report: the gradscope run{'s' if len(found) > 1 else ''} under "
              f"{str(logdir)!r} ({names}) hold{'' if len(found) > 1 else 's'} no value that "
              "could be read: cut short or damaged before the first flush's values (see the "
              "warnings above), or stopped before its first flush", file=err)
        return 2
    if not runs:
        print(f"gradscope report: no gradscope runs under {str(logdir)!r} (no TensorBoard event "
              "file starting with gradscope's 'gradscope/run' marker, or an earlier version's "
              "'gradscope/layers' index); write one with gradscope.watch(model, logdir=...)",
              file=err)
        return 2
    out.write(render(runs, fmt))
    return 0


# ------------------------------------------------------------------ tables
def _value(h: History, layer: str, candidates: tuple[str, ...]) -> float:
    for m in candidates:
        if m in h.metrics(layer):
            _, values = h.series(layer, m)
            if values:
                return values[-1]
    return math.nan


def _table(r: RunReport, kind: str) -> tuple[list[str], list[list[Any]]]:
    """Header and rows (layer, type, values...) of one kind at the report step."""
    h = r.history
    cols = _COLUMNS[kind]
    layers = h.layers(kind)
    names = [(layer, h.info(layer).family or h.info(layer).type) for layer in layers]
    values = [[_value(h, layer, c) for _, c in cols] for layer in layers]
    keep = [j for j in range(len(cols)) if any(not math.isnan(v[j]) for v in values)]
    first = {"activation": "call-site", "recurrent": "recurrent layer"}.get(kind, "layer")
    header = [first, "type"] + [cols[j][0] for j in keep]
    return header, [[*n, *(v[j] for j in keep)] for n, v in zip(names, values)]


def _compare(runs: list[RunReport], kind: str, metric: str) -> tuple[list[str], list[list[Any]]]:
    cands = dict(ACTIVATION_COLUMNS + LAYER_COLUMNS).get(metric, (metric,))
    layers: list[str] = []
    for r in runs:
        layers += [n for n in r.history.layers(kind) if n not in layers]
    rows = []
    for layer in layers:
        vals = [_value(r.history, layer, cands) if layer in r.history.layers(kind) else math.nan
                for r in runs]
        if any(not math.isnan(v) for v in vals):
            rows.append([layer, *vals])
    return ["layer", *[r.name for r in runs]], rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3g}"
    return str(v)


def _text_table(header: list[str], rows: list[list[Any]], markdown: bool,
                left: tuple[int, ...] = (0,)) -> str:
    """A text or markdown table; the ``left`` columns are left-aligned, the others right."""
    cells = [header] + [[_fmt(v) for v in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i < 2 or i in left else "---:"
                                for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells[1:]]
        return "\n".join(lines)
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = []
    for k, c in enumerate(cells):
        lines.append("  ".join(s.ljust(w) if i in left else s.rjust(w)
                               for i, (s, w) in enumerate(zip(c, widths))).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join("  " + line for line in lines)


def run_health(r: RunReport) -> dict[str, float]:
    """The run-level health values of a run at its report step (each series' last value)."""
    from gradscope.runlevel import run_values

    h = r.history
    values: dict[str, list[float]] = {}
    for need in {n for m in metrics.by_kind("run") for n in m.needs}:
        kind = metrics.series_kind(need)
        if kind in ("activation", "layer"):
            values[need] = [h.series(layer, need)[1][-1] for layer in h.layers(kind)
                            if need in h.metrics(layer) and h.series(layer, need)[1]]
    return run_values(values)


def rank(runs: list[RunReport]) -> list[RunReport]:
    """The runs worst first: most error findings holding, then warnings, then infos; then
    by name (resolved findings do not count)."""
    def key(r: RunReport) -> tuple[Any, ...]:
        return (*(-_count(r, s) for s in SEVERITIES), r.name)

    return sorted(runs, key=key)


def _count(r: RunReport, severity: str) -> int:
    """Findings of ``severity`` holding at the report step."""
    return sum(f.severity == severity and not f.resolved for f in r.findings)


def _cell(values: dict[str, float], name: str) -> Any:
    """A value, ``"nan"`` for NaN, ``"-"`` when not recorded."""
    if name not in values:
        return "-"
    return "nan" if math.isnan(values[name]) else values[name]


def _ranked(runs: list[RunReport], md: bool) -> str:
    """The ranked table: one row per run, worst first, findings last (cut to fit in text)."""
    header = ["run", *(_SHORT_SEVERITY.get(s, s) for s in SEVERITIES), *(h for h, _ in RUN_COLUMNS)]
    rows, rules = [], []
    for r in runs:
        health = run_health(r)
        rows.append([r.name, *(_count(r, s) for s in SEVERITIES),
                     *(_cell(health, c[0]) for _, c in RUN_COLUMNS)])
        counts = Counter(f.rule + (" (resolved)" if f.resolved else "") for f in r.findings)
        rules.append(", ".join(rule + (f" ×{n}" if n > 1 else "") for rule, n in counts.items())
                     or "-")
    if md:
        return _text_table([*header, "findings"], [[*row, f] for row, f in zip(rows, rules)],
                           True, left=(0, len(header)))
    table = _text_table(header, rows, False).split("\n")
    room = max(WIDTH - max(len(line) for line in table) - 2, 12)
    cut = [f if len(f) <= room else f[:room - 1] + "…" for f in ["findings", "-" * 8, *rules]]
    return "\n".join(f"{line.ljust(len(table[1]))}  {c}" for line, c in zip(table, cut))


def render(runs: list[RunReport], fmt: str) -> str:
    """The report of ``runs`` in ``fmt`` (``text``, ``markdown`` or ``json``)."""
    if fmt == "json":
        return json.dumps({"runs": [_run_json(r) for r in runs],
                           "ranking": [r.name for r in rank(runs)]}, indent=2) + "\n"
    md = fmt == "markdown"
    parts = []
    if len(runs) > 1:
        runs = rank(runs)
        parts.append(f"## {len(runs)} runs ranked, worst first" if md else
                     f"== {len(runs)} runs ranked, worst first (most errors, then warnings, "
                     "then infos; run-level health at each run's report step)")
        parts.append(_ranked(runs, md))
        parts.append("")
    for r in runs:
        ends = r.history.span()
        span = f"steps {ends[0]}..{ends[1]}" if ends else "no steps"
        parts.append(f"## run `{r.name}` at step {r.step} ({span})" if md
                     else f"== run {r.name} at step {r.step} ({span}, {r.path})")
        for kind, title in (("activation", "activation call-sites"),
                            ("layer", "parameterised layers"),
                            ("recurrent", "recurrent layers (∂L/∂h through time, gates)")):
            header, rows = _table(r, kind)
            if rows:
                parts.append(f"**{title}**" if md else f"{title}:")
                parts.append(_text_table(header, rows, md))
        parts.append("**findings**" if md else "findings:")
        if not r.findings:
            parts.append("no findings" if md else "  no findings")
        lines = [f"- **{f.severity}** `{f.rule}`{' (resolved)' if f.resolved else ''}: "
                 f"{f.message}" if md else f"  {f.severity:<7} {f.rule:<20} {f.message}"
                 for f in r.findings]
        if lines:
            parts.append("\n".join(lines))
        parts.append("")
    if 1 < len(runs) <= SIDE_BY_SIDE:
        parts.append("## runs side by side" if md else "== runs side by side (values at each run's report step)")
        for kind, metric in COMPARE:
            header, rows = _compare(runs, kind, metric)
            if rows:
                parts.append(f"**{metric}**" if md else f"{metric}:")
                parts.append(_text_table(header, rows, md))
        parts.append("")
    elif len(runs) > SIDE_BY_SIDE:
        parts.append(f"(no side-by-side tables for {len(runs)} runs, more than {SIDE_BY_SIDE}: "
                     "the ranked table compares them; report fewer runs to get them)")
    return ("\n\n" if md else "\n").join(parts).rstrip("\n") + "\n"


def _run_json(r: RunReport) -> dict[str, Any]:
    h = r.history

    def entries(kind: str) -> list[dict[str, Any]]:
        out = []
        for layer in h.layers(kind):
            info = h.info(layer)
            metrics = {m: encode_value(h.series(layer, m)[1][-1]) for m in h.metrics(layer)
                       if h.series(layer, m)[1]}
            out.append({"name": layer, "type": info.type, "family": info.family,
                        "order": info.order, "metrics": metrics})
        return out

    return {
        "name": r.name, "path": str(r.path), "step": r.step,
        "health": {k: encode_value(v) for k, v in run_health(r).items()},
        "activations": entries("activation"), "layers": entries("layer"),
        "recurrent": entries("recurrent"),
        "findings": [{k: (encode_value(v) if isinstance(v, float) else v)
                      for k, v in asdict(f).items()} for f in r.findings],
    }
