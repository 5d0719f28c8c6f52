"""Exact fast leave-one-out (``mask``/``replace``) for the ``lcl`` plugin (EIR's locally connected net).

Where locality ends
-------------------
A locally connected layer (LCL) maps chunks to chunks: a change of input row ``p`` (its ``C``
flattened elements) changes at most ``ceil(C / K0) + 1`` chunks of ``fc_0`` (``O0`` features each),
those reach ``<= O0 * (ceil(C / K0) + 1)`` chunks of block 0's ``fc_1``, and so on (each LCL
multiplies the changed chunks by its number of weight sets). But every RMSNorm in the network
(``norm_0`` and each block's ``norm_1``) normalises over the *whole* feature vector, so a change
also rescales every feature by a per-copy scalar. Up to the first nonlinearity this is still cheap
and exact::

    h0     = fc_0(x_flat)                       sparse change (the features of the changed chunks)
    normed = norm_1(norm_0(h0)) = sigma * u     u = h0 * w_norm0 * w_norm1 (sparse change);
                                                sigma = r0 * r1, one scalar per copy, from
                                                sum(h0^2) and sum((h0 w_norm0)^2), updated from the
                                                changed features only (no cancellation)
    z1     = fc_1(normed) = sigma * (c1 + dc1) + b1       c1 = fc_1's linear part of the cached u
    ident  = down(normed) = sigma * (cd + dcd) + bd       (sigma * u for an identity shortcut)

(``dc1``, ``dcd``: the layers' linear parts applied to the sparse change of ``u``, scattered into
the cached outputs). After ``GELU(z1)`` every feature differs (``sigma`` differs per copy), so
from there on the network is recomputed densely, batched over the perturbations: block 0's
``fc_2`` / LayerScale / residual sum, every later residual or attention block, and the head.
Full forward passes spend most of their time in ``fc_0`` over the whole flattened input, the two
RMSNorms and block 0's ``fc_1`` / identity LCL; here those cost ``O(C * O0 * (O1 + 1))`` numbers
per perturbation. The dense part runs feature-major, (features, perturbations), where every LCL
chunk is a contiguous slab and a layer is one ``bmm`` (see :class:`_TLCL`).

All ops run single-threaded; on CPU the chunks of perturbations are spread over one Python
thread per intra-op thread of the caller. The sparse prefix is computed in float64, the dense
suffix in the model's dtype; results equal eval-mode full forward passes up to float rounding.
Dropout and stochastic depth are skipped (eval semantics); attention blocks compute the same
eval-mode attention with one ``scaled_dot_product_attention`` call. A network whose first block is not a full-preactivation :class:`LCLResidualBlock` (EIR always
builds one) is not handled by the shortcut: :func:`fast_loo` then runs batched full forward passes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from biolm.core.hookspecs import max_threads

__all__ = ["fast_loo", "full_forward_loo"]

_CHUNK = 256  # perturbations per chunk: the dense suffix's activations stay in cache
_F64 = torch.float64


# ------------------------------------------------------------------------------------------------
# Layers in the layouts the routine uses
# ------------------------------------------------------------------------------------------------


def _lcl_linear(layer, v: torch.Tensor) -> torch.Tensor:
    """An LCL's linear part (no bias): (B, F_in) -> (B, O * H), set-major, in ``v``'s dtype."""
    if layer.padding:
        v = nn.functional.pad(v, (0, layer.padding))
    chunks = v.reshape(v.shape[0], layer.num_chunks, layer.kernel_size)
    return torch.einsum("bck,ock->boc", chunks, layer.weight.detach().to(v.dtype)).flatten(1)


class _TLCL:
    """An LCL on feature-major activations ``v`` (F_in, P) -> (O * H, P), set-major rows.

    Every chunk is a contiguous (K, P) slab of ``v``, so the layer is one ``bmm``,
    (H, O, K) x (H, K, P), and one transpose of the (smaller) output; the module's ``einsum`` on
    (P, F) rows has to copy its input into chunk-major order first (several times slower).
    """

    def __init__(self, layer):
        self.w = layer.weight.detach().permute(1, 0, 2).contiguous()  # (H, O, K)
        self.b = layer.bias.detach().unsqueeze(1) if layer.bias is not None else None
        self.h, self.k, self.o, self.pad = layer.num_chunks, layer.kernel_size, layer.out_feature_sets, layer.padding

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if self.pad:
            v = nn.functional.pad(v, (0, 0, 0, self.pad))
        out = torch.bmm(self.w, v.reshape(self.h, self.k, v.shape[1]))  # (H, O, P)
        out = out.transpose(0, 1).reshape(self.o * self.h, v.shape[1])
        return out.add_(self.b) if self.b is not None else out


class _SparseLCL:
    """An LCL's output changes for sparse input changes (float64).

    ``__call__(feat, dval)``: input features (P, S) int64 with changes (P, S) -> output features
    ``o * H + feat // K`` and changes ``W[o, feat // K, feat % K] * dval``, both (P, S * O)
    (duplicate output features are to be summed: ``index_put_(..., accumulate=True)``).
    """

    def __init__(self, layer):
        self.w = layer.weight.detach().to(_F64)  # (O, H, K)
        self.h, self.k = layer.num_chunks, layer.kernel_size
        self.o = torch.arange(layer.out_feature_sets, device=self.w.device).view(-1, 1, 1)

    def __call__(self, feat: torch.Tensor, dval: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = feat // self.k
        w = self.w[:, chunk, feat % self.k]  # (O, P, S)
        index = (self.o * self.h + chunk).permute(1, 2, 0).reshape(feat.shape[0], -1)
        return index, (w * dval).permute(1, 2, 0).reshape(feat.shape[0], -1)


def _rms_eps(norm: nn.RMSNorm, dtype: torch.dtype) -> float:
    return float(norm.eps) if norm.eps is not None else float(torch.finfo(dtype).eps)


def _rms_weight(norm: nn.RMSNorm, n: int, like: torch.Tensor) -> torch.Tensor:
    return norm.weight.detach().to(like) if norm.weight is not None else like.new_ones(n)


class _DenseBlock:
    """Eval-mode forward of one block on feature-major activations (F_in, P) -> (F_out, P): a
    residual block without dropout / stochastic depth, or an attention block (see :func:`_attention`)."""

    def __init__(self, blk: nn.Module):
        from .layers import LCLResidualBlock

        self.blk = blk
        self.residual = isinstance(blk, LCLResidualBlock)
        if self.residual:
            self.fc_1, self.fc_2 = _TLCL(blk.fc_1), _TLCL(blk.fc_2)
            down = blk.downsample_identity
            self.down = None if isinstance(down, nn.Identity) else _TLCL(down)
            self.gamma = blk.ls.gamma.detach().unsqueeze(1)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        blk = self.blk
        if not self.residual:
            x = v.t().contiguous()
            return (_attention(blk, x) if _plain_mha(blk) else blk(x)).t().contiguous()
        norm = blk.norm_1
        r = torch.rsqrt(v.square().mean(0, keepdim=True) + _rms_eps(norm, v.dtype))
        normed = v * r * _rms_weight(norm, v.shape[0], v).unsqueeze(1)
        src = normed if blk._identity_from_normed else v
        identity = src if self.down is None else self.down(src)
        return torch.addcmul(identity, self.fc_2(blk.act_1(self.fc_1(normed))), self.gamma)


def _plain_mha(blk) -> bool:
    """An attention block whose MHA is plain (no bias_k/v, no zero attention, one embed dim)."""
    mha = getattr(blk, "attention", None)
    return (isinstance(mha, nn.MultiheadAttention) and mha.batch_first and mha._qkv_same_embed_dim
            and mha.bias_k is None and mha.bias_v is None and not mha.add_zero_attn)


def _attention(blk, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode :class:`LCLAttentionBlock` forward, (B, F) -> (B, F), with the attention as one
    ``scaled_dot_product_attention`` call: ``nn.MultiheadAttention`` with EIR's head dim of 1
    spends ~5x longer materialising the (B * heads, T, T) weights."""
    mha = blk.attention
    B, T, E, H = x.shape[0], blk.seq_len, blk.embedding_dim, mha.num_heads
    z = blk.norm(x.view(B, T, E) + blk.pos_emb.embedding[:, :T])
    qkv = nn.functional.linear(z, mha.in_proj_weight, mha.in_proj_bias)  # (B, T, 3E)
    q, k, v = qkv.view(B, T, 3, H, E // H).permute(2, 0, 3, 1, 4)  # each (B, H, T, E/H)
    o = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, E)
    att = nn.functional.linear(o, mha.out_proj.weight, mha.out_proj.bias)
    return x + blk.ls((z + att).flatten(1))


