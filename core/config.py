"""Load, validate and resolve a run's configuration.

Precedence: CLI > YAML > plugin defaults > core defaults. Every key is validated against the
schema in :mod:`biolm.core.schema`; errors are :class:`ConfigError` naming the key, the value
and what is allowed.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import os
import platform
from pathlib import Path
from typing import Any

import yaml

from .errors import BiolmError, ConfigError
from .hookspecs import PluginConfig
from .parsers import from_text, is_unset, parse_splitratio, parse_splits  # noqa: F401  (parse_* re-exported)
from .schema import SOURCE_FOR_MODE, Config, KeySpec, is_section, iter_keys, yaml_name

class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


def coerce(spec: KeySpec, value: Any, source: str | None = None) -> Any:
    """Validate and convert one value for ``spec`` with its parser; :data:`UNSET` for "not set"."""
    meta = spec.meta
    parser = meta["parse"]
    if parser.structured:
        value = from_text(value)
    if is_unset(value, meta["false_is_unset"]):
        return UNSET
    where = spec.dotted
    try:
        out = parser(value, where)
    except ConfigError as e:
        if source and not e.source:
            raise ConfigError(e.key, str(e).split(": ", 1)[1], source) from None
        raise
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        if lo is not None and out < lo:
            raise ConfigError(where, f"must be >= {lo}, got {value!r}", source)
        if hi is not None and out > hi:
            raise ConfigError(where, f"must be <= {hi}, got {value!r}", source)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    silently keeps the last: a second ``labelpos:`` further down would win unnoticed)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice in one section (first on line {first.start_mark.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML config; syntax errors name file, line and column."""
    p = Path(path)
    if p.is_dir():
        raise BiolmError(f"{p}: is a folder, expected a YAML config file")
    if not p.is_file():
        raise BiolmError(f"{p}: config file not found")
    try:
        with open(p, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise BiolmError(f"{p}: cannot read the config file ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise BiolmError(f"{p}:{line}: not a text YAML file (byte {e.start + 1} is not UTF-8)") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        loc = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise BiolmError(f"{p}{loc}: invalid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise BiolmError(f"{p}: invalid YAML: {(str(e).splitlines() or ['?'])[0]}") from None
    except RecursionError:
        raise BiolmError(f"{p}: invalid YAML: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BiolmError(f"{p}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


class _Tree:
    """The schema as nested dicts: YAML name -> sub-tree or KeySpec (aliases included)."""

    def __init__(self, specs: list[KeySpec]):
        self.root: dict = {}
        for s in specs:
            node = self.root
            for part in s.yaml_path[:-1]:
                node = node.setdefault(part, {})
            node[s.yaml_path[-1]] = s
            for alias in s.meta.get("aliases", ()):
                node.setdefault(alias, s)


def _walk(data: dict, node: dict, prefix: tuple, found: list, source: str, settings_keys: dict) -> None:
    for key, value in data.items():
        key = str(key)
        target = node.get(key)
        if target is None and prefix and prefix[0] == "settings" and not isinstance(value, dict):
            # the old tool documented some settings keys under other sub-sections: accept them
            # wherever they appear below settings, as long as the name is unique there
            target = settings_keys.get(key)
        if target is None and prefix[-1:] == ("training",) and key == "general" and isinstance(value, dict):
            _walk(value, node, prefix, found, source, settings_keys)
            continue
        if target is None:
            here = ".".join(prefix + (key,))
            candidates = list(node)
            hint = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
            extra = f"; did you mean {hint[0]!r}?" if hint else f"; allowed here: {', '.join(sorted(candidates))}"
            raise ConfigError(here, f"unknown key{extra}", source)
        if isinstance(target, dict):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(".".join(prefix + (key,)), f"expected a section (mapping), got {value!r}", source)
            _walk(value, target, prefix + (key,), found, source, settings_keys)
        else:
            found.append((target, value))


def parse_yaml_values(data: dict, specs: list[KeySpec], source: str) -> list[tuple[KeySpec, Any]]:
    """Match a YAML mapping against the schema; unknown keys are errors with a suggestion."""
    tree = _Tree(specs)
    settings_keys: dict[str, KeySpec] = {}
    counts: dict[str, int] = {}
    for s in specs:
        if s.yaml_path[0] == "settings":
            for name in (s.key, *s.meta.get("aliases", ())):
                counts[name] = counts.get(name, 0) + 1
                settings_keys[name] = s
    settings_keys = {k: v for k, v in settings_keys.items() if counts[k] == 1}
    found: list = []
    _walk(data, tree.root, (), found, source, settings_keys)
    seen: dict = {}
    for spec, _ in found:
        if spec.path in seen:
            raise ConfigError(spec.dotted, "given twice (under two names or in two sections); keep one", source)
        seen[spec.path] = spec
    return found


def _set(cfg: Any, path: tuple[str, ...], value: Any) -> None:
    obj = cfg
    for part in path[:-1]:
        obj = getattr(obj, part)
    setattr(obj, path[-1], value)


def get(cfg: Any, path: tuple[str, ...]) -> Any:
    obj = cfg
    for part in path:
        obj = getattr(obj, part)
    return obj


def all_specs(plugin: PluginConfig | None) -> list[KeySpec]:
    return list(iter_keys(Config, model_schema=plugin.model_schema if plugin else None))


def resolve(
    mode: str,
    plugin: PluginConfig | None,
    yaml_data: dict | None = None,
    cli: dict[str, Any] | None = None,
    source: str = "config",
) -> Config:
    """Build the run's :class:`Config`: core defaults < plugin defaults < YAML < CLI.

    ``cli`` maps dotted attribute paths (``settings.training.batchsize``) to raw values.
    The YAML may hold keys of every mode (one file serves tokenize and fine-tune); only
    the mode's own data-source section is read into the run.
    """
    specs = all_specs(plugin)
    by_path = {s.path: s for s in specs}
    cfg = Config()
    cfg.model = plugin.model_schema() if plugin and plugin.model_schema else None
    if plugin:
        cfg.tokenization.encoding = plugin.tokenizer if len(plugin.kinds) == 1 else "auto"
        settings_by_key = {s.key: s for s in specs if s.path[0] == "settings"}
        for key, value in plugin.training_defaults.items():
            spec = settings_by_key.get(key)
            if spec is None:
                raise ConfigError(f"{plugin.name} training_defaults.{key}", "unknown settings key (plugin bug)")
            v = coerce(spec, value)
            _set(cfg, spec.path, None if v is UNSET else v)
    for spec, value in parse_yaml_values(yaml_data or {}, specs, source):
        v = coerce(spec, value, source)
        if v is UNSET:
            default = get(cfg, spec.path)
            if spec.field.default is None or spec.meta.get("false_is_unset") or default is None:
                _set(cfg, spec.path, None)
        else:
            _set(cfg, spec.path, v)
    for dotted, value in (cli or {}).items():
        spec = by_path[tuple(dotted.split("."))]
        v = coerce(spec, value, "command line")
        _set(cfg, spec.path, None if v is UNSET else v)
    if plugin:
        from .input_kinds import check_kind_setting

        check_kind_setting(plugin, cfg.tokenization.encoding, source)
    if mode in SOURCE_FOR_MODE and not cfg.outputpath:
        fp = getattr(cfg, SOURCE_FOR_MODE[mode]).filepath
        if fp:
            cfg.outputpath = default_outputpath(fp)
    return cfg


def default_outputpath(filepath: str) -> str:
    """OUTPUTPATH when not set: the data file's path without its extension."""
    name = Path(filepath).name
    for suffix in (".gz", ".txt", ".tsv", ".csv", ".h5ad", ".npy", ".npz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return str(Path(filepath).with_name(name))


def to_dict(cfg: Config, mode: str | None = None, plugin: PluginConfig | None = None) -> dict:
    """The config as a YAML-shaped dict (YAML section names); only the mode's own data source."""

    def conv(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            out = {}
            for f in dataclasses.fields(obj):
                if mode and f.name.endswith("_source") and f.name != SOURCE_FOR_MODE.get(mode):
                    continue
                val = getattr(obj, f.name)
                if is_section(f) and val is None:
                    continue
                out[yaml_name(f)] = conv(val)
            return out
        if isinstance(obj, tuple):
            return list(obj)
        if isinstance(obj, dict):
            return {k: conv(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [conv(v) for v in obj]
        return obj

    return conv(cfg)


def dump_resolved(cfg: Config, mode: str, plugin: PluginConfig, task: str | None, versions: dict) -> str:
    """YAML text of the resolved config; provenance goes into comments so the file loads as is."""
    header = [
        f"# biolm resolved configuration — {plugin.name} {mode}" + (f" --task {task}" if task else ""),
        f"# written {_dt.datetime.now().isoformat(timespec='seconds')}",
        f"# python {platform.python_version()} on {platform.platform()}",
        "# versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"# re-run: biolm {plugin.name} {mode}" + (f" --task {task}" if task else "") + " --configfile <this file>",
    ]
    body = yaml.safe_dump(to_dict(cfg, mode), sort_keys=False, allow_unicode=True)
    return "\n".join(header) + "\n" + body
