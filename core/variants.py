"""Variant effects: read a variants table, apply each variant to its sequence, check its ref.

A variants table (``inference data source: variants``) has per row a sequence id, a 1-based
position in the whole sequence, the reference token(s) and the alternative token(s), and
optionally a variant id; it is read with core's delimited reader. ref and alt are split like the
sequences (the inference data source's ``tokensep``/``specifiersep``); ``-``, ``.`` or an empty
field mean no tokens. A variant replaces the ``len(ref)`` tokens from ``position`` on by the alt
tokens, so one rule covers substitutions (``a`` -> ``g``, ``ac`` -> ``gt``), deletions (``ac``
-> ``a`` or ``c`` -> ``-``) and insertions (``a`` -> ``acg``, or ``-`` -> ``cg`` before the
position). An alt token keeps the modifiers of the reference token it replaces unless it brings
its own; inserted tokens have the modifiers they are written with (none = 0).

The ref is compared with the sequence (base tokens): a mismatch, an unknown sequence id or a
position outside the sequence is a bad row (an error naming the variant, or skipped and counted
with ``on_bad_row: skip``).

The edited sequence is cut to the model's input exactly as the sequence itself is
(``blocksize``, ``lefttailing``, ``centertoken``): a variant changes the prediction exactly as
editing the data file and predicting again would. Scoring is in :mod:`biolm.core.variant_scoring`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from .atomic_tokenizer import window
from .delimited import BadRow, ReadStats, parse_tokens, read_rows

NO_TOKENS = frozenset({"", "-", "."})
_CACHE = 64  # sequences kept decoded (variants are usually grouped by sequence)


@dataclass
class Variant:
    """One variant, applied.

    Attributes
    ----------
    vid, seq, position, ref, alt : as written (``position`` 1-based); ``ref``/``alt`` as text.
    record : the store index of its sequence.
    ids, mods : the edited whole sequence (n',) and (n', M).
    kind : ``same`` (the model's input does not change), ``single`` (one token of the model's
        input changes, at ``offset``, to ``new_id``; the input keeps its window) or ``full``.
    window : [start, end) of the edited sequence that the model reads.
    """

    vid: str
    seq: str
    position: int
    ref: str
    alt: str
    record: int
    ids: np.ndarray
    mods: np.ndarray
    kind: str
    window: tuple[int, int]
    offset: int = -1
    new_id: int = -1


class Sequences:
    """The whole sequences of the inference data source (an unwindowed store), by id, with the
    window rule of the trained model.

    Parameters
    ----------
    store : the store encoded without a block size.
    indices : the records variants may refer to.
    vocab : the tokenizer's vocabulary.
    encoding : the trained model's :class:`~biolm.core.hookspecs.Encoding`.
    """

    def __init__(self, store: Any, indices: np.ndarray, vocab: list[str], encoding: Any):
        self.store, self.vocab, self.encoding = store, vocab, encoding
        self.index: dict[str, int] = {}
        self.duplicated: set[str] = set()
        ids = store.ids
        for i in indices:
            sid = str(ids[i])
            if sid in self.index:
                self.duplicated.add(sid)
            else:
                self.index[sid] = int(i)
        self.token_id = {t: i for i, t in enumerate(vocab)}
        c = encoding.centertoken
        self.is_center = np.asarray([(t[:1] if len(c) == 1 else t) == c for t in vocab] + [False]) if c else None
        self._cache: OrderedDict = OrderedDict()

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        ids, mods = self.store.get(i)
        self._cache[i] = (np.asarray(ids, dtype=np.int64), np.asarray(mods, dtype=np.float32))
        if len(self._cache) > _CACHE:
            self._cache.popitem(last=False)
        return self._cache[i]

    def window(self, ids: np.ndarray) -> tuple[int, int]:
        """[start, end) of ``ids`` that the model reads (as the store cuts a record)."""
        center = None
        if self.is_center is not None and len(ids) > self.encoding.blocksize:
            hits = np.flatnonzero(self.is_center[ids])  # id -1 indexes the trailing False
            center = int(hits[0]) if len(hits) else None
        return window(len(ids), self.encoding.blocksize, self.encoding.lefttailing, center)

    def apply(self, vid: str, seq: str, position: int, ref: list[str], alt: list[str], alt_mods: list | None, texts: tuple[str, str]) -> Variant:
        """The variant applied to its sequence; raises :class:`BadRow` when it does not fit."""
        if seq in self.duplicated:
            raise BadRow(f"variant {vid}: sequence id {seq!r} is on several rows of the inference data source")
        record = self.index.get(seq)
        if record is None:
            raise BadRow(f"variant {vid}: no sequence {seq!r} in the inference data source")
        ids, mods = self.get(record)
        n, p, k = len(ids), position - 1, len(ref)
        if p + k > n or (k == 0 and p > n):
            raise BadRow(f"variant {vid}: position {position}{f'-{position + k - 1}' if k > 1 else ''} is outside sequence {seq!r} of {n} tokens")
        ref_ids = np.asarray([self.token_id.get(t, -1) for t in ref], dtype=np.int64)
        if not np.array_equal(ref_ids, ids[p : p + k]):
            found = ",".join(self.vocab[i] if i >= 0 else "<unknown>" for i in ids[p : p + k])
            raise BadRow(f"variant {vid}: ref {texts[0]!r} does not match sequence {seq!r} at position {position} ({found!r})")
        alt_ids = np.asarray([self.token_id.get(t, -1) for t in alt], dtype=np.int64)
        new_mods = np.zeros((len(alt), mods.shape[1]), dtype=np.float32)
        for j in range(len(alt)):
            given = alt_mods[j] if alt_mods is not None else ()
            if len(given):
                new_mods[j, : len(given)] = given[: mods.shape[1]]
            elif j < k:
                new_mods[j] = mods[p + j]
        e_ids = np.concatenate([ids[:p], alt_ids, ids[p + k :]])
        e_mods = np.concatenate([mods[:p], new_mods, mods[p + k :]])
        if len(e_ids) == 0:
            raise BadRow(f"variant {vid}: deletes the whole sequence {seq!r}")
        kind, offset, new_id = self.classify(ids, mods, e_ids, e_mods)
        return Variant(vid, seq, position, texts[0], texts[1], record, e_ids, e_mods, kind, self.window(e_ids), offset, new_id)

    def classify(self, ids, mods, e_ids, e_mods) -> tuple[str, int, int]:
        """How the model's input changes: ``same``, ``single`` (offset, new id) or ``full``."""
        a, b = self.window(ids)
        if len(e_ids) != len(ids) or self.window(e_ids) != (a, b):
            return "full", -1, -1
        changed = np.flatnonzero((e_ids[a:b] != ids[a:b]) | np.any(e_mods[a:b] != mods[a:b], axis=1))
        if len(changed) == 0:
            return "same", -1, -1
        q = int(changed[0])
        if len(changed) == 1 and np.array_equal(e_mods[a + q], mods[a + q]):
            return "single", q, int(e_ids[a + q])
        return "full", -1, -1


