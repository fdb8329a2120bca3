"""Model specs: ``lenet``, ``timm:<name>``, ``tv:<name>`` -> an ordinary ``nn.Module`` plus its :class:`ModelInfo`.

ModelInfo is what every later step (eval, sampling, export, the GUI) needs besides the weights: the input
normalisation, input size and class names. It travels inside each checkpoint's metadata.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageNetInfo
from torch import nn

from . import models as _paper_models  # noqa: F401  (registers lenet_caffe, zfnet into timm)

__all__ = ["ModelInfo", "create_model", "parse_spec", "list_specs", "adapt_input_channels", "load_state_dict_checked",
           "load_pickled", "UnknownModelError", "WeightsError"]

# Short names for the paper's networks (Table 1 and 2).
ALIASES = {"lenet": "timm:lenet_caffe", "zfnet": "timm:zfnet", "alexnet": "tv:alexnet"}


class UnknownModelError(ValueError):
    """A spec that names no model of our registry, timm or torchvision."""


class WeightsError(ValueError):
    """A weights file that cannot be read, is refused (a pickle with code in it), or does not fit the model."""


@dataclass
class ModelInfo:
    """What a classifier expects and produces, besides its weights."""

    spec: str
    num_classes: int
    in_chans: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        d["input_size"] = tuple(d["input_size"])
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


def list_specs(pattern: str = "*") -> list[str]:
    """All spec strings that :func:`create_model` accepts, optionally filtered by a glob on the name."""
    out = sorted(ALIASES) + [f"timm:{n}" for n in timm.list_models(pattern)]
    return out + [f"tv:{n}" for n in torchvision.models.list_models(module=torchvision.models) if _fnmatch(n, pattern)]


def _fnmatch(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(name, pattern)


def parse_spec(spec: str) -> tuple[str, str]:
    """``"timm:resnet18"`` -> ("timm", "resnet18"); bare names resolve through aliases, then timm, then torchvision."""
    spec = ALIASES.get(spec, spec)
    if ":" in spec:
        source, name = spec.split(":", 1)
        if source not in ("timm", "tv"):
            raise UnknownModelError(f"unknown model source {source!r} in {spec!r}: use 'timm:<name>' or 'tv:<name>'")
    elif timm.is_model(spec):
        source, name = "timm", spec
    else:
        source, name = "tv", spec
    known = timm.is_model(name) if source == "timm" else name in torchvision.models.list_models()
    if not known:
        pool = timm.list_models() if source == "timm" else torchvision.models.list_models()
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


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)``, with one line naming the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} in the model"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

        parts = [f"{len(missing)} missing ({few(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({few(unexpected)})" if unexpected else "",
                 f"{len(shapes)} of another shape ({few(shapes)})" if shapes else ""]
        name = getattr(model, "default_cfg", {}).get("architecture") or type(model).__name__
        raise WeightsError(f"{source}: the weights do not fit {name}: {'; '.join(p for p in parts if p)}")
    model.load_state_dict(state)


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def create_model(
    spec: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | None = None,
    pretrained: bool = False,
    weights_file: str | Path | None = None,
    trust_pickle: bool = False,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    default_mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    class_names: list[str] | None = None,
    **kwargs,
) -> tuple[nn.Module, ModelInfo]:
    """Build the classifier named by ``spec`` and describe it.

    ``pretrained=True`` asks timm/torchvision to download weights (needs a network); ``weights_file`` loads local
    ones. Mean/std: explicit values, else the model's own when they fit ``in_chans``, else ``default_mean_std``
    (the dataset's statistics), else ImageNet's for 3 channels and 0.5/0.5 otherwise. ``kwargs`` go to the
    model constructor (e.g. ``drop_rate``, ``pad_type``).
    """
    source, name = parse_spec(spec)
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
            model = timm.create_model(name, pretrained=pretrained, **model_kwargs)
        except TypeError as e:
            if "img_size" not in str(e):
                raise
            model_kwargs.pop("img_size")  # convnets take any size; only some (ViTs) need it at construction
            model = timm.create_model(name, pretrained=pretrained, **model_kwargs)
        pcfg = getattr(model, "pretrained_cfg", {}) or {}
        cfg_mean, cfg_std = pcfg.get("mean"), pcfg.get("std")
        real_in_chans = in_chans or getattr(model, "in_chans", None) or pcfg.get("input_size", (3,))[0]
        default_size = pcfg.get("input_size", (3, 224, 224))[1:]
        if class_names is None and getattr(model, "num_classes", 0) == 1000 and name != "lenet_caffe":
            class_names = list(ImageNetInfo().label_descriptions())
    else:
        tv_kwargs = dict(kwargs)
        if num_classes is not None:
            tv_kwargs["num_classes"] = num_classes
        weights = "DEFAULT" if pretrained else None
        model = torchvision.models.get_model(name, weights=weights, **tv_kwargs)
        real_in_chans = in_chans or 3
        if real_in_chans != 3:
            adapt_input_channels(model, real_in_chans)
        cfg_mean, cfg_std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        default_size = (224, 224)
        if class_names is None and (num_classes or 1000) == 1000:
            w = torchvision.models.get_model_weights(name)
            class_names = list(next(iter(w)).meta.get("categories", [])) if len(w) else None
    if weights_file is not None:
        _load_weights(model, weights_file, trust_pickle)

    n_out = num_classes if num_classes is not None else getattr(model, "num_classes", 1000)
    if mean is None or std is None:
        if cfg_mean is not None and len(cfg_mean) == real_in_chans:
            mean, std = cfg_mean, cfg_std
        elif default_mean_std is not None:
            mean, std = default_mean_std
        elif real_in_chans == 3:
            mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        else:
            mean, std = (0.5,) * real_in_chans, (0.5,) * real_in_chans
    mean, std = _per_channel(mean, real_in_chans), _per_channel(std, real_in_chans)
    size = (img_size, img_size) if img_size is not None else tuple(default_size)
    info = ModelInfo(
        spec=f"{source}:{name}", num_classes=int(n_out), in_chans=int(real_in_chans),
        input_size=(int(real_in_chans), int(size[0]), int(size[1])), mean=mean, std=std,
        class_names=list(class_names) if class_names else [str(i) for i in range(n_out)],
        kwargs=dict(kwargs),
    )
    return model, info


def _per_channel(values, in_chans: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1 and in_chans > 1:
        values = values * in_chans
    if len(values) != in_chans:
        raise ValueError(f"mean/std have {len(values)} values but the model takes {in_chans} channels")
    return values
