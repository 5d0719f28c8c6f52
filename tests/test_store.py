"""HDF5 dataset store: round trip, reuse/rebuild by hash, atomic writes, lazy reads, loaders."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

import biolm.core.store as store_mod
from biolm.core.delimited import DelimitedOptions, read_records
from biolm.core.errors import BiolmError
from biolm.core.batching import make_loader
from biolm.core.store import STORE_FORMAT, EncodedRecord, Store, build_store, open_or_build, source_hash
from biolm.core.atomic_tokenizer import AtomicTokenizer, encode_records


def make_records(n=25, m=2, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        L = int(rng.integers(1, 40))
        out.append(
            EncodedRecord(
                id=f"seq{i}",
                ids=rng.integers(-1, 9, L).astype(np.int32),
                mods=rng.random((L, m)).astype(np.float32),
                label=None if i % 5 == 0 else f"{i / 3:.3f}",
                weight="GOOD" if i % 2 else None,
                split=str(i % 3),
                start=i,
                orig_len=L + i,
            )
        )
    return out


@pytest.fixture
def built(tmp_path):
    recs = make_records()
    path = str(tmp_path / "s.h5")
    build_store(path, recs, {"source_hash": "abc", "source": "x.tsv"}, n_modifiers=2)
    return path, recs


def test_roundtrip(built):
    path, recs = built
    s = Store(path)
    assert len(s) == len(recs)
    assert s.meta["source_hash"] == "abc" and s.meta["source"] == "x.tsv" and s.meta["format_version"] == STORE_FORMAT
    assert s.meta["n_tokens"] == sum(len(r.ids) for r in recs) and s.n_modifiers == 2
    assert s.ids.tolist() == [r.id for r in recs]
    assert s.labels.tolist() == [r.label or "" for r in recs]
    assert s.weights.tolist() == [r.weight or "" for r in recs]
    assert s.splits.tolist() == [r.split for r in recs]
    assert s.starts.tolist() == [r.start for r in recs]
    assert s.orig_lengths.tolist() == [r.orig_len for r in recs]
    assert s.lengths.tolist() == [len(r.ids) for r in recs]
    for i in (0, 7, len(recs) - 1, -1):
        ids, mods = s.get(i)
        assert ids.dtype == np.int32 and mods.dtype == np.float32
        assert np.array_equal(ids, recs[i].ids) and np.array_equal(mods, recs[i].mods)
    with pytest.raises(IndexError):
        s.get(len(recs))


def test_read_batch_order_padding_and_pad_to(built):
    path, recs = built
    s = Store(path)
    idx = [7, 0, 24, 3, 3]
    ids, mods, lengths = s.read_batch(idx)
    L = max(len(recs[i].ids) for i in idx)
    assert ids.shape == (5, L) and ids.dtype == np.int64
    assert mods.shape == (5, L, 2) and mods.dtype == np.float32
    assert lengths.tolist() == [len(recs[i].ids) for i in idx]
    for row, i in enumerate(idx):
        n = len(recs[i].ids)
        assert ids[row, :n].tolist() == recs[i].ids.tolist() and (ids[row, n:] == -1).all()
        assert np.array_equal(mods[row, :n], recs[i].mods) and not mods[row, n:].any()
    ids, mods, _ = s.read_batch(idx, pad_to=64)
    assert ids.shape == (5, 64) and mods.shape == (5, 64, 2)
    with pytest.raises(ValueError, match="pad_to"):
        s.read_batch(idx, pad_to=1)
    with pytest.raises(IndexError):
        s.read_batch([len(recs)])
    e = s.read_batch([])
    assert e[0].shape == (0, 0)


def test_read_batch_far_apart_and_contiguous_agree(tmp_path, monkeypatch):
    recs = make_records(300, m=1, seed=3)
    path = str(tmp_path / "s.h5")
    build_store(path, recs, {}, 1)
    s = Store(path)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 300, 40)
    ref = [s.get(i) for i in idx]
    for chunk in (1 << 13, 1):  # merged ranges vs one read per record
        monkeypatch.setattr(store_mod, "_TOKEN_CHUNK", chunk)
        ids, mods, lengths = s.read_batch(idx)
        for row, (ri, rm) in enumerate(ref):
            assert np.array_equal(ids[row, : lengths[row]], ri) and np.array_equal(mods[row, : lengths[row]], rm)


def test_no_modifiers_and_incremental_flushes(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "_FLUSH_TOKENS", 50)  # force many block writes
    recs = make_records(60, m=0, seed=1)
    path = str(tmp_path / "s.h5")
    build_store(path, iter(recs), {}, 0)
    s = Store(path)
    assert len(s) == 60 and s.n_modifiers == 0
    ids, mods = s.get(59)
    assert np.array_equal(ids, recs[59].ids) and mods.shape == (len(ids), 0)
    ids, mods, lengths = s.read_batch(range(60))
    assert mods.shape[2] == 0 and lengths.tolist() == [len(r.ids) for r in recs]
    assert s.offsets[-1] == sum(len(r.ids) for r in recs)


def test_empty_store(tmp_path):
    path = str(tmp_path / "e.h5")
    build_store(path, [], {}, 0)
    assert len(Store(path)) == 0


def test_bad_record_shapes(tmp_path):
    bad = EncodedRecord("x", np.zeros(3, np.int32), np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="mods shape"):
        build_store(str(tmp_path / "b.h5"), [bad], {}, 2)
    assert os.listdir(tmp_path) == []


# -- atomicity ---------------------------------------------------------------------------------


def test_interrupted_build_leaves_old_store_intact(built, monkeypatch):
    path, recs = built
    before = open(path, "rb").read()
    monkeypatch.setattr(store_mod, "_FLUSH_TOKENS", 20)
    seen_tmp = []

    def failing():
        for i, r in enumerate(make_records(50, seed=9)):
            if i == 30:
                seen_tmp.extend(f for f in os.listdir(os.path.dirname(path)) if ".tmp-" in f)
                raise KeyboardInterrupt  # e.g. Ctrl-C mid-build, after several flushed blocks
            yield r

    with pytest.raises(KeyboardInterrupt):
        build_store(path, failing(), {"source_hash": "new"}, 2)
    assert len(seen_tmp) == 1 and seen_tmp[0].startswith(f".{os.path.basename(path)}.tmp-{os.getpid()}-")  # it was writing elsewhere
    assert open(path, "rb").read() == before
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]
    assert Store(path).meta["source_hash"] == "abc"


def test_interrupted_first_build_leaves_no_file(tmp_path):
    path = str(tmp_path / "s.h5")

    def failing():
        yield make_records(1)[0]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        build_store(path, failing(), {}, 2)
    assert os.listdir(tmp_path) == []


# -- hashing, reuse and rebuild ----------------------------------------------------------------


def _pipeline(tmp_path, text, options):
    data = tmp_path / "d.tsv"
    if text is not None:
        data.write_text(text)
    opts = DelimitedOptions(str(data), tokensep=",", idpos=1, labelpos=2, seqpos=3, label_kind="float")
    tok = AtomicTokenizer.fit(read_records(opts))
    h = source_hash(data, {**opts.parsing_options(), **options}, tok.sha())
    built = []

    def build(path):
        built.append(path)
        recs = encode_records(read_records(opts), tok, blocksize=options.get("blocksize"))
        build_store(path, recs, {"source_hash": h, "source": str(data)}, tok.n_modifiers)

    logs = []
    s = open_or_build(str(tmp_path / "store.h5"), h, build, log=logs.append)
    return s, built, logs, tok


def test_open_or_build_reuses_and_rebuilds_with_reasons(tmp_path):
    text = "s1\t1.0\ta,c,g\ns2\t2.0\tg,g,t,t\n"
    s, built, logs, tok = _pipeline(tmp_path, text, {"blocksize": 10})
    assert built and "new" in logs[0] and len(s) == 2
    assert s.get(1)[0].tolist() == tok.encode_ids(["g", "g", "t", "t"]).tolist()

    s, built, logs, _ = _pipeline(tmp_path, None, {"blocksize": 10})
    assert not built and "reusing" in logs[0]

    s, built, logs, _ = _pipeline(tmp_path, None, {"blocksize": 2})
    assert built and logs[0].endswith("options changed") and s.lengths.tolist() == [2, 2]

    # same vocabulary, different content: only the file changed
    s, built, logs, _ = _pipeline(tmp_path, "s1\t1.0\ta,c,g\ns2\t2.0\tg,g,t,a\n", {"blocksize": 2})
    assert built and logs[0].endswith("input file changed")

    # new token: the tokenizer changes with the file
    s, built, logs, _ = _pipeline(tmp_path, "s1\t1.0\ta,c,g,gej\n", {"blocksize": 2})
    assert built and logs[0].endswith("input file changed, tokenizer changed") and len(s) == 1


def test_source_hash_parts(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x")
    h = source_hash(f, {"b": 1, "a": [1, 2]}, "tok")
    assert isinstance(h, str) and len(h) == 64 and set(h.parts) == {"file", "options", "tokenizer"}
    assert h == source_hash(f, {"a": [1, 2], "b": 1}, "tok")  # canonical JSON: key order irrelevant
    assert h != source_hash(f, {"a": [1, 2], "b": 2}, "tok")
    assert h != source_hash(f, {"a": [1, 2], "b": 1}, "tok2")
    f.write_text("y")
    assert h != source_hash(f, {"b": 1, "a": [1, 2]}, "tok")
    with pytest.raises(BiolmError, match="no such file"):
        source_hash(tmp_path / "none", {}, "t")


def test_unreadable_store_is_rebuilt(tmp_path, built):
    path = str(tmp_path / "junk.h5")
    with open(path, "wb") as f:
        f.write(b"not hdf5")
    logs = []
    recs = make_records(3)
    s = open_or_build(path, "h1", lambda p: build_store(p, recs, {"source_hash": "h1"}, 2), log=logs.append)
    assert "unreadable" in logs[0] and len(s) == 3
    # a plain-str hash (no parts) still rebuilds when it differs
    logs.clear()
    open_or_build(path, "h2", lambda p: build_store(p, recs, {"source_hash": "h2"}, 2), log=logs.append)
    assert logs[0].endswith("hash changed")


def test_build_fn_must_store_the_hash(tmp_path):
    with pytest.raises(BiolmError, match="expected hash"):
        open_or_build(str(tmp_path / "s.h5"), "h", lambda p: build_store(p, [], {}, 0), log=lambda m: None)


# -- laziness, pickling, loaders ---------------------------------------------------------------


def test_store_opens_lazily_and_pickles_without_handle(built):
    path, recs = built
    s = Store(path)
    assert s._f is None
    assert len(s) == len(recs) and s._f is not None
    t = pickle.loads(pickle.dumps(s))
    assert t._f is None and np.array_equal(t.get(3)[0], recs[3].ids)
    s._pid = -1  # as seen from a forked child: the handle is reopened, not shared
    old = s._f
    assert np.array_equal(s.get(4)[0], recs[4].ids) and s._f is not old
    s.close()
    assert s._f is None


def test_missing_store_file(tmp_path):
    with pytest.raises(BiolmError, match="no such dataset store"):
        len(Store(str(tmp_path / "none.h5")))


def test_loader_batches_cover_split_once_and_are_seeded(built):
    path, recs = built
    s = Store(path)
    idx = np.arange(3, 20)
    dl = make_loader(s, idx, batch_size=4, shuffle=True, seed=7)
    epoch1 = list(dl)
    b = epoch1[0]
    assert set(b) == {"ids", "mods", "lengths", "index"}
    assert b["ids"].dtype == torch.int64 and b["mods"].dtype == torch.float32 and b["lengths"].dtype == torch.int64
    assert b["ids"].shape[0] == 4 and b["mods"].shape[:2] == b["ids"].shape and b["mods"].shape[2] == 2
    for batch in epoch1:
        for row, i in enumerate(batch["index"].tolist()):
            n = batch["lengths"][row].item()
            assert batch["ids"][row, :n].tolist() == recs[i].ids.tolist()
    order1 = torch.cat([x["index"] for x in epoch1]).tolist()
    assert sorted(order1) == idx.tolist() and order1 != idx.tolist()
    order2 = torch.cat([x["index"] for x in dl]).tolist()
    assert order2 != order1  # a new permutation each epoch ...
    dl2 = make_loader(s, idx, batch_size=4, shuffle=True, seed=7)
    assert torch.cat([x["index"] for x in dl2]).tolist() == order1  # ... reproducible from the seed
    plain = make_loader(s, idx, batch_size=4, shuffle=False, pad_to=50, drop_last=True)
    batches = list(plain)
    assert len(batches) == 4 and all(x["ids"].shape == (4, 50) for x in batches)
    assert torch.cat([x["index"] for x in batches]).tolist() == idx[:16].tolist()


def test_loader_with_distributed_sampler(built):
    from torch.utils.data.distributed import DistributedSampler

    from biolm.core.batching import StoreDataset

    path, recs = built
    s = Store(path)
    idx = np.arange(len(recs))
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(StoreDataset(s, idx), num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(0)
        dl = make_loader(s, idx, batch_size=5, shuffle=True, sampler=sampler)
        seen.append(torch.cat([x["index"] for x in dl]).tolist())
    # 25 records over 2 ranks: 13 each, disjoint but for DistributedSampler's one padding repeat
    assert len(seen[0]) == len(seen[1]) == 13
    assert len(set(seen[0]) & set(seen[1])) <= 1
    assert set(seen[0]) | set(seen[1]) == set(idx.tolist())


def test_loader_with_worker_process(built):
    path, recs = built
    s = Store(path)
    len(s)  # the parent has the file open before the worker forks
    dl = make_loader(s, np.arange(len(recs)), batch_size=8, shuffle=False, num_workers=1)
    got = torch.cat([x["index"] for x in dl]).tolist()
    assert got == list(range(len(recs)))
    batch = next(iter(dl))
    assert batch["ids"][1, : len(recs[1].ids)].tolist() == recs[1].ids.tolist()


def test_store_dataset_is_a_torch_dataset(built):
    from biolm.core.batching import StoreDataset

    ds = StoreDataset(Store(built[0]), [4, 2])
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == 2 and ds[1] == 2
