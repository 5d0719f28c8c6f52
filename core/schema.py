"""The one configuration schema: YAML keys, CLI options and ``-h`` help all come from here.

Each YAML section is a dataclass; each key is a field declared with :func:`opt`, whose metadata
holds the help text, the modes that read the key, allowed choices and the "not set" rules.
Plugins declare their ``model:`` section the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from . import parsers as P
from .modes import MODE_NAMES, MODES

ALL_MODES = frozenset(MODE_NAMES)
TRAIN_MODES = frozenset({"pre-train", "fine-tune"})
INFER_MODES = frozenset({"predict", "interpret"})
DATA_MODES = frozenset({"pre-train", "fine-tune", "predict", "interpret"})


def opt(
    default: Any,
    help: str,
    *,
    parse: P.Parser | None = None,
    modes: frozenset[str] | set[str] = ALL_MODES,
    choices: tuple | None = None,
    false_is_unset: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    aliases: tuple[str, ...] = (),
    flag: str | None = None,
) -> Any:
    """Declare one configuration key.

    Parameters
    ----------
    default : the core default (``None`` = not set).
    help : one sentence for ``-h`` and the README's config reference.
    parse : how a value is read (a :class:`biolm.core.parsers.Parser`, e.g. ``parsers.INT_LIST``);
        omitted: a choice parser when ``choices`` is given, else from the default's type.
    modes : the modes that read the key (and so show it as a CLI option).
    choices : the allowed values (case-insensitive).
    false_is_unset : ``False`` means "not set" (the reference docs use it for "off").
    minimum, maximum : bounds for numbers.
    aliases : other names accepted in YAML (e.g. names the old tool used).
    flag : CLI option name when it differs from ``--KEY``.
    """
    if parse is None:
        parse = P.choice(*choices) if choices else P.for_default(default)
    meta = dict(
        help=help,
        parse=parse,
        modes=frozenset(modes),
        choices=parse.choices or None,
        false_is_unset=false_is_unset,
        minimum=minimum,
        maximum=maximum,
        aliases=aliases,
        flag=flag,
    )
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, yaml_name: str, help: str, modes: frozenset[str] = ALL_MODES) -> Any:
    """A nested section field: its YAML name may contain spaces (``fine-tuning data source``)."""
    return field(default_factory=cls, metadata=dict(section=True, yaml=yaml_name, help=help, modes=modes))


# --------------------------------------------------------------------------- data sources


@dataclass
class DataSource:
    filepath: str | None = opt(None, "Data file: delimited text (optionally .gz), or an AnnData .h5ad for expression plugins.", parse=P.PATH)
    stripheader: bool = opt(False, "The file's first line is a header to skip.")
    columnsep: str = opt("\t", "Column separator; any string (e.g. ',', '|', '\\t', '::').")
    tokensep: str | None = opt(",", "Separator between tokens in the sequence column; empty/False/None = one token per character.", parse=P.TEXT_OR_FALSE, false_is_unset=True)
    specifiersep: str | None = opt(None, "Separator of per-token float modifiers (e.g. '#' for 'a#2.5#0.2'); unset = none.", parse=P.TEXT_OR_FALSE, false_is_unset=True)
    idpos: int = opt(1, "1-based column of the sequence identifier.", minimum=1)
    seqpos: int = opt(2, "1-based column of the sequence.", minimum=1)
    on_bad_row: str = opt("error", "What to do with a malformed row: 'error' stops with file and line, 'skip' skips and counts it.", choices=("error", "skip"))
    layer: str | None = opt(None, "For .h5ad input: the matrix to read; unset = X, 'raw' = raw/X, another name = layers/<name> (raw counts).", parse=P.TEXT_OR_FALSE, false_is_unset=True)
    genecolumn: str | None = opt(None, "For .h5ad input: the var column holding the gene ids; unset = the var index.", parse=P.TEXT_OR_FALSE, false_is_unset=True)
    idfile: str | None = opt(None, "For one .npy holding every sample: a text file with one sample id per line, in row order (a .npz brings its own 'ids').", parse=P.PATH)


@dataclass
class LabelledSource(DataSource):
    labelpos: int | None = opt(None, "1-based column of the label (regression value or class); unset = no labels.", parse=P.COLUMN, false_is_unset=True)
    labelcolumn: str | None = opt(None, "For .h5ad input: the obs column holding the label.", parse=P.TEXT_OR_FALSE, false_is_unset=True)
    labelfile: str | None = opt(None, "For .npy array input: a delimited file of id (idpos), label (labelpos), split (splitpos) and weight (weightpos) columns, keyed by sample id.", parse=P.PATH)


@dataclass
class TokenizingSource(DataSource):
    pass


@dataclass
class FineTuningSource(LabelledSource):
    labelpos: int | None = opt(3, "1-based column of the label (regression value or class).", parse=P.COLUMN, false_is_unset=True)
    weightpos: int | None = opt(None, "1-based column of per-sample loss weights for regression: numbers, or quality labels mapped by 'qualityweights'.", parse=P.COLUMN, false_is_unset=True)
    weightcolumn: str | None = opt(None, "For .h5ad input: the obs column holding per-cell loss weights (as weightpos).", parse=P.TEXT_OR_FALSE, false_is_unset=True)
    splitpos: int | None = opt(None, "1-based column of a split identifier; overrules splitratio. Needed for devsplits/testsplits.", parse=P.COLUMN, false_is_unset=True)
    splitcolumn: str | None = opt(None, "For .h5ad input: the obs column holding split identifiers.", parse=P.TEXT_OR_FALSE, false_is_unset=True)
    crossvalidation: Any = opt(False, "False = no cross-validation; an integer k = k folds on random splits (splitratio); True = folds from the lists of lists in devsplits/testsplits.", parse=P.FOLDS)
    cvscheme: str = opt("shuffle", "Random cross-validation: 'shuffle' reshuffles per fold (the reference behaviour), 'kfold' makes disjoint folds so every sample is validated (and tested) once.", choices=("shuffle", "kfold"))
    splitratio: tuple | None = opt((85, 15), "Train/validation(/test) percentages summing to 100: '85,15', '70,20,10', [85, 15] or '70/20/10'.", parse=P.SPLITRATIO, false_is_unset=True)
    devsplits: list | None = opt(None, "Split ids for validation: a list (no CV) or a list of lists (CV with crossvalidation: True).", parse=P.SPLITS, false_is_unset=True)
    testsplits: list | None = opt(None, "Split ids for testing: a list (no CV) or a list of lists zipped with devsplits (CV).", parse=P.SPLITS, false_is_unset=True)


@dataclass
class VariantsSource:
    """The variants table read by ``interpret`` with ``handletokens: variants``; ref and alt are
    split like the sequences of the inference data source (its tokensep and specifiersep)."""

    filepath: str | None = opt(None, "Variants table for handletokens: variants (delimited text, optionally .gz): per row a sequence id, a 1-based position, ref and alt tokens ('-', '.' or empty = none).", parse=P.PATH, modes={"interpret"}, flag="variants")
    stripheader: bool = opt(False, "The variants table's first line is a header to skip.", modes={"interpret"}, flag="variants-stripheader")
    columnsep: str = opt("\t", "Column separator of the variants table.", modes={"interpret"}, flag="variants-columnsep")
    idpos: int | None = opt(None, "1-based column of a variant id; unset = '<sequence>:<position>:<ref>><alt>'.", parse=P.COLUMN, false_is_unset=True, modes={"interpret"}, flag="variants-idpos")
    sequencepos: int = opt(1, "1-based column of the id of the sequence (of the inference data source) the variant is in.", minimum=1, modes={"interpret"}, flag="variants-sequencepos")
    positionpos: int = opt(2, "1-based column of the variant's 1-based position in the whole sequence (before any blocksize cut).", minimum=1, modes={"interpret"}, flag="variants-positionpos")
    refpos: int = opt(3, "1-based column of the reference token(s); they must match the sequence.", minimum=1, modes={"interpret"}, flag="variants-refpos")
    altpos: int = opt(4, "1-based column of the alternative token(s) that replace the reference.", minimum=1, modes={"interpret"}, flag="variants-altpos")
    on_bad_row: str = opt("error", "A malformed variant row or a ref that does not match its sequence: 'error' stops naming the variant, 'skip' skips and counts it.", choices=("error", "skip"), modes={"interpret"}, flag="variants-on-bad-row")


@dataclass
class InferenceSource(LabelledSource):
    splitpos: int | None = opt(None, "1-based column of a split identifier (used with inferenceonsplits).", parse=P.COLUMN, false_is_unset=True)
    splitcolumn: str | None = opt(None, "For .h5ad input: the obs column holding split identifiers.", parse=P.TEXT_OR_FALSE, false_is_unset=True)
    inferenceonsplits: list | None = opt(None, "Only use rows whose split id is in this list.", parse=P.SPLITS, false_is_unset=True)
    variants: VariantsSource = section(VariantsSource, "variants", "Variant effects (interpret with handletokens: variants).", modes=frozenset({"interpret"}))


# --------------------------------------------------------------------------- other sections


@dataclass
class Tokenization:
    samplesize: int | None = opt(None, "Learn the tokenizer on a seeded random subsample of this many rows; unset = all rows.", parse=P.INT, minimum=1, modes={"tokenize"})
    encoding: str = opt("atomic", "Tokenizer kind; 'atomic' = one-hot of distinct tokens (+ modifier channels), 'expression' = .h5ad cells, 'array' = .npy arrays, 'auto' = chosen from the data file (plugins reading several kinds). Plugins may need another kind (geneformer: 'generank').", parse=P.TEXT)
    lefttailing: bool = opt(True, "Sequences longer than blocksize: True keeps the right end (cuts from the left), False keeps the left end.", modes=DATA_MODES)


@dataclass
class InferenceModel:
    pretrainedmodel: str | None = opt(None, "Fine-tuned model to use: a fold folder (OUTPUTPATH/fine-tune/0) or a cross-validation parent (OUTPUTPATH/fine-tune: every fold runs).", parse=P.PATH, modes=INFER_MODES)
    ensembleweighting: str = opt("uniform", "How fold predictions of a CV parent are combined: 'uniform' mean or 'loss' (weights proportional to 1/validation loss).", choices=("uniform", "loss"), modes=INFER_MODES)
    outputdir: str | None = opt(None, "Name of the results folder under outputpath; default: the mode name (predict, interpret).", parse=P.TEXT, modes=INFER_MODES)
    saveembeddings: bool = opt(False, "predict: also write per-sample embeddings to embeddings.h5 (plugins that have them).", modes={"predict"})


@dataclass
class DataPreprocessing:
    centertoken: str | None = opt(None, "Centre over-long sequences on the first token whose base letter is this; False/unset = off.", parse=P.TEXT_OR_FALSE, false_is_unset=True, modes=DATA_MODES)


@dataclass
class Environment:
    ngpus: int | None = opt(None, "Processes/GPUs to use; unset = all visible GPUs, else 1 CPU process. >1 runs through torchrun: training data-parallel (DistributedDataParallel), predict/interpret each on a share of the input.", parse=P.INT, minimum=0, modes=DATA_MODES)
    device: str = opt("auto", "'auto' (CUDA if available), 'cpu' or 'cuda'.", choices=("auto", "cpu", "cuda"), modes=DATA_MODES)
    precision: str = opt("auto", "'auto' = bf16 autocast on CUDA, float32 on CPU; 'fp32' or 'bf16' to force.", choices=("auto", "fp32", "bf16"), modes=DATA_MODES)
    numworkers: int = opt(0, "DataLoader worker processes.", minimum=0, modes=DATA_MODES)


@dataclass
class Training:
    batchsize: int = opt(32, "Samples per batch (per process).", minimum=1, modes=DATA_MODES)
    blocksize: int = opt(1024, "Maximum tokens per sequence (longer ones are cut, see lefttailing/centertoken).", minimum=1, modes=DATA_MODES)
    scaling: str = opt("none", "Regression label scaling fitted on the training split: log, minmax, standard or none.", choices=("log", "minmax", "standard", "none"), modes=DATA_MODES)
    nepochs: int = opt(50, "Maximum training epochs.", minimum=1, modes=TRAIN_MODES, aliases=("epochs", "num_train_epochs"))
    patience: int = opt(5, "Early stopping: epochs without a better validation loss before stopping.", minimum=1, modes=TRAIN_MODES)
    lr: float = opt(1e-3, "Learning rate.", minimum=0.0, modes=TRAIN_MODES, aliases=("learningrate", "learning_rate"))
    weightdecay: float = opt(0.01, "Decoupled weight decay (AdamW) or L2 (Adam).", minimum=0.0, modes=TRAIN_MODES, aliases=("weight_decay",))
    optimizer: str = opt("adamw", "Optimizer: adamw or adam.", choices=("adamw", "adam"), modes=TRAIN_MODES)
    beta1: float = opt(0.9, "Adam beta1.", minimum=0.0, maximum=1.0, modes=TRAIN_MODES)
    beta2: float = opt(0.999, "Adam beta2.", minimum=0.0, maximum=1.0, modes=TRAIN_MODES)
    gradacc: int = opt(1, "Gradient accumulation steps.", minimum=1, modes=TRAIN_MODES, aliases=("gradient_accumulation_steps",))
    clipnorm: float | None = opt(1.0, "Clip the gradient norm to this value; unset/False = no clipping.", parse=P.FLOAT, false_is_unset=True, minimum=0.0, modes=TRAIN_MODES)
    resume: bool = opt(False, "Continue each fold from its last checkpoint.", modes=TRAIN_MODES)
    fromscratch: bool = opt(False, "fine-tune: ignore pre-trained weights and start from random ones.", modes={"fine-tune"})
    pretrainedweights: str | None = opt(None, "fine-tune: pre-trained weights to start from (a pre-train output folder, or a weights file the plugin reads); unset = OUTPUTPATH/pre-train when it holds weights.", parse=P.PATH, false_is_unset=True, modes={"fine-tune"})
    qualityweights: dict = opt({"STRONG": 1.0, "GOOD": 0.75, "WEAK": 0.5, "POOR": 0.25}, "Loss weights for quality labels in the weightpos column.", parse=P.WEIGHTS_TABLE, modes={"fine-tune"})
    classweights: bool = opt(True, "Classification: weight the loss by inverse class frequency of the training split.", modes={"fine-tune"})
    mlmprobability: float = opt(0.15, "pre-train: fraction of tokens masked.", minimum=0.0, maximum=1.0, modes={"pre-train"})


@dataclass
class Settings:
    data_preprocessing: DataPreprocessing = section(DataPreprocessing, "data pre-processing", "Sequence pre-processing.")
    environment: Environment = section(Environment, "environment", "Hardware and parallelism.")
    training: Training = section(Training, "training", "Training and batching.")


@dataclass
class LooScores:
    handletokens: str = opt("remove", "How a token is left out: remove (deleted, sequence shifts), mask (one-hot zeroed / MASK token), replace (each replacement in replacementdict), saturate (every alternative of the same kind at every position), variants (the variants table of the inference data source).", choices=("remove", "mask", "replace", "activate", "saturate", "variants"), modes={"interpret"})
    replacementdict: dict | None = opt(None, "handletokens replace: token -> list of replacements, a mapping or its JSON string; saturate: overrides the alternatives of the tokens it names.", parse=P.REPLACEMENTS, modes={"interpret"})
    replacespecifier: bool = opt(True, "handletokens replace: a modified token is also replaced by its unmodified form (modifier channels zeroed).", modes={"interpret"})
    plotsequences: int = opt(5, "Draw per-position importance plots for this many sequences.", minimum=0, modes={"interpret"})
    maxpositions: int = opt(4096, "Perturbed inputs evaluated per chunk (bounds memory).", minimum=1, modes={"interpret"})
    positionnames: str | None = opt(None, "For .npy array input: a text file with one name per position of the sequence axis (e.g. SNP ids) for the token column; unset = the position index.", parse=P.PATH, modes={"interpret"})
    writecsv: bool = opt(True, "saturate: also write one CSV row per position x alternative (large scans: False; ism.h5 holds the same scores).", modes={"interpret"})


@dataclass
class Config:
    outputpath: str | None = opt(None, "Experiment folder; default: the data file's name without extension.", parse=P.PATH)
    seed: int = opt(42, "Random seed for splits, initialisation, shuffling and sampling.", minimum=0, maximum=2**32 - 1)
    tokenizing_source: TokenizingSource = section(TokenizingSource, "tokenizing and pre-training data source", "Data for learning the tokenizer and for pre-training.", modes=frozenset({"tokenize", "pre-train"}))
    finetuning_source: FineTuningSource = section(FineTuningSource, "fine-tuning data source", "Labelled data for fine-tuning.", modes=frozenset({"fine-tune"}))
    inference_source: InferenceSource = section(InferenceSource, "inference data source", "Data for predict and interpret.", modes=INFER_MODES)
    tokenization: Tokenization = section(Tokenization, "tokenization", "Tokenizer settings.")
    inference_model: InferenceModel = section(InferenceModel, "inference model", "Which trained model to use.")
    settings: Settings = section(Settings, "settings", "Pre-processing, environment and training.")
    looscores: LooScores = section(LooScores, "looscores", "Leave-one-out interpretation.", modes=frozenset({"interpret"}))
    # the plugin's keys say which modes read them (training keys: pre-train, fine-tune; a key the
    # tokenizer reads, such as geneformer's dictionaries, also tokenize)
    model: Any = field(default=None, metadata=dict(section=True, yaml="model", help="Plugin model hyperparameters.", modes=ALL_MODES))


SOURCE_FOR_MODE = {name: m.source for name, m in MODES.items()}


def yaml_name(f: dataclasses.Field) -> str:
    return f.metadata.get("yaml", f.name)


def is_section(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("section"))


def section_of(source: Any) -> str:
    """The YAML name of the data-source section a source object came from (for messages)."""
    for f in dataclasses.fields(Config):
        if is_section(f) and f.name.endswith("_source") and type(source) is type(f.default_factory()):  # type: ignore[misc]
            return yaml_name(f)
    return "data source"


def section_title(attr: str) -> str:
    """The YAML name of a top-level section attribute (``finetuning_source`` -> ``fine-tuning data source``)."""
    return yaml_name(next(f for f in dataclasses.fields(Config) if f.name == attr))


@dataclass(frozen=True)
class KeySpec:
    """One leaf key, with where it lives."""

    path: tuple[str, ...]  # attribute path, e.g. ("settings", "training", "batchsize")
    yaml_path: tuple[str, ...]  # YAML path, e.g. ("settings", "training", "batchsize")
    field: dataclasses.Field
    modes: frozenset[str]

    @property
    def key(self) -> str:
        return self.path[-1]

    @property
    def dotted(self) -> str:
        return ".".join(self.yaml_path)

    @property
    def meta(self) -> dict:
        return dict(self.field.metadata)

    @property
    def section_title(self) -> str:
        return " / ".join(self.yaml_path[:-1]) or "general"


def iter_keys(cls: type, path: tuple = (), yaml_path: tuple = (), modes: frozenset = ALL_MODES, model_schema: type | None = None):
    """Yield a :class:`KeySpec` for every leaf key of a section dataclass (depth first)."""
    for f in dataclasses.fields(cls):
        fmodes = modes & f.metadata.get("modes", ALL_MODES)
        if is_section(f):
            sub = model_schema if f.name == "model" else f.default_factory()  # type: ignore[misc]
            if sub is None:
                continue
            sub_cls = sub if isinstance(sub, type) else type(sub)
            yield from iter_keys(sub_cls, path + (f.name,), yaml_path + (yaml_name(f),), fmodes)
        else:
            yield KeySpec(path + (f.name,), yaml_path + (yaml_name(f),), f, fmodes)


def keys_for_mode(mode: str, model_schema: type | None) -> list[KeySpec]:
    """The keys a mode reads: its own data-source section only, plus the shared sections."""
    own = SOURCE_FOR_MODE[mode]
    out = []
    for k in iter_keys(Config, model_schema=model_schema):
        if k.path[0].endswith("_source") and k.path[0] != own:
            continue
        if mode in k.modes:
            out.append(k)
    return out
