"""Sequence models for the recurrent experiments: an image read as a sequence.

==========  ==================================================================
sequence    how a flat ``(B, 784)`` MNIST image becomes a sequence
==========  ==================================================================
``rows``    28 time steps of 28 pixels (one row per step)
``pixels``  the image average-pooled to 10×10, then 100 time steps of one pixel
            each (the long variant: the label depends on steps far back)
==========  ==================================================================

A :class:`SequenceClassifier` is ``nn.RNN`` (tanh), ``nn.LSTM`` or ``nn.GRU``
(``batch_first``, any number of layers) followed by a ``Linear`` on the last
hidden state. The LSTM's forget-gate biases start at :data:`FORGET_BIAS` (1, the
usual remedy for an LSTM that forgets everything at initialisation, Gers et al.
2000, Jozefowicz et al. 2015); everything else is PyTorch's default
initialisation. Inputs whose length is not a square image (the synthetic data set
of the tests) are read as ``rows`` of ``ceil(√n)`` features (zero-padded); as
``pixels``, an input no larger than 10×10 is read one value per step, unpooled.

Example:
    >>> import torch
    >>> m = SequenceClassifier("lstm", hidden=8, layers=1, sequence="pixels")
    >>> m(torch.rand(2, 784)).shape
    torch.Size([2, 10])
    >>> m.steps(784)
    100
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["CELLS", "FORGET_BIAS", "PIXEL_SIDE", "SEQUENCES", "SequenceClassifier"]

#: Recurrent models by name.
CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
#: Ways to read an image as a sequence (see the module docstring).
SEQUENCES = ("rows", "pixels")
#: ``pixels``: the image is pooled to this side (``PIXEL_SIDE²`` time steps).
PIXEL_SIDE = 10
#: Initial LSTM forget-gate bias (``bias_ih`` + ``bias_hh`` of the forget gate sum to it).
FORGET_BIAS = 1.0


class SequenceClassifier(nn.Module):
    """A recurrent net over an image read as a sequence, classified from its last hidden state.

    Args:
        cell: ``"rnn"`` (tanh), ``"lstm"`` or ``"gru"``.
        hidden: hidden units per layer.
        layers: stacked recurrent layers.
        sequence: ``"rows"`` or ``"pixels"`` (:data:`SEQUENCES`).
        classes: output size.
    """

    def __init__(self, cell: str, *, hidden: int, layers: int = 1, sequence: str = "rows",
                 classes: int = 10, in_features: int = 784) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"SequenceClassifier(cell={cell!r}): use one of {sorted(CELLS)}")
        if sequence not in SEQUENCES:
            raise ValueError(f"SequenceClassifier(sequence={sequence!r}): use one of {SEQUENCES}")
        self.sequence = sequence
        side = math.isqrt(in_features)
        self._side = side if side * side == in_features else 0
        self._row = self._side or math.ceil(math.sqrt(in_features))
        size = 1 if sequence == "pixels" else self._row
        self.rnn = CELLS[cell](size, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, classes)
        if cell == "lstm":
            with torch.no_grad():
                for name, p in self.rnn.named_parameters():
                    if name.startswith("bias_"):  # gates i, f, g, o: f is the second quarter
                        p[hidden:2 * hidden] = FORGET_BIAS / 2

    def steps(self, in_features: int) -> int:
        """Time steps of a sequence made from ``in_features`` inputs."""
        return self._as_sequence(torch.zeros(1, in_features)).shape[1]

    def _as_sequence(self, x: Tensor) -> Tensor:
        b, n = x.shape
        if self.sequence == "pixels" and self._side > PIXEL_SIDE:
            img = nn.functional.adaptive_avg_pool2d(x.view(b, 1, self._side, self._side),
                                                    PIXEL_SIDE)
            return img.reshape(b, -1, 1)
        if self.sequence == "pixels":
            return x.unsqueeze(-1)
        pad = self._row * self._row - n
        if pad:
            x = nn.functional.pad(x, (0, pad))
        return x.view(b, self._row, self._row)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)`` of flat inputs ``(B, in_features)``."""
        out, _ = self.rnn(self._as_sequence(x))
        return self.out(out[:, -1])
