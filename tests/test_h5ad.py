"""Tests for biolm.core.expression: the h5py-only AnnData (.h5ad) reader and writer."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from biolm.core.errors import DataError
from biolm.core.h5ad import H5adError, H5adReader, write_h5ad

sp = pytest.importorskip("scipy.sparse")

N, G = 37, 11
GENES = np.array([f"GENE{i:02d}" for i in range(G)])
CELLS = np.array([f"cell_{i}" for i in range(N)])


def _counts(seed=0, density=0.3):
    rng = np.random.default_rng(seed)
    x = rng.poisson(3.0, (N, G)).astype(np.float32)
    x[rng.random((N, G)) > density] = 0
    x[5] = 0  # an empty row
    return x


def _obs():
    return {
        "cell_type": np.array(["T", "B", "NK", "T"] * 9 + ["B"]),
        "batch": np.arange(N) % 3,
        "score": np.linspace(0, 1, N),
        "is_ctrl": np.arange(N) % 2 == 0,
        "donor": np.array([f"d{i % 5}" for i in range(N)]),
    }


@pytest.fixture
def dense_file(tmp_path):
    path = tmp_path / "dense.h5ad"
    write_h5ad(path, _counts(), GENES, CELLS, obs=_obs(), categorical={"cell_type", "batch"})
    return path


@pytest.fixture
def csr_file(tmp_path):
    path = tmp_path / "csr.h5ad"
    write_h5ad(path, sp.csr_matrix(_counts()), GENES, CELLS, obs=_obs(), categorical={"cell_type"})
    return path


# ---------------------------------------------------------------------- round trips
def test_dense_round_trip(dense_file):
    r = H5adReader(dense_file)
    assert not r.is_sparse and (r.n_obs, r.n_vars) == (N, G)
    assert r.var_names.dtype.kind == "U" and np.array_equal(r.var_names, GENES)
    assert np.array_equal(r.obs_names, CELLS)
    x = r.read_all()
    assert x.dtype == np.float32 and np.array_equal(x, _counts())
    assert "dense" in repr(r)


def test_csr_round_trip(csr_file):
    r = H5adReader(csr_file)
    assert r.is_sparse and (r.n_obs, r.n_vars) == (N, G)
    assert np.array_equal(r.read_all(), _counts())
    assert np.array_equal(r.read_rows(4, 9), _counts()[4:9])
    assert r.read_rows(30, 100).shape == (N - 30, G)
    assert r.read_rows(3, 3).shape == (0, G)
    with h5py.File(csr_file) as f:
        assert f["X"].attrs["encoding-type"] == "csr_matrix"
        assert list(f["X"].attrs["shape"]) == [N, G]


def test_integer_counts_are_returned_as_float32(tmp_path):
    path = tmp_path / "int.h5ad"
    write_h5ad(path, sp.csr_matrix(_counts().astype(np.int32)), GENES, CELLS)
    x = H5adReader(path).read_all()
    assert x.dtype == np.float32 and np.array_equal(x, _counts())


@pytest.mark.parametrize("chunk", [1, 4, N, N + 10])
@pytest.mark.parametrize("kind", ["dense_file", "csr_file"])
def test_chunked_iteration_equals_full_read(kind, chunk, request):
    r = H5adReader(request.getfixturevalue(kind))
    starts, parts = zip(*r.iter_chunks(chunk), strict=True)
    assert list(starts) == list(range(0, N, chunk))
    assert all(p.shape[0] <= chunk for p in parts)
    assert np.array_equal(np.concatenate(parts), r.read_all())
    # a row range
    sub = np.concatenate([p for _, p in r.iter_chunks(chunk, start=3, stop=20)])
    assert np.array_equal(sub, _counts()[3:20])


def test_chunk_size_must_be_positive(csr_file):
    with pytest.raises(ValueError):
        next(H5adReader(csr_file).iter_chunks(0))


# ---------------------------------------------------------------------- obs columns
def test_obs_columns_plain_and_categorical(dense_file):
    r = H5adReader(dense_file)
    obs = _obs()
    assert r.obs_columns == list(obs)
    ct = r.obs_column("cell_type")
    assert ct.dtype.kind == "U" and np.array_equal(ct, obs["cell_type"])
    assert np.array_equal(r.obs_column("batch"), obs["batch"].astype(float))  # numeric categories
    assert np.array_equal(r.obs_column("donor"), obs["donor"])
    score = r.obs_column("score")
    assert score.dtype == np.float64 and np.array_equal(score, obs["score"])
    assert np.array_equal(r.obs_column("is_ctrl"), obs["is_ctrl"].astype(float))
    with h5py.File(dense_file) as f:
        grp = f["obs/cell_type"]
        assert grp.attrs["encoding-type"] == "categorical"
        assert set(grp.keys()) == {"codes", "categories"}


def test_missing_obs_column_names_file_and_columns(csr_file):
    r = H5adReader(csr_file)
    with pytest.raises(H5adError) as info:
        r.obs_column("labels")
    msg = str(info.value)
    assert str(csr_file) in msg and "labels" in msg and "cell_type" in msg and "score" in msg
    assert isinstance(info.value, ValueError) and isinstance(info.value, DataError)


def test_categorical_missing_codes(tmp_path):
    path = tmp_path / "missing.h5ad"
    write_h5ad(path, np.zeros((3, 2), np.float32), GENES[:2], CELLS[:3], obs={"ct": np.array(["a", "b", "a"])},
               categorical={"ct"})
    with h5py.File(path, "r+") as f:
        f["obs/ct/codes"][1] = -1
    assert H5adReader(path).obs_column("ct").tolist() == ["a", "", "a"]


def _write_legacy_07(path, x):
    """anndata 0.7 layout: categorical codes with a reference into obs/__categories."""
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=x)
        obs = f.create_group("obs")
        obs.attrs["_index"] = "_index"
        obs.attrs["column-order"] = np.array(["label", "value"], dtype="S")
        obs.create_dataset("_index", data=np.array([c.encode() for c in CELLS[: len(x)]]))
        cats = obs.create_group("__categories").create_dataset("label", data=np.array([b"ctrl", b"stim"]))
        codes = obs.create_dataset("label", data=np.array([0, 1, 1, -1][: len(x)], dtype=np.int8))
        codes.attrs["categories"] = cats.ref
        obs.create_dataset("value", data=np.arange(len(x), dtype=np.int64))
        nullable = obs.create_group("nint")
        nullable.attrs["encoding-type"] = "nullable-integer"
        nullable.create_dataset("values", data=np.arange(len(x)))
        nullable.create_dataset("mask", data=np.array([False, True, False, False][: len(x)]))
        var = f.create_group("var")
        var.attrs["_index"] = "gene_ids"
        var.create_dataset("gene_ids", data=np.array([g.encode() for g in GENES[: x.shape[1]]], dtype="S8"))
        var.create_dataset("symbol", data=np.array([b"A", b"B", b"C"][: x.shape[1]]))


def test_legacy_anndata_07_layout(tmp_path):
    path = tmp_path / "old.h5ad"
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    _write_legacy_07(path, x)
    r = H5adReader(path)
    assert r.var_names.tolist() == GENES[:3].tolist()
    assert r.obs_column("label").tolist() == ["ctrl", "stim", "stim", ""]
    assert r.obs_column("value").tolist() == [0.0, 1.0, 2.0, 3.0]
    nint = r.obs_column("nint")
    assert np.isnan(nint[1]) and nint[[0, 2, 3]].tolist() == [0.0, 2.0, 3.0]
    assert r.var_column("symbol").tolist() == ["A", "B", "C"]
    assert r.obs_columns == ["label", "value"]
    assert np.array_equal(r.read_all(), x.astype(np.float32))


def test_old_h5sparse_csr_attrs(tmp_path):
    path = tmp_path / "h5sparse.h5ad"
    m = sp.csr_matrix(_counts())
    write_h5ad(path, m, GENES, CELLS)
    with h5py.File(path, "r+") as f:
        for k in ("encoding-type", "encoding-version", "shape"):
            del f["X"].attrs[k]
        f["X"].attrs["h5sparse_format"] = "csr"
        f["X"].attrs["h5sparse_shape"] = np.array([N, G])
    assert np.array_equal(H5adReader(path).read_all(), _counts())


def test_non_canonical_csr_duplicates_are_summed(tmp_path):
    path = tmp_path / "dups.h5ad"
    m = sp.csr_matrix((np.array([1.0, 2.0, 5.0], np.float32), np.array([1, 1, 0]), np.array([0, 2, 3])), shape=(2, 3))
    m.has_canonical_format = False
    write_h5ad(path, m, GENES[:3], CELLS[:2])
    assert H5adReader(path).read_all().tolist() == [[0, 3, 0], [5, 0, 0]]


def test_layers_and_raw(tmp_path):
    path = tmp_path / "layers.h5ad"
    x = _counts()
    write_h5ad(path, np.log1p(x), GENES, CELLS)
    with h5py.File(path, "r+") as f:
        src = sp.csr_matrix(x)
        for where in ("layers/counts", "raw/X"):
            grp = f.require_group(where)
            grp.attrs["encoding-type"] = "csr_matrix"
            grp.attrs["shape"] = np.array([N, G])
            for k in ("data", "indices", "indptr"):
                grp.create_dataset(k, data=getattr(src, k))
        raw_var = f["raw"].create_group("var")
        raw_var.attrs["_index"] = "_index"
        raw_var.create_dataset("_index", data=np.array([g.encode() for g in GENES]))
    assert np.array_equal(H5adReader(path, layer="counts").read_all(), x)
    raw = H5adReader(path, layer="raw")
    assert np.array_equal(raw.read_all(), x) and np.array_equal(raw.var_names, GENES)
    with pytest.raises(H5adError, match="layers/spliced"):
        H5adReader(path, layer="spliced")


# ---------------------------------------------------------------------- malformed files
def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(H5adError, match="no such file"):
        H5adReader(tmp_path / "nope.h5ad")
    bad = tmp_path / "text.h5ad"
    bad.write_text("cell,gene\n")
    with pytest.raises(ValueError, match="not a readable HDF5") as info:
        H5adReader(bad)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda f: f.__delitem__("X"), "expected an expression matrix at 'X'"),
        (lambda f: f["X"].attrs.__setitem__("encoding-type", "csc_matrix"), "CSC"),
        (lambda f: f["X"].__delitem__("indptr"), "lacks dataset"),
        (lambda f: f["X"].attrs.__setitem__("shape", np.array([N + 1, G])), "indptr of length"),
        (lambda f: f["X"].attrs.__setitem__("shape", np.array([N, G + 1])), "columns but var has"),
        (lambda f: f["var"].attrs.__setitem__("_index", "gene_symbols"), "_index"),
        (lambda f: f.__delitem__("var"), "dataframe group 'var'"),
    ],
)
def test_malformed_files_raise_value_error_naming_the_file(csr_file, breakage, message):
    with h5py.File(csr_file, "r+") as f:
        breakage(f)
    with pytest.raises(ValueError, match=message) as info:
        H5adReader(csr_file)
    assert str(info.value).startswith(str(csr_file))


def test_corrupt_csr_indices_are_reported_on_read(csr_file):
    with h5py.File(csr_file, "r+") as f:
        f["X/indices"][0] = G + 3
    r = H5adReader(csr_file)
    with pytest.raises(H5adError, match="column indices"):
        r.read_all()


def test_obs_length_mismatch(tmp_path):
    path = tmp_path / "short_obs.h5ad"
    write_h5ad(path, _counts(), GENES, CELLS)
    with h5py.File(path, "r+") as f:
        del f["obs/_index"]
        f["obs"].create_dataset("_index", data=np.array([b"a", b"b"]))
    with pytest.raises(H5adError, match="2 cell ids"):
        _ = H5adReader(path).obs_names


def test_writer_validates_inputs(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_h5ad(tmp_path / "a.h5ad", np.zeros((3, 2)), GENES[:3], CELLS[:3])
    with pytest.raises(ValueError, match="not in obs"):
        write_h5ad(tmp_path / "a.h5ad", np.zeros((3, 3)), GENES[:3], CELLS[:3], categorical={"x"})
    with pytest.raises(ValueError, match="CSR"):
        write_h5ad(tmp_path / "a.h5ad", sp.csc_matrix(np.zeros((3, 3))), GENES[:3], CELLS[:3])
