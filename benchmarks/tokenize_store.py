"""Benchmark: parse + fit tokenizer + encode + build the HDF5 store, at N and scale*N sequences.

Each size runs in a fresh subprocess, so its peak RSS is its own. Targets: >= 5M tokens/s end
to end (hash + fit + build), peak RSS < 1 GB and not growing with the number of sequences.

    python benchmarks/tokenize_store.py                 # quick: 10,000 and 40,000 sequences
    python benchmarks/tokenize_store.py --n 100000 --scale 4
    python benchmarks/tokenize_store.py --n 20000 --gz  # gzip input

The generated file follows the reference format: tab-separated id, label, sequence; the sequence
is comma-separated lower/upper-case nucleotides with a few ``gej`` tokens, ~2,000 tokens each.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def generate(path: str, n: int, mean_tokens: int, seed: int = 0) -> int:
    """Write ``n`` sequences to ``path`` (streamed); return the total number of tokens."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("acgtACGT"), dtype=object)
    total = 0
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="\n") as f:
        buf = []
        for i in range(n):
            L = int(rng.integers(int(mean_tokens * 0.9), int(mean_tokens * 1.1) + 1))
            toks = letters[rng.integers(0, 8, L)].tolist()
            for p in rng.integers(0, L, 5).tolist():
                toks[p] = "gej"
            total += L
            buf.append(f"seq{i}\t{rng.random():.6f}\t{','.join(toks)}\n")
            if len(buf) >= 1000:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
    return total


def child(path: str, out: str) -> None:
    """Run the pipeline once on ``path`` and print a JSON line of timings and peak RSS."""
    from biolm.core.delimited import DelimitedOptions, ReadStats, read_records
    from biolm.core.store import Store, build_store, source_hash
    from biolm.core.atomic_tokenizer import AtomicTokenizer, encode_records

    opts = DelimitedOptions(path, columnsep="\t", tokensep=",", idpos=1, labelpos=2, seqpos=3, label_kind="float")
    t = {}
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    tok = AtomicTokenizer.fit(read_records(opts), tokensep=",")
    t["fit"] = time.perf_counter() - t0
    options = {**opts.parsing_options(), "blocksize": 12288, "lefttailing": True, "centertoken": None}
    t0 = time.perf_counter()
    h = source_hash(path, options, tok.sha())
    t["hash"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = ReadStats()
    recs = encode_records(read_records(opts, stats), tok, blocksize=12288)
    build_store(out, recs, {"source_hash": h}, tok.n_modifiers)
    t["build"] = time.perf_counter() - t0
    # CPU seconds of the pipeline: on a shared machine a steadier figure than wall time.
    t["cpu"] = time.process_time() - cpu0
    s = Store(out)
    n_tokens = s.meta["n_tokens"]
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    n_batches = 50
    for _ in range(n_batches):
        s.read_batch(rng.integers(0, len(s), 32))
    t["read_batch"] = (time.perf_counter() - t0) / n_batches
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "n": len(s),
                "tokens": int(n_tokens),
                "vocab": tok.vocab,
                "times": t,
                "peak_rss_mb": peak_kb / 1024,
                "input_mb": os.path.getsize(path) / 2**20,
                "store_mb": os.path.getsize(out) / 2**20,
            }
        )
    )


def run_size(tmp: str, n: int, mean_tokens: int, gz: bool) -> dict:
    path = os.path.join(tmp, f"data_{n}.tsv" + (".gz" if gz else ""))
    t0 = time.perf_counter()
    generate(path, n, mean_tokens)
    gen_s = time.perf_counter() - t0
    out = os.path.join(tmp, f"store_{n}.h5")
    res = subprocess.run(
        [sys.executable, __file__, "--child", path, out], check=True, capture_output=True, text=True
    )
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r["generate_s"] = gen_s
    os.unlink(path)
    os.unlink(out)
    return r


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="sequences in the base run (default 10,000 = --quick)")
    ap.add_argument("--scale", type=int, default=4, help="second run has scale*N sequences (0 = no second run)")
    ap.add_argument("--tokens", type=int, default=2000, help="mean tokens per sequence")
    ap.add_argument("--quick", action="store_true", help="N = 10,000 (the default)")
    ap.add_argument("--gz", action="store_true", help="gzip-compress the input file")
    ap.add_argument("--child", nargs=2, metavar=("DATA", "STORE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(*a.child)
        return
    n = a.n or 10_000
    sizes = [n] + ([n * a.scale] if a.scale and a.scale > 1 else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="biolm-bench-") as tmp:
        for size in sizes:
            r = run_size(tmp, size, a.tokens, a.gz)
            rows.append(r)
            print(f"  done N={size:,} (generation {r['generate_s']:.1f} s)", file=sys.stderr)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load:.1f}, python {sys.version.split()[0]}, "
        f"input {'gzip' if a.gz else 'plain'}, ~{a.tokens:,} tokens/sequence"
    )
    hdr = f"{'N':>9} {'tokens':>13} {'fit s':>7} {'hash s':>7} {'build s':>8} {'total s':>8} {'Mtok/s':>7} {'build Mtok/s':>12} {'cpu s':>6} {'Mtok/cpu-s':>10} {'peak RSS MB':>11} {'in MB':>8} {'store MB':>8} {'batch ms':>8}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        t = r["times"]
        total = t["fit"] + t["hash"] + t["build"]
        r["total"] = total
        r["mtps"] = r["tokens"] / total / 1e6
        print(
            f"{r['n']:>9,} {r['tokens']:>13,} {t['fit']:>7.2f} {t['hash']:>7.2f} {t['build']:>8.2f} {total:>8.2f} "
            f"{r['mtps']:>7.2f} {r['tokens'] / t['build'] / 1e6:>12.2f} {t['cpu']:>6.2f} {r['tokens'] / t['cpu'] / 1e6:>10.2f} "
            f"{r['peak_rss_mb']:>11.0f} "
            f"{r['input_mb']:>8.0f} {r['store_mb']:>8.1f} {t['read_batch'] * 1e3:>8.2f}"
        )
    if len(rows) == 2:
        a0, a1 = rows
        print(
            f"ratios {a1['n'] // a0['n']}x data: time x{a1['total'] / a0['total']:.2f}, "
            f"throughput x{a1['mtps'] / a0['mtps']:.2f}, peak RSS x{a1['peak_rss_mb'] / a0['peak_rss_mb']:.2f}"
        )
    ok_speed = all(r["mtps"] >= 5 for r in rows)
    ok_mem = all(r["peak_rss_mb"] < 1024 for r in rows)
    print(f"targets: >= 5M tokens/s {'OK' if ok_speed else 'MISSED'}; peak RSS < 1 GB {'OK' if ok_mem else 'MISSED'}")


if __name__ == "__main__":
    main()
