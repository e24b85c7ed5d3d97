"""Dashboards that stay readable: layouts read back from event files, chart line counts
for a 30-run grid and a ResNet-50 run, legible layer names in the images, the ranked report."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import gradscope
from gradscope import metrics
from gradscope.experiments.compare import QUICK
from gradscope.experiments.data import synthetic_dataset
from gradscope.experiments.grid import expand_grid, run_grid, run_names
from gradscope.history import History, LayerInfo
from gradscope.report import report
from gradscope.writers.figures import LABEL_CHARS, gradient_flow_figure, unit_health_figure
from gradscope.writers.layout import (
    CHART_LINES,
    HEALTH_PREFIX,
    RUN_SECTION,
    chart_lines,
    custom_scalars_layout,
    group_layers,
    health_title,
)

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dashboard_lines.py"
RESNET_LAYERS = 107  # torchvision's ResNet-50: modules with their own parameters
RESNET_SITES = 49    # ReLU call-sites (the stem, then 3 per bottleneck block)


@pytest.fixture(scope="module")
def lines() -> Any:
    """``benchmarks/dashboard_lines.py``: reads layouts and tags back as TensorBoard does."""
    spec = importlib.util.spec_from_file_location("dashboard_lines", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on a shared CI box
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quick_grid(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """The quick grid's 30 configs (5 activations x 3 inits x BN), tiny, on noise."""
    cfgs = expand_grid(**dict(QUICK, steps=[2], widths=[4], eval_every=2, monitor_every=1))
    out = tmp_path_factory.mktemp("grid")
    with contextlib.redirect_stderr(io.StringIO()):  # each run's findings summary
        run_grid(cfgs, synthetic_dataset(n_train=64, n_test=16, features=8), results_dir=out,
                 progress=False, plots=False, dashboard_images=False)
    return out


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """torchvision's ResNet-50 with random weights, one SGD step on a 2x3x32x32 batch."""
    torchvision = pytest.importorskip("torchvision")
    out = tmp_path_factory.mktemp("resnet50")
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, optimizer=opt, logdir=out, summary=False):
        opt.zero_grad()
        model(torch.randn(2, 3, 32, 32)).logsumexp(1).mean().backward()
        opt.step()
    return out


def _charted_once(layout: dict[str, Any], tags: dict[str, list[str]]) -> None:
    """Every per-layer and run-level scalar is drawn by exactly one chart (none is lost)."""
    regexes = [re.compile(r) for charts in layout.values() for _, rs in charts.values() for r in rs]
    for run_tags in tags.values():
        for tag in run_tags:
            if tag.split("/")[0] in metrics.METRICS or tag.startswith(f"{HEALTH_PREFIX}/"):
                assert sum(1 for r in regexes if r.match(tag)) == 1, tag


def test_30_run_grid_charts_hold_one_line_per_run(quick_grid: Path, lines: Any) -> None:
    layout, tags = lines.read_runs(quick_grid / "runs")
    assert len(tags) == 30
    counts = chart_lines(layout, tags)
    # The run-level charts come first: one line per run that has the metric.
    assert next(iter(layout)) == RUN_SECTION
    # Each titled by its tag's name, then the threshold of its finding.
    run = {title.split(" · ")[0]: n for (category, title), n in counts.items()
           if category == RUN_SECTION}
    assert run == {"worst_saturation": 12, "worst_dead_units": 6, "backprop_log10_ratio": 30,
                   "min_update_ratio_log10": 30, "max_update_ratio_log10": 30,
                   "nonfinite_count": 30}
    # Per-layer charts: one layer each (12 lines // 30 runs), so one line per run at most.
    per_layer = {k: n for k, n in counts.items() if k[0] != RUN_SECTION}
    assert max(per_layer.values()) == 30 == max(counts.values())
    assert min(per_layer.values()) >= 1  # no empty chart
    grad = {t: n for (c, t), n in counts.items() if c == health_title(metrics.METRICS["grad_norm"])}
    assert grad["grad_norm · fc1"] == 30 and grad["grad_norm · bn1"] == 15  # BN runs only
    _charted_once(layout, tags)


def test_resnet50_charts_hold_at_most_12_lines(resnet50: Path, lines: Any) -> None:
    layout, tags = lines.read_runs(resnet50)
    counts = chart_lines(layout, tags)
    assert max(counts.values()) == CHART_LINES
    assert all(n == 1 for (c, t), n in counts.items()
               if c == RUN_SECTION and not t.startswith("worst_saturation"))
    grad = {t: n for (c, t), n in counts.items() if c == health_title(metrics.METRICS["grad_norm"])}
    assert sum(grad.values()) == RESNET_LAYERS and "grad_norm · layer1.1–layer1.2" in grad
    dead = metrics.METRICS["dead_units_window"]
    assert sum(n for (c, _), n in counts.items() if c == health_title(dead)) == RESNET_SITES
    _charted_once(layout, tags)


RESNET_LIKE = ["conv1", "bn1", *(f"layer{b}.{i}.{m}" for b, n in ((1, 3), (2, 4), (3, 6))
                                 for i in range(n) for m in ("conv1", "bn1", "conv2", "bn2")),
               "fc"]


