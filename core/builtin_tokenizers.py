"""Core's own tokenizer kind, ``atomic``, registered through the same hook plugins use."""

from __future__ import annotations

from typing import Any, Iterator

from .hookspecs import TokenizerSpec, hookimpl


def delimited_options(source: Any, label_kind: str | None = None):
    """:class:`DelimitedOptions` from a data-source config section."""
    from .datasource import DelimitedOptions

    return DelimitedOptions(
        filepath=source.filepath,
        columnsep=source.columnsep,
        tokensep=source.tokensep,
        specifiersep=source.specifiersep,
        stripheader=source.stripheader,
        idpos=source.idpos,
        seqpos=source.seqpos,
        labelpos=getattr(source, "labelpos", None) if label_kind != "none" else None,
        weightpos=getattr(source, "weightpos", None),
        splitpos=getattr(source, "splitpos", None),
        on_bad_row=source.on_bad_row,
        label_kind=None if label_kind == "none" else label_kind,
    )


def log_read_stats(stats: Any, log: Any, path: str) -> None:
    if stats.n_skipped:
        log.warning("%s: skipped %d malformed row(s) (on_bad_row: skip); first: %s", path, stats.n_skipped, "; ".join(stats.reasons))


def _fit(source: Any, cfg: Any, log: Any):
    from .datasource import ReadStats, read_records
    from .tokenizer import AtomicTokenizer

    opts = delimited_options(source, label_kind="none")
    stats = ReadStats()
    tok = AtomicTokenizer.fit(read_records(opts, stats), samplesize=cfg.tokenization.samplesize, seed=cfg.seed)
    log_read_stats(stats, log, source.filepath)
    log.info("vocabulary of %d tokens (%s%s), %d modifier channel(s)", len(tok.vocab), ", ".join(tok.vocab[:12]), ", ..." if len(tok.vocab) > 12 else "", tok.n_modifiers)
    return tok


def _load(path: Any):
    from .tokenizer import AtomicTokenizer

    return AtomicTokenizer.load(path)


def _encode(tok: Any, source: Any, cfg: Any, log: Any, label_kind: str | None):
    """Parse, encode and cut each record to the block size (the window is kept, for offsets)."""
    from .datasource import ReadStats, read_records
    from .tokenizer import encode_records

    opts = delimited_options(source, label_kind=label_kind)
    blocksize = cfg.settings.training.blocksize
    lefttailing = cfg.tokenization.lefttailing
    centertoken = cfg.settings.data_preprocessing.centertoken
    options = dict(opts.parsing_options(), blocksize=blocksize, lefttailing=lefttailing, centertoken=centertoken, tokenizer=tok.sha())

    def records() -> Iterator[Any]:
        stats = ReadStats()
        yield from encode_records(read_records(opts, stats), tok, blocksize, lefttailing, centertoken)
        log_read_stats(stats, log, source.filepath)
        if tok.unknown_counts:
            common = ", ".join(f"{t!r} x{c}" for t, c in tok.unknown_counts.most_common(10))
            log.warning("%s: %d unknown token(s) encoded as all-zero: %s", source.filepath, sum(tok.unknown_counts.values()), common)

    return records(), options


def _make_input(tok: Any, batch: dict, cfg: Any) -> dict:
    from .tokenizer import onehot

    ids = batch["ids"].clamp(min=-1)  # -2 (masked, from interpret) is all-zero like -1
    x = onehot(ids, batch["mods"], len(tok.vocab))
    return {"x": x, "lengths": batch["lengths"]}


@hookimpl
def register_tokenizer(register):
    register("atomic", TokenizerSpec(fit=_fit, load=_load, encode=_encode, make_input=_make_input))
