"""Activation call-sites gradscope captures on real models, against an independent count.

For each model (random weights, batch 2, 32x32 images: ``tests/fixtures/zoo.py``) one training step is run under
:func:`gradscope.watch`; ``captured`` is the number of activation series in the
history, ``true`` the number of activation ops that forward ran, counted below
autograd by ``tests/fixtures/counting.py`` (a ``TorchDispatchMode``; it shares no
code with gradscope). ``by module`` / ``by function`` and ``not seen`` come from
``mon.coverage()``. The tests (``tests/test_models.py``) assert captured == true on
the models of CI; this script prints the table of docs/models.md.

Usage::

    PYTHONPATH=. python benchmarks/model_coverage.py                 # every model (~1 min)
    PYTHONPATH=. python benchmarks/model_coverage.py --models googlenet swin_t
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import torch

import gradscope

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures.counting import true_call_sites
from tests.fixtures.zoo import ZOO

SEED = 0


def measure(name: str) -> dict[str, Any]:
    """One training step of model ``name`` under watch(); its counts."""
    make, shape = ZOO[name]
    torch.manual_seed(SEED)
    model = make().train()
    x = torch.randn(shape)
    true = true_call_sites(model, x)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradscope.watch(model, summary=False) as mon:
            out = model(x)
            (out if isinstance(out, torch.Tensor) else out[0]).float().pow(2).mean().backward()
            cov: Optional[Any] = mon.coverage() if hasattr(mon, "coverage") else None
    row: dict[str, Any] = {"model": name, "true": true,
                           "captured": len(mon.history.layers("activation")),
                           "seconds": round(time.perf_counter() - t0, 2)}
    if cov is not None:
        kinds = Counter(u.split(" in ")[0] for u in cov.unseen)
        row.update(by_module=cov.by_module, by_function=cov.by_function,
                   not_seen="; ".join(f"{n} x {k}" for k, n in kinds.items()) or "-")
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as the table of docs/models.md."""
    cols = ["model", "captured", "true"] + [c for c in ("by_module", "by_function", "not_seen")
                                           if c in rows[0]]
    lines = ["| " + " | ".join(c.replace("_", " ") for c in cols) + " |",
             "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """Measure the models and print the table (and ``--json`` rows)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=list(ZOO), choices=list(ZOO))
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    rows = []
    for name in args.models:
        rows.append(measure(name))
        print(rows[-1], flush=True)
    print(markdown(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
