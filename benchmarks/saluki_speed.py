"""Saluki CPU speed: training throughput and the eval-mode padding shortcut, against a baseline.

The baseline is the straightforward torch formulation (``nn.Conv1d`` on ``(B, C, T)`` with
permutes around ``nn.LayerNorm``, ``nn.Dropout``, ``F.max_pool1d``, ``nn.GRU`` over a flipped
tensor), holding the same weights as ``biolm.plugins.saluki.model.Saluki``. Everything is measured
in this one process, interleaved (baseline, ours, baseline, ...) so that load from other
processes hits both alike; the table shows the median and the best of the timed repeats.

Columns: samples/s; achieved GFLOP/s from an analytic count (convolutions ``2 K C_in C_out T_out``,
GRU input + recurrent matmuls, dense layers; x3 for forward + backward) and its share of the
float32 matmul peak timed here (4096 x 4096 matmul, best of several); "RSS +MB" is the largest
growth of the resident set during one timed call (sampled every 2 ms) over what was resident
before it (memory that an earlier run left resident and this one reuses is not counted).

    python benchmarks/saluki_speed.py            # batch 32 at 12,288 nt (~2-3 min)
    python benchmarks/saluki_speed.py --quick    # batch 8, fewer repeats (~40 s)
    python benchmarks/saluki_speed.py --tune-malloc   # both models: no mmap/trim in glibc malloc

``--tune-malloc`` keeps freed memory in the process (``mallopt(M_MMAP_MAX, 0)``,
``mallopt(M_TRIM_THRESHOLD, huge)``): torch has no CPU caching allocator, so every large
activation is otherwise a fresh ``mmap`` whose pages the kernel must fault in and zero.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time

import torch
import torch.nn.functional as F
from torch import nn

from biolm.plugins.saluki.model import Saluki, trunk_lengths


class BaselineSaluki(nn.Module):
    """Straightforward torch Saluki: channels-first convs, permutes for LayerNorm, nn.GRU on a flip."""

    def __init__(self, ref: Saluki):
        super().__init__()
        f, k = ref.filters, ref.kernel_size
        self.conv0 = nn.Conv1d(ref.in_channels, f, k, bias=False)
        self.lns = nn.ModuleList(nn.LayerNorm(f, eps=ref.ln_epsilon) for _ in range(ref.num_layers))
        self.convs = nn.ModuleList(nn.Conv1d(f, f, k) for _ in range(ref.num_layers))
        self.drop = nn.Dropout(ref.dropout)
        self.final_ln = nn.LayerNorm(f, eps=ref.ln_epsilon)
        self.gru = nn.GRU(f, f, batch_first=True)
        self.bn1 = nn.BatchNorm1d(f, eps=ref.bn_epsilon, momentum=1 - ref.bn_momentum)
        self.dense1 = nn.Linear(f, f)
        self.bn2 = nn.BatchNorm1d(f, eps=ref.bn_epsilon, momentum=1 - ref.bn_momentum)
        self.head = nn.Linear(f, ref.num_outputs)
        with torch.no_grad():
            self.conv0.weight.copy_(ref.conv0.weight)
            for ln, conv, blk in zip(self.lns, self.convs, ref.blocks):
                ln.load_state_dict(blk.ln.state_dict())
                conv.load_state_dict(blk.conv.state_dict())
            self.final_ln.load_state_dict(ref.final_ln.state_dict())
            self.gru.load_state_dict(ref.gru.state_dict())
            pairs = ((self.bn1, ref.bn1), (self.bn2, ref.bn2), (self.dense1, ref.dense1), (self.head, ref.head))
            for mine, theirs in pairs:
                mine.load_state_dict(theirs.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv0(x.permute(0, 2, 1))
        for ln, conv in zip(self.lns, self.convs):
            h = F.relu(ln(h.permute(0, 2, 1))).permute(0, 2, 1)
            h = F.max_pool1d(self.drop(conv(h)), 2)
        h = F.relu(self.final_ln(h.permute(0, 2, 1)))
        _, state = self.gru(torch.flip(h, [1]))
        h = self.drop(self.dense1(F.relu(self.bn1(state[0]))))
        return self.head(F.relu(self.bn2(h)))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tune_malloc() -> bool:
    """Make glibc malloc keep and reuse freed memory (see the module docstring)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def train_flops_per_sample(m: Saluki, length: int) -> float:
    """Analytic multiply-add FLOPs (x2) of one forward, x3 for forward + backward."""
    k, f = m.kernel_size, m.filters
    lens = trunk_lengths(length, k, m.num_layers)
    fl = 2 * k * m.in_channels * f * lens[0]
    t = lens[0]
    for i in range(m.num_layers):
        t = t - k + 1
        fl += 2 * k * f * f * t
        t //= 2
    fl += lens[-1] * (2 * f * 3 * f) * 2  # GRU input + recurrent projections
    fl += 2 * f * f + 2 * f * m.num_outputs
    return 3.0 * fl


