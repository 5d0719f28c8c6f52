"""The ``psam`` plugin: PyProBound's biophysical binding model (PSAM convolution, position bias,
log-sum-exp over windows and strands) with a regression/classification head on the
log-affinity of one or more binding modes, fitted from scratch in PyProBound's stages.

The atomic vocabulary is projected onto the alphabet by each token's first letter
(case-insensitive, U = T), so ``A``/``a``/``aej`` all count as A; modifier channels are ignored.
After fine-tuning each fold also holds its learned motifs as JSON, MEME and logo plots, and the
fitted position bias as a plot.

Files: ``alphabet`` (letters, codes, vocabulary projection), ``psam`` (the PSAM's parameters),
``convolution`` (PSAM convolution with position bias, the binding mode), ``predictor`` (modes ->
head, the plugin's model), ``fit_schedule`` (the staged fit, with ``seeding``, ``head_fit`` and
``footprint``), ``fastloo`` (exact fast leave-one-out), ``pyprobound_weights`` (PyProBound's
weight names), ``export`` (JSON, MEME, logos, position bias).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from biolm.core.hookspecs import ConfigError, ModelSpec, PluginConfig, hookimpl, opt, parsers

TRAIN = {"fine-tune"}


@dataclass
class PSAMSchema:
    n_modes: int = opt(1, "Binding modes (one PSAM each) feeding the head.", minimum=1, modes=TRAIN)
    kernel_size: int = opt(8, "PSAM width (nucleotides).", minimum=1, modes=TRAIN)
    alphabet: str = opt("DNA", "Alphabet of the PSAM.", choices=("DNA", "RNA", "protein"), modes=TRAIN)
    score_reverse: bool = opt(True, "Also score the reverse complement (DNA/RNA) and take log-sum-exp over strands.", modes=TRAIN)
    pairwise_distance: int = opt(0, "Pairwise (dinucleotide) interactions up to this distance; 0 = mononucleotide only.", minimum=0, modes=TRAIN)
    seeds: list | None = opt(None, "Seed motifs in IUPAC, one per mode (e.g. [TGACTCA]); unset = found in the data (staged fitting) or a random start.", parse=parsers.TEXT_LIST, false_is_unset=True, modes=TRAIN)
    seed_scale: float = opt(1.0, "Strength of the seed motif's initial betas.", minimum=0.0, modes=TRAIN)
    normalize: bool = opt(False, "Normalise the PSAM betas (mean-centred per position).", modes=TRAIN)
    train_bias: bool = opt(False, "Train the PSAM's constant bias.", modes=TRAIN)
    train_posbias: bool = opt(False, "Train a position bias omega(x) per window.", modes=TRAIN)
    bias_mode: str = opt("channel", "Position bias per output channel, shared ('same'), or mirrored for the reverse strand.", choices=("channel", "same", "reverse"), modes=TRAIN)
    bias_bin: int = opt(1, "Windows per position-bias bin.", minimum=1, modes=TRAIN)
    length_specific_bias: bool = opt(False, "A separate position bias for each input length.", modes=TRAIN)
    one_hot: bool = opt(True, "Score by convolution on one-hot input (False: dense gather scoring).", modes=TRAIN)
    unknown: str = opt("mean", "All-zero rows inside a sequence (N, tokens outside the alphabet): 'mean' (1/4 per letter), 'zero' or 'pad'.", choices=("mean", "zero", "pad"), modes=TRAIN)
    train_hill: bool = opt(False, "Train a Hill coefficient of each mode.", modes=TRAIN)
    combine: str = opt("affinity", "Modes summed in affinity space, then the head ('affinity', PyProBound), or a linear head on each mode's log-affinity ('linear').", choices=("affinity", "linear"), modes=TRAIN)
    fitting: str = opt("staged", "'staged': PyProBound's procedure (modes one at a time, seeded from the data, full-batch L-BFGS per parameter group, head profiled, gauge fixed; settings lr/optimizer/batchsize unused); 'gradient': one loop of the settings optimizer over all parameters.", choices=("staged", "gradient"), modes=TRAIN)


NOT_ARGUMENTS = ("fitting",)  # schema keys that configure the fit, not the network


def _build(model_cfg: PSAMSchema, info):
    from .predictor import PSAMInput, PSAMPredictor

    vocab = list(info.tokenizer.vocab)
    if not vocab:
        raise ConfigError("tokenization.encoding", "psam needs the atomic tokenizer's vocabulary")
    args = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in NOT_ARGUMENTS}
    if args["seeds"] is not None and len(args["seeds"]) != model_cfg.n_modes:
        raise ConfigError("model.seeds", f"{len(args['seeds'])} seed(s) for {model_cfg.n_modes} mode(s)")
    if model_cfg.alphabet == "protein":
        args["score_reverse"] = False
    try:
        net = PSAMPredictor(info.blocksize, num_outputs=info.n_outputs, task="classification" if info.task == "classification" else "regression", vocab=vocab, **args)
    except ValueError as exc:
        raise ConfigError("model", str(exc)) from None
    return PSAMInput(net, len(vocab))


def _export(model, folddir):
    from .export import export_psams

    export_psams(model.net, folddir / "psams")


def _fit_schedule(model, model_cfg, info):
    from .fit_schedule import schedule

    return schedule(model, model_cfg, info)


def _penalty(model):
    from .fit_schedule import penalty

    return penalty(model)


@hookimpl
def register_config(register):
    register(
        PluginConfig(
            name="psam",
            description="PyProBound PSAM binding model: log-affinities of binding modes -> regression/classification.",
            model_schema=PSAMSchema,
            training_defaults=dict(lr=1e-2, weightdecay=0.0, batchsize=64, blocksize=256, optimizer="adam", clipnorm=None, nepochs=60),
            modes=("tokenize", "fine-tune", "predict", "interpret"),
            fixed_length=True,
            max_blocksize=1 << 20,
        )
    )


def _fast_loo(model, inp, n, positions, rows):
    """Exact single-position leave-one-out: only the windows over the changed row are rescored."""
    from .fastloo import fast_loo

    return fast_loo(model, inp, n, positions, rows)


@hookimpl
def register_model(register):
    register("psam", ModelSpec(build=_build, export=_export, fast_loo=_fast_loo, fit_schedule=_fit_schedule, penalty=_penalty))
