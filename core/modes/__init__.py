"""The modes a user runs (``biolm PLUGIN MODE``): one table, one module each.

Each mode module has ``execute(run) -> dict`` (the summary: ``metrics`` and ``lines`` to print)
and reads as one short story; the machinery they share lives beside this package in
:mod:`biolm.core` (``fold_training``, ``results``, ``ensemble``, ``perturb``, ``progress``).
No mode imports another mode.

This module is pure data (no imports): the CLI reads it to list modes without loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    """One mode.

    Attributes
    ----------
    name : the command name.
    summary : a few words for the plugin's mode list.
    help : one sentence for the mode's ``-h``.
    source : the :class:`biolm.core.schema.Config` attribute of the data source the mode reads.
    needs_task : ``--task regression|classification`` is required.
    module : the module that carries it out.
    """

    name: str
    summary: str
    help: str
    source: str
    needs_task: bool
    module: str


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("tokenize", "learn the tokenizer", "Learn the tokenizer on the tokenizing data source; writes OUTPUTPATH/tokenizer.json.", "tokenizing_source", False, "biolm.core.modes.tokenize"),
        Mode("pre-train", "masked-LM pre-training", "Pre-train the model (masked-LM) on the tokenizing data source.", "tokenizing_source", False, "biolm.core.modes.pretrain"),
        Mode("fine-tune", "train with splits / cross-validation", "Train for regression or classification, with splits and cross-validation.", "finetuning_source", True, "biolm.core.modes.finetune"),
        Mode("predict", "predict with a fine-tuned model", "Predict with a fine-tuned model (a fold folder or a cross-validation parent).", "inference_source", True, "biolm.core.modes.predict"),
        Mode("interpret", "leave-one-out scores", "Leave-one-out importance scores for every token of every sequence.", "inference_source", True, "biolm.core.modes.interpret"),
    )
}
MODE_NAMES: tuple[str, ...] = tuple(MODES)
TASKS = ("regression", "classification")
