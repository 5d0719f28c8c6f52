"""Geneformer's network: a BERT encoder (Hugging Face ``BertModel`` semantics) in plain torch.

One network serves both model families the plugin runs: cellarium-ml's Geneformer (vocabulary
fitted on the user's data, PAD = 0, MASK = 1, gene ``i`` -> token ``i + 2``) and the published
Geneformer checkpoints (V1: 2048 positions, no special tokens; V2: 4096 positions,
``<cls>`` ... ``<eos>``; token ids from Geneformer's token dictionary). Parameter names are
``transformers``' BERT names, so checkpoints load by name (:mod:`.weights_import`); parity with
cellarium-ml 0.0.15 and with ``transformers`` is tested in ``tests/test_geneformer_model.py`` and
``tests/test_geneformer_hf.py``.

Models: :class:`GeneformerEncoder` (``BertModel`` without pooler), :class:`GeneformerMLM`
(``BertForMaskedLM``, what pre-training trains and what Geneformer publishes) and
:class:`GeneformerClassifier` (encoder + pooled head, for fine-tuning).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PAD_TOKEN_ID = 0
MASK_TOKEN_ID = 1
N_SPECIAL_TOKENS = 2
IGNORE_INDEX = -100

_ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,  # HF "gelu" is the exact erf form
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass
class GeneformerConfig:
    """BERT hyperparameters with cellarium-ml's Geneformer defaults.

    ``vocab_size`` is the number of token ids: ``n_genes + 2`` for a fitted vocabulary, the token
    dictionary's size for a published one (V2: genes + ``<pad>``, ``<mask>``, ``<cls>``,
    ``<eos>``). ``max_position_embeddings`` is the longest input the model reads, special tokens
    included. ``cls_token_id``/``eos_token_id`` are set when inputs are framed by them (V2);
    they are left out of mean pooling. Only absolute position embeddings are implemented.
    """

    vocab_size: int
    hidden_size: int = 256
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    intermediate_size: int = 512
    hidden_act: str = "relu"
    hidden_dropout_prob: float = 0.02
    attention_probs_dropout_prob: float = 0.02
    max_position_embeddings: int = 2048
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    position_embedding_type: str = "absolute"
    pad_token_id: int = PAD_TOKEN_ID
    mask_token_id: int = MASK_TOKEN_ID
    cls_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.vocab_size <= N_SPECIAL_TOKENS:
            raise ValueError(f"vocab_size must exceed {N_SPECIAL_TOKENS} (PAD, MASK), got {self.vocab_size}")
        for name in ("pad_token_id", "mask_token_id", "cls_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name} {value} is not a token id below vocab_size {self.vocab_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(_ACTIVATIONS)}, got {self.hidden_act!r}")
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"only position_embedding_type='absolute' is implemented, got {self.position_embedding_type!r}"
            )
        for name in ("num_hidden_layers", "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def special_token_ids(self) -> tuple[int, ...]:
        """PAD, MASK and (when set) ``<cls>``/``<eos>``: the ids that are not genes."""
        return tuple(t for t in (self.pad_token_id, self.mask_token_id, self.cls_token_id, self.eos_token_id) if t is not None)

    @property
    def first_gene_id(self) -> int:
        """Gene tokens are ``first_gene_id .. vocab_size - 1`` (both vocabularies put the special
        tokens first)."""
        return max(self.special_token_ids) + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GeneformerConfig:
        """Build from a dict, ignoring keys that are not fields (e.g. a full HF ``config.json``)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class EncoderOutput:
    """Encoder results.

    Attributes
    ----------
    last_hidden_state : torch.Tensor
        ``(B, L, H)``.
    hidden_states : tuple[torch.Tensor, ...] | None
        ``num_hidden_layers + 1`` tensors ``(B, L, H)``: the embedding output, then each layer's.
    attentions : tuple[torch.Tensor, ...] | None
        ``num_hidden_layers`` tensors ``(B, heads, L, L)`` of attention probabilities.
    layer_output : torch.Tensor | None
        ``(B, L, H)`` ``hidden_states[return_layer]`` when asked for.
    """

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    layer_output: torch.Tensor | None = None


