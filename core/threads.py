"""Capping torch's intra-op threads for a stretch of small operations."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def max_threads(n: int) -> Iterator[None]:
    """Run the block with at most ``n`` intra-op threads (the caller's count when it is lower).

    For loops of small tensor operations (fast leave-one-out routines, recurrences): an OpenMP
    team per operation costs more in barriers than it saves, far more on a loaded machine."""
    import torch

    old = torch.get_num_threads()
    if n >= old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
