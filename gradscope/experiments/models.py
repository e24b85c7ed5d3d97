"""MLPs for the experiments: activation, initialisation and BatchNorm by name.

Layers are named so TensorBoard tags read well: ``fc1, bn1, act1, drop1, ...,
out``. A hidden block is ``Linear -> [BatchNorm1d] -> activation -> [Dropout]``
(BatchNorm before the nonlinearity, as in Ioffe & Szegedy).

Initialisations (:data:`INITS`; biases are set to zero except for ``default``):

========================  =====================================================
``default``               PyTorch's own: U(±1/√n_in) weights (kaiming_uniform,
                          a=√5) and U(±1/√n_in) biases
``normal``                N(0, 1): the naive choice textbooks warn about
``small_normal``          N(0, 0.01²): "small random Gaussian" (Ioffe & Szegedy)
``standard``              U[−1/√n_in, 1/√n_in]: Glorot & Bengio's "standard"
``xavier_uniform``        U[±√6/√(n_in+n_out)]: Glorot & Bengio's "normalized"
``xavier_normal``         N(0, 2/(n_in+n_out))
``he``                    N(0, gain²/n_in), gain matched to the activation
                          (:data:`GAINS`; √2 for ReLU)
``orthogonal``            a random orthogonal matrix scaled by the activation's gain
========================  =====================================================

Example:
    >>> m = build_mlp(in_features=8, depth=2, width=4, activation="tanh", init="xavier_uniform")
    >>> [n for n, _ in m.named_children()]
    ['fc1', 'act1', 'fc2', 'act2', 'out']
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

from torch import nn

__all__ = ["ACTIVATIONS", "GAINS", "INITS", "build_mlp", "init_linear"]

#: Activation name -> module factory.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "softsign": nn.Softsign,
}

#: Gain of each activation for ``he``/``orthogonal`` init (``torch.nn.init.calculate_gain``
#: where it has one; GELU and ELU behave like ReLU for positive inputs and get √2;
#: softsign, like tanh near 0 but with slope 1, gets 1).
GAINS: dict[str, float] = {
    "sigmoid": nn.init.calculate_gain("sigmoid"),
    "tanh": nn.init.calculate_gain("tanh"),
    "relu": nn.init.calculate_gain("relu"),
    "leaky_relu": nn.init.calculate_gain("leaky_relu", 0.01),
    "gelu": math.sqrt(2.0),
    "elu": math.sqrt(2.0),
    "softsign": 1.0,
}

INITS = ("default", "normal", "small_normal", "standard", "xavier_uniform", "xavier_normal",
         "he", "orthogonal")

#: Standard deviation of the ``small_normal`` initialisation.
SMALL_STD = 0.01


def init_linear(layer: nn.Linear, init: str, activation: str) -> None:
    """Initialise one ``Linear`` in place (see the module docstring for the schemes)."""
    if init not in INITS:
        raise ValueError(f"init={init!r} is not one of {INITS}")
    if init == "default":
        layer.reset_parameters()
        return
    w = layer.weight
    n_in = w.shape[1]
    if init == "normal":
        nn.init.normal_(w, 0.0, 1.0)
    elif init == "small_normal":
        nn.init.normal_(w, 0.0, SMALL_STD)
    elif init == "standard":
        bound = 1.0 / math.sqrt(n_in)
        nn.init.uniform_(w, -bound, bound)
    elif init == "xavier_uniform":
        nn.init.xavier_uniform_(w)
    elif init == "xavier_normal":
        nn.init.xavier_normal_(w)
    elif init == "he":
        nn.init.normal_(w, 0.0, GAINS[activation] / math.sqrt(n_in))
    elif init == "orthogonal":
        nn.init.orthogonal_(w, gain=GAINS[activation])
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def build_mlp(
    *,
    in_features: int = 784,
    classes: int = 10,
    depth: int,
    width: int,
    activation: str,
    init: str,
    batchnorm: bool = False,
    dropout: float = 0.0,
) -> nn.Sequential:
    """``in_features -> depth × width -> classes`` MLP (logits; use cross-entropy).

    Args:
        in_features: input size (784 for MNIST).
        classes: output size.
        depth: number of hidden layers (≥ 1).
        width: units per hidden layer (≥ 1).
        activation: a key of :data:`ACTIVATIONS`.
        init: one of :data:`INITS`; the output layer is initialised the same way
            (with the activation's gain for ``he``/``orthogonal``).
        batchnorm: insert ``BatchNorm1d`` between each hidden ``Linear`` and its activation.
        dropout: dropout probability after each hidden activation (0 = none).

    Returns:
        An ``nn.Sequential`` with named children ``fc1, [bn1], act1, [drop1], ..., out``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"build_mlp(activation={activation!r}) is not one of {sorted(ACTIVATIONS)}")
    if init not in INITS:
        raise ValueError(f"build_mlp(init={init!r}) is not one of {INITS}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    d = in_features
    for i in range(1, depth + 1):
        fc = nn.Linear(d, width)
        init_linear(fc, init, activation)
        layers[f"fc{i}"] = fc
        if batchnorm:
            layers[f"bn{i}"] = nn.BatchNorm1d(width)
        layers[f"act{i}"] = ACTIVATIONS[activation]()
        if dropout > 0:
            layers[f"drop{i}"] = nn.Dropout(dropout)
        d = width
    out = nn.Linear(d, classes)
    init_linear(out, init, activation)
    layers["out"] = out
    return nn.Sequential(layers)
