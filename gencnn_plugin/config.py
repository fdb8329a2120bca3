"""Training settings: the :class:`TrainConfig` dataclass, YAML recipes in ``zoo_configs/``, overrides from the CLI.

A recipe is loaded by name (``lenet_mnist``) or path; unknown keys and wrong values fail before training starts,
naming the key. The resolved config is saved in each run folder as ``config.yaml``. A recipe or a run's config is
data: it can choose architecture options and a weights file (read weights-only), never trust (``--trust-pickle``
exists only on the command line and as an argument of :func:`gencnn_plugin.trainer.train`).
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .batchnorm import GG_BATCHNORM
from .data import DATASETS
from .distributed import GG_ESTIMATORS
from .runtime import PRECISIONS
from .schedule import AUTO_RULES, LR_POLICIES, MODES
from .settings import SettingsError, check, from_mapping, setting

__all__ = ["TrainConfig", "load_config", "config_from_dict", "ConfigError", "CONFIG_DIR", "HMC_PRESET_DIR",
           "list_configs", "read_yaml"]

# zoo_configs/ ships beside the package in a source checkout and inside it in a wheel (see pyproject.toml).
_PKG = Path(__file__).resolve().parent
CONFIG_DIR = next((p for p in (_PKG / "zoo_configs", _PKG.parent / "zoo_configs") if p.is_dir()),
                  _PKG.parent / "zoo_configs")
HMC_PRESET_DIR = CONFIG_DIR / "hmc"
ConfigError = SettingsError  # a recipe, preset or override that cannot be used (the API's name for it)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
# keys that older run folders hold and that are no longer settings: trust is never read from a file
_REMOVED = {"trust_pickle": "trust is given only on the command line (--trust-pickle)"}
# settings that say which files a command writes: only the person running it chooses them (flags or code), never a
# recipe or a run's config.yaml (which records them, and is read back on --resume)
_COMMAND_LINE_ONLY = ("out", "resume")


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the paper's LeNet/MNIST setting (section 4.1)."""

    # model
    model: str = setting("lenet", "model spec: lenet, timm:<name>, tv:<name>")
    num_classes: int | None = setting(None, "output classes (default: the dataset's)", ge=1, le=1_000_000)
    in_chans: int | None = setting(None, "input channels (default: 1 for MNIST-like data, 3 for image folders)",
                                   ge=1, le=64)
    img_size: int | None = setting(None, "input side in pixels (default: 28 for MNIST-like data, 224 for image "
                                         "folders)", ge=8, le=4096)
    mean: list[float] | None = setting(None, "input mean per channel (default: the model's if it fits in_chans, else "
                                             "the dataset's)", metavar="M")
    std: list[float] | None = setting(None, "input std per channel", metavar="S")
    model_kwargs: dict = setting({}, "architecture options for the constructor (e.g. drop_rate, pad_type)",
                                 flag=False)
    weights: str | None = setting(None, "local weights to start from (safetensors, or a state dict read "
                                        "weights-only)", aliases=("weights_file",), metavar="FILE")
    # data
    dataset: str = setting("mnist", "dataset", choices=DATASETS)
    data_dir: str | None = setting(None, "dataset folder (default: $GENCNN_DATA)", metavar="DIR")
    train_subset: int | None = setting(None, "train on the first N images only", ge=1, metavar="N")
    workers: int = setting(4, "DataLoader workers for image folders", ge=0, le=256)
    # optimisation (Caffe's lenet_solver.prototxt and the paper)
    mode: str = setting("gg+dg", "dg, gg, gg+dg (GG for switch_epoch epochs, then DG), auto (GG, then DG by "
                                 "auto_rule), mix (lambda GG + (1 - lambda) DG every step)", choices=MODES)
    epochs: int = setting(25, "epochs", ge=1, le=1_000_000)
    batch_size: int = setting(64, "training batch size (GG's sample of q(x))", ge=1, le=1 << 20)
    eval_batch_size: int = setting(1000, "evaluation batch size", ge=1, le=1 << 20)
    lr: float = setting(0.01, "base learning rate", gt=0, le=1e6)
    momentum: float = setting(0.9, "SGD momentum", ge=0, le=1)
    weight_decay: float = setting(0.0005, "weight decay", ge=0, le=1e3)
    bias_lr_mult: float = setting(1.0, "learning-rate multiplier of biases (Caffe's LeNet: 2)", ge=0, le=1e3)
    lr_policy: str = setting("inv", "learning-rate policy within a phase", choices=LR_POLICIES)
    lr_gamma: float = setting(1e-4, "inv: base (1 + gamma t)^-power; step: factor per step", gt=0, le=1e6)
    lr_power: float = setting(0.75, "inv policy's power", ge=0, le=1e3)
    lr_step_epochs: int = setting(30, "step policy: multiply by lr_gamma every this many epochs", ge=1)
    switch_epoch: int = setting(16, "gg+dg: GG epochs before DG; auto: the most GG epochs", ge=0)
    switch_lr: float = setting(0.003, "base learning rate of the DG phase (gg+dg and auto)", gt=0, le=1e6)
    switch_reset: bool = setting(True, "start the DG phase with a fresh optimizer (no momentum carried over), as a "
                                       "new Caffe solver would; --no-switch-reset carries it (gencnn 0.1)")
    auto_rule: str = setting("holdout", "auto: switch when the held-out error stopped improving (holdout) or when "
                                        "the ESS settled (ess)", choices=AUTO_RULES)
    holdout: int = setting(5000, "auto/holdout: training images held out to decide the switch (not trained on)",
                           ge=1, le=1_000_000)
    patience: int = setting(3, "auto/holdout: switch after this many GG epochs without a better held-out error",
                            ge=1, le=1000)
    ess_threshold: float = setting(0.1, "auto/ess: switch when the epoch's mean normalised ESS falls below this",
                                   ge=0, le=1)
    ess_plateau: float | None = setting(0.01, "auto/ess: ... or falls by less than this fraction in an epoch "
                                              "(None: the threshold only)", ge=0, le=1)
    mix_start: float = setting(1.0, "mix: the GG weight lambda at the first epoch", ge=0, le=1)
    mix_end: float = setting(0.0, "mix: the GG weight lambda at the last epoch", ge=0, le=1)
    label_smoothing: float = setting(0.0, "label smoothing of the DG cross-entropy", ge=0, lt=1)
    gg_batchnorm: str = setting("batch", "BatchNorm during GG: batch statistics (batch), without gradient "
                                         "(detached), or running statistics (frozen)", choices=GG_BATCHNORM)
    gg_estimator: str = setting("local", "DDP: GG's q(x) is each process's batch (local) or all of them (global)",
                                choices=GG_ESTIMATORS)
    # run
    device: str = setting("auto", "auto, cpu, cuda, cuda:N")
    precision: str = setting("fp32", "fp32 (TF32 off), tf32, bf16 or fp16 autocast (CUDA; fp32 on the CPU)",
                             choices=PRECISIONS, aliases=("amp",), legacy={"none": "fp32"})
    deterministic: bool = setting(False, "deterministic algorithms and seeded data order: the same seed gives the "
                                         "same weights on the same device (slower on GPUs)")
    seed: int = setting(0, "random seed (initialisation, data order, dropout)", ge=0, le=2**32 - 1)
    out: str | None = setting(None, "run folder (default: runs/<name>-<mode>-s<seed>-<time>)", metavar="DIR")
    resume: str | None = setting(None, "run folder (or its train_state.pt) to continue", metavar="RUN")
    name: str = setting("run", "run name (letters, digits, _ . + -; the recipe's file name by default)")
    log_interval: int = setting(100, "steps between progress updates", ge=1)

    def __post_init__(self) -> None:
        check(self)
        from .specs import UnknownModelError, check_model_kwargs, parse_spec

        try:
            parse_spec(self.model)
        except UnknownModelError as e:
            raise ConfigError(f"model: {e}") from None
        try:
            self.model_kwargs = check_model_kwargs(self.model_kwargs, "model_kwargs")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(f"name: {self.name[:40]!r} must be 1-64 letters, digits, _ . + - (it names a folder)")
        if self.mode != "dg" and self.batch_size < 2:
            raise ConfigError("batch_size: GG uses the batch as its sample of q(x) and needs batch_size >= 2")
        if self.mode == "gg+dg" and self.switch_epoch > self.epochs:
            raise ConfigError(f"switch_epoch: mode gg+dg switches to DG after switch_epoch={self.switch_epoch} epochs "
                              f"but the run has epochs={self.epochs}; lower --switch-epoch or raise --epochs")


