"""Geneformer's in-silico deletion shift (``InSilicoPerturber``, ``perturb_type="delete"``), next to
biolm's ``loo`` on the prediction.

Geneformer removes a gene's position from the already truncated input (nothing is re-tokenized:
the cell gets shorter, ``<cls>``/``<eos>`` stay) — exactly what ``interpret`` with
``handletokens: remove`` does to a cell tokenized with Geneformer's dictionaries. It then compares
the hidden states at ``hidden_states[L + emb_layer]`` of the original and the perturbed cell:

- "cell" mode (V1; ``isp_perturb_set``): the original states with the deleted positions removed
  are compared position by position with the perturbed states (cosine similarity per remaining
  position) and the mean over the perturbed cell's positions is recorded;
- "cls" mode (V2's default; ``isp_perturb_set_special``): the cosine similarity of the two
  ``<cls>`` states.

That value (1 = no shift) is written as the ``geneformer_cos_sim`` column of the interpret CSV.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

COLUMN = "geneformer_cos_sim"


def cosine_shifts(h_base: torch.Tensor, base_len: int, h_pert: torch.Tensor, removed: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities between one cell and its deletions, as Geneformer records them.

    Parameters
    ----------
    h_base
        ``(T, H)`` hidden states of the original cell (its first ``base_len`` positions are real).
    base_len
        Real positions of the original cell (special tokens included).
    h_pert
        ``(P, T', H)`` hidden states of the perturbed copies; copy ``p`` has ``base_len - k`` real
        positions.
    removed
        ``(P, k)`` int64 positions (in the original input) each copy lost.
    mode
        ``"cell"`` or ``"cls"``.

    Returns
    -------
    cos_sim : torch.Tensor
        ``(P,)`` float32, what Geneformer records.
    position_cos : torch.Tensor
        ``(P, base_len - k)`` float32 cosine of every remaining position.
    """
    p, k = removed.shape
    n = base_len - k
    keep = torch.ones((p, base_len), dtype=torch.bool, device=h_base.device)
    keep[torch.arange(p, device=h_base.device)[:, None], removed] = False
    # the kept positions of each copy, in order: a stable sort moves the removed ones to the end
    kept = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :n]
    original = h_base[kept].float()
    position_cos = F.cosine_similarity(h_pert[:, :n].float(), original, dim=-1)
    if mode == "cls":
        return F.cosine_similarity(h_pert[:, 0].float(), h_base[0].float()[None], dim=-1), position_cos
    return position_cos.mean(dim=1), position_cos


def perturbation_scores(model: Any, base_input: dict, perturbed_input: dict, positions: np.ndarray, how: str) -> tuple[torch.Tensor, dict]:
    """``ModelSpec.perturbation_scores``: the fine-tuned model's outputs for the perturbed cells
    and, for deletions of cells tokenized with Geneformer's dictionaries, Geneformer's cosine
    similarity (one forward pass serves both).

    Parameters
    ----------
    model
        A :class:`~.task_models.GeneformerFinetuneModel`.
    base_input, perturbed_input
        Input dicts (``input_ids``, ``attention_mask``) of the cell ``(1, T)`` and of its ``P``
        perturbed copies ``(P, T')``.
    positions
        ``(P,)`` gene positions (store coordinates) that were perturbed.
    how
        interpret's ``handletokens``.

    Returns
    -------
    (torch.Tensor, dict)
        ``(P, n_outputs)`` outputs and ``{COLUMN: (P,)}`` (``{}`` when not a Geneformer deletion).
    """
    if how != "remove" or not model.geneformer_vocab:
        return model(perturbed_input), {}
    outputs, h_pert = model.outputs_and_hidden(perturbed_input)
    _, h_base = model.outputs_and_hidden(base_input)
    base_len = int(base_input["attention_mask"][0].sum())
    offset = 1 if model.config.cls_token_id is not None else 0
    removed = torch.as_tensor(np.asarray(positions), dtype=torch.long, device=h_base.device)[:, None] + offset
    cos, _ = cosine_shifts(h_base[0], base_len, h_pert, removed, model.emb_mode)
    return outputs, {COLUMN: cos}
