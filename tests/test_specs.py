"""Model specs: every zoo family becomes a GG-trainable classifier; the paper's networks live in timm's registry."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from gencnn_plugin import create_model, generative_loss
from gencnn_plugin.specs import UnknownModelError, parse_spec

# (spec, in_chans, img_size): different families (plain conv, residual, depthwise, SE, squeeze, shuffle, NF,
# LayerNorm convnets, transformers), a few on 1-channel input.
ZOO = [
    ("lenet", 1, 28),
    ("timm:lenet_caffe_bn", 1, 28),
    ("timm:test_zfnet", 3, 64),
    ("timm:resnet18", 1, 28),
    ("timm:mobilenetv3_small_050", 3, 32),
    ("timm:test_efficientnet", 3, 32),
    ("timm:test_convnext", 1, 32),
    ("timm:test_vit", 3, 32),
    ("timm:test_nfnet", 3, 32),
    ("timm:test_byobnet", 3, 32),
    ("timm:regnetx_002", 3, 32),
    ("tv:resnet18", 1, 32),
    ("tv:squeezenet1_1", 3, 64),
    ("tv:mobilenet_v2", 3, 32),
    ("tv:shufflenet_v2_x0_5", 3, 32),
    ("tv:alexnet", 3, 64),
    ("tv:efficientnet_b0", 1, 32),
]


@pytest.mark.parametrize("spec,in_chans,img_size", ZOO, ids=[z[0] for z in ZOO])
def test_one_generative_step(spec, in_chans, img_size):
    torch.manual_seed(0)
    model, info = create_model(spec, num_classes=5, in_chans=in_chans, img_size=img_size)
    assert info.num_classes == 5 and info.in_chans == in_chans and info.input_size == (in_chans, img_size, img_size)
    assert len(info.mean) == len(info.std) == in_chans and len(info.class_names) == 5
    model.train()
    x = torch.randn(6, in_chans, img_size, img_size)
    y = torch.tensor([0, 1, 1, 3, 4, 0])
    logits = model(x)
    assert logits.shape == (6, 5)
    loss = generative_loss(logits, y)
    loss.backward()
    assert torch.isfinite(loss)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    # the signal reaches the input layer: the first weight tensor moves
    first = next(p for n, p in params if p.ndim > 1)
    assert first.grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    assert torch.isfinite(model(x)).all()


def test_paper_models_are_in_timms_registry():
    for name in ("lenet_caffe", "lenet_caffe_bn", "zfnet", "test_zfnet"):
        assert timm.is_model(name)
    m = timm.create_model("lenet_caffe")
    assert m.pretrained_cfg["input_size"] == (1, 28, 28)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert [c.out_channels for c in convs] == [20, 50] and all(c.kernel_size == (5, 5) for c in convs)
    assert [fc.out_features for fc in linears] == [500, 10] and linears[0].in_features == 800
    assert sum(isinstance(mod, nn.ReLU) for mod in m.modules()) == 1  # Caffe LeNet: one ReLU, after fc1
    assert not any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in m.modules())
    bn = timm.create_model("lenet_caffe_bn")
    assert [type(mod).__name__ for mod in bn.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)] == [
        "BatchNorm2d", "BatchNorm2d", "BatchNorm1d"]


def test_lenet_uses_caffe_input_scaling():
    _, info = create_model("lenet")
    assert info.mean == (0.0,) and info.std == pytest.approx((256 / 255,))


def test_dropout_and_batchnorm_follow_the_zoo():
    model, _ = create_model("tv:alexnet", num_classes=3)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    model, _ = create_model("timm:resnet18", num_classes=3)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_imagenet_class_names():
    _, info = create_model("tv:squeezenet1_1")
    assert info.num_classes == 1000 and info.class_names[967] == "espresso"
    _, info = create_model("timm:mobilenetv2_100")
    assert "espresso" in info.class_names[967]


@pytest.mark.parametrize("spec,hint", [("timm:resnet19x", "resnet18"), ("tv:mobilenet_v9", "mobilenet_v2"),
                                       ("caffe:lenet", "timm:<name>"), ("lenett", "lenet")])
def test_unknown_models_suggest_close_names(spec, hint):
    with pytest.raises(UnknownModelError, match=hint):
        parse_spec(spec)


def test_weights_file_round_trip(tmp_path):
    from safetensors.torch import save_file

    model, _ = create_model("lenet")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    x = torch.randn(2, 1, 28, 28)
    for name in ("w.safetensors", "w.pt"):
        other, _ = create_model("lenet", weights=tmp_path / name)
        torch.testing.assert_close(other.eval()(x), model.eval()(x))


@pytest.mark.parametrize("spec,file,kwargs,norm,expected", [
    ("tv:squeezenet1_1", "squeezenet1_1_imagenet.safetensors", {}, None, "tiger cat"),
    ("timm:mobilenetv2_100", "mobilenetv2_100_imagenet.safetensors", {"pad_type": "same"}, (0.5,), "tiger cat"),
])
def test_local_imagenet_weights_classify_a_photo(shared_dir, spec, file, kwargs, norm, expected):
    import torchvision.transforms as T
    from PIL import Image

    model, info = create_model(spec, weights=shared_dir / "weights" / file, mean=norm, std=norm, **kwargs)
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(info.mean, info.std)])
    x = tf(Image.open(shared_dir / "data" / "images" / "chelsea.png").convert("RGB"))[None]
    with torch.no_grad():
        assert expected in info.class_names[model.eval()(x).argmax(1).item()]


def test_a_mean_without_a_std_is_kept():
    _, info = create_model("lenet", mean=(0.5,))
    assert info.mean == (0.5,) and info.std == pytest.approx((256 / 255,))  # the std alone is the default
    _, info = create_model("lenet", std=(2.0,))
    assert info.mean == (0.0,) and info.std == (2.0,)
