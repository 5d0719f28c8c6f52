"""Run one mode of one plugin: resolve the config, set up outputs and logs, dispatch.

A :class:`Run` is everything a mode needs: the plugin, the resolved config, its folders, the
log, and the two data steps every mode shares (the tokenizer, the encoded store of a source).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import dump_resolved, load_yaml, resolve
from .errors import BiolmError, ConfigError
from .hookspecs import Encoding, PluginConfig
from .logs import close_logger, setup_logger
from .modes import MODES, TASKS
from .outputs import write_text
from .plugins import Registry, get_registry
from .schema import Config, section_title


@dataclass
class Run:
    """Everything a mode needs: plugin, resolved config, folders and the log."""

    registry: Registry
    plugin: PluginConfig
    mode: str
    task: str | None
    cfg: Config
    outdir: Path
    modedir: Path
    log: logging.Logger
    logfile: Path
    quiet: bool = False
    summary: dict = field(default_factory=dict)

    @property
    def source(self):
        """The data-source section this mode reads."""
        return getattr(self.cfg, MODES[self.mode].source)

    @property
    def tokenizer_spec(self):
        return self.registry.tokenizer(self.cfg.tokenization.encoding)

    @property
    def model_spec(self):
        return self.registry.model(self.plugin.name)

    def encoding(self) -> Encoding:
        """How records are cut to the model input, from the config (training modes)."""
        return Encoding(self.cfg.settings.training.blocksize, self.cfg.tokenization.lefttailing, self.cfg.settings.data_preprocessing.centertoken)

    def versions(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version

        out = {}
        for dist in ("biolm", "torch", "numpy", "h5py"):
            try:
                out[dist] = version(dist)
            except PackageNotFoundError:
                pass
        out[f"plugin {self.plugin.name}"] = self.plugin.version or self.registry.dists.get(self.plugin.name, "")
        return out

    def tokenizer(self):
        """``OUTPUTPATH/tokenizer.json``; learned first (and said so) when tokenize was not run."""
        spec = self.tokenizer_spec
        path = self.outdir / "tokenizer.json"
        if path.exists():
            return spec.load(path)
        src = self.cfg.tokenizing_source if self.cfg.tokenizing_source.filepath else self.source
        self.log.info("no tokenizer at %s: learning it on %s first (as the tokenize mode would)", path, src.filepath)
        tok = spec.fit(src, self.cfg, self.log)
        tok.save(path)
        return tok

    def store(self, tokenizer: Any, label_kind: str | None, encoding: Encoding | None = None, tokenizer_spec: Any = None):
        """This mode's data source encoded into ``<modedir>/dataset.h5``, reused when nothing changed.

        ``label_kind``: ``float`` (regression), ``str`` (classification) or ``None`` (labels
        optional, kept as text). The hash covers the file's bytes, every parsing option and the
        tokenizer. ``encoding`` defaults to the config's (a trained model brings its own).
        """
        from .store import build_store, open_or_build, source_hash

        source = self.source
        spec = tokenizer_spec or self.tokenizer_spec
        records, options = spec.encode(tokenizer, source, encoding or self.encoding(), self.log, label_kind)
        options = dict(options, label_kind=label_kind)
        digest = source_hash(source.filepath, options, tokenizer.sha())

        def build(p):
            build_store(p, records, {"source": str(source.filepath), "source_hash": digest, "options": options}, tokenizer.n_modifiers)

        return open_or_build(self.modedir / "dataset.h5", digest, build, log=self.log.info)


def mode_dirname(mode: str, cfg: Config) -> str:
    if mode in ("predict", "interpret") and cfg.inference_model.outputdir:
        return cfg.inference_model.outputdir
    return mode


def _resolve(plugin: PluginConfig, mode: str, configfile: str | Path | None, cli_values: dict | None) -> Config:
    yaml_data = load_yaml(configfile) if configfile else {}
    return resolve(mode, plugin, yaml_data, cli_values, source=str(configfile) if configfile else "config")


def prepare(plugin_name: str, mode: str, task: str | None, configfile: str | Path | None, cli_values: dict | None, quiet: bool = False, debug: bool = False) -> Run:
    registry = get_registry()
    plugin = registry.plugin(plugin_name)
    if mode not in plugin.modes:
        raise BiolmError(f"plugin {plugin_name!r} does not support mode {mode!r}; it supports: {', '.join(plugin.modes)}")
    if MODES[mode].needs_task and task not in TASKS:
        raise BiolmError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    cfg = _resolve(plugin, mode, configfile, cli_values)
    if not getattr(cfg, MODES[mode].source).filepath:
        raise ConfigError(f"{section_title(MODES[mode].source)}.filepath", f"required for {mode} (the data file to read)", str(configfile) if configfile else None)
    if not cfg.outputpath:
        raise ConfigError("outputpath", "not set and no data file to derive it from")
    outdir = Path(cfg.outputpath)
    modedir = outdir / mode_dirname(mode, cfg)
    modedir.mkdir(parents=True, exist_ok=True)
    from .distributed import is_main, world

    rank = world()[0]
    log, logfile = setup_logger(modedir / "logs", f"{plugin_name}.{mode}", quiet=quiet, debug=debug, suffix=f"_rank{rank}" if rank else "")
    run = Run(registry, plugin, mode, task, cfg, outdir, modedir, log, logfile, quiet)
    if is_main():
        write_text(modedir / "config.yaml", dump_resolved(cfg, mode, plugin, task, run.versions()))
    log.debug("resolved config written to %s", modedir / "config.yaml")
    return run


def run(plugin_name: str, mode: str, task: str | None = None, configfile: str | Path | None = None, cli_values: dict | None = None, quiet: bool = False, debug: bool = False, argv: list[str] | None = None) -> Run | None:
    """Carry out ``biolm PLUGIN MODE``; returns the finished :class:`Run` (its ``summary`` filled).

    Training modes asking for several processes (``ngpus`` > 1, or several visible GPUs) are
    relaunched under torch's launcher with ``argv`` (the command line); None is returned then.
    """
    from .distributed import is_distributed, is_main, relaunch, wanted_processes

    if mode in ("fine-tune", "pre-train") and not is_distributed():
        registry = get_registry()
        cfg = _resolve(registry.plugin(plugin_name), mode, configfile, cli_values)
        n = wanted_processes(cfg.settings.environment)
        if n > 1 and registry.model(plugin_name).fit is None:
            if argv is None:
                raise BiolmError(f"{n} processes asked for (ngpus); run through the biolm command so it can relaunch itself with torchrun")
            code = relaunch(n, argv)
            if code:
                raise SystemExit(code)
            return None
    r = prepare(plugin_name, mode, task, configfile, cli_values, quiet=quiet or not is_main(), debug=debug)
    try:
        module = importlib.import_module(MODES[mode].module)
        r.summary = module.execute(r) or {}
    except BiolmError as exc:
        r.log.debug("failed: %s", exc)
        close_logger(r.log)
        raise
    except BaseException:
        r.log.debug("unexpected failure", exc_info=True)  # the file keeps the traceback; the console only with --debug
        close_logger(r.log)
        raise
    r.log.info("log written to %s", r.logfile)
    close_logger(r.log)
    if is_main():
        print_summary(r)
    return r


def print_summary(r: Run) -> None:
    if r.quiet:
        print(r.modedir)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    metrics: dict[str, Any] = r.summary.get("metrics") or {}
    if metrics:
        table = Table(title=r.summary.get("title") or f"{r.plugin.name} {r.mode}" + (f" ({r.task})" if r.task else ""))
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in metrics.items():
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
        console.print(table)
    for line in r.summary.get("lines", []):
        console.print(line)
    console.print(f"outputs: {r.modedir}")
