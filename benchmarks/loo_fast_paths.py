"""Benchmark: the plugins' exact fast leave-one-out routines vs the core's fallback (saturation workload).

For every case one sequence of realistic length gets every alternative token at every position
(``replace`` with 3 alternatives per position: the other letters of the same case), i.e.
positions x alternatives perturbations. Both paths are driven as ``biolm.core.perturb`` drives
them:

* fallback = ``full_forward_scores``: ``perturb`` the token ids, one-hot them with the atomic
  tokenizer's ``make_input``, run the model, in chunks of ``min(maxpositions=4096,
  16e6 / (4 L C))`` copies. It is timed on an evenly spaced subset (``--fallback-max``
  perturbations, default 1024; its cost per copy does not depend on the position).
* fast = ``fast_fold_outputs``: the new rows made by ``make_input`` from one-token batches, then the
  plugin's ``fast_loo(model, inp, n, positions, rows)`` on all perturbations.

Both are timed interleaved ``--repeats`` times in this one process, short calls back to back for
>= 0.1 s per timing; with one thread by the thread's CPU time (the machine is shared: time spent
preempted is not work), with more by the wall clock. The table shows the best repeat of each;
ratios are what to compare. ``max|diff|`` is measured on the
fallback subset. psam and pca compute in float64 internally, so their difference is the float32
fallback's own rounding; ``|diff| f64`` compares with the model run in float64.

Saluki: its fast routine on all positions x 3 alternatives in one call (positions repeated),
against the same routine run once per alternative (3 replace scans).

    python benchmarks/loo_fast_paths.py              # 1 thread (~2-4 min on a quiet machine)
    python benchmarks/loo_fast_paths.py --threads 2
    python benchmarks/loo_fast_paths.py --quick      # fewer repeats, smaller fallback subset
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from biolm.core.atomic_tokenizer import make_input as _make_input
from biolm.core.hookspecs import ModelInfo
from biolm.core.perturb import perturb
from biolm.plugins.lcl import fastloo as lcl_fastloo
from biolm.plugins.pca import fastloo as pca_fastloo
from biolm.plugins.psam import fastloo as psam_fastloo

VOCAB = ["A", "C", "G", "T", "a", "c", "g", "t"]  # upper-case codon starts, lower-case rest


class Tok:
    vocab = VOCAB


# ------------------------------------------------------------------------------------------------
# the core's two paths
# ------------------------------------------------------------------------------------------------


def sequence(L: int, n: int, seed: int):
    """Token ids (L,) (-1 = padding), no modifiers (L, 0), and the 3 alternatives of every position."""
    rng = np.random.default_rng(seed)
    ids = torch.full((L,), -1, dtype=torch.long)
    ids[:n] = torch.as_tensor(rng.integers(0, len(VOCAB), n))
    mods = torch.zeros(L, 0)
    pos = np.repeat(np.arange(n), 3)
    shift = np.tile([1, 2, 3], n)
    cur = ids[:n].numpy()[pos]
    rids = (cur // 4) * 4 + (cur % 4 + shift) % 4  # the other letters of the same case
    return ids, mods, pos, rids


def core_fallback(model, ids, mods, n, pos, rids, maxpositions: int = 4096) -> torch.Tensor:
    """``perturb.full_forward_scores`` for one fold (no ensemble wrapper)."""
    L, C = ids.shape[0], len(VOCAB) + mods.shape[-1]
    chunk = int(max(1, min(maxpositions, 16_000_000 // (4 * L * C))))
    zmods = np.zeros(len(pos), dtype=bool)
    outs = []
    for s in range(0, len(pos), chunk):
        sl = slice(s, s + chunk)
        p_ids, p_mods, p_len = perturb(ids, mods, n, pos[sl], "replace", rids[sl], zmods[sl])
        outs.append(model(_make_input(Tok, {"ids": p_ids, "mods": p_mods, "lengths": p_len}, None)))
    return torch.cat(outs)


def core_fast(fast, model, ids, mods, n, pos, rids) -> torch.Tensor:
    """``perturb.fast_fold_outputs`` for one fold: new rows from one-token batches, then the plugin routine."""
    base_inp = _make_input(Tok, {"ids": ids[None], "mods": mods[None], "lengths": torch.tensor([n])}, None)
    p = torch.as_tensor(pos)
    row_ids = torch.as_tensor(rids)
    rows = _make_input(Tok, {"ids": row_ids[:, None], "mods": mods[p][:, None, :],
                             "lengths": torch.ones(len(p), dtype=torch.long)}, None)["x"][:, 0, :]
    return fast(model, base_inp, n, p, rows)


CLOCK = time.perf_counter  # main() switches to the thread's CPU time for one-thread runs


def best_of(fns: dict, repeats: int, min_time: float = 0.1) -> tuple[dict, dict]:
    """Interleaved timing: name -> best seconds per call, and name -> last result. Calls shorter
    than ``min_time`` are repeated back to back within a repeat (timer and scheduler noise)."""
    best = {k: float("inf") for k in fns}
    out, reps = {}, {}
    with torch.no_grad():
        for k, f in fns.items():  # warm-up, and how many calls make one timing
            t0 = CLOCK()
            out[k] = f()
            reps[k] = max(1, int(min_time / max(CLOCK() - t0, 1e-6)))
        for _ in range(repeats):
            for k, f in fns.items():
                t0 = CLOCK()
                for _ in range(reps[k]):
                    out[k] = f()
                best[k] = min(best[k], (CLOCK() - t0) / reps[k])
    return best, out


def compare(name: str, model, fast, L: int, n: int, args, model64=None, seed: int = 0) -> dict:
    ids, mods, pos, rids = sequence(L, n, seed)
    sub = np.unique(np.linspace(0, len(pos) - 1, min(len(pos), args.fallback_max)).astype(int))
    t, out = best_of({
        "fallback": lambda: core_fallback(model, ids, mods, n, pos[sub], rids[sub]),
        "fast": lambda: core_fast(fast, model, ids, mods, n, pos, rids),
    }, args.repeats)
    fb_rate = len(sub) / t["fallback"]
    fast_rate = len(pos) / t["fast"]
    row = {"case": name, "L": L, "perturbations": len(pos), "fallback/s": fb_rate, "fast/s": fast_rate,
           "ratio": fast_rate / fb_rate, "diff": float((out["fast"][sub] - out["fallback"]).abs().max())}
    if model64 is not None:
        with torch.no_grad():
            ref = core_fallback(model64, ids, mods, n, pos[sub], rids[sub]).double()
        row["diff64"] = float((out["fast"][sub].double() - ref).abs().max())
    return row


# ------------------------------------------------------------------------------------------------
# models (random weights, as in the tests)
# ------------------------------------------------------------------------------------------------


def psam_model(L: int, **cfg):
    """Random betas, biases, position bias and Hill coefficients."""
    from biolm.plugins.psam import PSAMSchema, _build

    torch.manual_seed(0)
    model = _build(PSAMSchema(**cfg), ModelInfo("regression", 1, len(VOCAB), L, tokenizer=Tok())).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mode in model.net.modes:
            conv, psam = mode.layers[0], mode.layers[0].layer_spec
            psam.monomer.copy_(torch.randn(psam.monomer.shape, generator=g))
            psam.pairwise.copy_(0.5 * torch.randn(psam.pairwise.shape, generator=g))
            conv.log_posbias.copy_(torch.randn(conv.log_posbias.shape, generator=g) if conv.train_posbias else 0)
            mode.log_hill.fill_(0.2)
        model.net.head.weight.normal_(generator=g)
    return model


def lcl_model(L: int, **cfg):
    """Weights large enough that one position moves the prediction (EIR's init barely does)."""
    from biolm.plugins.lcl import LCLSchema, _build

    torch.manual_seed(0)
    model = _build(LCLSchema(**cfg), ModelInfo("regression", 1, len(VOCAB), L)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gamma" in name or ("norm" in name and "weight" in name):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif p.dim() == 3 and "pos_emb" not in name:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model


def pca_model(L: int, k: int = 16):
    from biolm.plugins.pca import PCASchema, _build

    torch.manual_seed(0)
    model = _build(PCASchema(n_components=k), ModelInfo("regression", 1, len(VOCAB), L)).eval()
    g = torch.Generator().manual_seed(0)
    X = torch.nn.functional.one_hot(torch.randint(0, len(VOCAB), (96, L), generator=g), len(VOCAB)).float()
    model.net.partial_fit(X)
    z = model.net.embed(X)
    model.net.fit_head(z, z[:, :3].sum(1) + 0.1 * torch.randn(96, generator=g), task="regression")
    return model


def saluki_model(L: int):
    from biolm.plugins.saluki import SalukiSchema, _build

    torch.manual_seed(0)
    model = _build(SalukiSchema(), ModelInfo("regression", 1, len(VOCAB), L)).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    return model


def saluki_saturation(L: int, n: int, args) -> dict:
    """Saluki's routine once per alternative (3 replace scans) vs once with repeated positions, and
    the fallback on a subset."""
    from biolm.plugins.saluki.fastloo import fast_loo as original

    model = saluki_model(L)
    ids, mods, pos, rids = sequence(L, n, 1)
    per_alt = [(pos[a::3], rids[a::3]) for a in range(3)]
    sub = np.unique(np.linspace(0, len(pos) - 1, min(len(pos), args.fallback_max // 4)).astype(int))
    t, out = best_of({
        "fallback": lambda: core_fallback(model, ids, mods, n, pos[sub], rids[sub]),
        "3 replace scans": lambda: torch.stack(
            [core_fast(original, model, ids, mods, n, p, r) for p, r in per_alt], 1).reshape(len(pos), -1),
        "1 call with repeated positions": lambda: core_fast(original, model, ids, mods, n, pos, rids),
    }, args.repeats)
    rates = {k: (len(sub) if k == "fallback" else len(pos)) / v for k, v in t.items()}
    diff = float((out["1 call with repeated positions"][sub] - out["fallback"]).abs().max())
    same = float((out["1 call with repeated positions"] - out["3 replace scans"]).abs().max())
    return {"L": L, "perturbations": len(pos), "rates": rates, "diff": diff, "diff_vs_original": same}


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fallback-max", type=int, default=1024, help="perturbations the fallback is timed on")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated subset of psam,lcl,pca,saluki")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.fallback_max = 2, 512
    torch.set_num_threads(args.threads)
    global CLOCK
    # one thread: every op runs on this thread, so its CPU time is the work done, whatever else the
    # (shared) machine runs; with more threads the wall clock is the only fair measure
    CLOCK = time.thread_time if args.threads == 1 else time.perf_counter
    only = set(args.only.split(",")) if args.only else {"psam", "lcl", "pca", "saluki"}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.2f}, clock {'thread CPU time' if args.threads == 1 else 'wall'}; vocabulary {len(VOCAB)} tokens, 3 alternatives per position")
    rows = []
    if "psam" in only:
        cfg = dict(kernel_size=8, n_modes=2, pairwise_distance=2, train_posbias=True)
        m = psam_model(1000, **cfg)
        rows.append(compare("psam 2 modes, pairwise 2, posbias, both strands", m, psam_fastloo.fast_loo, 1000, 1000,
                            args, model64=psam_model(1000, **cfg).double()))
        m = psam_model(1000, kernel_size=8)
        rows.append(compare("psam 1 mode, defaults", m, psam_fastloo.fast_loo, 1000, 1000, args,
                            model64=psam_model(1000, kernel_size=8).double()))
    if "lcl" in only:
        for L, cfg, label in [(512, dict(), "defaults (kw 12, cutoff 1024)"),
                              (1024, dict(), "defaults (kw 12, cutoff 1024)"),
                              (512, dict(kernel_width=8, cutoff=256), "kw 8, cutoff 256 (2 blocks)"),
                              (1024, dict(kernel_width=8, cutoff=256), "kw 8, cutoff 256 (3 blocks)"),
                              (1024, dict(attention_inclusion_cutoff=256), "defaults + attention block")]:
            rows.append(compare(f"lcl {label}", lcl_model(L, **cfg), lcl_fastloo.fast_loo, L, L, args))
    if "pca" in only:
        m = pca_model(1000)
        rows.append(compare("pca 16 components", m, pca_fastloo.fast_loo, 1000, 1000, args,
                            model64=pca_model(1000).double()))
    if rows:
        print(f"\n{'case':52s} {'L':>5s} {'pos x alt':>9s} {'fallback/s':>11s} {'fast/s':>10s} {'ratio':>8s} "
              f"{'max|diff|':>9s} {'|diff| f64':>10s}")
        for r in rows:
            d64 = f"{r['diff64']:.1e}" if "diff64" in r else "-"
            print(f"{r['case']:52s} {r['L']:5d} {r['perturbations']:9d} {r['fallback/s']:11.0f} {r['fast/s']:10.0f} "
                  f"{r['ratio']:7.1f}x {r['diff']:9.1e} {d64:>10s}")
    if "saluki" in only:
        print("\nsaluki saturation (default Saluki, every position x 3 alternatives), positions x alternatives / s")
        for L in (1024, 2048):
            r = saluki_saturation(L, L, args)
            base = r["rates"]["3 replace scans"]
            for k, v in r["rates"].items():
                print(f"  L={L:5d} {k:32s} {v:10.0f}/s  {v / base:5.2f}x vs 3 replace scans")
            print(f"  L={L:5d} max|diff| one call vs fallback {r['diff']:.1e}, vs 3 scans "
                  f"{r['diff_vs_original']:.1e}")


if __name__ == "__main__":
    main()
