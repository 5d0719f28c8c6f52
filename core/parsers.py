"""Value parsers for configuration keys: one object per value type, given to ``opt(parse=...)``.

A :class:`Parser` turns a YAML or command-line value into the config value, or raises a
:class:`ConfigError` naming the key, the value and what is allowed. It also knows how the type is
named in ``-h`` and the README, and which annotation the CLI option gets. "Not set" values never
reach a parser (see :func:`is_unset`).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from .errors import ConfigError

UNSET_WORDS = {"none", "null", "~"}


def is_unset(value: Any, false_is_unset: bool) -> bool:
    """``None``, ``""``, the words none/null/~ (any case), and ``False`` where the key allows it.

    Whitespace is a value (a tab or a space is a separator), never "not set"."""
    if value is None:
        return True
    if isinstance(value, str) and (value == "" or value.strip().lower() in UNSET_WORDS):
        return True
    return value is False and false_is_unset


def from_text(value: Any) -> Any:
    """Command-line strings and quoted YAML strings of structured keys are read as YAML."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


@dataclass(frozen=True)
class Parser:
    """How one value type is read.

    Attributes
    ----------
    name : the type as shown in ``-h`` and the README's configuration reference.
    fn : ``fn(value, where) -> value``; ``where`` is the dotted key for messages.
    cli : the CLI option's type: ``bool`` makes a ``--key/--no-key`` flag; ``int``/``float``
        are checked by the CLI; anything else is passed as text.
    structured : a text value (CLI, or quoted in YAML) is read as YAML first (lists, mappings).
    choices : the allowed values, for choice parsers.
    """

    name: str
    fn: Callable[[Any, str], Any]
    cli: type = str
    structured: bool = False
    choices: tuple = field(default=())

    def __call__(self, value: Any, where: str) -> Any:
        return self.fn(value, where)


# ---------------------------------------------------------------------------- scalars


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(where, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ConfigError(where, f"expected an integer, got {value!r}")


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(where, f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:  # PyYAML reads 1e-4 (no dot) as a string
            return float(value.strip())
        except ValueError:
            pass
    raise ConfigError(where, f"expected a number, got {value!r}")


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("true", "yes", "on", "1"):
            return True
        if v in ("false", "no", "off", "0"):
            return False
    raise ConfigError(where, f"expected true or false, got {value!r}")


def _text(value: Any, where: str) -> str:
    if isinstance(value, (list, dict)) or value is True:
        raise ConfigError(where, f"expected a text value, got {value!r}")
    return str(value)


INT = Parser("integer", _int, cli=int)
FLOAT = Parser("number", _float, cli=float)
BOOL = Parser("true/false", _bool, cli=bool)
TEXT = Parser("text", _text)
PATH = Parser("path", _text)
TEXT_OR_FALSE = Parser("text or false", _text)


def choice(*options: str) -> Parser:
    """One of ``options`` (case-insensitive; a near miss gets a did-you-mean)."""
    lowered = {c.lower(): c for c in options}

    def fn(value: Any, where: str) -> str:
        text = str(value).strip()
        if text.lower() not in lowered:
            hint = difflib.get_close_matches(text.lower(), list(lowered), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(where, f"expected one of {', '.join(options)}, got {value!r}{extra}")
        return lowered[text.lower()]

    return Parser("one of", fn, choices=tuple(options))


def _column(value: Any, where: str) -> int:
    out = 1 if value is True else _int(value, where)
    if out < 1:
        raise ConfigError(where, f"column positions are 1-based, got {value!r}")
    return out


def _folds(value: Any, where: str) -> bool | int:
    if isinstance(value, bool):
        return value
    out = _int(value, where)
    if out == 0:
        return False
    if out == 1:
        raise ConfigError(where, "cross-validation needs at least 2 folds; use False to switch it off")
    if out < 0:
        raise ConfigError(where, f"expected False, True or a number of folds >= 2, got {value!r}")
    return out


COLUMN = Parser("column (1-based) or false", _column, structured=True)
FOLDS = Parser("false, true or integer", _folds, structured=True)


# ---------------------------------------------------------------------------- lists and mappings


def parse_splitratio(value: Any, where: str) -> tuple[int, ...]:
    """``85,15`` | ``"85,15"`` | ``[85, 15]`` | ``"70/20/10"`` -> (85, 15) / (70, 20, 10)."""
    if isinstance(value, str):
        parts = [p for p in value.replace("/", ",").replace(" ", ",").split(",") if p]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise ConfigError(where, f"expected 2 or 3 percentages like '85,15' or '70/20/10', got {value!r}")
    try:
        nums = tuple(_int(p, where) for p in parts)
    except ConfigError:
        raise ConfigError(where, f"expected whole-number percentages like '85,15' or '70/20/10', got {value!r}") from None
    if len(nums) not in (2, 3) or any(n <= 0 for n in nums) or sum(nums) != 100:
        raise ConfigError(where, f"expected 2 or 3 positive percentages summing to 100, got {value!r}")
    return nums


def _split_id(value: Any, where: str) -> str:
    if isinstance(value, (list, dict)):
        raise ConfigError(where, f"expected a split id, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def parse_splits(value: Any, where: str) -> list:
    """A list of split ids, or a list of lists of split ids (cross-validation). Ids become strings."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value] if not isinstance(value, str) else [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(where, f"expected a list like [1, 2] or a list of lists like [[1], [2]], got {value!r}")
    if all(isinstance(v, (list, tuple)) for v in value):
        out = [[_split_id(x, where) for x in v] for v in value]
        if any(not v for v in out):
            raise ConfigError(where, f"empty fold in {value!r}")
        return out
    if any(isinstance(v, (list, tuple)) for v in value):
        raise ConfigError(where, f"mixes split ids and lists: {value!r}; use a list or a list of lists")
    return [_split_id(v, where) for v in value]


def _text_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value or any(isinstance(v, (list, tuple, dict)) for v in value):
        raise ConfigError(where, f"expected a list like [TGACTCA, CACGTG], got {value!r}")
    return [str(v).strip() for v in value]


def _int_list(value: Any, where: str) -> list[int]:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(where, f"expected a list of integers like [2, 2], got {value!r}")
    return [_int(v, where) for v in value]


def _mapping(value: Any, where: str) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = from_text(value)
    if not isinstance(value, dict):
        raise ConfigError(where, f"expected a mapping (or its JSON string), got {value!r}")
    return dict(value)


def _weights_table(value: Any, where: str) -> dict[str, float]:
    return {str(k): _float(v, f"{where}.{k}") for k, v in _mapping(value, where).items()}


def _replacements(value: Any, where: str) -> dict[str, list[str]]:
    out = {}
    for k, v in _mapping(value, where).items():
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, (str, int)) for x in v):
            raise ConfigError(where, f"replacements of {k!r} must be a list of tokens, got {v!r}")
        out[str(k)] = [str(x) for x in v]
    return out


SPLITRATIO = Parser("percentages", parse_splitratio)
SPLITS = Parser("list or list of lists", parse_splits, structured=True)
TEXT_LIST = Parser("list of text", _text_list, structured=True)
INT_LIST = Parser("list of integers", _int_list, structured=True)
WEIGHTS_TABLE = Parser("mapping", _weights_table, structured=True)
REPLACEMENTS = Parser("mapping", _replacements, structured=True)


def for_default(default: Any) -> Parser:
    """The parser a key gets when ``opt`` is given none: from its default's type."""
    return {bool: BOOL, int: INT, float: FLOAT}.get(type(default), TEXT)
