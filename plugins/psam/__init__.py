"""The ``psam`` plugin: PyProBound's biophysical binding model (PSAM convolution, position bias,
log-sum-exp over windows and strands) with a regression/classification head on the
log-affinities of one or more binding modes.

The atomic vocabulary is projected onto the alphabet by each token's first letter
(case-insensitive, U = T), so ``A``/``a``/``aej`` all count as A; modifier channels are ignored.
After fine-tuning each fold also holds its learned motifs as JSON, MEME and logo plots.
"""

from __future__ import annotations

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
    seeds: list | None = opt(None, "Seed motifs in IUPAC, one per mode (e.g. [TGACTCA]); unset = random start.", parse=parsers.TEXT_LIST, false_is_unset=True, modes=TRAIN)
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


def _build(model_cfg: PSAMSchema, info):
    import torch

    from .predictor import PSAMPredictor

    vocab = list(info.tokenizer.vocab)
    if not vocab:
        raise ConfigError("tokenization.encoding", "psam needs the atomic tokenizer's vocabulary")
    seeds = model_cfg.seeds
    if seeds is not None and len(seeds) != model_cfg.n_modes:
        raise ConfigError("model.seeds", f"{len(seeds)} seed(s) for {model_cfg.n_modes} mode(s)")
    try:
        net = PSAMPredictor(
            info.blocksize, num_outputs=info.n_outputs, task="classification" if info.task == "classification" else "regression",
            n_modes=model_cfg.n_modes, kernel_size=model_cfg.kernel_size, alphabet=model_cfg.alphabet,
            pairwise_distance=model_cfg.pairwise_distance, score_reverse=model_cfg.score_reverse if model_cfg.alphabet != "protein" else False,
            seeds=seeds, seed_scale=model_cfg.seed_scale, normalize=model_cfg.normalize, train_bias=model_cfg.train_bias,
            train_posbias=model_cfg.train_posbias, bias_mode=model_cfg.bias_mode, bias_bin=model_cfg.bias_bin,
            length_specific_bias=model_cfg.length_specific_bias, one_hot=model_cfg.one_hot, unknown=model_cfg.unknown,
            train_hill=model_cfg.train_hill, vocab=vocab,
        )
    except ValueError as exc:
        raise ConfigError("model", str(exc)) from None
    n_vocab = len(vocab)

    class PSAMInput(torch.nn.Module):
        """Vocabulary channels only (modifiers are not part of a PSAM) + real lengths."""

        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, batch):
            return self.net(batch["x"][..., :n_vocab], batch["lengths"])

    return PSAMInput()


def _export(model, folddir):
    from .export import export_psams

    export_psams(model.net, folddir / "psams")


@hookimpl
def register_config(register):
    register(
        PluginConfig(
            name="psam",
            description="PyProBound PSAM binding model: log-affinities of binding modes -> regression/classification.",
            model_schema=PSAMSchema,
            training_defaults=dict(lr=1e-2, weightdecay=0.0, batchsize=64, blocksize=256, optimizer="adam", clipnorm=None),
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
    register("psam", ModelSpec(build=_build, export=_export, fast_loo=_fast_loo))
