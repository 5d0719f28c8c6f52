"""Masked-gene pre-training: BERT masking of gene tokens and the loss the engine minimises.

- A batch in which no position was selected for masking gets one masked position, so the MLM
  loss is never NaN (HF returns NaN for a batch with no scored position).
- Random replacements are gene tokens only (cellarium draws from ``[0, n_genes)``, which can
  produce PAD/MASK and never the last two genes); ``<cls>``/``<eos>`` are never masked.
"""

from __future__ import annotations

from typing import Any

import torch

from .bert import IGNORE_INDEX, MASK_TOKEN_ID, N_SPECIAL_TOKENS, gene_positions


def mlm_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    vocab_size: int,
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
    ensure_one: bool = True,
    *,
    first_gene_id: int = N_SPECIAL_TOKENS,
    mask_token_id: int = MASK_TOKEN_ID,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking for masked-gene pre-training.

    Each selectable position is selected with probability ``mlm_probability``; a selected
    position becomes MASK with probability 0.8, a random gene token (uniform on
    ``[first_gene_id, vocab_size)``, never a special token) with probability 0.1, and stays
    unchanged otherwise.

    Parameters
    ----------
    input_ids, attention_mask
        ``(B, L)`` int64 tokens and bool mask of the positions that may be selected (the gene
        tokens: not PAD, nor ``<cls>``/``<eos>``).
    vocab_size
        Token ids in the vocabulary.
    generator
        Optional ``torch.Generator`` on ``input_ids.device`` for reproducible masks.
    ensure_one
        If no position of the batch was selected, select its valid position with the smallest
        random draw, so the loss is defined.
    first_gene_id, mask_token_id
        Gene tokens are ``first_gene_id ..``; the MASK token's id (``GeneformerConfig`` has both).

    Returns
    -------
    masked_ids : torch.Tensor
        ``(B, L)`` int64 model input.
    labels : torch.Tensor
        ``(B, L)`` int64: the original token at selected positions, -100 elsewhere.
    """
    dev = input_ids.device
    u_sel = torch.rand(input_ids.shape, generator=generator, device=dev)
    u_kind = torch.rand(input_ids.shape, generator=generator, device=dev)
    random_tokens = torch.randint(
        first_gene_id, vocab_size, input_ids.shape, generator=generator, device=dev, dtype=input_ids.dtype
    )
    valid = attention_mask.bool()
    selected = (u_sel < mlm_probability) & valid
    if ensure_one:
        # without a host sync: flag the valid position with the smallest draw and keep it only
        # when nothing else was selected (and only if it is valid: a batch of empty cells stays empty)
        flat = u_sel.masked_fill(~valid, 2.0).reshape(-1).argmin()
        fallback = torch.zeros(selected.numel(), dtype=torch.bool, device=dev)
        fallback[flat] = True
        selected = selected | (fallback.view_as(selected) & valid & ~selected.any())
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    to_mask = selected & (u_kind < 0.8)
    to_random = selected & (u_kind >= 0.8) & (u_kind < 0.9)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_tokens, masked)
    return masked, labels


def pretrain_loss(model: Any, batch: dict, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The engine's pre-training loss: mask ``mlm_probability`` of the gene tokens of
    ``batch["input_ids"]`` ``(B, L)`` and score the model's predictions there.

    Returns
    -------
    (loss, n_scored)
        The mean cross-entropy at the masked positions (scalar) and their number.
    """
    net = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    cfg = net.config
    ids, mask = batch["input_ids"], batch["attention_mask"]
    masked, labels = mlm_mask(ids, gene_positions(cfg, ids, mask), cfg.vocab_size, net.mlm_probability, generator=generator, first_gene_id=cfg.first_gene_id, mask_token_id=cfg.mask_token_id)
    loss = model({"input_ids": masked, "attention_mask": mask, "labels": labels})
    return loss, (labels != IGNORE_INDEX).sum()
