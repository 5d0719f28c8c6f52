"""The ``geneformer`` plugin: Geneformer (Theodoris et al. 2023) on single-cell expression data —
cellarium-ml's model trained on your data, or a published Geneformer checkpoint (V1, V2).

Hook implementations and the ``model:`` section only; everything else is imported when it is
used, so listing plugins stays cheap (no torch, no numpy at import). Where things live:

==========================  ===========================================================================
``tokenizer_hooks``          the ``generank`` tokenizer kind: fit, load, encode cells, make model input
``fitted_tokenizer``         cellarium-ml's rank-value tokenizer with medians fitted on your data
``dictionary_tokenizer``     Geneformer's own tokenization with a release's dictionaries
``gene_dictionaries``        finding and safely loading Geneformer's dictionary pickles
``bert``                     the BERT network (encoder, masked-LM, classifier), plain torch
``checkpoint_config``        a published checkpoint's ``config.json``
``weights_import``           loading BERT weights (safetensors, ``.bin``, cellarium) by name
``task_models``              the models the core trains; build / architecture / pre-trained weights
``pretraining``              masked-gene pre-training (masking, loss)
``embeddings``               Geneformer's cell embeddings (``emb_layer``, cell / cls)
``deletion``                 Geneformer's in-silico deletion cosine shift (interpret)
==========================  ===========================================================================

Modes: ``tokenize``, ``pre-train`` (masked-gene LM, 15 % with 80/10/10), ``fine-tune`` (mean- or
first-token-pooled head, from ``model: pretrained``, ``OUTPUTPATH/pre-train`` or random weights),
``predict`` (``saveembeddings`` writes Geneformer's cell embeddings), ``interpret`` (``remove`` =
in-silico deletion, ``mask`` = MASK token in place, ``activate`` = gene moved to rank 1,
``replace``; with Geneformer's dictionaries ``remove`` also reports Geneformer's cosine shift).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from biolm.core.hookspecs import ModelSpec, PluginConfig, TokenizerSpec, hookimpl, opt, parsers

TRAIN = {"pre-train", "fine-tune"}
TOKENIZER = {"tokenize", "pre-train", "fine-tune"}  # the modes that may learn the tokenizer
KIND = "generank"


@dataclass
class GeneformerSchema:
    pretrained: str | None = opt(None, "fine-tune from a published Geneformer checkpoint: its folder (config.json + model.safetensors or pytorch_model.bin). Its config.json gives the architecture (the size keys below are then ignored) and its positions bound settings.training.blocksize; cells are tokenized with its gene dictionaries.", parse=parsers.PATH, modes={"tokenize", "fine-tune"})
    dictionaries: str | None = opt(None, "Folder of Geneformer's gene dictionaries (token_dictionary_gc104M.pkl, gene_median_dictionary_gc104M.pkl, ensembl_mapping_dict_gc104M.pkl; V1: gene_dictionaries_30m/); set: Geneformer's own tokenization instead of medians fitted on the data. Unset with pretrained: looked for in the checkpoint folder, ../geneformer and .. beside it. Read when the tokenizer is learned.", parse=parsers.PATH, modes=TOKENIZER)
    ensemblcolumn: str = opt("ensembl_id", "With Geneformer's dictionaries: the var column of Ensembl ids ('index' = the var index); kept in the tokenizer, so files read later (predict) need it too, unless their data source names another with genecolumn.", parse=parsers.TEXT, modes=TOKENIZER)
    countscolumn: str = opt("n_counts", "With Geneformer's dictionaries: the obs column of library sizes (computed from the counts when a file has none); kept in the tokenizer.", parse=parsers.TEXT, modes=TOKENIZER)
    hidden_size: int = opt(256, "Width of the BERT encoder (embedding and hidden size).", minimum=1, modes=TRAIN)
    num_hidden_layers: int = opt(6, "Transformer layers.", minimum=1, modes=TRAIN)
    num_attention_heads: int = opt(4, "Attention heads per layer (must divide hidden_size).", minimum=1, modes=TRAIN)
    intermediate_size: int = opt(512, "Width of each layer's feed-forward block.", minimum=1, modes=TRAIN)
    hidden_act: str = opt("relu", "Feed-forward activation.", choices=("relu", "gelu"), modes=TRAIN)
    hidden_dropout_prob: float = opt(0.02, "Dropout on embeddings and layer outputs.", minimum=0.0, maximum=1.0, modes=TRAIN)
    attention_probs_dropout_prob: float = opt(0.02, "Dropout on attention probabilities.", minimum=0.0, maximum=1.0, modes=TRAIN)
    layer_norm_eps: float = opt(1e-12, "LayerNorm epsilon.", minimum=0.0, modes=TRAIN)
    initializer_range: float = opt(0.02, "Standard deviation of the normal weight initialisation.", minimum=0.0, modes=TRAIN)
    pooling: str = opt("mean", "fine-tune: cell representation for the head = mean over gene tokens, or the first token (the top-ranked gene; <cls> with V2 dictionaries).", choices=("mean", "first"), modes=TRAIN)
    head_dropout: float | None = opt(None, "fine-tune: dropout before the output layer; unset = hidden_dropout_prob.", parse=parsers.FLOAT, minimum=0.0, maximum=1.0, modes=TRAIN)
    emb_layer: int = opt(-1, "Geneformer's emb_layer for predict's embeddings and the deletion shift: -1 = output of the second-to-last layer, 0 = the last layer (kept with the trained model).", maximum=0, modes=TRAIN)
    emb_mode: str = opt("auto", "Cell embedding: cell = mean over genes, cls = the <cls> state (V2 dictionaries), auto = cls when there is a <cls> token, else cell (kept with the trained model).", choices=("auto", "cell", "cls"), modes=TRAIN)


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported on the first call (the modules import torch)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


@hookimpl
def register_config(register):
    register(
        PluginConfig(
            name="geneformer",
            description="Geneformer BERT on rank-value encoded single-cell expression: cellarium-ml's model or a published Geneformer checkpoint (V1/V2).",
            model_schema=GeneformerSchema,
            # no LR schedule in the engine: a constant 1e-4 (Geneformer's fine-tuning range; its
            # pre-training peaks at 1e-3 after warm-up), AdamW with weight decay 0.01 as cellarium
            training_defaults=dict(lr=1e-4, weightdecay=0.01, batchsize=16, blocksize=2048, optimizer="adamw", clipnorm=1.0),
            modes=("tokenize", "pre-train", "fine-tune", "predict", "interpret"),
            tokenizer=KIND,
            fixed_length=False,
            max_blocksize=1 << 16,  # genes read per cell: more than any transcriptome has
        )
    )


@hookimpl
def register_tokenizer(register):
    register(KIND, TokenizerSpec(fit=_lazy("tokenizer_hooks", "fit"), load=_lazy("tokenizer_hooks", "load"), encode=_lazy("tokenizer_hooks", "encode"), make_input=_lazy("tokenizer_hooks", "make_input"), records="cells"))


@hookimpl
def register_model(register):
    register(
        "geneformer",
        ModelSpec(
            build=_lazy("task_models", "build"),
            pretrain_loss=_lazy("pretraining", "pretrain_loss"),
            embed=_lazy("task_models", "embed"),
            load_pretrained=_lazy("task_models", "load_pretrained"),
            architecture=_lazy("task_models", "architecture"),
            pretrained_weights=_lazy("task_models", "pretrained_weights"),
            perturbation_scores=_lazy("deletion", "perturbation_scores"),
        ),
    )
