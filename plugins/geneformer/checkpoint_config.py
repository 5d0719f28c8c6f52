"""A published checkpoint's ``config.json`` (Hugging Face BERT, as Geneformer releases it),
read into :class:`~.bert.GeneformerConfig`.

Geneformer's checkpoints are ``transformers`` ``BertForMaskedLM`` folders. Their
``config.json`` keys map one to one onto :class:`~.bert.GeneformerConfig` fields (biolm's BERT
uses HF's names). Published values, verified from the released folders:

================  ============  =============  =============
key               V1-10M        V2-104M        V2-316M
================  ============  =============  =============
hidden_size       256           768            1152
num_hidden_layers 6             12             18
num_attention_heads 4           12             18
intermediate_size 512           3072           4608
max_position_emb. 2048          4096           4096
vocab_size        25426         20275          20275
hidden_act        relu          relu           relu
dropouts          0.02          0.1            0.1
================  ============  =============  =============

All use ``layer_norm_eps`` 1e-12, ``type_vocab_size`` 2, ``pad_token_id`` 0,
``position_embedding_type`` "absolute", ``architectures`` ``["BertForMaskedLM"]``.

Keys that change the computation but that biolm does not implement (another architecture,
relative positions, a decoder, an unsupported activation) are refused with one line naming the
file and the key; keys that do not affect inference (``use_cache``, ``transformers_version``,
``torch_dtype``, labels, ...) are ignored and listed in :attr:`CheckpointConfig.ignored_keys`.
Absent optional keys take ``transformers``' ``BertConfig`` defaults (not biolm's), so a folder
means what it means to ``transformers``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from biolm.core.hookspecs import DataError, FileFormatError

from .bert import GeneformerConfig

__all__ = ["SUPPORTED_ARCHITECTURES", "SUPPORTED_ACTIVATIONS", "CheckpointConfig", "read_checkpoint_config", "checkpoint_config_dict"]

#: ``architectures`` entry -> whether its checkpoints carry the masked-LM head ``cls.predictions``
SUPPORTED_ARCHITECTURES: dict[str, bool] = {
    "BertForMaskedLM": True,  # Geneformer's pretrained models
    "BertForPreTraining": True,  # MLM head + next-sentence head (the latter is skipped)
    "BertModel": False,  # encoder only
    "BertForSequenceClassification": False,  # Geneformer's fine-tuned cell classifiers: encoder used
    "BertForTokenClassification": False,  # Geneformer's fine-tuned gene classifiers: encoder used
}

#: HF ``hidden_act`` values biolm's BERT computes identically ("gelu" is the exact erf form in both)
SUPPORTED_ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish")

# keys that must be present (transformers would silently use bert-base values otherwise, which
# can never match a Geneformer checkpoint)
_REQUIRED_INT = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)
# optional keys with transformers' BertConfig defaults
_OPTIONAL = {
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
}
# keys that must keep a value biolm implements
_MUST_BE = {
    "is_decoder": (False, "biolm's BERT is an encoder"),
    "add_cross_attention": (False, "biolm's BERT has no cross-attention"),
    "is_encoder_decoder": (False, "biolm's BERT is an encoder"),
    "tie_word_embeddings": (True, "biolm ties the MLM decoder to the word embeddings"),
    "chunk_size_feed_forward": (0, "biolm does not chunk the feed-forward block"),
    "pruned_heads": ({}, "biolm cannot load pruned attention heads"),
}
# keys known not to affect inference
_HARMLESS = frozenset(
    {
        "architectures",
        "model_type",
        "gradient_checkpointing",
        "use_cache",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "classifier_dropout",
        "num_labels",
        "id2label",
        "label2id",
        "problem_type",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "bos_token_id",
        "eos_token_id",
        "sep_token_id",
        "cls_token_id",
        "_name_or_path",
        "_attn_implementation",
        "attn_implementation",
        "finetuning_task",
    }
)


@dataclass
class CheckpointConfig:
    """A published BERT config, interpreted.

    Attributes
    ----------
    path : str
        The ``config.json``.
    bert : GeneformerConfig
        biolm's config with the published values.
    architecture : str | None
        The ``architectures`` entry (None when the file has none).
    head_expected : bool | None
        Whether that architecture's checkpoints hold the MLM head (None when unknown).
    raw : dict
        The file's content.
    ignored_keys : list[str]
        Keys read but without effect on inference, other than the well-known ones.
    """

    path: str
    bert: GeneformerConfig
    architecture: str | None
    head_expected: bool | None
    raw: dict[str, Any] = field(repr=False)
    ignored_keys: list[str]


def _fail(path: str, key: str, msg: str) -> DataError:
    return DataError(path, f"key '{key}': {msg}")


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise DataError(path, "no such file (a Hugging Face model folder needs config.json)") from None
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise FileFormatError(path, "JSON config", f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise FileFormatError(path, "JSON config", str(exc).splitlines()[0]) from None
    if not isinstance(raw, dict):
        raise FileFormatError(path, "JSON config", f"a JSON {type(raw).__name__}, not an object")
    return raw


def _int(path: str, raw: dict[str, Any], key: str, minimum: int) -> int:
    value = raw[key]
    if type(value) is not int or value < minimum:
        raise _fail(path, key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _float(path: str, raw: dict[str, Any], key: str) -> float:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise _fail(path, key, f"must be a non-negative number, got {value!r}")
    return float(value)


def _architecture(path: str, raw: dict[str, Any]) -> tuple[str | None, bool | None]:
    model_type = raw.get("model_type", "bert")
    if model_type != "bert":
        raise _fail(path, "model_type", f"{model_type!r} is not supported (Geneformer checkpoints are 'bert')")
    archs = raw.get("architectures")
    if archs is None:
        return None, None
    if not isinstance(archs, list) or len(archs) != 1 or not isinstance(archs[0], str):
        raise _fail(path, "architectures", f"expected one architecture name, got {archs!r}")
    arch = archs[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise _fail(path, "architectures", f"{arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    return arch, SUPPORTED_ARCHITECTURES[arch]


def checkpoint_config_dict(config: GeneformerConfig, architecture: str = "BertForMaskedLM") -> dict[str, Any]:
    """The ``config.json`` content ``transformers`` writes for ``config`` (a checkpoint folder's
    config, e.g. for the CPU benchmark's full-size models)."""
    d = {k: getattr(config, k) for k in _REQUIRED_INT}
    d.update({k: getattr(config, k) for k in _OPTIONAL})
    d.update(architectures=[architecture], model_type="bert")
    return d


def read_checkpoint_config(path: str | os.PathLike) -> CheckpointConfig:
    """Read and check a Hugging Face BERT ``config.json``.

    Parameters
    ----------
    path
        The ``config.json`` file, or the folder holding it.

    Returns
    -------
    CheckpointConfig

    Raises
    ------
    DataError
        ``PATH: key 'KEY': ...`` for a missing size key, a wrong type, an unsupported
        architecture, ``model_type``, ``hidden_act`` or ``position_embedding_type``, or a
        decoder/cross-attention/untied/pruned model. :class:`~biolm.core.errors.FileFormatError`
        when the file is not a JSON object.
    """
    path = str(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    raw = _read_json(path)
    arch, head = _architecture(path, raw)
    for key in _REQUIRED_INT:
        if key not in raw:
            raise _fail(path, key, "missing (every published Geneformer config has it)")
    values: dict[str, Any] = {key: _int(path, raw, key, 1) for key in _REQUIRED_INT}
    opt = {k: raw.get(k, v) for k, v in _OPTIONAL.items()}
    act = opt["hidden_act"]
    if act not in SUPPORTED_ACTIVATIONS:
        raise _fail(path, "hidden_act", f"{act!r} is not supported (supported: {', '.join(SUPPORTED_ACTIVATIONS)})")
    pos = opt["position_embedding_type"]
    if pos != "absolute":
        raise _fail(path, "position_embedding_type", f"{pos!r} is not supported (only 'absolute' position embeddings)")
    for key, (want, why) in _MUST_BE.items():
        if key in raw and raw[key] != want and not (raw[key] is None and key == "chunk_size_feed_forward"):
            raise _fail(path, key, f"{raw[key]!r} is not supported ({why})")
    merged = dict(raw, **opt)
    values.update(
        hidden_act=act,
        position_embedding_type=pos,
        hidden_dropout_prob=_float(path, merged, "hidden_dropout_prob"),
        attention_probs_dropout_prob=_float(path, merged, "attention_probs_dropout_prob"),
        initializer_range=_float(path, merged, "initializer_range"),
        layer_norm_eps=_float(path, merged, "layer_norm_eps"),
        type_vocab_size=_int(path, merged, "type_vocab_size", 1),
        pad_token_id=_int(path, merged, "pad_token_id", 0),
    )
    if values["pad_token_id"] >= values["vocab_size"]:
        raise _fail(path, "pad_token_id", f"{values['pad_token_id']} is not below vocab_size {values['vocab_size']}")
    try:
        cfg = GeneformerConfig(**values)
    except ValueError as exc:
        raise DataError(path, str(exc)) from None
    known = set(_REQUIRED_INT) | set(_OPTIONAL) | set(_MUST_BE) | _HARMLESS
    ignored = sorted(k for k in raw if k not in known)
    return CheckpointConfig(path=path, bert=cfg, architecture=arch, head_expected=head, raw=raw, ignored_keys=ignored)
