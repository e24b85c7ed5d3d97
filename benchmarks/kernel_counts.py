"""Kernels launched and bytes read by gradscope per hook, on the accelerator (GPU) code path.

Where no GPU is at hand, the GPU cost of the hooks can still be argued from
counts: every tensor operation gradscope dispatches is (at least) one kernel
launch on a GPU, and the bytes it reads bound its memory traffic. This script
counts them on the CPU with the accelerator code path forced (no host reads,
no CPU scratch buffers: exactly what runs on CUDA), by running the same
training step with and without the monitor under a ``TorchDispatchMode`` that
counts every ATen operation that is not a view or an allocation, per phase of
the step:

* ``forward``: the activation hooks (per activation call-site),
* ``backward``: the back-propagated-gradient hooks (per call-site),
* ``optimizer``: gradient/weight norms, the weight snapshot and update norms,
  and the end of the step (unit windows, stacking the step's results), for the
  whole model,
* ``flush``: the one transfer per device and what prepares it.

The approach ``gradscope, unsampled step`` counts a step that ``every`` does not
sample: what is left there is the every-step NaN/Inf check.

The approaches ``gradscope fused ...`` count the fused path that CUDA takes by default
(:mod:`gradscope.kernels`): its Triton kernels run here under Triton's interpreter, each
launch counted as one kernel (what the interpreter does to emulate a device is not
counted) and the bytes each reads (every element of its tensor once) added to the ATen
operations' bytes. The eager approaches are counted with ``watch(fused=False)``.

It also counts host reads (``aten._local_scalar_dense``, i.e. ``.item()``: a
GPU sync each) outside the flush, which must be 0 for gradscope, and the same
figures for the conventional ``.item()`` hooks of ``benchmarks/overhead.py``.

Usage::

    PYTHONPATH=. python benchmarks/kernel_counts.py            # markdown table on stdout
    PYTHONPATH=. python benchmarks/kernel_counts.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import mlp  # the benchmark's MLP: 784 -> depth x width -> 10

import gradscope
from gradscope import kernels, stats
from gradscope.kernels import engine

_FREE = {"empty", "empty_strided", "detach", "alias", "lift_fresh", "set_"}


class Counter(TorchDispatchMode):
    """Counts non-view, non-allocation ATen ops and the bytes of their tensor inputs, per phase."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "outside"
        self.ops: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)
        self.reads: dict[str, int] = defaultdict(int)
        self.names: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.launches: dict[str, int] = defaultdict(int)  # Triton kernels (the fused path)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if engine.launching():  # the interpreter emulating a device: not gradscope's work
            return func(*args, **kwargs)
        if name == "_local_scalar_dense":
            self.reads[self.phase] += 1
        elif not func.is_view and name not in _FREE:
            self.ops[self.phase] += 1
            self.names[self.phase][name] += 1
            flat, _ = tree_flatten((args, kwargs))
            self.bytes[self.phase] += sum(t.numel() * t.element_size() for t in flat
                                          if isinstance(t, torch.Tensor))
        return func(*args, **kwargs)

    @contextmanager
    def at(self, phase: str) -> Iterator[None]:
        before, self.phase = self.phase, phase
        launched = sum(engine.LAUNCHES.values())
        read = sum(engine.READ_BYTES.values())
        try:
            yield
        finally:
            n = sum(engine.LAUNCHES.values()) - launched
            self.ops[phase] += n
            self.launches[phase] += n
            self.names[phase]["triton"] += n
            self.bytes[phase] += sum(engine.READ_BYTES.values()) - read
            self.phase = before


def count_step(act: Callable[[], nn.Module], attach: Optional[Callable[[nn.Module, Any], Any]],
               *, depth: int = 4, width: int = 256, batch: int = 64) -> Counter:
    """Counts of the third training step (after two warm-up steps) of an MLP, by phase."""
    torch.manual_seed(0)
    model = mlp(act, width, depth)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mon = attach(model, opt) if attach is not None else None
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 784, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    counter = Counter()
    for i in range(3):
        with counter if i == 2 else nullcontext():
            at = counter.at if i == 2 else (lambda phase: nullcontext())
            opt.zero_grad(set_to_none=True)
            with at("forward"):
                loss = nn.functional.cross_entropy(model(x), y)
            with at("backward"):
                loss.backward()
            with at("optimizer"):
                opt.step()
    if mon is not None and hasattr(mon, "flush"):
        with counter, counter.at("flush"):
            mon.flush()
    if mon is not None and hasattr(mon, "close"):
        mon.close()
    return counter


def _gradscope(model: nn.Module, opt: Any, fused: bool = False) -> Any:
    return gradscope.watch(model, optimizer=opt, every=1, flush_every=10**6, summary=False,
                           findings=False, fused=fused)


def _gradscope_unsampled(model: nn.Module, opt: Any, fused: bool = False) -> Any:
    """``every=10``-style unsampled steps (only step 0 is sampled): the every-step NaN/Inf check."""
    return gradscope.watch(model, optimizer=opt, every=10**9, flush_every=10**6, summary=False,
                           findings=False, fused=fused)


def _fused(model: nn.Module, opt: Any) -> Any:
    return _gradscope(model, opt, fused=True)


def _fused_unsampled(model: nn.Module, opt: Any) -> Any:
    return _gradscope_unsampled(model, opt, fused=True)


