"""Caffe's LeNet (examples/mnist/lenet_train_test.prototxt), the network of the paper's Table 1."""

from __future__ import annotations

import math

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["LeNetCaffe", "lenet_caffe", "lenet_caffe_bn"]


def caffe_xavier_(module: nn.Module) -> None:
    """Caffe's default "xavier" filler: U(-a, a), a = sqrt(3 / fan_in); biases constant 0."""
    fan_in = module.weight[0].numel()
    bound = math.sqrt(3.0 / fan_in)
    nn.init.uniform_(module.weight, -bound, bound)
    nn.init.zeros_(module.bias)


class LeNetCaffe(nn.Module):
    """conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2, fc 500, ReLU, fc K. No ReLU after the convs (as in Caffe).

    Inputs are expected already scaled (Caffe's ``scale: 0.00390625``, i.e. pixels / 256); the pretrained_cfg
    records that as mean 0, std 256/255 for inputs in [0, 1]. ``batch_norm=True`` adds BatchNorm after each conv
    and after fc1 (``lenet_caffe_bn``): the same network with and without BN, to study GG under BatchNorm.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int = 28, drop_rate: float = 0.0,
                 batch_norm: bool = False, **kwargs) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, 20, 5)
        self.bn1 = nn.BatchNorm2d(20) if batch_norm else None
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.bn2 = nn.BatchNorm2d(50) if batch_norm else None
        self.pool2 = nn.MaxPool2d(2, 2)
        side = ((img_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"lenet_caffe needs img_size >= 12, got {img_size}")
        self.num_features = 50 * side * side
        self.fc1 = nn.Linear(self.num_features, 500)
        self.bn3 = nn.BatchNorm1d(500) if batch_norm else None
        self.relu1 = nn.ReLU(inplace=True)
        self.head_hidden_size = 500
        self.drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(500, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                caffe_xavier_(m)

    def get_classifier(self) -> nn.Module:
        return self.fc2

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc2 = nn.Linear(500, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            caffe_xavier_(self.fc2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.pool1(x if self.bn1 is None else self.bn1(x))
        x = self.conv2(x)
        return self.pool2(x if self.bn2 is None else self.bn2(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc1(x.flatten(1))
        x = self.drop(self.relu1(x if self.bn3 is None else self.bn3(x)))
        return x if pre_logits else self.fc2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_CFG = {
    "num_classes": 10, "input_size": (1, 28, 28), "mean": (0.0,), "std": (256.0 / 255.0,),
    "interpolation": "bilinear", "crop_pct": 1.0, "first_conv": "conv1", "classifier": "fc2",
    "license": "apache-2.0", "paper_ids": "arXiv:1412.6296",
}
default_cfgs = generate_default_cfgs({"lenet_caffe.untrained": dict(_CFG), "lenet_caffe_bn.untrained": dict(_CFG)})


@register_model
def lenet_caffe(pretrained: bool = False, **kwargs) -> LeNetCaffe:
    """Caffe's MNIST LeNet, as used in Table 1 of Dai, Lu & Wu."""
    return build_model_with_cfg(LeNetCaffe, "lenet_caffe", pretrained, **kwargs)


@register_model
def lenet_caffe_bn(pretrained: bool = False, **kwargs) -> LeNetCaffe:
    """``lenet_caffe`` with BatchNorm after conv1, conv2 and fc1 (not in the paper; a controlled variation)."""
    return build_model_with_cfg(LeNetCaffe, "lenet_caffe_bn", pretrained, batch_norm=True, **kwargs)
