"""Delimited-text parsing: separators, quoting, gzip, positions, errors (ANCHOR_PITFALLS "Data")."""

from __future__ import annotations

import gzip
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biolm.core.delimited import DelimitedOptions, ReadStats, Record, read_records
from biolm.core.errors import BiolmError, ConfigError, DataError
from biolm.core.atomic_tokenizer import AtomicTokenizer


def write(tmp_path, text, name="data.tsv"):
    p = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(p, "wt", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        p.write_bytes(text.encode("utf-8"))
    return str(p)


def read(path, **kw):
    kw.setdefault("idpos", 1)
    kw.setdefault("labelpos", 2)
    kw.setdefault("seqpos", 3)
    return list(read_records(DelimitedOptions(path, **kw)))


def test_reference_layout_tab_comma(tmp_path):
    p = write(tmp_path, "id\tlabel\tseq\nENST1\t0.2\ta,t,g,gej,c\n\n  \nENST2\t3.4\tA,C,aej\n")
    stats = ReadStats()
    recs = list(read_records(DelimitedOptions(p, tokensep=",", stripheader=True, idpos=1, labelpos=2, seqpos=3, label_kind="float"), stats))
    assert [r.id for r in recs] == ["ENST1", "ENST2"]
    assert recs[0].tokens == ["a", "t", "g", "gej", "c"]  # multi-character tokens kept whole
    assert recs[1].tokens == ["A", "C", "aej"]
    assert [r.label for r in recs] == ["0.2", "3.4"]
    assert [r.line for r in recs] == [2, 5]  # physical 1-based lines, blank lines counted
    assert recs[0].modifiers is None and recs[0].weight is None and recs[0].split is None
    assert stats.n_records == 2 and stats.n_blank == 2 and stats.header == "id\tlabel\tseq"


def test_no_tokensep_gives_one_token_per_character(tmp_path):
    p = write(tmp_path, "x\t1\tACGTn\n")
    (r,) = read(p, tokensep=None)
    assert r.tokens == "ACGTn" and len(r.tokens) == 5 and list(r.tokens) == ["A", "C", "G", "T", "n"]
    (r,) = read(p, tokensep="")  # the reference spelling of "unset"
    assert r.tokens == "ACGTn"


def test_seqpos_equal_idpos_does_not_split_into_characters(tmp_path):
    # The reference's own example has idpos: 1 and seqpos: 1; its regex then leaked columns.
    p = write(tmp_path, "acgt\tother\n")
    (r,) = list(read_records(DelimitedOptions(p, idpos=1, seqpos=1)))
    assert r.id == "acgt" and r.tokens == "acgt"


@pytest.mark.parametrize("sep", ["\t", ",", "|", ".", ";", " ", "::", "||", "\t\t", "<>"])
def test_any_column_separator(tmp_path, sep):
    p = write(tmp_path, sep.join(["s1", "-2", "a-c-g", "w", "train"]) + "\n")
    (r,) = read(p, columnsep=sep, tokensep="-", weightpos=4, splitpos=5)
    assert (r.id, r.label, r.tokens, r.weight, r.split) == ("s1", "-2", ["a", "c", "g"], "w", "train")


@pytest.mark.parametrize("sep", [",", "|", "::", "\t"])
def test_quoted_fields_may_contain_the_separator(tmp_path, sep):
    line = sep.join(['"id' + sep + '1"', '"0.5"', '"a' + sep + 'c' + sep + 'g"']) + "\n"
    p = write(tmp_path, line)
    (r,) = read(p, columnsep=sep, tokensep=sep)
    assert r.id == "id" + sep + "1" and r.label == "0.5" and r.tokens == ["a", "c", "g"]


@pytest.mark.parametrize("sep", [",", "::"])
def test_doubled_quote_is_a_literal_quote(tmp_path, sep):
    p = write(tmp_path, sep.join(['"say ""hi"""', "1", "acg"]) + "\n")
    (r,) = read(p, columnsep=sep)
    assert r.id == 'say "hi"'


@pytest.mark.parametrize("sep", [",", "::"])
def test_unterminated_quote_is_an_error(tmp_path, sep):
    p = write(tmp_path, sep.join(['"open', "1", "acg"]) + "\n")
    with pytest.raises(DataError, match=r"data.tsv:1"):
        read(p, columnsep=sep)


def test_columnsep_equal_tokensep_needs_quotes(tmp_path):
    p = write(tmp_path, "s1,0.5,a,c,g\n")
    with pytest.raises(DataError, match="quote the sequence field"):
        read(p, columnsep=",", tokensep=",")


def test_gzip_by_suffix_and_by_magic(tmp_path):
    text = "s1\t1\tacg\ns2\t2\tttt\n"
    p = write(tmp_path, text, "data.tsv.gz")
    assert [r.tokens for r in read(p)] == ["acg", "ttt"]
    q = tmp_path / "nosuffix.txt"
    q.write_bytes(gzip.compress(text.encode()))
    assert [r.id for r in read(str(q))] == ["s1", "s2"]


def test_gz_suffix_but_plain_text_is_an_error(tmp_path):
    p = tmp_path / "x.tsv.gz"
    p.write_text("s1\t1\tacg\n")
    with pytest.raises(DataError, match="not gzip"):
        read(str(p))


def test_truncated_gzip_is_a_data_error(tmp_path):
    data = gzip.compress(("s1\t1\t" + "a" * 100000 + "\n").encode() * 20)
    p = tmp_path / "t.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read(str(p))


def test_crlf_and_bom(tmp_path):
    p = tmp_path / "w.tsv"
    p.write_bytes("\ufeffs1\t1\tac\r\ns2\t2\tgt\r\n".encode())
    recs = read(str(p))
    assert [(r.id, r.tokens) for r in recs] == [("s1", "ac"), ("s2", "gt")]


def test_whitespace_around_tokens_and_fields_is_stripped(tmp_path):
    p = write(tmp_path, " s1 \t 0.5 \t a#2.5#0.2, c, A, g#5.7 \n")
    (r,) = read(p, tokensep=",", specifiersep="#", label_kind="float")
    assert r.id == "s1" and r.label == "0.5"
    assert r.tokens == ["a", "c", "A", "g"]
    assert [list(m) for m in r.modifiers] == [[2.5, 0.2], [], [], [5.7]]


def test_whitespace_tokensep_collapses_runs(tmp_path):
    p = write(tmp_path, "s1\t1\tAla  Gly Ser\n")
    (r,) = read(p, tokensep=" ")
    assert r.tokens == ["Ala", "Gly", "Ser"]


def test_no_modifier_on_line_gives_none(tmp_path):
    p = write(tmp_path, "s1\t1\ta,c\n")
    (r,) = read(p, tokensep=",", specifiersep="#")
    assert r.modifiers is None


def test_modifier_channels_numeric_max_not_lexicographic(tmp_path):
    # The reference took max over strings: "2" > "10" gave too few channels, then crashed.
    mods10 = "#".join(str(i) for i in range(10))
    p = write(tmp_path, f"s1\t1\ta#1#2,c\ns2\t2\tg#{mods10},t\ns3\t3\ta#5.7,c\n")
    recs = read(p, tokensep=",", specifiersep="#")
    assert [len(m) for m in recs[1].modifiers] == [10, 0]
    assert AtomicTokenizer.fit(recs).n_modifiers == 10
    p2 = write(tmp_path, "s1\t1\ta#2.5#0.2,c,A,g#5.7\n", "readme.tsv")
    assert AtomicTokenizer.fit(read(p2, tokensep=",", specifiersep="#")).n_modifiers == 2


# -- errors ------------------------------------------------------------------------------------


def test_too_few_columns_names_file_line_and_position(tmp_path):
    p = write(tmp_path, "s1\t1\tacg\tw\tx\ns2\t2\tacg\n")
    with pytest.raises(DataError) as e:
        list(read_records(DelimitedOptions(p, idpos=1, seqpos=3, labelpos=5)))
    assert str(e.value) == f"{p}:2: expected at least 5 columns (labelpos=5), found 3"
    assert e.value.line == 2 and e.value.file == p
    assert isinstance(e.value, BiolmError)


def test_non_numeric_label(tmp_path):
    p = write(tmp_path, "s1\t0.5\tacg\ns2\thigh\tacg\n")
    with pytest.raises(DataError, match=r":2:2: label 'high' is not a finite number \(labelpos=2\)"):
        read(p, label_kind="float")
    assert read(p)[1].label == "high"  # label_kind None keeps strings


def test_nan_label_is_rejected_for_regression(tmp_path):
    p = write(tmp_path, "s1\tnan\tacg\n")
    with pytest.raises(DataError, match="not a finite number"):
        read(p, label_kind="float")


def test_header_hint_when_first_line_fails(tmp_path):
    p = write(tmp_path, "id\tlabel\tseq\ns1\t0.5\tacg\n")
    with pytest.raises(DataError, match="stripheader"):
        read(p, label_kind="float")


def test_empty_label_for_classification(tmp_path):
    p = write(tmp_path, "s1\t\tacg\n")
    with pytest.raises(DataError, match="empty label"):
        read(p, label_kind="str")


def test_empty_sequence(tmp_path):
    p = write(tmp_path, "s1\t0.5\t  \n")
    with pytest.raises(DataError, match=r":1:3: empty sequence \(seqpos=3\)"):
        read(p)


@pytest.mark.parametrize("seq,pos", [("a,,c", 2), (",a", 1), ("a,c,", 3), ("a, ,c", 2)])
def test_empty_token(tmp_path, seq, pos):
    p = write(tmp_path, f"s1\t1\t{seq}\n")
    with pytest.raises(DataError, match=f"empty token at position {pos}"):
        read(p, tokensep=",")


def test_modifier_not_a_number(tmp_path):
    p = write(tmp_path, "s1\t1\tc,c,c,c,c,c,a#x\n")
    with pytest.raises(DataError) as e:
        read(p, tokensep=",", specifiersep="#")
    assert str(e.value).endswith("token 'a#x' at position 7: modifier 'x' is not a number")
    assert e.value.line == 1


def test_specifier_without_token(tmp_path):
    p = write(tmp_path, "s1\t1\ta,#2.5\n")
    with pytest.raises(DataError, match="no token before specifier"):
        read(p, tokensep=",", specifiersep="#")


def test_whitespace_in_contiguous_sequence(tmp_path):
    p = write(tmp_path, "s1\t1\tAC GT\n")
    with pytest.raises(DataError, match="whitespace"):
        read(p)


def test_invalid_utf8(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_bytes(b"s1\t1\tacg\ns2\t1\ta\xffg\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: not valid UTF-8"):
        read(str(p))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read(str(tmp_path / "nope.tsv"))


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(DataError, match="directory"):
        read(str(tmp_path))


def test_skip_bad_rows_counts_and_keeps_reasons(tmp_path):
    lines = ["s0\t1\tacg"] + [f"s{i}\tbad\tacg" for i in range(1, 9)] + ["s9\t2\t", "s10\t3\tgg", "short"]
    p = write(tmp_path, "\n".join(lines) + "\n")
    stats = ReadStats()
    opts = DelimitedOptions(p, idpos=1, labelpos=2, seqpos=3, label_kind="float", on_bad_row="skip")
    recs = list(read_records(opts, stats))
    assert [r.id for r in recs] == ["s0", "s10"]
    assert stats.n_skipped == 10 and stats.n_records == 2
    assert len(stats.reasons) == 5 and stats.reasons[0].startswith("line 2: label 'bad'")


@pytest.mark.parametrize(
    "kw,key",
    [
        (dict(seqpos=0), "seqpos"),
        (dict(labelpos=True), "labelpos"),
        (dict(idpos=-1), "idpos"),
        (dict(columnsep=""), "columnsep"),
        (dict(specifiersep="#"), "specifiersep"),  # needs tokensep
        (dict(tokensep="#", specifiersep="#"), "specifiersep"),
        (dict(on_bad_row="ignore"), "on_bad_row"),
        (dict(label_kind="int"), "label_kind"),
    ],
)
def test_option_validation(kw, key):
    with pytest.raises(ConfigError) as e:
        DelimitedOptions("x.tsv", **kw)
    assert e.value.key == key


def test_options_are_frozen_and_hashable():
    o = DelimitedOptions("x.tsv", tokensep=",", specifiersep=False)
    assert o.specifiersep is None
    with pytest.raises(Exception):
        o.seqpos = 2
    assert "filepath" not in o.parsing_options() and o.parsing_options()["tokensep"] == ","


def test_streaming_is_lazy(tmp_path):
    # A bad row late in the file is only hit when reached: records stream, nothing is preloaded.
    p = write(tmp_path, "s1\t1\tacg\ns2\n")
    it = read_records(DelimitedOptions(p, idpos=1, labelpos=2, seqpos=3))
    assert isinstance(next(it), Record)
    with pytest.raises(DataError):
        next(it)


# -- property: writing records with any separator and reading them back is the identity ----------

_token = st.sampled_from(["a", "c", "g", "t", "A", "gej", "AEJ", "n", "ü"])
_text = st.text(alphabet=string.ascii_letters + string.digits + "_-|.,: \t\"", min_size=1, max_size=8).map(str.strip).filter(bool)


@settings(max_examples=60, deadline=None)
@given(
    sep=st.sampled_from(["\t", ",", "|", ".", "::", ";"]),
    rows=st.lists(st.tuples(_text, st.floats(-1e6, 1e6, allow_nan=False), st.lists(_token, min_size=1, max_size=20)), min_size=1, max_size=8),
)
def test_roundtrip_any_separator(tmp_path_factory, sep, rows):
    def q(field):
        # Quote what would be ambiguous unquoted: also a field ending in part of a multi-character
        # separator ("a:" before "::" reads as "a" then ":...").
        if any(c in field for c in sep + '"'):
            return '"' + field.replace('"', '""') + '"'
        return field

    lines = [sep.join([q(i), q(repr(lab)), q(" ".join(toks))]) for i, lab, toks in rows]
    p = tmp_path_factory.mktemp("rt") / "d.txt"
    p.write_bytes(("\n".join(lines) + "\n").encode())
    recs = list(read_records(DelimitedOptions(str(p), columnsep=sep, tokensep=" ", idpos=1, labelpos=2, seqpos=3, label_kind="float")))
    assert [(r.id, float(r.label), r.tokens) for r in recs] == [(i, lab, toks) for i, lab, toks in rows]


@pytest.mark.parametrize("seq", ["a#1,c,é#2#3,g", "a#1,c,\x00x#2#3,g", "a#1,c,x#2#3,g"])
def test_specifiers_on_ascii_unicode_and_odd_tokens(tmp_path, seq):
    # the ascii fast scan and the per-token fallback must agree
    p = write(tmp_path, f"s1\t1\t{seq}\n")
    (r,) = read(p, tokensep=",", specifiersep="#")
    assert r.tokens[0] == "a" and r.tokens[1] == "c" and r.tokens[3] == "g" and "#" not in r.tokens[2]
    assert [list(m) for m in r.modifiers] == [[1.0], [], [2.0, 3.0], []]


@pytest.mark.parametrize("spec", ["#", "##"])
def test_first_bad_modifier_is_reported(tmp_path, spec):
    p = write(tmp_path, f"s1\t1\ta{spec}1,c{spec}y,g{spec}z\n")
    with pytest.raises(DataError, match=f"token 'c{spec}y' at position 2"):
        read(p, tokensep=",", specifiersep=spec)


def test_specifiers_with_whitespace_tokensep(tmp_path):
    p = write(tmp_path, "s1\t1\tAla#0.5  Gly Ser#1#2\n")
    (r,) = read(p, tokensep=" ", specifiersep="#")
    assert r.tokens == ["Ala", "Gly", "Ser"] and [list(m) for m in r.modifiers] == [[0.5], [], [1.0, 2.0]]