def _fused_check_all(model: nn.Module, opt: Any) -> Any:
    """Unsampled steps with each activation output tested at its call (``check_nonfinite='all'``)."""
    return gradscope.watch(model, optimizer=opt, every=10**9, flush_every=10**6, summary=False,
                           findings=False, fused=True, check_nonfinite="all")


class _ItemHooks:
    """The conventional approach of ``benchmarks/overhead.py``: ``.item()`` in every hook."""

    def __init__(self, model: nn.Module, opt: Any) -> None:
        self.handles = []
        for m in model.modules():
            if not list(m.children()) and not list(m.parameters(recurse=False)):
                self.handles.append(m.register_forward_hook(self._fwd))
        self.params = list(model.parameters())
        opt.register_step_pre_hook(self._grads)

    def _grads(self, *args: Any) -> None:
        for p in self.params:
            p.grad.norm().item()

    @staticmethod
    def _fwd(module: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        o = out.detach()
        o.mean().item(), o.std().item(), (o <= 0).float().mean().item()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


#: What is counted: the eager path (fused=False), the fused path (the default on CUDA, its
#: Triton kernels interpreted here), each on a sampled and an unsampled step, and .item() hooks.
APPROACHES: dict[str, Callable[[nn.Module, Any], Any]] = {
    "gradscope": _gradscope, "gradscope, unsampled step": _gradscope_unsampled,
    "gradscope fused": _fused, "gradscope fused, unsampled step": _fused_unsampled,
    "gradscope fused, unsampled, check all": _fused_check_all, "item_hooks": _ItemHooks,
}

FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "ReLU": nn.ReLU, "LeakyReLU": nn.LeakyReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh,
    "GELU": nn.GELU, "ELU": nn.ELU, "Softmax": lambda: nn.Softmax(dim=-1),
}


def measure(depth: int = 4, width: int = 256, batch: int = 64,
            families: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """One row per family (``families``: these of :data:`FAMILIES`) and approach: extra
    kernels, bytes and host reads per hook and phase."""
    real = (stats.host_readable, stats.uses_scratch, stats.cpu_kernels)
    # the accelerator path: no host reads, no CPU scratch buffers, no CPU-only kernels
    stats.host_readable = stats.uses_scratch = stats.cpu_kernels = (  # type: ignore[assignment]
        lambda t: False)
    try:
        rows = []
        act_bytes = batch * width * 4
        n_params = 2 * (depth + 1)
        for fam, act in FAMILIES.items():
            if families is not None and fam not in families:
                continue
            base = count_step(act, None, depth=depth, width=width, batch=batch)
            for approach, attach in APPROACHES.items():
                if approach.startswith("gradscope fused") and kernels.missing(True) is not None:
                    continue  # no triton: no fused path to count
                with kernels.interpreted() if "fused" in approach else nullcontext():
                    c = count_step(act, attach, depth=depth, width=width, batch=batch)

                def extra(phase: str, c: Counter = c, base: Counter = base) -> tuple[int, int]:
                    return c.ops[phase] - base.ops[phase], c.bytes[phase] - base.bytes[phase]

                fwd, bwd, opt_ = (extra(p) for p in ("forward", "backward", "optimizer"))
                rows.append(dict(
                    family=fam, approach=approach, sites=depth, params=n_params,
                    activation_bytes=act_bytes,
                    kernels_per_activation_hook=fwd[0] / depth,
                    activation_reads_per_hook=fwd[1] / depth / act_bytes,
                    kernels_per_backprop_hook=bwd[0] / depth,
                    kernels_per_call_site_step=(fwd[0] + bwd[0]) / depth,
                    triton_launches={p: c.launches[p] for p in ("forward", "backward",
                                                                 "optimizer", "flush")},
                    kernels_optimizer=opt_[0],
                    bytes_optimizer=opt_[1],
                    kernels_flush=c.ops["flush"],
                    host_reads_outside_flush=sum(v for k, v in c.reads.items() if k != "flush"),
                    host_reads_flush=c.reads["flush"],
                    forward_ops={k: v - base.names["forward"].get(k, 0)
                                 for k, v in c.names["forward"].items()
                                 if v != base.names["forward"].get(k, 0)},
                ))
        return rows
    finally:
        stats.host_readable, stats.uses_scratch, stats.cpu_kernels = real  # type: ignore[assignment]


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| family | approach | kernels / activation hook | reads of the activation / hook "
            "| kernels / backprop hook | kernels / call-site (fwd + bwd) "
            "| kernels at the optimizer step and end of step (model) "
            "| host reads outside flush (GPU syncs) |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['family']} | {r['approach']} | {r['kernels_per_activation_hook']:.1f} "
                     f"| {r['activation_reads_per_hook']:.1f} | {r['kernels_per_backprop_hook']:.1f} "
                     f"| {r['kernels_per_call_site_step']:.1f} "
                     f"| {r['kernels_optimizer']} | {r['host_reads_outside_flush']} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--families", nargs="*", default=None, help=f"some of {list(FAMILIES)}")
    args = p.parse_args(argv)
    rows = measure(args.depth, args.width, args.batch, args.families)
    print(f"MLP {args.depth}x{args.width}, batch {args.batch}, {2 * (args.depth + 1)} parameter "
          f"tensors; every=1, update ratios on; counted on the accelerator code path "
          f"(torch {torch.__version__}).\n")
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
