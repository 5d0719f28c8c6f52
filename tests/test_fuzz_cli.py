"""Random input never crashes biolm (issue 9): random bytes or YAML as the config file, random
delimited rows as the data, into ``tokenize`` and ``fine-tune``. Every run ends with exit code 0,
or 2 and one ``error:`` line; never a traceback, never a temporary file, a staging folder or a
result of a failed run left behind.

The fast tests try a few dozen inputs; ``-m slow`` runs the long variant with many more.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import cli

pytestmark = pytest.mark.usefixtures("one_thread")
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

DATA = "s1\t1\t1.5\tstable\tGOOD\ta,c,g,t,a,c\ns2\t2\t0.5\tunstable\tWEAK\tc,c,g,aej,t,t,a\ns3\t3\t2.5\tstable\tPOOR\tg,g,a,c\ns4\t1\t1.0\tunstable\tGOOD\tt,t,a,c,g\n"


def base_config(root: Path, data: Path) -> dict:
    src = {"filepath": str(data), "columnsep": "\t", "tokensep": ",", "idpos": 1, "seqpos": 6}
    return {
        "outputpath": str(root / "out"),
        "tokenizing and pre-training data source": dict(src),
        "fine-tuning data source": dict(src, labelpos=3, splitratio="50,50"),
        "settings": {"training": {"batchsize": 4, "blocksize": 16, "nepochs": 1}},
        "model": {"kernel_width": 4, "cutoff": 16, "head_hidden": 4, "rb_do": 0.0},
    }


def check(r, out: Path, mode: str) -> None:
    """Exit 0, or exit 2 with one error line; nothing half-done anywhere below ``out``."""
    assert r.code in (0, 2), (r.code, r.err[-2000:], r.exception)
    assert "Traceback" not in r.err + r.out
    if r.code == 2:
        assert len(r.lines) == 1 and r.lines[0].startswith("error: "), r.err
    files = [p for p in out.rglob("*")] if out.exists() else []
    assert not [p for p in files if ".tmp-" in p.name or p.name.startswith(".staging-") or p.name == ".publish.json"]
    if r.code == 2 and mode == "tokenize":
        assert not (out / "tokenizer.json").exists()
    if r.code == 2 and mode == "fine-tune":
        assert not [p for p in files if p.name in ("pytorch_model.bin", "cv_results.json", "test_predictions.csv")]


def run_config(text: bytes | str, mode: str, data: str = DATA) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "rna.txt").write_text(data, encoding="utf-8")
        cfg = root / "c.yaml"
        cfg.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        task = ("--task", "regression") if mode == "fine-tune" else ()
        r = cli("--quiet", "lcl", mode, *task, "-c", cfg, "--outputpath", root / "out")
        check(r, root / "out", mode)


# --------------------------------------------------------------------------- strategies

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["\t", " ", ",", "", "None", "False", "~", "70,30", "1e-4", "[1, 2]", "{a: 1}", "regression"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
# real keys, with values a user might write (so that runs get far) or anything at all
PLAUSIBLE = {
    "columnsep": ["\t"], "tokensep": [",", " ", "\t", "", None, False], "specifiersep": [None, "#"], "idpos": [1, 2], "seqpos": [6, 5],
    "stripheader": [False, True], "on_bad_row": ["skip", "error"], "labelpos": [3, 2, 4], "weightpos": [None, 5, 3], "splitpos": [None, 2],
    "splitratio": ["50,50", "70,30", [50, 50], "40/30/30"], "crossvalidation": [False, 2], "devsplits": [None, [1]], "testsplits": [None, [2]],
    "cvscheme": ["kfold", "shuffle"], "samplesize": [None, 1, 2], "lefttailing": [True, False], "kernel_width": [2, 4], "head_hidden": [2, 4],
    "handletokens": ["mask"], "pretrainedmodel": ["ROOT/out/fine-tune/0"], "bogus": [1], None: ["ROOT/out", "ROOT/out2"],
}
KEYS = [
    ("tokenizing and pre-training data source", k) for k in ("columnsep", "tokensep", "specifiersep", "idpos", "seqpos", "stripheader", "on_bad_row")
] + [
    ("fine-tuning data source", k) for k in ("labelpos", "weightpos", "splitpos", "splitratio", "crossvalidation", "devsplits", "testsplits", "cvscheme", "tokensep", "on_bad_row")
] + [
    ("tokenization", "samplesize"), ("tokenization", "lefttailing"), ("settings", "seed"), ("settings", "training"), ("model", "kernel_width"),
    ("model", "head_hidden"), ("model", "bogus"), ("looscores", "handletokens"), ("inference model", "pretrainedmodel"), ("outputpath", None),
]
TRAINING = [("scaling", st.sampled_from(["log", "minmax", "standard", "none", "lgo", 3])), ("lr", VALUES), ("patience", st.integers(-1, 3)), ("clipnorm", VALUES), ("qualityweights", VALUES), ("optimizer", VALUES)]


@st.composite
def configs(draw) -> str:
    cfg = base_config(Path("ROOT"), Path("ROOT/rna.txt"))  # ROOT: each run's folder
    for section, key in draw(st.lists(st.sampled_from(KEYS), max_size=3)):
        value = draw(st.sampled_from(PLAUSIBLE.get(key, [0])) if key in PLAUSIBLE and draw(st.booleans()) else VALUES)
        if key is None:
            cfg[section] = value
        elif section == "settings" and key == "seed":
            cfg["seed"] = value
        elif section == "settings":
            name, strategy = draw(st.sampled_from(TRAINING))
            cfg["settings"]["training"][name] = draw(strategy)
        elif isinstance(cfg.get(section), dict):
            cfg[section][key] = value
        else:
            cfg[section] = {key: value}
    return yaml.safe_dump(cfg, allow_unicode=True)


FIELD = st.lists(st.sampled_from(list("acgtACGT,;\"' \tx9.-éN\r") + ["aej", ",,", '""']), max_size=8).map("".join)


@st.composite
def rows(draw) -> str:
    """Mostly well-formed rows with random faults: short rows, bad labels, empty tokens, quotes."""
    out = []
    for i in range(draw(st.integers(0, 10))):
        tokens = draw(st.lists(st.sampled_from(["a", "c", "g", "t", "A", "aej", "N"]), min_size=1, max_size=20))
        label = draw(st.one_of(st.floats(-5, 5).map(lambda x: f"{x:.3f}"), FIELD))
        fields = [f"id{i}", "1", label, "stable", "GOOD", ",".join(tokens)]
        if draw(st.integers(0, 9)) == 0:
            fields[draw(st.integers(0, 5))] = draw(FIELD)
        if draw(st.integers(0, 15)) == 0:
            fields = fields[: draw(st.integers(0, 5))]
        out.append("\t".join(fields))
    return "\n".join(out) + draw(st.sampled_from(["\n", "", "\n\n"]))


# --------------------------------------------------------------------------- the tests


@settings(FUZZ, max_examples=30)
@given(st.binary(max_size=300))
def test_random_bytes_as_the_config(raw):
    run_config(raw, "tokenize")


@settings(FUZZ, max_examples=30)
@given(configs())
def test_random_yaml_into_tokenize(text):
    _run_yaml(text, "tokenize")


@settings(FUZZ, max_examples=12)
@given(configs())
def test_random_yaml_into_fine_tune(text):
    _run_yaml(text, "fine-tune")


@settings(FUZZ, max_examples=12)
@given(rows())
def test_random_rows_into_tokenize_and_fine_tune(data):
    _run_rows(data)


@pytest.mark.slow
@settings(FUZZ, max_examples=200)
@given(configs(), rows())
def test_random_yaml_and_rows_long(text, data):
    _run_yaml(text, "tokenize")
    _run_yaml(text, "fine-tune", data)


def _run_yaml(text: str, mode: str, data: str = DATA) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "rna.txt").write_text(data, encoding="utf-8")
        cfg = root / "c.yaml"
        cfg.write_text(text.replace("ROOT", str(root)), encoding="utf-8")
        task = ("--task", "regression") if mode == "fine-tune" else ()
        r = cli("--quiet", "lcl", mode, *task, "-c", cfg)
        check(r, root / "out", mode)


def _run_rows(data: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "rna.txt").write_text(data, encoding="utf-8")
        cfg = root / "c.yaml"
        cfg.write_text(yaml.safe_dump(base_config(root, root / "rna.txt")), encoding="utf-8")
        for mode, task in (("tokenize", ()), ("fine-tune", ("--task", "regression"))):
            r = cli("--quiet", "lcl", mode, *task, "-c", cfg)
            check(r, root / "out", mode)
