"""Saving and loading fine-tuned fold models (a fold folder holds everything predict needs).

A fold folder: ``config.json`` (what rebuilds the model), ``pytorch_model.bin`` (its state dict),
``tokenizer.json`` and ``scaler.json`` (label scaling or classes). Every file is checked when it
is loaded — JSON syntax, keys, types, the ``model:`` section against the plugin's schema, the
weights against the model they must fit — and a bad one is a one-line error naming the file and
the key (exit code 2), never a wrong prediction or a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BiolmError, ConfigError, DataError
from .outputs import copy_file, save_torch, write_json
from .scaling import LabelEncoder, LabelScaler

WEIGHTS = "pytorch_model.bin"

# config.json: key -> (accepted types, required); numbers are checked to be >= 1 below
_CONFIG_KEYS: dict[str, tuple[tuple, bool]] = {
    "plugin": ((str,), True),
    "task": ((str,), True),
    "n_outputs": ((int,), True),
    "in_channels": ((int,), True),
    "blocksize": ((int,), True),
    "encoding": ((str,), False),
    "lefttailing": ((bool,), False),
    "centertoken": ((str, type(None)), False),
    "fixed_length": ((bool,), False),
    "model": ((dict,), False),
    "architecture": ((dict, type(None)), False),
    "extra": ((dict,), False),
    "best_val_loss": ((int, float, type(None)), False),
}


@dataclass
class FoldModel:
    path: Path
    plugin: str
    task: str
    model: Any
    tokenizer: Any
    scaler: LabelScaler | None
    encoder: LabelEncoder | None
    meta: dict

    @property
    def n_outputs(self) -> int:
        return self.meta["n_outputs"]

    @property
    def val_loss(self) -> float | None:
        return self.meta.get("best_val_loss")


def save_fold(folddir: Path, model: Any, meta: dict, tokenizer_path: Path, scaler: LabelScaler | None, encoder: LabelEncoder | None) -> None:
    folddir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch(folddir / WEIGHTS, state)
    write_json(folddir / "config.json", meta)
    copy_file(tokenizer_path, folddir / "tokenizer.json")
    scaler_json: dict = {"task": meta["task"]}
    if scaler is not None:
        scaler_json["scaling"] = scaler.to_json()
    if encoder is not None:
        scaler_json["classes"] = encoder.classes
    write_json(folddir / "scaler.json", scaler_json)


def find_fold_dirs(path: str | Path) -> list[Path]:
    """A fold folder itself, or every fold folder below a cross-validation parent (sorted)."""
    p = Path(path)
    key = "inference model.pretrainedmodel"
    if not p.exists():
        raise ConfigError(key, f"{p} does not exist")
    if not p.is_dir():
        raise ConfigError(key, f"{p} is a file; expected the folder of a fine-tuned model (a fold folder such as OUTPUTPATH/fine-tune/0, or OUTPUTPATH/fine-tune)")
    if (p / "config.json").exists() and (p / WEIGHTS).exists():
        return [p]
    folds = sorted((d for d in p.iterdir() if d.is_dir() and (d / "config.json").exists() and (d / WEIGHTS).exists()), key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))
    if not folds:
        raise ConfigError(key, f"{p} holds no fine-tuned model (no {WEIGHTS} + config.json, nor fold folders with them)")
    return folds


def read_json_file(path: Path, what: str) -> dict:
    """A JSON object from ``path``; missing, unreadable or invalid JSON is a :class:`DataError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(str(path), f"missing ({what}; copy the whole fold folder)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(str(path), f"unreadable ({getattr(e, 'strerror', None) or e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(str(path), f"not valid JSON: {e.msg}", line=e.lineno, column=e.colno) from None
    if not isinstance(data, dict):
        raise DataError(str(path), f"expected a JSON object, got {type(data).__name__}")
    return data


def read_model_config(folddir: Path, registry: Any) -> tuple[dict, Any]:
    """``config.json`` of a fold, checked: (meta, the plugin's ``model:`` section object)."""
    path = folddir / "config.json"
    meta = read_json_file(path, "what rebuilds the model")
    if isinstance(meta.get("task"), str) and meta["task"] not in ("regression", "classification"):
        raise BiolmError(f"inference model.pretrainedmodel: {folddir} holds a {meta['task']} model, not a fine-tuned one (use OUTPUTPATH/fine-tune or a fold folder in it)")
    for key, (types, required) in _CONFIG_KEYS.items():
        if key not in meta:
            if required:
                raise DataError(str(path), f"key {key!r} missing")
            continue
        value = meta[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise DataError(str(path), f"key {key!r}: expected {names}, got {value!r}")
        if types == (int,) and value < 1:
            raise DataError(str(path), f"key {key!r}: expected an integer >= 1, got {value!r}")
    if meta["plugin"] not in registry.configs:
        raise DataError(str(path), f"key 'plugin': {meta['plugin']!r} is not an installed plugin ({', '.join(sorted(registry.configs))})")
    plugin = registry.plugin(meta["plugin"])
    return meta, _model_section(plugin, meta.get("model") or {}, str(path))


def _model_section(plugin: Any, values: dict, source: str) -> Any:
    """The plugin's ``model:`` object from a saved section; every key checked like the YAML's."""
    if plugin.model_schema is None:
        return None
    from .config import UNSET, coerce
    from .schema import iter_keys

    specs = {s.key: s for s in iter_keys(plugin.model_schema, ("model",), ("model",))}
    kwargs = {}
    for key, value in values.items():
        spec = specs.get(key)
        if spec is None:
            raise ConfigError(f"model.{key}", f"unknown key of the {plugin.name} model (known: {', '.join(sorted(specs))})", source)
        v = coerce(spec, value, source)
        kwargs[key] = None if v is UNSET else v
    return plugin.model_schema(**kwargs)


def read_scaler(folddir: Path, meta: dict) -> tuple[LabelScaler | None, LabelEncoder | None]:
    """``scaler.json`` of a fold, checked against its ``config.json``."""
    path = folddir / "scaler.json"
    sj = read_json_file(path, "the label scaling or classes of the model")
    if sj.get("task", meta["task"]) != meta["task"]:
        raise DataError(str(path), f"key 'task': {sj.get('task')!r}, but config.json says {meta['task']!r}")
    if meta["task"] == "regression":
        if "scaling" not in sj:
            raise DataError(str(path), "key 'scaling' missing (a regression model's label scaling)")
        return LabelScaler.from_json(sj["scaling"], str(path)), None
    classes = sj.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
        raise DataError(str(path), f"key 'classes': expected a list of at least 2 distinct class names, got {classes!r}")
    if len(classes) != meta["n_outputs"]:
        raise DataError(str(path), f"key 'classes': {len(classes)} classes, but the model in config.json has {meta['n_outputs']} outputs")
    return None, LabelEncoder(classes)


def not_a_model_file(path: Path, reason: str) -> BiolmError:
    return BiolmError(f"not a biolm model file: {path} ({reason})")


def read_weights(path: Path) -> dict:
    """The state dict in ``path`` (tensors only, ``weights_only``); an empty, truncated or foreign
    file is ``not a biolm model file: PATH (reason)``."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise not_a_model_file(path, "missing") from None
    if size == 0:
        raise not_a_model_file(path, "empty file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise not_a_model_file(path, "not a torch state dict of tensors") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, TypeError, ImportError, IndexError, KeyError) as e:
        reason = "truncated or damaged" if isinstance(e, EOFError) or "zip archive" in str(e) or "central directory" in str(e) else f"unreadable: {type(e).__name__}"
        raise not_a_model_file(path, reason) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise not_a_model_file(path, f"holds a {type(state).__name__}, not a state dict of tensors")
    return state


def load_weights_into(model: Any, path: Path, plugin: str) -> None:
    """Load ``path`` into ``model``, refusing weights made for another model (names or shapes)."""
    state = read_weights(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise not_a_model_file(path, f"its weights do not fit the {plugin} model its config.json describes: {len(missing)} missing and {len(unexpected)} unexpected tensors, e.g. {example!r}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise not_a_model_file(path, f"tensor {k!r} has shape {tuple(state[k].shape)}, the {plugin} model its config.json describes needs {tuple(v.shape)}")
    model.load_state_dict(state)


def load_fold(folddir: Path, registry: Any, device: Any = "cpu") -> FoldModel:
    from .hookspecs import ModelInfo

    meta, model_cfg = read_model_config(folddir, registry)
    plugin = registry.plugin(meta["plugin"])
    scaler, encoder = read_scaler(folddir, meta)
    tok_spec = registry.tokenizer(meta.get("encoding", plugin.tokenizer))
    tokenizer = tok_spec.load(folddir / "tokenizer.json")
    info = ModelInfo(task=meta["task"], n_outputs=meta["n_outputs"], in_channels=meta["in_channels"], blocksize=meta["blocksize"], tokenizer=tokenizer, extra=meta.get("extra", {}), architecture=meta.get("architecture"), input_kind=meta.get("encoding", plugin.tokenizer))
    try:
        model = registry.model(plugin.name).build(model_cfg, info)
    except BiolmError as e:
        raise BiolmError(f"{folddir / 'config.json'}: {e}") from None
    except (ValueError, TypeError, KeyError) as e:
        raise DataError(str(folddir / "config.json"), f"the {plugin.name} model it describes cannot be built ({type(e).__name__}: {e})") from None
    load_weights_into(model, folddir / WEIGHTS, plugin.name)
    model.to(device).eval()
    return FoldModel(folddir, plugin.name, meta["task"], model, tokenizer, scaler, encoder, meta)
