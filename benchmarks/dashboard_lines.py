"""How many lines each custom-scalars chart draws, read back from TensorBoard event files.

A ``Multiline`` chart draws one line per run shown and per tag its regexes match.
This script reads every run under a log directory with TensorBoard's own reader,
merges their layouts as TensorBoard's custom-scalars plugin does (categories by
title, identical charts once, in the order of the sorted runs) and counts the
lines of each chart with :func:`gradscope.writers.layout.chart_lines`.

It can also write the two runs the figures of docs/dashboard.md come from (with whatever
gradscope is on ``PYTHONPATH``, so the same script measures an older version):

* ``--make grid DIR``: the quick grid's 30 configs on synthetic data, 2 steps each;
* ``--make resnet50 DIR``: torchvision's ResNet-50 (random weights), SGD steps
  (``--steps``, default 1) on random 2x3x32x32 batches, written with ``watch(logdir=DIR)``.

Usage::

    python benchmarks/dashboard_lines.py --make resnet50 /tmp/lines/resnet50
    python benchmarks/dashboard_lines.py /tmp/lines/resnet50      # busiest chart, per category
    python benchmarks/dashboard_lines.py results/compare-quick/runs --json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# ---- settings ---------------------------------------------------------------
GRID_ARGS = ["--synthetic", "--quick", "--device", "cpu", "--steps", "2", "--width", "8",
             "--eval-every", "2", "--no-progress", "--no-plots", "--no-dashboard-images"]
RESNET_INPUT = (2, 3, 32, 32)   # batch 2: BatchNorm in training mode needs > 1 value at 1x1
# ------------------------------------------------------------------------------

_CONFIG_TAG = "custom_scalars__config__"


def read_runs(logdir: Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """``(merged layout, {run: scalar tags})`` of the runs under ``logdir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar.layout_pb2 import Layout

    dirs = sorted({p.parent for p in Path(logdir).rglob("*.tfevents.*")})
    layouts, tags = [], {}
    for d in dirs:
        ea = EventAccumulator(str(d), size_guidance={"scalars": 1, "tensors": 0})
        ea.Reload()
        run = "." if d == Path(logdir) else str(d.relative_to(logdir))
        tags[run] = list(ea.Tags()["scalars"])
        if _CONFIG_TAG in ea.Tags()["tensors"]:
            last = ea.Tensors(_CONFIG_TAG)[-1]  # TensorBoard shows the last layout written
            layouts.append(Layout.FromString(last.tensor_proto.string_val[0]))
    return merge_layouts(layouts), tags


def merge_layouts(layouts: list[Any]) -> dict[str, dict[str, list[Any]]]:
    """TensorBoard's merge (``custom_scalars_plugin.layout_impl``) as a layout dict."""
    merged: dict[str, dict[str, list[Any]]] = {}
    for layout in layouts:
        for category in layout.category:
            charts = merged.setdefault(category.title, {})
            for chart in category.chart:
                regexes = list(chart.multiline.tag)
                key = chart.title
                while key in charts and charts[key] != ["Multiline", regexes]:
                    key += " "  # same title, other regexes: TensorBoard shows both
                charts[key] = ["Multiline", regexes]
    return merged


def measure(logdir: Path) -> dict[str, Any]:
    """Per-chart line counts of the runs under ``logdir``, and the busiest chart."""
    from gradscope.writers.layout import chart_lines

    layout, tags = read_runs(logdir)
    lines = chart_lines(layout, tags)
    busiest = max(lines.items(), key=lambda kv: kv[1]) if lines else (("", ""), 0)
    per_category: dict[str, int] = {}
    for (category, _), n in lines.items():
        per_category[category] = max(per_category.get(category, 0), n)
    return {"runs": len(tags), "charts": len(lines), "busiest_chart": list(busiest[0]),
            "busiest_lines": busiest[1], "max_lines_per_category": per_category,
            "lines": {f"{c} / {t}": n for (c, t), n in lines.items()}}


def make(kind: str, out: Path, steps: int = 1) -> float:
    """Write the ``grid`` or ``resnet50`` example into ``out``; returns the seconds it took."""
    t0 = time.perf_counter()
    if kind == "grid":
        out = out.resolve()
        out.mkdir(parents=True, exist_ok=True)
        # Run from ``out``: ``python -m`` puts the working directory first on sys.path.
        subprocess.run([sys.executable, "-m", "gradscope", "compare", *GRID_ARGS,
                        "--results-dir", str(out)], check=True, cwd=out,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        import torch
        import torchvision

        import gradscope

        torch.manual_seed(0)
        model = torchvision.models.resnet50()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with gradscope.watch(model, optimizer=opt, logdir=out, summary=False):
            for _ in range(steps):
                opt.zero_grad()
                model(torch.randn(*RESNET_INPUT)).logsumexp(1).mean().backward()
                opt.step()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("logdir", nargs="?", type=Path)
    parser.add_argument("--make", nargs=2, metavar=("grid|resnet50", "DIR"))
    parser.add_argument("--steps", type=int, default=1, help="--make resnet50: SGD steps")
    parser.add_argument("--json", action="store_true", help="print every chart's count as JSON")
    args = parser.parse_args(argv)
    if args.make:
        kind, out = args.make
        if kind not in ("grid", "resnet50"):
            parser.error(f"--make {kind}: use grid or resnet50")
        print(f"wrote {kind} into {out} in {make(kind, Path(out), args.steps):.1f} s")
        return {}
    if args.logdir is None:
        parser.error("give a LOGDIR to measure, or --make")
    result = measure(args.logdir)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['runs']} runs, {result['charts']} charts; busiest: "
              f"{' / '.join(result['busiest_chart'])}: {result['busiest_lines']} lines")
        for category, n in result["max_lines_per_category"].items():
            print(f"  {n:5d}  {category}")
    return result


if __name__ == "__main__":
    main()