@dataclass
class MLMOutput(EncoderOutput):
    """:class:`EncoderOutput` plus ``logits`` ``(B, L, V)`` (None when not requested) and ``loss``."""

    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None


class _Embeddings(nn.Module):
    def __init__(self, c: GeneformerConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        # Geneformer has a single segment: token type 0 everywhere, positions 0..L-1
        e = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings.weight[0]
            + self.position_embeddings.weight[:length]
        )
        return self.dropout(self.LayerNorm(e))


class _SelfAttention(nn.Module):
    def __init__(self, c: GeneformerConfig) -> None:
        super().__init__()
        self.num_heads = c.num_attention_heads
        self.head_dim = c.head_dim
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)
        self.dropout_p = c.attention_probs_dropout_prob

    def forward(
        self, h: torch.Tensor, key_mask: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, length, hidden = h.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.query(h)), heads(self.key(h)), heads(self.value(h))
        p = self.dropout_p if self.training else 0.0
        scale = self.head_dim**-0.5
        if need_weights:
            # the explicit path exists only to expose the probabilities (HF's "eager")
            s = (q @ k.transpose(-1, -2)) * scale
            s = s.masked_fill(~key_mask, torch.finfo(s.dtype).min)
            probs = torch.softmax(s, dim=-1)
            ctx = F.dropout(probs, p, self.training) @ v
        else:
            probs = None
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=p, scale=scale)
        return ctx.transpose(1, 2).reshape(b, length, hidden), probs


