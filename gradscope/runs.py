"""Reading gradscope runs back from TensorBoard event files (for ``gradscope report``).

:func:`find_runs` finds the runs under a directory (or in one event file): files
are grouped by the ``gradscope/run`` marker's run id (:mod:`gradscope.events`),
files that are not gradscope's are skipped, two runs in one directory stay two
runs. :func:`load_run` reads a run's files record by record, checksums checked,
warns about a file cut short or corrupt with how much was read, and rebuilds its
:class:`gradscope.History` and findings. Nothing in the input raises.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TextIO

from gradscope import metrics
from gradscope.events import LEGACY_TAG, FileRead, Scalar, read_events, read_marker, scalars, texts
from gradscope.findings import Finding, analyze
from gradscope.history import History, LayerInfo, Retention

__all__ = ["RunFiles", "RunReport", "find_runs", "load_run", "warn"]

@dataclass
class RunFiles:
    """The event files of one gradscope run (oldest first), and the name it is reported under."""

    name: str
    path: Path
    files: list[Path]


@dataclass
class RunReport:
    """One run read back: its name, history (up to ``step``) and findings."""

    name: str
    path: Path
    history: History
    step: int
    findings: list[Finding]


def find_runs(logdir: Path, err: Optional[TextIO] = None) -> list[RunFiles]:
    """The gradscope runs under ``logdir`` (a directory, searched recursively, or an event file).

    Files are grouped by their marker's run id; files that are not gradscope's are skipped.
    Unreadable directories are skipped with a warning on ``err``.
    """
    root = logdir.parent if logdir.is_file() else logdir
    by_dir: dict[Path, list[Path]] = {}
    if logdir.is_file():
        by_dir[logdir.parent] = [logdir]
    else:
        def skipped(e: OSError) -> None:
            warn(err, f"{e.filename}: cannot be listed ({e.strerror or e}); skipped")

        for here, _, names in os.walk(logdir, onerror=skipped):
            files = sorted(Path(here) / n for n in names if ".tfevents." in n)
            if files:
                by_dir[Path(here)] = files
    out = []
    for d in sorted(by_dir):
        groups: dict[str, list[Path]] = {}
        for f in by_dir[d]:
            status = FileRead(f)
            try:
                marker = read_marker(f, status)
            except Exception as e:  # never a traceback for what a file holds
                warn(err, f"{f}: unreadable ({type(e).__name__}: {e}); skipped")
                continue
            if marker is None and status.problem is not None:  # cannot be opened, or damaged
                warn(err, f"{f}: {status.problem}; skipped")
            if marker is not None:
                groups.setdefault(str(marker["run"]), []).append(f)
        base = "." if d == root else str(d.relative_to(root))
        for run_id, files in groups.items():
            out.append(RunFiles(base if len(groups) == 1 else f"{base}#{run_id}", d, files))
    return out


def load_run(run: RunFiles, step: Optional[int] = None,
             err: Optional[TextIO] = None) -> Optional[RunReport]:
    """Read one run's event files; ``None`` when they hold no gradscope scalars.

    A file cut short or corrupt is read up to the damage, with a warning on ``err``.
    """
    index = ""
    raw: list[Scalar] = []
    for f in run.files:
        status = FileRead(f)
        try:
            for event in read_events(f, status):
                for tag, text in texts(event):
                    if tag == LEGACY_TAG:
                        index = text
                raw += scalars((event,))
        except Exception as e:  # a damaged record the checksums did not catch
            status.problem = f"unreadable ({type(e).__name__}: {e})"
        if status.problem is not None:
            warn(err, status.describe())
    infos: list[LayerInfo] = []
    if index:
        from gradscope.writers.layout import parse_layers_text

        infos = parse_layers_text(index)
    known = {i.name: i for i in infos}
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    kinds: dict[str, str] = {}
    for s, tag, value in raw:
        parsed = _parse_tag(tag, known)
        if parsed is None or (step is not None and s > step):
            continue
        layer, metric, kind = parsed
        kinds.setdefault(layer, kind)
        series.setdefault((layer, metric), []).append((s, value))
    if not series:
        return None
    h = History(Retention(recent=None))
    for info in infos:
        h.add_layer(info)
    by_kind: dict[str, list[str]] = {}
    for layer in sorted(kinds, key=_natural):
        if layer not in known:
            by_kind.setdefault(kinds[layer], []).append(layer)
    for kind, names in by_kind.items():
        base = sum(1 for i in infos if i.kind == kind)
        for j, name in enumerate(names):
            h.add_layer(LayerInfo(name, kind=kind, order=base + j, type="?"))
    for (layer, metric), points in series.items():
        for s, v in sorted(points, key=lambda p: p[0]):  # stable: a repeated step's last value wins
            h.add(s, layer, metric, v)
    span = h.span()
    at = span[1] if span else (step or 0)
    return RunReport(run.name, run.path, h, at, analyze(h))


def warn(err: Optional[TextIO], message: str) -> None:
    print(f"gradscope report: warning: {message}", file=err if err is not None else sys.stderr)


def _parse_tag(tag: str, known: dict[str, LayerInfo]) -> Optional[tuple[str, str, str]]:
    """``(layer, metric, kind)`` of one of our scalar tags, ``None`` for any other tag."""
    if tag.startswith("param/"):
        metric, _, name = tag[len("param/"):].partition("/")
        if name and (metrics.series_kind(metric) == "layer" or name in known):
            return name, metric, "parameter"
        return None
    metric, _, layer = tag.partition("/")
    if not layer:
        return None
    if layer in known and known[layer].kind != "parameter":
        return layer, metric, known[layer].kind
    kind = metrics.series_kind(metric)
    return (layer, metric, kind) if kind in ("activation", "layer") else None


def _natural(name: str) -> list[Any]:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
