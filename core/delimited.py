"""Delimited-text data sources: one record per line, streamed.

A data file holds one record per line; columns are split on ``columnsep`` (any string), the
sequence column on ``tokensep`` (unset = one token per character) and each token on
``specifiersep`` into a base token and float modifiers (``a#2.5#0.2`` -> ``a``, ``[2.5, 0.2]``).
Positions are 1-based, as in the YAML files users already have.

Decisions worth knowing (they are the user-facing contract, see ``reference/002_*.txt``):

- Blank (or whitespace-only) lines are skipped; ``stripheader`` drops the first non-blank line.
- ``.gz`` files are read transparently, recognised by suffix or by the gzip magic bytes.
- A field may be quoted with double quotes (``"a,c,g"``) to contain the column separator; ``""``
  inside a quoted field is a literal quote. A record is one physical line: quoted fields cannot
  span lines. With a multi-character separator a field that ends with its first characters
  (``a:`` before ``::``) is split at the first match; such fields must be quoted.
- Fields are stripped of surrounding whitespace; tokens are too (``a, c, g`` reads as ``a c g``).
- An empty token (``a,,c``, a trailing ``,``) is an error, never a silent empty vocabulary entry.
- ``specifiersep`` needs ``tokensep``: in a contiguous string ``a#2.5c`` the end of a number is
  ambiguous (``2e5`` vs ``2``, ``e``, ``5``).
- When ``columnsep == tokensep`` the sequence field must be quoted; an unquoted row is an error
  rather than a sequence silently cut at its first token.
- Labels are kept as strings; ``label_kind="float"`` additionally checks each is a finite number.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .errors import ConfigError, DataError

__all__ = ["DelimitedOptions", "Record", "ReadStats", "BadRow", "read_records", "read_rows", "parse_tokens", "GZIP_MAGIC"]

GZIP_MAGIC = b"\x1f\x8b"
_MAX_REASONS = 5
_POSITIONS = ("idpos", "seqpos", "labelpos", "weightpos", "splitpos")


@dataclass(frozen=True)
class DelimitedOptions:
    """How to parse one delimited-text data source.

    Parameters
    ----------
    filepath : path of the data file (plain or gzip).
    columnsep : column separator, any non-empty string (``"\\t"``, ``","``, ``"|"``, ``"::"``).
    tokensep : separator between tokens of the sequence column; ``None`` or ``""`` = one token
        per character.
    specifiersep : separator of per-token float modifiers; ``None``/``""`` = no modifiers.
    stripheader : drop the first non-blank line.
    idpos, seqpos, labelpos, weightpos, splitpos : 1-based column positions; ``None`` = absent
        (``seqpos`` is required). Without ``idpos`` a record's id is its line number.
    on_bad_row : ``"error"`` stops at the first bad row; ``"skip"`` skips it and counts it in
        the :class:`ReadStats` passed to :func:`read_records`.
    label_kind : ``"float"`` checks every label is a finite number; ``"str"`` that it is not
        empty; ``None`` keeps labels as they are.
    """

    filepath: str
    columnsep: str = "\t"
    tokensep: str | None = None
    specifiersep: str | None = None
    stripheader: bool = False
    idpos: int | None = None
    seqpos: int = 1
    labelpos: int | None = None
    weightpos: int | None = None
    splitpos: int | None = None
    on_bad_row: str = "error"
    label_kind: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "filepath", os.fspath(self.filepath))
        # "" and False are the reference docs' spellings of "not set".
        for name in ("tokensep", "specifiersep"):
            if getattr(self, name) in ("", False):
                object.__setattr__(self, name, None)
        if not isinstance(self.columnsep, str) or not self.columnsep:
            raise ConfigError("columnsep", f"must be a non-empty string, got {self.columnsep!r}")
        for name in ("tokensep", "specifiersep"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(name, f"must be a string or unset, got {value!r}")
        if self.specifiersep is not None:
            if self.tokensep is None:
                raise ConfigError(
                    "specifiersep",
                    f"{self.specifiersep!r} needs tokensep: in a contiguous sequence the end of a "
                    "modifier number is ambiguous",
                )
            if self.specifiersep == self.tokensep:
                raise ConfigError("specifiersep", f"must differ from tokensep ({self.tokensep!r})")
        for name in _POSITIONS:
            value = getattr(self, name)
            if value is None and name != "seqpos":
                continue
            # bool is an int subclass: True would silently mean column 1.
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"must be a 1-based column position (integer >= 1), got {value!r}")
        if self.on_bad_row not in ("error", "skip"):
            raise ConfigError("on_bad_row", f"must be 'error' or 'skip', got {self.on_bad_row!r}")
        if self.label_kind not in (None, "float", "str"):
            raise ConfigError("label_kind", f"must be 'float', 'str' or None, got {self.label_kind!r}")

    def parsing_options(self) -> dict:
        """Every option except the file path: what, with the file's content, fixes the records."""
        d = asdict(self)
        del d["filepath"]
        return d


