"""Cell embeddings as Geneformer's ``EmbExtractor`` computes them (``emb_extractor.get_embs``).

- **Layer.** ``emb_layer`` counts back from the top: ``hidden_states[L + emb_layer]`` with ``L``
  encoder layers and ``hidden_states[0]`` the embedding output. The default ``-1`` is the output
  of the second-to-last layer; ``0`` is the last layer. Only the layers needed are run.
- **"cell" mode**: the mean over the cell's gene positions (Geneformer's
  ``mean_nonpadding_embs``; for V2 inputs it leaves out ``<cls>`` and ``<eos>``, the first and the
  last real position).
- **"cls" mode** (V2's default): the hidden state at position 0 (``<cls>``).

Batches are right-padded with ``<pad>`` and masked as Geneformer does; padded positions do not
change the real ones (within float32 rounding, <= 1e-6 on the fixtures).
"""

from __future__ import annotations

import torch

from .bert import GeneformerConfig, GeneformerEncoder, gene_positions, mean_pool

EMB_MODES = ("auto", "cell", "cls")


def hidden_layer_index(emb_layer: int, num_layers: int) -> int:
    """Geneformer's ``emb_layer`` (``-L .. 0``) -> index into ``hidden_states`` (``0 .. L``).

    Raises
    ------
    ValueError
        If ``emb_layer`` is positive or below ``-num_layers``.
    """
    if not -num_layers <= emb_layer <= 0:
        raise ValueError(f"emb_layer must lie in [-{num_layers}, 0] for a {num_layers}-layer model, got {emb_layer}")
    return num_layers + emb_layer


def embedding_mode(config: GeneformerConfig, emb_mode: str) -> str:
    """``"cls"`` or ``"cell"``; ``"auto"`` is ``"cls"`` when inputs start with ``<cls>`` (V2),
    else ``"cell"``.

    Raises
    ------
    ValueError
        ``"cls"`` for a vocabulary without ``<cls>``, or an unknown mode.
    """
    if emb_mode not in EMB_MODES:
        raise ValueError(f"emb_mode must be one of {', '.join(EMB_MODES)}, got {emb_mode!r}")
    if emb_mode == "auto":
        return "cls" if config.cls_token_id is not None else "cell"
    if emb_mode == "cls" and config.cls_token_id is None:
        raise ValueError("emb_mode cls needs inputs that start with <cls> (Geneformer V2 dictionaries); use cell")
    return emb_mode


def cell_embeddings(encoder: GeneformerEncoder, input_ids: torch.Tensor, attention_mask: torch.Tensor, emb_layer: int = -1, emb_mode: str = "auto") -> torch.Tensor:
    """Geneformer's cell embeddings of a batch.

    Parameters
    ----------
    encoder
        biolm's BERT encoder (eval mode for Geneformer's numbers).
    input_ids, attention_mask
        ``(B, T)`` int64 tokens and bool mask (True on real tokens), as the tokenizer makes them.
    emb_layer, emb_mode
        Geneformer's layer offset and pooling (:func:`hidden_layer_index`, :func:`embedding_mode`).

    Returns
    -------
    torch.Tensor
        ``(B, H)`` float32.
    """
    cfg = encoder.config
    mode = embedding_mode(cfg, emb_mode)
    index = hidden_layer_index(emb_layer, cfg.num_hidden_layers)
    hidden = encoder(input_ids, attention_mask, num_layers=index).last_hidden_state
    if mode == "cls":
        return hidden[:, 0].float()
    return mean_pool(hidden, gene_positions(cfg, input_ids, attention_mask))
