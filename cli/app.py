"""The ``biolm`` command line: a thin Typer layer over :mod:`biolm.core.runner`.

Plugin commands are built lazily, so ``biolm --help`` imports no torch and no model code; each
mode's options are generated from the config schema (one source for YAML keys, CLI options and help).
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from biolm import __version__
from biolm.core.errors import BiolmError
from biolm.core.modes import MODE_NAMES, MODES

CONTEXT = {"help_option_names": ["-h", "--help"]}
_state = {"debug": bool(os.environ.get("BIOLM_DEBUG")), "quiet": False}


def _registry():
    from biolm.core.plugins import get_registry

    return get_registry()


def _fail(exc: BaseException) -> None:
    """One readable line on stderr (exit 2 for user errors, 1 otherwise); a traceback only with --debug."""
    import traceback

    from biolm.core.errors import as_user_error

    if isinstance(exc, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)
    if isinstance(exc, SystemExit):  # the exit code of a relaunched distributed run
        raise typer.Exit(exc.code if isinstance(exc.code, int) else 1)
    if _state["debug"]:
        traceback.print_exception(exc)
    user = as_user_error(exc)
    if user is not None:
        typer.echo(f"error: {_one_line(str(user))}", err=True)
        raise typer.Exit(2)
    log = getattr(exc, "biolm_log", None)
    where = f"the traceback is in {log}" if log else "the traceback"
    hint = "" if _state["debug"] else f" ({where}; --debug shows it here)"
    typer.echo(f"unexpected error: {type(exc).__name__}: {_one_line(str(exc))}{hint}", err=True)
    raise typer.Exit(1)


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] + (" ..." if len(lines) > 1 else "") if lines else ""


def _default_text(spec) -> str | None:
    """The key's default as ``-h`` shows it (core default; a plugin may override it)."""
    import dataclasses

    f = spec.field
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, str) and value.strip() != value else str(value)


def _option_for(spec, index: int, defaults: dict) -> inspect.Parameter:
    """A Typer option generated from one schema key."""
    meta = spec.meta
    parser = meta["parse"]
    flag = meta.get("flag") or spec.key.replace("_", "-")
    # rich reads "[...]" as markup: "\\[" keeps the brackets (choices, defaults, examples) on the -h page
    help_text = meta["help"].replace("[", "\\[")
    if meta.get("choices"):
        help_text += f" \\[{'|'.join(meta['choices'])}]"
    default = defaults.get(spec.path, _default_text(spec))
    if default is not None:
        help_text += f" \\[default: {default}]"
    if parser.cli is bool:
        decl = (f"--{flag}/--no-{flag}",)
        annotation: Any = Optional[bool]
    else:
        decl = (f"--{flag}",)
        annotation = {int: Optional[int], float: Optional[float]}.get(parser.cli, Optional[str])
    return inspect.Parameter(
        f"opt_{index}",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(None, *decl, help=help_text, rich_help_panel=spec.section_title, show_default=False),
        annotation=annotation,
    )


def _plugin_defaults(plugin) -> dict:
    """settings keys the plugin sets (its training_defaults), as ``-h`` shows them."""
    from biolm.core.schema import Config, iter_keys

    out = {}
    for spec in iter_keys(Config):
        if spec.path[0] == "settings" and spec.key in plugin.training_defaults:
            value = plugin.training_defaults[spec.key]
            out[spec.path] = "unset" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return out


def _mode_command(plugin_name: str, mode: str):
    from biolm.core.schema import keys_for_mode

    reg = _registry()
    plugin = reg.plugin(plugin_name)
    specs = keys_for_mode(mode, plugin.model_schema)
    params = []
    if MODES[mode].needs_task:
        params.append(
            inspect.Parameter(
                "task",
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(..., "--task", help="regression or classification.", rich_help_panel="run"),
                annotation=str,
            )
        )
    params.append(
        inspect.Parameter(
            "configfile",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--configfile", "-c", help="YAML configuration file.", rich_help_panel="run"),
            annotation=Optional[Path],
        )
    )
    seen: dict[str, str] = {}
    defaults = _plugin_defaults(plugin)
    for i, spec in enumerate(specs):
        flag = spec.meta.get("flag") or spec.key.replace("_", "-")
        if flag in seen:  # a plugin key named like a core key: keep the core one's name
            continue
        seen[flag] = spec.dotted
        params.append(_option_for(spec, i, defaults))
    paths = {f"opt_{i}": ".".join(s.path) for i, s in enumerate(specs)}

    def command(**kwargs: Any) -> None:
        task = kwargs.pop("task", None)
        configfile = kwargs.pop("configfile", None)
        cli_values = {paths[k]: v for k, v in kwargs.items() if v is not None}
        try:
            from biolm.core.runner import run

            run(plugin_name, mode, task=task, configfile=configfile, cli_values=cli_values, quiet=_state["quiet"], debug=_state["debug"], argv=sys.argv[1:])
        except typer.Exit:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure ends as one line + exit code
            _fail(exc)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    doc = MODES[mode].help
    command.__doc__ = doc
    sub = typer.Typer(context_settings=CONTEXT, add_completion=False, pretty_exceptions_enable=False)
    sub.command(name=mode, help=doc)(command)
    return typer.main.get_command(sub)


