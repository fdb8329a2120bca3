"""Checkpoints: one ``.safetensors`` file = weights + metadata (ModelInfo, training mode and epoch, provenance).

Every later command needs only this file. Its metadata is data, never arguments: it is read through a fixed schema
(:meth:`ModelInfo.from_dict`: types, ranges, sizes, and an allow-list of architecture options), and nothing in it
can name a file to load, grant trust or ask for a download. Training state for ``--resume`` (optimizer, schedule,
counters) lives beside it as ``train_state.pt``, read with ``torch.load(weights_only=True)``. All writes are atomic
(:mod:`gencnn_plugin.files`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_model
from torch import nn

from .files import atomic_path
from .specs import (
    MetadataError,
    ModelInfo,
    WeightsError,
    create_model,
    load_pickled,
    load_state_dict_checked,
    state_mismatch,
)

__all__ = ["save_checkpoint", "load_checkpoint", "read_metadata", "save_train_state", "load_train_state",
           "atomic_path", "resolve_checkpoint", "CheckpointError", "FORMAT_VERSION"]

FORMAT_VERSION = 2  # 2: ModelInfo's "spec" is called "model" (format 1 files are read too)
MAX_METADATA = 16 << 20  # bytes of JSON; class names of a 100k-class model fit easily
METADATA_KEY = "gencnn"
CHECKPOINT_NAME = "checkpoint.safetensors"
TRAIN_STATE_NAME = "train_state.pt"


class CheckpointError(ValueError):
    """A file that is not a readable gencnn checkpoint."""


def save_checkpoint(path: str | Path, model: nn.Module, info: ModelInfo, follow_symlinks: bool = True,
                    **extra: Any) -> Path:
    """Write weights and metadata atomically. ``extra`` (mode, epoch, dataset, config, ...) must be JSON-able.

    The model description is validated first, so a checkpoint we write is always one we can read back.
    """
    try:
        ModelInfo.from_dict(info.to_dict())
    except MetadataError as e:
        raise CheckpointError(f"cannot save {path}: {e}") from None
    meta = {"format_version": FORMAT_VERSION, "model": info.to_dict(), "torch": torch.__version__, **extra}
    with atomic_path(path, follow_symlinks) as tmp:
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
    if len(raw) > MAX_METADATA:
        raise CheckpointError(f"{path}: its metadata is {len(raw)} bytes, more than a checkpoint's ({MAX_METADATA})")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: its gencnn metadata is not valid JSON ({type(e).__name__})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{path}: its gencnn metadata has no model description")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelInfo, dict]:
    """Rebuild the model from the metadata and load its weights. Returns (model in eval mode, info, metadata)."""
    path = resolve_checkpoint(path)
    meta = read_metadata(path)
    try:
        info = ModelInfo.from_dict(meta["model"])
    except MetadataError as e:
        raise CheckpointError(f"{path}: {e}") from None
    _check_shapes_before_building(path, info)
    # only the validated description reaches the constructor: no weights file, trust or download from a file
    try:
        model, _ = create_model(info.model, num_classes=info.num_classes, in_chans=info.in_chans,
                                img_size=info.input_size[-1], mean=info.mean, std=info.std,
                                class_names=info.class_names, **info.kwargs)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, AssertionError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: its model description does not build {info.model} ({first})") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # e.g. a header intact, the data cut short
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    try:
        load_state_dict_checked(model, state, str(path))
    except WeightsError as e:
        raise CheckpointError(str(e)) from None
    return model.to(device).eval(), info, meta


def _check_shapes_before_building(path: Path, info: ModelInfo) -> None:
    """Compare the file's tensor names and shapes with the described model built on the ``meta`` device (no memory),
    so metadata that asks for a huge network fails before anything is allocated."""
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        with torch.device("meta"):
            model, _ = create_model(info.model, num_classes=info.num_classes, in_chans=info.in_chans,
                                    img_size=info.input_size[-1], mean=info.mean, std=info.std,
                                    class_names=info.class_names, **info.kwargs)
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError, NotImplementedError, AssertionError):
        return  # the full load below reports what is wrong
    problem = state_mismatch(model, shapes)
    if problem:
        raise CheckpointError(f"{path}: {problem}")


def save_train_state(path: str | Path, state: dict) -> Path:
    """Atomically write the resume state (tensors, numbers, strings, lists and dicts only); never through a link."""
    with atomic_path(path, follow_symlinks=False) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_train_state(path: str | Path) -> dict:
    """Read the resume state without unpickling arbitrary objects (no opt-out: we write these files ourselves)."""
    try:
        return load_pickled(path, opt_in=False)
    except WeightsError as e:
        raise CheckpointError(str(e)) from None


def open_model(source: str | Path, weights: str | Path | None = None, device: str | torch.device = "cpu",
               trust_pickle: bool = False, weights_file: str | Path | None = None,
               **spec_kwargs: Any) -> tuple[nn.Module, ModelInfo]:
    """A checkpoint file or run folder, or a model spec (optionally with a local ``weights`` file), in eval mode.

    ``spec_kwargs`` (num_classes, mean, std, architecture options such as pad_type) and ``trust_pickle`` apply to
    specs only; a checkpoint describes itself. ``weights_file`` is the deprecated name of ``weights``.
    """
    if weights_file is not None:
        warnings.warn("open_model(weights_file=...) is deprecated; use weights=", DeprecationWarning, stacklevel=2)
        weights = weights if weights is not None else weights_file
    path = Path(source)
    if str(source).strip() and path.exists():
        if weights is not None:
            raise CheckpointError(f"{source} is a checkpoint; --weights applies to a model spec")
        if spec_kwargs:
            raise CheckpointError(f"{source} is a checkpoint, which describes its model itself; "
                                  f"{', '.join(sorted(spec_kwargs))} apply to a model spec")
        model, info, _ = load_checkpoint(path, device)
        return model, info
    if str(source).endswith((".safetensors", ".pt", ".pth")) or "/" in str(source) or not str(source).strip():
        raise CheckpointError(f"{source!r}: no such file" if not str(source).strip() else f"{source}: no such file")
    model, info = create_model(str(source), weights=weights, trust_pickle=trust_pickle, **spec_kwargs)
    return model.to(device).eval(), info
