"""Batches for training and inference: store records -> padded tensors -> model input dicts.

:func:`make_loader` reads padded batches lazily from a :class:`~biolm.core.store.Store` (one HDF5
read per batch); :class:`Batches` moves them to the device and turns them into the model's input
through the tokenizer spec's ``make_input``, with targets and weights alongside.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch
import torch.utils.data

from .store import Store


class StoreDataset(torch.utils.data.Dataset):
    """``torch.utils.data.Dataset`` over a :class:`Store` restricted to ``indices``.

    ``dataset[k]`` is the store record index ``indices[k]``; the data are read by the loader's
    collate function (:func:`make_loader`) in one :meth:`Store.read_batch` call per batch, which
    is far cheaper than one HDF5 read per item.

    Parameters
    ----------
    store : Store
    indices : int array, shape (N,): the records of this split (default: all).
    """

    def __init__(self, store: Store, indices=None):
        self.store = store
        if indices is None:
            indices = np.arange(len(store), dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k) -> int:
        return int(self.indices[k])


class _Collate:
    """Picklable collate: reads a batch of record indices from the store."""

    def __init__(self, store: Store, pad_to: int | None):
        self.store = store
        self.pad_to = pad_to

    def __call__(self, batch):
        index = np.asarray(batch, dtype=np.int64)
        if self.store.feature_shape is not None:  # fixed-shape feature records: nothing to pad
            return {"features": torch.from_numpy(self.store.read_features(index)), "index": torch.from_numpy(index)}
        ids, mods, lengths = self.store.read_batch(index, pad_to=self.pad_to)
        return {
            "ids": torch.from_numpy(ids),
            "mods": torch.from_numpy(mods),
            "lengths": torch.from_numpy(lengths),
            "index": torch.from_numpy(index),
        }


def make_loader(
    store: Store,
    indices,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    pad_to: int | None = None,
    drop_last: bool = False,
    sampler=None,
    num_workers: int = 0,
):
    """A DataLoader yielding padded batches read lazily from the store.

    Parameters
    ----------
    store : Store
    indices : int array, shape (N,): the store records of this split.
    batch_size, drop_last : as for DataLoader.
    shuffle : reshuffle every epoch, seeded by ``seed`` (a ``torch.Generator``: the same seed
        gives the same sequence of epochs). Ignored when ``sampler`` is given.
    pad_to : fixed length L; default pads each batch to its longest record.
    sampler : e.g. a ``DistributedSampler(StoreDataset(store, indices), ...)``; the caller
        calls its ``set_epoch``.
    num_workers : DataLoader worker processes (each reopens the HDF5 file).

    Yields
    ------
    dict with ``ids`` LongTensor (B, L) (-1 = padding/unknown), ``mods`` FloatTensor (B, L, m),
    ``lengths`` LongTensor (B,), ``index`` LongTensor (B,) (store record indices); for a feature
    store ``features`` FloatTensor (B, *feature_shape) and ``index``.
    """
    from torch.utils.data import DataLoader

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ds = StoreDataset(store, indices)
    generator = None
    if sampler is None and shuffle:
        generator = torch.Generator()
        generator.manual_seed(int(seed))
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=bool(shuffle) if sampler is None else False,
        sampler=sampler,
        drop_last=drop_last,
        collate_fn=_Collate(store, pad_to),
        generator=generator,
        num_workers=num_workers,
        persistent_workers=False,
    )


def loader_factory(store: Store, batch_size: int, pad_to: int | None, num_workers: int = 0) -> Callable[..., Any]:
    """``loader(indices, shuffle, seed, size)`` over ``store`` with fixed batch settings (for
    :class:`Batches`); ``size`` overrides the batch size."""

    def loader(indices: np.ndarray, shuffle: bool, seed: int = 0, size: int | None = None):
        return make_loader(store, indices, batch_size=size or batch_size, shuffle=shuffle, seed=seed, pad_to=pad_to, drop_last=False, num_workers=num_workers)

    return loader


class Batches:
    """Store batches -> model input dicts on the device (targets and weights alongside)."""

    def __init__(self, make_loader: Callable[..., Any], make_input: Callable[[dict], dict], device: torch.device, y: np.ndarray | None, w: np.ndarray | None):
        self.make_loader = make_loader
        self.make_input = make_input
        self.device = device
        self.y = None if y is None else torch.as_tensor(y)
        self.w = None if w is None else torch.as_tensor(w, dtype=torch.float32)

    def __call__(self, indices: np.ndarray, shuffle: bool, seed: int = 0, shard: bool = False, size: int | None = None):
        """Batches of ``indices``; ``shard``: only this process's share (distributed training);
        ``size``: samples per batch instead of the configured batch size."""
        from .distributed import is_distributed
        from .distributed import shard as shard_of

        if shard and is_distributed():
            indices, shuffle = shard_of(indices, shuffle, seed), False
        for batch in self.make_loader(indices, shuffle, seed, size):
            idx = batch["index"]
            dev = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            inp = self.make_input(dev)
            y = self.y[idx].to(self.device) if self.y is not None else None
            w = self.w[idx].to(self.device) if self.w is not None else torch.ones(len(idx), device=self.device)
            yield idx, inp, y, w


def check_batch_memory(make_input: Callable[[dict], dict], n_modifiers: int, batchsize: int, blocksize: int, device: torch.device, key: str = "settings.training.batchsize") -> None:
    """Refuse a batch whose input alone would take more than half the memory available.

    The bytes per token are measured on a probe batch of 16 tokens through the plugin's own
    ``make_input`` (a one-hot input costs vocabulary x 4 bytes, token ids 8) and scaled to
    ``batchsize x blocksize``; a :class:`~biolm.core.errors.ConfigError` names both numbers
    before anything large is allocated (a MemoryError halfway through a run says much less)."""
    from .errors import ConfigError

    n = min(blocksize, 16)
    probe = {"ids": torch.full((1, n), -1, dtype=torch.long), "mods": torch.zeros((1, n, n_modifiers)), "lengths": torch.tensor([n]), "index": torch.zeros(1, dtype=torch.long)}
    try:
        inp = make_input(probe)
    except Exception:  # noqa: BLE001 - a make_input that cannot take a probe: no estimate
        return
    per_token = sum(t.numel() * t.element_size() for t in inp.values() if torch.is_tensor(t)) / n + 8 + 4 * n_modifiers
    need = per_token * batchsize * blocksize
    free = available_memory(device)
    if free and need > free / 2:
        raise ConfigError(key, f"a batch of {batchsize} x {blocksize} tokens needs about {need / 2**30:.1f} GiB for its input alone, more than half of the {free / 2**30:.1f} GiB available on {device.type}; lower batchsize or blocksize")


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (CUDA: free device memory; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # noqa: BLE001
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
