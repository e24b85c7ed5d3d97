"""gradscope on a GPU, as a user trains: six real workloads, monitored vs bare (issue 22).

For each workload, each monitored setting runs against a bare copy of the same model
(same initial weights, its own optimizer), in interleaved blocks of ``BLOCK`` steps
(bare, monitored, bare, monitored, ...), steps back to back with no synchronisation
inside a block, each block timed with CUDA events (``time.perf_counter`` on the CPU).
ratio = total monitored time / total bare time, flushes included. Also reported:

* kernels per step (``torch.profiler``, one step of each side: CUDA kernels on a GPU,
  ATen operations on the CPU), and their difference;
* host synchronisations per step off the flush and at a flush
  (``torch.cuda.set_sync_debug_mode("warn")``; on the CPU nothing synchronises: 0);
* extra peak memory: the monitored block's peak minus the bare block's.

Settings: ``bare`` (the baseline: every ratio is against it), ``every1`` and ``every10``
(gradscope's defaults otherwise: the fused Triton path on CUDA), ``every1_eager``
(``fused=False``: the path before issue 22) and ``item_hooks`` (per-layer ``.item()``
statistics and per-parameter gradient norms, the conventional approach).

Usage::

    python benchmarks/gpu.py --out results/gpu        # the six workloads, <= 8 min on an H200
    python benchmarks/gpu.py --quick --out /tmp/gpu   # one round of short blocks
    python benchmarks/gpu.py --smoke --out /tmp/gpu   # the CPU, tiny sizes; checks its outputs
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import ItemHooks, machine  # the same .item() baseline and machine record
from overhead import _SyncCounter as SyncCounter
from overhead import check_outputs as check_table

import gradscope

# ------------------------------------------------------------------ settings
BLOCK = 10  # steps per timed block (a multiple of every=10)
ROUNDS = 3  # bare/monitored block pairs per setting
WARMUP = 3  # steps per side before timing (cuDNN autotuning, Triton compiles)
QUICK = dict(block=10, rounds=1, warmup=2)
SMOKE = dict(block=2, rounds=1, warmup=1)
FLUSH_EVERY = 50  # gradscope's default
SETTINGS: dict[str, Optional[dict[str, Any]]] = {
    "every1": dict(every=1),
    "every10": dict(every=10),
    "every1_eager": dict(every=1, fused=False),
    "item_hooks": None,
}


@dataclass
class Workload:
    """A model, a batch maker and an optimizer, at full size or tiny (``--smoke``)."""

    name: str
    build: Callable[[bool], nn.Module]  # smoke -> model
    batch: Callable[[bool, torch.Generator], tuple[Tensor, Tensor]]  # (input, target) on CPU
    loss: Callable[[Tensor, Tensor], Tensor]
    adamw: bool = False
    autocast: Optional[torch.dtype] = None


def _images(n: int, size: int, classes: int, smoke_size: int = 16) -> Callable[..., Any]:
    def make(smoke: bool, g: torch.Generator) -> tuple[Tensor, Tensor]:
        b, s, k = (2, smoke_size, 10) if smoke else (n, size, classes)
        return torch.randn(b, 3, s, s, generator=g), torch.randint(0, k, (b,), generator=g)
    return make


def _tiny_cnn() -> nn.Module:
    """The ResNets' stand-in at ``--smoke`` size (a CPU runs the harness, not the model)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def _resnet50(smoke: bool) -> nn.Module:
    import torchvision
    return _tiny_cnn() if smoke else torchvision.models.resnet50()


def _resnet18(smoke: bool) -> nn.Module:
    import torchvision
    return _tiny_cnn() if smoke else torchvision.models.resnet18(num_classes=10)


def _vit(smoke: bool) -> nn.Module:
    import torchvision
    if smoke:
        return torchvision.models.VisionTransformer(16, 8, 1, 2, 16, 32, num_classes=10)
    return torchvision.models.vit_b_16()


class CausalEncoder(nn.Module):
    """12 x 768 ``nn.TransformerEncoder`` (GELU, pre-norm) on embeddings, a causal mask."""

    def __init__(self, smoke: bool) -> None:
        super().__init__()
        d, layers, heads = (16, 1, 2) if smoke else (768, 12, 12)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 1)

    def forward(self, x: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device)
        return self.head(self.encoder(x, mask=mask, is_causal=True)).squeeze(-1)


def _tokens(smoke: bool, g: torch.Generator) -> tuple[Tensor, Tensor]:
    b, t, d = (2, 8, 16) if smoke else (16, 512, 768)
    return torch.randn(b, t, d, generator=g), torch.randn(b, t, generator=g)


