"""The store of a mode's data source (``<modedir>/dataset.h5``), built once and reused by hash."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def open_source_store(run: Any, tokenizer: Any, source: Any, label_kind: str | None, path: Path | None = None):
    """Encode ``source`` with ``tokenizer`` into an HDF5 store, reusing it when nothing changed.

    ``label_kind``: ``float`` (regression), ``str`` (classification) or ``None`` (labels optional,
    kept as text). The hash covers the file's bytes, every parsing option and the tokenizer.
    """
    from .store import build_store, open_or_build, source_hash

    spec = run.tokenizer_spec
    records, options = spec.encode(tokenizer, source, run.cfg, run.log, label_kind)
    options = dict(options, label_kind=label_kind)
    path = path or (run.modedir / "dataset.h5")
    digest = source_hash(source.filepath, options, tokenizer.sha())
    n_mod = getattr(tokenizer, "n_modifiers", 0)

    def build(p):
        build_store(p, records, {"source": str(source.filepath), "source_hash": digest, "options": options}, n_mod)

    return open_or_build(path, digest, build, log=run.log.info)


def load_or_fit_tokenizer(run: Any):
    """``OUTPUTPATH/tokenizer.json``; learned first (and said so) when tokenize was not run."""
    spec = run.tokenizer_spec
    path = run.outdir / "tokenizer.json"
    if path.exists():
        return spec.load(path)
    src = run.cfg.tokenizing_source if run.cfg.tokenizing_source.filepath else run.source
    run.log.info("no tokenizer at %s: learning it on %s first (as the tokenize mode would)", path, src.filepath)
    tok = spec.fit(src, run.cfg, run.log)
    tok.save(path)
    return tok
