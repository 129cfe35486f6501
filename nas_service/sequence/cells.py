"""Recurrent layers that run a whole sequence: LSTM, RHN, HyperLSTM and hyper-RHN.

Every layer has the same interface, so the language model stacks them without knowing which:

- ``forward(x, state) -> (y, state)`` with ``x: (T, B, I)`` (time-major, like ``nn.LSTM``),
  ``y: (T, B, H)`` and ``state`` a tuple of ``(B, ·)`` tensors (``None``: zeros);
- ``initial_state(batch, device) -> state``;
- ``output_state(state) -> (B, H)``: the main hidden state ``h_t`` (what the gradient-flow
  measurement differentiates against).

The custom cells compute the input projections of all ``T`` steps in one matrix product before
the time loop, and each gate group (e.g. the four LSTM gates) in one fused product per step; the
only Python loops are over time steps and recurrence depth, never over units.

Options shared by the custom cells:

- ``layer_norm``: layer normalisation (Ba et al. 2016) of each gate group's pre-activation over
  its ``H`` units, with its own gain and bias, before the nonlinearity (:class:`GroupLayerNorm`).
- ``recurrent_dropout``: variational dropout (Gal & Ghahramani 2016, as Zilly et al. use it) on
  the state entering the recurrent product: one ``(B, H)`` mask per call of ``forward``, the same
  at every time step and depth.

The ``lstm`` layer is ``nn.LSTM`` itself (cuDNN / oneDNN kernels), which has neither option.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

State = tuple[torch.Tensor, ...]

__all__ = [
    "GroupLayerNorm",
    "HyperLSTMCell",
    "HyperScales",
    "HyperRHNCell",
    "LSTMLayer",
    "RHNCell",
    "State",
]


class GroupLayerNorm(nn.Module):
    r"""Layer normalisation of ``groups`` gate groups side by side.

    .. math:: \mathrm{LN}(a)_{g} = \gamma_g \odot \frac{a_g - \mu(a_g)}{\sigma(a_g)} + \beta_g

    for each group ``a_g`` of ``size`` units.

    Shapes: ``a: (B, groups * size) -> (B, groups * size)``.
    """

    def __init__(self, groups: int, size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups, self.size, self.eps = groups, size, eps
        self.weight = nn.Parameter(torch.ones(groups, size))
        self.bias = nn.Parameter(torch.zeros(groups, size))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        g = a.view(a.shape[0], self.groups, self.size)  # (B, G, S)
        g = F.layer_norm(g, (self.size,), eps=self.eps) * self.weight + self.bias
        return g.reshape(a.shape)


def _dropout_mask(like: torch.Tensor, p: float, training: bool) -> torch.Tensor | None:
    """One inverted-dropout mask ``(B, H)`` for a whole sequence, or ``None`` when inactive."""
    if not training or p == 0.0:
        return None
    return torch.empty_like(like).bernoulli_(1.0 - p).div_(1.0 - p)


def _uniform_(t: torch.Tensor, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(t, -bound, bound)


class HyperScales(nn.Module):
    r"""What a hypernetwork state says about the main cell: per-unit modulation vectors
    through small embeddings (Ha et al. 2017's :math:`z`), one per group :math:`g`:

    .. math:: z_g = A_g \hat h + a_g, \qquad \delta_g = D_g z_g

    with :math:`z_g` of size ``embedding_size`` (:math:`N_z`), so a group costs
    :math:`N N_z + N_z S` parameters instead of :math:`N S`. :math:`D` starts at zero: every
    :math:`\delta_g` is 0 until training moves it, and with :math:`D = 0` the hypernetwork
    changes nothing.

    Shapes: ``ĥ: (B, N) -> δ: (B, groups, size)``.
    """

    def __init__(self, hyper_size: int, groups: int, size: int, embedding_size: int = 16) -> None:
        super().__init__()
        self.groups, self.embedding_size = groups, embedding_size
        self.embed = nn.Linear(hyper_size, groups * embedding_size)  # [A; a]
        self.project = nn.Parameter(torch.zeros(groups, embedding_size, size))  # D

    def forward(self, hyper_state: torch.Tensor) -> torch.Tensor:
        z = self.embed(hyper_state).view(-1, self.groups, self.embedding_size)  # (B, G, Nz)
        return torch.einsum("bgz,gzs->bgs", z, self.project)  # (B, G, S)


# ------------------------------------------------------------------------------------------------
# LSTM
# ------------------------------------------------------------------------------------------------


class LSTMLayer(nn.Module):
    r"""One ``nn.LSTM`` layer (Hochreiter & Schmidhuber 1997) behind the common interface.

    .. math::
        (i, f, g, o) &= (\sigma, \sigma, \tanh, \sigma)(W x_t + R h_{t-1} + b) \\
        c_t &= f \odot c_{t-1} + i \odot g, \qquad h_t = o \odot \tanh(c_t)

    Shapes: ``x: (T, B, I) -> y: (T, B, H)``; state ``(h, c)``, each ``(B, H)``.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.lstm = nn.LSTM(input_size, hidden_size)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        z = torch.zeros(batch, self.hidden_size, device=device)
        return z, z.clone()

    def output_state(self, state: State) -> torch.Tensor:
        return state[0]

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.initial_state(x.shape[1], x.device)
        h, c = state
        y, (h_n, c_n) = self.lstm(x, (h.unsqueeze(0), c.unsqueeze(0)))
        return y, (h_n.squeeze(0), c_n.squeeze(0))


# ------------------------------------------------------------------------------------------------
# RHN
# ------------------------------------------------------------------------------------------------


class RHNCell(nn.Module):
    r"""Recurrent highway network layer (Zilly et al. 2017, "Recurrent Highway Networks").

    Each time step is ``depth`` (``L``) highway layers; the input enters only the first. With
    :math:`s_t^{(0)} = s_{t-1}^{(L)}` and, for :math:`l = 1..L`,

    .. math::
        \hat h^{(l)} &= \tanh\big(W_H x_t [l{=}1] + R_H^{(l)} s_t^{(l-1)} + b_H^{(l)}\big) \\
        \tau^{(l)} &= \sigma\big(W_T x_t [l{=}1] + R_T^{(l)} s_t^{(l-1)} + b_T^{(l)}\big) \\
        s_t^{(l)} &= \hat h^{(l)} \odot \tau^{(l)} + s_t^{(l-1)} \odot (1 - \tau^{(l)})

    (the carry gate coupled to the transform gate: :math:`c = 1 - \tau`); the output is
    :math:`y_t = s_t^{(L)}`. :math:`[H; T]` are fused: ``input_proj`` is
    :math:`x \mapsto [W_H; W_T] x` (run on the whole sequence at once), ``recurrent_weight[l]``
    is :math:`[R_H^{(l)}; R_T^{(l)}]^\top` and ``recurrent_bias[l]`` is
    :math:`[b_H^{(l)}; b_T^{(l)}]`. The transform-gate biases start at ``transform_bias``
    (negative: the layer starts close to carrying its state, which Zilly et al. recommend).

    Args:
        input_size: ``I``.
        hidden_size: ``H``.
        depth: recurrence depth ``L``.
        layer_norm: normalise the ``H`` and ``T`` pre-activations of every depth.
        recurrent_dropout: variational dropout on :math:`s^{(l-1)}` before :math:`R^{(l)}`.
        transform_bias: initial :math:`b_T`.

    Shapes: ``x: (T, B, I) -> y: (T, B, H)``; state ``(s,)`` with ``s: (B, H)``.
    """

    def __init__(self, input_size: int, hidden_size: int, depth: int = 5, *,
                 layer_norm: bool = False, recurrent_dropout: float = 0.0,
                 transform_bias: float = -2.0) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.hidden_size, self.depth = hidden_size, depth
        self.recurrent_dropout = recurrent_dropout
        self.input_proj = nn.Linear(input_size, 2 * hidden_size, bias=False)
        self.recurrent_weight = nn.Parameter(torch.empty(depth, hidden_size, 2 * hidden_size))
        self.recurrent_bias = nn.Parameter(torch.zeros(depth, 2 * hidden_size))
        self.norms = nn.ModuleList(GroupLayerNorm(2, hidden_size) for _ in range(depth)) \
            if layer_norm else None
        _uniform_(self.recurrent_weight, hidden_size)
        with torch.no_grad():
            self.recurrent_bias[:, hidden_size:] = transform_bias

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        return (torch.zeros(batch, self.hidden_size, device=device),)

    def output_state(self, state: State) -> torch.Tensor:
        return state[0]

    def highway(self, s: torch.Tensor, pre: torch.Tensor, layer: int) -> torch.Tensor:
        """One highway layer from its pre-activation ``pre: (B, 2H)``: ``s: (B, H) -> (B, H)``."""
        if self.norms is not None:
            pre = self.norms[layer](pre)
        h, t = pre.chunk(2, dim=1)
        h, t = torch.tanh(h), torch.sigmoid(t)
        return s + t * (h - s)  # = h * t + s * (1 - t)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.initial_state(x.shape[1], x.device)
        (s,) = state
        xw = self.input_proj(x)  # (T, B, 2H): every step's input projection in one product
        mask = _dropout_mask(s, self.recurrent_dropout, self.training)
        out = []
        for t in range(x.shape[0]):
            for layer in range(self.depth):
                r = s if mask is None else s * mask
                pre = torch.addmm(self.recurrent_bias[layer], r, self.recurrent_weight[layer])
                if layer == 0:
                    pre = pre + xw[t]
                s = self.highway(s, pre, layer)
            out.append(s)
        return torch.stack(out), (s,)


# ------------------------------------------------------------------------------------------------
# HyperLSTM
# ------------------------------------------------------------------------------------------------


def _lstm_update(pre: torch.Tensor, c: torch.Tensor,
                 cell_norm: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``pre: (B, 4H)`` in ``nn.LSTM``'s gate order ``(i, f, g, o)``; returns ``(h, c)``."""
    i, f, g, o = pre.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c if cell_norm is None else cell_norm(c))
    return h, c


class HyperLSTMCell(nn.Module):
    r"""HyperLSTM layer (Ha, Dai & Le 2017, "HyperNetworks", section 3.2).

    A small LSTM (the hypernetwork, width ``N``) reads :math:`[x_t; h_{t-1}]`; its state
    :math:`\hat h_t` produces, through ``scales`` (:class:`HyperScales`, three groups), per-unit
    scales of the main LSTM's input and recurrent pre-activations and a per-step bias:

    .. math::
        (\hat h_t, \hat c_t) &= \mathrm{LSTM}_N([x_t; h_{t-1}], (\hat h_{t-1}, \hat c_{t-1})) \\
        (\delta_x, \delta_h, \delta_b) &= \mathrm{HyperScales}(\hat h_t) \\
        a_t &= (1 + \delta_x) \odot W x_t + (1 + \delta_h) \odot R h_{t-1} + b + \delta_b \\
        (i, f, g, o) &= (\sigma, \sigma, \tanh, \sigma)(\mathrm{LN}(a_t)) \\
        c_t &= f \odot c_{t-1} + i \odot g, \qquad h_t = o \odot \tanh(\mathrm{LN}(c_t))

    (``LN`` only with ``layer_norm``). The projections :math:`D` of ``scales`` start at zero, so
    the layer starts as a plain LSTM with weights :math:`W, R, b`; with :math:`D = 0` it *is*
    that LSTM.

    Args:
        input_size: ``I``.
        hidden_size: ``H``.
        hyper_size: ``N``.
        hyper_embedding_size: ``N_z`` of :class:`HyperScales`.
        layer_norm: normalise the four gates' pre-activations (main and hyper LSTM) and the main
            cell state.
        recurrent_dropout: variational dropout on :math:`h_{t-1}` before :math:`R`.

    Shapes: ``x: (T, B, I) -> y: (T, B, H)``; state ``(h, c, ĥ, ĉ)``: ``(B, H)`` twice, then
    ``(B, N)`` twice.
    """

    def __init__(self, input_size: int, hidden_size: int, hyper_size: int = 64, *,
                 hyper_embedding_size: int = 16, layer_norm: bool = False,
                 recurrent_dropout: float = 0.0) -> None:
        super().__init__()
        H, N = hidden_size, hyper_size
        self.hidden_size, self.hyper_size = H, N
        self.recurrent_dropout = recurrent_dropout
        # main LSTM: W (input), R (recurrent), b
        self.input_proj = nn.Linear(input_size, 4 * H, bias=False)
        self.recurrent_weight = nn.Parameter(torch.empty(H, 4 * H))
        self.bias = nn.Parameter(torch.zeros(4 * H))
        # hypernetwork LSTM on [x_t; h_{t-1}]: the x part runs on the whole sequence at once
        self.hyper_input_proj = nn.Linear(input_size, 4 * N)
        self.hyper_state_proj = nn.Linear(H, 4 * N, bias=False)
        self.hyper_recurrent_weight = nn.Parameter(torch.empty(N, 4 * N))
        self.scales = HyperScales(N, 3, 4 * H, hyper_embedding_size)  # (δx, δh, δb)
        self.norm = GroupLayerNorm(4, H) if layer_norm else None
        self.cell_norm = nn.LayerNorm(H) if layer_norm else None
        self.hyper_norm = GroupLayerNorm(4, N) if layer_norm else None
        _uniform_(self.recurrent_weight, H)
        _uniform_(self.hyper_recurrent_weight, N)
        with torch.no_grad():  # forget gates start open (bias 1), as is usual for LSTMs
            self.bias[H:2 * H] = 1.0
            self.hyper_input_proj.bias[N:2 * N] += 1.0

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        H, N = self.hidden_size, self.hyper_size
        return (torch.zeros(batch, H, device=device), torch.zeros(batch, H, device=device),
                torch.zeros(batch, N, device=device), torch.zeros(batch, N, device=device))

    def output_state(self, state: State) -> torch.Tensor:
        return state[0]

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.initial_state(x.shape[1], x.device)
        h, c, hh, hc = state
        xw = self.input_proj(x)  # (T, B, 4H)
        xu = self.hyper_input_proj(x)  # (T, B, 4N)
        mask = _dropout_mask(h, self.recurrent_dropout, self.training)
        out = []
        for t in range(x.shape[0]):
            hyper_pre = xu[t] + self.hyper_state_proj(h) + hh @ self.hyper_recurrent_weight
            if self.hyper_norm is not None:
                hyper_pre = self.hyper_norm(hyper_pre)
            hh, hc = _lstm_update(hyper_pre, hc)  # (B, N)
            dx, dh, db = self.scales(hh).unbind(1)  # each (B, 4H)
            r = h if mask is None else h * mask
            pre = (1 + dx) * xw[t] + (1 + dh) * (r @ self.recurrent_weight) + self.bias + db
            if self.norm is not None:
                pre = self.norm(pre)
            h, c = _lstm_update(pre, c, self.cell_norm)
            out.append(h)
        return torch.stack(out), (h, c, hh, hc)


# ------------------------------------------------------------------------------------------------
# hyper-RHN
# ------------------------------------------------------------------------------------------------


class HyperRHNCell(nn.Module):
    r"""Recurrent highway hypernetwork layer (Suarez 2017, "Language Modeling with Recurrent
    Highway Hypernetworks").

    A small RHN (the hypernetwork, width ``N``, the same depth ``L``) reads
    :math:`[x_t; s_{t-1}]` and steps through its depth alongside the main RHN
    (:class:`RHNCell`); at every depth :math:`l` its state :math:`\hat s_t^{(l)}` scales the
    main layer's pre-activations per unit:

    .. math::
        \hat s_t^{(l)} &= \mathrm{Highway}_N^{(l)}(\hat s_t^{(l-1)}, [x_t; s_{t-1}] [l{=}1]) \\
        (\delta_x^{(l)}, \delta_r^{(l)}, \delta_b^{(l)}) &= \mathrm{HyperScales}^{(l)}(\hat s_t^{(l)}) \\
        a^{(l)} &= (1 + \delta_x^{(l)}) \odot W x_t [l{=}1]
                  + (1 + \delta_r^{(l)}) \odot R^{(l)} s_t^{(l-1)} + b^{(l)} + \delta_b^{(l)} \\
        s_t^{(l)} &= \tanh(a_H^{(l)}) \odot \sigma(a_T^{(l)})
                    + s_t^{(l-1)} \odot (1 - \sigma(a_T^{(l)}))

    where :math:`a = [a_H; a_T]` (``LN`` applied to :math:`a^{(l)}` with ``layer_norm``) and
    :math:`\delta_x` exists only at :math:`l = 1`. The projections :math:`D` of ``scales[l]``
    (:class:`HyperScales`) start at zero, so the layer starts as the plain RHN with its
    weights; with them zeroed it *is* that RHN (``main`` is an :class:`RHNCell`).

    Args:
        input_size: ``I``.
        hidden_size: ``H``.
        depth: recurrence depth ``L`` (of both RHNs).
        hyper_size: ``N``.
        hyper_embedding_size: ``N_z`` of :class:`HyperScales`.
        layer_norm: layer norm in both RHNs.
        recurrent_dropout: variational dropout on :math:`s^{(l-1)}` before :math:`R^{(l)}`.

    Shapes: ``x: (T, B, I) -> y: (T, B, H)``; state ``(s, ŝ)``: ``(B, H)`` and ``(B, N)``.
    """

    def __init__(self, input_size: int, hidden_size: int, depth: int = 5,
                 hyper_size: int = 64, *, hyper_embedding_size: int = 16,
                 layer_norm: bool = False, recurrent_dropout: float = 0.0) -> None:
        super().__init__()
        H, N = hidden_size, hyper_size
        self.hidden_size, self.hyper_size, self.depth = H, N, depth
        self.main = RHNCell(input_size, H, depth, layer_norm=layer_norm,
                            recurrent_dropout=recurrent_dropout)
        self.hyper = RHNCell(input_size + H, N, depth, layer_norm=layer_norm)
        # the first depth scales the input and recurrent products and shifts the bias; the
        # deeper ones have no input product
        self.scales = nn.ModuleList(
            HyperScales(N, 3 if layer == 0 else 2, 2 * H, hyper_embedding_size)
            for layer in range(depth))

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        return (torch.zeros(batch, self.hidden_size, device=device),
                torch.zeros(batch, self.hyper_size, device=device))

    def output_state(self, state: State) -> torch.Tensor:
        return state[0]

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.initial_state(x.shape[1], x.device)
        s, hs = state
        main, hyper = self.main, self.hyper
        xw = main.input_proj(x)  # (T, B, 2H)
        # the hypernetwork's input [x_t; s_{t-1}]: the x part for every step in one product
        hyper_w = hyper.input_proj.weight  # (2N, I + H)
        xu = F.linear(x, hyper_w[:, :x.shape[2]])  # (T, B, 2N)
        hyper_state_w = hyper_w[:, x.shape[2]:]  # (2N, H)
        mask = _dropout_mask(s, main.recurrent_dropout, self.training)
        out = []
        for t in range(x.shape[0]):
            for layer in range(self.depth):
                hyper_pre = torch.addmm(hyper.recurrent_bias[layer], hs,
                                        hyper.recurrent_weight[layer])
                if layer == 0:
                    hyper_pre = hyper_pre + xu[t] + F.linear(s, hyper_state_w)
                hs = hyper.highway(hs, hyper_pre, layer)  # (B, N)
                d = self.scales[layer](hs)  # (B, 3, 2H) at depth 0, else (B, 2, 2H)
                r = s if mask is None else s * mask
                pre = (1 + d[:, 0]) * (r @ main.recurrent_weight[layer]) \
                    + main.recurrent_bias[layer] + d[:, 1]
                if layer == 0:
                    pre = pre + (1 + d[:, 2]) * xw[t]
                s = main.highway(s, pre, layer)
            out.append(s)
        return torch.stack(out), (s, hs)