@dataclass(slots=True)
class Record:
    """One parsed row.

    Attributes
    ----------
    id : the id column (or the line number as a string when ``idpos`` is unset).
    tokens : the base tokens (specifiers removed), length n. A ``list[str]`` when ``tokensep``
        is set; a ``str`` when it is not (each character is a token). Both are sequences of
        ``str`` with ``len()`` = number of tokens, so callers index them the same way.
    modifiers : ``None`` when no token of the record carries a modifier (always so without
        ``specifiersep``); otherwise one sequence of floats per token (empty for a token without
        modifiers). Missing trailing modifiers mean 0.
    label, weight, split : the raw (stripped) strings of those columns, ``None`` when unset.
    line : 1-based physical line number in the file.
    """

    id: str
    tokens: Sequence[str]
    modifiers: list[Sequence[float]] | None
    label: str | None
    weight: str | None
    split: str | None
    line: int


@dataclass
class ReadStats:
    """Counters filled by :func:`read_records` while it streams.

    Attributes
    ----------
    n_records : records yielded.
    n_skipped : bad rows skipped (``on_bad_row="skip"``).
    n_blank : blank lines skipped.
    reasons : ``"line N: why"`` for the first few skipped rows, for the log.
    header : the stripped header line, if any.
    """

    n_records: int = 0
    n_skipped: int = 0
    n_blank: int = 0
    reasons: list[str] = field(default_factory=list)
    header: str | None = None


class BadRow(Exception):
    """A malformed row: ``msg`` says why, ``column`` (1-based) where, if known."""

    def __init__(self, msg: str, column: int | None = None):
        super().__init__(msg)
        self.msg = msg
        self.column = column

_BadRow = BadRow


def _open_binary(path: str):
    """Open ``path`` for binary line iteration, decompressing gzip transparently."""
    try:
        fh = open(path, "rb", buffering=1 << 20)
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, expected a data file") from None
    except OSError as e:
        raise DataError(path, f"cannot open: {e.strerror or e}") from None
    magic = fh.peek(2)[:2]
    if magic == GZIP_MAGIC:
        fh.close()
        # gzip.open owns its file object, so closing the reader closes the file.
        return gzip.open(path, "rb")
    if path.endswith(".gz"):
        fh.close()
        raise DataError(path, "has a .gz suffix but is not gzip data")
    return fh


def _split_quoted(line: str, sep: str) -> list[str]:
    """Split ``line`` on the multi-character ``sep``, honouring double-quoted fields."""
    fields = []
    i, n, k = 0, len(line), len(sep)
    while True:
        if i < n and line[i] == '"':
            buf = []
            j = i + 1
            while True:
                q = line.find('"', j)
                if q < 0:
                    raise _BadRow(f"unterminated quoted field starting at character {i + 1}")
                buf.append(line[j:q])
                if line.startswith('"', q + 1):  # doubled quote = literal quote
                    buf.append('"')
                    j = q + 2
                    continue
                break
            fields.append("".join(buf))
            i = q + 1
            if i == n:
                return fields
            if not line.startswith(sep, i):
                raise _BadRow(f"unexpected text after the closing quote at character {i + 1}")
            i += k
        else:
            j = line.find(sep, i)
            if j < 0:
                fields.append(line[i:])
                return fields
            fields.append(line[i:j])
            i = j + k


_csv_limit_raised = False


def _split_csv(line: str, sep: str) -> list[str]:
    global _csv_limit_raised
    if not _csv_limit_raised:
        # The csv default (128 KiB per field) is below real sequence lengths.
        csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
        _csv_limit_raised = True
    try:
        return next(csv.reader([line], delimiter=sep, quotechar='"', doublequote=True, strict=True))
    except csv.Error as e:
        raise _BadRow(f"malformed quoted field: {e}") from None


