"""The layers of EIR's locally connected network (``eir.models.layers.lcl_layers``, eir-dl 0.25.0).

Parameter names and shapes are EIR's, so EIR weights load unchanged (:mod:`.eir_weights`); the
network built from them is in :mod:`.network`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LCL", "LayerScale", "StochasticDepth", "PositionalEmbedding", "LCLResidualBlock", "LCLAttentionBlock"]


class LCL(nn.Module):
    """Locally connected layer: one set of weights per input chunk (EIR's ``LCL``).

    Exactly one of ``kernel_size`` and ``num_chunks`` is given; the other follows as
    ``num_chunks = ceil(in_features / kernel_size)`` or ``kernel_size = ceil(in_features / num_chunks)``.
    The input is right-padded with ``padding = num_chunks * kernel_size - in_features`` zeros.

    Parameters
    ----------
    in_features : int
        Width ``F_in`` of the flat input.
    out_feature_sets : int
        Number ``O`` of weight vectors per chunk (the "channels").
    kernel_size, num_chunks : int, optional
        Chunk width ``K`` or number of chunks ``C``.
    bias : bool
        Add a bias of shape ``(O * C,)``.

    Shapes
    ------
    weight : ``(O, C, K)``; input ``(B, F_in)``; output ``(B, O * C)``, set-major
    (``y[b, o * C + h] = sum_k x_padded[b, h * K + k] * weight[o, h, k] + bias[o * C + h]``).
    """

    def __init__(
        self,
        in_features: int,
        out_feature_sets: int,
        kernel_size: int | None = None,
        num_chunks: int | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if (kernel_size is None) == (num_chunks is None):
            raise ValueError("LCL needs exactly one of kernel_size and num_chunks")
        if in_features < 1 or out_feature_sets < 1:
            raise ValueError(
                f"LCL needs in_features >= 1 and out_feature_sets >= 1, got {in_features}, {out_feature_sets}"
            )
        if kernel_size is not None:
            if kernel_size < 1:
                raise ValueError(f"LCL kernel_size must be >= 1, got {kernel_size}")
            num_chunks = math.ceil(in_features / kernel_size)
        else:
            assert num_chunks is not None
            if num_chunks < 1:
                raise ValueError(f"LCL num_chunks must be >= 1, got {num_chunks}")
            kernel_size = math.ceil(in_features / num_chunks)
        self.in_features = in_features
        self.out_feature_sets = out_feature_sets
        self.kernel_size = kernel_size
        self.num_chunks = num_chunks
        self.padding = num_chunks * kernel_size - in_features
        self.out_features = out_feature_sets * num_chunks
        self.weight = nn.Parameter(torch.empty(out_feature_sets, num_chunks, kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # EIR's init: torch's fan-in for a 3-D tensor is C * K (not K), so the weights start
        # small; EIR notes this trains better than a per-chunk fan-in.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        # Same text as EIR's repr, so structures can be compared line by line.
        return (
            f"in_features={self.in_features}, num_chunks={self.num_chunks}, "
            f"kernel_size={self.kernel_size}, out_feature_sets={self.out_feature_sets}, "
            f"out_features={self.out_features}, bias={self.bias is not None}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, in_features)``.

        Returns
        -------
        torch.Tensor
            ``(B, out_features)``, set-major.
        """
        if self.padding:
            x = F.pad(x, (0, self.padding))
        chunks = x.reshape(x.shape[0], self.num_chunks, self.kernel_size)
        out = torch.einsum("bck,ock->boc", chunks, self.weight).flatten(1)
        if self.bias is not None:
            out = out + self.bias
        return out


class LayerScale(nn.Module):
    """Per-feature learned scale ``y = x * gamma`` (EIR 0.25.0 initialises ``gamma`` to 1e-5).

    Shapes: ``gamma`` ``(dim,)``; input/output ``(..., dim)``.
    """

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, init_values={self.init_values}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class StochasticDepth(nn.Module):
    """Drop the whole residual branch for the whole batch with probability ``p`` (torchvision's
    ``StochasticDepth(p, mode="batch")``), rescaling survivors by ``1 / (1 - p)``; identity in eval.

    Shapes: input/output any shape.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"stochastic_depth_p must be in [0, 1], got {p}")
        self.p = p

    def extra_repr(self) -> str:
        return f"p={self.p}, mode=batch"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        keep = torch.empty((1,) * x.ndim, dtype=x.dtype, device=x.device).bernoulli_(survival)
        if survival > 0.0:
            keep = keep / survival
        return x * keep


class PositionalEmbedding(nn.Module):
    """Learned absolute positional embedding added to a token sequence (EIR: zero-initialised).

    Shapes: ``embedding`` ``(1, max_length, E)``; input/output ``(B, L, E)`` with ``L <= max_length``.
    """

    def __init__(self, embedding_dim: int, max_length: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(1, max_length, embedding_dim))
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.embedding[:, : x.shape[1], :])


class LCLResidualBlock(nn.Module):
    """Pre-activation residual block of two LCLs (EIR 0.25.0 ``LCLResidualBlock``).

    ``y = StochasticDepth(LayerScale(fc_2(Dropout(GELU(fc_1(RMSNorm(x))))))) + identity`` where the
    identity is ``RMSNorm(x)`` if ``full_preactivation`` or the width changes, else the raw ``x``,
    and goes through ``downsample_identity = LCL(in_features, 1, num_chunks=out_features)`` when the
    width changes.

    Parameters
    ----------
    in_features : int
        Input width.
    out_feature_sets : int
        Weight sets of ``fc_1`` and ``fc_2``.
    kernel_size : int
        Kernel of ``fc_1`` and ``fc_2`` (``reduce_both``: both layers shrink the width).
    dropout_p, stochastic_depth_p : float
        Dropout between the LCLs; probability of dropping the residual branch.
    full_preactivation : bool
        Take the identity from the normed input even when the width is unchanged
        (EIR sets it for the first block only).

    Shapes: input ``(B, in_features)``; output ``(B, out_features)``,
    ``out_features = O * ceil(ceil(in_features / K) * O / K)``.
    """

    def __init__(
        self,
        in_features: int,
        out_feature_sets: int,
        kernel_size: int,
        dropout_p: float = 0.0,
        stochastic_depth_p: float = 0.0,
        full_preactivation: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_feature_sets = out_feature_sets
        self.kernel_size = kernel_size
        self.full_preactivation = full_preactivation

        self.norm_1 = nn.RMSNorm(in_features)
        self.fc_1 = LCL(in_features, out_feature_sets, kernel_size=kernel_size)
        self.act_1 = nn.GELU()
        self.do = nn.Dropout(p=dropout_p)
        self.fc_2 = LCL(self.fc_1.out_features, out_feature_sets, kernel_size=kernel_size)
        self.out_features = self.fc_2.out_features
        self.ls = LayerScale(self.out_features)
        self.downsample_identity: nn.Module
        if in_features == self.out_features:
            self.downsample_identity = nn.Identity()
        else:
            self.downsample_identity = LCL(in_features, 1, num_chunks=self.out_features)
        self.stochastic_depth = StochasticDepth(stochastic_depth_p)
        # The normed input feeds the identity whenever it has to be resampled anyway.
        self._identity_from_normed = full_preactivation or in_features != self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_features) -> (B, out_features)``."""
        normed = self.norm_1(x)
        identity = self.downsample_identity(normed if self._identity_from_normed else x)
        out = self.fc_2(self.do(self.act_1(self.fc_1(normed))))
        out = self.stochastic_depth(self.ls(out))
        return out + identity


class LCLAttentionBlock(nn.Module):
    """Self-attention over the feature sets of the preceding block (EIR 0.25.0 ``LCLAttentionBlock``).

    The flat input is read as ``L = in_features // E`` consecutive tokens of ``E`` features,
    ``z = RMSNorm(tokens + pos_emb)``, ``z = z + MHA(z, z, z)`` with ``E`` heads (head dim 1),
    and ``y = x + LayerScale(flatten(z))``.

    Parameters
    ----------
    embedding_dim : int
        Token width ``E`` (the preceding block's ``out_feature_sets``).
    in_features : int
        Flat width ``F`` (a multiple of ``E``).
    num_heads : int, optional
        Defaults to ``E`` (EIR's "auto").
    dropout_p : float
        Attention and positional-embedding dropout (EIR uses 0).

    Shapes: input/output ``(B, F)``.
    """

    def __init__(
        self,
        embedding_dim: int,
        in_features: int,
        num_heads: int | None = None,
        dropout_p: float = 0.0,
    ) -> None:
        super().__init__()
        if in_features % embedding_dim:
            raise ValueError(f"attention block: {in_features} features are not a multiple of {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.in_features = in_features
        self.out_features = in_features
        self.num_heads = embedding_dim if num_heads is None else num_heads
        self.seq_len = in_features // embedding_dim
        self.attention = nn.MultiheadAttention(
            embed_dim=embedding_dim, num_heads=self.num_heads, dropout=dropout_p, batch_first=True
        )
        self.norm = nn.RMSNorm(embedding_dim)
        self.pos_emb = PositionalEmbedding(embedding_dim, self.seq_len, dropout=dropout_p)
        self.ls = LayerScale(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, F) -> (B, F)``."""
        tokens = self.pos_emb(x.reshape(x.shape[0], self.seq_len, self.embedding_dim))
        z = self.norm(tokens)
        attended, _ = self.attention(z, z, z, need_weights=False)
        return x + self.ls((z + attended).flatten(1))
