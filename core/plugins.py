"""The plugin manager: finds plugins through the ``biolm`` entry-point group.

Built-in plugins are entry points of this distribution, loaded exactly like third-party ones.
``BIOLM_LOAD_PLUGINS`` (comma-separated names) limits which entry points load — for tests and
for debugging a broken installation.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .errors import BiolmError
from .hookspecs import ModelSpec, PluginConfig, TokenizerSpec


@dataclass
class BrokenPlugin:
    name: str
    error: str


class Registry:
    """Everything the installed plugins registered, by name."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.configs: dict[str, PluginConfig] = {}
        self.models: dict[str, ModelSpec] = {}
        self.tokenizers: dict[str, TokenizerSpec] = {}
        self.broken: list[BrokenPlugin] = []
        self.dists: dict[str, str] = {}

    def plugin(self, name: str) -> PluginConfig:
        if name not in self.configs:
            import difflib

            hint = difflib.get_close_matches(name, list(self.configs), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise BiolmError(f"unknown plugin {name!r}{extra}; installed: {', '.join(sorted(self.configs))}")
        return self.configs[name]

    def model(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise BiolmError(f"plugin {name!r} registered no model (register_model hook)")
        return self.models[name]

    def tokenizer(self, kind: str) -> TokenizerSpec:
        if kind not in self.tokenizers:
            raise BiolmError(f"no plugin provides the tokenizer kind {kind!r}")
        return self.tokenizers[kind]


def _allowed() -> set[str] | None:
    value = os.environ.get("BIOLM_LOAD_PLUGINS")
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


_registry: Registry | None = None


def get_registry() -> Registry:
    """Load every plugin once per process; a plugin that fails to import is listed as broken."""
    global _registry
    if _registry is not None:
        return _registry
    pm = pluggy.PluginManager("biolm")
    pm.add_hookspecs(hookspecs)
    registry = Registry(pm)
    from . import builtin_tokenizers

    pm.register(builtin_tokenizers, name="biolm.core.builtin_tokenizers")
    allowed = _allowed()
    for ep in entry_points(group="biolm"):
        if allowed is not None and ep.name not in allowed:
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the CLI down
            registry.broken.append(BrokenPlugin(ep.name, f"{type(exc).__name__}: {exc}"))
            continue
        if ep.dist is not None:
            registry.dists[ep.name] = ep.dist.version

    def add_config(cfg: PluginConfig) -> None:
        registry.configs[cfg.name] = cfg

    def add_model(name: str, spec: ModelSpec) -> None:
        registry.models[name] = spec

    def add_tokenizer(kind: str, spec: TokenizerSpec) -> None:
        registry.tokenizers[kind] = spec

    for hook, adder in (
        (pm.hook.register_config, add_config),
        (pm.hook.register_model, add_model),
        (pm.hook.register_tokenizer, add_tokenizer),
    ):
        for impl in hook.get_hookimpls():
            try:
                impl.function(adder)
            except Exception as exc:
                registry.broken.append(BrokenPlugin(impl.plugin_name, f"{type(exc).__name__}: {exc}"))
    _registry = registry
    return registry


def reset_registry() -> None:
    """Forget loaded plugins (tests install plugins at run time)."""
    global _registry
    _registry = None
    sys.modules.pop("biolm.core.builtin_tokenizers", None)
