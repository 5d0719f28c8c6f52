"""Feature records in the dataset store: sparse rows on disk, dense batches out, hashing, atomicity."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from biolm.core.batching import make_loader
from biolm.core.store import Store, build_store, feature_record, file_sha256, open_or_build, source_hash


def _records(n=30, shape=(3, 7), seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n,) + shape).astype(np.float32) * (rng.random((n,) + shape) < 0.3)
    recs = [feature_record(f"r{i}", dense[i], label=f"{i}", split=str(i % 3), weight="GOOD" if i % 2 else None) for i in range(n)]
    return dense, recs


def test_dense_and_sparse_records_round_trip_as_dense_batches(tmp_path):
    dense, recs = _records()
    path = tmp_path / "f.h5"
    build_store(path, recs, {"source_hash": "h"}, 1, feature_shape=(3, 7))
    s = Store(path)
    assert s.feature_shape == (3, 7) and len(s) == 30 and s.meta["record_kind"] == "features"
    # only non-zeros are stored
    assert s.meta["n_tokens"] == int((dense != 0).sum())
    idx = [17, 0, 29, 5, 5]
    batch = s.read_features(idx)
    assert batch.shape == (5, 3, 7) and batch.dtype == np.float32
    assert np.array_equal(batch, dense[idx])
    assert s.ids.tolist()[:3] == ["r0", "r1", "r2"] and s.splits.tolist()[:4] == ["0", "1", "2", "0"]
    # a sparse row given as (indices, values) is the same record
    flat = dense[3].reshape(-1)
    nz = np.flatnonzero(flat)
    r = feature_record("x", flat[nz], nz)
    assert np.array_equal(r.ids, recs[3].ids) and np.array_equal(r.mods, recs[3].mods)


def test_loader_yields_features_and_token_store_is_unchanged(tmp_path):
    dense, recs = _records(n=20, shape=(11,))
    path = tmp_path / "f.h5"
    build_store(path, recs, {"source_hash": "h"}, 1, feature_shape=(11,))
    s = Store(path)
    seen = []
    for b in make_loader(s, np.arange(20), batch_size=6, shuffle=True, seed=3):
        assert set(b) == {"features", "index"} and b["features"].dtype == torch.float32
        assert torch.equal(b["features"], torch.from_numpy(dense[b["index"].numpy()]))
        seen += b["index"].tolist()
    assert sorted(seen) == list(range(20))
    with pytest.raises(ValueError, match="token records"):
        build_store(tmp_path / "t.h5", [], {"source_hash": "h"}, 0)
        Store(tmp_path / "t.h5").read_features([0])


def test_feature_indices_are_checked_and_failed_builds_leave_nothing(tmp_path):
    path = tmp_path / "f.h5"
    bad = feature_record("b", np.array([1.0, 2.0], dtype=np.float32), np.array([1, 9]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        build_store(path, [feature_record("a", np.ones(4))] + [bad], {"source_hash": "h"}, 1, feature_shape=(4,))
    assert not path.exists() and not [p for p in os.listdir(tmp_path) if "tmp" in p]


def test_reuse_by_hash_and_folder_hash(tmp_path):
    folder = tmp_path / "arrays"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"s{i}.npy", np.full((2, 3), i, dtype=np.float32))
    h1 = file_sha256(folder)
    _, recs = _records(n=5, shape=(2, 3))
    path = tmp_path / "f.h5"
    built = []

    def build_with(digest):
        def build(p):
            built.append(p)
            build_store(p, recs, {"source_hash": digest}, 1, feature_shape=(2, 3))

        return build

    digest = source_hash(folder, {"o": 1}, "tok")
    open_or_build(path, digest, build_with(digest), log=lambda m: None)
    open_or_build(path, digest, build_with(digest), log=lambda m: None)
    assert len(built) == 1  # reused
    np.save(folder / "s1.npy", np.full((2, 3), 7, dtype=np.float32))
    assert file_sha256(folder) != h1
    lines = []
    digest = source_hash(folder, {"o": 1}, "tok")
    open_or_build(path, digest, build_with(digest), log=lines.append)
    assert len(built) == 2 and "input file changed" in lines[0]
