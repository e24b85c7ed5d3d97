"""torch.compile on real models: graph breaks gradscope adds, and activation statistics against eager.

For each model of ``tests/fixtures/zoo.py`` (random weights, batch ``BATCH``) three runs of
``STEPS`` SGD steps from the same seed: **eager** (``watch(model)``), **unwatched**
(``torch.compile(model)``, no gradscope) and **watched** (``watch(torch.compile(model))``),
both watched runs with ``every=EVERY``. It prints the captured call-sites of each
watched run, the graph breaks and unique graphs of the two compiled runs
(``torch._dynamo``'s counters: what gradscope adds is the difference), names with
``_orig_mod.``, and for each sampled step how many activation values equal the eager
run's bitwise and the largest relative difference (absolute floor 1e-6). Step 0 runs
eagerly in both watched runs (``force_eager``); later sampled steps follow steps that ran
compiled, whose inductor kernels round differently, so their weights and statistics
drift slightly from eager. Inductor's random numbers are the eager ones
(``fallback_random``), so dropout matches.

Usage::

    PYTHONPATH=. python benchmarks/compiled_models.py                  # a few models (minutes: each compiles)
    PYTHONPATH=. python benchmarks/compiled_models.py --models resnet18 transformer_gelu
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

import gradscope

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures.zoo import ZOO

SEED = 0
LR = 0.01
#: batch size: with the zoo's batch 2 at 32x32, BatchNorm's last layers normalise 2 values
#: (1x1 maps), whose input gradient is 0 up to rounding: gradients upstream are rounding
#: noise, different between eager and compiled kernels whatever gradscope does
BATCH = 8
STEPS = 4
EVERY = 2  # sampled steps: 0 and 2
DEFAULT_MODELS = ["resnet18", "mobilenet_v3_small", "vit", "transformer_gelu", "mixed"]
FLOOR = 1e-6  # absolute floor of the relative difference


def _run(name: str, how: str) -> tuple[Optional[gradscope.Monitor], int, int, float]:
    """``STEPS`` steps of model ``name`` run as ``how``; the monitor, graph breaks, unique graphs, seconds."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    torch.manual_seed(SEED)
    make, shape = ZOO[name]
    net = make()
    x = torch.randn(BATCH, *shape[1:])
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    model: nn.Module = net if how == "eager" else torch.compile(net)
    mon = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the coverage's and the compile's notes
        if how != "unwatched":
            mon = gradscope.watch(model, optimizer=opt, every=EVERY, summary=False)
        counters.clear()
        t0 = time.perf_counter()
        for _ in range(STEPS):
            model(x).float().pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        seconds = time.perf_counter() - t0
        if mon is not None:
            mon.close()
    return (mon, sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"],
            seconds)


def compare(name: str) -> dict[str, Any]:
    """The three runs of model ``name`` and what differs."""
    eager, _, _, _ = _run(name, "eager")
    _, breaks0, graphs0, _ = _run(name, "unwatched")
    watched, breaks1, graphs1, seconds = _run(name, "watched")
    assert eager is not None and watched is not None
    h, e = watched.history, eager.history
    equal: dict[int, int] = {}
    total: dict[int, int] = {}
    worst: dict[int, float] = {}
    for layer in e.layers("activation"):
        for metric in e.metrics(layer):
            steps, want = e.series(layer, metric)
            got = dict(zip(*h.series(layer, metric)))
            for step, w in zip(steps, want):
                g = got.get(step, math.nan)
                if math.isnan(g) and math.isnan(w):
                    continue
                total[step] = total.get(step, 0) + 1
                equal[step] = equal.get(step, 0) + (g == w)
                worst[step] = max(worst.get(step, 0.0), abs(g - w) / max(abs(w), FLOOR))
    return dict(model=name, sites_eager=len(e.layers("activation")),
                sites_compiled=len(h.layers("activation")), breaks=(breaks0, breaks1),
                graphs=(graphs0, graphs1),
                orig_mod=sum("_orig_mod" in n for n in h.layers()),
                equal={s: f"{equal[s]}/{total[s]}" for s in total},
                worst={s: f"{v:.1e}" for s, v in worst.items()}, seconds=round(seconds, 1))


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=DEFAULT_MODELS, choices=list(ZOO))
    args = p.parse_args(argv)
    torch._inductor.config.fallback_random = True  # dropout draws eager's random numbers
    print("model | sites eager/compiled | graph breaks unwatched/watched | unique graphs "
          "unwatched/watched | _orig_mod names | bitwise equal per sampled step | worst "
          "relative difference per sampled step")
    for name in args.models:
        r = compare(name)
        print(f"{r['model']} | {r['sites_eager']}/{r['sites_compiled']} | "
              f"{r['breaks'][0]}/{r['breaks'][1]} | {r['graphs'][0]}/{r['graphs'][1]} | "
              f"{r['orig_mod']} | {r['equal']} | {r['worst']}", flush=True)


if __name__ == "__main__":
    main()