def list_configs(folder: Path = CONFIG_DIR) -> list[str]:
    """Names of the recipes in ``folder`` (zoo_configs/ for training, zoo_configs/hmc/ for sampler presets)."""
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def config_from_dict(values: dict[str, Any], base: Any = None, cls: type = TrainConfig) -> Any:
    """A validated ``cls`` (TrainConfig, HMCConfig, ...): ``base`` (or the defaults) updated with ``values``."""
    values = dict(values)
    for key, why in _REMOVED.items():
        if key in values and key not in {f for f in getattr(cls, "__dataclass_fields__", {})}:
            if values.pop(key):
                warnings.warn(f"ignored {key}: true from a file: {why}", UserWarning, stacklevel=2)
    return from_mapping(cls, values, base)


def read_yaml(path: Path) -> dict[str, Any]:
    """A recipe file as a mapping (``yaml.safe_load``: no tags, no objects)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from None
    try:
        loaded = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys to values")
    return dict(loaded or {})


def load_config(name_or_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                cls: type = TrainConfig, folder: Path = CONFIG_DIR, explicit: dict[str, Any] | None = None) -> Any:
    """Load a recipe by name (``folder``/NAME.yaml) or path, then apply ``overrides`` (None values are skipped: a
    flag not given) and ``explicit`` values (None included: ``--set key=null``)."""
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
        values = read_yaml(path)
        for key in _COMMAND_LINE_ONLY if cls is TrainConfig else ():
            value = values.pop(key, None)
            own_folder = key == "out" and isinstance(value, str) and Path(value).resolve() == path.parent.resolve()
            if value is not None and not own_folder:  # a run's config.yaml records its own folder: no news
                warnings.warn(f"ignored {key} from {path.name}: which folder a run writes is chosen on the command "
                              f"line (--{key})", UserWarning, stacklevel=2)
        if "name" in getattr(cls, "__dataclass_fields__", {}):
            values.setdefault("name", re.sub(r"[^A-Za-z0-9_.+-]", "_", path.stem).lstrip("._+-")[:64] or "run")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values.update(explicit or {})
    return config_from_dict(values, cls=cls)
