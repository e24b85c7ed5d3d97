"""TensorBoard and memory writers, device-side histograms and dashboard images."""

from __future__ import annotations

import math
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import gradscope
from gradscope import stats
from gradscope.histograms import decode_histogram, histogram_vector
from gradscope.history import History, LayerInfo
from gradscope.writers import MemoryWriter, TensorBoardWriter, scalar_tag
from gradscope.writers.figures import gradient_flow_image, unit_health_image
from gradscope.writers.layout import RUN_SECTION, parse_layers_text

BATCH, WIDTH = 16, 12


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.Sigmoid(),
                         nn.Linear(WIDTH, 3))


def _train(model: nn.Module, steps: int, **options: object) -> gradscope.Monitor:
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, optimizer=opt, summary=False, **options) as mon:
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(BATCH, 6)).pow(2).mean().backward()
            opt.step()
    return mon


def _events(logdir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(logdir), size_guidance={
        "scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[gradscope.Monitor, EventAccumulator]:
    """One short run written to TensorBoard, read back with TensorBoard's reader."""
    logdir = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = _model()
    # add_scalars would create one run per key: make any use of it fail loudly.
    orig = SummaryWriter.add_scalars
    SummaryWriter.add_scalars = lambda *a, **k: (_ for _ in ()).throw(AssertionError("add_scalars"))  # type: ignore[method-assign]
    try:
        writer = TensorBoardWriter(logdir, parameters=True, image_interval=0)
        mon = _train(model, 8, sinks=[writer], flush_every=4, histogram_every=4)
        assert mon.writer is writer
    finally:
        SummaryWriter.add_scalars = orig  # type: ignore[method-assign]
    return mon, _events(logdir)


def test_scalars_round_trip_match_history(tb_run: tuple[gradscope.Monitor, EventAccumulator]) -> None:
    mon, ea = tb_run
    h = mon.history
    tags = set(ea.Tags()["scalars"])
    checked = 0
    for kind in ("activation", "layer", "parameter"):
        for layer in h.layers(kind):
            for metric in h.metrics(layer):
                tag = scalar_tag(layer, metric, kind)
                assert tag in tags, tag
                events = ea.Scalars(tag)
                steps, values = h.series(layer, metric)
                assert [e.step for e in events] == steps
                np.testing.assert_allclose([e.value for e in events], values, rtol=1e-6,
                                           equal_nan=True)
                checked += 1
    assert checked > 40
    # The expected grouping: one group per metric, one series per layer.
    for tag in ("saturation/3", "dead_units/1", "grad_norm/0", "update_ratio/4",
                "grad_out_rms/1", "param/grad_norm/0.weight"):
        assert tag in tags


def test_histograms_images_layout_and_layer_index(
        tb_run: tuple[gradscope.Monitor, EventAccumulator]) -> None:
    mon, ea = tb_run
    tags = ea.Tags()
    hist_tags = set(tags["histograms"])
    assert {"activations/1", "activations/3", "backprop/1", "backprop/3",
            "gradients/0.weight", "weights/4.bias"} <= hist_tags
    events = ea.Histograms("activations/1")
    assert [e.step for e in events] == [0, 4]
    for e in events:
        hv = e.histogram_value
        assert hv.num == BATCH * WIDTH
        assert sum(hv.bucket) == hv.num
        assert len(hv.bucket) == len(hv.bucket_limit) == mon.options.histogram_bins
        assert hv.min == 0.0  # a ReLU output
    sig = ea.Histograms("activations/3")[0].histogram_value
    assert 0.0 < sig.min <= sig.max < 1.0
    assert {"gradscope/gradient_flow", "gradscope/unit_health"} <= set(tags["images"])
    img = ea.Images("gradscope/gradient_flow")[-1]
    assert img.step == 7 and img.width > 100 and img.height > 100
    assert "custom_scalars__config__" in tags["tensors"]
    # Findings text: written at the first flush, rewritten only when they change.
    notes = ea.Tensors("gradscope/findings/text_summary")
    # flushes at steps 3 and 7 find the same (no) findings: one note, not rewritten at 7
    assert [n.step for n in notes] == [3]
    expected = mon.findings()
    last = notes[-1].tensor_proto.string_val[0].decode()
    assert all(f.rule in last for f in expected) if expected else "No findings" in last
    text = ea.Tensors("gradscope/layers/text_summary")[0].tensor_proto.string_val[0].decode()
    infos = parse_layers_text(text)
    assert [i.name for i in infos] == mon.history.layers()
    assert infos[0] == mon.history.info(infos[0].name)
    # The Text tab shows a table, one row per layer, and not the JSON read back.
    from tensorboard.plugin_util import markdown_to_safe_html

    with warnings.catch_warnings():  # bleach's html5lib sanitizer warns that it is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        html = markdown_to_safe_html(text)
    assert html.count("<tr>") == 1 + len(infos) and "{" not in html
    assert "<td><code>3</code></td>\n<td>activation</td>\n<td>Sigmoid</td>\n<td>sigmoid</td>" in html


def test_run_health_tags_sort_first_in_log10_with_thresholds_in_titles(tmp_path: Path) -> None:
    """The run-level series are ``0_health/...`` (before every other group), update ratios
    as log10, and each run-health chart's title carries the threshold its finding uses."""
    from tensorboard.plugins.custom_scalar.layout_pb2 import Layout

    from gradscope.events import event_files, read_events, scalars
    from gradscope.findings import Thresholds

    _train(_model(), 4, logdir=tmp_path, flush_every=2,
           findings=Thresholds(saturation=0.5, update_ratio_low=1e-4))
    events = [e for f in event_files(tmp_path) for e in read_events(f)]
    values: dict[str, dict[int, float]] = {}
    for s in scalars(events):
        values.setdefault(s.tag, {})[s.step] = s.value
    health = sorted(t for t in values if t.startswith("0_health/"))
    assert {"0_health/worst_saturation", "0_health/backprop_log10_ratio",
            "0_health/min_update_ratio_log10", "0_health/max_update_ratio_log10",
            "0_health/nonfinite_count"} <= set(health)
    others = [t for t in values if not t.startswith("0_health/")]
    assert not any(t.startswith("run/") for t in values)
    assert max(health) < min(others)  # TensorBoard sorts by name: the health group first
    ratios = {t: v for t, v in values.items() if t.startswith("update_ratio/")}
    for step, v in values["0_health/min_update_ratio_log10"].items():
        assert v == pytest.approx(math.log10(min(r[step] for r in ratios.values())), abs=1e-5)
    for step, v in values["0_health/max_update_ratio_log10"].items():
        assert v == pytest.approx(math.log10(max(r[step] for r in ratios.values())), abs=1e-5)
    layout = [Layout.FromString(v.tensor.string_val[0]) for e in events if e.HasField("summary")
              for v in e.summary.value if v.tag == "custom_scalars__config__"][-1]
    assert layout.category[0].title == RUN_SECTION
    charts = {c.title: list(c.multiline.tag) for c in layout.category[0].chart}
    assert charts["worst_saturation · saturation above 0.5"] == [r"^(?:0_health/worst_saturation)$"]
    assert charts["min_update_ratio_log10 · update_ratio_low below -4"] == [
        r"^(?:0_health/min_update_ratio_log10)$"]
    assert "max_update_ratio_log10 · update_ratio_high above -1" in charts  # the default
    assert "backprop_log10_ratio · vanishing_gradients below -2, exploding_gradients above 2" \
        in charts


def test_histogram_vector_matches_numpy() -> None:
    torch.manual_seed(0)
    x = torch.randn(1000, dtype=torch.float64) * 3
    x[::97] = float("nan")
    x[5] = float("inf")
    vec = histogram_vector(x, bins=20)
    assert vec.dtype == torch.float32 and vec.shape == (25,)
    h = decode_histogram(3, "activations", "a", vec.tolist(), x.numel())
    assert h is not None
    fin = x[torch.isfinite(x)].numpy()
    counts, edges = np.histogram(fin, bins=20, range=(fin.min(), fin.max()))
    assert h.bucket_counts == counts.tolist()
    np.testing.assert_allclose(h.bucket_limits, edges[1:], rtol=1e-6)
    assert h.num == fin.size and h.nonfinite == x.numel() - fin.size
    np.testing.assert_allclose([h.min, h.max, h.sum, h.sum_squares],
                               [fin.min(), fin.max(), fin.sum(), (fin ** 2).sum()], rtol=1e-5)


@pytest.mark.parametrize(
    "x, expected",
    [(torch.zeros(7), [0, 0, 7]), (torch.full((4,), float("nan")), None),
     (torch.empty(0), None)],
    ids=["constant", "all-nan", "empty"])
def test_histogram_edge_cases(x: torch.Tensor, expected: list[int] | None) -> None:
    h = decode_histogram(0, "activations", "a", histogram_vector(x, bins=3).tolist(), x.numel())
    if expected is None:
        assert h is None
    else:
        assert h is not None and h.bucket_counts == expected
        assert h.bucket_limits == sorted(h.bucket_limits) and h.bucket_limits[-1] == 0.0


def test_histograms_follow_their_schedule_and_need_a_sink() -> None:
    mem = MemoryWriter()
    mon = _train(_model(), 7, sinks=[mem], flush_every=3, histogram_every=3)
    steps = {h.step for h in mem.histograms}
    assert steps == {0, 3, 6}
    groups = {(h.group, h.name) for h in mem.histograms if h.step == 3}
    assert ("activations", "1") in groups and ("backprop", "3") in groups
    assert ("gradients", "2.weight") in groups and ("weights", "2.weight") in groups
    assert mem.closed and mem.writes == 3 and mon.writer is None
    # Without a histogram sink, no histogram is computed at all.
    plain = gradscope.watch(_model(), summary=False)
    assert not plain._ctx.histograms_on
    plain.close()
    off = _train(_model(), 3, sinks=[mem2 := MemoryWriter()], histogram_every=None)
    assert mem2.histograms == [] and off.history.steps() == [0, 1, 2]


def test_writer_exposes_summary_writer_for_own_scalars(tmp_path: Path) -> None:
    model = _model()
    mon = gradscope.watch(model, logdir=tmp_path, summary=False)
    assert isinstance(mon.writer, TensorBoardWriter)
    assert isinstance(mon.writer.summary_writer, SummaryWriter)
    model(torch.randn(4, 6)).sum().backward()
    mon.writer.summary_writer.add_scalar("loss/train", 1.5, 0)
    mon.close()
    ea = _events(tmp_path)
    assert ea.Scalars("loss/train")[0].value == 1.5
    tags = ea.Tags()["scalars"]
    assert "dead_units/1" in tags and "grad_norm/0" in tags
    assert not any(t.startswith("param/") for t in tags)  # parameters=False by default


def test_foreground_writer_writes_the_same(tmp_path: Path) -> None:
    mons = {}
    for bg in (True, False):
        writer = TensorBoardWriter(tmp_path / str(bg), background=bg, images=False)
        mons[bg] = _train(_model(), 3, sinks=[writer], flush_every=2)
    tags = {bg: set(_events(tmp_path / str(bg)).Tags()["scalars"]) for bg in mons}
    assert tags[True] == tags[False] and "saturation/3" in tags[True]


@pytest.mark.parametrize("make_bad", [
    lambda p: (p / "file").write_text("x") and p / "file",
    lambda p: (p / "file").write_text("x") and p / "file" / "sub",
], ids=["a-file", "under-a-file"])
def test_unwritable_logdir_fails_at_watch(tmp_path: Path, make_bad: object) -> None:
    bad = make_bad(tmp_path)  # type: ignore[operator]
    model = _model()
    with pytest.raises(ValueError, match=r"watch\(logdir=.*file.*pass a directory you can write"):
        gradscope.watch(model, logdir=bad)
    assert not model._forward_hooks  # nothing was attached


def test_write_errors_warn_once_and_training_goes_on(tmp_path: Path) -> None:
    mon_model = _model()
    opt = torch.optim.SGD(mon_model.parameters(), lr=0.1)
    mon = gradscope.watch(mon_model, optimizer=opt, logdir=tmp_path, flush_every=1,
                          summary=False)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    mon.writer.summary_writer.add_scalar = broken  # type: ignore[union-attr, method-assign]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            opt.zero_grad()
            mon_model(torch.randn(4, 6)).sum().backward()
            opt.step()
        mon.close()
    msgs = [str(w.message) for w in caught if "writing TensorBoard events" in str(w.message)]
    # the error once, and at close how much could not be written (never "works again")
    assert len(msgs) == 2 and all("No space left" in m for m in msgs), msgs
    assert "failed during this run" in msgs[1] and "scalar values (steps 0..3)" in msgs[1]
    assert mon.history.steps() == [0, 1, 2, 3]


@pytest.mark.parametrize(("interval", "steps"), [(0, [0, 4, 8]), (math.inf, [8])],
                         ids=["every-flush", "only-at-close"])
def test_image_interval_inf_draws_the_images_once_at_close(
        tmp_path: Path, interval: float, steps: list[int]) -> None:
    writer = TensorBoardWriter(tmp_path, image_interval=interval, background=False)
    _train(_model(), 9, every=4, flush_every=4, sinks=[writer])
    assert [e.step for e in _events(tmp_path).Images("gradscope/gradient_flow")] == steps


def test_figures_are_images_and_none_without_data() -> None:
    h = History()
    assert gradient_flow_image(h) is None and unit_health_image(h) is None
    for i, g in enumerate([1e-6, 1e-3, 1.0]):
        h.add_layer(LayerInfo(f"fc{i}", kind="layer", order=i, type="Linear"))
        h.add_layer(LayerInfo(f"r{i}", kind="activation", order=i, type="ReLU", family="relu"))
        for step in range(3):
            h.add(step, f"fc{i}", "grad_norm", g)
            h.add(step, f"r{i}", "std", 1.0)
            h.add(step, f"r{i}", "dead_units", 0.1 * i)
    flow = gradient_flow_image(h, step=1)
    health = unit_health_image(h)
    for img in (flow, health):
        assert img is not None and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert img.std() > 10  # something was drawn
    assert not math.isnan(float(flow.mean()))  # type: ignore[union-attr]


def test_histograms_and_writer_add_no_host_sync_outside_flush(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With histograms on every step and a TensorBoard writer, hooks never read a value back.

    (The accelerator code path, taken on the CPU: see tests/test_monitor.py.)
    """
    monkeypatch.setattr(stats, "host_readable", lambda t: False)
    torch.manual_seed(0)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mem = MemoryWriter()
    mon = gradscope.watch(model, optimizer=opt, flush_every=1000, histogram_every=1,
                          logdir=tmp_path, sinks=[mem], summary=False)
    calls: list[str] = []
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        orig = getattr(torch.Tensor, name)

        def spy(self: torch.Tensor, *a: object, _n: str = name, _o: object = orig,
                **k: object) -> object:
            calls.append(_n)
            return _o(self, *a, **k)  # type: ignore[operator]

        monkeypatch.setattr(torch.Tensor, name, spy)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(BATCH, 6)).pow(2).mean().backward()
        opt.step()
    assert calls == []
    monkeypatch.undo()
    mon.close()
    assert {h.step for h in mem.histograms} == {0, 1, 2}


@pytest.mark.parametrize("x", [torch.randn(300, 37), torch.randn(5000) * 100,
                               torch.full((10,), 3.0), torch.rand(64).double(),
                               torch.tensor([1.0, 2.0, float("nan"), float("inf")])],
                         ids=["normal", "wide", "constant", "float64", "nonfinite"])
def test_cpu_histogram_shortcut_bins_like_the_device_path(
        x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = histogram_vector(x, 16)
    monkeypatch.setattr(stats, "host_readable", lambda t: False)  # the GPU code path
    general = histogram_vector(x, 16)
    assert torch.equal(fast[5:], general[5:])  # identical bin counts
    torch.testing.assert_close(fast[:5], general[:5], rtol=1e-5, atol=1e-6)


def test_a_dead_tensorboard_writer_thread_is_replaced_and_losses_counted(tmp_path: Path) -> None:
    """A full disk kills TensorBoard's own writer thread (every later write raises): the
    writer opens a new event file of the same run, and says what was lost."""
    from gradscope.events import runs_in
    from gradscope.writers import TensorBoardWriter

    writer = TensorBoardWriter(tmp_path, images=False, background=False)
    record_writer = writer.summary_writer._get_file_writer().event_writer._async_writer._writer
    real, state = record_writer.write, {"fail": False}

    def write(data: bytes) -> None:
        if state["fail"]:
            raise OSError(28, "No space left on device")
        real(data)

    record_writer.write = write
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradscope.watch(model, optimizer=opt, sinks=[writer], flush_every=1,
                             summary=False, histogram_every=None):
            for step in range(6):
                state["fail"] = step in (1, 2)
                opt.zero_grad()
                model(torch.randn(4, 6)).sum().backward()
                opt.step()
    said = [str(w.message) for w in caught if "No space left" in str(w.message)]
    assert any("works again" in m for m in said) and "failed during this run" in said[-1]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    steps = sorted({e.step for e in ea.Scalars(ea.Tags()["scalars"][0])})
    assert steps[-3:] == [3, 4, 5]  # written again after the disk was freed
    assert len(runs_in(tmp_path)) == 1  # the new event file belongs to the same run


def test_a_full_disk_leaves_no_empty_files_no_tracebacks_and_warns_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23.2: every write to the disk fails for 30 steps (as on a full disk: the file
    is created, nothing reaches it), then works. One warning when writing starts failing,
    one when it works again, the losses counted; no new event file per failed job, no
    empty file left, no ``Exception in thread`` traceback of TensorBoard's writer threads."""
    from tensorboard.compat import tf

    from gradscope.events import runs_in

    gfile, real = tf.io.gfile.GFile, tf.io.gfile.GFile.write
    full = {"on": False}

    def write(self: Any, data: Any) -> None:
        if full["on"]:
            Path(os.fsdecode(self.filename)).touch()  # the entry fits, the bytes do not
            raise OSError(28, "No space left on device")
        real(self, data)

    monkeypatch.setattr(gfile, "write", write)
    # the heat maps are drawn on the writer's thread, which would then lag behind the
    # "full disk" that this thread turns on and off by step: no heat maps here
    monkeypatch.setattr("gradscope.writers.tensorboard.heatmap_data", lambda *a, **k: [])
    died: list[BaseException] = []  # what would print "Exception in thread ..."
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradscope.watch(model, optimizer=opt, logdir=tmp_path, flush_every=2,
                             summary=False, histogram_every=None) as mon:
            for step in range(50):
                if step in (10, 40):  # the disk fills (empties) after what came before is written
                    mon.flush()
                    mon.writer._events.wait()  # the writer thread runs late under load
                full["on"] = 10 <= step < 40
                opt.zero_grad()
                model(torch.randn(4, 6)).sum().backward()
                opt.step()
    said = [str(w.message) for w in caught if "No space left" in str(w.message)]
    assert len(said) == 3, [str(w.message) for w in caught]  # starts failing, works again, what the run lost
    assert "failed in write()" in said[0] and "works again" in said[1]
    assert "failed during this run" in said[2]
    assert mon.writer.losses.lost > 0
    files = sorted(tmp_path.glob("events.out.tfevents.*"))
    assert [f for f in files if f.stat().st_size == 0] == []
    assert len(files) == 2  # the first file, and one more once the disk had room again
    assert len(runs_in(tmp_path)) == 1
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    steps = sorted({e.step for e in ea.Scalars(ea.Tags()["scalars"][0])})
    assert steps[-5:] == [45, 46, 47, 48, 49]
    assert died == []
