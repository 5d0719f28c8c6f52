"""Benchmark: a large sparse .h5ad through the ``expression`` tokenizer into the feature store.

Generates an AnnData file of N cells x G genes, CSR, ~5 % non-zero counts (streamed to disk,
never held densely), then in a fresh subprocess per size runs what ``biolm pca tokenize`` +
the store build of ``fine-tune`` do: learn the gene list, read the cells in CSR chunks, match
genes by id, write the store's sparse feature records. Printed: cells/s, peak RSS, the size the
dense matrix would have, store size and the time to read 64 cells as a dense batch (random ones,
as a shuffled training batch; consecutive ones, as the one-pass PCA fit reads them); ratios
between the two sizes are from one run.

    python benchmarks/expression_store.py --quick        # 10,000 and 40,000 cells x 20,000 genes
    python benchmarks/expression_store.py                # 25,000 and 100,000 cells x 20,000 genes

Target (issue 10): 100,000 x 20,000 at ~5 % never loaded densely: peak RSS far below the 8 GB
dense matrix and flat in N.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def generate(path: str, n_cells: int, n_genes: int, density: float, seed: int = 0, chunk: int = 2000) -> int:
    """Write a CSR ``.h5ad`` chunk by chunk; returns the number of non-zeros."""
    import h5py

    from biolm.core.h5ad import _write_frame  # the benchmark writes anndata's layout itself, streamed

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        x = f.create_group("X")
        x.attrs["encoding-type"], x.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        x.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
        data = x.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 18,))
        indices = x.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 18,))
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        nnz = 0
        for lo in range(0, n_cells, chunk):
            n = min(chunk, n_cells - lo)
            rows, cols = np.nonzero(rng.random((n, n_genes), dtype=np.float32) < density)
            vals = (rng.poisson(1.5, len(cols)) + 1).astype(np.float32)
            indptr[lo + 1 : lo + n + 1] = nnz + np.cumsum(np.bincount(rows, minlength=n))
            data.resize((nnz + len(cols),))
            indices.resize((nnz + len(cols),))
            data[nnz:] = vals
            indices[nnz:] = cols.astype(np.int32)
            nnz += len(cols)
        x.create_dataset("indptr", data=indptr)
        _write_frame(f, "obs", np.array([f"cell{i}" for i in range(n_cells)]), {"split": np.array([str(i % 5) for i in range(n_cells)])}, {"split"})
        _write_frame(f, "var", np.array([f"ENSG{j:011d}" for j in range(n_genes)]), {}, set())
    return nnz


class _Source:
    def __init__(self, path: str):
        self.filepath = path
        self.labelcolumn = None
        self.splitcolumn = "split"
        self.layer = self.genecolumn = self.weightcolumn = None


def peak_rss() -> int:
    """Peak resident memory of this process in bytes: VmHWM, which a new program starts afresh
    (ru_maxrss also counts the pages of the parent this process was forked from)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(path: str, out: str) -> None:
    """Tokenizer + store build on ``path``; prints one JSON line."""
    import logging

    from biolm.core import expression_tokenizer as kind
    from biolm.core.store import Store, build_store, source_hash

    log = logging.getLogger("bench")
    src = _Source(path)
    cpu0, t0 = time.process_time(), time.perf_counter()
    tok = kind.fit(src, None, log)
    t_fit = time.perf_counter() - t0
    records, options = kind.encode(tok, src, None, log, None)
    t1 = time.perf_counter()
    digest = source_hash(path, options, tok.sha())
    t_hash = time.perf_counter() - t1
    t2 = time.perf_counter()
    build_store(out, records, {"source_hash": digest}, 1, feature_shape=tok.shape)
    t_build = time.perf_counter() - t2
    cpu = time.process_time() - cpu0
    s = Store(out)
    rng = np.random.default_rng(0)
    t3 = time.perf_counter()
    for _ in range(20):
        s.read_features(np.sort(rng.choice(len(s), 64, replace=False)))
    t_read = (time.perf_counter() - t3) / 20
    t4 = time.perf_counter()
    for start in rng.integers(0, len(s) - 64, 20):
        s.read_features(np.arange(start, start + 64))
    t_seq = (time.perf_counter() - t4) / 20
    print(json.dumps({"cells": len(s), "fit": t_fit, "hash": t_hash, "build": t_build, "cpu": cpu, "read64": t_read, "read64_seq": t_seq, "rss": peak_rss(), "store": os.path.getsize(out)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10,000 and 40,000 cells")
    ap.add_argument("--n", type=int, default=None, help="cells of the larger file (default 100,000; quick 40,000)")
    ap.add_argument("--genes", type=int, default=20000)
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    big = a.n or (40000 if a.quick else 100000)
    sizes = [big // 4, big]
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        for n in sizes:
            h5ad = os.path.join(d, f"cells{n}.h5ad")
            t0 = time.perf_counter()
            nnz = generate(h5ad, n, a.genes, a.density)
            print(f"generated {n:,} x {a.genes:,} CSR, {nnz:,} non-zeros ({nnz / (n * a.genes):.1%}) in {time.perf_counter() - t0:.0f} s; file {os.path.getsize(h5ad) / 1e9:.2f} GB", flush=True)
            p = subprocess.run([sys.executable, __file__, "--child", h5ad, os.path.join(d, f"store{n}.h5")], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if p.returncode:
                sys.exit(p.stderr)
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r.update(n=n, nnz=nnz, dense=n * a.genes * 4)
            rows.append(r)
            os.unlink(h5ad)
    print()
    print("| cells | non-zeros | dense matrix | total s | cells/s | CPU s | peak RSS | store size | 64 random / consecutive cells read |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        total = r["fit"] + r["hash"] + r["build"]
        print(f"| {r['n']:,} | {r['nnz'] / 1e6:.0f} M | {r['dense'] / 1e9:.1f} GB | {total:.1f} | {r['n'] / total:,.0f} | {r['cpu']:.1f} | {r['rss'] / 1e6:.0f} MB | {r['store'] / 1e6:.0f} MB | {r['read64'] * 1e3:.1f} / {r['read64_seq'] * 1e3:.1f} ms |")
    a0, b0 = rows
    ta, tb = (x["fit"] + x["hash"] + x["build"] for x in rows)
    print(f"\n{b0['n'] // a0['n']}x the cells: time x{tb / ta:.2f}, cells/s x{(b0['n'] / tb) / (a0['n'] / ta):.2f}, peak RSS x{b0['rss'] / a0['rss']:.2f}; peak RSS / dense matrix = {b0['rss'] / b0['dense']:.3f}")


if __name__ == "__main__":
    main()
