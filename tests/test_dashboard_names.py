"""Which layer? (issue 25.1): readable layer names in the charts and images, a layer × step
heat map per key metric, and images readable in the Images tab; read back from the event
files TensorBoard reads."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import gradscope
from gradscope.events import event_files, read_events
from gradscope.history import History, LayerInfo
from gradscope.writers.figures import gradient_flow_figure, unit_health_figure
from gradscope.writers.heatmaps import HEATMAP_TAG, heatmap_data
from gradscope.writers.labels import layer_labels


def _run(logdir: Path) -> gradscope.Monitor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 16), nn.Sigmoid(),
                          nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, optimizer=opt, logdir=logdir, flush_every=2, summary=False,
                         histogram_every=None) as mon:
        for _ in range(6):
            opt.zero_grad()
            model(torch.randn(8, 20)).pow(2).mean().backward()
            opt.step()
    return mon


def test_charts_and_heat_maps_name_the_layers(tmp_path: Path) -> None:
    from PIL import Image
    from tensorboard.plugins.custom_scalar.layout_pb2 import Layout

    _run(tmp_path)
    events = [e for f in event_files(tmp_path) for e in read_events(f)]
    images: dict[str, list[Any]] = {}
    for e in events:
        for v in e.summary.value if e.HasField("summary") else ():
            if v.HasField("image"):
                images.setdefault(v.tag, []).append((e.step, v.image))
    # one heat map per key metric the run records, at the last step (drawn at close)
    assert {t for t in images if t.startswith(HEATMAP_TAG)} == {
        HEATMAP_TAG + m for m in ("saturation", "dead_units_window", "grad_out_rms",
                                  "grad_norm", "update_ratio")}
    step, png = images[HEATMAP_TAG + "grad_norm"][-1]
    assert step == 5
    picture = np.asarray(Image.open(io.BytesIO(png.encoded_image_string)))
    assert picture.shape[1] >= 700 and picture.std() > 10  # drawn, not blank
    layout = [Layout.FromString(v.tensor.string_val[0]) for e in events if e.HasField("summary")
              for v in e.summary.value if v.tag == "custom_scalars__config__"][-1]
    titles = [c.title for cat in layout.category for c in cat.chart]
    # a single run's one-layer charts are titled by the layer's readable name
    assert "dead_units_window · 1 · ReLU after Linear 20→16" in titles
    assert "saturation · 3 · Sigmoid after Linear 16→16" in titles
    assert "grad_norm · 0–4" in titles  # several layers: the heat maps tell them apart


def test_labels_say_what_a_bare_index_is() -> None:
    infos = [LayerInfo("0", "layer", 0, "Linear", module="0"),
             LayerInfo("0.weight", "parameter", 0, "Parameter", module="0", shape=(256, 784)),
             LayerInfo("1", "activation", 0, "ReLU", module="1"),
             LayerInfo("2", "activation", 1, "Dropout", module="2"),
             LayerInfo("features.0", "layer", 1, "Conv2d", module="features.0"),
             LayerInfo("features.0.weight", "parameter", 2, "Parameter", module="features.0",
                       shape=(64, 3, 3, 3)),
             LayerInfo("features.2", "activation", 2, "ReLU", module="features.2"),
             LayerInfo("block.act[1]", "activation", 3, "GELU", module="block.act", call=1)]
    assert layer_labels(infos) == {
        "0": "0 · Linear 784→256", "1": "1 · ReLU after Linear 784→256",
        "2": "2 · Dropout after Linear 784→256", "features.0": "features.0 · Conv2d 3→64",
        "features.2": "features.2 · ReLU after Conv2d 3→64",
        "block.act[1]": "block.act[1] · GELU"}


def _spread() -> History:
    """Gradient norms over 12 decades, saturation 0.3 at one call-site."""
    h = History()
    for i in range(6):
        h.add_layer(LayerInfo(str(2 * i), kind="layer", order=i, type="Linear", module=str(2 * i)))
        h.add_layer(LayerInfo(str(2 * i + 1), kind="activation", order=i, type="Sigmoid",
                              family="sigmoid", module=str(2 * i + 1)))
        for s in range(4):
            h.add(s, str(2 * i), "grad_norm", 10.0 ** (-2.4 * i))
            h.add(s, str(2 * i + 1), "std", 0.3 + 0.1 * i)  # less than a decade
            h.add(s, str(2 * i + 1), "saturation", 0.3 if i == 2 else 0.0)
    return h


def test_heat_map_scales_follow_the_metric() -> None:
    maps = {d.metric: d for d in heatmap_data(_spread())}
    assert maps["grad_norm"].log  # 12 decades: a log colour scale
    assert not maps["saturation"].log  # a fraction: one 0-1 scale for every run
    assert maps["grad_norm"].rows[0] == "0 · Linear"
    assert maps["saturation"].rows[2] == "5 · Sigmoid after Linear"


def test_images_are_readable_log_ticks_apart_and_30_percent_lit() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = gradient_flow_figure(_spread())
    FigureCanvasAgg(fig).draw()
    for ax in fig.axes[:2]:  # 12 decades; less than one (where minor ticks were labelled)
        lo, hi = ax.get_xlim()
        boxes = sorted((t.get_window_extent() for t in ax.get_xticklabels(minor=False)
                        + ax.get_xticklabels(minor=True)
                        if t.get_text() and lo <= t.get_position()[0] <= hi),
                       key=lambda b: b.x0)
        assert len(boxes) >= 1
        assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))  # no overlap
    assert "5 · Sigmoid after Linear" in [t.get_text() for t in fig.axes[1].get_yticklabels()]
    health = unit_health_figure(_spread())
    (image,) = health.axes[0].images
    assert image.norm(0.3) > 0.5  # 30% saturated is drawn in the upper half of the colours
