"""torch.compile: the sampled steps of a compiled model run eagerly, so its activations are seen.

gradscope's hooks stay out of compiled graphs (while dynamo traces, every hook does
nothing: no graph break, no op added; see :meth:`Context.traced
<gradscope.capture.base.Context.traced>`). To see the activations of a compiled model,
a **sampled step runs eagerly**: :class:`CompiledSteps` sets
``torch.compiler.set_stance("force_eager")`` from the step's start to its end, and
then restores the stance that was in force before (the user's own, e.g.
``"eager_on_recompile"``, exactly). The hooks then run as on an uncompiled model (the
statistics are eager ones); unsampled steps run the compiled code, where gradscope
adds nothing. With ``every=10``, 9 steps of 10 keep the compiled speed; with
``every=1`` every step runs eagerly (said once).

When gradscope knows the model is compiled:

* at attach, when the watched module is a ``torch.compile`` wrapper
  (``OptimizedModule``) or ``module.compile()`` was called on it;
* else the first time one of its hooks runs while dynamo traces
  (``torch.compile(model)`` or ``model.compile()`` after ``watch``): from the next
  sampled step on. The step that was traced is lost for activations (said once, and
  in the coverage).

The stance is set and restored only at step boundaries, from eager code (attach, the
end of a step, detach), and always restored on detach, also when the training loop
raises (a ``with`` block, or :meth:`Monitor.close <gradscope.Monitor.close>`): the
stance is process-global, so while a sampled step runs, every compiled function of
the process (a compiled loss, too) runs eagerly. Where the step boundary is itself
inside compiled code (a whole ``torch.compile``'d training step),
``set_stance`` cannot be called: activations are then not recorded, said once.
``sampled_eager=False`` keeps the compiled code on every step (parameter
statistics only, said once).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from gradscope.capture.base import Context, compiling, unwrap

__all__ = ["TRACED", "UNSAMPLED", "CompiledSteps", "is_compiled"]

#: The coverage's line when compiled activations are not recorded at all.
TRACED = "activations of the torch.compile'd model are not recorded"
#: The coverage's line for a compiled model whose sampled steps run eagerly.
UNSAMPLED = ("activations on the steps every=... does not sample: they run the compiled code, "
             "where activations are neither recorded nor checked for NaN/Inf (sampled steps "
             "run eagerly, under torch.compiler.set_stance('force_eager'))")
_FIX = ("watch(..., optimizer=opt) (a step is then one opt.step(), which runs eagerly), or "
        "watch the compiled module: gradscope.watch(torch.compile(model))")
_REGION = ("the step boundary (optimizer.step()) is inside compiled code, where "
           "torch.compiler.set_stance cannot be called")
_NO_END = ("torch.compile traced the watched model and no step ended: optimizer.step() runs "
           "inside compiled code too (a whole torch.compile'd training step?), where "
           "gradscope's hooks do nothing, so no step was counted and nothing of the compiled "
           "steps was recorded. Compile the model alone (torch.compile(model)) and call "
           "optimizer.step() outside it")
_NO_STEP = ("the watched module's own forward runs compiled (torch.compile(model) or "
            "model.compile() on the module given to watch()) and no optimizer= was given: a "
            "step is counted in that module's forward pre-hook, which torch.compile compiles "
            "away, so its compiled steps are not counted and nothing of them is recorded. "
            "Pass " + _FIX)


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is a ``torch.compile`` wrapper or ``model.compile()`` was called."""
    return unwrap(model) is not model or getattr(model, "_compiled_call_impl", None) is not None


