"""The activation call-site: what the recorder and the every-step check both hold of one call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor

from gradscope.activations import ActivationFamily
from gradscope.capture.base import NonfiniteCheck
from gradscope.plan import Plan

__all__ = ["Site", "site_name"]


@dataclass
class Site:
    """One activation call-site: a module, or a function called inside a module, and its
    call index within one forward."""

    name: str
    module_name: str
    call: int
    family: ActivationFamily
    plan: Plan
    window: Plan
    function: Optional[str] = None  # "relu" for a functional call-site, None for a module's
    unit_dim: Optional[int] = None  # the dimension of its units (None: the rank rule)
    grad_in: Optional[bool] = None  # whether grad_in_* can be read exactly (known at a backward)
    last_active: Optional[Tensor] = None  # per unit: the last step it was on
    fwd_step: int = -1
    bwd_step: int = -1
    gin_step: int = -1
    failed: bool = False
    at_call: bool = False  # its output was modified in place after its call: tested at the call
    hold: Optional[bool] = None  # its autograd node keeps its output (held for free; None: unknown)
    checks: NonfiniteCheck = field(init=False, repr=False)
    fused_checks: NonfiniteCheck = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.checks = NonfiniteCheck([self.name], "nonfinite_check", per=2)  # min, max
        self.fused_checks = NonfiniteCheck([self.name], "nonfinite_check")  # the fused probe's


def site_name(base: str, call: int) -> str:
    """A call-site's series name: ``base`` for the first call of a forward, ``base[k]`` after."""
    return base if call == 0 else f"{base}[{call}]"
