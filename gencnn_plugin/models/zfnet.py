"""Zeiler & Fergus's network in its "fast" (ZF-5) form, the second network of the paper's Table 2."""

from __future__ import annotations

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["ZFNet", "zfnet", "test_zfnet"]


class ZFNet(nn.Module):
    """conv1 7x7/2, LRN, pool; conv2 5x5/2, LRN, pool; conv3-5 3x3; pool; fc6, fc7 (dropout 0.5); fc8.

    ``widths`` scales the channels so that tiny test variants share the code.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, widths: tuple[int, ...] = (96, 256, 384, 384, 256),
                 hidden: int = 4096, drop_rate: float = 0.5, pool_size: int = 6, **kwargs) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, 7, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.LocalResponseNorm(3, alpha=5e-5, beta=0.75), nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(c1, c2, 5, stride=2), nn.ReLU(inplace=True),
            nn.LocalResponseNorm(3, alpha=5e-5, beta=0.75), nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        self.num_features = c5 * pool_size * pool_size
        self.head_hidden_size = hidden
        self.pre_logits = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(self.num_features, hidden), nn.ReLU(inplace=True), nn.Dropout(drop_rate),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(drop_rate),
        )
        self.fc8 = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc8

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc8 = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.features(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(x)
        return x if pre_logits else self.fc8(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    return {"num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (6, 6), "interpolation": "bilinear",
            "crop_pct": 0.875, "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "first_conv": "features.0",
            "classifier": "fc8", "paper_ids": "arXiv:1311.2901", **kwargs}


default_cfgs = generate_default_cfgs({
    "zfnet.untrained": _cfg(),
    "test_zfnet.untrained": _cfg(input_size=(3, 64, 64)),
})


@register_model
def zfnet(pretrained: bool = False, **kwargs) -> ZFNet:
    """ZF-net (fast), the paper's Table 2 network beside AlexNet."""
    return build_model_with_cfg(ZFNet, "zfnet", pretrained, **kwargs)


@register_model
def test_zfnet(pretrained: bool = False, **kwargs) -> ZFNet:
    """A tiny ZF-net for tests (timm's ``test_*`` convention)."""
    kwargs = {"widths": (8, 16, 16, 16, 16), "hidden": 32, "pool_size": 2, **kwargs}
    return build_model_with_cfg(ZFNet, "test_zfnet", pretrained, **kwargs)
