"""Load BERT weights into biolm's Geneformer models: published Hugging Face folders, biolm's own
pre-training, cellarium-ml checkpoints.

biolm's modules carry ``transformers``' names, so a ``BertForMaskedLM`` name maps to itself:

=====================================================================  ==========================================
checkpoint key (HF ``BertForMaskedLM``)                                biolm ``GeneformerMLM`` parameter
=====================================================================  ==========================================
``bert.embeddings.{word,position,token_type}_embeddings.weight``       ``bert.embeddings.*`` (token type row 0 is added everywhere)
``bert.embeddings.LayerNorm.{weight,bias}``                            ``bert.embeddings.LayerNorm``
``bert.encoder.layer.N.attention.self.{query,key,value}.*``            ``bert.encoder.layer[N].attention.self.*``
``bert.encoder.layer.N.attention.output.{dense,LayerNorm}.*``          ``bert.encoder.layer[N].attention.output.*``
``bert.encoder.layer.N.intermediate.dense.*``                          ``bert.encoder.layer[N].intermediate.dense``
``bert.encoder.layer.N.output.{dense,LayerNorm}.*``                    ``bert.encoder.layer[N].output.*``
``cls.predictions.transform.{dense,LayerNorm}.*``                      ``cls.predictions.transform.*``
``cls.predictions.bias``                                               ``cls.predictions.bias`` (= ``decoder.bias``)
``cls.predictions.decoder.{weight,bias}`` (tied; absent from           tied to ``word_embeddings.weight`` /
safetensors, present in ``.bin``)                                      ``cls.predictions.bias``
=====================================================================  ==========================================

The encoder's prefix is found from the word-embedding key, so the layouts met in practice all
load: HF ``BertForMaskedLM`` (``bert.*``, ``cls.*``), HF ``BertModel`` (no prefix), cellarium's
``Geneformer`` module (``bert.bert.*``, ``bert.cls.*``) and its Lightning checkpoints
(``model.bert.bert.*`` under ``state_dict``), and biolm's own state dicts. TF-era LayerNorm names
``gamma``/``beta`` are renamed as ``transformers`` does. Skipped and reported: buffers
(``position_ids``, ``token_type_ids``, cellarium's ``feature_ids``), ``pooler``,
``cls.seq_relationship``, fine-tuned task heads (``classifier``), and the MLM head when the target
has none. A decoder copy that differs from its tied twin is refused (biolm ties them). Anything
else is unexpected and any target parameter left without a value is missing: both are errors
(a classifier's ``head.*`` may be missing: it keeps its initialisation). Half-precision and
float64 weights are converted to the model's dtype.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from biolm.core.hookspecs import DataError, SafetensorsFile, read_torch_state_dict

from .bert import GeneformerClassifier, GeneformerEncoder, GeneformerMLM
from .checkpoint_config import CheckpointConfig, read_checkpoint_config

__all__ = ["WEIGHT_FILES", "find_weight_file", "open_weights", "map_bert_names", "load_hf_bert_weights", "load_into", "LoadedCheckpoint", "load_checkpoint"]

#: weight files looked for in a model folder, in order of preference
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_WORD = "embeddings.word_embeddings.weight"
_HEAD_PROBE = "cls.predictions.transform.dense.weight"
_DECODER_W, _DECODER_B = "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"
_TWIN_W, _TWIN_B = "bert." + _WORD, "cls.predictions.bias"
_SKIP_SUFFIXES = (".position_ids", ".token_type_ids", "feature_ids")
_SKIP_PREFIXES = ("bert.pooler.", "cls.seq_relationship.", "classifier.", "dropout.")


class WeightSource(Protocol):
    """Named tensors read on demand (a safetensors file or a loaded state dict)."""

    def keys(self) -> list[str]: ...

    def get(self, name: str) -> torch.Tensor: ...


class _DictSource:
    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self._t = tensors

    def keys(self) -> list[str]:
        return list(self._t)

    def get(self, name: str) -> torch.Tensor:
        v = self._t[name]
        return v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))


def find_weight_file(folder: str | os.PathLike) -> str:
    """The weight file of a model folder: ``model.safetensors``, else ``pytorch_model.bin``.

    Raises
    ------
    DataError
        If the folder has neither (sharded checkpoints, ``*.index.json``, are named in the
        message as not supported: no Geneformer release is sharded).
    """
    folder = str(folder)
    for name in WEIGHT_FILES:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    try:
        present = sorted(os.listdir(folder))
    except OSError as exc:
        raise DataError(folder, f"cannot list the model folder ({exc.strerror or exc})") from None
    sharded = [n for n in present if n.endswith(".index.json")]
    hint = f"; sharded checkpoints ({', '.join(sharded)}) are not supported" if sharded else ""
    raise DataError(folder, f"no {' or '.join(WEIGHT_FILES)} in the model folder (found: {', '.join(present) or 'nothing'}){hint}")


def open_weights(weights: Mapping[str, Any] | str | os.PathLike) -> WeightSource:
    """A :class:`WeightSource` for a mapping, a ``.safetensors`` file (validated now, read tensor by
    tensor later), an ``.npz`` or a torch state-dict file (loaded whole, weights only)."""
    if isinstance(weights, Mapping):
        return _DictSource(weights)
    path = str(weights)
    if path.endswith(".safetensors"):
        return SafetensorsFile(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return _DictSource({k: z[k] for k in z.files})
    return _DictSource(read_torch_state_dict(path))


@dataclass
class WeightMapping:
    """How a checkpoint's names map onto a biolm model.

    Attributes
    ----------
    sources : dict[str, str]
        biolm parameter name -> checkpoint name providing it.
    tied : dict[str, str]
        biolm names filled from a tied twin -> the twin's checkpoint name.
    tie_checks : list[tuple[str, str]]
        ``(decoder key, twin key)`` pairs both present in the checkpoint; they must be equal.
    skipped, unexpected : list[str]
        Checkpoint names deliberately not used / with no biolm parameter.
    missing : list[str]
        Required biolm parameters that nothing provides.
    """

    sources: dict[str, str] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)
    tie_checks: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _layer_norm_name(name: str) -> str:
    if "LayerNorm" in name and name.endswith((".gamma", ".beta")):
        return name.rsplit(".", 1)[0] + (".weight" if name.endswith(".gamma") else ".bias")
    return name


def _prefix(names: list[str], probe: str) -> str | None:
    hits = [n for n in names if n.endswith(probe)]
    return min(hits, key=len)[: -len(probe)] if hits else None


def map_bert_names(names: list[str], target_names: list[str], target_prefix: str, with_head: bool, optional: tuple[str, ...] = ()) -> WeightMapping:
    """Match checkpoint names to a model's parameter names.

    Parameters
    ----------
    names
        Checkpoint tensor names.
    target_names
        The model's ``state_dict`` keys.
    target_prefix
        Prefix of the encoder's names in the model: ``"bert."`` (MLM, classifier) or ``""``
        (a bare encoder).
    with_head
        The model has the MLM head (``cls.predictions.*``).
    optional
        Prefixes of target names that may stay unfilled (a classifier's ``head.``).

    Raises
    ------
    ValueError
        If no name ends with ``embeddings.word_embeddings.weight`` (not a BERT checkpoint).
    """
    canon = {_layer_norm_name(n): n for n in names}
    enc_prefix = _prefix(list(canon), _WORD)
    if enc_prefix is None:
        raise ValueError(f"no '*{_WORD}' in the weights; not a BERT checkpoint")
    head_prefix = _prefix(list(canon), _HEAD_PROBE)
    targets = set(target_names)
    m = WeightMapping()
    found: dict[str, str] = {}  # canonical BertForMaskedLM name -> checkpoint name
    for c, name in canon.items():
        if c.startswith(tuple(enc_prefix + part for part in ("embeddings.", "encoder.", "pooler."))):
            key = "bert." + c[len(enc_prefix) :]
        elif head_prefix is not None and c.startswith(head_prefix + "cls."):
            key = c[len(head_prefix) :]
        else:
            key = c
        if key.endswith(_SKIP_SUFFIXES) or key.startswith(_SKIP_PREFIXES) or (key.startswith("cls.") and not with_head):
            m.skipped.append(name)
            continue
        found[key] = name
        target = key if key.startswith("cls.") else target_prefix + key[len("bert.") :] if key.startswith("bert.") else key
        if target in targets:
            m.sources[target] = name
        elif key not in (_DECODER_W, _DECODER_B):
            m.unexpected.append(name)
    if with_head:
        for dec, twin in ((_DECODER_W, _TWIN_W), (_DECODER_B, _TWIN_B)):
            if dec in found and twin in found:
                m.tie_checks.append((found[dec], found[twin]))
                m.sources[dec] = found[dec]
            elif twin in found:
                m.tied[dec] = found[twin]
                m.sources[dec] = found[twin]
            elif dec in found:  # only the decoder copy was saved: it fills its twin
                m.tied[twin] = found[dec]
                m.sources[twin] = found[dec]
                m.sources[dec] = found[dec]
    m.missing = sorted(t for t in targets if t not in m.sources and not t.startswith(optional))
    return m


def _listing(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items)} in all)" if len(items) > n else "")


def load_hf_bert_weights(
    model: GeneformerEncoder | GeneformerMLM | GeneformerClassifier,
    weights: Mapping[str, Any] | str | os.PathLike,
    strict: bool = True,
) -> dict[str, list[str]]:
    """Copy BERT-named weights into one of biolm's Geneformer models (in place).

    Parameters
    ----------
    model
        Target model.
    weights
        ``{name: array or tensor}``, or a ``.safetensors``, ``.npz`` or torch state-dict file.
    strict
        Raise on missing and on unexpected keys.

    Returns
    -------
    dict
        ``loaded`` (target names), ``skipped`` (checkpoint names), ``missing`` (target names),
        ``tied`` (``"name <- twin"``), ``converted`` (``"name: dtype"`` cast to the model's dtype).

    Raises
    ------
    ValueError
        Not a BERT checkpoint; shape mismatches (e.g. another vocabulary); a decoder copy that
        differs from its tied twin; missing or unexpected keys (strict).
    FileFormatError
        Damaged weight files (one line, from :func:`open_weights`).
    """
    return _copy_weights(model, open_weights(weights), strict)


def _copy_weights(model: Any, src: WeightSource, strict: bool = True) -> dict[str, list[str]]:
    own = model.state_dict()
    prefix = "" if isinstance(model, GeneformerEncoder) else "bert."
    optional = ("head.",) if isinstance(model, GeneformerClassifier) else ()
    m = map_bert_names(src.keys(), list(own), prefix, isinstance(model, GeneformerMLM), optional)
    if strict and (m.missing or m.unexpected):
        parts = ([f"missing {_listing(m.missing)}"] if m.missing else []) + ([f"unexpected {_listing(m.unexpected)}"] if m.unexpected else [])
        raise ValueError("weights do not match the model: " + "; ".join(parts))
    for dec, twin in m.tie_checks:
        a, b = src.get(dec), src.get(twin)
        if a.shape != b.shape or not torch.equal(a, b):
            raise ValueError(f"'{dec}' differs from its tied twin '{twin}' (untied decoder); biolm ties the MLM decoder to the word embeddings")
    params = dict(model.named_parameters(remove_duplicate=False))
    params.update(dict(model.named_buffers(remove_duplicate=False)))
    converted = []
    with torch.no_grad():
        for target, name in sorted(m.sources.items()):
            t = src.get(name)
            if tuple(t.shape) != tuple(own[target].shape):
                raise ValueError(f"shape mismatch (another vocabulary or architecture?): '{name}' has shape {tuple(t.shape)}, the model needs {tuple(own[target].shape)}")
            if not t.is_floating_point():
                raise ValueError(f"'{name}' has dtype {t.dtype}, expected floating-point weights")
            if t.dtype != params[target].dtype:
                converted.append(f"{name}: {str(t.dtype).replace('torch.', '')}")
            params[target].copy_(t)
    return {
        "loaded": sorted(m.sources),
        "skipped": sorted(m.skipped),
        "missing": m.missing,
        "tied": sorted(f"{k} <- {v}" for k, v in m.tied.items()),
        "converted": sorted(set(converted)),
    }


@dataclass
class LoadedCheckpoint:
    """A published checkpoint folder loaded into biolm.

    Attributes
    ----------
    model : GeneformerMLM | GeneformerEncoder
        In eval mode, float32, on the CPU.
    config : CheckpointConfig
        The interpreted ``config.json`` (``config.bert`` is biolm's config).
    weights_path : str
    report : dict[str, list[str]]
        As :func:`load_hf_bert_weights` returns it, plus ``ignored_config_keys``.
    """

    model: GeneformerMLM | GeneformerEncoder
    config: CheckpointConfig
    weights_path: str
    report: dict[str, list[str]]


def load_into(model: Any, weights_path: str, source: WeightSource | None = None) -> dict[str, list[str]]:
    """:func:`load_hf_bert_weights` from a file, its problems as one-line :class:`DataError` s
    naming the file (``source``: the file already opened)."""
    try:
        return _copy_weights(model, source or open_weights(weights_path))
    except DataError:
        raise
    except ValueError as exc:
        raise DataError(weights_path, str(exc)) from None


def load_checkpoint(path: str | os.PathLike, *, with_head: bool | None = None) -> LoadedCheckpoint:
    """Load a Hugging Face Geneformer folder (``config.json`` + weights) into biolm's model.

    Parameters
    ----------
    path
        The model folder.
    with_head
        Build :class:`GeneformerMLM` (True) or :class:`GeneformerEncoder` (False). Default: the
        MLM model when the checkpoint holds ``cls.predictions.*``.

    Raises
    ------
    DataError
        Config problems (:func:`~.checkpoint_config.read_checkpoint_config`), no weight file,
        missing or unexpected keys, shape mismatches, untied decoder weights.
    FileFormatError
        Unreadable weight files (truncated, garbage, malicious).
    """
    cfg = read_checkpoint_config(path)
    wpath = find_weight_file(path)
    src = open_weights(wpath)
    has_head = any(_layer_norm_name(n).endswith(_HEAD_PROBE) for n in src.keys()) if with_head is None else with_head
    model: GeneformerMLM | GeneformerEncoder = GeneformerMLM(cfg.bert) if has_head else GeneformerEncoder(cfg.bert)
    report = load_into(model, wpath, src)
    model.eval()
    return LoadedCheckpoint(model=model, config=cfg, weights_path=wpath, report={**report, "ignored_config_keys": cfg.ignored_keys})