def _marked_tokens(tokens: list[str], spec: str) -> list[int]:
    """Indices of the tokens containing ``spec``, found by a numpy scan of the joined tokens
    (typically a minority: the Python work is then spent only on them)."""
    if len(spec) == 1:
        joined = "\x00".join(tokens)
        if joined.isascii():
            codes = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
            seps = np.flatnonzero(codes == 0)
            if len(seps) == len(tokens) - 1:  # no token contains NUL itself
                hits = np.flatnonzero(codes == ord(spec))
                return np.unique(np.searchsorted(seps, hits)).tolist()
    return [i for i, tok in enumerate(tokens) if spec in tok]


def _split_specifiers(tokens: list[str], spec: str) -> tuple[list[str], list[Sequence[float]]]:
    bases = list(tokens)
    mods: list[Sequence[float]] = [()] * len(tokens)
    for i in _marked_tokens(tokens, spec):
        tok = tokens[i]
        parts = tok.split(spec)
        base = parts[0].strip()
        if not base:
            raise _BadRow(f"token {tok!r} at position {i + 1}: no token before specifier {spec!r}")
        vals = []
        for p in parts[1:]:
            try:
                v = float(p)
            except ValueError:
                raise _BadRow(f"token {tok!r} at position {i + 1}: modifier {p!r} is not a number") from None
            if not math.isfinite(v):
                raise _BadRow(f"token {tok!r} at position {i + 1}: modifier {p!r} is not a finite number")
            vals.append(v)
        bases[i] = base
        mods[i] = vals
    return bases, mods


def _empty_token_position(seq: str, sep: str) -> int:
    """1-based position of the first empty token of ``seq`` split on ``sep``."""
    for pos, tok in enumerate(seq.split(sep), 1):
        if not tok.strip():
            return pos
    return 0


def _parse_sequence(
    seq: str, toksep: str | None, spec: str | None, seqpos: int
) -> tuple[Sequence[str], list[Sequence[float]] | None]:
    """Split a (stripped, non-empty) sequence field into base tokens and modifiers."""
    if toksep is None:
        if " " in seq or "\t" in seq:
            raise _BadRow(
                "sequence contains whitespace but tokensep is unset (one token per character); "
                "set tokensep if the tokens are separated",
                column=seqpos,
            )
        return seq, None
    if toksep.isspace():
        tokens = seq.split()  # runs of whitespace are one separator
    else:
        # Cheap substring tests first; the position is only worked out for the error message.
        if toksep + toksep in seq or seq.startswith(toksep) or seq.endswith(toksep):
            raise _BadRow(f"empty token at position {_empty_token_position(seq, toksep)}", column=seqpos)
        tokens = seq.split(toksep)
        if " " in seq or "\t" in seq:
            tokens = [t.strip() for t in tokens]
            if "" in tokens:
                raise _BadRow(f"empty token at position {tokens.index('') + 1}", column=seqpos)
    if spec is not None and spec in seq:
        return _split_specifiers(tokens, spec)
    return tokens, None


def read_rows(
    path: str,
    columnsep: str,
    parse: Callable[[list[str], int, bool], Any],
    *,
    stripheader: bool = False,
    on_bad_row: str = "error",
    stats: ReadStats | None = None,
) -> Iterator[Any]:
    """Stream ``parse(fields, line, quoted)`` for every data row of a delimited-text file.

    The shared part of every delimited reader: gzip, UTF-8 (and a BOM), blank lines, the
    header, quoted fields. ``parse`` turns the row's fields into an item or raises
    :class:`BadRow` (``quoted``: the line holds a double quote). With ``on_bad_row="skip"`` a
    bad row is skipped and counted in ``stats``; otherwise it is a :class:`DataError` naming
    file, line and column.
    """
    if stats is None:
        stats = ReadStats()
    skip = on_bad_row == "skip"
    split_fields = _split_csv if len(columnsep) == 1 else _split_quoted
    header_pending = bool(stripheader)
    fh = _open_binary(path)
    lineno = 0
    try:
        lines = iter(fh)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                break
            except (OSError, EOFError, zlib.error) as e:
                raise DataError(path, f"cannot read (corrupt or truncated gzip?): {e}", line=lineno + 1) from None
            lineno += 1
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise _BadRow(f"not valid UTF-8 (byte {e.start + 1} of the line)") from None
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                line = line.rstrip("\r\n")
                if not line or line.isspace():
                    stats.n_blank += 1
                    continue
                if header_pending:
                    header_pending = False
                    stats.header = line
                    continue
                quoted = '"' in line
                item = parse(split_fields(line, columnsep) if quoted else line.split(columnsep), lineno, quoted)
            except _BadRow as bad:
                if not skip:
                    raise DataError(path, bad.msg, line=lineno, column=bad.column) from None
                stats.n_skipped += 1
                if len(stats.reasons) < _MAX_REASONS:
                    stats.reasons.append(f"line {lineno}: {bad.msg}")
                continue
            stats.n_records += 1
            yield item
    finally:
        fh.close()