class CompiledSteps:
    """Runs a compiled model's sampled steps eagerly (``force_eager``), restoring the prior stance.

    The monitor calls :meth:`start` at attach, :meth:`next_step` at each step's end
    (once the next step's sampling is known) and :meth:`stop` on detach.
    """

    def __init__(self, ctx: Context, *, optimizer: bool) -> None:
        self.ctx = ctx
        self.optimizer = optimizer  # a step ends in optimizer.step(), outside the model
        self.known = False  # the model is known to be compiled
        self.hooks_compiled = False  # the watched module's own hooks are in compiled code
        self.failed = False  # set_stance raised: the step boundary is inside compiled code
        self.lost: Optional[int] = None  # the sampled step traced before gradscope knew
        self._sampled = False  # the step now running is sampled
        self._ended = 0  # steps ended while attached
        #: set_stance("force_eager") while a sampled step runs (it holds the prior stance)
        self._held: Optional[Any] = None

    @property
    def counts_steps(self) -> bool:
        """Whether steps are counted: not when, without ``optimizer=``, the step hook (the
        watched module's forward pre-hook) is inside compiled code."""
        return self.optimizer or not self.hooks_compiled

    @property
    def hides_activations(self) -> bool:
        """Whether no activation of the compiled model is recorded (and this was said)."""
        return self.known and (not self.ctx.options.sampled_eager or self.failed
                               or not self.counts_steps)

    def start(self, model: nn.Module) -> None:
        """At attach: note whether ``model`` is compiled; if so and step 0 is sampled, run it eagerly."""
        self.known = self.known or is_compiled(model)  # (a compile learned before a re-attach)
        self.hooks_compiled = self.hooks_compiled or \
            getattr(model, "_compiled_call_impl", None) is not None
        self._sampled = self.ctx.state.sampled
        if self.known:
            self._say()
            self._set(self._sampled)

    def next_step(self) -> None:
        """A step ended (``ctx.state`` holds the next one): learn of a compile after watch,
        restore the stance, set it again when the next step is sampled."""
        state = self.ctx.state
        ended_sampled, self._sampled = self._sampled, state.sampled
        self._ended += 1
        if self._learn() and ended_sampled and self.ctx.options.sampled_eager and not self.failed:
            self.lost = state.step - 1
            self.ctx.once("compile-lost", (
                f"gradscope: the watched model was compiled after watch() (torch.compile(model) "
                f"or model.compile()): torch.compile traced step {self.lost}, so its "
                "activations are not recorded (parameter statistics are); from the next "
                "sampled step on, sampled steps run eagerly and are recorded. Watch the "
                "compiled module (gradscope.watch(torch.compile(model))) to lose no step"))
        if self.known:
            self._set(state.sampled)

    def stop(self) -> None:
        """On detach: give back the prior stance; say what a compile after watch missed."""
        self.restore()
        self._learn()
        if self._no_step_end():
            self.ctx.once("compile-no-end", "gradscope: " + _NO_END)

    def restore(self) -> None:
        """Give back the stance in force before ours (safe to call twice)."""
        if self._held is None:
            return
        try:
            self._held.__exit__(None, None, None)  # set_stance's own restore of its prior
            self._held = None
        except RuntimeError as err:  # inside compiled code: tried again at the next restore
            self.ctx.once("stance-restore", (
                f"gradscope: could not restore torch.compile's stance ({err}); it is still "
                "'force_eager'. Detach the monitor outside compiled code (mon.close()) to "
                "restore it"))

    def unseen(self) -> list[str]:
        """What the coverage says gradscope does not see of a compiled model."""
        if not (self.known or self.ctx.state.traced):
            return []
        if not self.counts_steps:
            return [_NO_STEP]
        if self._no_step_end():
            return [_NO_END]
        if not self.ctx.options.sampled_eager or self.failed:
            why = _REGION if self.failed else "sampled_eager=False keeps the compiled code"
            return [f"{TRACED}: {why}; gradscope's hooks stay out of compiled graphs (no graph "
                    "break, nothing recorded there); parameter statistics are recorded"]
        out = [UNSAMPLED]
        if self.lost is not None:
            out.append(f"activations of step {self.lost}: torch.compile traced it before "
                       "gradscope knew the model was compiled")
        return out

    # ------------------------------------------------------------ helpers
    def _no_step_end(self) -> bool:
        """A compiled model was traced and, with ``optimizer=``, no step ever ended: the
        optimizer's hooks are inside compiled code too (a whole compiled training step)."""
        return self.optimizer and self.known and self.ctx.state.traced and not self._ended

    def _learn(self) -> bool:
        """Whether a hook was traced by torch.compile although the model was not known to be
        compiled (a compile after watch): it is known now, and said once."""
        if self.known or not self.ctx.state.traced:
            return False
        self.known = self.hooks_compiled = True
        self._say()
        return True

    def _set(self, sampled: bool) -> None:
        """force_eager for a sampled step, the prior stance otherwise (from eager code only)."""
        if not (sampled and self.counts_steps and self.ctx.options.sampled_eager) or self.failed:
            self.restore()
            return
        if self._held is not None or compiling():
            return
        try:
            self._held = torch.compiler.set_stance("force_eager")  # set now; keeps the prior
        except RuntimeError as err:  # "attempted to set_stance in a torch.compile region"
            self.failed = True
            self.ctx.once("compile-region", (
                f"gradscope: a step of the watched compiled model ends inside compiled code (a "
                f"whole torch.compile'd training step?), where torch.compiler.set_stance cannot "
                f"be called ({err}): sampled steps cannot run eagerly, so activations are not "
                "recorded (parameter statistics are). Compile the model alone "
                "(torch.compile(model)) and call optimizer.step() outside it"))

    def _say(self) -> None:
        """Say once what watching this compiled model misses or costs."""
        options = self.ctx.options
        if not self.counts_steps:
            self.ctx.once("compile-no-step", "gradscope: " + _NO_STEP)
        elif not options.sampled_eager:
            self.ctx.once("compile-off", (
                "gradscope: the watched model is compiled and sampled_eager=False: it runs the "
                "compiled code on every step, where gradscope's hooks stay out of the graph, so "
                "activations are not recorded (parameter statistics are). sampled_eager=True "
                "(the default) runs the sampled steps eagerly to record them"))
        elif options.every == 1:
            self.ctx.once("compile-every1", (
                "gradscope: the watched model is compiled and every=1 samples every step; "
                "sampled steps run eagerly (torch.compiler.set_stance('force_eager')) to record "
                "activations, so the model runs eagerly on every step while watched. Pass "
                "every=10 (or more) to keep the compiled code on the other steps, or "
                "sampled_eager=False to keep it always (parameter statistics only)"))
