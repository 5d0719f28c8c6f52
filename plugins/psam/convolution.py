"""The PSAM convolution and the binding mode: PyProBound's ``Conv1d`` and ``Mode`` in plain torch.

Reimplements the scoring model of **PyProBound 1.5** (BussemakerLab/PyProBound,
``pyprobound.layers.PSAM``, ``pyprobound.layers.Conv1d``, ``pyprobound.Mode``); the head on the
log-affinities of one or more modes is in :mod:`.predictor`, the staged fit in :mod:`.fit_schedule`.
Parity with PyProBound's own outputs is tested in ``tests/test_psam_model.py`` against the
golden fixture ``tests/fixtures/psam`` (float64 to 1e-10, float32 to 1e-5).

Model (one binding mode ``a``, sequence ``S_i``, window start ``x``, strand channel ``s``)::

    windows[i, s, x] = omega_s(x) + bias + sum_phi beta_phi * 1_phi(S_i, x, s)      (PSAMConv1d)
    log_affinity[i]  = logsumexp_{s, x} ( exp(log_hill) * windows[i, s, x] )        (Mode)

* ``beta_phi``: monomer features (letter ``c`` at window position ``k``) and pairwise features
  (letters ``a`` at ``k`` and ``b`` at ``k + d`` for ``d = 1 .. pairwise_distance``).
* Reverse strand (``score_reverse``, default for complementable alphabets such as DNA): the
  reverse-strand channel scores the reverse complement of the same window, implemented as
  PyProBound does by appending the flipped filter (channel, letter and position axes flipped; the
  complement of letter ``c`` is ``A - 1 - c``, i.e. the alphabet read backwards).
* ``omega(x)``: position bias (``train_posbias``), indexed by the *forward-strand* window start
  for every channel in ``bias_mode="channel"``.
* Symmetry: positions with equal symmetry values share parameters, opposite signs are
  complementary (``[1, 2, -2, -1]`` is a reverse-complement palindrome).

The PSAM's parameters are in :mod:`.psam`, PyProBound's weight names in :mod:`.pyprobound_weights`.

Inputs and padding
------------------
Every layer accepts either

* a float tensor ``x`` of shape (B, L, A), one-hot over the alphabet (channels last, as the biolm
  engine provides it) with optional ``lengths`` (B,), or
* PyProBound's integer codes (B, L): letters ``0 .. A-1``, ``A`` = ``' '`` (padding, scores
  ``-inf``), ``A+1`` = ``'*'`` (uninformative, ``1/A`` per letter), ``A+2`` = ``'-'`` (all zero),
  then degenerate IUPAC codes (see :class:`Alphabet`).

Sequences are right-padded (PyProBound's ``CountTable`` convention). Position ``p`` of sequence
``b`` is padding if ``p >= lengths[b]`` or if its one-hot row is not finite (PyProBound pads one-hot
tensors with ``-inf``). Every window that touches a padding position scores ``-inf`` on all
channels and so adds ``exp(-inf) = 0`` to the mode's sum. Without ``lengths``, a float input's
length is the position after its last finite, non-zero row (trailing all-zero rows are padding);
a code input's length is the number of non-``' '`` codes (PyProBound's ``Layer.lengths``).
All-zero rows *inside* a sequence (``N`` or tokens outside the alphabet) are scored per
``unknown``: ``"mean"`` (default; PyProBound's ``'N'``/``'*'``: uniform ``1/A``, i.e. the
position-mean beta), ``"zero"`` (PyProBound's ``'-'``: contributes nothing) or ``"pad"`` (like
padding: windows over it score ``-inf``).

Differences from PyProBound 1.5, all outside what the fixture exercises:

* ``dilation`` is applied to the scoring (PyProBound 1.5 only uses it for output lengths).
* ``bias_mode="same"`` stores one bias row shared by every channel; ``"reverse"`` stores one row
  per forward channel and gives each reverse channel the forward row read backwards over the
  ``input_shape`` windows (the same physical offset from the opposite end of the block).
* ``out_channel_indexing`` and ``unfold`` are not implemented; of the greedy footprint updates the
  fit schedule uses recentring and one-position shifts (:mod:`.footprint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .psam import PSAM

__all__ = ["PSAMConv1d", "Mode"]


class PSAMConv1d(nn.Module):
    """Sliding-window PSAM scores with position bias (PyProBound ``layers.Conv1d``).

    Parameters
    ----------
    psam : PSAM
        The filter; available as ``layer_spec`` (PyProBound's attribute name).
    input_shape : int
        Padded input length ``L`` the position bias is built for (the engine's block size).
    min_input_length, max_input_length : int, optional
        Shortest / longest unpadded length; default ``psam.span`` and ``input_shape``. Only
        ``length_specific_bias`` uses them.
    train_posbias : bool, default False
        Train a bias ``omega(x)`` per window (and channel).
    bias_mode : {"channel", "same", "reverse"}, default "channel"
        One bias row per output channel, one row shared by all channels, or one row per forward
        channel that the reverse channel reads backwards (needs ``score_reverse``).
    bias_bin : int, default 1
        ``bias_bin`` consecutive windows share one bias value.
    length_specific_bias : bool, default True
        Separate bias rows for every input length in ``[min_input_length, max_input_length]``.
    one_hot : bool, default False
        Score by convolving the one-hot input (True) or by gathering betas with integer codes
        (False, PyProBound's dense path; float inputs that are not exactly one-hot fall back to
        convolution).
    normalize : bool, default False
        Mean-centre ``log_posbias`` over windows.
    unknown : {"mean", "zero", "pad"}, default "mean"
        Scoring of all-zero float rows inside a sequence (see the module docstring).

    Attributes
    ----------
    log_posbias : nn.Parameter
        (n_lengths, bias_channels, ceil(n_windows / bias_bin)), ``n_lengths`` = 1 unless
        ``length_specific_bias``; ``bias_channels`` = out_channels ("channel"), 1 ("same") or
        out_channels // 2 ("reverse").
    """

    def __init__(
        self,
        psam: PSAM,
        input_shape: int,
        min_input_length: int | None = None,
        max_input_length: int | None = None,
        train_posbias: bool = False,
        bias_mode: Literal["channel", "same", "reverse"] = "channel",
        bias_bin: int = 1,
        length_specific_bias: bool = True,
        one_hot: bool = False,
        normalize: bool = False,
        unknown: Literal["mean", "zero", "pad"] = "mean",
    ) -> None:
        super().__init__()
        self.layer_spec = psam
        min_input_length = psam.span if min_input_length is None else int(min_input_length)
        max_input_length = int(input_shape) if max_input_length is None else int(max_input_length)
        if min_input_length < psam.span:
            raise ValueError(f"min_input_length must be at least the kernel span ({psam.span})")
        if not min_input_length <= max_input_length <= input_shape:
            raise ValueError("need min_input_length <= max_input_length <= input_shape")
        if bias_mode not in ("channel", "same", "reverse"):
            raise ValueError(f"bias_mode must be channel, same or reverse, not {bias_mode!r}")
        if bias_mode == "reverse" and not psam.score_reverse:
            raise ValueError("bias_mode='reverse' needs a PSAM with score_reverse")
        if bias_bin < 1:
            raise ValueError("bias_bin must be positive")
        if unknown not in ("mean", "zero", "pad"):
            raise ValueError(f"unknown must be mean, zero or pad, not {unknown!r}")
        self.register_buffer("_input_shape", torch.tensor(int(input_shape)))
        self.register_buffer("_min_input_length", torch.tensor(min_input_length))
        self.register_buffer("_max_input_length", torch.tensor(max_input_length))
        self.train_posbias = train_posbias
        self.bias_mode = bias_mode
        self.bias_bin = bias_bin
        self.length_specific_bias = length_specific_bias
        self.one_hot = one_hot
        self.normalize = normalize
        self.unknown = unknown

        n_lengths = max_input_length - min_input_length + 1 if length_specific_bias else 1
        n_windows = -(-psam.out_len(int(input_shape)) // bias_bin)
        bias_channels = {"channel": psam.out_channels, "same": 1, "reverse": psam.out_channels // 2}[
            bias_mode
        ]
        self.log_posbias = nn.Parameter(
            torch.zeros(n_lengths, bias_channels, n_windows, dtype=psam.monomer.dtype),
            requires_grad=train_posbias,
        )

    def extra_repr(self) -> str:
        return (
            f"input_shape={self.input_shape}, train_posbias={self.train_posbias}, "
            f"bias_mode={self.bias_mode!r}, bias_bin={self.bias_bin}, "
            f"length_specific_bias={self.length_specific_bias}, one_hot={self.one_hot}"
        )

    @property
    def input_shape(self) -> int:
        return int(self._input_shape)

    @property
    def min_input_length(self) -> int:
        return int(self._min_input_length)

    @property
    def max_input_length(self) -> int:
        return int(self._max_input_length)

    @property
    def out_channels(self) -> int:
        return self.layer_spec.out_channels

    def out_len(self, length: int) -> int:
        return self.layer_spec.out_len(length)

    def get_log_posbias(self) -> Tensor:
        """Position bias per length row, channel and window.

        Returns
        -------
        Tensor
            (n_lengths, out_channels, out_len(input_shape)); row ``r`` is for unpadded length
            ``min_input_length + r`` when ``length_specific_bias``.
        """
        bias = self.log_posbias
        if self.normalize:
            bias = bias - bias.mean(dim=-1, keepdim=True)
        bias = bias.repeat_interleave(self.bias_bin, -1)[..., : self.out_len(self.input_shape)]
        if self.bias_mode == "same":
            bias = bias.expand(-1, self.out_channels, -1)
        elif self.bias_mode == "reverse":
            bias = torch.cat((bias, bias.flip(-2, -1)), dim=-2)
        return bias

    def _posbias_in_use(self) -> bool:
        return self.log_posbias.requires_grad or bool(torch.any(self.log_posbias != 0))

    # ---------------------------------------------------------------- input normalisation
    def _prepare(self, x: Tensor, lengths: Tensor | None) -> tuple[str, Tensor, Tensor, Tensor | None]:
        """Return ("codes", codes, lengths, None) or ("onehot", x (B, L, A) with padding rows 0,
        lengths, padding (B, L) bool)."""
        alphabet = self.layer_spec.alphabet
        n = len(alphabet)
        if x.dim() == 2:
            if x.is_floating_point():
                raise ValueError("2-D input must be integer codes (B, L)")
            codes = x.long()
            if lengths is None:
                lengths = (codes != alphabet.pad_code).sum(1)
            else:
                lengths = lengths.to(codes.device).long()
                beyond = torch.arange(codes.shape[1], device=codes.device) >= lengths[:, None]
                codes = codes.masked_fill(beyond, alphabet.pad_code)
            if self.one_hot or bool((codes > alphabet.zero_code).any()) or bool((codes < 0).any()):
                if bool((codes < 0).any()) or bool((codes >= len(alphabet.embedding_table)).any()):
                    raise ValueError("integer codes out of range for the alphabet")
                pad = codes == alphabet.pad_code
                return "onehot", alphabet.embed(codes, self.layer_spec.monomer.dtype).masked_fill(pad[..., None], 0.0), lengths, pad
            return "codes", codes, lengths, None
        if x.dim() != 3 or x.shape[-1] != n:
            raise ValueError(f"expected one-hot input (B, L, {n}) or codes (B, L), got {tuple(x.shape)}")
        x = x.to(self.layer_spec.monomer.dtype)
        finite = torch.isfinite(x).all(-1)
        nonzero = (x != 0).any(-1) & finite
        positions = torch.arange(x.shape[1], device=x.device)
        if lengths is None:
            # Right padding: everything after the last finite, non-zero row.
            lengths = torch.where(nonzero, positions + 1, 0).amax(1) if x.shape[1] else nonzero.sum(1)
        else:
            lengths = lengths.to(x.device).long()
        pad = ~finite | (positions >= lengths[:, None])
        empty = ~nonzero & ~pad
        if self.unknown == "pad":
            pad = pad | empty
        if not self.one_hot:
            x0 = x.masked_fill(pad[..., None], 0.0)
            if bool(((x0 == 0) | (x0 == 1)).all()) and bool((x0.sum(-1) <= 1).all()):
                codes = x0.argmax(-1)
                codes = codes.masked_fill(
                    empty, alphabet.any_code if self.unknown == "mean" else alphabet.zero_code
                )
                return "codes", codes.masked_fill(pad, alphabet.pad_code), lengths, None
        x = x.masked_fill(pad[..., None], 0.0)
        if self.unknown == "mean" and bool(empty.any()):
            x = torch.where(empty[..., None], torch.full_like(x, 1.0 / n), x)
        return "onehot", x, lengths, pad

    # ---------------------------------------------------------------- scoring
    def _windows(self, seq: Tensor) -> Tensor:
        """(B, L) -> (B, W, K) window taps (dilation aware)."""
        psam = self.layer_spec
        return seq.unfold(1, psam.span, 1)[..., :: psam.dilation]

    def score_dense(self, codes: Tensor) -> Tensor:
        """Window scores by gathering betas with integer codes (no bias terms).

        Parameters
        ----------
        codes : Tensor
            int64 (B, L); letters, ``' '``, ``'*'`` and ``'-'`` only.

        Returns
        -------
        Tensor
            (B, out_channels, L - span + 1); ``-inf`` for windows touching padding.
        """
        psam = self.layer_spec
        matrix = psam.get_filter(0)  # (C, A, K)
        channels, _, k = matrix.shape
        # Extra rows for the reserved codes: ' ' -> -inf, '*' -> position mean, '-' -> 0.
        table = torch.cat(
            (
                matrix,
                torch.full_like(matrix[:, :1], float("-inf")),
                matrix.mean(1, keepdim=True),
                torch.zeros_like(matrix[:, :1]),
            ),
            dim=1,
        )
        taps = self._windows(codes)  # (B, W, K)
        out = table.permute(2, 1, 0)[torch.arange(k, device=codes.device), taps].sum(2)  # (B, W, C)
        n_codes = table.shape[1]
        for dist in range(1, psam.pairwise_distance + 1):
            pair = psam.get_filter(dist)  # (C, A, A, K-d)
            if not pair.requires_grad and not bool(torch.any(pair != 0)):
                continue
            pair = F.pad(pair, (0, 0, 0, 1, 0, 1), value=float("-inf"))
            pair = torch.cat((pair, pair[:, :-1].mean(1, keepdim=True)), dim=1)
            pair = torch.cat((pair, pair[:, :, :-1].mean(2, keepdim=True)), dim=2)
            pair = F.pad(pair, (0, 0, 0, 1, 0, 1))  # (C, A+3, A+3, K-d)
            flat = pair.flatten(1, 2).permute(2, 1, 0)  # (K-d, (A+3)^2, C)
            idx = taps[..., :-dist] * n_codes + taps[..., dist:]
            out = out + flat[torch.arange(k - dist, device=codes.device), idx].sum(2)
        return out.transpose(1, 2)

    def score_onehot(self, x: Tensor, pad: Tensor | None = None) -> Tensor:
        """Window scores by convolving a one-hot input (no bias terms).

        Parameters
        ----------
        x : Tensor
            (B, L, A) float; non-finite rows are padding.
        pad : Tensor, optional
            (B, L) bool padding rows, when known (their rows of ``x`` must then be 0).

        Returns
        -------
        Tensor
            (B, out_channels, L - span + 1); ``-inf`` for windows touching padding.
        """
        psam = self.layer_spec
        if pad is None:
            pad = ~torch.isfinite(x).all(-1)  # (B, L)
            x0 = x.masked_fill(pad[..., None], 0.0)
        else:
            x0 = x
        out = F.conv1d(x0.transpose(1, 2), psam.get_filter(0), dilation=psam.dilation)
        for dist in range(1, psam.pairwise_distance + 1):
            pair = psam.get_filter(dist)
            if not pair.requires_grad and not bool(torch.any(pair != 0)):
                continue
            pairs = (x0[:, :-dist, :, None] * x0[:, dist:, None, :]).flatten(2)  # (B, L-d, A*A)
            out = out + F.conv1d(pairs.transpose(1, 2), pair.flatten(1, 2))
        invalid = self._windows(pad).any(-1)  # (B, W)
        return out.masked_fill(invalid[:, None, :], float("-inf"))

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Log score of every window, ``omega(x) + bias + sum_phi beta_phi 1_phi``.

        Parameters
        ----------
        x : Tensor
            One-hot (B, L, A) float or codes (B, L) int64; see the module docstring.
        lengths : Tensor, optional
            (B,) unpadded lengths.

        Returns
        -------
        Tensor
            (B, out_channels, L - span + 1).
        """
        kind, data, lengths, pad = self._prepare(x, lengths)
        if data.shape[1] < self.layer_spec.span:
            raise ValueError(
                f"input length {data.shape[1]} is shorter than the kernel span {self.layer_spec.span}"
            )
        out = self.score_dense(data) if kind == "codes" else self.score_onehot(data, pad)
        if self._posbias_in_use():
            n_windows = out.shape[-1]
            if data.shape[1] > self.input_shape:
                raise ValueError(f"input length {data.shape[1]} exceeds input_shape={self.input_shape}")
            posbias = self.get_log_posbias()[..., :n_windows]
            if self.length_specific_bias:
                row = lengths - self.min_input_length
                if bool((row < 0).any()) or bool((row >= posbias.shape[0]).any()):
                    raise ValueError(
                        f"sequence lengths must lie in [{self.min_input_length}, {self.max_input_length}]"
                        " for a length-specific position bias"
                    )
                posbias = posbias[row]
            out = out + posbias
        return out + self.layer_spec.get_bias()


# --------------------------------------------------------------------------- Mode
class Mode(nn.Module):
    """Binding mode: log-sum-exp of window scores over strands and windows (PyProBound ``Mode``).

    Parameters
    ----------
    layers : PSAMConv1d or sequence of one PSAMConv1d
        The scoring layer, stored as ``layers[0]`` (PyProBound's naming).
    train_hill : bool, default False
        Train the Hill coefficient ``exp(log_hill)`` scaling the window scores.
    """

    def __init__(self, layers: PSAMConv1d | Sequence[PSAMConv1d], train_hill: bool = False) -> None:
        super().__init__()
        layers = [layers] if isinstance(layers, PSAMConv1d) else list(layers)
        if len(layers) != 1:
            raise ValueError("Mode takes exactly one PSAMConv1d layer")
        self.layers = nn.ModuleList(layers)
        self.train_hill = train_hill
        dtype = layers[0].layer_spec.monomer.dtype
        self.log_hill = nn.Parameter(torch.tensor(0.0, dtype=dtype), requires_grad=train_hill)

    @classmethod
    def from_psam(cls, psam: PSAM, input_shape: int, train_hill: bool = False, **conv_kwargs: Any) -> Mode:
        """Build ``Mode([PSAMConv1d(psam, input_shape, **conv_kwargs)])``."""
        return cls([PSAMConv1d(psam, input_shape, **conv_kwargs)], train_hill=train_hill)

    @property
    def psam(self) -> PSAM:
        return self.layers[0].layer_spec

    def score_windows(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Window log scores (B, out_channels, n_windows), see :meth:`PSAMConv1d.forward`."""
        return self.layers[0](x, lengths)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Log affinity of each sequence.

        Parameters
        ----------
        x : Tensor
            One-hot (B, L, A) or codes (B, L).
        lengths : Tensor, optional
            (B,) unpadded lengths.

        Returns
        -------
        Tensor
            (B,) ``logsumexp`` over channels and windows of ``exp(log_hill) * windows``;
            ``-inf`` for a sequence without any complete window.
        """
        windows = self.score_windows(x, lengths)
        finite = torch.isfinite(windows)
        # -inf windows are kept out of every differentiable op: exp(h) * -inf and an all -inf
        # logsumexp would both give NaN gradients.
        windows = torch.exp(self.log_hill) * torch.where(finite, windows, torch.zeros_like(windows))
        windows = windows.masked_fill(~finite, float("-inf"))
        has_window = finite.flatten(1).any(1)
        safe = torch.where(has_window[:, None, None], windows, torch.zeros_like(windows))
        out = safe.logsumexp((1, 2))
        return torch.where(has_window, out, torch.full_like(out, float("-inf")))
