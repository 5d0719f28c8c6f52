"""Run one mode of one plugin: resolve the config, set up outputs and logs, dispatch.

A :class:`Run` is everything a mode needs: the plugin, the resolved config, its folders, the
log, and the two data steps every mode shares (the tokenizer, the encoded store of a source).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import default_outputpath, dump_resolved, load_yaml, resolve
from .errors import BiolmError, ConfigError, as_user_error
from .folderlock import FolderLock
from .hookspecs import Encoding, PluginConfig
from .input_kinds import choose_kind, input_shape
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
    lock: FolderLock | None = None

    def start(self) -> None:
        """Take the mode folder's lock, complete or clear what an interrupted run left there
        (a half-done publication, temporaries of dead processes), write ``config.yaml``."""
        from .distributed import is_main
        from .outputs import remove_stale_temporaries
        from .publish import finish_publication

        if not is_main():
            return
        self.lock = FolderLock(self.modedir).acquire(warn=self.log.warning)
        if self.lock.stale_message():
            self.log.warning(self.lock.stale_message())
        remove_stale_temporaries(self.modedir, recursive=True, log=self.log.warning)
        remove_stale_temporaries(self.outdir, log=self.log.warning, min_age=3600)  # shared by every mode's runs
        if finish_publication(self.modedir):
            self.log.warning("completed the publication of results an interrupted run had begun in %s", self.modedir)
        write_text(self.modedir / "config.yaml", dump_resolved(self.cfg, self.mode, self.plugin, self.task, self.versions()))
        self.log.debug("resolved config written to %s", self.modedir / "config.yaml")

    def finish(self, error: BaseException | None = None, original: BaseException | None = None) -> Path:
        """Log how the run ended, close the log and release the folder's lock; returns the log."""
        try:
            if isinstance(error, KeyboardInterrupt):
                self.log.error("interrupted")
            elif isinstance(error, SystemExit):
                self.log.error("exited with code %s", error.code)
            elif error is not None:
                _log_failure(self.log, error, original or error)
        finally:
            close_logger(self.log)
            if self.lock is not None:
                self.lock.release()
        return self.logfile

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

    def encoding(self, tokenizer: Any = None) -> Encoding:
        """How records are cut to the model input, from the config (training modes); for
        fixed-shape feature records the input length is the tokenizer's (positions per record)."""
        shape = self.tokenizer_spec.feature_shape
        blocksize = self.cfg.settings.training.blocksize if shape is None or tokenizer is None else input_shape(shape(tokenizer))[0]
        return Encoding(blocksize, self.cfg.tokenization.lefttailing, self.cfg.settings.data_preprocessing.centertoken)

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

        shape = spec.feature_shape(tokenizer) if spec.feature_shape is not None else None

        def build(p):
            meta = {"source": str(source.filepath), "source_hash": digest, "options": options}
            build_store(p, records, meta, 1 if shape is not None else tokenizer.n_modifiers, feature_shape=shape)

        return open_or_build(self.modedir / "dataset.h5", digest, build, log=self.log.info)


def mode_dirname(mode: str, cfg: Config) -> str:
    if mode in ("predict", "interpret") and cfg.inference_model.outputdir:
        return cfg.inference_model.outputdir
    return mode


def _resolve(plugin: PluginConfig, mode: str, configfile: str | Path | None, cli_values: dict | None) -> Config:
    yaml_data = load_yaml(configfile) if configfile else {}
    return resolve(mode, plugin, yaml_data, cli_values, source=str(configfile) if configfile else "config")


