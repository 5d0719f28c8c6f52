"""Geneformer's gene dictionaries: find them, load them safely, check them.

A Geneformer release ships four pickled dicts per model generation (file names as in
``geneformer/__init__.py``):

=============================  =========================================  =============================================
role                           V2 (``geneformer/``)                       V1 (``geneformer/gene_dictionaries_30m/``)
=============================  =========================================  =============================================
token dictionary               ``token_dictionary_gc104M.pkl``            ``token_dictionary_gc30M.pkl``
gene median dictionary         ``gene_median_dictionary_gc104M.pkl``      ``gene_median_dictionary_gc30M.pkl``
Ensembl mapping dictionary     ``ensembl_mapping_dict_gc104M.pkl``        ``ensembl_mapping_dict_gc30M.pkl``
gene name -> Ensembl id        ``gene_name_id_dict_gc104M.pkl``           ``gene_name_id_dict_gc30M.pkl``
=============================  =========================================  =============================================

- token dictionary: Ensembl id -> token id, plus the special tokens ``<pad>`` (0), ``<mask>``
  (1) and, in V2, ``<cls>`` and ``<eos>``.
- median dictionary: Ensembl id -> non-zero median of the gene's normalised expression over the
  pre-training corpus (may hold genes outside the vocabulary).
- mapping dictionary: (upper-case) Ensembl id -> the Ensembl id it is collapsed onto.
- name dictionary: gene symbol -> Ensembl id (only used to name genes, e.g. for deletion).

Whether a model uses ``<cls>``/``<eos>`` is decided as Geneformer's perturber decides it: both
tokens are in the token dictionary. All pickles go through core's restricted unpickler
(:func:`biolm.core.hookspecs.load_plain_pickle`): a pickle that references code is refused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from biolm.core.hookspecs import DataError, load_plain_pickle

__all__ = [
    "VERSION_SUFFIX",
    "SPECIAL_TOKENS",
    "TokenIds",
    "GeneformerDictionaries",
    "dictionary_paths",
    "load_dictionaries",
]

#: model generation -> file-name suffix of its dictionaries
VERSION_SUFFIX = {"V1": "gc30M", "V2": "gc104M"}
#: special token names Geneformer uses
SPECIAL_TOKENS = ("<pad>", "<mask>", "<cls>", "<eos>")
_STEMS = {
    "token": "token_dictionary",
    "median": "gene_median_dictionary",
    "mapping": "ensembl_mapping_dict",
    "names": "gene_name_id_dict",
}
_V1_SUBFOLDER = "gene_dictionaries_30m"


class TokenIds:
    """Special token ids and vocabulary of a Geneformer token dictionary (``self.token_dict``:
    name -> id); shared by the loaded dictionaries and the tokenizer built from them."""

    token_dict: dict[str, int]

    @property
    def pad_token_id(self) -> int:
        return self.token_dict["<pad>"]

    @property
    def mask_token_id(self) -> int | None:
        return self.token_dict.get("<mask>")

    @property
    def special_tokens(self) -> bool:
        """``<cls>`` and ``<eos>`` are both in the vocabulary: they frame every cell (Geneformer V2)."""
        return "<cls>" in self.token_dict and "<eos>" in self.token_dict

    @property
    def cls_token_id(self) -> int | None:
        return self.token_dict["<cls>"] if self.special_tokens else None

    @property
    def eos_token_id(self) -> int | None:
        return self.token_dict["<eos>"] if self.special_tokens else None

    @property
    def vocab_size(self) -> int:
        """``max token id + 1`` (the model's embedding rows needed)."""
        return max(self.token_dict.values()) + 1

    def vocabulary(self) -> list[str]:
        """Names indexed by token id (``vocabulary()[token] == name``; unused ids are ``""``)."""
        out = [""] * self.vocab_size
        for name, tok in self.token_dict.items():
            out[tok] = name
        return out


@dataclass
class GeneformerDictionaries(TokenIds):
    """The loaded dictionaries of one Geneformer generation.

    Attributes
    ----------
    token_dict : dict[str, int]
        Ensembl id (and special token) -> token id.
    median_dict : dict[str, float]
        Ensembl id -> non-zero median (finite, > 0 for every vocabulary gene that has one).
    mapping_dict : dict[str, str] | None
        Ensembl id -> collapsed Ensembl id, or None (identity on the vocabulary).
    name_dict : dict[str, str] | None
        Gene symbol -> Ensembl id, or None.
    version : str
        ``"V1"``, ``"V2"`` or ``"custom"`` (explicit files).
    paths : dict[str, str]
        Role -> file read.
    """

    token_dict: dict[str, int]
    median_dict: dict[str, float]
    mapping_dict: dict[str, str] | None = None
    name_dict: dict[str, str] | None = None
    version: str = "custom"
    paths: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = self.paths.get("token", "token dictionary")
        if not isinstance(self.token_dict, dict) or not self.token_dict:
            raise DataError(where, "the token dictionary must be a non-empty dict")
        bad = [k for k, v in self.token_dict.items() if not isinstance(k, str) or type(v) is not int or v < 0]
        if bad:
            raise DataError(where, f"token dictionary entry {bad[0]!r} is not 'name -> non-negative int'")
        if len(set(self.token_dict.values())) != len(self.token_dict):
            raise DataError(where, "token ids repeat in the token dictionary")
        if "<pad>" not in self.token_dict:
            raise DataError(where, "the token dictionary has no '<pad>' token")
        where = self.paths.get("median", "median dictionary")
        if not isinstance(self.median_dict, dict):
            raise DataError(where, "the median dictionary must be a dict")
        for k, v in self.median_dict.items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
                raise DataError(where, f"median dictionary entry {k!r}: {v!r} is not 'name -> number'")
        for role, d in (("mapping", self.mapping_dict), ("names", self.name_dict)):
            if d is not None and (
                not isinstance(d, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in d.items())
            ):
                raise DataError(self.paths.get(role, f"{role} dictionary"), f"the {role} dictionary must map strings to strings")

    def gene_median(self, ensembl_id: str) -> float:
        """The median of a vocabulary gene.

        Raises
        ------
        DataError
            If the median dictionary lacks it, or it is not finite and > 0 (normalising by it
            would give inf/NaN ranks).
        """
        where = self.paths.get("median", "median dictionary")
        if ensembl_id not in self.median_dict:
            raise DataError(where, f"no median for vocabulary gene {ensembl_id}")
        value = float(self.median_dict[ensembl_id])
        if not (math.isfinite(value) and value > 0):
            raise DataError(where, f"median of {ensembl_id} is {value!r}; it must be finite and > 0")
        return value


def dictionary_paths(folder: str | os.PathLike, version: str) -> dict[str, str]:
    """Paths of one generation's dictionaries in a folder laid out like Geneformer's package.

    V2 files are looked for in ``folder``; V1 files in ``folder/gene_dictionaries_30m`` and
    then ``folder`` itself. The name dictionary is optional.

    Raises
    ------
    DataError
        If ``version`` is unknown or a required file is missing.
    """
    folder = str(folder)
    if version not in VERSION_SUFFIX:
        raise DataError(folder, f"unknown Geneformer version {version!r} (use V1 or V2)")
    suffix = VERSION_SUFFIX[version]
    dirs = [os.path.join(folder, _V1_SUBFOLDER), folder] if version == "V1" else [folder]
    for d in dirs:
        paths = {role: os.path.join(d, f"{stem}_{suffix}.pkl") for role, stem in _STEMS.items()}
        if os.path.isfile(paths["token"]):
            missing = [os.path.basename(p) for r, p in paths.items() if r in ("median", "mapping") and not os.path.isfile(p)]
            if missing:
                raise DataError(d, f"Geneformer {version} dictionaries incomplete: missing {', '.join(missing)}")
            if not os.path.isfile(paths["names"]):
                del paths["names"]
            return paths
    where = " or ".join(os.path.join(d, f"token_dictionary_{suffix}.pkl") for d in dirs)
    raise DataError(folder, f"no Geneformer {version} dictionaries ({where} not found)")


def load_dictionaries(
    folder: str | os.PathLike, version: str | None = None, vocab_size: int | None = None
) -> GeneformerDictionaries:
    """Load one generation's dictionaries from a folder.

    Parameters
    ----------
    folder
        A folder laid out like Geneformer's ``geneformer/`` package directory (V2 files at the
        top, V1 files in ``gene_dictionaries_30m/``), or holding one generation's files.
    version
        ``"V1"`` or ``"V2"``. Default: the only generation present; when both are, the one
        whose token dictionary fits ``vocab_size`` exactly (the checkpoint's ``config.json``).
    vocab_size
        The model's vocabulary size, used to choose between generations.

    Raises
    ------
    DataError
        Files missing, the choice ambiguous, or a dictionary malformed.
    UnsafePickleError
        A pickle references code (refused, nothing executed).
    """
    folder = str(folder)
    if version is None:
        found = {}
        for v in VERSION_SUFFIX:
            try:
                found[v] = dictionary_paths(folder, v)
            except DataError:
                continue
        if not found:
            raise DataError(folder, "no Geneformer dictionaries (token_dictionary_gc104M.pkl or gene_dictionaries_30m/token_dictionary_gc30M.pkl)")
        if len(found) > 1:
            if vocab_size is None:
                raise DataError(folder, "holds both V1 and V2 dictionaries; set the version")
            fits = [v for v, p in found.items() if _token_vocab_size(p["token"]) == vocab_size]
            if len(fits) != 1:
                raise DataError(folder, f"cannot tell V1 from V2 by vocab_size {vocab_size}; set the version")
            version = fits[0]
        else:
            version = next(iter(found))
    paths = dictionary_paths(folder, version)
    loaded = {role: load_plain_pickle(p) for role, p in paths.items()}
    return GeneformerDictionaries(
        token_dict=loaded["token"],
        median_dict=loaded["median"],
        mapping_dict=loaded["mapping"],
        name_dict=loaded.get("names"),
        version=version,
        paths=paths,
    )


def _token_vocab_size(path: str) -> int:
    d = load_plain_pickle(path)
    if not isinstance(d, dict) or not d or not all(type(v) is int for v in d.values()):
        raise DataError(path, "the token dictionary must map names to ints")
    return max(d.values()) + 1
