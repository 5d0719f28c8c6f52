"""The atomic tokenizer: one one-hot channel per distinct token, then modifier channels.

Channel layout (``reference/002_*.txt``): for a vocabulary of V tokens and m modifier channels a
sequence of L tokens becomes an (L, V + m) matrix; row i has a 1 in the channel of token i and
the token's modifiers (``a#2.5#0.2`` -> 2.5, 0.2) in channels V..V+m-1, 0 where a token has fewer
than m. Unknown tokens (seen at predict time, not at fitting) get id -1, i.e. an all-zero
vocabulary part; they are counted in ``AtomicTokenizer.unknown_counts`` for the caller to report.

Also here: :func:`window` / :func:`find_center`, which choose the ``blocksize`` tokens kept of an
over-long sequence (``lefttailing``, ``centertoken``), :func:`encode_records`, the glue from
parsed records to the store's :class:`~biolm.core.store.EncodedRecord`, and the four functions of
the ``atomic`` kind's ``TokenizerSpec`` (:func:`fit`, :func:`load`, :func:`encode`,
:func:`make_input`; registered in :mod:`biolm.core.plugins` through the hook plugins use).

torch is imported only inside :func:`onehot`, so that importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from itertools import chain
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np

from .errors import BiolmError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .delimited import Record
    from .hookspecs import Encoding
    from .store import EncodedRecord

__all__ = ["AtomicTokenizer", "onehot", "window", "find_center", "encode_records", "TOKENIZER_FORMAT"]

TOKENIZER_FORMAT = 1


class _Index(dict):
    """token -> id; a miss returns -1 and is counted, so ``map(index.__getitem__, ...)`` stays
    a C loop on the common (known-token) path."""

    __slots__ = ("unknown",)

    def __missing__(self, token):
        self.unknown[token] += 1
        return -1


class AtomicTokenizer:
    """One-hot vocabulary of distinct tokens plus ``n_modifiers`` float channels.

    Parameters
    ----------
    vocab : the tokens, in channel order. :meth:`fit` sorts them; an explicit order is kept.
    n_modifiers : number of modifier channels (the most modifiers on any token when fitted).
    tokensep, specifiersep : parsing options of the fitting source, recorded for reference.

    Attributes
    ----------
    vocab : list[str]
    n_modifiers : int
    n_channels : int, ``len(vocab) + n_modifiers``
    unknown_counts : Counter, unknown token -> occurrences over all :meth:`encode` calls.
    """

    positional = True  # a record is a sequence: scores are drawn along it

    def __init__(
        self,
        vocab: Sequence[str],
        n_modifiers: int = 0,
        *,
        tokensep: str | None = None,
        specifiersep: str | None = None,
    ):
        vocab = list(vocab)
        if not vocab:
            raise BiolmError("tokenizer: empty vocabulary (no tokens in the data)")
        if any(not isinstance(t, str) or not t for t in vocab):
            raise BiolmError("tokenizer: vocabulary entries must be non-empty strings")
        if len(set(vocab)) != len(vocab):
            dup = [t for t, c in Counter(vocab).items() if c > 1]
            raise BiolmError(f"tokenizer: duplicate vocabulary entries {dup[:5]}")
        if isinstance(n_modifiers, bool) or not isinstance(n_modifiers, int) or n_modifiers < 0:
            raise BiolmError(f"tokenizer: n_modifiers must be an integer >= 0, got {n_modifiers!r}")
        self.vocab = vocab
        self.n_modifiers = n_modifiers
        self.options = {"tokensep": tokensep or None, "specifiersep": specifiersep or None}
        self.unknown_counts: Counter = Counter()
        self._index = _Index((t, i) for i, t in enumerate(vocab))
        self._index.unknown = self.unknown_counts
        # Single-character tokens are encoded by table lookup on code points: ASCII through a
        # 256-entry table, the rest through a sorted code-point array.
        self._lut8 = np.full(256, -1, dtype=np.int32)
        cps, cp_ids = [], []
        for i, t in enumerate(vocab):
            if len(t) == 1:
                if ord(t) < 128:
                    self._lut8[ord(t)] = i
                cps.append(ord(t))
                cp_ids.append(i)
        order = np.argsort(np.asarray(cps, dtype=np.int64), kind="stable")
        self._cps = np.asarray(cps, dtype=np.uint32)[order]
        self._cp_ids = np.asarray(cp_ids, dtype=np.int32)[order]

    @property
    def n_channels(self) -> int:
        return len(self.vocab) + self.n_modifiers

    @property
    def channels(self) -> list[str]:
        """Channel names: the tokens, then ``mod0``, ``mod1``, ..."""
        return self.vocab + [f"mod{k}" for k in range(self.n_modifiers)]

    def __repr__(self) -> str:
        return f"AtomicTokenizer(vocab={self.vocab!r}, n_modifiers={self.n_modifiers})"

    def __eq__(self, other) -> bool:
        return isinstance(other, AtomicTokenizer) and self.to_json() == other.to_json()

    # -- fitting -----------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        records: Iterable[Record],
        samplesize: int | None = None,
        seed: int = 0,
        *,
        tokensep: str | None = None,
        specifiersep: str | None = None,
    ) -> AtomicTokenizer:
        """Learn the vocabulary (sorted distinct tokens) and the modifier count.

        Parameters
        ----------
        records : parsed records, streamed once.
        samplesize : fit on a uniform random subsample of this many records (reservoir sampling,
            so the input is still streamed once); ``None`` = all records.
        seed : seed of the subsample.
        tokensep, specifiersep : recorded in the tokenizer's options.

        Returns
        -------
        AtomicTokenizer
        """
        vocab: set[str] = set()
        n_mod = 0
        if samplesize is None:
            for rec in records:
                vocab.update(rec.tokens)
                if rec.modifiers is not None:
                    n_mod = max(n_mod, _max_modifiers(rec.modifiers))
        else:
            if isinstance(samplesize, bool) or not isinstance(samplesize, int) or samplesize < 1:
                raise BiolmError(f"samplesize must be an integer >= 1, got {samplesize!r}")
            # Algorithm R over per-record summaries (distinct tokens, modifier count): the
            # reservoir holds samplesize small sets, never whole sequences.
            rng = random.Random(seed)
            reservoir: list[tuple[frozenset, int]] = []
            for i, rec in enumerate(records):
                if i < samplesize:
                    slot = i
                    reservoir.append(None)  # type: ignore[arg-type]
                else:
                    slot = rng.randrange(i + 1)
                    if slot >= samplesize:
                        continue
                mods = 0 if rec.modifiers is None else _max_modifiers(rec.modifiers)
                reservoir[slot] = (frozenset(rec.tokens), mods)
            for toks, mods in reservoir:
                vocab.update(toks)
                n_mod = max(n_mod, mods)
        if not vocab:
            raise BiolmError("tokenizer: no records to learn the vocabulary from")
        return cls(sorted(vocab), n_mod, tokensep=tokensep, specifiersep=specifiersep)

    # -- encoding ----------------------------------------------------------------------------

    def encode_ids(self, tokens: Sequence[str]) -> np.ndarray:
        """Token ids of ``tokens`` (a ``str`` = one token per character, or a list).

        Returns
        -------
        np.ndarray, int32, shape (n,); -1 for unknown tokens (counted in ``unknown_counts``).
        """
        if isinstance(tokens, str):
            codes = self._codes(tokens)
            ids = self._single_ids(codes)
            if len(ids) and ids.min() < 0:
                self._count_unknown_codes(codes[ids < 0])
            return ids
        n = len(tokens)
        if n == 0:
            return np.zeros(0, dtype=np.int32)
        # Vectorised: join with NUL, look up every token's first character in a table, then
        # fix up the few multi-character tokens (gej, AEJ) by dict lookup. Roughly 3x faster
        # than one dict lookup per token, which is the fallback for unusual input.
        joined = "\x00".join(tokens)
        codes = self._codes(joined)
        seps = np.flatnonzero(codes == 0)
        if len(seps) != n - 1:  # a token contains NUL itself
            return self._encode_ids_slow(tokens)
        starts = np.empty(n, dtype=np.int64)
        starts[0] = 0
        starts[1:] = seps + 1
        lens = np.empty(n, dtype=np.int64)
        lens[:-1] = seps - starts[:-1]
        lens[-1] = len(codes) - starts[-1]
        if not lens.all():  # empty tokens
            return self._encode_ids_slow(tokens)
        first = codes[starts]
        ids = self._single_ids(first)
        multi = np.flatnonzero(lens != 1)
        if len(multi):
            index = self._index
            for j in multi.tolist():
                ids[j] = index[tokens[j]]
        miss = ids < 0
        if miss.any():
            miss[multi] = False  # multi-character unknowns were counted by _Index
            self._count_unknown_codes(first[miss])
        return ids

    def _encode_ids_slow(self, tokens: Sequence[str]) -> np.ndarray:
        return np.fromiter(map(self._index.__getitem__, tokens), dtype=np.int32, count=len(tokens))

    @staticmethod
    def _codes(s: str) -> np.ndarray:
        if s.isascii():
            return np.frombuffer(s.encode("ascii"), dtype=np.uint8)
        return np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32)

    def _single_ids(self, codes: np.ndarray) -> np.ndarray:
        """Ids of the one-character tokens with these code points (-1 where none)."""
        if codes.dtype == np.uint8:
            return self._lut8[codes]
        ids = np.full(len(codes), -1, dtype=np.int32)
        if len(self._cps):
            pos = np.minimum(np.searchsorted(self._cps, codes), len(self._cps) - 1)
            hit = self._cps[pos] == codes
            ids[hit] = self._cp_ids[pos[hit]]
        return ids

    def _count_unknown_codes(self, codes: np.ndarray) -> None:
        miss, counts = np.unique(codes, return_counts=True)
        for c, k in zip(miss.tolist(), counts.tolist()):
            self.unknown_counts[chr(c)] += k

    def encode_modifiers(self, modifiers: Sequence[Sequence[float]] | None, n: int, where: str = "") -> np.ndarray:
        """Dense modifier matrix; tokens with fewer than ``n_modifiers`` values are 0-filled.

        Returns
        -------
        np.ndarray, float32, shape (n, n_modifiers).

        Raises
        ------
        BiolmError
            A token carries more modifiers than the tokenizer has channels.
        """
        m = self.n_modifiers
        out = np.zeros((n, m), dtype=np.float32)
        if modifiers is None:
            return out
        if len(modifiers) != n:
            raise ValueError(f"{len(modifiers)} modifier entries for {n} tokens")
        # Scatter all values at once: per-row numpy assignments cost ~1 us each.
        counts = np.fromiter(map(len, modifiers), dtype=np.int64, count=n)
        rows = np.flatnonzero(counts)
        if not len(rows):
            return out
        k = counts[rows]
        if k.max() > m:
            i = int(rows[np.argmax(k > m)])
            raise BiolmError(
                f"{where}token at position {i + 1} has {int(counts[i])} modifiers, but the tokenizer was "
                f"fitted with {m} modifier channel(s); refit the tokenizer on data like this"
            )
        vals = np.fromiter(chain.from_iterable(modifiers[i] for i in rows.tolist()), dtype=np.float32, count=int(k.sum()))
        first = np.cumsum(k) - k
        cols = np.arange(len(vals)) - np.repeat(first, k)
        out[np.repeat(rows, k), cols] = vals
        return out

    def encode(self, record: Record) -> tuple[np.ndarray, np.ndarray]:
        """Encode one record.

        Returns
        -------
        ids : np.ndarray, int32, shape (n,); -1 for unknown tokens.
        mods : np.ndarray, float32, shape (n, n_modifiers).
        """
        ids = self.encode_ids(record.tokens)
        where = f"record {record.id!r} (line {record.line}): "
        return ids, self.encode_modifiers(record.modifiers, len(ids), where)

    # -- persistence -------------------------------------------------------------------------

    def to_json(self) -> dict:
        """JSON-able dict: vocabulary, channel layout, modifier count and options."""
        return {
            "format": "biolm-tokenizer",
            "version": TOKENIZER_FORMAT,
            "encoding": "atomic",
            "vocab": list(self.vocab),
            "n_modifiers": self.n_modifiers,
            "channels": self.channels,
            "options": dict(self.options),
        }

    @classmethod
    def from_json(cls, d: dict, source: str = "tokenizer.json") -> AtomicTokenizer:
        """Inverse of :meth:`to_json`; checks the encoding and the channel layout."""
        if not isinstance(d, dict) or d.get("encoding") != "atomic":
            got = d.get("encoding") if isinstance(d, dict) else type(d).__name__
            raise BiolmError(f"{source}: not an atomic tokenizer (encoding {got!r})")
        try:
            opts = d.get("options") or {}
            if not isinstance(d["vocab"], list):
                raise BiolmError(f"{source}: key 'vocab': expected a list of tokens, got {type(d['vocab']).__name__}")
            if not isinstance(opts, dict):
                raise BiolmError(f"{source}: key 'options': expected an object, got {opts!r}")
            tok = cls(d["vocab"], d["n_modifiers"], tokensep=opts.get("tokensep"), specifiersep=opts.get("specifiersep"))
        except KeyError as e:
            raise BiolmError(f"{source}: missing key {e.args[0]!r}") from None
        except BiolmError as e:
            if str(e).startswith(source):
                raise
            raise BiolmError(f"{source}: {e}") from None
        if "channels" in d and d["channels"] != tok.channels:
            raise BiolmError(f"{source}: channel layout does not match vocabulary and n_modifiers")
        return tok

    def canonical_json(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def sha(self) -> str:
        """sha256 (hex) of the canonical JSON: identifies the encoding for store reuse."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (temporary file, then rename)."""
        from .outputs import write_text

        write_text(path, json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> AtomicTokenizer:
        return cls.from_json(read_tokenizer_json(path), source=os.fspath(path))


def read_tokenizer_json(path: str | os.PathLike) -> dict:
    """The JSON of a ``tokenizer.json``; a missing or broken file is a :class:`BiolmError`."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise BiolmError(f"{path}: no such tokenizer file (run the tokenize mode first?)") from None
    except json.JSONDecodeError as e:
        raise BiolmError(f"{path}: not valid JSON ({e})") from None


def _max_modifiers(modifiers: Sequence[Sequence[float]]) -> int:
    # A numeric max over counts: the reference took a lexicographic max of strings.
    return max(map(len, modifiers), default=0)


def onehot(ids, mods, n_vocab: int) -> torch.Tensor:
    """One-hot vocabulary channels followed by modifier channels, on the ids' device.

    Parameters
    ----------
    ids : integer tensor or array, shape (B, L) (any leading shape works); -1 = unknown or
        padding -> all-zero vocabulary part.
    mods : float tensor or array, shape (B, L, m), or ``None`` for m = 0.
    n_vocab : V, the vocabulary size.

    Returns
    -------
    torch.Tensor, float32, shape (B, L, V + m).
    """
    import torch

    ids = torch.as_tensor(ids)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"ids must be an integer tensor, got {ids.dtype}")
    ids = ids.long()
    # One host sync for the check, not two: this runs once per training batch.
    if ids.numel() and bool(((ids >= n_vocab) | (ids < -1)).any()):
        raise ValueError(f"token ids must lie in [-1, {n_vocab}); got range [{int(ids.min())}, {int(ids.max())}]")
    if mods is None:
        mods = torch.zeros(*ids.shape, 0, device=ids.device)
    mods = torch.as_tensor(mods, dtype=torch.float32, device=ids.device)
    if mods.shape[:-1] != ids.shape:
        raise ValueError(f"mods shape {tuple(mods.shape)} does not match ids shape {tuple(ids.shape)} + (m,)")
    out = torch.zeros(*ids.shape, n_vocab + mods.shape[-1], dtype=torch.float32, device=ids.device)
    known = ids >= 0
    # Unknown/padding rows scatter a 0 into channel 0, leaving the vocabulary part all-zero.
    out[..., :n_vocab].scatter_(-1, ids.clamp(min=0).unsqueeze(-1), known.unsqueeze(-1).to(torch.float32))
    out[..., n_vocab:] = mods
    return out


def window(n_tokens: int, blocksize: int | None, lefttailing: bool = True, center: int | None = None) -> tuple[int, int]:
    """Half-open range ``[start, end)`` of the tokens kept of an ``n_tokens`` sequence.

    Parameters
    ----------
    n_tokens : sequence length.
    blocksize : the most tokens kept; ``None`` = keep everything.
    lefttailing : without ``center``: ``True`` keeps the right end (cuts from the left),
        ``False`` keeps the left end.
    center : index of the centre token, or ``None``. The window puts ``(blocksize - 1) // 2``
        tokens left of it and the rest right of it (for an even blocksize the right side gets
        the extra token). Where a side reaches the sequence end, its unused room goes to the
        left first, then to the right (``reference/002_*.txt``): the window is always
        ``min(n_tokens, blocksize)`` long and always contains the centre token.

    Returns
    -------
    (start, end) : ints, ``0 <= start <= end <= n_tokens``.
    """
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    if blocksize is not None and blocksize < 1:
        raise ValueError(f"blocksize must be >= 1, got {blocksize}")
    if blocksize is None or n_tokens <= blocksize:
        return 0, n_tokens
    if center is None:
        return (n_tokens - blocksize, n_tokens) if lefttailing else (0, blocksize)
    if not 0 <= center < n_tokens:
        raise ValueError(f"center {center} outside a sequence of {n_tokens} tokens")
    want_left = (blocksize - 1) // 2
    want_right = blocksize - 1 - want_left
    left = min(want_left, center)
    right = min(want_right, n_tokens - 1 - center)
    spare = blocksize - 1 - left - right
    extra = min(spare, center - left)
    left += extra
    right += spare - extra  # fits: n_tokens > blocksize
    return center - left, center + right + 1


def find_center(tokens: Sequence[str], centertoken: str, specifiersep: str | None = None) -> int | None:
    """Index of the first token whose base letter is ``centertoken``, or ``None``.

    The base letter is the token's first character after removing any specifier
    (``a#2.5`` -> ``a``); matching is case-sensitive. A multi-character ``centertoken``
    (``gej``) is compared with the whole base token instead.
    """
    if not centertoken:
        raise ValueError("centertoken must be a non-empty string")
    if isinstance(tokens, str):
        i = tokens.find(centertoken) if len(centertoken) == 1 else -1
        return None if i < 0 else i
    if specifiersep is None and len(centertoken) == 1:
        s = "".join(tokens)
        if len(s) == len(tokens):  # all single characters: str.find does the scan in C
            i = s.find(centertoken)
            return None if i < 0 else i
    for i, tok in enumerate(tokens):
        if specifiersep is not None:
            tok = tok.split(specifiersep, 1)[0]
        if (tok[:1] if len(centertoken) == 1 else tok) == centertoken:
            return i
    return None


def encode_records(
    records: Iterable[Record],
    tokenizer: AtomicTokenizer,
    blocksize: int | None = None,
    lefttailing: bool = True,
    centertoken: str | None = None,
    cut: Counter | None = None,
) -> Iterator[EncodedRecord]:
    """Encode and window records for :func:`~biolm.core.store.build_store`.

    Records whose ``centertoken`` is absent fall back to ``lefttailing``. Unknown tokens are
    counted in ``tokenizer.unknown_counts``; over-long records in ``cut`` (``"cut"``, and
    ``"no_center"`` for those cut by ``lefttailing`` because ``centertoken`` does not occur).

    Yields
    ------
    EncodedRecord, with ``start`` / ``orig_len`` locating the kept window in the original.
    """
    from .store import EncodedRecord

    for rec in records:
        ids, mods = tokenizer.encode(rec)
        n = len(ids)
        center = None
        if blocksize is not None and n > blocksize and cut is not None:
            cut["cut"] += 1
        if centertoken and blocksize is not None and n > blocksize:
            center = find_center(rec.tokens, centertoken)
            if center is None and cut is not None:
                cut["no_center"] += 1
        start, end = window(n, blocksize, lefttailing, center)
        if end - start != n:
            ids, mods = ids[start:end], mods[start:end]
        yield EncodedRecord(rec.id, ids, mods, rec.label, rec.weight, rec.split, start, n)


# ---------------------------------------------------------------------------- the "atomic" kind


def fit(source, cfg, log) -> AtomicTokenizer:
    """Learn the vocabulary (and modifier count) on a data-source section."""
    from .delimited import ReadStats, delimited_options, log_skipped, read_records

    stats = ReadStats()
    tok = AtomicTokenizer.fit(read_records(delimited_options(source, label_kind="none"), stats), samplesize=cfg.tokenization.samplesize, seed=cfg.seed)
    log_skipped(stats, log, source.filepath)
    log.info("vocabulary of %d tokens (%s%s), %d modifier channel(s)", len(tok.vocab), ", ".join(tok.vocab[:12]), ", ..." if len(tok.vocab) > 12 else "", tok.n_modifiers)
    return tok


def load(path) -> AtomicTokenizer:
    return AtomicTokenizer.load(path)


def encode(tok: AtomicTokenizer, source, encoding: Encoding, log, label_kind: str | None):
    """Parse, encode and cut each record to the block size (the window is kept, for offsets)."""
    from .delimited import ReadStats, delimited_options, log_skipped, read_records

    opts = delimited_options(source, label_kind=label_kind)
    options = dict(opts.parsing_options(), blocksize=encoding.blocksize, lefttailing=encoding.lefttailing, centertoken=encoding.centertoken, tokenizer=tok.sha())

    def records() -> Iterator[EncodedRecord]:
        stats = ReadStats()
        cut: Counter = Counter()
        yield from encode_records(read_records(opts, stats), tok, encoding.blocksize, encoding.lefttailing, encoding.centertoken, cut)
        log_skipped(stats, log, source.filepath)
        if cut["no_center"]:
            end = "right" if encoding.lefttailing else "left"
            log.warning("%s: centertoken %r occurs in %d of the %d records longer than blocksize %d; the other %d were cut by lefttailing (their %s end kept)", source.filepath, encoding.centertoken, cut["cut"] - cut["no_center"], cut["cut"], encoding.blocksize, cut["no_center"], end)
        if tok.unknown_counts:
            common = ", ".join(f"{t!r} x{c}" for t, c in tok.unknown_counts.most_common(10))
            log.warning("%s: %d unknown token(s) encoded as all-zero: %s", source.filepath, sum(tok.unknown_counts.values()), common)

    return records(), options


def make_input(tok: AtomicTokenizer, batch: dict, encoding: Encoding) -> dict:
    """One-hot (+ modifier) input ``x`` (B, L, V + M) and ``lengths``."""
    ids = batch["ids"].clamp(min=-1)  # -2 (masked, from interpret) is all-zero like -1
    return {"x": onehot(ids, batch["mods"], len(tok.vocab)), "lengths": batch["lengths"]}
