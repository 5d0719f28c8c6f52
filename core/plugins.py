"""The plugin manager: finds plugins through the ``biolm`` entry-point group.

Built-in plugins are entry points of this distribution, loaded exactly like third-party ones.
``BIOLM_LOAD_PLUGINS`` (comma-separated names) limits which entry points load — for tests and
for debugging a broken installation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .errors import BiolmError
from .hookspecs import ModelSpec, PluginConfig, TokenizerSpec, hookimpl


class RegistrationError(Exception):
    """A plugin registered a name another plugin already has."""


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
        self.owners: dict[tuple[str, str], str] = {}  # (what, name) -> entry point that registered it

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


class _CoreTokenizers:
    """core's own kinds, registered through the same hook as plugins' kinds: ``atomic`` (one-hot
    sequences), ``expression`` (.h5ad cells) and ``array`` (.npy arrays). Their modules (numpy)
    are imported when a tokenizer is first used, so listing plugins stays light."""

    @hookimpl
    def register_tokenizer(self, register):
        import importlib

        from . import input_kinds

        def lazy(module: str, name: str):
            def call(*args):
                return getattr(importlib.import_module(f"{__package__}.{module}"), name)(*args)

            return call

        def spec(module: str, **kw):
            return TokenizerSpec(fit=lazy(module, "fit"), load=lazy(module, "load"), encode=lazy(module, "encode"), **kw)

        register("atomic", spec("atomic_tokenizer", make_input=lazy("atomic_tokenizer", "make_input"), accepts=input_kinds.reads_text, inputs="delimited text sequences"))
        features = dict(make_input=lazy("feature_tokenizer", "make_input"), feature_shape=lazy("feature_tokenizer", "feature_shape"))
        register("expression", spec("expression_tokenizer", accepts=input_kinds.reads_h5ad, inputs=".h5ad expression (cells x genes)", records="cells", **features))
        register("array", spec("array_tokenizer", accepts=input_kinds.reads_arrays, inputs=".npy/.npz arrays", records="samples", **features))


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
    pm.register(_CoreTokenizers(), name="biolm.core")
    allowed = _allowed()
    # biolm's own plugins first, so that a third-party plugin reusing a built-in name is the one refused
    for ep in sorted(entry_points(group="biolm"), key=lambda e: (e.dist is None or e.dist.name != "biolm", e.name)):
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

    def registrar(what: str, table: dict, plugin: str):
        """The ``register`` callable a hook receives; a name already taken is refused."""

        def register(*args) -> None:
            name, spec = (args[0].name, args[0]) if what == "plugin" else args
            if name in table:
                raise RegistrationError(f"{what} {name!r} is already registered by {registry.owners[(what, name)]!r}; names must be unique (uninstall one of the two)")
            table[name] = spec
            registry.owners[(what, name)] = plugin

        return register

    for hook, what, table in (
        (pm.hook.register_config, "plugin", registry.configs),
        (pm.hook.register_model, "model", registry.models),
        (pm.hook.register_tokenizer, "tokenizer kind", registry.tokenizers),
    ):
        for impl in hook.get_hookimpls():  # in registration order: built-ins first
            try:
                impl.function(registrar(what, table, impl.plugin_name))
            except Exception as exc:
                registry.broken.append(BrokenPlugin(impl.plugin_name, f"{type(exc).__name__}: {exc}"))
    _registry = registry
    return registry
