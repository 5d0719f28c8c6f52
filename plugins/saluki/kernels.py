"""Saluki's custom CPU kernels: the flat channels-last convolution, fused dropout + max-pool, and
the GRU recurrence with a hand-written backward (see the notes at the top of :mod:`.model`).

Each is a ``torch.autograd.Function`` whose gradient is tested against the straightforward
formulation (``tests/test_saluki_model.py``).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from biolm.core.hookspecs import max_threads


def _as_cl4(x: torch.Tensor) -> torch.Tensor:
    """View a contiguous ``(N, C)`` flat sequence as a ``(1, C, 1, N)`` channels-last image."""
    n, c = x.shape
    return x.as_strided((1, c, 1, n), (n * c, 1, n * c, c))


def _from_cl4(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_as_cl4`: ``(1, C, 1, N)`` -> ``(N, C)`` (a view when channels-last)."""
    y = y.contiguous(memory_format=torch.channels_last)
    return y.permute(0, 2, 3, 1).reshape(y.shape[3], y.shape[1])


def _cl4_weight(w: torch.Tensor) -> torch.Tensor:
    """``(C_out, C_in, K)`` conv weight -> ``(C_out, C_in, 1, K)`` channels-last (oneDNN nwc path)."""
    return w.unsqueeze(2).contiguous(memory_format=torch.channels_last)


_DW_ROWS = 8192  # row block of the weight-gradient GEMMs (~2 MiB of G and X: about an L2)


