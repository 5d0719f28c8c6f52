"""Benchmark: leave-one-out speed.

1. Saluki ``mask``/``replace``: the plugin's fast routine (reuses the unperturbed activations,
   recomputes only the window each single-position change touches) against batched full forward
   passes of every perturbed input (same batch size, same device), at 1,024 / 2,048 / 4,096 /
   12,288 tokens, with the max |difference| of the scores.
2. LOO positions/s of every plugin through ``biolm PLUGIN interpret`` on the example data.
3. Saturation mutagenesis and variant effects of every plugin at 1,000+ tokens (a model trained
   for one epoch), through the core's own code paths (``LooScorer``, ``VariantScorer``):
   positions x alternatives (or variants) per second with the plugin's ``fast_loo`` and with the
   batched full forward fallback, and the max |difference| of their scores.
4. Memory of ``biolm pca interpret --handletokens saturate`` (each run in its own process) at N
   and 4N sequences: peak RSS must stay flat.

    python benchmarks/loo_speed.py            # full table
    python benchmarks/loo_speed.py --quick    # 1,024 / 2,048 only, fewer positions
    python benchmarks/loo_speed.py --only saturate,variants,memory
"""

from __future__ import annotations

import argparse
import contextlib
import io
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


MODELS = (("saluki", {}), ("lcl", {"kernel_width": 8, "cutoff": 256}), ("psam", {"kernel_size": 6}), ("pca", {"n_components": 8}))


def trained(d: Path, plugin: str, model: dict, data: Path, block: int, handletokens: str = "mask") -> Path:
    """Fine-tune ``plugin`` for one epoch on ``data``; returns the config (inference on ``data``)."""
    import yaml

    from biolm.core.runner import run

    src = {"filepath": str(data), "columnsep": "\t", "tokensep": ",", "idpos": 1, "seqpos": 6}
    cfg = {
        "outputpath": str(d / plugin),
        "fine-tuning data source": dict(src, labelpos=3, splitratio="70,30"),
        "inference data source": dict(src, labelpos=3),
        "inference model": {"pretrainedmodel": str(d / plugin / "fine-tune")},
        "settings": {"training": {"batchsize": 16, "blocksize": block, "nepochs": 1}, "environment": {"device": "cpu"}},
        "looscores": {"handletokens": handletokens},
        "model": model,
    }
    p = d / f"{plugin}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with contextlib.redirect_stdout(io.StringIO()):  # quiet runs still print their folder
        run(plugin, "fine-tune", task="regression", configfile=p, quiet=True)
    return p


def plugin_rates(quick: bool) -> list[tuple[str, float]]:
    from biolm.core.exampledata import write_dataset
    from biolm.core.runner import run

    out = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        data = write_dataset(d / "rna.txt", 60, seed=2, min_len=150, max_len=400)
        for plugin, model in MODELS:
            p = trained(d, plugin, model, data, 512)
            with contextlib.redirect_stdout(io.StringIO()):
                r = run(plugin, "interpret", task="regression", configfile=p, quiet=True, cli_values={"inference_source.filepath": str(data)} if not quick else {})
            out.append((plugin, r.summary["metrics"]["positions_per_s"]))
    return out


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _random_variants(rng, sid: str, toks: list[str], n_sub: int, n_indel: int) -> str:
    """Substitutions at random positions, then deletions and insertions of 1-3 tokens."""
    other = {"a": "cgt", "c": "agt", "g": "act", "t": "acg"}
    rows = []
    for p in rng.choice(len(toks), size=min(n_sub, len(toks)), replace=False):
        t = toks[p]
        alts = other.get(t.lower()[:1], "acg")
        a = alts[int(rng.integers(0, 3))]
        rows.append(f"{sid}\t{p + 1}\t{t}\t{a.upper() + t[1:] if t[:1].isupper() else a + t[1:]}\n")
    for k in range(n_indel):
        p, w = int(rng.integers(1, len(toks) - 4)), int(rng.integers(1, 4))
        if k % 2:
            rows.append(f"{sid}\t{p + 1}\t{','.join(toks[p : p + w])}\t-\n")
        else:
            rows.append(f"{sid}\t{p + 1}\t{toks[p]}\t{','.join([toks[p]] + list('acgt')[:w])}\n")
    return "".join(rows)


