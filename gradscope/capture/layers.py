"""Which modules are layers, and which parameters each uses: its own, and those of its
parametrizations (``torch.nn.utils.parametrize``), named after the tensor they make
(``0.weight`` for ``original``, ``0.weight.original0``).

Example:
    >>> import torch.nn as nn
    >>> parameter_shapes(nn.Sequential(nn.Linear(3, 2)), lambda name, module: True)
    {'0.weight': (2, 3), '0.bias': (2,)}
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Callable

from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["layers", "parameter_shapes"]


def layers(model: nn.Module, include: Callable[[str, nn.Module], bool]
           ) -> Iterator[tuple[str, nn.Module, list[tuple[str, Tensor, nn.Module, str]]]]:
    """``(name, module, own)`` of each included module with trainable parameters of its own
    (``own``: ``(name, parameter, holder, key)``, each parameter once over the model)."""
    seen: set[int] = set()
    inside = {id(m) for module in model.modules() if parametrize.is_parametrized(module)
              for m in _parametrizations(module).modules()}
    for name, module in model.named_modules():
        if id(module) in inside or not include(name, module):
            continue
        own = [(n, p, h, a) for n, p, h, a in _own_parameters(module)
               if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for _, p, _, _ in own)
        if own:
            yield name, module, own


def parameter_shapes(model: nn.Module, include: Callable[[str, nn.Module], bool]
                     ) -> dict[str, tuple[int, ...]]:
    """The shape of each parameter :class:`ParamCapture` records, by the name it gives it."""
    return {f"{name}.{p}" if name else p: tuple(t.shape)
            for name, _, own in layers(model, include) for p, t, _, _ in own}


def _own_parameters(module: nn.Module) -> list[tuple[str, Tensor, nn.Module, str]]:
    """``(name, parameter, holder, key)`` of the parameters ``module`` uses itself: its own,
    and those of its parametrizations (``weight`` for ``original``)."""
    own: list[tuple[str, Tensor, nn.Module, str]] = [
        (n, p, module, n) for n, p in module.named_parameters(recurse=False)]
    if parametrize.is_parametrized(module):
        for tensor, plist in _parametrizations(module).items():
            for path, holder in plist.named_modules():
                for key, p in holder.named_parameters(recurse=False):
                    name = ".".join(x for x in (tensor, path, key) if x)
                    own.append((tensor if name == f"{tensor}.original" else name, p, holder, key))
    return own


def _parametrizations(module: nn.Module) -> nn.ModuleDict:
    """The ``ModuleDict`` of a parametrized module's parametrizations."""
    return module.parametrizations  # type: ignore[return-value]
