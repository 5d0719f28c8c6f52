"""Exact fast leave-one-out (``mask``/``replace``) for Saluki, after fastISM (Nair et al. 2022).

A change of input row ``p`` only alters ``conv0``'s outputs ``p-K+1 .. p``. Through every block
(pointwise LayerNorm/activation, valid convolution: the window grows by ``K-1`` to the left,
MaxPool(2): it halves) the altered rows stay inside a window of ``K`` rows, so the trunk of a
perturbed copy is the unperturbed trunk with a ``K``-row patch per layer. :func:`fast_loo`

1. runs the unperturbed sequence once, keeping conv0's outputs, every block's post-norm rows and
   convolution outputs, the GRU input projections and the GRU state before every step;
2. for all P perturbations at once (in chunks), propagates each window through the blocks. The
   convolutions are linear, so a window's new convolution outputs are the cached ones plus the
   convolution of the *change* of its ``K`` post-norm rows: ``K * K`` row products per layer
   and perturbation (``K`` GEMMs over the chunk, accumulated straight into the gathered cached
   rows) instead of the ``2K * K`` of recomputing the window. A window's max-pool phase (which
   conv row of a pair its change starts on) sets where the change lands; the perturbations are
   grouped by phase, and laid out ``(window row, perturbation, channel)``, so every tap and
   every pooling pair is one contiguous slab. No perturbed copy of a layer is ever made;
3. starts each perturbation's GRU from the cached state just before its window (every step read
   earlier sees unchanged inputs), runs the ``K`` window steps batched over P, then the remaining
   steps with the cached (shared) inputs, only for the perturbations whose window has been read
   (sorted by window end, the active ones are a prefix of the batch);
4. applies the dense head (eval-mode BatchNorm) to the final states.

Windows are never clamped: the cached layers carry a few rows of padding on both sides whose
pre-norm, post-norm and convolution values are mutually consistent (zeros, ``act(LN(0))``, zeros),
so a window row outside a layer gets no change unless the perturbation reaches it, and a change
that reaches outside a layer only ever reaches rows outside the later layers (the GRU skips them).

Only rows that can depend on real data are computed: the trunk runs on a prefix of the block just
long enough to hold every data-dependent row plus pure-padding GRU steps, whose input is the GRU
input of every later (padding) step: the exact shortcut of the model's eval path.

All ops are small, so they run single-threaded (OpenMP barriers would cost more than they save,
and on a loaded machine far more); on CPU the chunks are spread over a pool of as many Python
threads as the caller's intra-op thread count (torch releases the GIL inside ops).

Results equal eval-mode full forward passes up to float rounding (~1e-6). The routine always
computes eval-mode semantics (no dropout, no shift).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from biolm.core.hookspecs import max_threads

from . import model as _model

__all__ = ["fast_loo"]

_CHUNK = 1024  # most perturbations per chunk (the largest temporary is (2K, chunk, filters))
_MIN_CHUNK = 256  # fewest perturbations per chunk when chunks are spread over threads


def _window_starts(p: int, k: int, num_layers: int) -> list[int]:
    """First row of the ``K``-row window of input change ``p`` after conv0 and after each block.

    The row recurrence ``s -> (s - K + 1) // 2`` from ``p - K + 1`` is the one that gives the trunk
    lengths from the input length, so :func:`.model.trunk_lengths` computes it."""
    return _model.trunk_lengths(p, k, num_layers)


class _Net:
    """The Saluki parameters in the layouts the fast routine uses (eval mode)."""

    def __init__(self, net: torch.nn.Module):
        self.net = net
        self.k = int(net.kernel_size)
        self.n_layers = int(net.num_layers)
        self.f = int(net.filters)
        self.eps = float(net.ln_epsilon)
        self.act = _model.ACTIVATIONS[net.activation]
        self.backwards = bool(net.go_backwards)
        # conv weights (C_out, C_in, K) -> (C_in * K, C_out), matching unfold's (C_in, K) order
        self.w0 = net.conv0.weight.detach().flatten(1).t().contiguous()
        self.wb = [blk.conv.weight.detach().flatten(1).t().contiguous() for blk in net.blocks]
        self.bb = [blk.conv.bias.detach() for blk in net.blocks]
        # conv0 per tap (K, C_in, C_out) in window-row order (row q of the window of input
        # change p is conv0 row p - K + 1 + q, reached through tap K - 1 - q)
        self.w0q = net.conv0.weight.detach().permute(2, 1, 0).flip(0).contiguous()
        # blocks: per tap (K, C_in, C_out)
        self.wtap = [blk.conv.weight.detach().permute(2, 1, 0).contiguous() for blk in net.blocks]
        self.lns = [blk.ln for blk in net.blocks] + [net.final_ln]
        gru = net.gru
        self.w_ih_t = gru.weight_ih_l0.detach().t().contiguous()
        self.b_ih = gru.bias_ih_l0.detach()
        self.w_hh_t = gru.weight_hh_l0.detach().t().contiguous()
        self.b_hh = gru.bias_hh_l0.detach()

    def norm_act(self, h: torch.Tensor, i: int) -> torch.Tensor:
        ln = self.lns[i]
        return self.act(F.layer_norm(h, (self.f,), ln.weight, ln.bias, self.eps))

    @staticmethod
    def conv_rows(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, k: int) -> torch.Tensor:
        """Valid convolution over the rows of channels-last ``a`` (T, C) -> (T-K+1, C_out)."""
        cols = a.unfold(0, k, 1).reshape(a.shape[0] - k + 1, a.shape[1] * k)
        out = cols @ w
        return out.add_(b) if b is not None else out

    @staticmethod
    def pool(c: torch.Tensor, n_out: int) -> torch.Tensor:
        """MaxPool1D(2) over the rows of (T, C), keeping ``n_out`` outputs."""
        c = c[: 2 * n_out].view(n_out, 2, c.shape[1])
        return torch.maximum(c[:, 0], c[:, 1])

    def cell_(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One GRU step (torch/Keras ``reset_after`` form) in place on ``h`` (B, H);
        ``x`` = input projection (B or 1, 3H) or (3H,)."""
        hid = self.f
        hp = torch.addmm(self.b_hh, h, self.w_hh_t)
        rz = hp[:, : 2 * hid].add_(x[..., : 2 * hid]).sigmoid_()
        n = torch.addcmul(x[..., 2 * hid:], rz[:, :hid], hp[:, 2 * hid:]).tanh_()
        return torch.lerp(n, h, rz[:, hid:], out=h)

    def head(self, state: torch.Tensor) -> torch.Tensor:
        net = self.net
        h = self.act(F.batch_norm(state, net.bn1.running_mean, net.bn1.running_var, net.bn1.weight,
                                  net.bn1.bias, False, 0.0, net.bn1.eps))
        h = net.dense1(h)
        h = self.act(F.batch_norm(h, net.bn2.running_mean, net.bn2.running_var, net.bn2.weight,
                                  net.bn2.bias, False, 0.0, net.bn2.eps))
        return net.head(h)


