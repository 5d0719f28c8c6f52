"""Saving and loading fine-tuned fold models (a fold folder holds everything predict needs)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BiolmError
from .outputs import read_json, save_torch, write_json
from .scaling import LabelEncoder, LabelScaler

WEIGHTS = "pytorch_model.bin"


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
    shutil.copyfile(tokenizer_path, folddir / "tokenizer.json")
    scaler_json: dict = {"task": meta["task"]}
    if scaler is not None:
        scaler_json["scaling"] = scaler.to_json()
    if encoder is not None:
        scaler_json["classes"] = encoder.classes
    write_json(folddir / "scaler.json", scaler_json)


def find_fold_dirs(path: str | Path) -> list[Path]:
    """A fold folder itself, or every fold folder below a cross-validation parent (sorted)."""
    p = Path(path)
    if not p.exists():
        raise BiolmError(f"inference model.pretrainedmodel: {p} does not exist")
    if (p / "config.json").exists() and (p / WEIGHTS).exists():
        return [p]
    folds = sorted((d for d in p.iterdir() if d.is_dir() and (d / "config.json").exists() and (d / WEIGHTS).exists()), key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))
    if not folds:
        raise BiolmError(f"inference model.pretrainedmodel: {p} holds no fine-tuned model (no {WEIGHTS} + config.json, nor fold folders with them)")
    return folds


def load_fold(folddir: Path, registry: Any, device: Any = "cpu") -> FoldModel:
    import torch

    from .hookspecs import ModelInfo

    meta = read_json(folddir / "config.json")
    if meta.get("task") not in ("regression", "classification") or "n_outputs" not in meta:
        raise BiolmError(f"inference model.pretrainedmodel: {folddir} holds a {meta.get('task', 'unknown')} model, not a fine-tuned one (use OUTPUTPATH/fine-tune or a fold folder in it)")
    plugin = registry.plugin(meta["plugin"])
    tok_spec = registry.tokenizer(meta.get("encoding", plugin.tokenizer))
    tokenizer = tok_spec.load(folddir / "tokenizer.json")
    model_cfg = plugin.model_schema(**meta.get("model", {})) if plugin.model_schema else None
    info = ModelInfo(task=meta["task"], n_outputs=meta["n_outputs"], in_channels=meta["in_channels"], blocksize=meta["blocksize"], tokenizer=tokenizer, extra=meta.get("extra", {}), architecture=meta.get("architecture"))
    model = registry.model(plugin.name).build(model_cfg, info)
    state = torch.load(folddir / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval()
    sj = read_json(folddir / "scaler.json")
    scaler = LabelScaler.from_json(sj["scaling"]) if "scaling" in sj else None
    encoder = LabelEncoder(sj["classes"]) if "classes" in sj else None
    return FoldModel(folddir, plugin.name, meta["task"], model, tokenizer, scaler, encoder, meta)