def output_folder(cfg: Config, mode: str) -> tuple[Path, Path]:
    """(OUTPUTPATH, its mode folder), created; a user error when OUTPUTPATH is a file or cannot
    be written."""
    if not cfg.outputpath:
        raise ConfigError("outputpath", "not set and no data file to derive it from")
    outdir = Path(cfg.outputpath)
    name = mode_dirname(mode, cfg)
    if not _folder_name(name):
        raise ConfigError("inference model.outputdir", f"a folder name under outputpath (no path), got {name!r}")
    modedir = outdir / name
    for p in (outdir, *outdir.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError("outputpath", f"{outdir}: {p} is a file, not a folder")
            break
    try:
        modedir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("outputpath", f"cannot create {modedir}: {e.strerror or e}") from None
    if not os.access(modedir, os.W_OK | os.X_OK):
        raise ConfigError("outputpath", f"{modedir} is not writable")
    return outdir, modedir


def prepare(plugin_name: str, mode: str, task: str | None, configfile: str | Path | None, cli_values: dict | None, quiet: bool = False, debug: bool = False) -> Run:
    """The run's config, folders and log; :meth:`Run.start` then takes the folder's lock."""
    registry = get_registry()
    plugin = registry.plugin(plugin_name)
    if mode not in plugin.modes:
        raise BiolmError(f"plugin {plugin_name!r} does not support mode {mode!r}; it supports: {', '.join(plugin.modes)}")
    if MODES[mode].needs_task and task not in TASKS:
        raise BiolmError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    cfg = _resolve(plugin, mode, configfile, cli_values)
    if not getattr(cfg, MODES[mode].source).filepath:
        raise ConfigError(f"{section_title(MODES[mode].source)}.filepath", f"required for {mode} (the data file to read)", str(configfile) if configfile else None)
    cfg.tokenization.encoding = choose_kind(registry, plugin, cfg.tokenization.encoding, getattr(cfg, MODES[mode].source).filepath)
    outdir, modedir = output_folder(cfg, mode)
    from .distributed import world

    rank = world()[0]
    log, logfile = setup_logger(modedir / "logs", f"{plugin_name}.{mode}", quiet=quiet, debug=debug, suffix=f"_rank{rank}" if rank else "")
    return Run(registry, plugin, mode, task, cfg, outdir, modedir, log, logfile, quiet)


def run(plugin_name: str, mode: str, task: str | None = None, configfile: str | Path | None = None, cli_values: dict | None = None, quiet: bool = False, debug: bool = False, argv: list[str] | None = None) -> Run | None:
    """Carry out ``biolm PLUGIN MODE``; returns the finished :class:`Run` (its ``summary`` filled).

    Modes asking for several processes (``ngpus`` > 1, or several visible GPUs) are relaunched
    under torch's launcher with ``argv`` (the command line); None is returned then. Training
    runs data-parallel (not for one-pass ``fit`` models); predict and interpret shard the input.

    Every run that fails writes its log (the error; for an unexpected one the traceback) to its
    mode folder, or, when it fails before one is known or usable, to :func:`fallback_logdir`.
    Environment failures the user fixes (a full disk, permissions, memory) are raised as
    :class:`BiolmError` (exit code 2).
    """
    from .distributed import is_distributed, is_main, relaunch, wanted_processes

    r = None
    try:
        if mode in ("fine-tune", "pre-train", "predict", "interpret") and not is_distributed():
            registry = get_registry()
            cfg = _resolve(registry.plugin(plugin_name), mode, configfile, cli_values)
            n = wanted_processes(cfg.settings.environment)
            if n > 1 and (mode in ("predict", "interpret") or registry.model(plugin_name).fit is None):
                if argv is None:
                    raise BiolmError(f"{n} processes asked for (ngpus); run through the biolm command so it can relaunch itself with torchrun")
                code = relaunch(n, argv)
                if code:
                    raise SystemExit(code)
                return None
        r = prepare(plugin_name, mode, task, configfile, cli_values, quiet=quiet or not is_main(), debug=debug)
        r.start()
        module = importlib.import_module(MODES[mode].module)
        r.summary = module.execute(r) or {}
    except (SystemExit, KeyboardInterrupt) as exc:
        if r is not None:
            r.finish(exc)
        raise
    except BaseException as exc:
        err = as_user_error(exc)
        logfile = r.finish(err or exc, exc) if r is not None else failure_log(plugin_name, mode, configfile, cli_values, err or exc, exc)
        if err is None:
            with contextlib.suppress(AttributeError):
                exc.biolm_log = logfile  # type: ignore[attr-defined]  (the CLI names it)
            raise
        if err is exc:
            raise
        raise err from None
    r.log.info("log written to %s", r.logfile)
    r.finish()
    if is_main():
        print_summary(r)
    return r


def failure_log(plugin_name: str, mode: str, configfile: str | Path | None, cli_values: dict | None, error: BaseException, original: BaseException) -> Path | None:
    """The log of a run that failed before its mode folder was ready: in
    ``OUTPUTPATH/<mode>/logs`` when OUTPUTPATH can be told and written, else in :func:`fallback_logdir`."""
    modedir = _guess_modedir(mode, configfile, cli_values or {})
    for folder in (modedir / "logs" if modedir else None, fallback_logdir()):
        if folder is None:
            continue
        try:
            log, path = setup_logger(folder, f"{plugin_name}.{mode}.failed", quiet=True)
        except OSError:
            continue
        log.info("biolm %s %s (config file %s)", plugin_name, mode, configfile or "none")
        _log_failure(log, error, original)
        close_logger(log)
        return path
    return None


def _guess_modedir(mode: str, configfile: str | Path | None, cli: dict) -> Path | None:
    """The mode folder as far as a config that failed to resolve tells it (or None)."""
    try:
        data = load_yaml(configfile) if configfile else {}
    except BiolmError:
        data = {}

    def raw(section: str, key: str, attr: str):
        value = cli.get(attr)
        if value is None and isinstance(data.get(section), dict):
            value = data[section].get(key)
        return value if isinstance(value, str) and value else None

    source = MODES[mode].source if mode in MODES else None
    out = cli.get("outputpath") or data.get("outputpath")
    if not (isinstance(out, str) and out) and source:
        filepath = raw(section_title(source), "filepath", f"{source}.filepath")
        out = default_outputpath(filepath) if filepath else None
    if not (isinstance(out, str) and out):
        return None
    sub = raw("inference model", "outputdir", "inference_model.outputdir") if mode in ("predict", "interpret") else None
    return Path(out) / (sub if sub and _folder_name(sub) else mode)


def _folder_name(name: str) -> bool:
    """A plain folder name: no path, not ``.`` or ``..``."""
    return Path(name).name == name and name not in (".", "..")


def fallback_logdir() -> Path:
    """Where the log of a run goes when its OUTPUTPATH is unknown or unusable."""
    import tempfile

    return Path(tempfile.gettempdir()) / "biolm-logs"


def _log_failure(log: logging.Logger, error: BaseException, original: BaseException) -> None:
    """The error in the log file only (the console gets its one line from the CLI)."""
    for h in log.handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.CRITICAL + 1)
    if isinstance(error, BiolmError):
        log.error("error: %s", error)
    else:
        log.error("unexpected error: %s: %s", type(original).__name__, original, exc_info=original)


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
