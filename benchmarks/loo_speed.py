"""Benchmark: leave-one-out speed.

1. Saluki ``mask``/``replace``: the plugin's fast routine (reuses the unperturbed activations,
   recomputes only the window each single-position change touches) against batched full forward
   passes of every perturbed input (same batch size, same device), at 1,024 / 2,048 / 4,096 /
   12,288 tokens, with the max |difference| of the scores.
2. LOO positions/s of every plugin through ``biolm PLUGIN interpret`` on the example data.

    python benchmarks/loo_speed.py            # full table
    python benchmarks/loo_speed.py --quick    # 1,024 / 2,048 only, fewer positions
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def saluki_case(length: int, n_real: int, n_pos: int, batch: int, seed: int = 0) -> dict:
    from biolm.core.hookspecs import ModelInfo
    from biolm.plugins.saluki import SalukiSchema, _build, _fast_loo

    torch.manual_seed(seed)
    C = 16
    model = _build(SalukiSchema(), ModelInfo("regression", 1, C, length)).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    rng = np.random.default_rng(seed)
    x = torch.zeros(1, length, C)
    x[0, torch.arange(n_real), torch.as_tensor(rng.integers(0, C, n_real))] = 1
    inp = {"x": x, "lengths": torch.tensor([n_real])}
    positions = torch.as_tensor(np.sort(rng.choice(n_real, size=min(n_pos, n_real), replace=False)))
    rows = torch.zeros(len(positions), C)
    rows[torch.arange(len(positions)), torch.as_tensor(rng.integers(0, C, len(positions)))] = 1
    with torch.no_grad():
        t0 = time.perf_counter()
        outs = []
        for s in range(0, len(positions), batch):
            p = positions[s : s + batch]
            xb = x.repeat(len(p), 1, 1)
            xb[torch.arange(len(p)), p] = rows[s : s + batch]
            outs.append(model({"x": xb, "lengths": inp["lengths"].repeat(len(p))}))
        base = torch.cat(outs)
        t_base = time.perf_counter() - t0
        t0 = time.perf_counter()
        fast = _fast_loo(model, inp, n_real, positions, rows)
        t_fast = time.perf_counter() - t0
    return {"length": length, "real": n_real, "positions": len(positions), "baseline_pos_s": len(positions) / t_base, "fast_pos_s": len(positions) / t_fast, "speedup": t_base / t_fast, "max_abs_diff": float((base - fast).abs().max())}


def plugin_rates(quick: bool) -> list[tuple[str, float]]:
    from biolm.core.exampledata import write_dataset
    from biolm.core.runner import run

    out = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        data = write_dataset(d / "rna.txt", 60, seed=2, min_len=150, max_len=400)
        src = {"filepath": str(data), "columnsep": "\t", "tokensep": ",", "idpos": 1, "seqpos": 6}
        for plugin, model in (("saluki", {}), ("lcl", {"kernel_width": 8, "cutoff": 256}), ("psam", {"kernel_size": 6}), ("pca", {"n_components": 8})):
            import yaml

            cfg = {
                "outputpath": str(d / plugin),
                "fine-tuning data source": dict(src, labelpos=3, splitratio="70,30"),
                "inference data source": dict(src, labelpos=3),
                "inference model": {"pretrainedmodel": str(d / plugin / "fine-tune")},
                "settings": {"training": {"batchsize": 16, "blocksize": 512, "nepochs": 1}},
                "looscores": {"handletokens": "mask"},
                "model": model,
            }
            p = d / f"{plugin}.yaml"
            p.write_text(yaml.safe_dump(cfg))
            run(plugin, "fine-tune", task="regression", configfile=p, quiet=True)
            r = run(plugin, "interpret", task="regression", configfile=p, quiet=True, cli_values={"inference_source.filepath": str(data)} if not quick else {})
            out.append((plugin, r.summary["metrics"]["positions_per_s"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    lengths = (1024, 2048) if a.quick else (1024, 2048, 4096, 12288)
    print("saluki leave-one-out, mask/replace (single-position changes), CPU")
    print(f"{'tokens':>7} {'real':>6} {'positions':>9} {'baseline pos/s':>15} {'fast pos/s':>11} {'speed-up':>9} {'max|diff|':>10}")
    for L in lengths:
        n_real = min(L, 2000) if L > 2048 else L
        r = saluki_case(L, n_real, 128 if a.quick else 256, a.batch)
        print(f"{r['length']:>7} {r['real']:>6} {r['positions']:>9} {r['baseline_pos_s']:>15.1f} {r['fast_pos_s']:>11.1f} {r['speedup']:>8.1f}x {r['max_abs_diff']:>10.2e}")
    print("\nLOO positions/s through `biolm PLUGIN interpret` (mask, block 512, example data)")
    for plugin, rate in plugin_rates(a.quick):
        print(f"{plugin:<10} {rate:>10.1f}")


if __name__ == "__main__":
    main()
