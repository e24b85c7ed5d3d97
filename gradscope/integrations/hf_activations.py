"""The activation modules of ``transformers.activations`` as gradscope families.

Registered the first time gradscope meets a module from ``transformers``
(:func:`gradscope.activations.family_of` imports this module then), so a model
watched directly with :func:`gradscope.watch` is covered as well as one trained
with the Hugging Face callback.

================================================================  ==============================
class                                                             family
================================================================  ==============================
``GELUActivation``                                                ``gelu`` (exact, as ``nn.GELU``)
``NewGELUActivation``, ``GELUTanh``, ``PytorchGELUTanh``,         ``gelu`` with the tanh form's
``FastGELUActivation``, ``AccurateGELUActivation``                derivative
``QuickGELUActivation``: ``x σ(1.702 x)``                         ``quick_gelu`` (negative regime)
``SiLUActivation``                                                ``silu``
``ReLUSquaredActivation``: ``relu(x)²``                           ``relu_squared`` (dead units)
================================================================  ==============================

Other classes there (``ClippedGELUActivation``, ``MishActivation``,
``LaplaceActivation``, ``XIELUActivation``, ...) are not guessed at: register them
with :func:`gradscope.register_family` if you need them.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from gradscope.activations import FAMILIES, ActivationFamily, register_family

__all__ = ["QUICK_GELU", "RELU_SQUARED", "TANH_GELU", "register"]

_TANH = nn.GELU(approximate="tanh")
#: ``x σ(1.702 x)``'s constant.
QUICK = 1.702


def _d_tanh_gelu(x: Optional[Tensor], y: Tensor, m: nn.Module,
                 out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    derivative = FAMILIES[nn.GELU].derivative
    assert derivative is not None
    return derivative(x, y, _TANH, out=out, work=work)  # type: ignore[call-arg]


def _d_quick_gelu(x: Optional[Tensor], y: Tensor, m: nn.Module,
                  out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    """``σ(kx) (1 + kx (1 - σ(kx)))`` with ``k = 1.702``."""
    if x is None:
        raise RuntimeError("the QuickGELU derivative needs the module's input (internal error)")
    s = torch.mul(x, QUICK, out=out).sigmoid_()
    return torch.neg(s, out=work).add_(1.0).mul_(x).mul_(QUICK).add_(1.0).mul_(s)


def _d_relu_squared(x: Optional[Tensor], y: Tensor, m: nn.Module) -> Tensor:
    return y.sqrt().mul_(2.0)  # 2 relu(x)


#: ``gelu`` with the tanh approximation's derivative (the module has no ``approximate``).
TANH_GELU = ActivationFamily("gelu", "negative", None, _d_tanh_gelu, needs_input=True,
                             derivative_out=True)
QUICK_GELU = ActivationFamily("quick_gelu", "negative", None, _d_quick_gelu, needs_input=True,
                              derivative_out=True)
RELU_SQUARED = ActivationFamily("relu_squared", "relu", None, _d_relu_squared)


def register() -> list[str]:
    """Register the families of the classes this ``transformers`` has; their names."""
    from transformers import activations as hf

    table = {
        "GELUActivation": FAMILIES[nn.GELU],
        "NewGELUActivation": TANH_GELU,
        "GELUTanh": TANH_GELU,
        "PytorchGELUTanh": TANH_GELU,
        "FastGELUActivation": TANH_GELU,
        "AccurateGELUActivation": TANH_GELU,
        "QuickGELUActivation": QUICK_GELU,
        "SiLUActivation": FAMILIES[nn.SiLU],
        "ReLUSquaredActivation": RELU_SQUARED,
    }
    done = []
    for name, family in table.items():
        cls = getattr(hf, name, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            register_family(cls, family)
            done.append(name)
    return done
