"""The experiments' optimisers by name.

==============  ==================================================================
name            optimiser (PyTorch defaults except the learning rate)
==============  ==================================================================
``sgd``         ``torch.optim.SGD``: ``w -= lr · g``
``momentum``    ``SGD(momentum=0.9)``
``adam``        ``Adam``: per-parameter steps ``lr · m̂ / (√v̂ + ε)``
``rmsprop``     ``RMSprop``: ``lr · g / √(E[g²] + ε)``
``adagrad``     ``Adagrad``: ``lr · g / √(Σ g² + ε)`` (the sum over all past steps)
``adadelta``    ``Adadelta``: ``lr · g · RMS[Δw] / RMS[g]`` (units of ``w``; ``lr=1`` is
                the paper's method)
``adamax``      ``Adamax``: Adam with the infinity norm, ``lr · m̂ / max(β₂u, |g|)``
==============  ==================================================================

All but ``sgd`` and ``momentum`` divide each parameter's step by a running scale of
its own gradient: a layer whose gradient is 100× smaller still moves about as far,
which is why they move the first layers of a deep sigmoid net where plain SGD
barely does (``gradscope preset optimizers`` measures it).

Example:
    >>> import torch
    >>> opt = make_optimizer("adamax", [torch.nn.Parameter(torch.zeros(2))], lr=0.002)
    >>> type(opt).__name__
    'Adamax'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

import torch

__all__ = ["ADAPTIVE", "DEFAULT_LR", "OPTIMIZERS", "make_optimizer"]

_FACTORIES: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
    "rmsprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr),
    "adagrad": lambda p, lr: torch.optim.Adagrad(p, lr=lr),
    "adadelta": lambda p, lr: torch.optim.Adadelta(p, lr=lr),
    "adamax": lambda p, lr: torch.optim.Adamax(p, lr=lr),
}
#: Optimisers by name (see the module docstring).
OPTIMIZERS = tuple(_FACTORIES)
#: Those that scale each parameter's step by its own gradient history.
ADAPTIVE = ("adam", "rmsprop", "adagrad", "adadelta", "adamax")
#: A usual learning rate for each: PyTorch's default for the adaptive ones, 0.1 for
#: SGD and 0.01 for momentum (the grid's MLP settings).
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.01, "adam": 1e-3, "rmsprop": 1e-2, "adagrad": 1e-2,
              "adadelta": 1.0, "adamax": 2e-3}


def make_optimizer(name: str, params: Iterable[Any], *, lr: float) -> torch.optim.Optimizer:
    """The optimiser ``name`` (one of :data:`OPTIMIZERS`) over ``params``."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"optimizer={name!r}: use one of {list(OPTIMIZERS)}")
    return factory(params, lr)