@pytest.mark.parametrize("names, size, labels", [
    (RESNET_LIKE, 12, ["conv1–bn1", "layer1", "layer2.0–layer2.2", "layer2.3", "layer3.0–layer3.2",
                       "layer3.3–layer3.5", "fc"]),
    (["fc1", "act1", "fc2", "act2", "out"], 12, ["fc1–out"]),
    (["fc1", "act1", "fc2", "act2", "out"], 2, ["fc1–act1", "fc2–act2", "out"]),
    ([f"blocks.{i}" for i in range(30)], 12, ["blocks.0–blocks.11", "blocks.12–blocks.23",
                                              "blocks.24–blocks.29"]),
    (["relu", "relu[1]", "relu[2]"], 2, ["relu (1/2)", "relu[2]"]),
    (["a.b.c.d.e1", "a.b.c.d.e2", "a.b.c.d.e3"], 1, ["a.b.c.d.e1", "a.b.c.d.e2", "a.b.c.d.e3"]),
], ids=["resnet-like", "mlp", "mlp-by-2", "flat-list", "reused-module", "deep-path"])
def test_group_layers_cuts_along_blocks(names: list[str], size: int, labels: list[str]) -> None:
    groups = group_layers(names, size)
    assert [label for label, _ in groups] == labels
    assert [n for _, g in groups for n in g] == names  # every series once, in order
    assert all(1 <= len(g) <= size for _, g in groups)


def test_layout_sizes_charts_by_runs_and_rejects_bad_sizes() -> None:
    series = {"grad_norm": [f"fc{i}" for i in range(10)]}
    for runs, per_chart in ((1, 10), (2, 6), (5, 2), (30, 1)):
        charts = custom_scalars_layout(series, runs=runs)[health_title(metrics.METRICS["grad_norm"])]
        assert max(len(r[1][0].split("|")) for r in charts.values()) == per_chart
    with pytest.raises(ValueError, match="runs=0"):
        custom_scalars_layout(series, runs=0)
    with pytest.raises(ValueError, match="size=0"):
        group_layers(["a"], 0)


def _history(n_layers: int, n_sites: int, steps: int = 3) -> History:
    h = History()
    for i in range(n_layers):
        name = f"encoder.layers.{i // 6}.block{i % 6}.linear_projection"
        h.add_layer(LayerInfo(name, kind="layer", order=i, type="Linear"))
        for s in range(steps):
            h.add(s, name, "grad_norm", 10.0 ** (i / 20 - 2))
    for i in range(n_sites):
        name = f"encoder.layers.{i // 3}.feed_forward.activation[{i % 3}]"
        h.add_layer(LayerInfo(name, kind="activation", order=i, type="ReLU", family="relu"))
        for s in range(steps):
            for metric, v in (("std", 1.0), ("grad_out_rms", 1e-3 * (i + 1)),
                              ("dead_units_window", i / n_sites)):
                h.add(s, name, metric, v)
    return h


@pytest.mark.parametrize("draw", [gradient_flow_figure, unit_health_figure],
                         ids=["gradient_flow", "unit_health"])
def test_images_label_every_layer_legibly_at_100_layers(draw: Any) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = draw(_history(100, 60))
    FigureCanvasAgg(fig).draw()  # as the writer renders it
    width, height = fig.bbox.width, fig.bbox.height
    labelled = 0
    for ax in fig.axes:
        if not ax.get_yticklabels() or ax.get_label() == "<colorbar>":
            continue
        boxes = []
        for label in ax.get_yticklabels():
            if not label.get_text():
                continue
            assert label.get_fontsize() >= 7
            box = label.get_window_extent()
            assert box.x0 >= 0 and box.x1 <= width and 0 <= box.y0 and box.y1 <= height
            boxes.append(box)
        boxes.sort(key=lambda b: b.y0)
        assert all(a.y1 <= b.y0 + 0.5 for a, b in zip(boxes, boxes[1:]))  # no overlap
        labelled += len(boxes)
        texts = [t.get_text() for t in ax.get_yticklabels()]
        # long names are cut in the middle, and stay distinct
        assert all(len(t) <= LABEL_CHARS for t in texts) and any("…" in t for t in texts)
        assert len(set(texts)) == len(texts)
    assert labelled == (100 + 60 if draw is gradient_flow_figure else 60)


def test_report_ranks_many_runs_worst_first(quick_grid: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert report(quick_grid / "runs", out=out, err=err) == 0
    text = out.getvalue()
    head, detail = text.split("\n== run ", 1)
    table = head.splitlines()[1:]
    assert head.startswith("== 30 runs ranked, worst first")
    assert all(len(line) <= 120 for line in table)
    rows = [line.split() for line in table[2:] if line.strip()]
    assert sorted(r[0] for r in rows) == sorted(run_names(expand_grid(**QUICK)))
    severity = [(-int(r[1]), -int(r[2]), -int(r[3])) for r in rows]
    assert severity == sorted(severity)  # worst first
    assert detail.startswith(rows[0][0] + " at step")  # the detail follows the ranking
    assert "no side-by-side tables for 30 runs" in text
