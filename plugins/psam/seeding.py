"""Seeding a PSAM from the data: the k-mer most associated with the target, and the letters
around its occurrences.

From a random start a PSAM of 8-12 positions has 4^K possible optima and the gradient of a
random matrix carries almost no signal; a k-mer count is a crude but direct one. For ``k = 6``
(~2,000 canonical k-mers, each seen in hundreds of windows of a few thousand sequences of
100-200 nt) the count of the planted site's core correlates clearly with the label.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

LETTERS = 4  # seeding works on a complementable 4-letter alphabet (DNA/RNA)


def kmer_index(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Index of every k-window and of its reverse complement.

    Parameters
    ----------
    codes : (N, L) int letters 0..3, -1 for padding / unknown.

    Returns
    -------
    forward, reverse : (N, L - k + 1) int each; -1 for windows with a -1 letter.
    """
    win = np.lib.stride_tricks.sliding_window_view(codes, k, axis=1)
    powers = LETTERS ** np.arange(k - 1, -1, -1)
    valid = (win >= 0).all(-1)
    forward = (np.clip(win, 0, 3) * powers).sum(-1)
    reverse = ((3 - np.clip(win, 0, 3))[..., ::-1] * powers).sum(-1)
    return np.where(valid, forward, -1), np.where(valid, reverse, -1)


def kmer_correlations(codes: np.ndarray, target: np.ndarray, k: int, both_strands: bool = True) -> np.ndarray:
    """Pearson correlation of every k-mer's per-sequence count with each target column.

    Parameters
    ----------
    codes : (N, L) letters (-1 = none).
    target : (N, T) values.
    both_strands : count a k-mer and its reverse complement together (column of the smaller index).

    Returns
    -------
    (4^k, T); NaN for k-mers that never vary (absent, or non-canonical with ``both_strands``).
    """
    from scipy import sparse

    forward, reverse = kmer_index(codes, k)
    index = np.minimum(forward, reverse) if both_strands else forward
    n, w = index.shape
    ok = index >= 0
    rows = np.repeat(np.arange(n), w)[ok.ravel()]
    counts = sparse.csr_matrix((np.ones(int(ok.sum())), (rows, index.ravel()[ok.ravel()])), shape=(n, LETTERS**k))
    counts.sum_duplicates()
    centred = target - target.mean(0)
    s1 = np.asarray(counts.sum(0)).ravel()
    s2 = np.asarray(counts.multiply(counts).sum(0)).ravel()
    var = s2 - s1**2 / n
    cov = np.asarray(counts.T @ centred)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(var[:, None] * (centred**2).sum(0)[None, :])
    r[var <= 1e-12] = np.nan
    return r


