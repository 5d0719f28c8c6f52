"""Load untrusted pickles that should hold plain data only (e.g. Geneformer's gene dictionaries).

Model releases ship vocabularies as pickles (Geneformer's ``token_dictionary_gc104M.pkl``, ...),
and users download them from model hubs and mirrors. ``pickle.load`` on such a file runs whatever the file
asks for (a ``REDUCE`` of ``os.system`` is enough), so biolm never calls it on them. This module
unpickles with an allow-list instead:

- Built-in opcodes for ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``, ``str``, ``bytes``,
  ``bytearray`` (protocol 5), ``int``, ``float``, ``bool`` and ``None`` (they create no objects
  of other types).
- The few globals plain data may reference, each replaced by a checking wrapper:

  ``numpy._core.multiarray.scalar`` / ``numpy.core.multiarray.scalar`` (numpy 2 / 1)
      numpy scalars (Geneformer's median dictionaries hold ``numpy.str_`` keys and may hold
      ``numpy.float64`` values). Only bool, integer, float, complex, bytes and unicode dtypes,
      and only with a byte payload of exactly the dtype's size.
  ``numpy.dtype``
      the dtype of such a scalar, from a simple type string (``"f8"``, ``"U15"``, ...).
  ``builtins.set``, ``builtins.frozenset``, ``collections.OrderedDict``
      containers that protocols 0-2 build by calling the type.
  ``_codecs.encode``
      how protocol 2 stores ``bytes`` (``encode(text, "latin1")``); other codecs are refused.

Everything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, numpy arrays, classes,
persistent ids) is refused *before* it can be called: the unpickler resolves every global through
:meth:`RestrictedUnpickler.find_class`, so a refused name never reaches ``REDUCE``.

numpy scalars are converted to the matching Python objects in the result (``numpy.str_`` ->
``str``, ``numpy.float64`` -> ``float``, ...), so callers see plain data only.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import re
from collections import OrderedDict
from typing import Any

import numpy as np

from .errors import DataError, FileFormatError, first_line

__all__ = ["UnsafePickleError", "load_plain_pickle", "loads_plain_pickle", "RestrictedUnpickler"]

# dtypes a plain-data scalar may have: bool, signed/unsigned int, float, complex, bytes, unicode
_SCALAR_KINDS = frozenset("biufcSU")
_DTYPE_SPEC = re.compile(r"^[<>|=]?(\?|b1|[iu][1248]|f[248]|c(8|16)|[SU]\d{1,6})$")


class _Refused(Exception):
    """A construct outside the allow-list; the message says which."""


class UnsafePickleError(DataError, ValueError):
    """A pickle references a global outside the allow-list, or is not a readable pickle.

    A :class:`~biolm.core.errors.DataError` (one line in the CLI) and a ``ValueError``;
    ``str(exc)`` reads ``PATH: refused to load pickle: it references 'os.system' ...``.
    Unreadable pickles raise :class:`~biolm.core.errors.FileFormatError` instead
    (``not a pickle file: PATH (reason)``).
    """


def _numpy_scalar_function():
    core = getattr(np, "_core", None)
    multiarray = getattr(core, "multiarray", None) if core is not None else None
    if multiarray is None:  # numpy 1.x
        multiarray = np.core.multiarray  # pragma: no cover
    return multiarray.scalar


_NP_SCALAR = _numpy_scalar_function()


def _checked_dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype(spec, align, copy)`` for simple scalar type strings only."""
    if not isinstance(spec, str) or not _DTYPE_SPEC.match(spec):
        raise _Refused(f"numpy.dtype({spec!r}) is not a plain scalar type")
    return np.dtype(spec)


def _checked_scalar(dtype: Any, data: Any = None) -> Any:
    """numpy's scalar reconstructor, for plain scalar dtypes and exact-size payloads."""
    if not isinstance(dtype, np.dtype):
        raise _Refused(f"a numpy scalar with a non-dtype first argument ({type(dtype).__name__})")
    # the dtype may have been modified by BUILD (__setstate__) after _checked_dtype; check it again
    if dtype.kind not in _SCALAR_KINDS or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise _Refused(f"a numpy scalar of dtype {dtype!s} is not plain data")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _Refused(f"a numpy scalar of dtype {dtype!s} has a malformed payload")
    return _NP_SCALAR(dtype, data)


def _checked_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for ``bytes``: latin-1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _Refused("_codecs.encode is allowed only as encode(str, 'latin1')")
    return text.encode("latin1")


def _plain_container(kind: type):
    def build(items: Any = ()) -> Any:
        return kind(items)

    build.__name__ = kind.__name__
    return build


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy._core.multiarray", "scalar"): _checked_scalar,
    ("numpy.core.multiarray", "scalar"): _checked_scalar,
    ("numpy", "dtype"): _checked_dtype,
    ("builtins", "set"): _plain_container(set),
    ("builtins", "frozenset"): _plain_container(frozenset),
    ("collections", "OrderedDict"): _plain_container(OrderedDict),
    ("_codecs", "encode"): _checked_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves globals only from the module's allow-list.

    Every global a pickle references (``GLOBAL``, ``STACK_GLOBAL``, ``INST``, ``OBJ``, extension
    codes) goes through :meth:`find_class`; refused names raise before anything is called.
    Persistent ids are refused as well.
    """

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - documented above
        # Python 2 names (``__builtin__.set``, written by protocols 0-2), mapped as pickle's own
        # find_class does; Python 3 has no modules of those names, so mapping always is harmless
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        else:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"it references '{module}.{name}', which plain data never needs") from None

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        raise _Refused("it uses a persistent id, which plain data never needs")


def _to_plain(obj: Any) -> Any:
    """Replace numpy scalars by Python scalars, recursively (dict keys included)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[_to_plain(k)] = _to_plain(v)
        return out
    if isinstance(obj, list):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_plain(v) for v in obj)
    if isinstance(obj, (set, frozenset)):
        return type(obj)(_to_plain(v) for v in obj)
    return obj


def loads_plain_pickle(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle plain data from bytes.

    Parameters
    ----------
    data
        The pickle.
    source
        Name used in error messages (a path).

    Returns
    -------
    Any
        The object, with numpy scalars turned into Python scalars.

    Raises
    ------
    UnsafePickleError
        If the pickle references a global that is not allowed (nothing is executed).
    FileFormatError
        If it is not a readable pickle (truncated or garbage).
    """
    try:
        obj = _to_plain(RestrictedUnpickler(io.BytesIO(data)).load())
    except _Refused as exc:
        raise UnsafePickleError(
            source,
            f"refused to load pickle: {exc} (only dicts, lists, tuples, sets, strings, bytes, "
            "numbers, booleans, None and numpy scalars are allowed); the file may be malicious",
        ) from None
    except RecursionError:
        raise FileFormatError(source, "pickle", "nesting too deep") from None
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, TypeError, MemoryError ...
        raise FileFormatError(source, "pickle", f"{type(exc).__name__}: {first_line(exc)}") from None
    return obj


def load_plain_pickle(path: str | os.PathLike) -> Any:
    """Unpickle plain data from a file; see :func:`loads_plain_pickle`.

    Raises
    ------
    UnsafePickleError
        On a refused global.
    FileFormatError
        On an unreadable pickle.
    DataError
        If the file cannot be opened.
    """
    path = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror or exc})") from None
    return loads_plain_pickle(data, path)