class PluginGroup(TyperGroup):
    """``biolm PLUGIN MODE``: mode commands are built only when asked for."""

    def __init__(self, plugin_name: str, modes: tuple[str, ...], **kw: Any):
        super().__init__(name=plugin_name, **kw)
        self.plugin_name = plugin_name
        self.modes = modes

    def list_commands(self, ctx):
        return [m for m in MODE_NAMES if m in self.modes]

    def get_command(self, ctx, name):
        if name not in self.modes:
            return None
        return _mode_command(self.plugin_name, name)

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name and name not in self.modes and not name.startswith("-"):
            import difflib

            hint = difflib.get_close_matches(name, list(self.modes) + ["fine-tune", "pre-train"], n=1, cutoff=0.6)
            extra = f" Did you mean {hint[0]!r}?" if hint and hint[0] in self.modes else ""
            ctx.fail(f"No such mode {name!r} for {self.plugin_name}; its modes: {', '.join(self.list_commands(ctx))}.{extra}")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx, formatter):
        # listing modes must not build their (schema-sized) option lists
        rows = [(m, MODES[m].summary) for m in self.list_commands(ctx)]
        if rows:
            with formatter.section("Modes"):
                formatter.write_dl(rows)


class RootGroup(TyperGroup):
    """Static commands plus one group per installed plugin."""

    def list_commands(self, ctx):
        return super().list_commands(ctx) + sorted(_registry().configs)

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            import difflib

            plugins = sorted(_registry().configs)
            hint = difflib.get_close_matches(name, self.list_commands(ctx), n=1, cutoff=0.6)
            extra = f" Did you mean {hint[0]!r}?" if hint else ""
            ctx.fail(f"No such plugin or command {name!r}; plugins: {', '.join(plugins)} (biolm plugins lists them).{extra}")
        return super().resolve_command(ctx, args)

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        reg = _registry()
        if name not in reg.configs:
            return None
        cfg = reg.configs[name]
        return PluginGroup(name, cfg.modes, help=cfg.description, context_settings=CONTEXT, rich_markup_mode=None)


app = typer.Typer(
    cls=RootGroup,
    context_settings=CONTEXT,
    add_completion=True,
    pretty_exceptions_enable=False,
    help="biolm: train and use deep models on biological sequences and single-cell data with one YAML file.\n\n"
    "Usage: biolm PLUGIN MODE --configfile x.yaml [--task regression|classification] [options]",
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"biolm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the output directory (for scripts)."),
) -> None:
    _state["debug"] = debug or bool(os.environ.get("BIOLM_DEBUG"))
    _state["quiet"] = quiet


@app.command("plugins")
def plugins_command() -> None:
    """List installed plugins, their versions and modes (and broken ones with their error)."""
    from rich.console import Console
    from rich.table import Table

    reg = _registry()
    table = Table(title="biolm plugins")
    for col in ("plugin", "version", "modes", "description"):
        table.add_column(col)
    for name in sorted(reg.configs):
        cfg = reg.configs[name]
        table.add_row(name, cfg.version or reg.dists.get(name, ""), ", ".join(cfg.modes), cfg.description)
    for b in reg.broken:
        table.add_row(b.name, "", "BROKEN", b.error)
    Console().print(table)


def main() -> None:
    try:
        app(prog_name="biolm")
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001
        try:
            _fail(exc)
        except typer.Exit as e:
            sys.exit(e.exit_code)
