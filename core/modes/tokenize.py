"""``tokenize`` mode: learn the tokenizer on the tokenizing data source."""

from __future__ import annotations

import time


def execute(run) -> dict:
    spec = run.tokenizer_spec
    src = run.cfg.tokenizing_source
    t0 = time.perf_counter()
    run.log.info("learning the %s tokenizer on %s", run.cfg.tokenization.encoding, src.filepath)
    tok = spec.fit(src, run.cfg, run.log)
    path = run.outdir / "tokenizer.json"
    tok.save(path)
    run.log.info("tokenizer written to %s (%.1f s)", path, time.perf_counter() - t0)
    return {"lines": [f"tokenizer: {path}"], "tokenizer": str(path)}
