import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biolm.core.errors import ConfigError
from biolm.core.splits import make_folds


def _disjoint_cover(f, n):
    allidx = np.concatenate([f.train, f.val, f.test])
    assert len(allidx) == len(set(allidx.tolist())) == n


@settings(max_examples=60, deadline=None)
@given(n=st.integers(10, 400), ratio=st.sampled_from([(85, 15), (70, 20, 10), (50, 25, 25), (60, 40)]), seed=st.integers(0, 10_000))
def test_random_split_partitions_all_records(n, ratio, seed):
    (f,) = make_folds(n, splitratio=ratio, seed=seed)
    _disjoint_cover(f, n)
    assert abs(len(f.val) - n * ratio[1] / 100) <= 1
    assert make_folds(n, splitratio=ratio, seed=seed)[0].val.tolist() == f.val.tolist()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(20, 300), k=st.integers(3, 6), seed=st.integers(0, 1000), with_test=st.booleans())
def test_kfold_each_sample_validated_and_tested_once(n, k, seed, with_test):
    ratio = (70, 20, 10) if with_test else (80, 20)
    folds = make_folds(n, crossvalidation=k, splitratio=ratio, cvscheme="kfold", seed=seed)
    assert len(folds) == k
    for f in folds:
        _disjoint_cover(f, n)
    vals = np.concatenate([f.val for f in folds])
    assert sorted(vals.tolist()) == list(range(n))
    if with_test:
        tests = np.concatenate([f.test for f in folds])
        assert sorted(tests.tolist()) == list(range(n))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(20, 300), k=st.integers(2, 5), seed=st.integers(0, 1000))
def test_shuffle_cv_reshuffles_per_fold_and_is_seeded(n, k, seed):
    folds = make_folds(n, crossvalidation=k, splitratio=(80, 20), cvscheme="shuffle", seed=seed)
    for f in folds:
        _disjoint_cover(f, n)
    again = make_folds(n, crossvalidation=k, splitratio=(80, 20), cvscheme="shuffle", seed=seed)
    assert all(a.val.tolist() == b.val.tolist() for a, b in zip(folds, again))
    if n >= 50:
        assert folds[0].val.tolist() != folds[1].val.tolist()


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.sampled_from(["1", "2", "3", "4", "5"]), min_size=10, max_size=200))
def test_custom_cv_folds_follow_split_ids(ids):
    if len(set(ids)) < 5:
        return
    folds = make_folds(len(ids), ids, crossvalidation=True, devsplits=[["1"], ["2", "3"]], testsplits=[["5"], ["4"]])
    arr = np.array(ids)
    assert set(arr[folds[0].val]) == {"1"} and set(arr[folds[0].test]) == {"5"}
    assert set(arr[folds[1].val]) == {"2", "3"} and set(arr[folds[1].test]) == {"4"}
    for f in folds:
        _disjoint_cover(f, len(ids))
        assert not set(arr[f.train]) & (set(arr[f.val]) | set(arr[f.test]))


def test_custom_split_without_cv():
    ids = ["a", "b", "c", "a", "b", "c", "a"]
    (f,) = make_folds(7, ids, devsplits=["b"], testsplits=["c"])
    assert f.val.tolist() == [1, 4] and f.test.tolist() == [2, 5] and f.train.tolist() == [0, 3, 6]


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(split_ids=["1", "2"] * 5, devsplits=["9"]), "devsplits"),
        (dict(split_ids=["1", "2"] * 5), "devsplits"),
        (dict(split_ids=["1", "2"] * 5, devsplits=["1"], testsplits=["1"]), "testsplits"),
        (dict(split_ids=["1", "2"] * 5, devsplits=[["1"]]), "devsplits"),
        (dict(split_ids=["1", "2"] * 5, crossvalidation=True, devsplits=["1"]), "devsplits"),
        (dict(crossvalidation=True), "crossvalidation"),
        (dict(devsplits=["1"]), "devsplits"),
        (dict(split_ids=["1", "2"] * 5, devsplits=["1", "2"]), "devsplits"),
    ],
)
def test_invalid_split_configs_name_the_key(kwargs, key):
    with pytest.raises(ConfigError) as e:
        make_folds(10, **kwargs)
    assert key in str(e.value)


def test_tiny_data_gives_empty_split_error():
    with pytest.raises(ConfigError, match="empty"):
        make_folds(2, splitratio=(70, 20, 10))
