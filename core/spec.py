"""What the core tells a plugin's model builder about the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelInfo:
    """Facts a model needs to build itself.

    Attributes
    ----------
    task : ``"regression"``, ``"classification"`` or ``"pre-train"``.
    n_outputs : regression targets (1) or number of classes.
    in_channels : channels of the model input (one-hot vocabulary + modifier channels).
    blocksize : maximum (or, for fixed-length models, exact) tokens per sequence.
    tokenizer : the fitted tokenizer object.
    extra : plugin-specific facts (e.g. vocabulary size for token models).
    """

    task: str
    n_outputs: int
    in_channels: int
    blocksize: int
    tokenizer: Any = None
    extra: dict = field(default_factory=dict)
