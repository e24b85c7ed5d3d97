"""The cells of ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU``, replayed from their inputs and weights.

A fused recurrent module computes its gates inside one kernel that no hook
reaches, and returns only the last layer's hidden states. On sampled steps the
recurrent capture (:mod:`gradscope.capture.recurrent`) replays the module here:
every layer and direction, step by step, with PyTorch's formulas (``W`` and
``b`` are the module's ``weight_*``/``bias_*`` of that layer and direction)::

    tanh RNN   h' = tanh(W_ih x + b_ih + W_hh h + b_hh)        (relu RNN: relu)
    LSTM       i, f, g, o = σ, σ, tanh, σ of (W_ih x + b_ih + W_hh h + b_hh)
               c' = f ⊙ c + i ⊙ g,   h' = o ⊙ tanh(c')         (proj_size: h' = W_hr h')
    GRU        r, z = σ(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})
               n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),   h' = (1 − z) ⊙ n + z ⊙ h

Sequences are handled as **rows**, the layout of a ``PackedSequence``: time-major,
``batch_sizes[t]`` rows at time ``t`` (a padded batch is the packed layout with every
batch size equal). The replay runs in ``float32`` (half-precision modules are
upcast) with autocast off; it matches the fused kernel to float rounding
(``tests/test_recurrent.py`` checks outputs, ``h_n`` and ``c_n`` to 1e-5).

With ``inject=True`` a zero tensor that requires grad is added to every hidden
state: the gradient that reaches it is ``∂L/∂h_t``, the gradient with respect to
the hidden state at ``t`` through every later step and layer, which a hook on the
module's output cannot see (it only sees the gradient flowing *into* ``output[t]``
from above, zero for ``t < T-1`` when only the last step feeds the loss).

The same step recomputes the gates of one ``nn.LSTMCell``/``nn.GRUCell`` call
(:func:`cell_gates`). Nothing here reads a device value on the host (batch sizes of a packed sequence
live on the host already).

Example:
    >>> import torch, torch.nn as nn
    >>> lstm = nn.LSTM(3, 4, batch_first=True)
    >>> x = torch.randn(2, 5, 3)
    >>> out, (h_n, c_n) = lstm(x)
    >>> rows, sizes = time_major(x, batch_first=True)
    >>> r = replay(lstm, rows, sizes, None)
    >>> torch.allclose(r.output.view(5, 2, 4).transpose(0, 1), out, atol=1e-6)
    True
    >>> sorted(r.units[0].gates)
    ['forget', 'input', 'output']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

__all__ = [
    "CELL_MODES",
    "GATES",
    "Replay",
    "Unit",
    "bounded_hidden",
    "cell_gates",
    "cell_mode",
    "module_mode",
    "replay",
    "row_order",
    "step",
    "time_index",
    "time_major",
    "time_norms",
]

#: The sigmoid gates each mode records (LSTM's cell candidate ``g`` and GRU's ``n``
#: are tanh outputs, not gates, and are not kept).
GATES: dict[str, tuple[str, ...]] = {
    "RNN_TANH": (), "RNN_RELU": (), "LSTM": ("input", "forget", "output"), "GRU": ("reset", "update"),
}
#: Cell classes and their mode (``nn.RNNCell`` reads its ``nonlinearity``).
CELL_MODES: dict[type, str] = {nn.LSTMCell: "LSTM", nn.GRUCell: "GRU", nn.RNNCell: "RNN"}
_STOCK = {nn.RNN: nn.RNN.forward, nn.LSTM: nn.LSTM.forward, nn.GRU: nn.GRU.forward,
          nn.RNNCell: nn.RNNCell.forward, nn.LSTMCell: nn.LSTMCell.forward,
          nn.GRUCell: nn.GRUCell.forward}


def module_mode(module: nn.Module) -> Optional[str]:
    """``"RNN_TANH"``, ``"RNN_RELU"``, ``"LSTM"`` or ``"GRU"`` for a fused module this file can replay.

    ``None`` for anything else, including subclasses that override ``forward``
    (their computation is not known to be the stock one).
    """
    if not isinstance(module, nn.RNNBase) or module.mode not in GATES:
        return None
    stock = next((f for cls, f in _STOCK.items() if isinstance(module, cls)), None)
    return module.mode if stock is not None and type(module).forward is stock else None


def cell_mode(module: nn.Module) -> Optional[str]:
    """The mode of an ``nn.RNNCell``/``LSTMCell``/``GRUCell`` (stock ``forward``), else ``None``."""
    for cls, mode in CELL_MODES.items():
        if isinstance(module, cls) and type(module).forward is _STOCK[cls]:
            if mode == "RNN":
                return "RNN_TANH" if module.nonlinearity == "tanh" else "RNN_RELU"
            return mode
    return None


def bounded_hidden(mode: str, proj_size: int = 0) -> bool:
    """Whether the hidden state is a tanh-bounded value, so that its saturation means something."""
    return mode in ("RNN_TANH", "GRU") or (mode == "LSTM" and proj_size == 0)


# ------------------------------------------------------------------ layout
def time_major(x: Union[Tensor, PackedSequence], *, batch_first: bool
               ) -> tuple[Tensor, list[int]]:
    """The rows of a module input (or output) and its batch sizes per time step.

    A padded ``(T, B, F)`` (``(B, T, F)`` with ``batch_first``) tensor becomes
    ``T*B`` rows with ``batch_sizes = [B] * T``; an unbatched ``(T, F)`` one ``T``
    rows of batch 1; a ``PackedSequence`` is already rows.
    """
    if isinstance(x, PackedSequence):
        return x.data, [int(b) for b in x.batch_sizes]  # ok-sync: batch_sizes live on the host
    if x.dim() == 2:
        return x, [1] * x.shape[0]
    if batch_first:
        x = x.transpose(0, 1)
    t, b = x.shape[0], x.shape[1]
    return x.reshape(t * b, *x.shape[2:]), [b] * t


def time_index(batch_sizes: Sequence[int], device: torch.device) -> Tensor:
    """The time step of every row (built on the host, copied to ``device``)."""
    return torch.repeat_interleave(torch.arange(len(batch_sizes)),
                                   torch.tensor(list(batch_sizes))).to(device)


def time_norms(rows: Tensor, batch_sizes: Sequence[int]) -> Tensor:
    """``‖rows at t‖`` for every time step ``t``: the L2 norm over the batch and features.

    ``rows`` is ``(..., N, H)`` (leading dimensions are kept); the result is ``(..., T)``.
    """
    sq = rows.float().square().sum(-1)
    t = len(batch_sizes)
    if len(set(batch_sizes)) <= 1:  # padded: every step has the same rows
        return sq.reshape(*sq.shape[:-1], t, -1).sum(-1).sqrt() if t else sq[..., :0]
    out = torch.zeros(*sq.shape[:-1], t, device=rows.device, dtype=sq.dtype)
    return out.index_add_(out.dim() - 1, time_index(batch_sizes, rows.device), sq).sqrt()


# -------------------------------------------------------------------- cells
def step(mode: str, gi: Tensor, h: Tensor, c: Optional[Tensor], w_hh: Tensor,
         b_hh: Optional[Tensor], w_hr: Optional[Tensor] = None
         ) -> tuple[Tensor, Optional[Tensor], dict[str, Tensor]]:
    """One time step: ``(h', c', gates)`` from the input projection ``gi = W_ih x + b_ih``.

    ``gates`` holds the sigmoid gates of :data:`GATES` (``(rows, H)`` each).
    """
    gh = h @ w_hh.t()
    if b_hh is not None:
        gh = gh + b_hh
    if mode == "GRU":
        xr, xz, xn = gi.chunk(3, 1)
        hr, hz, hn = gh.chunk(3, 1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return n + z * (h - n), None, {"reset": r, "update": z}
    g = gi + gh
    if mode == "LSTM":
        assert c is not None
        i, f, cand, o = g.chunk(4, 1)
        i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)
        c2 = f * c + i * torch.tanh(cand)
        h2 = o * torch.tanh(c2)
        if w_hr is not None:
            h2 = h2 @ w_hr.t()
        return h2, c2, {"input": i, "forget": f, "output": o}
    return (torch.tanh(g) if mode == "RNN_TANH" else torch.relu(g)), None, {}


@dataclass
class Unit:
    """One layer and direction of a replayed module: its hidden states and gates, as rows."""

    layer: int
    reverse: bool
    hidden: Tensor  # (N, H_out), time-major rows
    gates: dict[str, Tensor] = field(default_factory=dict)  # name -> (N, H)

    @property
    def suffix(self) -> str:
        """PyTorch's parameter suffix of this unit: ``l0``, ``l1_reverse``."""
        return f"l{self.layer}" + ("_reverse" if self.reverse else "")