def decode(index: int, k: int) -> np.ndarray:
    """k-mer index -> (k,) letters."""
    return np.array([(index // LETTERS ** (k - 1 - j)) % LETTERS for j in range(k)])


def seed_matrix(codes: np.ndarray, target: np.ndarray, width: int, k: int = 6, signed: bool = False, both_strands: bool = True, exclude: Callable[[np.ndarray], bool] | None = None, candidates: int = 20) -> tuple[np.ndarray, dict]:
    """Initial (width, 4) betas from the data.

    1. Rank k-mers by the correlation of their per-sequence count with the target (by its size;
       ``signed``: only k-mers whose count raises the target); take the best one that
       ``exclude`` does not reject (used to skip variants of modes already fitted).
    2. Orient each occurrence (either strand) like the k-mer and read the letters in a window of
       ``width + 2 (width - k)`` around it: per position and letter, the mean target of the
       occurrences with that letter minus their overall mean (signed like the k-mer's
       correlation) is the evidence.
    3. Place the k-mer in the ``width``-long window that holds the most evidence; its letters
       get +1 and the others -1/3, the other positions the evidence scaled by the largest
       evidence range on the k-mer (clipped to +-1).

    Parameters
    ----------
    codes : (N, L) letters (-1 = none).
    target : (N, T) what the motif should explain (labels, residuals, class indicators).

    Returns
    -------
    betas : (width, 4), mean-zero per position.
    info : the chosen ``kmer``, its correlation ``r``, where it sits (``offset``), its ``occurrences``.
    """
    k = min(k, width)
    r = kmer_correlations(codes, target, k, both_strands)
    score = np.nan_to_num(r if signed else np.abs(r), nan=-np.inf)
    best_per_kmer = score.max(1)
    order = np.argsort(-best_per_kmer)
    chosen = int(order[0])
    for idx in order[:candidates]:
        if exclude is None or not exclude(decode(int(idx), k)):
            chosen = int(idx)
            break
    kmer = decode(chosen, k)
    column = int(score[chosen].argmax())
    sign = 1.0 if r[chosen, column] >= 0 else -1.0
    y = sign * (target[:, column] - target[:, column].mean())
    core = np.full((k, LETTERS), -1.0 / 3.0)
    core[np.arange(k), kmer] = 1.0
    info = {"kmer": "".join("ACGT"[c] for c in kmer), "r": float(r[chosen, column]), "offset": (width - k) // 2}
    mat = np.zeros((width, LETTERS))
    if width == k:
        info["occurrences"] = 0
        return core, info
    ext = width - k
    forward, _ = kmer_index(codes, k)
    n, length = codes.shape
    rc = int(((3 - kmer)[::-1] * LETTERS ** np.arange(k - 1, -1, -1)).sum())
    hits_f = np.argwhere(forward == chosen)
    hits_r = np.argwhere(forward == rc) if (both_strands and rc != chosen) else np.zeros((0, 2), dtype=int)
    span = k + 2 * ext
    padded = np.full((n, length + 2 * ext), -1)
    padded[:, ext : ext + length] = codes
    around = [padded[i, x : x + span] for i, x in hits_f]
    around += [np.where(s >= 0, 3 - s, -1) for s in (padded[i, x : x + span][::-1] for i, x in hits_r)]
    weights = np.concatenate([y[hits_f[:, 0]], y[hits_r[:, 0]]]) if len(around) else np.zeros(0)
    info["occurrences"] = len(around)
    evidence = np.zeros((span, LETTERS))
    if around:
        letters = np.array(around)
        for p in range(span):
            col = letters[:, p]
            ok = col >= 0
            if ok.sum() < 10:
                continue
            base = weights[ok].mean()
            for c in range(LETTERS):
                sel = ok & (col == c)
                if sel.sum() >= 3:
                    evidence[p, c] = weights[sel].mean() - base
    spread = evidence.max(1) - evidence.min(1)
    scale = spread[ext : ext + k].max()
    scale = scale if scale > 0 else 1.0
    start = max(range(ext + 1), key=lambda s: spread[s : s + width].sum())  # windows that hold the k-mer
    mat = np.clip(evidence[start : start + width] / scale, -1.0, 1.0)
    mat -= mat.mean(1, keepdims=True)
    offset = ext - start
    mat[offset : offset + k] = core
    info["offset"] = offset
    return mat, info


def window_scores(codes: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """Best window score of ``betas`` (w, 4) on either strand of each row of ``codes`` (N, L)."""
    w = betas.shape[0]
    padded = np.full((codes.shape[0], codes.shape[1] + 2 * (w - 1)), -1)
    padded[:, w - 1 : w - 1 + codes.shape[1]] = codes
    win = np.lib.stride_tricks.sliding_window_view(padded, w, axis=1)
    best = np.full(codes.shape[0], -np.inf)
    for b in (betas, betas[::-1, ::-1]):
        values = np.where(win >= 0, b[np.arange(w), np.clip(win, 0, 3)], 0.0).sum(-1)
        best = np.maximum(best, values.max(-1))
    return best


def explained_by(fitted: list[np.ndarray], share: float = 0.5) -> Callable[[np.ndarray], bool]:
    """``exclude`` for :func:`seed_matrix`: a k-mer that scores more than ``share`` of a fitted
    PSAM's best k-long window (either strand) is a variant of that mode."""
    centred = [b - b.mean(1, keepdims=True) for b in fitted]

    def rejects(kmer: np.ndarray) -> bool:
        for b in centred:
            top = np.sort(np.lib.stride_tricks.sliding_window_view(b.max(1), len(kmer)).sum(-1))[-1]
            if window_scores(kmer[None], b)[0] > share * top:
                return True
        return False

    return rejects