def matmul_peak(n: int = 4096, reps: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


class RssSampler:
    """Peak resident set size while active (background thread, /proc/self/statm)."""

    def __init__(self, period: float = 0.002):
        self.period = period
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self.rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def make_batch(bsz: int, length: int, cin: int, lengths: list[int] | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(bsz, length, cin)
    idx = torch.randint(0, 4, (bsz, length), generator=g)
    x[:, :, :4] = F.one_hot(idx, 4).float()
    if cin > 4:
        x[:, ::3, 4] = 1.0
    if lengths is not None:
        for b, n in enumerate(lengths):
            x[b, n:] = 0.0
    return x


def train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.998))
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()

    return step


def timed(fns: dict, repeats: int) -> dict:
    """Interleaved timing; returns name -> (wall seconds, process CPU seconds, peak RSS growth MB)."""
    times = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    rss = {k: 0.0 for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            with RssSampler() as s:
                c = time.process_time()
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
            rss[name] = max(rss[name], s.growth_mb)
    return {k: (times[k], cpu[k], rss[k]) for k in fns}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=12288)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--eval-min", type=int, default=500)
    ap.add_argument("--eval-max", type=int, default=3000)
    ap.add_argument("--eval-repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="batch 8, 3 repeats, eval batch 32")
    ap.add_argument("--tune-malloc", action="store_true", help="glibc malloc without mmap/trim (both models)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.repeats, args.eval_batch, args.eval_repeats = 8, 3, 32, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = tune_malloc() if args.tune_malloc else False
    torch.manual_seed(0)

    ours = Saluki(6, seq_length=args.length)
    base = BaselineSaluki(ours)
    with torch.no_grad():  # same function before training starts (the two then train apart)
        xc = make_batch(4, args.length, 6, [args.length, 2000, 700, 0], seed=3)
        err_base = (base.eval()(xc) - ours.eval()(xc, shortcut=False)).abs().max().item()
    print(f"machine: {cpu_name()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}, "
          f"malloc tuned: {malloc}")
    peak = matmul_peak()

    # ---- training
    x = make_batch(args.batch, args.length, 6)
    y = torch.randn(args.batch, 1)
    fns = {"baseline": train_step_fn(base, x, y), "ours": train_step_fn(ours, x, y)}
    for fn in fns.values():
        fn()  # warm-up: oneDNN primitive creation, allocator
    res = timed(fns, args.repeats)
    peak = max(peak, matmul_peak())
    flops = train_flops_per_sample(ours, args.length)

    # ---- eval, short sequences in long blocks
    g = torch.Generator().manual_seed(1)
    lens = torch.randint(args.eval_min, args.eval_max + 1, (args.eval_batch,), generator=g).tolist()
    xe = make_batch(args.eval_batch, args.length, 6, lens, seed=2)
    le = torch.tensor(lens)
    ours.eval()
    base.eval()
    with torch.no_grad():
        full = ours(xe, shortcut=False)
        short = ours(xe, le)
        err = (full - short).abs().max().item()
        efns = {
            "eval baseline": lambda: base(xe),
            "eval ours full": lambda: ours(xe, shortcut=False),
            "eval ours shortcut": lambda: ours(xe, le),
        }
        eres = timed(efns, args.eval_repeats)

    # ---- table
    print(f"baseline vs ours, same weights, eval: max |diff| {err_base:.1e}")
    print(f"\nfloat32 matmul peak: {peak / 1e9:.1f} GFLOP/s; model: {flops / 3 / 1e9:.3f} GFLOP forward per sample")
    print(f"training: batch {args.batch} x {args.length} nt, Adam step, {args.repeats} interleaved repeats")
    hdr = (f"{'run':20s} {'samples/s med':>13s} {'best':>8s} {'GFLOP/s':>8s} {'% peak':>7s} "
           f"{'samples/CPU-s':>13s} {'RSS +MB':>8s}")

    def table(results: dict, bsz: int, fl: float) -> dict:
        print(hdr)
        print("-" * len(hdr))
        out = {}
        for name, (ts, cs, mb) in results.items():
            med = bsz / statistics.median(ts)
            gf = fl * med
            out[name] = (med, bsz / min(ts), bsz / statistics.median(cs))
            print(f"{name:20s} {med:13.2f} {out[name][1]:8.2f} {gf / 1e9:8.1f} {100 * gf / peak:6.1f}% "
                  f"{out[name][2]:13.2f} {mb:8.0f}")
        return out

    t = table(res, args.batch, flops)
    print(f"ours / baseline: {t['ours'][0] / t['baseline'][0]:.2f}x (median), {t['ours'][1] / t['baseline'][1]:.2f}x "
          f"(best), {t['ours'][2] / t['baseline'][2]:.2f}x (per CPU-second)")

    print(f"\neval: batch {args.eval_batch}, lengths {args.eval_min}-{args.eval_max} nt in {args.length}-nt blocks, "
          f"no_grad; max |diff| shortcut vs full {err:.1e}; GFLOP/s counts full-length work")
    e = table(eres, args.eval_batch, flops / 3)
    s, f, b = e["eval ours shortcut"], e["eval ours full"], e["eval baseline"]
    print(f"shortcut / full: {s[0] / f[0]:.1f}x (median), {s[1] / f[1]:.1f}x (best), {s[2] / f[2]:.1f}x "
          f"(per CPU-second); shortcut / baseline: {s[0] / b[0]:.1f}x (median)")


if __name__ == "__main__":
    main()
