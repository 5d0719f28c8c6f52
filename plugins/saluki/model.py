"""Saluki (Agarwal & Kelley 2022) in plain torch, numerically matching calico/basenji's Keras model.

Reimplements ``basenji/rnann.py`` (``RnaNN.build_model``, ``residual=False``, ``rnn_type="gru"``,
one head) with the hyper-parameters of ``manuscripts/saluki/params.json`` as defaults::

    x (B, L, C_in), channels-last, 3'-zero-padded
      -> StochasticShift(0..augment_shift, training only)
      -> Conv1D(filters, kernel_size, valid, no bias)
      -> num_layers x [LayerNorm(ln_epsilon) -> act -> Conv1D(valid, bias) -> Dropout -> MaxPool(2)]
      -> LayerNorm -> act -> GRU(filters), read from the last step to the first, final state
      -> BatchNorm -> act -> Dense(filters) -> Dropout -> BatchNorm -> act -> Dense(num_outputs)

Parameters are held in ordinary torch modules (``conv0``, ``blocks.<i>.ln``, ``blocks.<i>.conv``,
``final_ln``, ``gru`` as an ``nn.GRU`` with gate order r, z, n, ``bn1``, ``dense1``, ``bn2``,
``head``) so the ``state_dict`` looks like any torch model; :func:`.keras_weights.load_keras_weights` maps
Keras names and layouts onto them. The forward pass does not run those modules, though:

* **Flat layout.** The batch is laid out as one long channels-last sequence ``(B * S, C)``, every
  sample in its own slot of ``S`` rows (``S`` = the length rounded up to a multiple of
  ``2 ** num_layers``, so every max-pool keeps slots aligned). Convolutions run over the whole
  flat sequence as a single oneDNN channels-last convolution; the outputs that straddle two slots
  are garbage rows that never reach a valid output and always receive a zero gradient. This
  avoids every transpose/``.contiguous()`` copy, uses oneDNN's fastest (``nwc``) forward and
  backward-data kernels and lets the weight gradient be ``kernel_size`` large GEMMs.
* **Dropout + max-pool** is one autograd function that keeps one float per element for the
  backward instead of a mask plus int64 argmax indices; the keep masks come from NumPy's PCG64
  (one uniform per max-pool pair decides both elements, exactly as two independent draws;
  filled by parallel threads and seeded from torch's generator so ``torch.manual_seed`` still
  makes training reproducible), because torch's CPU ``bernoulli_`` costs more than the
  convolution it follows.
* **GRU**: the input projection is one matmul over all steps; only the recurrence loops, in a
  custom autograd function with a hand-written backward (no per-step autograd graph), on one
  thread (a thread team's barrier costs more than the tiny per-step matmuls).
* **Eval-mode padding shortcut** (exact): see :meth:`Saluki.forward`.

Training-time details follow Keras where torch's defaults differ: BatchNorm's moving variance is
updated with the *biased* batch variance, max-pool gradients go to the first of two tied inputs,
and initialisation is Keras's (he_normal, orthogonal recurrent kernel, zero biases). Dropout
probabilities are exact up to float32 uniforms (resolution 2**-24).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import DropMaxPool, FlatConv, GRURecurrence, gru_loop, max_pool_pairs

__all__ = [
    "Saluki",
    "min_seq_length",
    "trunk_lengths",
    "gru_steps",
]


# ----------------------------------------------------------------------------------------------
# Lengths
# ----------------------------------------------------------------------------------------------


def trunk_lengths(seq_length: int, kernel_size: int = 5, num_layers: int = 6) -> list[int]:
    """Time lengths after the first convolution and after each block's max-pool.

    Parameters
    ----------
    seq_length, kernel_size, num_layers
        Input length ``L`` and architecture.

    Returns
    -------
    list of int
        ``num_layers + 1`` lengths; the last one is the number of GRU steps (may be <= 0 when
        ``seq_length`` is too short).
    """
    t = seq_length - kernel_size + 1
    out = [t]
    for _ in range(num_layers):
        t = (t - kernel_size + 1) // 2
        out.append(t)
    return out


def gru_steps(seq_length: int, kernel_size: int = 5, num_layers: int = 6) -> int:
    """Number of GRU time steps for an input of ``seq_length`` (188 for 12288 with defaults)."""
    return trunk_lengths(seq_length, kernel_size, num_layers)[-1]


def min_seq_length(kernel_size: int = 5, num_layers: int = 6) -> int:
    """Smallest input length (block size) that leaves at least one GRU step.

    Walks the architecture backwards from one GRU step: a max-pool needs two inputs per output,
    a valid convolution ``kernel_size - 1`` extra inputs. 320 for the defaults (5, 6).
    """
    if kernel_size < 1 or num_layers < 0:
        raise ValueError(f"kernel_size must be >= 1 and num_layers >= 0, got {kernel_size}, {num_layers}")
    m = 1
    for _ in range(num_layers):
        m = 2 * m + kernel_size - 1
    return m + kernel_size - 1


def _data_extent(length: int, seq_length: int, kernel_size: int, num_layers: int) -> int:
    """How many leading GRU steps depend on the first ``length`` input rows.

    All later steps see only the zero padding, whose activations in eval mode are one constant
    column per layer: a valid-conv output ``t`` reads rows ``t .. t+K-1`` so it is constant iff
    ``t >= n``; a pool output ``i`` reads ``2i, 2i+1`` so it is constant iff ``i >= ceil(n/2)``.
    """
    lens = trunk_lengths(seq_length, kernel_size, num_layers)
    n = min(length, lens[0])
    for j in range(num_layers):
        n = min(-(-n // 2), lens[j + 1])
    return max(n, 0)


@functools.lru_cache(maxsize=65536)
def _prefix_slot(ell: int, length: int, kernel_size: int, num_layers: int) -> int:
    """Shortest slot (a multiple of ``2**num_layers``) whose valid GRU steps include every step
    that depends on the first ``ell`` rows of a length-``length`` input; the full slot when
    nothing shorter works. For the defaults this is about ``ell + 256`` rounded up to 64."""
    q = 1 << num_layers
    need = _data_extent(ell, length, kernel_size, num_layers)
    s = _slot(max(ell, min_seq_length(kernel_size, num_layers)), num_layers)
    while s < length:
        if gru_steps(s, kernel_size, num_layers) >= need:
            return s
        s += q
    return _slot(length, num_layers)


def _slot(length: int, num_layers: int) -> int:
    """Slot stride of the flat layout: ``length`` rounded up to a multiple of ``2**num_layers``."""
    q = 1 << num_layers
    return -(-length // q) * q


# ----------------------------------------------------------------------------------------------
# Small modules
# ----------------------------------------------------------------------------------------------


# basenji.layers.activate: "gelu" is tf.keras.activations.gelu(approximate=True), the tanh form
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "linear": lambda x: x,
}


class _KerasBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d whose moving variance follows Keras: updated with the *biased* batch variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        with torch.no_grad():
            var, mean = torch.var_mean(x, dim=0, correction=0)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var, self.momentum)
            self.num_batches_tracked += 1
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


class _Block(nn.Module):
    def __init__(self, filters: int, kernel_size: int, ln_epsilon: float):
        super().__init__()
        self.ln = nn.LayerNorm(filters, eps=ln_epsilon)
        self.conv = nn.Conv1d(filters, filters, kernel_size)


def _he_normal_(w: torch.Tensor, fan_in: int) -> None:
    # Keras he_normal: truncated normal (2 std) scaled so the *truncated* std is sqrt(2 / fan_in)
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(w, 0.0, std, -2.0 * std, 2.0 * std)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


class Saluki(nn.Module):
    """Saluki CNN + GRU (Agarwal & Kelley 2022), Keras-exact in eval mode.

    Parameters
    ----------
    in_channels : int
        Input channels ``C_in`` (6 in the paper: A, C, G, T, coding frame, splice).
    seq_length : int
        Block size the model is built for (12288 in the paper). Must be at least
        :func:`min_seq_length` ``(kernel_size, num_layers)``. ``forward`` accepts any length
        that is long enough; ``seq_length`` is the default the plugin pads to.
    filters, kernel_size, num_layers, dropout, ln_epsilon
        As in ``params.json`` (64, 5, 6, 0.3, 0.007).
    bn_momentum : float
        Keras convention (moving = momentum * moving + (1 - momentum) * batch); the torch
        ``BatchNorm1d.momentum`` is ``1 - bn_momentum``.
    bn_epsilon : float
        BatchNorm epsilon (Keras default 1e-3).
    augment_shift : int
        Training-only ``StochasticShift(augment_shift, symmetric=False)``: one shift
        ``s ~ U{0..augment_shift}`` per batch moves every sequence ``s`` rows to the 3' side,
        zero-filling the first ``s`` rows and dropping the last ``s``.
    go_backwards : bool
        The GRU reads from the last step to the first (Keras ``go_backwards=True``).
    num_outputs : int
        Width of the final Dense.
    activation : {"relu", "gelu", "sigmoid", "tanh", "softplus", "linear"}
        Activation after every norm, as basenji's ``layers.activate`` ("gelu" is the tanh
        approximation).
    l2_scale : float
        Keras ``l2`` kernel regulariser weight (1e-3 in the paper). Not applied by ``forward``:
        add :meth:`l2_penalty` to the training loss.
    eval_shortcut : bool
        Use the exact padding shortcut in eval mode (see :meth:`forward`).
    """

    def __init__(
        self,
        in_channels: int,
        seq_length: int = 12288,
        filters: int = 64,
        kernel_size: int = 5,
        num_layers: int = 6,
        dropout: float = 0.3,
        ln_epsilon: float = 0.007,
        bn_momentum: float = 0.9,
        bn_epsilon: float = 1e-3,
        augment_shift: int = 3,
        go_backwards: bool = True,
        num_outputs: int = 1,
        activation: str = "relu",
        l2_scale: float = 1e-3,
        eval_shortcut: bool = True,
    ):
        super().__init__()
        if in_channels < 1 or filters < 1 or num_outputs < 1:
            raise ValueError(
                f"in_channels, filters and num_outputs must be >= 1, got {in_channels}, {filters}, {num_outputs}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0.0 <= bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1], got {bn_momentum}")
        if augment_shift < 0:
            raise ValueError(f"augment_shift must be >= 0, got {augment_shift}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        lmin = min_seq_length(kernel_size, num_layers)
        if seq_length < lmin:
            raise ValueError(
                f"seq_length {seq_length} is too short for kernel_size={kernel_size}, "
                f"num_layers={num_layers}: at least {lmin} is needed for one GRU step")
        self.in_channels = in_channels
        self.seq_length = seq_length
        self.filters = filters
        self.kernel_size = kernel_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.ln_epsilon = ln_epsilon
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.augment_shift = augment_shift
        self.go_backwards = go_backwards
        self.num_outputs = num_outputs
        self.activation = activation
        self.l2_scale = l2_scale
        self.eval_shortcut = eval_shortcut

        self.conv0 = nn.Conv1d(in_channels, filters, kernel_size, bias=False)
        self.blocks = nn.ModuleList(_Block(filters, kernel_size, ln_epsilon) for _ in range(num_layers))
        self.final_ln = nn.LayerNorm(filters, eps=ln_epsilon)
        self.gru = nn.GRU(filters, filters, batch_first=True)
        self.bn1 = _KerasBatchNorm(filters, eps=bn_epsilon, momentum=1.0 - bn_momentum)
        self.dense1 = nn.Linear(filters, filters)
        self.bn2 = _KerasBatchNorm(filters, eps=bn_epsilon, momentum=1.0 - bn_momentum)
        self.head = nn.Linear(filters, num_outputs)
        self.reset_parameters()

    # ------------------------------------------------------------------ parameters

    @staticmethod
    def min_seq_length(kernel_size: int = 5, num_layers: int = 6) -> int:
        """See :func:`min_seq_length`."""
        return min_seq_length(kernel_size, num_layers)

    def reset_parameters(self) -> None:
        """Keras initialisation as in ``RnaNN``: he_normal kernels, orthogonal recurrent kernel, zero biases."""
        k = self.kernel_size
        with torch.no_grad():
            _he_normal_(self.conv0.weight, k * self.in_channels)
            for blk in self.blocks:
                _he_normal_(blk.conv.weight, k * self.filters)
                blk.conv.bias.zero_()
                blk.ln.reset_parameters()
            self.final_ln.reset_parameters()
            _he_normal_(self.gru.weight_ih_l0, self.filters)
            nn.init.orthogonal_(self.gru.weight_hh_l0)
            self.gru.bias_ih_l0.zero_()
            self.gru.bias_hh_l0.zero_()
            for bn in (self.bn1, self.bn2):
                bn.reset_parameters()
            for lin in (self.dense1, self.head):
                _he_normal_(lin.weight, lin.in_features)
                lin.bias.zero_()

    def l2_penalty(self) -> torch.Tensor:
        """Keras ``l2(l2_scale)`` regularisation loss: ``l2_scale * sum(w**2)`` over the conv
        kernels, the GRU input kernel and the dense (not head) kernel, as in ``RnaNN``."""
        ws = [self.conv0.weight, self.gru.weight_ih_l0, self.dense1.weight]
        ws += [blk.conv.weight for blk in self.blocks]
        return self.l2_scale * sum(w.square().sum() for w in ws)

    def gru_steps(self, seq_length: int | None = None) -> int:
        """GRU steps for an input of ``seq_length`` (default: the model's)."""
        return gru_steps(seq_length or self.seq_length, self.kernel_size, self.num_layers)

    # ------------------------------------------------------------------ pieces

    def _act_(self, x: torch.Tensor) -> torch.Tensor:
        # the norm output is a fresh tensor nobody saved, so relu may overwrite it
        if self.activation == "relu":
            return x.relu_()
        return ACTIVATIONS[self.activation](x)

    def _norm_act(self, h: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
        return self._act_(F.layer_norm(h, (self.filters,), ln.weight, ln.bias, self.ln_epsilon))

    def _flat_input(self, x: torch.Tensor, slot: int, shift: int) -> torch.Tensor:
        """(B, L, C_in) -> (B * slot, C_in): optional 3'-ward shift, zero-fill each slot's tail."""
        bsz, length, cin = x.shape
        if shift:
            x = F.pad(x[:, : length - shift], (0, 0, shift, 0))
        if slot > length:
            x = F.pad(x, (0, 0, 0, slot - length))
        return x.reshape(bsz * slot, cin)

    @staticmethod
    def _unflat(h: torch.Tensor, bsz: int, slot: int, valid: int) -> torch.Tensor:
        """Valid rows of every slot of a flat ``(N, C)`` sequence -> ``(B, valid, C)``."""
        need = bsz * slot
        if h.shape[0] < need:
            h = F.pad(h, (0, 0, 0, need - h.shape[0]))
        return h[:need].view(bsz, slot, h.shape[1])[:, :valid]

    def _trunk_flat(self, h: torch.Tensor, record: Callable[[str, torch.Tensor, int], None] | None = None
                    ) -> torch.Tensor:
        """Convolutional trunk + final norm on a flat sequence.

        Parameters
        ----------
        h : (N, C_in)
            Samples in consecutive slots whose lengths are multiples of ``2**num_layers``.
        record : callable, optional
            Called as ``record(name, flat_activation, depth)`` after the first conv (depth 0) and
            after every block (depth i + 1); slot lengths at depth d are divided by ``2**d``.

        Returns
        -------
        (N_out, filters)
            Flat GRU input; slot ``s`` at depth 0 maps to rows ``s / 2**num_layers``.
        """
        h = FlatConv.apply(h, self.conv0.weight, None)
        if record is not None:
            record("conv0_out", h, 0)
        drop = self.dropout if self.training else 0.0
        for i, blk in enumerate(self.blocks):
            a = self._norm_act(h, blk.ln)
            y = FlatConv.apply(a, blk.conv.weight, blk.conv.bias)
            h = DropMaxPool.apply(y, drop, True) if drop > 0.0 else max_pool_pairs(y)
            if record is not None:
                record(f"block{i}_out", h, i + 1)
        return self._norm_act(h, self.final_ln)

    def _trunk(self, x: torch.Tensor, record: dict | None = None, shift: int = 0) -> torch.Tensor:
        """Trunk over equal slots: (B, L, C_in) -> GRU input (B, T_gru, filters)."""
        bsz, length, _ = x.shape
        slot = _slot(length, self.num_layers)
        lens = trunk_lengths(length, self.kernel_size, self.num_layers)
        rec = None
        if record is not None:
            def rec(name: str, h: torch.Tensor, depth: int) -> None:
                record[name] = self._unflat(h, bsz, slot >> depth, lens[depth])
        h = self._trunk_flat(self._flat_input(x, slot, shift), rec)
        return self._unflat(h, bsz, slot >> self.num_layers, lens[-1])

    def _gru(self, seq: torch.Tensor) -> torch.Tensor:
        """GRU final state (B, filters) of ``seq`` (B, T, filters), from a zero state."""
        xp = F.linear(seq, self.gru.weight_ih_l0, self.gru.bias_ih_l0)
        return self._recur(xp, None, None)

    def _recur(self, xp: torch.Tensor, h0: torch.Tensor | None, backwards: bool | None) -> torch.Tensor:
        """GRU state (B, filters) after reading input projections ``xp`` (B, T, 3 * filters)
        from ``h0`` (zeros if None), in the model's direction unless ``backwards`` is given."""
        if h0 is None:
            h0 = xp.new_zeros(xp.shape[0], self.filters)
        if xp.shape[1] == 0:
            return h0.expand(xp.shape[0], self.filters)
        bw = self.go_backwards if backwards is None else backwards
        return GRURecurrence.apply(xp, self.gru.weight_hh_l0, self.gru.bias_hh_l0, h0, bw)

    def _head(self, state: torch.Tensor, record: dict | None = None) -> torch.Tensor:
        act = ACTIVATIONS[self.activation]
        h = act(self.bn1(state))
        if record is not None:
            record["bn1_relu_out"] = h
        h = self.dense1(h)
        if record is not None:
            record["dense1_out"] = h
        h = F.dropout(h, self.dropout, self.training)
        h = act(self.bn2(h))
        if record is not None:
            record["penultimate"] = h
        return self.head(h)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[2] != self.in_channels:
            raise ValueError(f"expected x of shape (B, L, {self.in_channels}), got {tuple(x.shape)}")
        lmin = min_seq_length(self.kernel_size, self.num_layers)
        if x.shape[1] < lmin:
            raise ValueError(
                f"input length {x.shape[1]} is too short for kernel_size={self.kernel_size}, "
                f"num_layers={self.num_layers}: at least {lmin} is needed for one GRU step")
        return x.to(self.conv0.weight.dtype)

    # ------------------------------------------------------------------ eval shortcut

    def effective_lengths(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample length beyond which every input row is zero.

        Returns ``max(lengths, 1 + last non-zero row)`` (just the latter without ``lengths``), so a
        ``lengths`` that is too short can never make the shortcut differ from the full model.

        Parameters
        ----------
        x : (B, L, C_in)
        lengths : (B,) int, optional

        Returns
        -------
        (B,) int64
        """
        bsz, length, cin = x.shape
        # row |x| sums by matmul (reductions over a 6-wide inner dim are slow on CPU), in row
        # blocks so the |x| temporary stays small
        flat = x.detach().reshape(bsz * length, cin)
        ones = x.new_ones(cin, 1)
        mag = x.new_empty(bsz * length, 1)
        for s0 in range(0, flat.shape[0], 131072):
            torch.mm(flat[s0: s0 + 131072].abs(), ones, out=mag[s0: s0 + 131072])
        # sign of a sum of |x| is 1 exactly for a row with a non-zero (NaN counted as one);
        # float ops only, as bool/int64 where-reductions are slow on CPU
        nonzero = torch.nan_to_num(mag.view(bsz, length), nan=1.0).sign_().to(torch.float64)
        pos = torch.arange(1, length + 1, dtype=torch.float64, device=x.device)
        ell = nonzero.mul_(pos).amax(dim=1).to(torch.int64)
        if lengths is not None:
            ell = torch.maximum(ell, torch.as_tensor(lengths, device=x.device).to(torch.int64).clamp(max=x.shape[1]))
        return ell

    def pad_column(self) -> torch.Tensor:
        """GRU input at a position whose whole receptive field is zero padding (eval mode).

        Returns
        -------
        (filters,)
        """
        lmin = min_seq_length(self.kernel_size, self.num_layers)
        zeros = self.conv0.weight.new_zeros(_slot(lmin, self.num_layers), self.in_channels)
        return self._trunk_flat(zeros)[0]

    def _padding_trajectory(self, steps: int):
        """Padding column (filters,), its GRU input projection (3 * filters,) and, when the GRU
        reads backwards, its states (steps + 1, 1, filters) after 0..steps padding steps.

        Cached while no parameter changes (keyed on parameter identities and versions), as
        prediction runs batch after batch with the same weights; not cached under autograd.
        """
        key = (steps, tuple((id(p), p._version) for p in self.parameters()))
        cache = getattr(self, "_pad_cache", None)
        grad = torch.is_grad_enabled()
        if not grad and cache is not None and cache[0] == key:
            return cache[1]
        pad = self.pad_column()
        xpc = F.linear(pad, self.gru.weight_ih_l0, self.gru.bias_ih_l0)
        hs = None
        if self.go_backwards:
            with torch.no_grad():
                hs = gru_loop(xpc.view(1, 1, -1).expand(1, steps, xpc.shape[0]), self.gru.weight_hh_l0,
                               self.gru.bias_hh_l0, xpc.new_zeros(1, self.filters), True)[0]
        if not grad:
            self._pad_cache = (key, (pad, xpc, hs))
        return pad, xpc, hs

    def _forward_shortcut(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor | None:
        """GRU final state (B, filters) via the padding shortcut; None when it saves little."""
        bsz, length, cin = x.shape
        k, n = self.kernel_size, self.num_layers
        steps = gru_steps(length, k, n)
        full = _slot(length, n)
        slots = [_prefix_slot(e, length, k, n) for e in self.effective_lengths(x, lengths).tolist()]
        if sum(slots) > 0.9 * bsz * full:
            return None
        # ragged flat layout: every sample gets only the prefix its data-dependent steps need
        flat = x.new_zeros(sum(slots), cin)
        offsets = []
        off = 0
        for b, sl in enumerate(slots):
            m = min(sl, length)
            flat[off: off + m] = x[b, :m]
            offsets.append(off)
            off += sl
        h = self._trunk_flat(flat)
        pad, xpc, hs = self._padding_trajectory(steps)
        q = torch.tensor([min(gru_steps(sl, k, n), steps) for sl in slots])
        qmax = int(q.max())
        # steps past a sample's q see only padding in the full model: fill them with the
        # padding column (one extra row) so the batch can run qmax steps together
        j = torch.arange(qmax).unsqueeze(0)
        starts = torch.tensor(offsets).unsqueeze(1) >> n
        idx = torch.where(j < q.unsqueeze(1), starts + j, h.shape[0])
        seq = torch.cat([h, pad.unsqueeze(0)]).index_select(0, idx.reshape(-1).to(h.device))
        xp = F.linear(seq.view(bsz, qmax, self.filters), self.gru.weight_ih_l0, self.gru.bias_ih_l0)
        tail = steps - qmax
        xpc = xpc.view(1, 1, -1)
        if self.go_backwards:
            # the padded tail is read first and is the same for every sample
            if torch.is_grad_enabled():
                h0 = self._recur(xpc.expand(1, tail, xpc.shape[2]), None, True)
            else:
                h0 = hs[tail]
            return self._recur(xp, h0.expand(bsz, self.filters), True)
        state = self._recur(xp, None, False)
        return self._recur(xpc.expand(bsz, tail, xpc.shape[2]), state, False)

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, *,
                shortcut: bool | None = None) -> torch.Tensor:
        """Predict.

        Parameters
        ----------
        x : (B, L, in_channels) float
            Channels-last one-hot (+ extra channels), zero-padded at the 3' end.
            ``L >= min_seq_length(kernel_size, num_layers)``.
        lengths : (B,) int64, optional
            Real lengths. Only used in eval mode, as a lower bound: the shortcut always also
            looks for trailing all-zero rows itself (see :meth:`effective_lengths`).
        shortcut : bool, optional
            Override ``self.eval_shortcut``. The shortcut is skipped when ``x`` requires grad
            (its gradient on padding rows needs the full computation).

        Returns
        -------
        (B, num_outputs)

        Notes
        -----
        Eval-mode shortcut (exact, within float rounding): without dropout or shift, every
        position whose receptive field is pure zero padding has the same activation at each
        layer, and so has every GRU step that sees no data. Each sample therefore gets only the
        shortest prefix that holds all its data-dependent GRU steps (its length plus the
        receptive-field overhang, ~256 rows for the defaults, rounded up to 64); the prefixes
        are packed back to back in the flat layout and the trunk runs once over them, so the
        cost follows the sum of the real lengths, not ``B * L``. The remaining GRU steps read
        one constant padding column (computed from a tiny all-zero input); with
        ``go_backwards`` they come first and are shared by the whole batch (run once, cached
        while the weights are unchanged). Lengths come from :meth:`effective_lengths` (trailing
        all-zero rows, or ``lengths`` where larger); batches that are (nearly) all full length
        take the plain path.
        """
        x = self._check_input(x)
        if x.shape[0] == 0:
            return x.new_zeros(0, self.num_outputs)
        use_shortcut = self.eval_shortcut if shortcut is None else shortcut
        # an input gradient must also cover the padding rows, which the shortcut never reads
        if x.requires_grad and torch.is_grad_enabled():
            use_shortcut = False
        if not self.training and use_shortcut:
            state = self._forward_shortcut(x, lengths)
            if state is not None:
                return self._head(state)
        return self._head(self._gru(self._full_trunk(x)))

    def _draw_shift(self) -> int:
        """basenji ``StochasticShift(augment_shift, symmetric=False)``: one shift for the whole
        batch, uniform on ``0 .. augment_shift`` in training, 0 in eval."""
        if self.training and self.augment_shift > 0:
            return int(torch.randint(0, self.augment_shift + 1, ()).item())
        return 0

    def _full_trunk(self, x: torch.Tensor, record: dict | None = None) -> torch.Tensor:
        return self._trunk(x, record, shift=self._draw_shift())

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Full-length forward that also returns every intermediate activation (channels-last).

        Parameters
        ----------
        x : (B, L, in_channels)

        Returns
        -------
        dict
            ``conv0_out`` (B, L-K+1, F); ``block{i}_out`` (B, T_i, F) after each max-pool;
            ``gru_in`` (B, T, F); ``gru_state``, ``bn1_relu_out``, ``dense1_out``,
            ``penultimate`` (B, F); ``pred`` (B, num_outputs). Names as in the Keras fixture.
        """
        x = self._check_input(x)
        rec: dict[str, torch.Tensor] = {}
        seq = self._full_trunk(x, rec)
        rec["gru_in"] = seq
        rec["gru_state"] = self._gru(seq)
        rec["pred"] = self._head(rec["gru_state"], rec)
        return rec