def split_tokens(text: str, tokensep: str | None, specifiersep: str | None, column: int) -> tuple[list[str], list | None]:
    """ref/alt text -> base tokens and modifiers (``-``, ``.``, empty: no tokens)."""
    text = text.strip()
    if text in NO_TOKENS:
        return [], None
    tokens, mods = parse_tokens(text, tokensep, specifiersep, column)
    return list(tokens), mods


def count_rows(vs: Any) -> int:
    """Data rows of the variants table (a first pass, for sharding it by rows)."""
    return sum(1 for _ in read_rows(vs.filepath, vs.columnsep, lambda fields, line, quoted: None, stripheader=vs.stripheader))


def read_variants(vs: Any, source: Any, sequences: Sequences, rows: slice | None = None, stats: ReadStats | None = None) -> Iterator[Variant]:
    """Stream the variants of rows ``rows`` (0-based data rows; all when None), applied.

    Parameters
    ----------
    vs : the ``variants`` config section.
    source : the inference data source (its tokensep and specifiersep split ref and alt).
    sequences : the whole sequences the variants refer to.
    stats : skipped-row counts (``on_bad_row: skip``).
    """
    need = max(p for p in (vs.idpos, vs.sequencepos, vs.positionpos, vs.refpos, vs.altpos) if p)
    counter = iter(range(1 << 62))
    lo, hi = (rows.start, rows.stop) if rows is not None else (0, 1 << 62)

    def parse(fields: list[str], line: int, quoted: bool) -> Variant | None:
        r = next(counter)
        if not lo <= r < hi:
            return None
        if len(fields) < need:
            raise BadRow(f"expected at least {need} columns, found {len(fields)}")
        seq = fields[vs.sequencepos - 1].strip()
        pos_text = fields[vs.positionpos - 1].strip()
        ref_text, alt_text = fields[vs.refpos - 1].strip(), fields[vs.altpos - 1].strip()
        vid = fields[vs.idpos - 1].strip() if vs.idpos else f"{seq}:{pos_text}:{ref_text or '-'}>{alt_text or '-'}"
        try:
            position = int(pos_text)
        except ValueError:
            raise BadRow(f"variant {vid}: position {pos_text!r} is not an integer", column=vs.positionpos) from None
        if position < 1:
            raise BadRow(f"variant {vid}: position {position} (positions are 1-based)", column=vs.positionpos)
        ref, _ = split_tokens(ref_text, source.tokensep, source.specifiersep, vs.refpos)
        alt, alt_mods = split_tokens(alt_text, source.tokensep, source.specifiersep, vs.altpos)
        if not ref and not alt:
            raise BadRow(f"variant {vid}: neither ref nor alt has a token")
        return sequences.apply(vid, seq, position, ref, alt, alt_mods, (ref_text or "-", alt_text or "-"))

    for v in read_rows(vs.filepath, vs.columnsep, parse, stripheader=vs.stripheader, on_bad_row=vs.on_bad_row, stats=stats):
        if v is not None:
            yield v