def _mlp(smoke: bool) -> nn.Module:
    width = 16 if smoke else 1000
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(784, width), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _digits(smoke: bool, g: torch.Generator) -> tuple[Tensor, Tensor]:
    b = 4 if smoke else 128
    return torch.randn(b, 784, generator=g), torch.randint(0, 10, (b,), generator=g)


_ce = nn.functional.cross_entropy


def _mse(out: Tensor, target: Tensor) -> Tensor:
    return nn.functional.mse_loss(out.float(), target)


WORKLOADS = [
    Workload("resnet50_fp32_b128", _resnet50, _images(128, 224, 1000), _ce),
    Workload("resnet50_bf16_b128", _resnet50, _images(128, 224, 1000), _ce,
             autocast=torch.bfloat16),
    Workload("vit_b16_bf16_b64_adamw", _vit, _images(64, 224, 1000), _ce, adamw=True,
             autocast=torch.bfloat16),
    Workload("transformer12x768_bf16_16x512", CausalEncoder, _tokens, _mse, adamw=True,
             autocast=torch.bfloat16),
    Workload("resnet18_32px_b256", _resnet18, _images(256, 32, 10), _ce),
    Workload("mlp5x1000_b128", _mlp, _digits, _ce),
]


# ------------------------------------------------------------------ one side
class Side:
    """A model, its optimizer and what watches it (nothing, gradscope or .item() hooks)."""

    def __init__(self, wl: Workload, model: nn.Module, setting: Optional[str],
                 device: torch.device) -> None:
        self.wl, self.model, self.device = wl, model, device
        params = model.parameters()
        self.opt = (torch.optim.AdamW(params, lr=1e-4) if wl.adamw
                    else torch.optim.SGD(params, lr=0.01, momentum=0.9))
        self.mon: Any = None
        self.hooks: Optional[ItemHooks] = None
        if setting == "item_hooks":
            self.hooks = ItemHooks(model)
        elif setting is not None:
            options = SETTINGS[setting]
            assert options is not None
            self.mon = gradscope.watch(model, optimizer=self.opt, summary=False, findings=False,
                                       flush_every=FLUSH_EVERY, **options)
        self.steps = 0

    def step(self, x: Tensor, y: Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        cast = (torch.autocast(self.device.type, dtype=self.wl.autocast)
                if self.wl.autocast is not None else nullcontext())
        with cast:
            loss = self.wl.loss(self.model(x), y)
        loss.backward()
        if self.hooks is not None:
            self.hooks.after_backward(self.steps)
        self.opt.step()
        self.steps += 1

    def close(self) -> None:
        if self.mon is not None:
            self.mon.close()
        if self.hooks is not None:
            self.hooks.close()


@contextmanager
def _timer(device: torch.device, out: list[float]) -> Iterator[None]:
    """Milliseconds of the block: CUDA events on a GPU (one sync at the block's end)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    else:
        t0 = time.perf_counter()
        yield
        out.append((time.perf_counter() - t0) * 1e3)


def _peak(device: torch.device, run: Callable[[], None]) -> Optional[int]:
    if device.type != "cuda":
        run()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def _kernels(device: torch.device, run: Callable[[], None]) -> int:
    """Kernels one ``run()`` launches (CUDA kernels; ATen operations on the CPU)."""
    from torch.profiler import DeviceType, ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
    if device.type == "cuda":
        return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def _syncs(device: torch.device, run: Callable[[], None]) -> int:
    if device.type != "cuda":
        run()
        return 0
    with SyncCounter() as c:
        run()
    return c.count


def measure(wl: Workload, setting: str, device: torch.device, block: int, rounds: int,
            warmup: int, smoke: bool) -> dict[str, Any]:
    """One (workload, setting): interleaved bare and monitored blocks, and the counts."""
    torch.manual_seed(0)
    base_model = wl.build(smoke).to(device)
    mon_model = copy.deepcopy(base_model)
    bare, monitored = Side(wl, base_model, None, device), Side(wl, mon_model, setting, device)
    gen = torch.Generator().manual_seed(1)
    x, y = (t.to(device) for t in wl.batch(smoke, gen))
    try:
        for _ in range(warmup):
            bare.step(x, y)
            monitored.step(x, y)
        a: list[float] = []
        b: list[float] = []
        peaks = {"bare": 0, "monitored": 0}
        for _ in range(rounds):
            for side, times, key in ((bare, a, "bare"), (monitored, b, "monitored")):
                def run(side: Side = side, times: list[float] = times) -> None:
                    with _timer(device, times):
                        for _ in range(block):
                            side.step(x, y)
                peak = _peak(device, run)
                peaks[key] = max(peaks[key], peak or 0)
        kernels_bare = _kernels(device, lambda: bare.step(x, y))
        kernels_mon = _kernels(device, lambda: monitored.step(x, y))
        if device.type == "cuda":
            torch.cuda.synchronize()
        # syncs: steps off the flush (the monitor's next flush is FLUSH_EVERY steps away
        # at most: count fewer steps than that), then one flush
        if monitored.mon is not None:
            monitored.mon.flush()
        n = max(1, min(block, FLUSH_EVERY - 1))
        syncs_off = _syncs(device, lambda: [monitored.step(x, y) for _ in range(n)]) / n
        syncs_flush = (_syncs(device, monitored.mon.flush) if monitored.mon is not None else 0)
    finally:
        bare.close()
        monitored.close()
    ms_bare, ms_mon = sum(a) / len(a) / block, sum(b) / len(b) / block
    return dict(workload=wl.name, setting=setting, device=str(device), ms_bare=ms_bare,
                ms_monitored=ms_mon, ratio=sum(b) / sum(a), kernels_bare=kernels_bare,
                kernels_monitored=kernels_mon, kernels_extra=kernels_mon - kernels_bare,
                syncs_per_step_off_flush=syncs_off, syncs_at_flush=syncs_flush,
                extra_peak_bytes=(peaks["monitored"] - peaks["bare"]) if device.type == "cuda"
                else None, bare_peak_bytes=peaks["bare"] if device.type == "cuda" else None)


# ------------------------------------------------------------------ output
COLUMNS = ["workload", "setting", "ms_bare", "ratio", "kernels_bare", "kernels_extra",
           "syncs_per_step_off_flush", "syncs_at_flush", "extra_peak_MiB"]


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], command: str) -> str:
    lines = [f"# gradscope on {info['gpu'] or 'the CPU (smoke)'}", "",
             f"torch {info['torch']}, gradscope {info['gradscope']}, {info['date_utc']}; "
             f"`{command}`", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        extra = r["extra_peak_bytes"]
        mib = "–" if extra is None else f"{extra / 2**20:.0f}"
        lines.append(f"| {r['workload']} | {r['setting']} | {r['ms_bare']:.2f} | "
                     f"{r['ratio']:.3f}x | {r['kernels_bare']} | {r['kernels_extra']} | "
                     f"{r['syncs_per_step_off_flush']:.2f} | {r['syncs_at_flush']} | {mib} |")
    return "\n".join(lines) + "\n"


def check_outputs(out: Path, expected: int) -> None:
    """Raise ``ValueError`` unless ``out`` holds a well-formed gpu.json and gpu.md."""
    for r in check_table(out, expected, "gpu", ("ratio", "ms_bare", "ms_monitored"), COLUMNS):
        if not (isinstance(r["kernels_bare"], int) and r["kernels_bare"] > 0):
            raise ValueError(f"bad kernels_bare in {r}")


def run_all(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Every selected (workload, setting), in order, printed as it goes."""
    plan = SMOKE if args.smoke else QUICK if args.quick else dict(block=BLOCK, rounds=ROUNDS,
                                                                     warmup=WARMUP)
    workloads = [w for w in WORKLOADS if args.workloads is None or w.name in args.workloads]
    settings = [s for s in SETTINGS if args.settings is None or s in args.settings]
    rows = []
    t0 = time.time()
    for wl in workloads:
        for setting in settings:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a model's own warnings, once per build
                rows.append(measure(wl, setting, device, smoke=args.smoke, **plan))
            r = rows[-1]
            print(f"{wl.name:32s} {setting:13s} {r['ms_bare']:8.2f} ms  {r['ratio']:.3f}x  "
                  f"+{r['kernels_extra']} kernels  syncs {r['syncs_per_step_off_flush']:.2f}"
                  f"/{r['syncs_at_flush']}  ({time.time() - t0:.0f} s)", flush=True)
    return rows


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="one round of blocks per setting")
    p.add_argument("--smoke", action="store_true", help="the CPU, tiny sizes; checks outputs")
    p.add_argument("--workloads", nargs="*", default=None)
    p.add_argument("--settings", nargs="*", default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    threads = torch.get_num_threads()
    if args.smoke:  # tiny ops: a second thread only waits for the first (on a busy machine, long)
        torch.set_num_threads(1)
    try:
        rows = run_all(args, device)
    finally:
        torch.set_num_threads(threads)
    info = machine()
    command = "python benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(
        {"machine": info, "command": command, "results": rows}, indent=1))
    (args.out / "gpu.md").write_text(markdown(rows, info, command))
    check_outputs(args.out, len(rows))
    return rows


__all__ = ["SETTINGS", "WORKLOADS", "Workload", "check_outputs", "main", "measure"]

if __name__ == "__main__":
    main()
