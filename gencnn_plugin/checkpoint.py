"""Checkpoints: one ``.safetensors`` file = weights + metadata (ModelInfo, training mode and epoch, provenance).

Every later command needs only this file. Training state for ``--resume`` (optimizer, schedule, counters, RNG)
lives beside it as ``train_state.pt``, read with ``torch.load(weights_only=True)``. All writes are atomic: a
temporary file in the same folder, fsync, then ``os.replace``, so a crash leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_model
from torch import nn

from .specs import ModelInfo, WeightsError, create_model, load_pickled, load_state_dict_checked

__all__ = ["save_checkpoint", "load_checkpoint", "read_metadata", "save_train_state", "load_train_state",
           "atomic_path", "resolve_checkpoint", "CheckpointError", "FORMAT_VERSION"]

FORMAT_VERSION = 1
METADATA_KEY = "gencnn"
CHECKPOINT_NAME = "checkpoint.safetensors"
TRAIN_STATE_NAME = "train_state.pt"


class CheckpointError(ValueError):
    """A file that is not a readable gencnn checkpoint."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, model: nn.Module, info: ModelInfo, **extra: Any) -> Path:
    """Write weights and metadata atomically. ``extra`` (mode, epoch, dataset, config, ...) must be JSON-able."""
    meta = {"format_version": FORMAT_VERSION, "model": info.to_dict(), "torch": torch.__version__, **extra}
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    return Path(path)


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint file or a run folder holding ``checkpoint.safetensors``."""
    path = Path(path)
    if path.is_dir():
        if (path / CHECKPOINT_NAME).is_file():
            return path / CHECKPOINT_NAME
        raise CheckpointError(f"{path} is a folder without {CHECKPOINT_NAME}")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        raise CheckpointError(f"{path} is not a gencnn checkpoint (those are .safetensors files with metadata); to "
                              f"use a state dict, name its model: SPEC --weights {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty")
    return path


def read_metadata(path: str | Path) -> dict:
    """The gencnn metadata of a checkpoint, without loading its weights."""
    path = resolve_checkpoint(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    if raw is None:
        raise CheckpointError(f"{path} has no gencnn metadata: name its model and pass the file as weights "
                              f"(SPEC --weights {path.name}, e.g. tv:squeezenet1_1 --weights {path.name})")
    return json.loads(raw)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelInfo, dict]:
    """Rebuild the model from the metadata and load its weights. Returns (model in eval mode, info, metadata)."""
    path = resolve_checkpoint(path)
    meta = read_metadata(path)
    info = ModelInfo.from_dict(meta["model"])
    model, _ = create_model(info.spec, num_classes=info.num_classes, in_chans=info.in_chans,
                            img_size=info.input_size[-1], mean=info.mean, std=info.std,
                            class_names=info.class_names, **info.kwargs)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # e.g. a header intact, the data cut short
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    try:
        load_state_dict_checked(model, state, str(path))
    except WeightsError as e:
        raise CheckpointError(str(e)) from None
    return model.to(device).eval(), info, meta


def save_train_state(path: str | Path, state: dict) -> Path:
    """Atomically write the resume state (tensors, numbers, strings, lists and dicts only)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_train_state(path: str | Path) -> dict:
    """Read the resume state without unpickling arbitrary objects (no opt-out: we write these files ourselves)."""
    try:
        return load_pickled(path, opt_in=False)
    except WeightsError as e:
        raise CheckpointError(str(e)) from None


def open_model(source: str | Path, weights_file: str | Path | None = None, device: str | torch.device = "cpu",
               **spec_kwargs: Any) -> tuple[nn.Module, ModelInfo]:
    """A checkpoint file or run folder, or a model spec (optionally with a local ``weights_file``), in eval mode.

    ``spec_kwargs`` (num_classes, mean, std, constructor arguments such as pad_type) apply to specs only.
    """
    path = Path(source)
    if path.exists():
        if weights_file is not None:
            raise CheckpointError(f"{source} is a checkpoint; --weights applies to a model spec")
        model, info, _ = load_checkpoint(path, device)
        return model, info
    if str(source).endswith((".safetensors", ".pt", ".pth")) or "/" in str(source):
        raise CheckpointError(f"{source}: no such file")
    model, info = create_model(str(source), weights_file=weights_file, **spec_kwargs)
    return model.to(device).eval(), info
