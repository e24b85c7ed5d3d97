"""Coverage: which activations of a model gradscope sees, and which it cannot.

After the first monitored step the :class:`CoverageTracker` reports a
:class:`Coverage`: the call-sites captured by module hooks and by function, the
parameterless leaf modules that look like activations but whose family gradscope
does not know (with the :func:`gradscope.register_family` fix), and what no hook
can see: activations fused into one kernel (the softmax inside
``F.scaled_dot_product_attention``, the gates of ``nn.LSTM``/``nn.GRU``/``nn.RNN``
and their cells). The tracker warns when a model that trains has no captured
call-site at all; :mod:`gradscope.flush` prints the report's line to stderr (unless
``summary=False``) and hands it to the sinks (``Sink.write_coverage``: TensorBoard's
``gradscope/coverage`` text).

A capture that does see inside a fused module (a recurrent capture that records an
LSTM's gates) adds the module's name to :attr:`Context.covered
<gradscope.capture.base.Context.covered>`; it is then no longer listed as unseen.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from typing import Any, Optional

from torch import nn

from gradscope.activations import family_of
from gradscope.capture.activation import ActivationRecorder
from gradscope.capture.base import Context
from gradscope.capture.compiled import TRACED, CompiledSteps
from gradscope.records import Coverage

__all__ = ["TRACED", "Coverage", "CoverageTracker"]

#: Class names that look like an activation's (with no children and no parameters).
_ACTIVATION_LIKE = re.compile(
    r"(?i)(relu|gelu|silu|swish|mish|sigmoid|tanh|softmax|softmin|softplus|softsign|elu|glu"
    r"|hardswish|shrink|threshold|activation|^act)")
_FUSED_RNN = (nn.RNNBase, nn.RNNCellBase)


class CoverageTracker:
    """Collects what the captures see and do not see; reports once, after the first step."""

    def __init__(self, ctx: Context, recorder: ActivationRecorder,
                 compiled: CompiledSteps) -> None:
        self.ctx = ctx
        self.recorder = recorder
        self.compiled = compiled  # what a torch.compile'd model hides
        self._unknown: dict[str, str] = {}  # module name -> class name
        self._rnn: dict[str, str] = {}  # module name -> class name
        self._fused: Counter[tuple[str, str]] = Counter()
        self._done = False
        self.first: Any = None  # the first report, once made

    def register(self, model: nn.Module) -> None:
        """Note the model's unknown activation-like modules and fused recurrent ones."""
        self._unknown, self._rnn = {}, {}
        for name, module in model.named_modules():
            if isinstance(module, _FUSED_RNN):
                self._rnn[name] = type(module).__name__
            elif _looks_like_activation(module):
                self._unknown[name] = type(module).__name__

    def fused(self, module_name: str, what: str) -> None:
        """A fused call ran in ``module_name`` (during a monitored forward)."""
        self._fused[(module_name, what)] += 1

    def report(self) -> Coverage:
        """The coverage as of now."""
        sites = list(self.recorder.sites.values())
        in_function = {s.module_name for s in sites if s.function is not None}
        covered = self.ctx.covered
        unseen = [f"{what} in {name or '(root)'}" for (name, what) in self._fused
                  if name not in covered]
        unseen += [f"gates of {cls} {name or '(root)'!r} (one fused kernel)"
                   for name, cls in self._rnn.items() if name not in covered]
        unseen += self.compiled.unseen()
        unknown = sorted({cls for name, cls in self._unknown.items() if name not in in_function})
        return Coverage(
            step=self.ctx.state.step,
            by_module=sum(s.function is None for s in sites),
            by_function=sum(s.function is not None for s in sites),
            unknown=tuple(unknown), unseen=tuple(unseen),
            no_grad_in=tuple(s.name for s in sites if s.grad_in is False),
            replayed=tuple(covered))

    def end_step(self) -> Optional[Coverage]:
        """At the end of the first monitored step: the report (which the flush prints and
        hands to the sinks), and a warning if nothing was captured; ``None`` at the others."""
        if self._done or not self.ctx.state.recording or not self.ctx.options.activations:
            return None
        self._done = True
        cov = self.first = self.report()
        if not cov.captured and not cov.replayed and not self.compiled.hides_activations:
            hint = (f"; unknown activation-like modules: {', '.join(cov.unknown)} "
                    "(gradscope.register_family teaches gradscope one)" if cov.unknown else "")
            if self.ctx.state.traced:
                hint += "; the model runs under torch.compile, whose graphs gradscope's hooks stay out of"
            warnings.warn(
                "gradscope: no activation call-site was captured in the first monitored step, "
                "so no activation statistic will be recorded (parameter gradients are)"
                f"{hint}; mon.coverage() says what was and was not seen", RuntimeWarning,
                stacklevel=6)
        return cov


def _looks_like_activation(module: nn.Module) -> bool:
    """A leaf module with no parameters, no family, and an activation's look: defined in
    ``torch.nn.modules.activation`` or named like one."""
    if family_of(module) is not None or next(module.children(), None) is not None:
        return False
    if next(module.parameters(recurse=False), None) is not None:
        return False
    cls = type(module)
    return cls.__module__ == "torch.nn.modules.activation" or bool(
        _ACTIVATION_LIKE.search(cls.__name__))