@dataclass
class Replay:
    """A replayed module call.

    Attributes:
        units: per layer and direction (``layer * directions + direction``).
        output: the last layer's hidden rows, directions concatenated (the module's output rows).
        h_n: final hidden states ``(layers * directions, B, H_out)``, in row order
            (a packed sequence's sorted order).
        c_n: final cell states (LSTM), else ``None``.
        inject: with ``inject``, the zero tensor ``(units, N, H_out)`` added to every
            hidden state; its gradient is ``∂L/∂h_t`` per unit.
    """

    units: list[Unit]
    output: Tensor
    h_n: Tensor
    c_n: Optional[Tensor]
    inject: Optional[Tensor] = None


def _weights(module: nn.Module, suffix: str, dtype: torch.dtype) -> tuple[Optional[Tensor], ...]:
    def get(name: str) -> Optional[Tensor]:
        w = getattr(module, f"{name}_{suffix}", None)
        return None if w is None else w.detach().to(dtype)

    return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr")


def replay(module: nn.RNNBase, rows: Tensor, batch_sizes: Sequence[int],
           hx: Union[Tensor, tuple[Tensor, Tensor], None], *, layers: Optional[int] = None,
           inject: bool = False) -> Replay:
    """Replay ``module`` on input ``rows`` (from :func:`time_major`).

    Args:
        module: a stock ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (:func:`module_mode`).
        rows: ``(N, input_size)`` time-major input rows.
        batch_sizes: rows per time step (non-increasing, as in a ``PackedSequence``).
        hx: the initial state as the module received it, already in row order
            (``(layers * directions, B, H)``, a tuple ``(h_0, c_0)`` for LSTM), or ``None``.
        layers: replay only the first ``layers`` layers (default: all).
        inject: add a zero tensor that requires grad to every hidden state
            (:attr:`Replay.inject`); the caller runs this under ``torch.enable_grad()``.
    """
    mode = module_mode(module)
    if mode is None:
        raise TypeError(f"replay(): {type(module).__name__} is not a stock nn.RNN, nn.LSTM or nn.GRU")
    dirs = 2 if module.bidirectional else 1
    n_layers = module.num_layers if layers is None else layers
    h_out = module.proj_size or module.hidden_size
    dtype = torch.float32 if rows.dtype in (torch.float16, torch.bfloat16) else rows.dtype
    b = batch_sizes[0] if batch_sizes else 0
    total = rows.shape[0]
    with torch.autocast(rows.device.type, enabled=False):
        x = rows.detach().to(dtype)
        h0, c0 = _initial(hx, n_layers * dirs, b, h_out, module.hidden_size, mode, x)
        z = None
        if inject:
            z = torch.zeros(n_layers * dirs, total, h_out, dtype=dtype, device=x.device,
                            requires_grad=True)
        units: list[Unit] = []
        finals: list[Tensor] = []
        cells: list[Tensor] = []
        for layer in range(n_layers):
            outs = []
            for d in range(dirs):
                k = layer * dirs + d
                unit, h_last, c_last = _run(mode, x, batch_sizes, h0[k], None if c0 is None else c0[k],
                                            _weights(module, f"l{layer}" + ("_reverse" if d else ""), dtype),
                                            layer, bool(d), None if z is None else z[k])
                units.append(unit)
                outs.append(unit.hidden)
                finals.append(h_last)
                if c_last is not None:
                    cells.append(c_last)
            x = outs[0] if dirs == 1 else torch.cat(outs, 1)
    return Replay(units, x, torch.stack(finals), torch.stack(cells) if cells else None, z)