class _DenseLayerNorm(nn.Module):
    """``LayerNorm(dropout(dense(x)) + residual)``: HF's BertSelfOutput / BertOutput."""

    def __init__(self, n_in: int, c: GeneformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, c: GeneformerConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _DenseLayerNorm(c.hidden_size, c)


class _Intermediate(nn.Module):
    def __init__(self, c: GeneformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.act = _ACTIVATIONS[c.hidden_act]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(h))


class _Layer(nn.Module):
    """Post-LN transformer layer."""

    def __init__(self, c: GeneformerConfig) -> None:
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseLayerNorm(c.intermediate_size, c)

    def forward(
        self, h: torch.Tensor, key_mask: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, probs = self.attention.self(h, key_mask, need_weights)
        h = self.attention.output(a, h)
        return self.output(self.intermediate(h), h), probs


class _LayerStack(nn.Module):
    def __init__(self, c: GeneformerConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


def _init_bert_weights(module: nn.Module, std: float) -> None:
    """HF BERT initialisation: N(0, std) weights, zero biases, zero PAD embedding, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class GeneformerEncoder(nn.Module):
    """BERT encoder (HF ``BertModel`` without pooler); parameter names as in HF.

    Parameters
    ----------
    config
        :class:`GeneformerConfig`.
    """

    def __init__(self, config: GeneformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _LayerStack(config)
        _init_bert_weights(self, config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        num_layers: int | None = None,
        return_layer: int | None = None,
    ) -> EncoderOutput:
        """Encode token sentences.

        Parameters
        ----------
        input_ids
            ``(B, L)`` int64, ``L <= max_position_embeddings``.
        attention_mask
            ``(B, L)`` bool (or 0/1), True at real tokens; default ``input_ids != PAD``. It masks
            keys only: PAD query rows still get (unused) outputs, as in HF.
        output_hidden_states, output_attentions
            Also return every layer's hidden states / attention probabilities (the latter uses
            an explicit softmax instead of fused attention, so it is slower).
        num_layers
            Run only the first ``num_layers`` layers (``last_hidden_state`` is then
            ``hidden_states[num_layers]``); default all. Embedding extraction from an inner layer
            (Geneformer's ``emb_layer``) skips the layers above it.
        return_layer
            Also return ``hidden_states[return_layer]`` as ``layer_output`` (without keeping the
            other layers' states).

        Returns
        -------
        EncoderOutput
            ``last_hidden_state`` ``(B, L, H)`` and optionally the per-layer tensors.
        """
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        mask = (input_ids != self.config.pad_token_id) if attention_mask is None else attention_mask.bool()
        # a cell without any expressed gene would leave every key masked and softmax would give
        # NaN; let such rows attend everywhere (their outputs are meaningless either way)
        mask = mask | ~mask.any(dim=1, keepdim=True)
        key_mask = mask[:, None, None, :]
        h = self.embeddings(input_ids)
        all_h = [h] if output_hidden_states else None
        all_a = [] if output_attentions else None
        selected = h if return_layer == 0 else None
        for i, layer in enumerate(self.encoder.layer[:num_layers], start=1):
            h, probs = layer(h, key_mask, output_attentions)
            if i == return_layer:
                selected = h
            if all_h is not None:
                all_h.append(h)
            if all_a is not None:
                all_a.append(probs)
        return EncoderOutput(
            last_hidden_state=h,
            hidden_states=tuple(all_h) if all_h is not None else None,
            attentions=tuple(all_a) if all_a is not None else None,
            layer_output=selected,
        )


class _PredictionHeadTransform(nn.Module):
    def __init__(self, c: GeneformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.act = _ACTIVATIONS[c.hidden_act]
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(h)))


class _LMPredictionHead(nn.Module):
    def __init__(self, c: GeneformerConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.transform = _PredictionHeadTransform(c)
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))
        self.decoder = nn.Linear(c.hidden_size, c.vocab_size)
        # tied as in HF: both names appear in state_dict and hold the same tensors
        self.decoder.weight = word_embeddings.weight
        self.decoder.bias = self.bias

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(h))


class _MLMHead(nn.Module):
    def __init__(self, c: GeneformerConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.predictions = _LMPredictionHead(c, word_embeddings)


class GeneformerMLM(nn.Module):
    """Encoder + masked-gene head (HF ``BertForMaskedLM``); what cellarium's Geneformer trains.

    State-dict keys are HF's: ``bert.embeddings.*``, ``bert.encoder.layer.{i}.*``,
    ``cls.predictions.*`` (the decoder is tied to the word embeddings).
    """

    def __init__(self, config: GeneformerConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = GeneformerEncoder(config)
        self.cls = _MLMHead(config, self.bert.embeddings.word_embeddings)
        _init_bert_weights(self.cls, config.initializer_range)
        with torch.no_grad():
            self.cls.predictions.bias.zero_()
            # the head init above re-drew the tied matrix; restore the PAD row's zero
            self.bert.embeddings.word_embeddings.weight[config.pad_token_id].zero_()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        return_logits: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> MLMOutput:
        """Run the encoder and the MLM head.

        Parameters
        ----------
        input_ids, attention_mask
            ``(B, L)``, see :meth:`GeneformerEncoder.forward`.
        labels
            ``(B, L)`` int64 with -100 at unscored positions (from :func:`mlm_mask`). The loss is
            the mean cross-entropy over scored positions (HF's loss).
        return_logits
            With ``False`` (and labels), the head runs only at scored positions: the ``(B, L, V)``
            logits are never built, which saves most of the memory of pre-training with a
            large gene vocabulary. The loss is the same.

        Returns
        -------
        MLMOutput
            ``logits`` ``(B, L, V)`` or None, ``loss`` (scalar) or None, encoder outputs.
        """
        enc = self.bert(input_ids, attention_mask, output_hidden_states, output_attentions)
        head = self.cls.predictions
        logits = loss = None
        if return_logits or labels is None:
            logits = head(enc.last_hidden_state)
        if labels is not None:
            scored = labels != IGNORE_INDEX
            target = labels[scored]
            sel_logits = logits[scored] if logits is not None else head(enc.last_hidden_state[scored])
            if target.numel():
                loss = F.cross_entropy(sel_logits.float(), target)
            else:
                # keep the graph connected so an empty batch is a zero step, not NaN
                loss = sel_logits.sum() * 0.0
        return MLMOutput(
            last_hidden_state=enc.last_hidden_state,
            hidden_states=enc.hidden_states,
            attentions=enc.attentions,
            logits=logits,
            loss=loss,
        )


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``(B, L, H)`` over positions where ``attention_mask`` ``(B, L)`` is True.

    Returns ``(B, H)`` float32; a sentence without tokens pools to zeros.
    """
    # float32 accumulation: under bf16 autocast a count above 256 is no longer exact in bf16
    m = attention_mask.to(torch.float32).unsqueeze(-1)
    return (hidden.float() * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def gene_positions(config: GeneformerConfig, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: real positions other than ``<cls>``/``<eos>`` (what mean pooling averages;
    Geneformer's ``mean_nonpadding_embs`` drops the first and last position of V2 inputs, which
    hold exactly these tokens)."""
    mask = attention_mask.bool()
    for special in (config.cls_token_id, config.eos_token_id):
        if special is not None:
            mask = mask & (input_ids != special)
    return mask


class GeneformerClassifier(nn.Module):
    """Encoder + pooled head for fine-tuning (classification or regression).

    The encoder's keys are ``bert.*`` exactly as in :class:`GeneformerMLM`, so a pre-trained
    checkpoint loads with :meth:`load_encoder_weights`. cellarium has no fine-tuning head; this
    one follows HF's ``BertForSequenceClassification`` (dropout, then a linear layer) but pools
    by the mean over gene tokens by default (a fitted vocabulary and V1 have no ``<cls>``).

    Parameters
    ----------
    config
        Encoder configuration.
    num_outputs
        Number of outputs (classes, or regression targets).
    pooling
        ``"mean"`` (over gene tokens: not PAD, ``<cls>`` or ``<eos>``) or ``"first"`` (position
        0: the top-ranked gene, or ``<cls>`` for V2 inputs).
    head_dropout
        Dropout before the linear layer (default: ``config.hidden_dropout_prob``).
    """

    def __init__(
        self, config: GeneformerConfig, num_outputs: int, pooling: str = "mean", head_dropout: float | None = None
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "first"):
            raise ValueError(f"pooling must be 'mean' or 'first', got {pooling!r}")
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
        self.config = config
        self.pooling = pooling
        self.bert = GeneformerEncoder(config)
        p = config.hidden_dropout_prob if head_dropout is None else head_dropout
        self.head = nn.Sequential(nn.Dropout(p), nn.Linear(config.hidden_size, num_outputs))
        _init_bert_weights(self.head, config.initializer_range)

    def pool(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, H)`` last hidden states -> ``(B, H)`` the head's input."""
        if self.pooling == "first":
            return hidden[:, 0]
        return mean_pool(hidden, gene_positions(self.config, input_ids, attention_mask))

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L)`` tokens -> ``(B, H)`` the head's input."""
        mask = (input_ids != self.config.pad_token_id) if attention_mask is None else attention_mask.bool()
        return self.pool(self.bert(input_ids, mask).last_hidden_state, input_ids, mask)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled cell embedding, ``(B, H)``."""
        return self.pooled(input_ids, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L)`` tokens -> ``(B, num_outputs)`` outputs (logits or regression values)."""
        return self.head(self.pooled(input_ids, attention_mask))

    def load_encoder_weights(self, weights: Mapping[str, Any] | str | os.PathLike) -> dict[str, list[str]]:
        """Load the encoder from an MLM / cellarium / HF checkpoint; the head keeps its init."""
        from .weights_import import load_hf_bert_weights

        return load_hf_bert_weights(self, weights)