def workloads(quick: bool, which: set) -> list[dict]:
    """Saturation and variant workloads of every plugin, fast routine vs batched fallback."""
    from biolm.core.engine import resolve_device
    from biolm.core.ensemble import load_ensemble, model_encoding, open_store, selected_indices
    from biolm.core.hookspecs import Encoding
    from biolm.core.exampledata import write_dataset
    from biolm.core.perturb import LooScorer
    from biolm.core.runner import prepare
    from biolm.core.saturate import SaturationTable
    from biolm.core.variant_scoring import VariantScorer
    from biolm.core.variants import Sequences, read_variants

    rows = []
    n_seq = 1 if quick else 2
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        data = write_dataset(d / "rna.txt", 24, seed=5, min_len=1000, max_len=1100)
        rng = np.random.default_rng(0)
        lines = data.read_text().splitlines()
        vfile = d / "variants.tsv"
        vfile.write_text("".join(_random_variants(rng, c[0], c[5].split(","), 150, 50) for c in (ln.split("\t") for ln in lines[:n_seq])))
        for plugin, model in MODELS:
            cfg = trained(d, plugin, model, data, 1024)
            if "saturate" in which:
                r = prepare(plugin, "interpret", "regression", cfg, {"looscores.handletokens": "saturate", "inference_model.outputdir": "sat"}, quiet=True)
                device = resolve_device(r.cfg.settings.environment)
                ens = load_ensemble(r, device)
                store = open_store(r, ens)
                idx = selected_indices(r, store)[:n_seq]
                scorer = LooScorer(r, ens, store, device, SaturationTable.build(ens.tokenizer.vocab))
                with torch.no_grad():
                    fast, t_fast = _timed(lambda: [scorer(i) for i in idx]) if scorer.fast else (None, None)
                    scorer.fast = None
                    slow, t_slow = _timed(lambda: [scorer(i) for i in idx])
                n = sum(len(s.positions) for s in slow)
                diff = max(float(np.abs(a.loo - b.loo).max()) for a, b in zip(fast, slow)) if fast else None
                rows.append({"plugin": plugin, "workload": "saturate", "n": n, "length": int(store.lengths[idx].mean()), "fast": n / t_fast if fast else None, "fallback": n / t_slow, "diff": diff})
            if "variants" in which:
                r = prepare(plugin, "interpret", "regression", cfg, {"looscores.handletokens": "variants", "inference_source.variants.filepath": str(vfile), "inference_model.outputdir": "var"}, quiet=True)
                device = resolve_device(r.cfg.settings.environment)
                ens = load_ensemble(r, device)
                enc = model_encoding(r, ens)
                store = open_store(r, ens, encoding=Encoding(None, enc.lefttailing, enc.centertoken))
                seqs = Sequences(store, selected_indices(r, store), ens.tokenizer.vocab, enc)
                every = list(read_variants(r.source.variants, r.source, seqs))
                scorer = VariantScorer(r, ens, seqs, device)
                with torch.no_grad():
                    scorer.ref_outputs([v.record for v in every])
                    for name, chunk in (("subst", [v for v in every if v.kind == "single"]), ("indels", [v for v in every if v.kind == "full"])):
                        scorer.fast = r.model_spec.fast_loo if name == "subst" else None
                        fast, t_fast = _timed(lambda: scorer.score(chunk)) if scorer.fast else (None, None)
                        scorer.fast = None
                        slow, t_slow = _timed(lambda: scorer.score(chunk))
                        diff = max(float(np.abs(a[1] - b[1]).max()) for a, b in zip(fast, slow)) if fast else None
                        rows.append({"plugin": plugin, "workload": name, "n": len(chunk), "length": int(np.mean([len(v.ids) for v in chunk])), "fast": len(chunk) / t_fast if fast else None, "fallback": len(chunk) / t_slow, "diff": diff})
    return rows


