"""Test oracles for the geneformer plugin: reference implementations the plugin's production code
is checked against (they live here because only tests use them).

- :class:`GeneRankTokenizer`: the fitted tokenizer plus cellarium's count-level encoding with
  in-silico perturbations (``feature_deletion``, ``feature_activation``, ``feature_map``): the
  oracle for interpret's tensor perturbations on stored ids; ``encode_ranked`` for the plain-text
  form; JSON round trips.
- :func:`activate_tokens`, :func:`trim_padding`: token-level helpers the plugin tests use.
- :class:`GenerankTokenizer`: loads a run's ``tokenizer.json`` with the oracle inside.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from biolm.plugins.geneformer import tokenizer_hooks
from biolm.plugins.geneformer.bert import N_SPECIAL_TOKENS, PAD_TOKEN_ID
from biolm.plugins.geneformer.fitted_tokenizer import GeneOrder
from biolm.plugins.geneformer.fitted_tokenizer import GeneRankTokenizer as _Fitted


class GeneRankTokenizer(_Fitted):
    """The plugin's fitted tokenizer with the count-level encoding of cellarium-ml."""

    def token_ids(self, genes: Iterable[str]) -> np.ndarray:
        """Token ids of gene names; unknown names raise ``KeyError`` naming them."""
        index = self._gene_index()
        genes = list(genes)
        unknown = [g for g in genes if g not in index]
        if unknown:
            raise KeyError(f"gene(s) not in the tokenizer vocabulary: {', '.join(map(str, unknown[:10]))}")
        return np.array([index[g] + N_SPECIAL_TOKENS for g in genes], dtype=np.int64)

    def decode(self, input_ids: np.ndarray | torch.Tensor) -> np.ndarray:
        """Gene names of token ids (``"<pad>"``, ``"<mask>"`` for the special tokens), same shape."""
        ids = input_ids.detach().cpu().numpy() if isinstance(input_ids, torch.Tensor) else np.asarray(input_ids)
        names = np.concatenate([np.array(["<pad>", "<mask>"]), self.var_names]).astype(object)
        return names[ids].astype(str)

    def encode(
        self,
        counts: np.ndarray | torch.Tensor,
        max_len: int | None = None,
        gene_order: GeneOrder | Sequence[str] | np.ndarray | None = None,
        feature_deletion: Sequence[str] | None = None,
        feature_activation: Sequence[str] | None = None,
        feature_map: Mapping[str, int] | None = None,
    ) -> tuple[Any, Any]:
        """Counts -> ``(input_ids, attention_mask)``, optionally with in-silico perturbations.

        Parameters
        ----------
        counts
            ``(n, G_in)`` raw counts (numpy or torch).
        max_len
            Length cap (default: the tokenizer's ``max_len``); ``L = min(G, max_len)``.
        gene_order
            See :meth:`normalize`.
        feature_deletion
            Genes set to 0 before ranking: they leave the sentence, later genes move up one
            position and the next-ranked gene enters at the end (cellarium semantics). Applies
            to every cell.
        feature_activation
            Genes moved to the top ranks before ranking, the first listed at rank 1 (cellarium
            sets them above the batch maximum). An unexpressed gene enters the sentence.
        feature_map
            ``{gene: token_id}`` applied after ranking (e.g. ``MASK_TOKEN_ID`` to mask a gene in
            place; the attention mask is unchanged, as in cellarium).

        Returns
        -------
        input_ids, attention_mask
            ``(n, L)`` int64 and bool — numpy arrays for numpy input, torch tensors (on the input's
            device) for torch input.

        Raises
        ------
        ValueError
            For negative / non-finite counts, or a gene-count mismatch without ``gene_order``.
        KeyError
            For perturbation genes that are not in the vocabulary.
        """
        is_numpy = not isinstance(counts, torch.Tensor)
        z = self.normalize(counts, gene_order)
        if feature_deletion:
            z[:, torch.as_tensor(self.token_ids(feature_deletion) - N_SPECIAL_TOKENS, device=z.device)] = 0
        if feature_activation:
            top = z.max() if z.numel() else torch.zeros((), device=z.device)
            genes = self.token_ids(feature_activation) - N_SPECIAL_TOKENS
            # cellarium: value max + i + 1 for the i-th gene of the reversed list
            for i, g in enumerate(genes[::-1].tolist()):
                z[:, g] = top + i + 1
        ids, mask = self.rank(z, max_len)
        if feature_map:
            for gene, target in feature_map.items():
                tok = int(self.token_ids([gene])[0])
                ids = torch.where(ids == tok, torch.full_like(ids, int(target)), ids)
        if is_numpy:
            return ids.cpu().numpy(), mask.cpu().numpy()
        return ids, mask

    def encode_ranked(
        self, rows: Iterable[Sequence[str]], max_len: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Encode cells given as gene names already in rank order (the plain-text form).

        Parameters
        ----------
        rows
            One sequence of gene names per cell, highest rank first.

        Returns
        -------
        input_ids : np.ndarray
            ``(n, L)`` int64, ``L = max_len`` (default: the tokenizer's), right-padded with PAD.
        attention_mask : np.ndarray
            ``(n, L)`` bool.
        n_unknown : int
            Gene names not in the vocabulary; they are skipped (the following genes move up).
        """
        length = self.max_len if max_len is None else int(max_len)
        index = self._gene_index()
        rows = list(rows)
        ids = np.zeros((len(rows), length), dtype=np.int64)
        n_unknown = 0
        for r, genes in enumerate(rows):
            toks = [index[g] + N_SPECIAL_TOKENS for g in genes if g in index]
            n_unknown += len(genes) - len(toks)
            toks = toks[:length]
            ids[r, : len(toks)] = toks
        return ids, ids != PAD_TOKEN_ID, n_unknown

    def to_json(self) -> str:
        """JSON text that :meth:`from_json` restores bit for bit."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> GeneRankTokenizer:
        return cls.from_dict(json.loads(text))

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON: the tokenizer hash for dataset-store cache keys."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def activate_tokens(input_ids: torch.Tensor, tokens: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Move one gene per sentence to rank 1 (``feature_activation`` on token ids).

    Parameters
    ----------
    input_ids
        ``(B, K)`` rank-ordered tokens (PAD suffix).
    tokens
        ``(B,)`` gene token per sentence (>= 2). A token absent from the sentence enters at rank 1
        and the last gene drops out when the sentence is full.
    max_len
        Output length (default ``K``).

    Returns
    -------
    torch.Tensor
        ``(B, max_len)`` int64.
    """
    length = input_ids.shape[1] if max_len is None else int(max_len)
    tokens = tokens.to(input_ids.device).long().view(-1, 1)
    drop = input_ids == tokens
    # a stable sort on the drop flag compacts the kept tokens without reordering them
    order = torch.sort(drop.to(torch.int8), dim=1, stable=True).indices
    kept = torch.gather(input_ids, 1, order)
    kept = torch.where(torch.gather(drop, 1, order), torch.zeros_like(kept), kept)
    out = torch.cat([tokens, kept], dim=1)[:, :length]
    if out.shape[1] < length:
        out = torch.cat([out, out.new_zeros(out.shape[0], length - out.shape[1])], dim=1)
    return out


def trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing columns that are PAD in every sentence of the batch.

    Exact for everything computed at non-PAD positions (PAD keys are masked out and positions keep
    their indices), so pooled outputs and predictions are unchanged while short cells run faster.

    Returns ``(B, L')`` views with ``L'`` the longest sentence in the batch (at least 1).
    """
    length = max(int(attention_mask.sum(dim=1).max()), 1) if attention_mask.numel() else 1
    return input_ids[:, :length], attention_mask[:, :length]


class GenerankTokenizer:
    """``GenerankTokenizer.load(path)``: the plugin's tokenizer of a run, its ``core`` the oracle."""

    @staticmethod
    def load(path: Any) -> Any:
        tok = tokenizer_hooks.load(path)
        tok.core = GeneRankTokenizer.from_dict(tok.core.to_dict())
        return tok
