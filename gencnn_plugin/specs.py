"""Model specs: ``lenet``, ``timm:<name>``, ``tv:<name>`` -> an ordinary ``nn.Module`` plus its :class:`ModelInfo`.

ModelInfo is what every later step (eval, sampling, export, the GUI) needs besides the weights: the input
normalisation, input size and class names. It travels inside each checkpoint's metadata.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageNetInfo
from torch import nn

from . import models as _paper_models  # noqa: F401  (registers lenet_caffe, zfnet into timm)

__all__ = ["ModelInfo", "create_model", "parse_spec", "list_specs", "adapt_input_channels", "load_state_dict_checked",
           "load_pickled", "check_model_kwargs", "state_mismatch", "UnknownModelError", "WeightsError",
           "MetadataError", "MODEL_KWARGS"]

# Short names for the paper's networks (Table 1 and 2).
ALIASES = {"lenet": "timm:lenet_caffe", "zfnet": "timm:zfnet", "alexnet": "tv:alexnet"}


class UnknownModelError(ValueError):
    """A spec that names no model of our registry, timm or torchvision."""


class WeightsError(ValueError):
    """A weights file that cannot be read, is refused (a pickle with code in it), or does not fit the model."""


class MetadataError(ValueError):
    """A model description (checkpoint metadata, a recipe's model options) outside its schema."""


# Constructor arguments that a checkpoint, a recipe or --model-arg may pass to timm/torchvision: architecture
# options only, with plain values. Never files, downloads or trust (weights, pretrained, checkpoint_path,
# pretrained_cfg, cache_dir, trust_pickle, ...): only the person running a command gives those, by their own flags.
MODEL_KWARGS = frozenset({
    # timm
    "drop_rate", "drop_path_rate", "drop_block_rate", "pad_type", "global_pool", "act_layer", "norm_layer",
    "output_stride", "stem_type", "stem_width", "channel_multiplier", "depth_multiplier", "width_multiplier",
    "proj_drop_rate", "attn_drop_rate", "pos_drop_rate", "class_token", "no_embed_class", "reg_tokens",
    "zero_init_last", "bn_eps", "bn_momentum", "fix_stem",
    # torchvision
    "dropout", "width_mult", "aux_logits", "transform_input", "init_weights", "stochastic_depth_prob",
    # ours (models/)
    "batch_norm", "widths", "hidden", "pool_size",
})
_WORD = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _plain(value: Any, depth: int = 0) -> bool:
    """A JSON scalar, a short identifier-like string (no path separators), or a short list of those."""
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return abs(value) < 2**31
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return bool(_WORD.fullmatch(value)) and ".." not in value
    if isinstance(value, (list, tuple)) and depth == 0:
        return len(value) <= 16 and all(_plain(v, 1) for v in value)
    return False


def check_model_kwargs(kwargs: Any, where: str = "model options") -> dict:
    """Constructor arguments as allowed by :data:`MODEL_KWARGS` with plain values; a MetadataError otherwise."""
    if not isinstance(kwargs, dict):
        raise MetadataError(f"{where}: expected a mapping of constructor arguments, got {type(kwargs).__name__}")
    for key, value in kwargs.items():
        if key not in MODEL_KWARGS:
            close = difflib.get_close_matches(str(key), sorted(MODEL_KWARGS), n=3)
            own = {"num_classes": "--num-classes", "in_chans": "--in-chans", "img_size": "--img-size",
                   "mean": "--mean", "std": "--std", "weights": "--weights", "weights_file": "--weights",
                   "trust_pickle": "--trust-pickle"}
            hint = (f"; use {own[key]}" if key in own else f"; did you mean {', '.join(close)}?" if close else
                    "; the allowed ones are gencnn_plugin.specs.MODEL_KWARGS (drop_rate, pad_type, global_pool, ...)")
            raise MetadataError(f"{where}: {str(key)[:40]!r} is not an architecture option gencnn passes to a "
                                f"constructor (weights, downloads and trust have their own flags){hint}")
        if not _plain(value):
            raise MetadataError(f"{where}: {key}={str(value)[:40]!r} is not a plain value (a number, a bool, a short "
                                "name without path separators, or a short list of those)")
    return dict(kwargs)


@dataclass
class ModelInfo:
    """What a classifier expects and produces, besides its weights. Its dict form is the checkpoint's model
    metadata, read back through :meth:`from_dict`, which validates every field: a file is data, never arguments."""

    model: str  # the spec, normalised: "timm:lenet_caffe", "tv:squeezenet1_1"
    num_classes: int
    in_chans: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)

    @property
    def spec(self) -> str:
        """Deprecated name of :attr:`model` (one release)."""
        warnings.warn("ModelInfo.spec is deprecated; use ModelInfo.model", DeprecationWarning, stacklevel=2)
        return self.model

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> ModelInfo:
        """A validated ModelInfo from metadata; MetadataError names the first field outside the schema."""
        if not isinstance(d, dict):
            raise MetadataError(f"model metadata: expected a mapping, got {type(d).__name__}")
        d = dict(d)
        if "model" not in d and "spec" in d:  # format 1 called it spec
            d["model"] = d.pop("spec")
        missing = [k for k in ("model", "num_classes", "in_chans", "input_size", "mean", "std") if k not in d]
        if missing:
            raise MetadataError(f"model metadata: missing {', '.join(missing)}")
        model = d["model"]
        if not isinstance(model, str) or not 0 < len(model) <= 200:
            raise MetadataError(f"model metadata: model must be a spec string, got {str(model)[:40]!r}")
        try:
            source, name = parse_spec(model)
        except UnknownModelError as e:
            raise MetadataError(f"model metadata: {e}") from None
        num_classes = _int(d, "num_classes", 1, 1_000_000)
        in_chans = _int(d, "in_chans", 1, 64)
        size = d["input_size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 3):
            raise MetadataError(f"model metadata: input_size must be [channels, height, width], got {str(size)[:40]}")
        size = tuple(_int({"input_size": v}, "input_size", 1, 4096) for v in size)
        if size[0] != in_chans:
            raise MetadataError(f"model metadata: input_size {size} does not start with in_chans={in_chans}")
        mean, std = _floats(d, "mean", in_chans), _floats(d, "std", in_chans)
        if any(v <= 0 for v in std):
            raise MetadataError(f"model metadata: std must be > 0, got {std}")
        names = d.get("class_names")
        if names in (None, []):
            names = [str(i) for i in range(num_classes)]
        if not isinstance(names, list) or len(names) != num_classes:
            raise MetadataError(f"model metadata: class_names must be a list of {num_classes} names")
        for i, n in enumerate(names):
            if not isinstance(n, str) or len(n) > 512 or _CONTROL.search(n):
                raise MetadataError(f"model metadata: class_names[{i}] is not a printable name of <= 512 characters")
        kwargs = check_model_kwargs(d.get("kwargs") or {}, "model metadata kwargs")
        return cls(f"{source}:{name}", num_classes, in_chans, size, mean, std, list(names), kwargs)


def _int(d: dict, key: str, lo: int, hi: int) -> int:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise MetadataError(f"model metadata: {key} must be an integer in [{lo}, {hi}], got {str(v)[:40]}")
    return int(v)


def _floats(d: dict, key: str, n: int) -> tuple[float, ...]:
    v = d[key]
    ok = isinstance(v, (list, tuple)) and len(v) == n and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    if not ok:
        raise MetadataError(f"model metadata: {key} must be {n} finite numbers (one per channel), got {str(v)[:40]}")
    return tuple(float(x) for x in v)


def list_specs(pattern: str = "*") -> list[str]:
    """All spec strings that :func:`create_model` accepts, optionally filtered by a glob on the name."""
    out = sorted(ALIASES) + [f"timm:{n}" for n in timm.list_models(pattern)]
    return out + [f"tv:{n}" for n in torchvision.models.list_models(module=torchvision.models) if _fnmatch(n, pattern)]


def _fnmatch(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(name, pattern)


_SPEC = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")


def _tv_classifiers() -> list[str]:
    """torchvision's image classifiers (not its detection, segmentation, video or optical-flow models, whose
    builders download backbone weights by default)."""
    return torchvision.models.list_models(module=torchvision.models)


def parse_spec(spec: str) -> tuple[str, str]:
    """``"timm:resnet18"`` -> ("timm", "resnet18"); bare names resolve through aliases, then timm, then torchvision.

    Only image classifiers are specs: letters, digits, ``_ . : -`` (so a spec read from a file can carry no markup or
    terminal escapes), timm's models (no ``hf-hub:`` or other remote names) and torchvision's classification models.
    """
    if not isinstance(spec, str) or not _SPEC.fullmatch(spec):
        raise UnknownModelError(f"{str(spec)[:60]!r} is not a model spec (lenet, timm:NAME, tv:NAME)")
    spec = ALIASES.get(spec, spec)
    if ":" in spec:
        source, name = spec.split(":", 1)
        if source not in ("timm", "tv"):
            raise UnknownModelError(f"unknown model source {source!r} in {spec!r}: use 'timm:<name>' or 'tv:<name>'")
    elif timm.is_model(spec):
        source, name = "timm", spec
    else:
        source, name = "tv", spec
    known = timm.is_model(name) if source == "timm" else name in _tv_classifiers()
    if not known:
        pool = timm.list_models() if source == "timm" else _tv_classifiers()
        close = difflib.get_close_matches(name, pool + list(ALIASES), n=5, cutoff=0.6)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {spec!r} ({'timm' if source == 'timm' else 'torchvision'}){hint}")
    return source, name


def adapt_input_channels(model: nn.Module, in_chans: int) -> nn.Module:
    """Replace the first 3-channel conv of a torchvision model by an ``in_chans`` one (timm does this itself).

    Existing weights are folded the way timm's ``adapt_input_conv`` folds them, so pretrained filters survive.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            new = nn.Conv2d(in_chans, module.out_channels, module.kernel_size, module.stride, module.padding,
                            module.dilation, module.groups, module.bias is not None, module.padding_mode)
            with torch.no_grad():
                new.weight.copy_(timm.models.adapt_input_conv(in_chans, module.weight))
                if module.bias is not None:
                    new.bias.copy_(module.bias)
            model.set_submodule(name, new)
            return model
    raise ValueError(f"found no 3-channel Conv2d to adapt to in_chans={in_chans} in {type(model).__name__}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _load_weights(model: nn.Module, path: str | Path, trust_pickle: bool = False) -> None:
    """Load a local weights file: safetensors, or a state dict through ``torch.load(weights_only=True)``.

    A pickle that holds anything but tensors and plain containers is refused, never executed; ``trust_pickle``
    (``--trust-pickle``) is the explicit opt-in to unpickle a file its user trusts.
    """
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path} is a folder, not a weights file")
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path} is empty")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise WeightsError(f"{path} is not a readable safetensors file ({_first_line(e)})") from None
    else:
        state = load_pickled(path, trust_pickle)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    load_state_dict_checked(model, state, str(path))


def load_pickled(path: str | Path, trust_pickle: bool = False, opt_in: bool = True):
    """``torch.load(weights_only=True)`` with one-line refusals; ``trust_pickle`` unpickles fully. ``opt_in``:
    whether the refusal may point at --trust-pickle (not for files only we write, such as train_state.pt)."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        found = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        hint = ("; if you trust this file, pass --trust-pickle (Python: trust_pickle=True), or convert it to "
                "safetensors") if opt_in else ""
        raise WeightsError(f"{path}: refused to unpickle it (weights only): it holds objects other than tensors and "
                           f"plain containers, which could run code ({found[0] if found else _first_line(e)[:100]})"
                           f"{hint}") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as e:
        raise WeightsError(f"{path} is not a readable PyTorch file ({_first_line(e)})") from None


def state_mismatch(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """One line naming the missing, unexpected and mis-shaped keys of a state (names -> shapes) against ``model``
    (which may live on the ``meta`` device), or None when they fit."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in own if k not in shapes]
    unexpected = [k for k in shapes if k not in own]
    other = [f"{k} {shapes[k]} in the file vs {own[k]} in the model" for k in own if k in shapes
             and tuple(shapes[k]) != own[k]]
    if not (missing or unexpected or other):
        return None

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    parts = [f"{len(missing)} missing ({few(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({few(unexpected)})" if unexpected else "",
             f"{len(other)} of another shape ({few(other)})" if other else ""]
    name = getattr(model, "default_cfg", {}).get("architecture") or type(model).__name__
    return f"the weights do not fit {name}: {'; '.join(p for p in parts if p)}"


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)``, with one line naming the missing, unexpected and mis-shaped keys."""
    problem = state_mismatch(model, {k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise WeightsError(f"{source}: {problem}")
    model.load_state_dict(state)


def create_model(
    model: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    default_mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    class_names: list[str] | None = None,
    weights_file: str | Path | None = None,
    **kwargs,
) -> tuple[nn.Module, ModelInfo]:
    """Build the classifier named by the spec ``model`` (``lenet``, ``timm:<name>``, ``tv:<name>``) and describe it.

    Args:
        model: the model spec.
        num_classes, in_chans, img_size: the output classes, input channels and input side (None: the model's).
        pretrained: ask timm/torchvision to download weights (needs a network; an explicit choice of the caller).
        weights: a local weights file (safetensors, or a state dict read with ``torch.load(weights_only=True)``).
        trust_pickle: unpickle ``weights`` fully (only for files you trust: a pickle can run code).
        mean, std: the input normalisation; default the model's own when they fit ``in_chans``, else
            ``default_mean_std`` (the dataset's statistics), else ImageNet's for 3 channels and 0.5/0.5 otherwise.
        class_names: names of the outputs (default: ImageNet's for 1000-class zoo models, else "0", "1", ...).
        weights_file: deprecated name of ``weights`` (one release).
        **kwargs: architecture options for the constructor, from :data:`MODEL_KWARGS` (e.g. ``drop_rate``,
            ``pad_type``).
    """
    if weights_file is not None:
        warnings.warn("create_model(weights_file=...) is deprecated; use weights=", DeprecationWarning, stacklevel=2)
        weights = weights if weights is not None else weights_file
    kwargs = check_model_kwargs(kwargs, "model options")
    for key, value, lo, hi in (("num_classes", num_classes, 1, 1_000_000), ("in_chans", in_chans, 1, 64),
                               ("img_size", img_size, 8, 8192)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi):
            raise ValueError(f"{key} must be an integer in [{lo}, {hi}], got {str(value)[:40]!r}")
    source, name = parse_spec(model)
    cfg_mean = cfg_std = None
    if source == "timm":
        model_kwargs = dict(kwargs)
        if num_classes is not None:
            model_kwargs["num_classes"] = num_classes
        if in_chans is not None:
            model_kwargs["in_chans"] = in_chans
        if img_size is not None:
            model_kwargs["img_size"] = img_size
        try:
            net = timm.create_model(name, pretrained=pretrained, **model_kwargs)
        except TypeError as e:
            if "img_size" not in str(e):
                raise ValueError(f"cannot build {model} with {kwargs or 'these options'}: {_first_line(e)}") from None
            model_kwargs.pop("img_size")  # convnets take any size; only some (ViTs) need it at construction
            net = _build(lambda: timm.create_model(name, pretrained=pretrained, **model_kwargs), model, kwargs)
        except (ValueError, KeyError, AssertionError, RuntimeError, AttributeError) as e:
            raise ValueError(f"cannot build {model} with {kwargs or 'these options'}: {_first_line(e)}") from None
        pcfg = getattr(net, "pretrained_cfg", {}) or {}
        cfg_mean, cfg_std = pcfg.get("mean"), pcfg.get("std")
        real_in_chans = in_chans or getattr(net, "in_chans", None) or pcfg.get("input_size", (3,))[0]
        default_size = pcfg.get("input_size", (3, 224, 224))[1:]
        if class_names is None and getattr(net, "num_classes", 0) == 1000 and name != "lenet_caffe":
            class_names = list(ImageNetInfo().label_descriptions())
    else:
        tv_kwargs = dict(kwargs)
        if num_classes is not None:
            tv_kwargs["num_classes"] = num_classes
        net = _build(lambda: torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None,
                                                          **tv_kwargs), model, kwargs)
        real_in_chans = in_chans or 3
        if real_in_chans != 3:
            adapt_input_channels(net, real_in_chans)
        cfg_mean, cfg_std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        default_size = (224, 224)
        if class_names is None and (num_classes or 1000) == 1000:
            w = torchvision.models.get_model_weights(name)
            class_names = list(next(iter(w)).meta.get("categories", [])) if len(w) else None
    if weights is not None:
        _load_weights(net, weights, trust_pickle)

    n_out = num_classes if num_classes is not None else getattr(net, "num_classes", 1000)
    if mean is None or std is None:  # the default for whichever was not given
        if cfg_mean is not None and len(cfg_mean) == real_in_chans:
            default = cfg_mean, cfg_std
        elif default_mean_std is not None:
            default = default_mean_std
        elif real_in_chans == 3:
            default = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        else:
            default = (0.5,) * real_in_chans, (0.5,) * real_in_chans
        mean = default[0] if mean is None else mean
        std = default[1] if std is None else std
    mean, std = _per_channel(mean, real_in_chans), _per_channel(std, real_in_chans)
    if any(v <= 0 for v in std):
        raise ValueError(f"std must be > 0 for every channel, got {std}")
    size = (img_size, img_size) if img_size is not None else tuple(default_size)
    info = ModelInfo(
        model=f"{source}:{name}", num_classes=int(n_out), in_chans=int(real_in_chans),
        input_size=(int(real_in_chans), int(size[0]), int(size[1])), mean=mean, std=std,
        class_names=list(class_names) if class_names else [str(i) for i in range(n_out)],
        kwargs=dict(kwargs),
    )
    return net, info


def _build(make, model: str, kwargs: dict):
    """A constructor call whose failures on bad options (a type, a value out of range) become one ValueError."""
    try:
        return make()
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError, AttributeError) as e:
        raise ValueError(f"cannot build {model} with {kwargs or 'these options'}: {_first_line(e)}") from None


def _per_channel(values, in_chans: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1 and in_chans > 1:
        values = values * in_chans
    if len(values) != in_chans:
        raise ValueError(f"mean/std have {len(values)} values but the model takes {in_chans} channels")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"mean/std must be finite numbers, got {values}")
    return values