_MEMORY_JOB = """
import resource, sys, torch
torch.set_num_threads(1)
from biolm.core.runner import run
r = run("pca", "interpret", task="regression", configfile=sys.argv[1], quiet=True, cli_values={"inference_source.filepath": sys.argv[2], "looscores.handletokens": "saturate", "looscores.writecsv": sys.argv[3] == "csv", "looscores.plotsequences": 0, "inference_model.outputdir": sys.argv[4]})
print(r.summary["metrics"]["perturbations"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def memory(quick: bool) -> list[dict]:
    """Peak RSS of saturation scans of N and 4N sequences, each in a fresh process."""
    import subprocess
    import sys

    from biolm.core.exampledata import write_dataset

    n0 = 50 if quick else 500
    out = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        train = write_dataset(d / "train.txt", 40, seed=1, min_len=450, max_len=550)
        cfg = trained(d, "pca", {"n_components": 8}, train, 512, "saturate")
        for n in (n0, 4 * n0):
            data = write_dataset(d / f"scan{n}.txt", n, seed=7, min_len=450, max_len=550)
            for fmt in ("h5", "csv"):
                t0 = time.perf_counter()
                p = subprocess.run([sys.executable, "-c", _MEMORY_JOB, str(cfg), str(data), fmt, f"mem_{n}_{fmt}"], capture_output=True, text=True, check=True)
                pert, peak_kb = (int(x) for x in p.stdout.split()[-2:])
                out.append({"sequences": n, "outputs": "ism.h5 + pkl" + (" + csv" if fmt == "csv" else ""), "perturbations": pert, "seconds": time.perf_counter() - t0, "peak_mb": peak_kb / 1024})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--only", default="saluki,rates,saturate,variants,memory", help="comma-separated parts to run")
    a = ap.parse_args()
    which = set(a.only.split(","))
    torch.set_num_threads(torch.get_num_threads())
    if "saluki" in which:
        lengths = (1024, 2048) if a.quick else (1024, 2048, 4096, 12288)
        print("saluki leave-one-out, mask/replace (single-position changes), CPU")
        print(f"{'tokens':>7} {'real':>6} {'positions':>9} {'baseline pos/s':>15} {'fast pos/s':>11} {'speed-up':>9} {'max|diff|':>10}")
        for L in lengths:
            n_real = min(L, 2000) if L > 2048 else L
            r = saluki_case(L, n_real, 128 if a.quick else 256, a.batch)
            print(f"{r['length']:>7} {r['real']:>6} {r['positions']:>9} {r['baseline_pos_s']:>15.1f} {r['fast_pos_s']:>11.1f} {r['speedup']:>8.1f}x {r['max_abs_diff']:>10.2e}")
    if "rates" in which:
        print("\nLOO positions/s through `biolm PLUGIN interpret` (mask, block 512, example data)")
        for plugin, rate in plugin_rates(a.quick):
            print(f"{plugin:<10} {rate:>10.1f}")
    if which & {"saturate", "variants"}:
        print("\nsaturation (positions x alternatives/s) and variants (substitutions, indels: variants/s), block 1,024,")
        print("fast_loo vs batched full forwards; models trained for one epoch")
        print(f"{'plugin':<8} {'workload':<9} {'n':>6} {'tokens':>6} {'fast/s':>9} {'fallback/s':>10} {'speed-up':>9} {'max|diff|':>10}")
        for r in workloads(a.quick, which):
            fast = f"{r['fast']:>9.1f}" if r["fast"] else f"{'-':>9}"
            ratio = f"{r['fast'] / r['fallback']:>8.1f}x" if r["fast"] else f"{'-':>9}"
            diff = f"{r['diff']:>10.2e}" if r["diff"] is not None else f"{'-':>10}"
            print(f"{r['plugin']:<8} {r['workload']:<9} {r['n']:>6} {r['length']:>6} {fast} {r['fallback']:>10.1f} {ratio} {diff}")
    if "memory" in which:
        print("\nsaturation scan memory: biolm pca interpret --handletokens saturate (one process each, 1 thread)")
        print(f"{'sequences':>9} {'perturbations':>13} {'outputs':<20} {'seconds':>8} {'peak RSS MB':>11}")
        rows = memory(a.quick)
        for r in rows:
            print(f"{r['sequences']:>9} {r['perturbations']:>13} {r['outputs']:<20} {r['seconds']:>8.1f} {r['peak_mb']:>11.0f}")
        for fmt in sorted({r["outputs"] for r in rows}):
            m = [r["peak_mb"] for r in rows if r["outputs"] == fmt]
            print(f"4x the sequences ({fmt}): peak RSS x{m[1] / m[0]:.2f}")


if __name__ == "__main__":
    main()
