"""Benchmark: Geneformer cell-embedding extraction on CPU at the published sizes, with biolm's
plain-torch BERT (what ``biolm geneformer predict --saveembeddings`` runs per batch).

Architectures (the published ``config.json`` of the Hugging Face releases), random weights (speed
and memory do not depend on them):

- V2-104M: hidden 768, 12 layers, 12 heads, intermediate 3072, 4096 positions, vocab 20275
  (``<cls>`` + 4094 genes + ``<eos>``), ReLU, ~104 M parameters; ``cls`` embeddings.
- V1-10M: hidden 256, 6 layers, 4 heads, intermediate 512, 2048 positions, vocab 25426, ReLU;
  ``cell`` (mean) embeddings.

Cells are full length (no padding: the worst case) and Geneformer's default ``emb_layer -1`` is
used (the top layer is not run). Each configuration runs in a fresh process so its peak memory
(VmHWM: Python + torch + biolm + model + activations) is its own. ``CPU s/cell`` (process CPU
time over all threads) is less sensitive than wall time to other jobs on a shared machine;
``load`` is the 1-minute load average when the configuration started (above the thread count:
the timing was contended). Ratios are against the first configuration of the same model, measured
in the same run.

    python benchmarks/geneformer_cpu.py                 # V2 at 4096, V1 at 2048: batch 1/2/4, 1 and 2 threads
    python benchmarks/geneformer_cpu.py --quick         # V2 at 1024 and V1 at 2048, batch 1, 1 thread
    python benchmarks/geneformer_cpu.py --load-check    # also: write a random full-size V2 checkpoint, time its import
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ARCH = {
    "v2": dict(vocab_size=20275, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, max_position_embeddings=4096, hidden_act="relu", cls_token_id=2, eos_token_id=3),
    "v1": dict(vocab_size=25426, hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512, max_position_embeddings=2048, hidden_act="relu"),
}


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss not inherited from a parent)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def run_one(model: str, length: int, batch_size: int, threads: int, batches: int) -> dict:
    """One configuration, in this process."""
    import numpy as np
    import torch

    from biolm.plugins.geneformer.bert import GeneformerConfig, GeneformerEncoder
    from biolm.plugins.geneformer.embeddings import cell_embeddings

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rss_start = peak_rss_mb()
    enc = GeneformerEncoder(GeneformerConfig(**ARCH[model])).eval()
    rss_model = peak_rss_mb()
    rng = np.random.default_rng(0)
    v2 = model == "v2"

    def batch(n: int, b: int):
        rows = []
        for _ in range(b):
            genes = rng.choice(np.arange(4 if v2 else 2, ARCH[model]["vocab_size"]), size=n - (2 if v2 else 0), replace=False)
            rows.append(np.concatenate([[2], genes, [3]]) if v2 else genes)
        ids = torch.as_tensor(np.stack(rows))
        return ids, torch.ones_like(ids, dtype=torch.bool)

    with torch.no_grad():
        cell_embeddings(enc, *batch(64, 1))  # warm-up: kernels, allocator
        times, cpu = [], []
        load = os.getloadavg()[0]
        for _ in range(batches):
            ids, mask = batch(length, batch_size)
            t0, c0 = time.perf_counter(), time.process_time()
            emb = cell_embeddings(enc, ids, mask)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    assert emb.shape == (batch_size, ARCH[model]["hidden_size"]) and bool(torch.isfinite(emb).all())
    sec = statistics.median(times)
    return dict(
        model=model, length=length, batch_size=batch_size, threads=threads, params_m=sum(p.numel() for p in enc.parameters()) / 1e6,
        sec_per_batch=sec, cells_per_s=batch_size / sec, cpu_s_per_cell=statistics.median(cpu) / batch_size, load=load,
        rss_start_mb=rss_start, rss_model_mb=rss_model, rss_peak_mb=peak_rss_mb(), torch=torch.__version__,
    )


_WRITE = """
import json, os, sys
sys.path.insert(0, {here!r})
from geneformer_cpu import ARCH
from biolm.core.hookspecs import write_safetensors
from biolm.plugins.geneformer.bert import GeneformerConfig, GeneformerMLM
from biolm.plugins.geneformer.checkpoint_config import checkpoint_config_dict
arch = {{k: v for k, v in ARCH["v2"].items() if not k.endswith("_token_id")}}
m = GeneformerMLM(GeneformerConfig(**arch))
write_safetensors(os.path.join({d!r}, "model.safetensors"), {{k: v for k, v in m.state_dict().items() if not k.startswith("cls.predictions.decoder.")}}, {{"format": "pt"}})
json.dump(checkpoint_config_dict(m.config), open(os.path.join({d!r}, "config.json"), "w"))
"""

_LOAD = """
import json, sys, time
sys.path.insert(0, {here!r})
from geneformer_cpu import peak_rss_mb
import torch
before = peak_rss_mb()
from biolm.plugins.geneformer.weights_import import load_checkpoint
t = time.perf_counter()
ck = load_checkpoint({d!r})
print(json.dumps(dict(load_s=time.perf_counter() - t, rss_before_mb=before, rss_peak_mb=peak_rss_mb(), tensors=len(ck.report["loaded"]))))
"""


def load_check() -> dict:
    """Write a random full-size V2 checkpoint (config.json + model.safetensors) and import it, each
    in a fresh process (so the import's peak memory is its own)."""
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-c", _WRITE.format(here=here, d=d)], check=True)
        size = os.path.getsize(os.path.join(d, "model.safetensors")) / 2**20
        out = subprocess.run([sys.executable, "-c", _LOAD.format(here=here, d=d)], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), file_mb=size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="V2 at 1024 tokens and V1 at 2048, batch 1, 1 thread, 1 batch")
    ap.add_argument("--models", nargs="+", default=["v2", "v1"], choices=list(ARCH))
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batches", type=int, default=0, help="timed batches per configuration (default: 1 for V2, 3 for V1)")
    ap.add_argument("--load-check", action="store_true", help="also time the import of a full-size V2 safetensors checkpoint")
    ap.add_argument("--one", nargs=5, metavar=("MODEL", "LEN", "BS", "THREADS", "BATCHES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        m, n, b, t, k = args.one
        print(json.dumps(run_one(m, int(n), int(b), int(t), int(k))))
        return
    if args.quick:
        args.batch_sizes, args.threads, args.batches = [1], [1], 1
    print(f"{'model':6s} {'tokens':>6s} {'bs':>3s} {'thr':>3s} {'s/batch':>8s} {'cells/s':>8s} {'ratio':>6s} {'CPU s/cell':>10s} {'base MB':>8s} {'+model MB':>9s} {'peak MB':>8s} {'load':>5s}", flush=True)
    rows = []
    for model in args.models:
        length = 1024 if args.quick and model == "v2" else ARCH[model]["max_position_embeddings"]
        first = None
        for threads in args.threads:
            for bs in args.batch_sizes:
                env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
                cmd = [sys.executable, os.path.abspath(__file__), "--one", model, str(length), str(bs), str(threads), str(args.batches or (1 if model == "v2" else 3))]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode:
                    print(f"{model} bs {bs} threads {threads}: failed\n{out.stderr[-2000:]}", flush=True)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                first = first or r
                rows.append(r)
                print(
                    f"{model:6s} {length:6d} {bs:3d} {threads:3d} {r['sec_per_batch']:8.2f} {r['cells_per_s']:8.3f} {r['cells_per_s'] / first['cells_per_s']:6.2f} "
                    f"{r['cpu_s_per_cell']:10.2f} {r['rss_start_mb']:8.0f} {r['rss_model_mb']:9.0f} {r['rss_peak_mb']:8.0f} {r['load']:5.1f}",
                    flush=True,
                )
    if args.load_check:
        r = load_check()
        print(f"\nV2-104M import from model.safetensors ({r['file_mb']:.0f} MB): {r['load_s']:.1f} s, peak RSS {r['rss_peak_mb']:.0f} MB (python + torch before: {r['rss_before_mb']:.0f} MB), {r['tensors']} tensors")
    if rows:
        params = ", ".join(f"{m} {r['params_m']:.1f}M" for m, r in {r['model']: r for r in rows}.items())
        print(f"\n(torch {rows[0]['torch']}, {os.cpu_count()} CPUs; parameters: {params})")


if __name__ == "__main__":
    main()
