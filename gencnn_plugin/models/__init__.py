"""The paper's networks, registered into timm's registry on import (``timm.create_model("lenet_caffe")``)."""

from .lenet import LeNetCaffe, lenet_caffe
from .zfnet import ZFNet, test_zfnet, zfnet

__all__ = ["LeNetCaffe", "ZFNet", "lenet_caffe", "zfnet", "test_zfnet"]
