"""The models the core trains and applies (``forward(batch)`` on the tokenizer's input dict) and how
they are built, started from pre-trained weights and rebuilt (the ``ModelSpec`` functions).

Where the architecture comes from:

- a new model from scratch: the ``model:`` section, with ``max_position_embeddings`` = the input
  length the core gives (``ModelInfo.blocksize``, the one owner of that number);
- a new model from a published checkpoint (``model: pretrained``): the checkpoint's
  ``config.json``; its positions bound the input length (``blocksize`` <= its
  ``max_position_embeddings``; V2: ``<cls>`` + ``blocksize - 2`` genes + ``<eos>``);
- a trained model rebuilt by predict/interpret: the architecture saved in its fold's
  ``config.json`` (``ModelSpec.architecture``), so the checkpoint folder is no longer needed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from biolm.core.hookspecs import ConfigError, DataError, read_json

from .bert import GeneformerClassifier, GeneformerConfig, GeneformerMLM
from .dictionary_tokenizer import DictionaryTokenizer
from .embeddings import cell_embeddings, embedding_mode, hidden_layer_index
from .tokenizer_hooks import GenerankTokenizer
from .weights_import import find_weight_file, load_hf_bert_weights, load_into

_ARCHITECTURE_KEYS = {f.name for f in dataclasses.fields(GeneformerConfig)}
_HEAD_KEYS = ("pooling", "head_dropout", "emb_layer", "emb_mode")  # model: keys of the fine-tune model itself


class GeneformerPretrainModel(GeneformerMLM):
    """:class:`GeneformerMLM` (same state-dict keys) taking the input dict.

    ``forward(batch)``: with ``batch["labels"]`` the masked-LM loss (the head runs at scored
    positions only), else the logits ``(B, L, V)``."""

    def __init__(self, config: GeneformerConfig, mlm_probability: float) -> None:
        super().__init__(config)
        self.mlm_probability = float(mlm_probability)

    def forward(self, batch: dict):  # type: ignore[override]
        if "labels" in batch:
            return GeneformerMLM.forward(self, batch["input_ids"], batch["attention_mask"], batch["labels"], return_logits=False).loss
        return GeneformerMLM.forward(self, batch["input_ids"], batch["attention_mask"]).logits


class GeneformerFinetuneModel(GeneformerClassifier):
    """:class:`GeneformerClassifier` (keys ``bert.*``, ``head.*``) taking the input dict.

    Parameters
    ----------
    config, num_outputs
        As :class:`GeneformerClassifier`.
    geneformer_vocab
        Inputs are tokenized with Geneformer's dictionaries (deletions then get Geneformer's
        cosine shift).
    pooling, head_dropout
        As :class:`GeneformerClassifier`.
    emb_layer, emb_mode
        Geneformer's embedding layer and pooling for :meth:`embed` and the deletion shift.
    """

    def __init__(self, config: GeneformerConfig, num_outputs: int, geneformer_vocab: bool, pooling: str = "mean", head_dropout: float | None = None, emb_layer: int = -1, emb_mode: str = "auto") -> None:
        super().__init__(config, num_outputs, pooling, head_dropout)
        self.emb_layer = int(emb_layer)
        self.emb_index = hidden_layer_index(self.emb_layer, config.num_hidden_layers)
        self.emb_mode = embedding_mode(config, emb_mode)
        self.geneformer_vocab = bool(geneformer_vocab)

    def forward(self, batch: dict):  # type: ignore[override]
        """``(B, n_outputs)`` logits or regression values."""
        return GeneformerClassifier.forward(self, batch["input_ids"], batch["attention_mask"])

    def embed(self, batch: dict):  # type: ignore[override]
        """``(B, H)`` Geneformer cell embeddings (``emb_layer``, ``emb_mode``)."""
        return cell_embeddings(self.bert, batch["input_ids"], batch["attention_mask"], self.emb_layer, self.emb_mode)

    def outputs_and_hidden(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass: ``(B, n_outputs)`` outputs and ``(B, T, H)`` hidden states at the
        embedding layer."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        enc = self.bert(ids, mask, return_layer=self.emb_index)
        return self.head(self.pool(enc.last_hidden_state, ids, mask)), enc.layer_output


# ============================================================================ ModelSpec functions


def build(model_cfg: Any, info: Any) -> GeneformerPretrainModel | GeneformerFinetuneModel:
    """``ModelSpec.build``: the pre-training or fine-tuning model for ``info``."""
    tok = info.tokenizer
    if not isinstance(tok, (GenerankTokenizer, DictionaryTokenizer)):
        raise ConfigError("tokenization.encoding", f"geneformer needs the 'generank' tokenizer, got {type(tok).__name__}: set tokenization: encoding: generank and re-run tokenize")
    dictionary = isinstance(tok, DictionaryTokenizer)
    if info.architecture is not None:
        cfg = GeneformerConfig.from_dict(info.architecture)
    else:
        cfg = _new_config(model_cfg, info, tok, dictionary)
    if info.task == "pre-train":
        return GeneformerPretrainModel(cfg, info.extra.get("mlmprobability", 0.15))
    head = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k in _HEAD_KEYS}
    try:
        model = GeneformerFinetuneModel(cfg, max(1, int(info.n_outputs)), dictionary, **head)
    except ValueError as exc:
        key = "model.emb_layer" if "emb_layer" in str(exc) else "model.emb_mode"
        raise ConfigError(key, str(exc)) from None
    model.vocab = list(tok.vocab)  # what a biolm pre-training folder's tokenizer must match
    return model


def _new_config(model_cfg: Any, info: Any, tok: Any, dictionary: bool) -> GeneformerConfig:
    specials: dict[str, Any] = {}
    if dictionary:
        specials = dict(pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id, eos_token_id=tok.eos_token_id)
        if tok.mask_token_id is not None:
            specials["mask_token_id"] = tok.mask_token_id
    if not model_cfg.pretrained:
        arch = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k in _ARCHITECTURE_KEYS}
        vocab_size = len(tok.vocab) if dictionary else len(tok.vocab) + 2
        try:
            return GeneformerConfig(vocab_size=vocab_size, max_position_embeddings=int(info.blocksize), **arch, **specials)
        except ValueError as exc:
            raise ConfigError("model", str(exc)) from None
    from .checkpoint_config import read_checkpoint_config

    key = "model.pretrained"
    if info.task == "pre-train":
        raise ConfigError(key, "pre-train starts from random weights; a published checkpoint is a starting point for fine-tune (unset model.pretrained to pre-train)")
    if not dictionary:
        raise ConfigError(key, f"{model_cfg.pretrained} reads Geneformer's token ids, but the tokenizer (OUTPUTPATH/tokenizer.json) was fitted on your data: re-run tokenize, which then uses the checkpoint's dictionaries")
    cfg = read_checkpoint_config(model_cfg.pretrained).bert
    if cfg.vocab_size != len(tok.vocab):
        raise ConfigError(key, f"{model_cfg.pretrained} has vocab_size {cfg.vocab_size} but the tokenizer (OUTPUTPATH/tokenizer.json) has {len(tok.vocab)} token ids: re-run tokenize with this checkpoint's dictionaries")
    if int(info.blocksize) > cfg.max_position_embeddings:
        raise ConfigError("settings.training.blocksize", f"{info.blocksize} exceeds the {cfg.max_position_embeddings} positions of {model_cfg.pretrained} (the input length, <cls>/<eos> included); use at most {cfg.max_position_embeddings}")
    return dataclasses.replace(cfg, **specials)


def architecture(model: Any) -> dict:
    """``ModelSpec.architecture``: the BERT configuration (sizes, positions, vocabulary, special
    tokens), saved with a trained model and handed back when predict rebuilds it."""
    return model.config.to_dict()


def pretrained_weights(model_cfg: Any) -> str | None:
    """``ModelSpec.pretrained_weights``: the published checkpoint of ``model: pretrained``."""
    return model_cfg.pretrained


def embed(model: Any, inp: dict) -> torch.Tensor:
    """``ModelSpec.embed``: Geneformer cell embeddings ``(B, H)``."""
    return model.embed(inp)


def load_pretrained(model: GeneformerFinetuneModel, path: str | Path) -> dict:
    """``ModelSpec.load_pretrained``: the encoder's weights (the head keeps its initialisation)
    from a published checkpoint folder (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``), a biolm ``pre-train`` folder, or a weight file (HF / cellarium BERT
    names)."""
    p = Path(path)
    meta = read_json(p / "config.json") if p.is_dir() and (p / "config.json").is_file() else None
    if meta is not None and "task" not in meta:  # a published (Hugging Face) checkpoint folder
        return load_into(model, find_weight_file(p))
    key = "settings.training.pretrainedweights"
    if p.is_dir():
        weights = p / "pytorch_model.bin"
        if not weights.exists():
            other = [q.name for q in p.iterdir() if q.suffix in (".bin", ".pt", ".ckpt", ".npz", ".safetensors")]
            raise ConfigError(key, f"{p} holds no pytorch_model.bin" + (f" (found {', '.join(other)}: pass the file itself)" if other else ""))
        _check_vocabulary(p / "tokenizer.json", model, key)
    elif p.is_file():
        weights = p
    else:
        raise ConfigError(key, f"{p} does not exist")
    try:
        return load_hf_bert_weights(model, weights)
    except DataError:
        raise
    except ValueError as exc:
        raise ConfigError(key, f"{weights}: {exc}") from None


def _check_vocabulary(path: Path, model: Any, key: str) -> None:
    """A biolm pre-training's tokenizer must be the one this model reads."""
    if not path.exists():
        return
    try:
        theirs = read_json(path).get("var_names")
    except (OSError, ValueError):
        return
    if theirs is not None and list(theirs) != model.vocab:
        raise ConfigError(key, f"{path.parent} was pre-trained on another gene vocabulary ({len(theirs)} genes vs {len(model.vocab)} here); fine-tune with the pre-training's tokenizer (OUTPUTPATH/tokenizer.json)")
