"""EIR's locally connected network ("genome-local-net", array ``lcl`` model) in plain torch.

Reimplements ``eir.models.input.array.models_locally_connected.LCLModel`` of **eir-dl 0.25.0**
(with the layers of ``eir.models.layers.lcl_layers``) so that EIR weights load unchanged:
every parameter has the same name and shape as in EIR's ``state_dict`` (``fc_0.weight``,
``norm_0.weight``, ``lcl_blocks.<i>.fc_1.weight``, ``lcl_blocks.<i>.attention.in_proj_weight``, ...).
Parity is tested against golden outputs of eir-dl 0.25.0 (``tests/test_lcl_model.py``).

Architecture (eval-mode math; ``F`` = flattened input width)::

    x (B, L, C) -> flatten (B, F) -> fc_0 (LCL) -> norm_0 (RMSNorm) -> lcl_blocks[0] -> ... -> (B, F_out)

* LCL: the input is right-padded with zeros to ``num_chunks * kernel_size``, cut into
  ``num_chunks`` consecutive chunks, and every chunk has its own ``out_feature_sets`` weight
  vectors; the output is set-major (``y[b, o * num_chunks + h]``).
* Residual block: ``RMSNorm -> LCL -> GELU -> Dropout -> LCL -> LayerScale -> StochasticDepth``
  plus an identity path (the normed input, through a ``out_feature_sets=1`` LCL when the width changes).
* Attention block (automatic layer setup with ``attention_inclusion_cutoff`` only): the features
  are viewed as ``(F // E)`` tokens of ``E = out_feature_sets`` dims, get a learned positional
  embedding, RMSNorm, multi-head self-attention with ``E`` heads and a residual, then LayerScale
  and a residual onto the block input.

Deliberate differences from EIR 0.25.0, all for configurations EIR cannot run or silently misbuilds:

* ``patch_size`` / ``kernel_width="patch"`` and ``cutoff="auto"`` (EIR's array-*output* option) are
  rejected with ``ValueError``.
* ``num_lcl_chunks``: EIR's ``LCLModel`` ignores it (only its ``SimpleLCLModel`` reads it) and
  crashes when ``kernel_width`` is ``None``. Here, with an integer ``kernel_width`` it is ignored
  exactly like EIR (parity); with ``kernel_width=None`` it sets ``fc_0`` to that many chunks
  (kernel ``ceil(F / num_lcl_chunks)``) and that kernel becomes the blocks' base kernel width.
* A kernel that would come out below 1 (EIR silently falls back to 10 chunks) and an automatic
  setup that would never reach ``cutoff`` (EIR loops forever) raise ``ValueError``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from .layers import LCL, LCLAttentionBlock, LCLResidualBlock

__all__ = ["LCL_MODEL_DEFAULTS", "LCL_HEAD_DEFAULTS", "LCLModel", "LCLPredictor", "flatten_channels_last"]

#: ``LCLModelConfig`` fields of eir-dl 0.25.0 with their defaults (the biolm ``model:`` keys),
#: plus biolm's ``flatten_order`` (how a ``(B, L, C)`` tensor becomes the flat LCL input).
LCL_MODEL_DEFAULTS: dict[str, Any] = {
    "patch_size": None,
    "layers": None,
    "kernel_width": 12,
    "first_kernel_expansion": -2,
    "channel_exp_base": 2,
    "first_channel_expansion": 1,
    "num_lcl_chunks": None,
    "rb_do": 0.1,
    "stochastic_depth_p": 0.0,
    "l1": 0.0,
    "cutoff": 1024,
    "direction": "down",
    "attention_inclusion_cutoff": None,
    "flatten_order": "position_major",
}

#: Defaults of the prediction head that :class:`LCLPredictor` puts on top of :class:`LCLModel`.
LCL_HEAD_DEFAULTS: dict[str, Any] = {
    "head_hidden": 256,
    "head_dropout": 0.1,
}

FlattenOrder = Literal["position_major", "channel_major"]


# --------------------------------------------------------------------------------------------

FlattenOrder = Literal["position_major", "channel_major"]


# --------------------------------------------------------------------------------------------
# Automatic / explicit layer setup (EIR 0.25.0 block factories)
# --------------------------------------------------------------------------------------------


def _expand(base: int, expansion: int) -> int:
    """EIR's ``calc_value_after_expansion``: multiply by a positive, floor-divide by a negative factor."""
    if expansion > 0:
        return base * expansion
    if expansion < 0:
        return max(0, base // abs(expansion))
    return base


def _adjust_sets_and_kernel(sets: int, kernel: int, direction: str) -> tuple[int, int]:
    # "down" widens the kernel past the number of sets so every block shrinks the width
    # (out ~ in * sets / kernel**2); "up" grows the sets past the kernel so it widens.
    if direction == "down":
        while sets >= kernel:
            kernel *= 2
    else:
        while sets <= kernel:
            sets *= 2
    return sets, kernel


def _attention_applies(block: LCLResidualBlock, cutoff: int | None) -> bool:
    return cutoff is not None and block.out_features // block.out_feature_sets <= cutoff


def _build_blocks(
    in_features: int,
    kernel_width: int,
    channel_exp_base: int,
    rb_do: float,
    stochastic_depth_p: float,
    cutoff: int,
    direction: str,
    attention_inclusion_cutoff: int | None,
    layers: Sequence[int] | None,
) -> nn.Sequential:
    # Like EIR, block 0 keeps the base kernel, gets no stochastic depth and is the only one
    # with full pre-activation.
    first = LCLResidualBlock(
        in_features,
        2**channel_exp_base,
        kernel_width,
        dropout_p=rb_do,
        full_preactivation=True,
    )
    blocks: list[nn.Module] = [first]

    def residual(in_f: int, level: int) -> LCLResidualBlock:
        sets, kernel = _adjust_sets_and_kernel(2 ** (channel_exp_base + level), kernel_width, direction)
        return LCLResidualBlock(in_f, sets, kernel, dropout_p=rb_do, stochastic_depth_p=stochastic_depth_p)

    if layers:
        # Explicit spec: EIR's spec factory never adds attention and ignores cutoff.
        counts = list(layers)
        counts[0] -= 1
        for level, count in enumerate(counts):
            for _ in range(count):
                blocks.append(residual(blocks[-1].out_features, level))
        return nn.Sequential(*blocks)

    if _attention_applies(first, attention_inclusion_cutoff):
        blocks.append(LCLAttentionBlock(first.out_feature_sets, first.out_features))
    while True:
        size = blocks[-1].out_features
        if (size <= cutoff) if direction == "down" else (size >= cutoff):
            break
        # Attention blocks count towards the level, as in EIR.
        block = residual(size, len(blocks) // 2)
        shrinking = block.out_features < size if direction == "down" else block.out_features > size
        if not shrinking:
            raise ValueError(
                f"automatic LCL setup cannot reach cutoff={cutoff} (direction={direction!r}): "
                f"a block maps {size} -> {block.out_features} features; raise 'cutoff' or set 'layers'"
            )
        blocks.append(block)
        if _attention_applies(block, attention_inclusion_cutoff):
            blocks.append(LCLAttentionBlock(block.out_feature_sets, block.out_features))
    return nn.Sequential(*blocks)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def flatten_channels_last(x: torch.Tensor, order: FlattenOrder = "position_major") -> torch.Tensor:
    """Flatten a channels-last batch into the flat LCL input.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, L, C)``, e.g. a one-hot sequence with ``C`` channels.
    order : {"position_major", "channel_major"}
        ``"position_major"``: ``flat[b, j * C + c] = x[b, j, c]`` — the ``C`` channels of position 0,
        then position 1, ... This is EIR's genome-local-net flattening (``flatten_h_w_fortran`` of its
        ``(B, 1, C, L)`` one-hot), so each LCL chunk sees whole positions.
        ``"channel_major"``: ``flat[b, c * L + j] = x[b, j, c]`` — row-major ``torch.flatten`` of the
        ``(B, C, L)`` array, as EIR's generic array ``lcl`` path does.

    Returns
    -------
    torch.Tensor
        ``(B, L * C)``.
    """
    if order == "position_major":
        return x.reshape(x.shape[0], -1)
    if order == "channel_major":
        return x.transpose(1, 2).reshape(x.shape[0], -1)
    raise ValueError(f"flatten_order must be 'position_major' or 'channel_major', got {order!r}")


class LCLModel(nn.Module):
    """EIR 0.25.0 locally connected feature extractor (``LCLModel``): ``fc_0 -> norm_0 -> lcl_blocks``.

    Parameters
    ----------
    seq_len : int
        Fixed input length ``L`` (the block size).
    n_channels : int
        Channels ``C`` per position (e.g. 4 for one-hot DNA); the flat width is ``F = L * C``.
    patch_size : None
        Only ``None`` is supported.
    layers : list of int, optional
        Explicit blocks per level (level ``i`` has ``2**(channel_exp_base + i)`` sets); ``None``
        builds blocks automatically until the width is ``<= cutoff``.
    kernel_width : int, optional
        Base kernel (flattened elements; 12 = 3 one-hot positions). ``None`` requires ``num_lcl_chunks``.
    first_kernel_expansion, first_channel_expansion : int
        ``fc_0`` kernel / number of sets relative to the base (positive multiplies, negative
        floor-divides).
    channel_exp_base : int
        Blocks use ``2**channel_exp_base`` weight sets at level 0.
    num_lcl_chunks : int, optional
        See the module docstring (ignored when ``kernel_width`` is an int, as in EIR).
    rb_do, stochastic_depth_p : float
        Dropout inside residual blocks; residual-branch drop probability (not in block 0, as in EIR).
    l1 : float
        L1 coefficient on ``fc_0.weight``; see :meth:`l1_penalty`.
    cutoff : int
        Automatic setup stops adding blocks once the width is ``<= cutoff`` (``>=`` for ``"up"``).
    direction : {"down", "up"}
        Whether automatic blocks shrink or grow the representation.
    attention_inclusion_cutoff : int, optional
        Automatic setup only: add an attention block after any residual block whose
        ``out_features // out_feature_sets <= attention_inclusion_cutoff``.
    flatten_order : {"position_major", "channel_major"}
        How :meth:`forward` flattens ``(B, L, C)``; see :func:`flatten_channels_last`.

    Shapes
    ------
    :meth:`forward`: ``(B, L, C)`` (or already flat ``(B, L * C)``) -> ``(B, num_out_features)``.
    :meth:`forward_flat`: ``(B, L * C)`` in EIR's flat layout -> ``(B, num_out_features)``.
    """

    def __init__(
        self,
        seq_len: int,
        n_channels: int,
        *,
        patch_size: Any = None,
        layers: Sequence[int] | None = None,
        kernel_width: int | None = 12,
        first_kernel_expansion: int = -2,
        channel_exp_base: int = 2,
        first_channel_expansion: int = 1,
        num_lcl_chunks: int | None = None,
        rb_do: float = 0.1,
        stochastic_depth_p: float = 0.0,
        l1: float = 0.0,
        cutoff: int = 1024,
        direction: Literal["down", "up"] = "down",
        attention_inclusion_cutoff: int | None = None,
        flatten_order: FlattenOrder = "position_major",
    ) -> None:
        super().__init__()
        if patch_size is not None or kernel_width == "patch":
            raise ValueError("patch_size / kernel_width='patch' is not supported: leave patch_size unset")
        if not isinstance(cutoff, int) or isinstance(cutoff, bool):
            raise ValueError(f"cutoff must be an integer ('auto' is EIR's array-output option), got {cutoff!r}")
        if direction not in ("down", "up"):
            raise ValueError(f"direction must be 'down' or 'up', got {direction!r}")
        if flatten_order not in ("position_major", "channel_major"):
            raise ValueError(f"flatten_order must be 'position_major' or 'channel_major', got {flatten_order!r}")
        if layers is not None:
            layers = [int(n) for n in layers]
            if layers and (layers[0] < 1 or any(n < 0 for n in layers)):
                raise ValueError(f"layers must start with a count >= 1 and hold no negative counts, got {layers}")
        if not 0.0 <= rb_do < 1.0:
            raise ValueError(f"rb_do must be in [0, 1), got {rb_do}")
        if l1 < 0:
            raise ValueError(f"l1 must be >= 0, got {l1}")
        if seq_len < 1 or n_channels < 1:
            raise ValueError(f"seq_len and n_channels must be >= 1, got {seq_len}, {n_channels}")

        self.seq_len = seq_len
        self.n_channels = n_channels
        self.in_features = seq_len * n_channels
        self.flatten_order = flatten_order
        self.l1 = float(l1)

        fc_0_sets = _expand(2**channel_exp_base, first_channel_expansion)
        if fc_0_sets < 1:
            raise ValueError(
                f"first_channel_expansion={first_channel_expansion} leaves fc_0 with {fc_0_sets} weight sets"
            )
        if kernel_width is None:
            if num_lcl_chunks is None:
                raise ValueError("kernel_width=None requires num_lcl_chunks")
            self.fc_0 = LCL(self.in_features, fc_0_sets, num_chunks=num_lcl_chunks)
            kernel_width = self.fc_0.kernel_size
        else:
            if num_lcl_chunks is not None:
                warnings.warn(
                    "num_lcl_chunks is ignored when kernel_width is set (as in EIR 0.25.0)", stacklevel=2
                )
            fc_0_kernel = _expand(kernel_width, first_kernel_expansion)
            if fc_0_kernel < 1:
                raise ValueError(
                    f"kernel_width={kernel_width} with first_kernel_expansion={first_kernel_expansion} "
                    f"gives fc_0 a kernel of {fc_0_kernel}"
                )
            self.fc_0 = LCL(self.in_features, fc_0_sets, kernel_size=fc_0_kernel)
        if kernel_width < 1:
            raise ValueError(f"kernel_width must be >= 1, got {kernel_width}")
        self.kernel_width = kernel_width
        self.norm_0 = nn.RMSNorm(self.fc_0.out_features)
        self.lcl_blocks = _build_blocks(
            in_features=self.fc_0.out_features,
            kernel_width=kernel_width,
            channel_exp_base=channel_exp_base,
            rb_do=rb_do,
            stochastic_depth_p=stochastic_depth_p,
            cutoff=cutoff,
            direction=direction,
            attention_inclusion_cutoff=attention_inclusion_cutoff,
            layers=layers,
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, seq_len: int, n_channels: int) -> "LCLModel":
        """Build from a ``model:`` mapping with the keys of :data:`LCL_MODEL_DEFAULTS`.

        Unknown keys raise ``ValueError`` (naming them); missing keys take the defaults.
        """
        config = dict(config or {})
        unknown = sorted(set(config) - set(LCL_MODEL_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown LCL model key(s): {', '.join(unknown)}")
        return cls(seq_len, n_channels, **{**LCL_MODEL_DEFAULTS, **config})

    @property
    def num_out_features(self) -> int:
        """Width of the output representation."""
        return int(self.lcl_blocks[-1].out_features)

    @property
    def l1_penalized_weights(self) -> torch.Tensor:
        """The weights the L1 term applies to (``fc_0.weight``, as in EIR)."""
        return self.fc_0.weight

    def l1_penalty(self) -> torch.Tensor:
        """``l1 * sum(|fc_0.weight|)``, a scalar to add to the training loss (0 when ``l1 == 0``)."""
        if self.l1 == 0.0:
            return self.fc_0.weight.new_zeros(())
        return self.l1 * self.fc_0.weight.abs().sum()

    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, C) -> (B, L * C)`` in this model's ``flatten_order``."""
        if x.ndim != 3 or x.shape[1:] != (self.seq_len, self.n_channels):
            raise ValueError(
                f"expected input of shape (B, {self.seq_len}, {self.n_channels}), got {tuple(x.shape)}"
            )
        return flatten_channels_last(x, self.flatten_order)

    def forward_flat(self, x: torch.Tensor) -> torch.Tensor:
        """Run on an already flattened input (EIR's own input layout).

        Parameters
        ----------
        x : torch.Tensor
            ``(B, F)`` with ``F = seq_len * n_channels``; for one-hot genotypes in EIR's
            genome-local-net layout, ``x[b, C * j + c] = onehot[b, c, j]``.

        Returns
        -------
        torch.Tensor
            ``(B, num_out_features)``.
        """
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected flat input of shape (B, {self.in_features}), got {tuple(x.shape)}")
        return self.lcl_blocks(self.norm_0(self.fc_0(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run on a channels-last batch.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, seq_len, n_channels)`` float, flattened per ``flatten_order``; a 2-D
            ``(B, seq_len * n_channels)`` tensor is taken as already flat.

        Returns
        -------
        torch.Tensor
            ``(B, num_out_features)``.
        """
        if x.ndim == 2:
            return self.forward_flat(x)
        return self.forward_flat(self.flatten(x))


class LCLPredictor(nn.Module):
    """:class:`LCLModel` followed by a small regression/classification head.

    EIR feeds the extractor's output into a fusion module and an output MLP; biolm has a single
    input, so the head is just ``LayerNorm -> Linear(hidden) -> GELU -> Dropout -> Linear(num_outputs)``.
    The LayerNorm matters: the extractor ends on a residual sum whose scale is set by its
    (1e-5-initialised) LayerScales and identity LCLs, not by a normalisation.
    Only the extractor (``self.body``) has EIR parity; the head is biolm's own.

    Parameters
    ----------
    seq_len, n_channels : int
        Input shape ``(L, C)``.
    num_outputs : int
        Regression targets or classes (logits).
    head_hidden : int
        Hidden width of the head.
    head_dropout : float
        Dropout before the last Linear.
    input_normalization : nn.Module, optional
        Applied to the (B, L, C) input first (e.g. EIR's array normalization,
        :class:`~biolm.core.input_statistics.ArrayNormalization`, for ``.npy`` input); without
        one the state dict is exactly extractor + head.
    **model_kwargs
        :class:`LCLModel` keyword arguments.

    Shapes: input ``(B, L, C)`` (or flat ``(B, L * C)``); output ``(B, num_outputs)``.
    """

    def __init__(
        self,
        seq_len: int,
        n_channels: int,
        num_outputs: int,
        *,
        head_hidden: int = 256,
        head_dropout: float = 0.1,
        input_normalization: nn.Module | None = None,
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        self.input_norm = input_normalization
        if num_outputs < 1 or head_hidden < 1:
            raise ValueError(f"num_outputs and head_hidden must be >= 1, got {num_outputs}, {head_hidden}")
        self.body = LCLModel(seq_len, n_channels, **model_kwargs)
        width = self.body.num_out_features
        self.head = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, head_hidden),
            nn.GELU(),
            nn.Dropout(head_dropout),
            nn.Linear(head_hidden, num_outputs),
        )
        self.num_outputs = num_outputs

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any] | None, seq_len: int, n_channels: int, num_outputs: int
    ) -> "LCLPredictor":
        """Build from a ``model:`` mapping with keys of :data:`LCL_MODEL_DEFAULTS` and :data:`LCL_HEAD_DEFAULTS`."""
        config = dict(config or {})
        allowed = set(LCL_MODEL_DEFAULTS) | set(LCL_HEAD_DEFAULTS)
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ValueError(f"unknown LCL model key(s): {', '.join(unknown)}")
        merged = {**LCL_MODEL_DEFAULTS, **LCL_HEAD_DEFAULTS, **config}
        return cls(seq_len, n_channels, num_outputs, **merged)

    @property
    def num_out_features(self) -> int:
        """Width of the extractor's representation (input of the head)."""
        return self.body.num_out_features

    def l1_penalty(self) -> torch.Tensor:
        """L1 term of the extractor's first layer (``l1 * sum(|body.fc_0.weight|)``)."""
        return self.body.l1_penalty()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, C)`` -> ``(B, num_outputs)``."""
        if self.input_norm is not None:
            x = self.input_norm(x)
        return self.head(self.body(x))
