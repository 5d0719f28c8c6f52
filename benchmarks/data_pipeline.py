"""Benchmark: the data pipeline alone (HDF5 store -> padded batches -> one-hot on the device)
against the Saluki training step it feeds, at block size 12,288, measured in one run.

Target: the pipeline delivers >= 10x the model's training samples/s.

    python benchmarks/data_pipeline.py            # 600 transcripts of 500-3,000 nt, batch 32
    python benchmarks/data_pipeline.py --quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build(tmp: Path, n: int, blocksize: int):
    from biolm.core.delimited import DelimitedOptions, read_records
    from biolm.core.exampledata import write_dataset
    from biolm.core.store import Store, build_store
    from biolm.core.atomic_tokenizer import AtomicTokenizer, encode_records

    data = write_dataset(tmp / "rna.txt", n, seed=1, min_len=500, max_len=3000)
    opts = DelimitedOptions(str(data), columnsep="\t", tokensep=",", idpos=1, labelpos=3, seqpos=6)
    tok = AtomicTokenizer.fit(read_records(opts))
    build_store(tmp / "d.h5", encode_records(read_records(opts), tok, blocksize), {"source_hash": "bench"}, tok.n_modifiers)
    return Store(tmp / "d.h5"), tok


def pipeline_rate(store, tok, blocksize: int, batch: int, seconds: float) -> float:
    from biolm.core.batching import make_loader
    from biolm.core.atomic_tokenizer import onehot

    idx = np.arange(len(store))
    n, t0 = 0, time.perf_counter()
    epoch = 0
    while time.perf_counter() - t0 < seconds:
        for b in make_loader(store, idx, batch_size=batch, shuffle=True, seed=epoch, pad_to=blocksize):
            x = onehot(b["ids"], b["mods"], len(tok.vocab))
            n += x.shape[0]
        epoch += 1
    return n / (time.perf_counter() - t0)


def model_rate(in_channels: int, blocksize: int, batch: int, steps: int) -> float:
    from biolm.plugins.saluki.model import Saluki

    torch.manual_seed(0)
    m = Saluki(in_channels=in_channels, seq_length=blocksize)
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    x = torch.zeros(batch, blocksize, in_channels)
    x[:, :2000, 0] = 1
    y = torch.randn(batch, 1)
    m.train()
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()  # the first step warms up
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(m(x), y)
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--blocksize", type=int, default=12288)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.n = 200
    with tempfile.TemporaryDirectory() as d:
        store, tok = build(Path(d), a.n, a.blocksize)
        data = pipeline_rate(store, tok, a.blocksize, a.batch, seconds=5 if a.quick else 15)
        model = model_rate(tok.n_channels, a.blocksize, a.batch, steps=2 if a.quick else 4)
    print(f"{'what':<42} {'samples/s':>10}")
    print(f"{'data pipeline (store -> one-hot batches)':<42} {data:>10.1f}")
    print(f"{'saluki training step (fwd+bwd+Adam)':<42} {model:>10.1f}")
    print(f"ratio pipeline / model: {data / model:.1f}x (target >= 10x); block {a.blocksize}, batch {a.batch}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