def parse_tokens(seq: str, tokensep: str | None, specifiersep: str | None, column: int) -> tuple[Sequence[str], list[Sequence[float]] | None]:
    """Split a stripped, non-empty field into base tokens and modifiers (as a sequence column
    is split); raises :class:`BadRow` naming ``column``."""
    return _parse_sequence(seq, tokensep, specifiersep, column)


def read_records(opts: DelimitedOptions, stats: ReadStats | None = None) -> Iterator[Record]:
    """Stream the records of a delimited-text file, in file order, in constant memory.

    Parameters
    ----------
    opts : parsing options.
    stats : optional counters, updated as records are read (skipped rows, reasons, header).

    Yields
    ------
    Record

    Raises
    ------
    DataError
        Missing/unreadable file, corrupt gzip, or (with ``on_bad_row="error"``) a bad row: too
        few columns, empty sequence or token, non-numeric label (``label_kind="float"``),
        non-numeric modifier, undecodable UTF-8. The message names file, line and column.
    """
    if stats is None:
        stats = ReadStats()
    colsep = opts.columnsep
    toksep = opts.tokensep
    spec = opts.specifiersep
    idx_id = None if opts.idpos is None else opts.idpos - 1
    idx_seq = opts.seqpos - 1
    idx_label = None if opts.labelpos is None else opts.labelpos - 1
    idx_weight = None if opts.weightpos is None else opts.weightpos - 1
    idx_split = None if opts.splitpos is None else opts.splitpos - 1
    present = [(getattr(opts, n), n) for n in _POSITIONS if getattr(opts, n) is not None]
    need, need_name = max(present)
    label_float = opts.label_kind == "float"
    label_str = opts.label_kind == "str"
    same_sep = toksep is not None and toksep == colsep

    def parse(fields: list[str], lineno: int, quoted: bool) -> Record:
        if len(fields) < need:
            raise _BadRow(f"expected at least {need} columns ({need_name}={need}), found {len(fields)}")
        if same_sep and not quoted:
            raise _BadRow(
                f"columnsep and tokensep are both {colsep!r}: quote the sequence field "
                f'(e.g. "a{colsep}c{colsep}g")',
                column=opts.seqpos,
            )
        seq = fields[idx_seq].strip()
        if not seq:
            raise _BadRow(f"empty sequence (seqpos={opts.seqpos})", column=opts.seqpos)
        tokens, modifiers = _parse_sequence(seq, toksep, spec, opts.seqpos)
        label = None
        if idx_label is not None:
            label = fields[idx_label].strip()
            if label_float:
                try:
                    ok = math.isfinite(float(label))
                except ValueError:
                    ok = False
                if not ok:
                    hint = ""
                    if stats.n_records == 0 and not opts.stripheader:
                        hint = " (is this a header line? set stripheader)"
                    raise _BadRow(
                        f"label {label!r} is not a finite number (labelpos={opts.labelpos}){hint}",
                        column=opts.labelpos,
                    )
            elif label_str and not label:
                raise _BadRow(f"empty label (labelpos={opts.labelpos})", column=opts.labelpos)
        return Record(
            fields[idx_id].strip() if idx_id is not None else str(lineno),
            tokens,
            modifiers,
            label,
            None if idx_weight is None else fields[idx_weight].strip(),
            None if idx_split is None else fields[idx_split].strip(),
            lineno,
        )

    return read_rows(opts.filepath, colsep, parse, stripheader=opts.stripheader, on_bad_row=opts.on_bad_row, stats=stats)


def delimited_options(source, label_kind: str | None = None) -> DelimitedOptions:
    """:class:`DelimitedOptions` from a data-source config section (label, weight and split
    columns where the section has them; ``label_kind="none"`` reads no labels)."""
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


def log_skipped(stats: ReadStats, log, path: str) -> None:
    """One warning line for the rows skipped with ``on_bad_row: skip``."""
    if stats.n_skipped:
        log.warning("%s: skipped %d malformed row(s) (on_bad_row: skip); first: %s", path, stats.n_skipped, "; ".join(stats.reasons))