def _prefix_length(length: int, n_eff: int, k: int, num_layers: int) -> int:
    """Shortest input prefix (<= ``length``) whose trunk holds every row that depends on the
    first ``n_eff`` input rows at every layer, plus at least one pure-padding GRU step.

    Row ``r`` of layer ``i`` (0 = conv0 output, i = block i-1 output) reads input rows from
    ``2**i * r`` on, so rows ``r > (n_eff - 1) // 2**i`` cannot see data."""
    def ok(lp: int) -> bool:
        lens = _model.trunk_lengths(lp, k, num_layers)
        if lens[-1] < 1:
            return False
        if any(t <= (n_eff - 1) // (1 << i) for i, t in enumerate(lens)):
            return False
        # the last GRU step must be pure padding: its value is then the padding column
        return (1 << num_layers) * (lens[-1] - 1) >= n_eff

    lp = min(length, n_eff + (1 << num_layers) * (k + 2) + 2 * k)
    while lp < length and not ok(lp):
        lp = min(length, lp + (1 << num_layers))
    return lp


class _Padded:
    """A cached layer: ``data`` holds ``front`` rows before the layer's row 0."""

    def __init__(self, data: torch.Tensor, front: int):
        self.data = data
        self.front = front

    @classmethod
    def zeros_around(cls, rows: torch.Tensor, front: int, back: int) -> "_Padded":
        data = rows.new_zeros(front + rows.shape[0] + back, rows.shape[1])
        data[front: front + rows.shape[0]] = rows
        return cls(data, front)

    def window(self, start: torch.Tensor, width: int) -> torch.Tensor:
        """Rows ``start + q`` for q < width, as (width, P, F)."""
        idx = torch.arange(width, device=start.device).unsqueeze(1) + (start + self.front).unsqueeze(0)
        return self.data.index_select(0, idx.reshape(-1)).view(width, start.shape[0], self.data.shape[1])


def fast_loo(model, inp: dict, n: int, positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Outputs of ``model`` for copies of one sequence with one input row changed each.

    Parameters
    ----------
    model : InputAdapter around a :class:`~biolm.plugins.saluki.model.Saluki` (``model.net``),
        or the Saluki module itself. Evaluated with eval-mode semantics.
    inp : dict
        ``inp["x"]`` (1, L, C) channels-last input of one sequence, 3'-zero-padded;
        ``inp["lengths"]`` is not needed (the data length is ``n`` or the last non-zero row).
    n : int
        Real length.
    positions : (P,) int
        Rows to change (normally < n; any row < L works).
    rows : (P, C)
        The new input row for each (zeros for ``mask``).

    Returns
    -------
    (P, num_outputs)
        Raw model outputs of the P perturbed copies; equal to full eval-mode forward passes
        within float rounding.
    """
    net = getattr(model, "net", model)
    p_ = _Net(net)
    k, nl, fdim = p_.k, p_.n_layers, p_.f
    x = inp["x"]
    if x.dim() != 3 or x.shape[0] != 1:
        raise ValueError(f"fast_loo: inp['x'] must hold one sequence (1, L, C), got {tuple(x.shape)}")
    dtype, dev = net.conv0.weight.dtype, net.conv0.weight.device
    x = x[0].to(device=dev, dtype=dtype)
    length, cin = x.shape
    pos = torch.as_tensor(positions, device=dev).long().reshape(-1)
    rows = torch.as_tensor(rows, device=dev).to(dtype).reshape(-1, cin)
    n_pos = pos.shape[0]
    if rows.shape[0] != n_pos:
        raise ValueError(f"fast_loo: {n_pos} positions but {rows.shape[0]} rows")
    if n_pos == 0:
        return x.new_zeros(0, int(net.num_outputs))
    p_min, p_max = int(pos.min()), int(pos.max())
    if p_min < 0 or p_max >= length:
        raise ValueError(f"fast_loo: positions must lie in [0, {length})")
    lens_full = _model.trunk_lengths(length, k, nl)
    if lens_full[-1] < 1:
        raise ValueError(f"fast_loo: input length {length} leaves no GRU step")

    # Every op here is small: one OpenMP team per op costs more in barriers than it saves (and
    # on a loaded machine each barrier can wait a whole scheduler slice), so the work runs
    # single-threaded, and on CPU the chunks of perturbations go to a pool of one thread per
    # intra-op thread the caller had (torch releases the GIL inside ops).
    workers = torch.get_num_threads() if dev.type == "cpu" else 1
    with torch.no_grad(), max_threads(1):
        # ---- unperturbed pass over the data-dependent prefix -----------------------------------
        nz = torch.nonzero(x.abs().sum(1)).flatten()
        n_eff = max(int(n), p_max + 1, int(nz.max()) + 1 if nz.numel() else 0, 1)
        lp = _prefix_length(length, n_eff, k, nl)
        lens = _model.trunk_lengths(lp, k, nl)
        xs = x[:lp].contiguous()
        # rows each layer's windows touch, from the first and the last position's windows
        lo = _window_starts(p_min, k, nl)
        hi = _window_starts(p_max, k, nl)

        def pads(first: int, last: int, t: int) -> tuple[int, int]:
            return max(0, -first), max(0, last + 1 - t)

        h = p_.conv_rows(xs, p_.w0, None, k)  # (T0, F)
        f0, b0 = pads(lo[0], hi[0] + k - 1, lens[0])
        conv0_rows = _Padded.zeros_around(h, f0, b0)
        layers = []  # per block: (post-norm rows, conv rows), padded
        for i in range(nl):
            f0, b0 = pads(lo[i], hi[i] + k - 1, lens[i])
            hp = conv0_rows if i == 0 else _Padded.zeros_around(h, f0, b0)
            # post-norm rows of the padded pre-norm rows: the padding's are act(LN(0))
            act = _Padded(p_.norm_act(hp.data, i).contiguous(), hp.front)
            c = p_.conv_rows(act.data[hp.front: hp.front + lens[i]], p_.wb[i], p_.bb[i], k)
            fc, bc = pads(2 * lo[i + 1], 2 * hi[i + 1] + 2 * k - 1, c.shape[0])
            layers.append((act, _Padded.zeros_around(c, fc, bc)))
            h = p_.pool(c, lens[i + 1])
        g = p_.norm_act(h, nl)  # (T', F)
        xp = torch.addmm(p_.b_ih, g, p_.w_ih_t)  # (T', 3H)
        steps, t_comp = lens_full[-1], lens[-1]
        # reading order u = 0..steps-1; steps beyond t_comp read the padding column xp[-1]
        t_of_u = torch.arange(steps - 1, -1, -1, device=dev) if p_.backwards else torch.arange(steps, device=dev)
        xpu = xp[t_of_u.clamp(max=t_comp - 1)]  # (steps, 3H)
        hc = x.new_empty(steps + 1, fdim)  # hc[u] = state before reading step u
        hc[0] = 0
        for u in range(steps):
            hc[u + 1] = hc[u]
            p_.cell_(xpu[u: u + 1], hc[u + 1: u + 2])
        size = min(_CHUNK, max(_MIN_CHUNK, -(-n_pos // workers)))
        slices = [slice(c0, c0 + size) for c0 in range(0, n_pos, size)]

        def job(sl: slice, worker: bool = False) -> torch.Tensor:
            if worker:
                # this thread's own OpenMP/MKL setting (torch's is per thread); the caller's is
                # restored after the pool has finished
                torch.set_num_threads(1)
            with torch.no_grad():
                dx = rows[sl] - x.index_select(0, pos[sl])
                return _chunk(p_, conv0_rows, layers, t_comp, steps, xpu, hc, pos[sl], dx)

        if workers > 1 and len(slices) > 1:
            with ThreadPoolExecutor(max_workers=min(workers, len(slices))) as pool:
                outs = list(pool.map(lambda sl: job(sl, True), slices))
        else:
            outs = [job(sl) for sl in slices]
        return torch.cat(outs)


def _chunk(p_: _Net, conv0_rows: _Padded, layers, t_comp: int, steps: int, xpu, hc, pos, dx) -> torch.Tensor:
    """Outputs for one chunk of perturbations (see :func:`fast_loo`); ``dx`` (P, C) = new row
    minus old row. Window tensors are laid out (window row, perturbation, channel)."""
    k, nl, fdim = p_.k, p_.n_layers, p_.f
    npos = pos.shape[0]
    # ---- conv0: input row p changes conv0 rows p - K + 1 .. p -----------------------------------
    s = pos - (k - 1)
    v = conv0_rows.window(s, k).add_(torch.matmul(dx.unsqueeze(0), p_.w0q))  # (K, P, F)
    # ---- blocks ---------------------------------------------------------------------------------
    ids = torch.arange(npos, device=pos.device)  # chunk index of each column (columns get sorted)
    for i in range(nl):
        act_i, conv_i = layers[i]
        wtap = p_.wtap[i]
        s_next = torch.div(s - (k - 1), 2, rounding_mode="floor")
        # pooled rows s_next .. s_next + K - 1 read conv rows 2 s_next .. 2 s_next + 2K - 1, which
        # start o = (s - K + 1) - 2 s_next (0 or 1) rows before the first changed conv row
        odd = (s - (k - 1)) % 2
        groups = [torch.nonzero(odd == o).flatten() for o in (0, 1)]
        v_next = v.new_empty(k, npos, fdim)
        col = 0
        for o, g in enumerate(groups):
            ng = g.shape[0]
            if ng == 0:
                continue
            vg = v if ng == npos else v.index_select(1, g)
            sg = s if ng == npos else s[g]
            # change of the post-norm rows s .. s + K - 1 (K, ng, F)
            da = p_.norm_act(vg, i).sub_(act_i.window(sg, k)).view(k * ng, fdim)
            # row s + q feeds conv row s + q - j through tap j: window row q - j + K - 1 + o
            c = conv_i.window(2 * s_next[g], 2 * k)  # (2K, ng, F) cached
            for j in range(k):
                c[k - 1 + o - j: 2 * k - 1 + o - j].view(k * ng, fdim).addmm_(da, wtap[j])
            c = c.view(k, 2, ng, fdim)
            torch.maximum(c[:, 0], c[:, 1], out=v_next[:, col: col + ng])
            col += ng
        order = torch.cat([g for g in groups if g.shape[0]])
        v, s, ids = v_next, s_next[order], ids[order]
    # ---- GRU ------------------------------------------------------------------------------------
    xw = torch.addmm(p_.b_ih, p_.norm_act(v, nl).view(k * npos, fdim), p_.w_ih_t).view(k, npos, -1)
    # window rows outside [0, t_comp) are not data-dependent rows: not read here, so the window
    # reads rows first .. stop - 1 (none when first == stop == t_comp)
    first = s.clamp(min=0, max=t_comp)
    stop = torch.maximum(s + k, first).clamp(max=t_comp)
    if p_.backwards:
        u_start, u_end = steps - stop, steps - first
        order_q = range(k - 1, -1, -1)
    else:
        u_start, u_end = first, stop
        order_q = range(k)
    hstate = hc.index_select(0, u_start)  # cached state before the window
    for q in order_q:
        t = s + q
        live = (t >= 0) & (t < t_comp)
        if bool(live.all()):
            p_.cell_(xw[q], hstate)
        else:
            hstate = torch.where(live.unsqueeze(1), p_.cell_(xw[q], hstate.clone()), hstate)
    # the remaining steps read unperturbed inputs, shared by all perturbations past their window:
    # sorted by window end, those are a prefix of the batch
    order = torch.argsort(u_end)
    hstate = hstate[order]
    ends = u_end[order].tolist()
    m = 0
    for u in range(ends[0], steps):
        while m < npos and ends[m] <= u:
            m += 1
        p_.cell_(xpu[u], hstate[:m])
    state = torch.empty_like(hstate)
    state[ids[order]] = hstate
    return p_.head(state)