class FlatConv(torch.autograd.Function):
    """Valid 1-D cross-correlation over a flat channels-last sequence.

    Forward and backward-data are oneDNN ``nwc`` kernels, which run near the matmul peak; its
    ``nwc`` backward-weights kernel is several times slower than ``kernel_size`` GEMMs over the shifted
    rows (``dW_k = G^T X[k:k+N]``), so the weight gradient is computed that way. ``grad_out``
    must be zero on rows that are not valid outputs of some slot (the flat layout guarantees it).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        w4 = _cl4_weight(weight)
        y = _from_cl4(F.conv2d(_as_cl4(x), w4, bias))
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = g.contiguous()
        k = weight.shape[2]
        n = g.shape[0]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            w4 = _cl4_weight(weight)
            dx4 = torch.ops.aten.convolution_backward(
                _as_cl4(g), _as_cl4(x), w4, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                [True, False, False],
            )[0]
            dx = _from_cl4(dx4)
        if ctx.needs_input_grad[1]:
            cout, cin, _ = weight.shape
            if cin < 16:
                # few input channels (the one-hot input): one GEMM on copied windows beats
                # kernel_size GEMMs with a tiny output width
                cols = x.as_strided((n, k * cin), (cin, 1)).contiguous()
                dw = (cols.t() @ g).view(k, cin, cout).permute(2, 1, 0)
            else:
                # dW_k = X[k:k+n]^T G, blocked over rows so that a block of G and X stays in
                # cache for all k taps (five passes over cold activations are memory-bound)
                dwk = g.new_zeros(k, cin, cout)
                for s0 in range(0, n, _DW_ROWS):
                    s1 = min(s0 + _DW_ROWS, n)
                    gb = g[s0:s1]
                    for j in range(k):
                        dwk[j].addmm_(x[s0 + j:s1 + j].t(), gb)
                dw = dwk.permute(2, 1, 0)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum(0)
        return dx, dw, db


_RNG_CHUNKS = 8  # fixed, so masks do not depend on the thread count
_rng_pool: tuple[int, int, ThreadPoolExecutor] | None = None


def _rng_executor(workers: int) -> ThreadPoolExecutor:
    global _rng_pool
    pid = os.getpid()
    if _rng_pool is None or _rng_pool[0] != pid or _rng_pool[1] != workers:
        # a pool inherited through fork has no threads behind it: make a new one
        _rng_pool = (pid, workers, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="saluki-rng"))
    return _rng_pool[2]


_scratch = threading.local()


def _uniform(shape: tuple[int, ...], like: torch.Tensor, scratch: bool = False) -> torch.Tensor:
    """U[0, 1) float tensor of ``shape`` on ``like``'s device and dtype.

    On CPU the numbers come from NumPy's PCG64 (float32 fill is several times faster than torch's
    mt19937 ``bernoulli_``/``rand``), in fixed chunks filled by parallel threads (NumPy releases
    the GIL), each chunk seeded from one draw of torch's global generator, so
    ``torch.manual_seed`` keeps training reproducible for any thread count. With ``scratch`` the
    result lives in a per-thread buffer that the next call overwrites (saves page faults).
    """
    if like.device.type != "cpu":
        return torch.rand(shape, device=like.device, dtype=like.dtype)
    n = math.prod(shape)
    if scratch and like.dtype == torch.float32:
        buf = getattr(_scratch, "buf", None)
        if buf is None or buf.size < n:
            buf = _scratch.buf = np.empty(n, dtype=np.float32)
        out = buf[:n]
    else:
        out = np.empty(n, dtype=np.float32)
    seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())
    chunks = max(1, min(_RNG_CHUNKS, n // 65536))
    seqs = np.random.SeedSequence(seed).spawn(chunks)
    bounds = [n * i // chunks for i in range(chunks + 1)]

    def fill(i: int) -> None:
        np.random.Generator(np.random.PCG64(seqs[i])).random(
            out=out[bounds[i]: bounds[i + 1]], dtype=np.float32)

    workers = min(chunks, torch.get_num_threads())
    if workers > 1:
        list(_rng_executor(workers).map(fill, range(chunks)))
    else:
        for i in range(chunks):
            fill(i)
    return torch.from_numpy(out).view(shape).to(like.dtype)


def pair_keep_mask(pairs: int, channels: int, p: float, like: torch.Tensor) -> torch.Tensor:
    """Independent Bernoulli(1 - p) float {0, 1} keep masks for both elements of every pair.

    Returns
    -------
    (pairs, 2, channels)

    Notes
    -----
    One uniform ``u`` per pair decides both elements: with ``q = 1 - p`` the first is kept when
    ``u <= q`` and the second when ``|u - c| <= q / 2``, ``c = q (1 - q) + q / 2``. The two
    intervals overlap by exactly ``q**2``, so the pair is distributed as two independent draws
    while the random-number cost (the dominant one) halves.
    """
    q = 1.0 - p
    u = _uniform((pairs, channels), like, scratch=True)
    m = u.new_empty(pairs, 2, channels)
    # comparisons written straight into the float mask: bool tensors and their casts take slow
    # paths on CPU
    torch.le(u, q, out=m[:, 0])
    torch.le(u.sub_(q * (1.0 - q) + 0.5 * q).abs_(), 0.5 * q, out=m[:, 1])
    return m


class DropMaxPool(torch.autograd.Function):
    """``MaxPool1D(2)(Dropout(p)(y))`` on a flat ``(N, C)`` sequence -> ``(N // 2, C)``.

    Saves one float weight per input element (its share of the output gradient: the dropout
    scale if it was the kept maximum of its pair, else 0) instead of a dropout mask plus int64
    argmax indices. Ties go to the first element of the pair, like TensorFlow's MaxPool gradient.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, p: float, scratch: bool = False) -> torch.Tensor:
        n2, c = y.shape[0] // 2, y.shape[1]
        yp = y[: 2 * n2].view(n2, 2, c)
        # scratch=True: y is a temporary nobody else references (the conv output) and is
        # overwritten; torch has no CPU caching allocator, so every fresh large tensor costs
        # page faults
        if not scratch:
            yp = yp.clone()
        if p > 0.0:
            w = pair_keep_mask(n2, c, p, y)
            z = yp.mul_(w)
        else:
            w = torch.ones((n2, 2, c), dtype=y.dtype, device=y.device)
            z = yp
        ze, zo = z[:, 0], z[:, 1]
        out = torch.maximum(ze, zo)
        # 1 where the second element is strictly larger (ties go to the first), written as a
        # float over zo (no longer needed): bool tensors take slow paths on CPU
        second = torch.gt(zo, ze, out=zo)
        w[:, 1].mul_(second)
        w[:, 0].addcmul_(w[:, 0], second, value=-1.0)
        if p > 0.0:
            scale = 1.0 / (1.0 - p)
            out.mul_(scale)
        else:
            scale = 1.0
        ctx.save_for_backward(w)
        ctx.n = y.shape[0]
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (w,) = ctx.saved_tensors
        n2, _, c = w.shape
        gy = g.new_empty(ctx.n, c)
        gs = g * ctx.scale if ctx.scale != 1.0 else g
        torch.mul(w, gs.unsqueeze(1), out=gy[: 2 * n2].view(n2, 2, c))
        if ctx.n > 2 * n2:
            gy[2 * n2:].zero_()
        return gy, None, None


def max_pool_pairs(y: torch.Tensor) -> torch.Tensor:
    """Eval-mode ``MaxPool1D(2)`` on a flat ``(N, C)`` sequence -> ``(N // 2, C)``; ``y`` is a
    temporary that may be overwritten."""
    if torch.is_grad_enabled() and y.requires_grad:
        # keeps TensorFlow's first-index tie rule for the gradient (torch.maximum splits ties)
        return DropMaxPool.apply(y, 0.0, True)
    n2 = y.shape[0] // 2
    yp = y[: 2 * n2].view(n2, 2, y.shape[1])
    return torch.maximum(yp[:, 0], yp[:, 1])


def gru_loop(xp: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, h0: torch.Tensor,
              backwards: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GRU recurrence (no autograd). Shapes as in :class:`GRURecurrence`.

    Returns
    -------
    hs : (T + 1, B, H)
        States before the first and after every step, in reading order.
    hp : (T, B, 3H)
        ``h @ W_hh^T + b_hh`` per step.
    rz : (T, B, 2H)
        Reset and update gates.
    n : (T, B, H)
        Candidate states.
    """
    bsz, steps, three_h = xp.shape
    hid = three_h // 3
    order = range(steps - 1, -1, -1) if backwards else range(steps)
    w_t = w_hh.t()
    hs = h0.new_empty(steps + 1, bsz, hid)
    hp = h0.new_empty(steps, bsz, three_h)
    rz = h0.new_empty(steps, bsz, 2 * hid)
    n = h0.new_empty(steps, bsz, hid)
    hs[0] = h0.expand(bsz, hid)
    # tiny matmuls single-threaded: MKL splits even a (32 x 64) @ (64 x 192) product over the
    # OpenMP team, whose barrier costs more than the product
    with max_threads(1):
        for i, t in enumerate(order):
            x_t = xp[:, t]
            torch.addmm(b_hh, hs[i], w_t, out=hp[i])
            torch.add(x_t[:, : 2 * hid], hp[i, :, : 2 * hid], out=rz[i]).sigmoid_()
            torch.addcmul(x_t[:, 2 * hid:], rz[i, :, :hid], hp[i, :, 2 * hid:], out=n[i]).tanh_()
            torch.lerp(n[i], hs[i], rz[i, :, hid:], out=hs[i + 1])
    return hs, hp, rz, n


class GRURecurrence(torch.autograd.Function):
    """The recurrent half of a GRU (``reset_after`` form) given precomputed input projections.

    Parameters (of ``forward``)
    ---------------------------
    xp : (B, T, 3H)
        ``x_t @ W_ih^T + b_ih`` for every step, gate blocks ``[r | z | n]`` (torch order).
        May be an expanded (stride-0) tensor.
    w_hh : (3H, H), b_hh : (3H,)
        Recurrent weight and bias, torch layout.
    h0 : (B, H)
        Initial state.
    backwards : bool
        Read ``t = T-1 .. 0`` (Keras ``go_backwards``) instead of ``0 .. T-1``.

    Returns
    -------
    (B, H)
        The state after the last step read.
    """

    @staticmethod
    def forward(ctx, xp, w_hh, b_hh, h0, backwards: bool):
        hs, hp, rz, nn_ = gru_loop(xp, w_hh, b_hh, h0, backwards)
        ctx.save_for_backward(w_hh, hs, hp, rz, nn_)
        ctx.backwards = backwards
        ctx.xp_shape = xp.shape
        ctx.h0_shape = h0.shape
        return hs[-1].clone()

    @staticmethod
    def backward(ctx, dh):
        with max_threads(1):  # every tensor here is small
            return GRURecurrence._backward(ctx, dh)

    @staticmethod
    def _backward(ctx, dh):
        w_hh, hs, hp, rz, n = ctx.saved_tensors
        bsz, steps, three_h = ctx.xp_shape
        hid = three_h // 3
        r, z = rz[..., :hid], rz[..., hid:]
        # per-step chain-rule factors, vectorised over all steps so the loop stays short:
        # dn_pre = dh * a_n, dz_pre = dh * a_z, dr_pre = dn_pre * a_r
        a_n = (1.0 - z) * (1.0 - n * n)
        a_z = (hs[:steps] - n) * z * (1.0 - z)
        a_r = hp[..., 2 * hid:] * r * (1.0 - r)
        dhp = dh.new_empty(steps, bsz, three_h)  # d(h @ W_hh^T + b_hh), blocks [r | z | n]
        dn = dh.new_empty(steps, bsz, hid)  # d(n pre-activation) = d(xp_n)
        dh = dh.contiguous()
        for i in range(steps - 1, -1, -1):
            torch.mul(dh, a_n[i], out=dn[i])
            torch.mul(dh, a_z[i], out=dhp[i, :, hid: 2 * hid])
            torch.mul(dn[i], a_r[i], out=dhp[i, :, :hid])
            torch.mul(dn[i], r[i], out=dhp[i, :, 2 * hid:])
            dh = torch.addmm(dh * z[i], dhp[i], w_hh)
        dxp = dw = db = dh0 = None
        if ctx.needs_input_grad[0]:
            dpre = torch.cat([dhp[..., : 2 * hid], dn], dim=2).transpose(0, 1)  # reading order
            dxp = dpre.flip(1) if ctx.backwards else dpre
        if ctx.needs_input_grad[1]:
            dw = dhp.view(steps * bsz, three_h).t() @ hs[:steps].reshape(steps * bsz, hid)
        if ctx.needs_input_grad[2]:
            db = dhp.sum((0, 1))
        if ctx.needs_input_grad[3]:
            dh0 = dh.sum_to_size(ctx.h0_shape)
        return dxp, dw, db, dh0, None