def _supported(body) -> bool:
    from .layers import LCL, LCLResidualBlock

    blk = body.lcl_blocks[0] if len(body.lcl_blocks) else None
    return (isinstance(blk, LCLResidualBlock) and blk._identity_from_normed and isinstance(body.fc_0, LCL)
            and isinstance(body.norm_0, nn.RMSNorm) and isinstance(blk.norm_1, nn.RMSNorm)
            and isinstance(blk.downsample_identity, (LCL, nn.Identity)))


# ------------------------------------------------------------------------------------------------
# The routine
# ------------------------------------------------------------------------------------------------


class _Plan:
    """Prepared layers and the unperturbed sequence's prefix (float64 unless noted).

    Attributes
    ----------
    h0 : (F0,) fc_0 output; s0, s0w : sum(h0^2), sum((h0 * w_norm0)^2); w0 : (F0,) w_norm0;
    wu : (F0,) w_norm0 * w_norm1; u : (F0,) h0 * wu;
    c1 : (F1,) fc_1's linear part of u (model dtype); cd : (F2,) the identity LCL's linear part
    of u, or u itself for an identity shortcut (model dtype).
    """

    def __init__(self, net, x: torch.Tensor):
        body = self.body = net.body
        self.head = [m for m in net.head if not isinstance(m, nn.Dropout)]
        blk = self.blk = body.lcl_blocks[0]
        fc0 = body.fc_0
        self.w_fc0 = fc0.weight.detach().to(_F64)  # (O0, H0, K0)
        self.o0 = torch.arange(fc0.out_feature_sets, device=x.device).view(-1, 1, 1)
        self.sparse_fc1 = _SparseLCL(blk.fc_1)
        down = blk.downsample_identity
        self.sparse_down = None if isinstance(down, nn.Identity) else _SparseLCL(down)
        self.b1 = blk.fc_1.bias.detach().unsqueeze(1) if blk.fc_1.bias is not None else None
        self.bd = down.bias.detach().unsqueeze(1) if self.sparse_down is not None and down.bias is not None else None
        self.fc_2 = _TLCL(blk.fc_2)
        self.gamma = blk.ls.gamma.detach().unsqueeze(1)
        self.rest = [_DenseBlock(b) for b in body.lcl_blocks[1:]]
        # ---- the unperturbed prefix
        self.x = x[0]
        h0 = fc0(body.flatten(x))[0].to(_F64)
        self.h0, self.f0 = h0, h0.shape[0]
        self.w0 = _rms_weight(body.norm_0, self.f0, h0)
        self.wu = self.w0 * _rms_weight(blk.norm_1, self.f0, h0)
        self.eps0, self.eps1 = _rms_eps(body.norm_0, x.dtype), _rms_eps(blk.norm_1, x.dtype)
        self.s0 = float(h0.square().sum())
        self.s0w = float((h0 * self.w0).square().sum())
        u = (h0 * self.wu).unsqueeze(0)
        self.c1 = _lcl_linear(blk.fc_1, u)[0].to(x.dtype)
        self.cd = (u[0] if self.sparse_down is None else _lcl_linear(down, u)[0]).to(x.dtype)

    def flat_index(self, pos: torch.Tensor) -> torch.Tensor:
        """(P,) positions -> (P, C) indices of their elements in the flattened input, ascending."""
        L, C = self.x.shape
        c = torch.arange(C, device=pos.device)
        if self.body.flatten_order == "position_major":
            return pos.unsqueeze(1) * C + c
        return c * L + pos.unsqueeze(1)  # channel_major

    def chunk(self, pos: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Outputs (P, num_outputs) for one chunk of perturbations: ``pos`` (P,), ``rows`` (P, C)."""
        P = pos.shape[0]
        k0 = self.body.fc_0.kernel_size
        h0_chunks = self.body.fc_0.num_chunks
        # ---- fc_0: the changed elements' contributions, summed per changed chunk ("slot")
        fidx = self.flat_index(pos)  # (P, C) ascending, so elements of one chunk are adjacent
        dx = (rows - self.x.index_select(0, pos)).to(_F64)  # (P, C)
        chunk0 = fidx // k0
        contrib = self.w_fc0[:, chunk0, fidx % k0] * dx  # (O0, P, C)
        first = torch.ones_like(chunk0, dtype=torch.bool)
        first[:, 1:] = chunk0[:, 1:] != chunk0[:, :-1]
        slot = first.long().cumsum(1) - 1  # (P, C): the slot of each element
        m = int(slot[:, -1].max()) + 1  # most changed chunks of any perturbation (<= C)
        dh = torch.zeros_like(contrib).scatter_add_(2, slot.unsqueeze(0).expand_as(contrib), contrib)[..., :m]
        slot_chunk = torch.zeros_like(chunk0).scatter_(1, slot, chunk0)[:, :m]  # unused slots: chunk 0, change 0
        feat = (self.o0 * h0_chunks + slot_chunk).permute(1, 0, 2).reshape(P, -1)  # (P, S) h0 features
        dh = dh.permute(1, 0, 2).reshape(P, -1)  # (P, S) their changes
        # ---- the two RMSNorm scalars from the updated sums of squares
        grow = dh * (2 * self.h0[feat] + dh)  # h_new^2 - h_old^2, without cancellation
        s0 = self.s0 + grow.sum(1)
        s0w = self.s0w + (grow * self.w0[feat].square()).sum(1)
        r0 = torch.rsqrt(s0 / self.f0 + self.eps0)
        sigma = r0 * torch.rsqrt(r0.square() * s0w / self.f0 + self.eps1)  # (P,): normed = sigma * u
        du = dh * self.wu[feat]  # (P, S) change of u
        # ---- block 0's fc_1 and identity path, feature-major (F, P); dense from GELU on
        cols = torch.arange(P, device=pos.device).unsqueeze(1)
        z1 = self._affine(self.c1, sigma, self.b1, *self.sparse_fc1(feat, du), cols)
        if self.sparse_down is None:  # identity shortcut: normed itself
            ident = self._affine(self.cd, sigma, None, feat, du, cols)
        else:
            ident = self._affine(self.cd, sigma, self.bd, *self.sparse_down(feat, du), cols)
        y = torch.addcmul(ident, self.fc_2(self.blk.act_1(z1)), self.gamma)
        for b in self.rest:
            y = b(y)
        y = y.t()
        for m in self.head:
            y = m(y)
        return y

    @staticmethod
    def _affine(base, sigma, bias, index, delta, cols) -> torch.Tensor:
        """``sigma * (base + sparse delta) + bias`` as a feature-major (F, P) tensor.

        Parameters
        ----------
        base : (F,) model dtype; sigma : (P,) float64; bias : (F, 1) or None;
        index, delta : (P, S) changed features and their (float64) changes; cols : (P, 1).
        """
        s = sigma.to(base.dtype).unsqueeze(0)
        b = base.unsqueeze(1)
        out = b * s if bias is None else torch.addcmul(bias, b, s)
        vals = (sigma.unsqueeze(1) * delta).to(base.dtype)
        # flat scatter-add (duplicates summed): several times faster than index_put_(accumulate=True)
        out.view(-1).scatter_add_(0, (index * out.shape[1] + cols).reshape(-1), vals.reshape(-1))
        return out


def fast_loo(model, inp: dict, n: int, positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Outputs of ``model`` for copies of one sequence with one input row changed each.

    Parameters
    ----------
    model : InputAdapter around an ``LCLPredictor`` (``model.net``), or the predictor itself.
        Evaluated with eval-mode semantics.
    inp : dict
        ``inp["x"]`` (1, L, C) one-hot (+ modifier) input of the block size ``L``; no other key is used.
    n : int
        Real length (unused: padding rows are ordinary zero rows of the fixed-size input).
    positions : (P,) int
        Rows to change, each in ``[0, L)``; repeats allowed (several new rows per position).
    rows : (P, C)
        The new input row for each position (zeros for ``mask``).

    Returns
    -------
    (P, num_outputs) tensor; equal to full eval-mode forward passes up to float rounding.
    """
    net = getattr(model, "net", model)
    body = net.body
    x = inp["x"]
    if x.dim() != 3 or x.shape[0] != 1:
        raise ValueError(f"lcl fast_loo: inp['x'] must hold one sequence (1, L, C), got {tuple(x.shape)}")
    dev, dtype = body.fc_0.weight.device, body.fc_0.weight.dtype
    x = x.to(device=dev, dtype=dtype)
    _, L, C = x.shape
    pos = torch.as_tensor(positions, device=dev).long().reshape(-1)
    rows = torch.as_tensor(rows, device=dev).to(dtype).reshape(-1, C)
    if rows.shape[0] != pos.shape[0]:
        raise ValueError(f"lcl fast_loo: {pos.shape[0]} positions but {rows.shape[0]} rows")
    if pos.numel() == 0:
        return x.new_zeros(0, net.num_outputs)
    if int(pos.min()) < 0 or int(pos.max()) >= L:
        raise ValueError(f"lcl fast_loo: positions must lie in [0, {L})")
    if not _supported(body):
        return full_forward_loo(model, {"x": x}, pos, rows)
    # single-threaded ops; on CPU the chunks go to one Python thread per intra-op thread the
    # caller had (torch releases the GIL inside ops), as in Saluki's routine
    workers = torch.get_num_threads() if dev.type == "cpu" else 1
    with torch.no_grad(), max_threads(1):
        plan = _Plan(net, x)
        slices = [slice(c0, c0 + _CHUNK) for c0 in range(0, pos.shape[0], _CHUNK)]

        def job(sl: slice, worker: bool = False) -> torch.Tensor:
            if worker:
                torch.set_num_threads(1)  # per-thread setting; the caller's is restored after
            with torch.no_grad():
                return plan.chunk(pos[sl], rows[sl])

        if workers > 1 and len(slices) > 1:
            with ThreadPoolExecutor(max_workers=min(workers, len(slices))) as pool:
                return torch.cat(list(pool.map(lambda sl: job(sl, True), slices)))
        return torch.cat([job(sl) for sl in slices])


def full_forward_loo(model, inp: dict, positions: torch.Tensor, rows: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Reference: batched full forward passes of the perturbed inputs.

    Parameters
    ----------
    model : the plugin model (``forward({"x": (B, L, C)})``).
    inp : dict with ``x`` (1, L, C).
    positions : (P,) int; rows : (P, C); batch : copies per forward pass.

    Returns
    -------
    (P, num_outputs)
    """
    x = inp["x"]
    pos = torch.as_tensor(positions, device=x.device).long().reshape(-1)
    rows = torch.as_tensor(rows, device=x.device).to(x.dtype)
    outs = []
    with torch.no_grad():
        for s in range(0, len(pos), batch):
            p = pos[s: s + batch]
            xb = x.repeat(len(p), 1, 1)
            xb[torch.arange(len(p), device=x.device), p] = rows[s: s + batch]
            outs.append(model({"x": xb}))
    return torch.cat(outs)
