"""Remedies that fit the run: what the run already applies is left out, and said.

Each rule's remedy is a list of options (:data:`REMEDIES`); an option may depend on
a fact of the run (:class:`RunFacts`):

==============  ==================================================  ==========================
need            the option is left out when                         and is said as
==============  ==================================================  ==========================
``adaptive``    the optimizer's class is one of                     ``already RMSprop``
                :data:`ADAPTIVE_OPTIMIZERS` (Adam, AdamW, RMSprop,
                Adagrad, Adadelta, ...)
``relu``        no activation call-site is of a saturating          ``already relu, gelu
                family (sigmoid, tanh, ...)                         activations``
``norm``        the model has a normalisation layer (a module       ``already BatchNorm1d``
                class whose name holds ``Norm``)
``init``        every weight layer's scale is within                ``already Xavier
                :data:`SCALE_TOLERANCE` of a fan-in-scaled          initialisation``
                initialisation's (He, Xavier or LeCun)
``he``          every weight layer's scale is within                ``already He
                :data:`SCALE_TOLERANCE` of He's (√2)                initialisation``
==============  ==================================================  ==========================

The weight scale of a layer is ``std(W)·√fan_in``, measured from the weights when
``watch()`` attaches (:meth:`RunFacts.measure`); the families and normalisation
layers are also read from a history (``gradscope report`` has no optimizer or
weight scales: its remedies leave out only what the history shows).

Example:
    >>> facts = RunFacts(optimizer="RMSprop", norms=("BatchNorm1d",))
    >>> remedy_text("vanishing_gradients", facts)  # doctest: +NORMALIZE_WHITESPACE
    'already BatchNorm1d, RMSprop; try ReLU/LeakyReLU instead of sigmoid/tanh,
     Xavier/He initialisation, or residual connections or a lower depth'
    >>> init_kind(1.0 / 3 ** 0.5, 0.6)
    'PyTorch default'
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Optional

from gradscope.activations import FAMILIES
from gradscope.history import History
from gradscope.records import Finding

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ADAPTIVE_OPTIMIZERS", "INIT_SCALES", "LARGE_SCALE", "REMEDIES", "SCALE_TOLERANCE",
           "SMALL_SCALE", "RunFacts", "fit_remedy", "init_kind", "remedy_text"]

#: Optimizers that rescale each parameter's step by its gradients' history: "use
#: Adam/RMSProp" is no remedy for a run that already uses one.
ADAPTIVE_OPTIMIZERS = frozenset({"Adam", "AdamW", "Adamax", "NAdam", "RAdam", "SparseAdam",
                                 "RMSprop", "Adagrad", "Adadelta", "Adafactor", "LBFGS"})

#: The weight scale each initialisation gives: ``std·√fan_in`` for He (√2, for ReLU),
#: LeCun (1) and PyTorch's default for ``nn.Linear``/``nn.Conv*`` (``kaiming_uniform_``
#: with a=√5: 1/√3); Xavier/Glorot's is ``std·√((fan_in + fan_out)/2) = 1``.
INIT_SCALES = {"He": math.sqrt(2.0), "Xavier": 1.0, "LeCun": 1.0,
               "PyTorch default": 1.0 / math.sqrt(3.0)}

#: A layer's measured scale is read as the initialisation whose scale is nearest (in
#: ratio), when within this factor of it. The sample std of a small layer's weights
#: wanders: ~1/√(2n) is 6% for 128 weights, and 15% was seen on an 8→16 layer (a
#: 2.5σ draw); 1.25 still puts a layer 25% off every initialisation in ``"other"``.
#: He (√2) and LeCun (1) are 1.41 apart: the nearest one names the layer.
SCALE_TOLERANCE = 1.25

#: Scales above this are ``"large"`` (N(0, 1) weights on a fan-in of 9 or more):
#: activations grow with depth.
LARGE_SCALE = 3.0

#: Scales below this are ``"small"``: activations shrink with depth.
SMALL_SCALE = 0.3

#: Initialisations that scale the weights to the fan-in (the ``init`` need).
_FAN_IN_SCALED = ("He", "Xavier", "LeCun")

#: Each rule's remedy options: ``(text, need)``; ``need`` names the fact that makes
#: the option redundant (see the module docstring), ``None`` for an option always given.
REMEDIES: dict[str, tuple[tuple[str, Optional[str]], ...]] = {
    "vanishing_gradients": (("ReLU/LeakyReLU instead of sigmoid/tanh", "relu"),
                            ("Xavier/He initialisation", "init"), ("BatchNorm", "norm"),
                            ("residual connections or a lower depth", None),
                            ("Adam/RMSProp, which rescale small gradients", "adaptive")),
    "exploding_gradients": (("a lower learning rate", None),
                            ("gradient clipping (clip_grad_norm_)", None),
                            ("a smaller initialisation", None), ("BatchNorm", "norm")),
    "gradient_growth": (("a lower learning rate", None),
                        ("gradient clipping (clip_grad_norm_)", None),
                        ("Adam/RMSProp", "adaptive")),
    "saturation": (("ReLU/LeakyReLU instead", None), ("Xavier/Glorot initialisation", "init"),
                   ("BatchNorm before the activation", "norm"), ("a lower learning rate", None)),
    "dead_units": (("a lower learning rate", None), ("He initialisation", "he"),
                   ("LeakyReLU/ELU", None), ("BatchNorm before the ReLU", "norm")),
    "activation_collapse": (("an initialisation matched to the activation (He for ReLU, "
                             "Xavier for tanh)", "init"), ("BatchNorm/LayerNorm", "norm"),
                            ("residual connections", None)),
    "activation_blowup": (("a smaller initialisation (He/Xavier)", "init"),
                          ("BatchNorm/LayerNorm", "norm"), ("a lower learning rate", None)),
    "update_ratio_low": (("a higher learning rate", None),
                         ("checking for vanishing gradients upstream", None)),
    "update_ratio_high": (("a lower learning rate", None), ("warmup", None),
                          ("gradient clipping", None)),
}


def _near(name: str, scale_in: float, scale_avg: float) -> bool:
    """Whether a layer's scale is within :data:`SCALE_TOLERANCE` of initialisation ``name``'s."""
    got = scale_avg if name == "Xavier" else scale_in
    return got > 0 and abs(math.log(got / INIT_SCALES[name])) <= math.log(SCALE_TOLERANCE)


def init_kind(scale_in: float, scale_avg: float) -> str:
    """The initialisation a weight scale reads as: a key of :data:`INIT_SCALES`,
    ``"large"``, ``"small"`` or ``"other"``.

    Args:
        scale_in: ``std(W)·√fan_in``.
        scale_avg: ``std(W)·√((fan_in + fan_out)/2)`` (Xavier's).
    """
    if not (math.isfinite(scale_in) and scale_in > 0 and scale_avg > 0):
        return "other"
    best, dist = "other", math.log(SCALE_TOLERANCE)
    for name, want in INIT_SCALES.items():
        d = abs(math.log((scale_avg if name == "Xavier" else scale_in) / want))
        if d <= dist:
            best, dist = name, d
    if best != "other":
        return best
    return "large" if scale_in > LARGE_SCALE else "small" if scale_in < SMALL_SCALE else "other"


@dataclass(frozen=True)
class RunFacts:
    """What the run already applies, for the remedies.

    Args:
        optimizer: the optimizer's class name (``None`` when not known).
        norms: class names of the model's normalisation layers.
        families: activation families of the call-sites.
        init: ``(layer, initialisation, std·√fan_in, std·√((fan_in+fan_out)/2))`` per
            weight layer at ``watch()`` (:func:`init_kind` names the initialisation).
    """

    optimizer: Optional[str] = None
    norms: tuple[str, ...] = ()
    families: tuple[str, ...] = ()
    init: tuple[tuple[str, str, float, float], ...] = ()

    @classmethod
    def measure(cls, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None
                ) -> RunFacts:
        """The optimizer's class, the normalisation layers and each weight layer's scale.

        Reads each weight's std once (one host read per device); a weight that
        cannot be read (meta, sharded, not floating) is left out.
        """
        import torch
        from torch import nn

        norms = sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__})
        weights = []
        for name, m in model.named_modules():
            w = getattr(m, "weight", None)
            if (not isinstance(w, torch.Tensor) or isinstance(m, nn.Embedding) or w.dim() < 2
                    or not w.is_floating_point() or w.is_meta or w.numel() < 2
                    or type(w) not in (torch.Tensor, nn.Parameter)):
                continue
            field = math.prod(w.shape[2:])
            weights.append((name or "(root)", w, w.shape[1] * field, w.shape[0] * field))
        init = []
        by_device: dict[Any, list[Any]] = {}
        for entry in weights:
            by_device.setdefault(entry[1].device, []).append(entry)
        with torch.no_grad():
            for group in by_device.values():
                stds = torch.stack([w.detach().float().std() for _, w, _, _ in group])
                for (name, _, fan_in, fan_out), std in zip(group, stds.tolist()):  # ok-sync: once, at watch()
                    s_in, s_avg = std * math.sqrt(fan_in), std * math.sqrt((fan_in + fan_out) / 2)
                    init.append((name, init_kind(s_in, s_avg), s_in, s_avg))
        return cls(type(optimizer).__name__ if optimizer is not None else None, tuple(norms),
                   (), tuple(init))

    @classmethod
    def read(cls, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None
             ) -> Optional[RunFacts]:
        """:meth:`measure`, or ``None`` with a warning when it fails (``watch()`` must not)."""
        try:
            return cls.measure(model, optimizer)
        except Exception as err:  # remedies without facts are still remedies
            warnings.warn(f"gradscope: could not read the model's weight scales for the "
                          f"findings' remedies ({err}); they will not say what the run already "
                          "applies", RuntimeWarning, stacklevel=3)
            return None

    @classmethod
    def of_history(cls, history: History, facts: Optional[RunFacts] = None) -> RunFacts:
        """``facts`` (or none) with the families and normalisation layers ``history`` shows."""
        facts = facts if facts is not None else cls()
        families = {history.info(n).family for n in history.layers("activation")}
        norms = {history.info(n).type for n in history.layers("layer")
                 if "Norm" in history.info(n).type}
        return replace(facts, families=tuple(sorted(f for f in families | set(facts.families)
                                                    if f)),
                       norms=tuple(sorted(norms | set(facts.norms))))

    def already(self, need: str) -> Optional[str]:
        """What the run applies that makes options of ``need`` redundant (``None``: nothing)."""
        if need == "adaptive":
            return self.optimizer if self.optimizer in ADAPTIVE_OPTIMIZERS else None
        if need == "norm":
            return ", ".join(self.norms) or None
        if need == "relu":
            regimes = {f.name: f.regime for f in FAMILIES.values()}
            mine = [f for f in self.families if f != "softmax"]
            if not mine or any(regimes.get(f) in ("saturating", None) for f in mine):
                return None
            return ", ".join(mine) + " activations"
        if need in ("init", "he"):
            ok = _FAN_IN_SCALED if need == "init" else ("He",)
            if not self.init or not all(any(_near(name, s_in, s_avg) for name in ok)
                                        for _, _, s_in, s_avg in self.init):
                return None
            lo, hi = min(e[2] for e in self.init), max(e[2] for e in self.init)
            span = f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}–{hi:.2f}"
            kinds = "He" if need == "he" else "/".join(sorted({e[1] for e in self.init}))
            return f"{kinds} initialisation (std·√fan_in {span})"
        raise ValueError(f"RunFacts.already({need!r}): not a need of REMEDIES")


def _join(options: list[str]) -> str:
    if len(options) <= 2:
        return " or ".join(options)
    return ", ".join(options[:-1]) + ", or " + options[-1]


def remedy_text(rule: str, facts: Optional[RunFacts] = None) -> str:
    """The remedy of ``rule`` (a key of :data:`REMEDIES`) for a run with ``facts``."""
    facts = facts if facts is not None else RunFacts()
    keep, said = [], []
    for text, need in REMEDIES[rule]:
        have = facts.already(need) if need is not None else None
        if have is None:
            keep.append(text)
        elif have not in said:
            said.append(have)
    tried = f"try {_join(keep)}" if keep else "nothing more to suggest"
    return f"already {', '.join(said)}; {tried}" if said else tried


#: Default remedy text -> rule, to find a finding's remedy options.
_BY_TEXT = {remedy_text(rule): rule for rule in REMEDIES}


def fit_remedy(finding: Finding, facts: RunFacts) -> Finding:
    """``finding`` with its remedy (and the message's end) fitted to ``facts``."""
    rule = _BY_TEXT.get(finding.remedy)
    if rule is None:
        return finding
    text = remedy_text(rule, facts)
    if text == finding.remedy:
        return finding
    message = finding.message
    if message.endswith(finding.remedy):
        message = message[:len(message) - len(finding.remedy)] + text
    return replace(finding, remedy=text, message=message)
