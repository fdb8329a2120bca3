"""Training settings: the :class:`TrainConfig` dataclass, YAML recipes in ``zoo_configs/``, overrides from the CLI.

A recipe is loaded by name (``lenet_mnist``) or path; unknown keys and wrong types fail before training starts,
naming the key. The resolved config is saved in each run folder as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TrainConfig", "load_config", "config_from_dict", "ConfigError", "CONFIG_DIR", "HMC_PRESET_DIR",
           "list_configs"]

# zoo_configs/ ships beside the package in a source checkout and inside it in a wheel (see pyproject.toml).
_PKG = Path(__file__).resolve().parent
CONFIG_DIR = next((p for p in (_PKG / "zoo_configs", _PKG.parent / "zoo_configs") if p.is_dir()),
                  _PKG.parent / "zoo_configs")
HMC_PRESET_DIR = CONFIG_DIR / "hmc"


class ConfigError(ValueError):
    """A recipe or override that cannot be used."""


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the paper's LeNet/MNIST setting (section 4.1)."""

    # model
    model: str = "lenet"
    num_classes: int | None = None  # None: the dataset's
    in_chans: int | None = None  # None: 1 for MNIST, 3 for image folders
    img_size: int | None = None  # None: 28 for MNIST, 224 for image folders
    mean: list[float] | None = None  # None: the model's own if it fits in_chans, else the dataset's
    std: list[float] | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. drop_rate, pad_type
    weights_file: str | None = None  # local weights to start from (safetensors or a weights_only state dict)
    trust_pickle: bool = False  # unpickle weights_file fully (only for files you trust: a pickle can run code)
    # data
    dataset: str = "mnist"  # mnist | fashion-mnist | imagefolder | synthetic
    data_dir: str | None = None  # None: $GENCNN_DATA
    train_subset: int | None = None  # first N training images, for quick runs
    workers: int = 4  # DataLoader workers for imagefolder
    # optimisation (Caffe's lenet_solver.prototxt and the paper)
    mode: str = "gg+dg"  # dg | gg | gg+dg | auto
    epochs: int = 25
    batch_size: int = 64
    eval_batch_size: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0005
    bias_lr_mult: float = 1.0  # Caffe's LeNet trains biases at 2x the base LR (lr_mult: 2)
    lr_policy: str = "inv"  # inv | step | cosine | fixed
    lr_gamma: float = 1e-4
    lr_power: float = 0.75
    lr_step_epochs: int = 30  # step policy: multiply by lr_gamma every this many epochs
    switch_epoch: int = 16  # gg+dg: GG epochs before DG
    switch_lr: float = 0.003  # base LR of the DG phase (gg+dg and auto)
    ess_threshold: float = 0.1  # auto: switch when the epoch's mean normalised ESS falls below this ...
    gg_estimator: str = "local"  # DDP: q(x) = each rank's batch (local) or all ranks' batches (global)
    ess_plateau: float | None = 0.01  # ... or falls by less than this fraction in an epoch (None: threshold only)
    # run
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 | fp16 (CUDA only)
    seed: int = 0
    out: str | None = None  # run folder; None: runs/<name>-<mode>-s<seed>-<time>
    resume: str | None = None  # run folder or train_state.pt to continue
    name: str = "run"
    log_interval: int = 100


def list_configs(folder: Path = CONFIG_DIR) -> list[str]:
    """Names of the recipes in ``folder`` (zoo_configs/ for training, zoo_configs/hmc/ for sampler presets)."""
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type hint; ints pass for floats and YAML strings like '1e-4' are parsed."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _check_type(key, value, opt)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(key, v, item) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {type(value).__name__} {value!r}")


def config_from_dict(values: dict[str, Any], base: Any = None, cls: type = TrainConfig) -> Any:
    """A validated ``cls`` (TrainConfig, HMCConfig, ...): ``base`` (or the defaults) updated with ``values``."""
    hints = typing.get_type_hints(cls)
    out = dataclasses.asdict(base) if base is not None else {}
    for key, value in values.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), list(hints), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
        out[key] = _check_type(key, value, hints[key])
    try:
        cfg = cls(**out)
    except ValueError as e:  # a dataclass's own __post_init__ checks
        raise ConfigError(str(e)) from None
    if cls is TrainConfig:
        _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    from .schedule import MODES
    from .specs import UnknownModelError, parse_spec

    try:
        parse_spec(cfg.model)
    except UnknownModelError as e:
        raise ConfigError(f"model: {e}") from None

    if cfg.mode not in MODES:
        raise ConfigError(f"mode: {cfg.mode!r} is not one of {', '.join(MODES)}")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}")
    if cfg.lr <= 0 or cfg.switch_lr <= 0:
        raise ConfigError(f"lr and switch_lr must be > 0, got {cfg.lr} and {cfg.switch_lr}")
    if cfg.mode in ("gg", "gg+dg", "auto") and cfg.batch_size < 2:
        raise ConfigError("batch_size: GG uses the batch as its sample of q(x) and needs batch_size >= 2")
    if cfg.mode == "gg+dg" and not 0 <= cfg.switch_epoch <= cfg.epochs:
        raise ConfigError(f"switch_epoch: must be in [0, epochs={cfg.epochs}], got {cfg.switch_epoch}")
    if cfg.gg_estimator not in ("local", "global"):
        raise ConfigError(f"gg_estimator: 'local' or 'global', got {cfg.gg_estimator!r}")
    from .data import DATASETS

    if cfg.dataset not in DATASETS:
        raise ConfigError(f"dataset: {cfg.dataset!r} is not one of {', '.join(DATASETS)}")
    if cfg.amp not in ("none", "bf16", "fp16"):
        raise ConfigError(f"amp: {cfg.amp!r} is not one of none, bf16, fp16")
    if cfg.lr_policy not in ("inv", "step", "cosine", "fixed"):
        raise ConfigError(f"lr_policy: {cfg.lr_policy!r} is not one of inv, step, cosine, fixed")


def load_config(name_or_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                cls: type = TrainConfig, folder: Path = CONFIG_DIR) -> Any:
    """Load a recipe by name (``folder``/NAME.yaml) or path, then apply ``overrides`` (None values are skipped)."""
    values: dict[str, Any] = {}
    if name_or_path is not None:
        path = Path(name_or_path)
        if not path.is_file():
            path = folder / f"{name_or_path}.yaml"
        if not path.is_file():
            known = list_configs(folder)
            close = difflib.get_close_matches(str(name_or_path), known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
            raise ConfigError(f"no recipe {str(name_or_path)!r} (not a file, not in {folder}){hint}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of keys to values")
        values = dict(loaded or {})
        if "name" in typing.get_type_hints(cls):
            values.setdefault("name", path.stem)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(values, cls=cls)
