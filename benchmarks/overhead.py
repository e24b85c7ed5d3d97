"""Overhead of gradscope on a training step, as a ratio to the same loop unmonitored.

For each workload and setting the script builds two identical models (same
initial weights, same optimizer, same batches): ``A`` is never hooked, ``B`` is
monitored. It then runs their training steps interleaved in one process,
``A B A B ...``, so that load from other processes hits both alike, and reports
the median over blocks of ``BLOCK`` consecutive steps of ``time(B) / time(A)``
after a warm-up: every sampling period used here divides ``BLOCK``, so each block
holds its share of sampled and flush-free steps and the ratio is the amortised cost
(a median of single steps would hide the one sampled step in ten of ``every10``);
A and B of a block ran at the same time, so their ratio cancels other load, and the
median over blocks drops spikes. Two models rather than one
model attached and detached: attaching and detaching every step would measure
hook registration, and the two models see identical work.

Settings (``B`` side): gradscope with scalar statistics every step, every 10
steps, every step without update ratios, every step with device-side histograms
every 10 steps; and the conventional approaches written here for comparison:
``item_hooks`` (forward hooks calling ``.item()`` on per-layer statistics and
``grad.norm().item()`` per parameter, every step) and ``tb_histograms``
(``SummaryWriter.add_histogram`` of every parameter and gradient every step).
``compiled_every1`` and ``compiled_every10`` compile both sides with ``torch.compile``
(``B`` is ``watch(torch.compile(model))``): ``B``'s sampled steps run eagerly
(``torch.compiler.set_stance("force_eager")``, so that their activations are recorded),
its other steps run the compiled code; with ``every=1`` every ``B`` step runs eagerly.
The stance is process-global, so ``A``'s steps run under
``torch.compiler.set_stance("default")``: ``A`` is always compiled. They run only when
named in ``--settings`` (compiling every workload takes minutes).

Memory: on CUDA, the extra peak ``torch.cuda.max_memory_allocated`` of a ``B``
step over an ``A`` step. On CPU there is no allocator counter, so the script
reports the bytes the monitor itself holds: the largest total size of its queued
statistic tensors (reached just before a flush), the weight snapshot used for
update ratios when they are on (one copy of every parameter: O(parameters), not
O(layers)), and the fixed CPU scratch buffers statistics are computed in
(1 MiB each, at most 3 per thread, whatever the batch size).
RSS is not used: its high-water mark is process-wide and both models share it.

Syncs (CUDA only): host-device synchronisations counted per ``B`` step with
``torch.cuda.set_sync_debug_mode("warn")``, separately for flush and non-flush
steps.

Usage::

    PYTHONPATH=. python benchmarks/overhead.py            # full run (~9 min on 2 quiet cores)
    PYTHONPATH=. python benchmarks/overhead.py --quick    # fewer steps
    PYTHONPATH=. python benchmarks/overhead.py --smoke    # a few steps, checks the outputs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

import gradscope
from gradscope import stats as gs_stats
from gradscope.experiments.sequence import SequenceClassifier

# ----------------------------------------------------------------- settings
STEPS = 150  # measured steps per side and (workload, setting)
WARMUP = 5  # steps per side before measuring
QUICK_STEPS, QUICK_WARMUP = 60, 5
BLOCK = 10  # steps per timed block: a multiple of every sampling period (every=10)
SMOKE_STEPS, SMOKE_WARMUP = 2, 1
SMOKE_BATCH = 4  # --smoke runs every workload on this batch size, at SMOKE_WIDTH
SMOKE_WIDTH = 64  # hidden width (MLP), and channels/8 etc. for the others
SLOW_SETTING_STEPS = 20  # cap for tb_histograms (seconds per step on big models)
FLUSH_EVERY = 50  # gradscope's default
LR = 0.01
SEED = 0
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# ---------------------------------------------------------------------------


# ================================================================ workloads
def mlp(act: Callable[[], nn.Module], width: int, depth: int = 5) -> nn.Sequential:
    """784 -> depth x width -> 10 with ``act`` after each hidden Linear."""
    layers: list[nn.Module] = []
    d = 784
    for _ in range(depth):
        layers += [nn.Linear(d, width), act()]
        d = width
    layers.append(nn.Linear(d, 10))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN + skip, then the *same* ReLU module again (two call-sites)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + x)


class SmallCNN(nn.Module):
    """32x32x3 -> stem (conv-BN-ReLU) -> 2 ResBlocks of ``c`` channels -> pool -> 10."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(ResBlock(c), ResBlock(c))
        self.head = nn.Linear(c, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class Attention(nn.Module):
    """Multi-head self-attention written with an ``nn.Softmax`` module, so it is monitored.

    (``nn.TransformerEncoderLayer`` calls softmax functionally: no module, no hook.)
    """

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = self.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads))
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    """Pre-LN transformer block: LN -> attention, LN -> Linear-GELU-Linear."""

    def __init__(self, d: int, heads: int, ff: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class SmallTransformer(nn.Module):
    """Token embedding + 2 encoder layers (d=128, 4 heads, ff=512) + mean-pool head."""

    def __init__(self, vocab: int = 256, d: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.Sequential(*[EncoderLayer(d, 4, 4 * d) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.ln(self.layers(self.embed(tokens))).mean(dim=1))


@dataclass
class Workload:
    """A model factory and a batch factory."""

    name: str
    model: Callable[[bool], nn.Module]  # small -> model (small: the --smoke size)
    batch: Callable[[torch.Generator, int], Tensor]  # (generator, batch size) -> inputs
    batch_size: int


def _images(*shape: int) -> Callable[[torch.Generator, int], Tensor]:
    return lambda g, n: torch.randn((n, *shape), generator=g)


def _rand_images(*shape: int) -> Callable[[torch.Generator, int], Tensor]:
    return lambda g, n: torch.rand((n, *shape), generator=g)  # pixels in [0, 1]


WORKLOADS = [
    Workload("mlp5x1000_relu", lambda small: mlp(nn.ReLU, SMOKE_WIDTH if small else 1000),
             _images(784), 128),
    Workload("mlp5x1000_sigmoid", lambda small: mlp(nn.Sigmoid, SMOKE_WIDTH if small else 1000),
             _images(784), 128),
    Workload("mlp5x256_relu", lambda small: mlp(nn.ReLU, SMOKE_WIDTH if small else 256),
             _images(784), 128),
    # small, fast steps (~1.5 ms on 2 cores): the fixed per-hook cost shows most here
    Workload("mlp6x256_b64", lambda small: mlp(nn.ReLU, SMOKE_WIDTH if small else 256, depth=6),
             _images(784), 64),
    Workload("cnn_resnet32", lambda small: SmallCNN(8 if small else 16), _images(3, 32, 32), 32),
    Workload("transformer", lambda small: SmallTransformer(d=32 if small else 128),
             lambda g, n: torch.randint(0, 256, (n, 32), generator=g), 32),
    # recurrent nets (gradscope.capture.recurrent replays them on sampled steps)
    Workload("lstm_pixels100", lambda small: SequenceClassifier(
        "lstm", hidden=8 if small else 64, sequence="pixels"), _rand_images(784), 64),
    Workload("gru_rows28", lambda small: SequenceClassifier(
        "gru", hidden=8 if small else 64, sequence="rows"), _rand_images(784), 64),
]


# ============================================================ the B sides
class NullHistogramSink(gradscope.Sink):
    """Accepts records and histograms and drops them (measures capture, not disk I/O)."""

    def write(self, records: Any, history: Any) -> None:
        """Drop the records."""

    def write_histograms(self, histograms: Any) -> None:
        """Drop the histograms."""

    def close(self) -> None:
        """Nothing to release."""


class ItemHooks:
    """The conventional approach: per-layer ``.item()`` stats and per-parameter grad norms.

    Forward hooks on every activation module and Linear/Conv layer read mean, std
    and fraction of zeros with ``.item()``; after backward (called by the loop)
    every parameter's ``grad.norm().item()``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.log: list[float] = []
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if not list(m.children())]

    def _hook(self, module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.is_floating_point():
            with torch.no_grad():
                self.log += [out.mean().item(), out.std().item(), (out == 0).float().mean().item()]

    def after_backward(self, step: int) -> None:
        """Read every gradient norm."""
        for p in self.model.parameters():
            if p.grad is not None:
                self.log.append(p.grad.norm().item())
        self.log.clear()

    def close(self) -> None:
        """Remove the hooks."""
        for h in self.handles:
            h.remove()


class TBHistograms:
    """The conventional approach: ``SummaryWriter.add_histogram`` of every weight and grad."""

    def __init__(self, model: nn.Module, logdir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.model = model
        self.writer = SummaryWriter(logdir)

    def after_backward(self, step: int) -> None:
        """Write one weight and one gradient histogram per parameter."""
        for name, p in self.model.named_parameters():
            self.writer.add_histogram(f"weight/{name}", p, step)
            if p.grad is not None:
                self.writer.add_histogram(f"grad/{name}", p.grad, step)

    def close(self) -> None:
        """Close the event file."""
        self.writer.close()


#: setting name -> gradscope.watch options (``compile=True``: both sides compiled), or a
#: conventional approach's name.
SETTINGS: dict[str, Any] = {
    "every1": dict(every=1),
    "every10": dict(every=10),
    "every1_no_update_ratio": dict(every=1, update_ratio=False),
    "every1_hist10": dict(every=1, histogram_every=10, sinks=[NullHistogramSink()]),
    "item_hooks": "item_hooks",
    "tb_histograms": "tb_histograms",
}

#: Settings measured only when named (``--settings every1_eager``).
OPTIONAL_SETTINGS: dict[str, Any] = {
    # the eager statistics on a GPU too (the path before the fused Triton kernels, which CUDA
    # takes by default; the CPU always runs the eager path)
    "every1_eager": dict(every=1, fused=False),
    # both sides torch.compile'd (B: watch(torch.compile(model))): what gradscope costs a
    # compiled model (B's sampled steps run eagerly; every=1: all of them)
    "compiled_every1": dict(every=1, compile=True),
    "compiled_every10": dict(every=10, compile=True),
    "every10_no_check": dict(every=10, check_nonfinite=False),
    # the every-step check testing each activation output at its call (not through the outputs)
    "every10_check_all": dict(every=10, check_nonfinite="all"),
}


# ================================================================ harness
@dataclass
class Result:
    """One (workload, setting, device) measurement."""

    workload: str
    setting: str
    device: str
    steps: int
    ms_base: float
    ms_monitored: float
    ratio: float
    ratio_iqr: tuple[float, float]  # quartiles of the paired per-block ratios B/A
    ms_monitored_mean: float
    syncs_per_step: Optional[float] = None
    syncs_per_flush_step: Optional[float] = None
    extra_memory_bytes: Optional[int] = None
    memory_measure: str = ""
    notes: list[str] = field(default_factory=list)


class _Side:
    """A model, its optimizer and (for B) its monitoring."""

    def __init__(self, wl: Workload, device: torch.device, setting: Any, tmp: str,
                 small: bool, compiled: bool = False) -> None:
        torch.manual_seed(SEED)
        self.model = wl.model(small).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9)
        if compiled:
            self.model = torch.compile(self.model)  # type: ignore[assignment]
        self.mon: Optional[gradscope.Monitor] = None
        self.conv: Any = None
        # the unmonitored compiled side stays compiled while B holds "force_eager"
        self.stance = (lambda: torch.compiler.set_stance("default")) \
            if compiled and setting is None else contextlib.nullcontext
        if isinstance(setting, dict):
            options = {k: v for k, v in setting.items() if k != "compile"}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # compiled, every=1: "runs eagerly on every step"
                self.mon = gradscope.watch(self.model, optimizer=self.opt, summary=False,
                                           flush_every=FLUSH_EVERY, **options)
        elif setting == "item_hooks":
            self.conv = ItemHooks(self.model)
        elif setting == "tb_histograms":
            self.conv = TBHistograms(self.model, tmp)
        self.step_index = 0

    def step(self, x: Tensor, y: Tensor) -> None:
        with self.stance():
            self.opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(self.model(x), y)
            loss.backward()
            if self.conv is not None:
                self.conv.after_backward(self.step_index)
            self.opt.step()
        self.step_index += 1

    def held_bytes(self) -> int:
        """Bytes of the monitor's queued tensors now (CPU memory measure)."""
        if self.mon is None:
            return 0
        return self.mon.held_bytes()

    def close(self) -> None:
        if self.mon is not None:
            self.mon.close()
        if self.conv is not None:
            self.conv.close()


class _SyncCounter:
    """Counts host-device syncs inside the block via ``set_sync_debug_mode("warn")``."""

    def __enter__(self) -> _SyncCounter:
        self._catch = warnings.catch_warnings(record=True)
        self.caught = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)

    @property
    def count(self) -> int:
        return sum("synchroniz" in str(w.message).lower() for w in self.caught)


def measure(wl: Workload, setting_name: str, device: torch.device, steps: int,
            warmup: int, tmp: str, small: bool = False) -> Result:
    """Interleave A (unmonitored) and B (``setting_name``) steps; return block medians.

    ``small``: the ``--smoke`` size (tiny widths and batches), to check the code paths.
    """
    setting = {**SETTINGS, **OPTIONAL_SETTINGS}[setting_name]
    if setting == "tb_histograms":
        steps = min(steps, SLOW_SETTING_STEPS)
    cuda = device.type == "cuda"
    compiled = isinstance(setting, dict) and bool(setting.get("compile"))
    a = _Side(wl, device, None, tmp, small, compiled)
    b = _Side(wl, device, setting, tmp, small, compiled)
    g = torch.Generator().manual_seed(SEED)
    n = SMOKE_BATCH if small else wl.batch_size
    batches = [(wl.batch(g, n).to(device), torch.randint(0, 10, (n,), generator=g).to(device))
               for _ in range(8)]
    times: dict[str, list[float]] = {"a": [], "b": []}
    peak = {"a": 0, "b": 0}
    syncs, flush_syncs = [], []
    held = 0
    snapshot = 0
    if b.mon is not None and b.mon.record_update_ratio:
        snapshot = sum(p.numel() * p.element_size() for p in b.model.parameters())
    try:
        for i in range(warmup + steps):
            x, y = batches[i % len(batches)]
            for key, side in (("a", a), ("b", b)):
                if cuda:
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                    counter = _SyncCounter() if key == "b" else None
                    start.record()
                    if counter is not None:
                        with counter:
                            side.step(x, y)
                    else:
                        side.step(x, y)
                    end.record()
                    torch.cuda.synchronize(device)
                    ms = start.elapsed_time(end)
                    step_peak = torch.cuda.max_memory_allocated(device) - base
                    if i >= warmup:
                        peak[key] = max(peak[key], step_peak)
                        if counter is not None:
                            flushed = b.mon is not None and b.mon.step % FLUSH_EVERY == 0
                            (flush_syncs if flushed else syncs).append(counter.count)
                else:
                    if key == "b":
                        held = max(held, side.held_bytes())
                    t0 = time.perf_counter()
                    side.step(x, y)
                    ms = (time.perf_counter() - t0) * 1e3
                if i >= warmup:
                    times[key].append(ms)
    finally:
        a.close()
        b.close()
    med_a, med_b = _block_median(times["a"]), _block_median(times["b"])
    q1, ratio, q3 = _ratio_quartiles(times["a"], times["b"])
    res = Result(wl.name, setting_name, device.type, steps, med_a, med_b, ratio, (q1, q3),
                 statistics.fmean(times["b"]))
    if cuda:
        res.syncs_per_step = statistics.fmean(syncs) if syncs else 0.0
        res.syncs_per_flush_step = statistics.fmean(flush_syncs) if flush_syncs else None
        res.extra_memory_bytes = max(0, peak["b"] - peak["a"])
        res.memory_measure = "cuda max_memory_allocated, B step peak - A step peak"
    elif b.mon is not None:
        scratch = sum(t.numel() * t.element_size()
                      for t in getattr(gs_stats._scratch, "bufs", {}).values())
        res.extra_memory_bytes = held + snapshot + scratch
        res.memory_measure = ("monitor queue peak + update-ratio weight snapshot + "
                              "fixed CPU scratch buffers (gradscope.stats.cpu_scratch)")
    return res


def _block_median(times: list[float]) -> float:
    """Median over blocks of ``BLOCK`` consecutive steps of the mean step time (ms).

    With fewer than ``BLOCK`` steps (``--smoke``) it is the median step.
    """
    blocks = [statistics.fmean(times[i:i + BLOCK])
              for i in range(0, len(times) - BLOCK + 1, BLOCK)]
    return statistics.median(blocks or times)


def _ratio_quartiles(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Quartiles (lower, median, upper) of B/A over paired blocks of ``BLOCK`` steps.

    The A and B steps of a block ran interleaved at the same time, so each block's
    ratio cancels what the machine was doing then; the median over blocks is the
    reported ratio and the quartiles show how much it wanders.
    """
    n = min(len(a), len(b))
    k = BLOCK if n >= BLOCK else 1
    ratios = [statistics.fmean(b[i:i + k]) / statistics.fmean(a[i:i + k])
              for i in range(0, n - k + 1, k)]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q = statistics.quantiles(ratios, n=4)
    return q[0], statistics.median(ratios), q[2]


def machine() -> dict[str, Any]:
    """CPU model, threads, GPU and versions."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gradscope": gradscope.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# ================================================================ output
COLUMNS = ["workload", "setting", "device", "ratio", "ratio_iqr", "ms_base", "ms_monitored",
           "syncs_per_step", "extra_memory"]


def _fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.1f} MiB"


def markdown(results: list[Result], info: dict[str, Any], command: str) -> str:
    """The results as a markdown table with the machine and command above it."""
    lines = [
        f"# gradscope overhead ({info['date_utc']})",
        "",
        f"Machine: {info['cpu']} ({info['cpu_count']} CPUs, {info['torch_threads']} torch "
        f"threads), GPU: {info['gpu'] or 'none'}, torch {info['torch']}, "
        f"Python {info['python']}.",
        "",
        f"Command: `{command}`",
        "",
        f"ratio = median over blocks of {BLOCK} interleaved steps of monitored / unmonitored "
        "time (amortised: sampled, skipped and flush steps alike); ratio_iqr: the quartiles "
        "of those block ratios (the run's own noise); ms_*: median block time per step.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in results:
        syncs = "-" if r.syncs_per_step is None else f"{r.syncs_per_step:.2f}"
        lines.append(f"| {r.workload} | {r.setting} | {r.device} | {r.ratio:.3f} | "
                     f"{r.ratio_iqr[0]:.2f}–{r.ratio_iqr[1]:.2f} | "
                     f"{r.ms_base:.2f} | {r.ms_monitored:.2f} | {syncs} | "
                     f"{_fmt_bytes(r.extra_memory_bytes)} |")
    return "\n".join(lines) + "\n"


def check_outputs(out: Path, expected: int, name: str = "overhead",
                  positive: tuple[str, ...] = ("ratio", "ms_base", "ms_monitored"),
                  columns: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """Raise ``ValueError`` unless ``out`` holds a well-formed ``name``.json (``expected``
    results whose ``positive`` keys are finite and > 0) and ``name``.md table (one column
    per ``columns``); the results."""
    data = json.loads((out / f"{name}.json").read_text())
    if set(data) != {"machine", "command", "results"}:
        raise ValueError(f"{name}.json keys: {sorted(data)}")
    if len(data["results"]) != expected:
        raise ValueError(f"{len(data['results'])} results, expected {expected}")
    for r in data["results"]:
        for key in positive:
            if not (isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0):
                raise ValueError(f"bad {key} in {r}")
    width = len(columns if columns is not None else COLUMNS) + 1
    rows = [ln for ln in (out / f"{name}.md").read_text().splitlines() if ln.startswith("| ")]
    if len(rows) != expected + 1 or any(ln.count("|") != width for ln in rows):
        raise ValueError(f"{name}.md: malformed table")
    return data["results"]


# ================================================================== main
def main(argv: Optional[list[str]] = None) -> list[Result]:
    """Run the benchmark and write ``overhead.json`` and ``overhead.md``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=STEPS, help="measured steps per side")
    p.add_argument("--warmup", type=int, default=WARMUP)
    p.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps")
    p.add_argument("--smoke", action="store_true", help="a few steps; check the outputs")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--workloads", nargs="*", default=None, help="names (default: all)")
    p.add_argument("--settings", nargs="*", default=None, help="names (default: all)")
    p.add_argument("--no-cuda", action="store_true", help="CPU only")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's own choice)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    steps, warmup = args.steps, args.warmup
    if args.quick:
        steps, warmup = QUICK_STEPS, QUICK_WARMUP
    if args.smoke:
        steps, warmup = SMOKE_STEPS, SMOKE_WARMUP
    workloads = [w for w in WORKLOADS if args.workloads is None or w.name in args.workloads]
    settings = args.settings or list(SETTINGS)
    unknown = [s for s in settings if s not in SETTINGS and s not in OPTIONAL_SETTINGS]
    if unknown:
        p.error(f"unknown settings {unknown}; choose from {list(SETTINGS) + list(OPTIONAL_SETTINGS)}")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    command = "PYTHONPATH=. python benchmarks/overhead.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    print(f"command: {command.strip()}", flush=True)
    info = machine()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for dev in devices:
            for wl in workloads:
                for s in settings:
                    r = measure(wl, s, dev, steps, warmup, tmp, small=args.smoke)
                    results.append(r)
                    syncs = "" if r.syncs_per_step is None else f"  syncs/step {r.syncs_per_step}"
                    print(f"{wl.name:20s} {s:24s} {dev.type:4s} ratio {r.ratio:6.3f}  "
                          f"{r.ms_base:8.2f} -> {r.ms_monitored:8.2f} ms{syncs}  "
                          f"mem {_fmt_bytes(r.extra_memory_bytes)}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overhead.json").write_text(json.dumps(
        {"machine": info, "command": command.strip(),
         "results": [asdict(r) for r in results]}, indent=1))
    (args.out / "overhead.md").write_text(markdown(results, info, command.strip()))
    if args.smoke:
        check_outputs(args.out, len(results))
        print(f"smoke: {len(results)} results, outputs well formed in {args.out}")
    else:
        print(markdown(results, info, command.strip()))
    return results


if __name__ == "__main__":
    main()
