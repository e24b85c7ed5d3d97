"""``gradscope demo``: a sick and a healthy network side by side, in seconds, offline.

Trains two MLPs of the same shape on a synthetic 10-class problem (no download):
sparse inputs in [0, 1] like MNIST pixels, labelled by a fixed random linear teacher.

* ``sigmoid_normal``: sigmoid units, weights drawn from N(0, 1) — the textbook
  mistake: units saturate and the gradient reaching the first layers shrinks;
* ``relu_he``: ReLU units with He (Kaiming) initialisation.

Each trains under :func:`gradscope.watch` and writes a TensorBoard run under
``--logdir`` (default ``runs/demo``); a per-layer table and the findings are printed.

Example:
    >>> from gradscope.demo import run_demo
    >>> out = run_demo(logdir=None, steps=3, quiet=True)
    >>> sorted(out)
    ['relu_he', 'sigmoid_normal']
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

import gradscope
from gradscope.history import History
from gradscope.writers.paths import dir_problem

__all__ = ["EXAMPLES", "HELP", "configure", "make_model", "run", "run_demo"]

HELP = ("train a sick and a healthy network side by side (sigmoid with N(0,1) weights, ReLU with "
        "He init) on synthetic data, offline, and write their TensorBoard runs")
EXAMPLES = """\
examples:
  gradscope demo                          # both nets, 300 steps each, runs in runs/demo
  tensorboard --logdir runs/demo          # their dashboards
  gradscope report runs/demo              # the same numbers as tables
  gradscope demo --steps 50 --logdir /tmp/demo --seed 1
"""

# ---- settings ---------------------------------------------------------------
DEPTH, WIDTH, D_IN, CLASSES = 5, 32, 196, 10
BATCH, LR, STEPS, SEED = 64, 0.1, 300, 0
CONFIGS = {"sigmoid_normal": (nn.Sigmoid, "normal"), "relu_he": (nn.ReLU, "he")}
# ------------------------------------------------------------------------------


def make_model(act: type[nn.Module], init: str) -> nn.Sequential:
    """``D_IN -> DEPTH x WIDTH -> CLASSES`` MLP with ``act`` and ``init`` ("normal" or "he")."""
    layers: list[nn.Module] = []
    d = D_IN
    for i in range(DEPTH + 1):
        lin = nn.Linear(d, CLASSES if i == DEPTH else WIDTH)
        if init == "normal":
            nn.init.normal_(lin.weight, 0.0, 1.0)
        else:
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < DEPTH:
            layers.append(act())
        d = WIDTH
    return nn.Sequential(*layers)


def _teacher(gen: torch.Generator) -> torch.Tensor:
    """The fixed random linear map whose argmax labels the synthetic inputs."""
    return torch.randn(D_IN, CLASSES, generator=gen)


def _batch(teacher: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse inputs in [0, 1] (about 20% non-zero, like MNIST pixels) and their labels."""
    x = torch.rand(BATCH, D_IN, generator=gen) * (torch.rand(BATCH, D_IN, generator=gen) < 0.2)
    return x, (x @ teacher).argmax(1)


def run_demo(
    *, logdir: Optional[str] = "runs/demo", steps: int = STEPS, seed: int = SEED, quiet: bool = False
) -> dict[str, History]:
    """Train both configurations and return their histories by name."""
    out: dict[str, History] = {}
    for name, (act, init) in CONFIGS.items():
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        teacher = _teacher(gen)
        model = make_model(act, init)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        run_dir = str(Path(logdir) / name) if logdir is not None else None
        t0 = time.perf_counter()
        correct = 0
        with gradscope.watch(model, optimizer=opt, flush_every=25, summary=not quiet,
                             logdir=run_dir, overwrite=run_dir is not None) as mon:
            for _step in range(steps):
                x, y = _batch(teacher, gen)
                opt.zero_grad()
                logits = model(x)
                loss = nn.functional.cross_entropy(logits, y)
                loss.backward()
                opt.step()
                if _step >= steps - 20:
                    correct += int((logits.argmax(1) == y).sum())  # ok-sync: demo accuracy
        out[name] = mon.history
        if not quiet:
            acc = correct / (BATCH * min(20, steps))
            print(f"\n== {name}: {steps} steps in {time.perf_counter() - t0:.1f} s, "
                  f"train accuracy (last 20 steps) {acc:.1%}")
            print(_table(mon.history))
    if not quiet and logdir is not None:
        print(f"\nTensorBoard runs written to {logdir}/: tensorboard --logdir {logdir}")
    return out


def _table(h: History) -> str:
    """Per-layer summary at the last step: activation call-sites, then layers; a value the
    step does not have is ``-``, as in ``gradscope report``."""
    rows = ["  layer    saturation  dead_units  grad_out_rms  | layer  grad_norm  update_ratio"]
    acts, layers = h.layers("activation"), h.layers("layer")
    for i in range(max(len(acts), len(layers))):
        left = " " * 47
        if i < len(acts):
            a = acts[i]
            sat, dead, g = (_cell(h.last(m).get(a), f, w) for m, f, w in (
                ("saturation", ".2f", 10), ("dead_units", ".2f", 10), ("grad_out_rms", ".2e", 12)))
            left = f"  {a:<8} {sat}  {dead}  {g}   "
        right = ""
        if i < len(layers):
            la = layers[i]
            right = (f"| {la:<6} {_cell(h.last('grad_norm', 'layer').get(la), '.2e', 9)}  "
                     f"{_cell(h.last('update_ratio', 'layer').get(la), '.2e', 12)}")
        rows.append(left + right)
    return "\n".join(rows)


def _cell(v: Optional[float], fmt: str, width: int) -> str:
    """``v`` formatted and right-aligned in ``width``; ``-`` for a missing or NaN value."""
    text = "-" if v is None or math.isnan(v) else format(v, fmt)
    return f"{text:>{width}}"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradscope demo``."""
    parser.add_argument("--logdir", default="runs/demo", metavar="DIR",
                        help="where to write the two TensorBoard runs; a rerun replaces them "
                        "(default: runs/demo)")
    parser.add_argument("--steps", type=int, default=STEPS, metavar="N",
                        help=f"training steps per model, >= 1 (default: {STEPS})")
    parser.add_argument("--seed", type=int, default=SEED, metavar="INT",
                        help="seed of the weights, the synthetic data and the batch order, an "
                        f"integer >= 0; the same seed gives the same runs (default: {SEED})")


def run(args: argparse.Namespace) -> int:
    """Run ``gradscope demo``."""
    if args.steps < 1:
        raise SystemExit(f"gradscope demo: --steps {args.steps}: use an integer >= 1")
    if args.seed < 0:
        raise SystemExit(f"gradscope demo: --seed {args.seed}: use an integer >= 0")
    problem = dir_problem(Path(args.logdir))
    if problem is not None:
        raise SystemExit(f"gradscope demo: --logdir {args.logdir!r}: {problem}; pass a "
                         "directory you can write to (it is created if missing)")
    run_demo(logdir=args.logdir, steps=args.steps, seed=args.seed)
    return 0