def _initial(hx: Union[Tensor, tuple[Tensor, Tensor], None], units: int, b: int, h_out: int,
             hidden: int, mode: str, like: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """``(h_0, c_0)`` as ``(units, B, ·)`` float tensors (zeros when not given)."""
    def prep(t: Optional[Tensor], size: int) -> Tensor:
        if t is None:
            return like.new_zeros(units, b, size)
        t = t.detach().to(like.dtype)
        return t if t.dim() == 3 else t.unsqueeze(1)  # unbatched (units, H)

    if mode == "LSTM":
        h, c = hx if isinstance(hx, tuple) else (None, None)
        return prep(h, h_out)[:units], prep(c, hidden)[:units]
    return prep(hx if isinstance(hx, Tensor) else None, h_out)[:units], None


def _run(mode: str, x: Tensor, batch_sizes: Sequence[int], h: Tensor, c: Optional[Tensor],
         weights: tuple[Optional[Tensor], ...], layer: int, reverse: bool, z: Optional[Tensor]
         ) -> tuple[Unit, Tensor, Optional[Tensor]]:
    """One layer and direction over every time step; returns the unit and its final states."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    assert w_ih is not None and w_hh is not None
    gi = x @ w_ih.t()
    if b_ih is not None:
        gi = gi + b_ih
    offsets = [0]
    for n in batch_sizes:
        offsets.append(offsets[-1] + n)
    hs: list[Tensor] = [h] * len(batch_sizes)
    gs: list[dict[str, Tensor]] = [{}] * len(batch_sizes)
    order = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    full = h.shape[0]
    for t in order:
        lo, n = offsets[t], batch_sizes[t]
        h_prev = h if n == h.shape[0] else h[:n]
        c_prev = None if c is None else (c if n == c.shape[0] else c[:n])
        h_new, c_new, gates = step(mode, gi[lo:lo + n], h_prev, c_prev, w_hh, b_hh, w_hr)
        if z is not None:
            h_new = h_new + z[lo:lo + n]
        hs[t], gs[t] = h_new, gates
        h = h_new if n == full else torch.cat([h_new, h[n:]])
        if c is not None and c_new is not None:
            c = c_new if n == full else torch.cat([c_new, c[n:]])
    hidden = torch.cat(hs) if hs else x.new_zeros(0, h.shape[-1])
    gates = {name: torch.cat([g[name] for g in gs]) for name in GATES[mode]} if hs else {}
    return Unit(layer, reverse, hidden, gates), h, c


Hidden = Union[Tensor, tuple[Tensor, Tensor], None]


def row_order(inp: object, hx: Hidden) -> Hidden:
    """A state ``(layers, B, H)`` in the order of the rows: a packed sequence's sorted order."""
    idx = inp.sorted_indices if isinstance(inp, PackedSequence) else None
    if idx is None or hx is None:
        return hx
    if isinstance(hx, tuple):
        return (hx[0].index_select(1, idx), hx[1].index_select(1, idx))
    return hx.index_select(1, idx)


def batched(t: Tensor) -> Tensor:
    """An unbatched cell tensor ``(H,)`` as a batch of one."""
    return t if t.dim() == 2 else t.unsqueeze(0)


def cell_gates(mode: str, cell: nn.RNNCellBase, x: Tensor, hx: Hidden) -> dict[str, Tensor]:
    """The sigmoid gates of one cell call (float32), recomputed from its input, state and weights."""
    if not GATES[mode]:
        return {}
    x = batched(x.detach()).float()
    size = cell.hidden_size
    if hx is None:
        h = x.new_zeros(x.shape[0], size)
        c: Optional[Tensor] = x.new_zeros(x.shape[0], size)
    elif isinstance(hx, tuple):
        h, c = batched(hx[0].detach()).float(), batched(hx[1].detach()).float()
    else:
        h, c = batched(hx.detach()).float(), None
    gi = x @ cell.weight_ih.detach().float().t()
    if cell.bias_ih is not None:
        gi = gi + cell.bias_ih.detach().float()
    b_hh = None if cell.bias_hh is None else cell.bias_hh.detach().float()
    return step(mode, gi, h, c if mode == "LSTM" else None, cell.weight_hh.detach().float(),
                b_hh)[2]
