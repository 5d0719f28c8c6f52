"""Benchmark: what the dataset store's integrity costs.

Three things protect a store: Fletcher-32 checksums per chunk (a damaged chunk is a read error,
not wrong token ids), writing through :class:`~biolm.core.outputs.GuardedFile` (a full disk is a
clean error, not a crashed interpreter) and :func:`~biolm.core.store.verify_store` when a store is
reused (a damaged one is rebuilt). This prints, measured in one run on the same records: the
build without either of the first two, the build as biolm does it, the verification, and the
sha256 of the text input (which every run hashes anyway), with ratios.

    python benchmarks/store_integrity.py            # 10,000 records of ~2,000 tokens
    python benchmarks/store_integrity.py --n 40000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from types import SimpleNamespace

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import h5py

    from biolm.core import outputs
    from biolm.core.store import EncodedRecord, build_store, file_sha256, verify_store

    rng = np.random.default_rng(0)
    lengths = rng.integers(1800, 2200, args.n)
    records = [EncodedRecord(f"seq{i}", rng.integers(0, 12, L, dtype=np.int32), np.zeros((L, 0), np.float32), f"{rng.random():.4f}") for i, L in enumerate(lengths)]
    n_tokens = sum(len(r.ids) for r in records)

    @contextlib.contextmanager
    def unprotected():
        """Plain HDF5 file, no checksums: the build as it was before."""
        real_create, real_hdf5 = h5py.Group.create_dataset, outputs.atomic_hdf5

        def create(self, *a, **kw):
            kw["fletcher32"] = False
            return real_create(self, *a, **kw)

        @contextlib.contextmanager
        def plain(path):
            with outputs.atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
                yield f, SimpleNamespace(error=None)

        h5py.Group.create_dataset, outputs.atomic_hdf5 = create, plain
        try:
            yield
        finally:
            h5py.Group.create_dataset, outputs.atomic_hdf5 = real_create, real_hdf5

    with tempfile.TemporaryDirectory() as d:
        text = os.path.join(d, "input.txt")
        letters = np.array(list("acgtACGTnNej"))
        with open(text, "w") as fh:
            for r in records:
                fh.write(f"{r.id}\t{r.label}\t{','.join(letters[r.ids])}\n")
        times: dict[str, list[float]] = {"build, unprotected": [], "build (checksums + guarded file)": [], "verify_store": [], "sha256 of the text input": []}
        for k in range(args.repeat):
            p_plain, p_safe = os.path.join(d, f"plain{k}.h5"), os.path.join(d, f"safe{k}.h5")
            with unprotected():
                t = time.perf_counter()
                build_store(p_plain, records, {"source_hash": "x"}, 0)
                times["build, unprotected"].append(time.perf_counter() - t)
            t = time.perf_counter()
            build_store(p_safe, records, {"source_hash": "x"}, 0)
            times["build (checksums + guarded file)"].append(time.perf_counter() - t)
            t = time.perf_counter()
            assert verify_store(p_safe) is None
            times["verify_store"].append(time.perf_counter() - t)
            t = time.perf_counter()
            file_sha256(text)
            times["sha256 of the text input"].append(time.perf_counter() - t)
        size = os.path.getsize(os.path.join(d, "safe0.h5")) / 2**20
        text_size = os.path.getsize(text) / 2**20
    best = {k: min(v) for k, v in times.items()}
    print(f"{args.n:,} records, {n_tokens / 1e6:.1f} M tokens; store {size:.0f} MiB, text input {text_size:.0f} MiB; best of {args.repeat}")
    print("| step | s | M tokens/s |\n|---|---|---|")
    for k, v in best.items():
        print(f"| {k} | {v:.3f} | {n_tokens / v / 1e6:.0f} |")
    base = best["build, unprotected"]
    print(f"\nbuild overhead of checksums + guard: x{best['build (checksums + guarded file)'] / base:.2f}")
    print(f"verify / build: x{best['verify_store'] / best['build (checksums + guarded file)']:.2f};  verify / input hash: x{best['verify_store'] / best['sha256 of the text input']:.1f}")


if __name__ == "__main__":
    main()
