"""What gradscope's findings say about a whole run: issue 24's sigmoid MLP without BatchNorm.

A 784 → 3×100 sigmoid → 10 MLP, weights N(0, 0.1²), biases 0, plain SGD, trained on
MNIST (``--synthetic``: the project's synthetic data when MNIST cannot be had),
watched at every step. For each seed it prints the test accuracy, the steps at which
the first/last gradient-RMS ratio was below the ``vanishing_gradients`` threshold,
and the findings at the end (``mon.findings()``: holding, then resolved episodes).
A run's findings must tell the episode that held mid-run, not only the last window.

Usage::

    python benchmarks/findings_story.py            # 1,000 steps, seeds 0-2, MNIST
    python benchmarks/findings_story.py --steps 200 --seeds 0 --synthetic
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import OrderedDict
from typing import Optional

import torch
from torch import nn

import gradscope
from gradscope.experiments.data import load_mnist, synthetic_dataset
from gradscope.findings import Thresholds

# ---------------------------------------------------------------- settings
DEPTH, WIDTH = 3, 100  # hidden layers, units each
INIT_STD = 0.1  # N(0, INIT_STD²) weights
LR, BATCH = 0.1, 60  # plain SGD
STEPS, SEEDS = 1000, (0, 1, 2)


def build(features: int, classes: int) -> nn.Sequential:
    """``fc1, act1, ..., out``: sigmoid hidden layers, weights N(0, INIT_STD²), no BatchNorm."""
    layers: list[tuple[str, nn.Module]] = []
    d = features
    for i in range(1, DEPTH + 1):
        layers += [(f"fc{i}", nn.Linear(d, WIDTH)), (f"act{i}", nn.Sigmoid())]
        d = WIDTH
    layers.append(("out", nn.Linear(d, classes)))
    model = nn.Sequential(OrderedDict(layers))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
            nn.init.zeros_(m.bias)
    return model


def run(seed: int, steps: int, data: object) -> None:
    """Train one seed and print what its findings say."""
    torch.manual_seed(seed)
    x, y = data.x_train, data.y_train  # type: ignore[attr-defined]
    model = build(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    order = torch.randperm(len(x))
    t0 = time.perf_counter()
    with gradscope.watch(model, optimizer=opt, summary=False) as mon:
        for step in range(steps):
            idx = order[(step * BATCH) % (len(x) - BATCH):][:BATCH]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()  # type: ignore[attr-defined]
    h = mon.history
    (s1, g1), (_, g2) = h.series("fc1", "grad_norm"), h.series("out", "grad_norm")
    n1, n2 = (sum(p.numel() for p in getattr(model, n).parameters()) for n in ("fc1", "out"))
    below = [s for s, a, b in zip(s1, g1, g2)
             if b > 0 and (a / math.sqrt(n1)) / (b / math.sqrt(n2)) < Thresholds().vanishing_ratio]
    span = f"{below[0]}..{below[-1]}" if below else "-"
    print(f"seed {seed}: test accuracy {acc:.3f}; ratio below {Thresholds().vanishing_ratio:g} "
          f"at {len(below)} of {steps} steps (first..last: {span}); {time.perf_counter() - t0:.0f}s")
    found = mon.findings()
    if not found:
        print("  no findings")
    for f in found:
        print(f"  {f.severity:<7} {f.rule:<20} {f.message}")
    sys.stdout.flush()


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--synthetic", action="store_true", help="the synthetic data, not MNIST")
    args = p.parse_args(argv)
    data = synthetic_dataset() if args.synthetic else load_mnist(quiet=True)
    print(f"{DEPTH}x{WIDTH} sigmoid, N(0, {INIT_STD}²), SGD lr {LR}, batch {BATCH}, "
          f"{args.steps} steps, {'synthetic' if args.synthetic else 'MNIST'}")
    for seed in args.seeds:
        run(seed, args.steps, data)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
