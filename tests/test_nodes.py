"""Node strings, layer listing, and truncated score functions on timm/torchvision models."""

from __future__ import annotations

import pytest
import torch

from gencnn_plugin import create_model
from gencnn_plugin.nodes import Node, NodeError, list_layers, node_score, parse_node

IMAGENET = ["tench", "goldfish", "tiger cat", "espresso, coffee"]


@pytest.mark.parametrize("text,expected", [
    ("logits:3", Node("logits", 3, (), "index")),
    ("tiger cat", Node("logits", 2, (), "index")),
    ("Espresso", Node("logits", 3, (), "index")),
    ("logits:goldfish", Node("logits", 1, (), "index")),
    ("conv1:5", Node("conv1", 5, (), "centre")),
    ("features.3.expand1x1:7,2,4", Node("features.3.expand1x1", 7, (2, 4), "unit")),
    ("layer1.0.relu_1:3,mean", Node("layer1.0.relu_1", 3, (), "mean")),
    ("blocks.0:12,0", Node("blocks.0", 12, (0,), "unit")),
])
def test_parse(text, expected):
    assert parse_node(text, IMAGENET) == expected


@pytest.mark.parametrize("text,match", [("", "empty"), ("tiger", "neither"), ("conv1:x", "integer"),
                                        ("conv1:1,2,3,4", "position"), ("logits:1,2", "one index"),
                                        ("conv1:1,avg", "expected")])
def test_parse_errors(text, match):
    with pytest.raises(NodeError, match=match):
        parse_node(text, IMAGENET)


def test_lenet_layers():
    model, info = create_model("lenet")
    layers = {li.name: li for li in list_layers(model, info)}
    assert layers["conv1"].shape == (20, 24, 24) and layers["conv2"].num_nodes == 50
    assert layers["fc1"].shape == (500,) and layers["logits"].num_nodes == 10
    assert list(layers)[-1] == "logits"


@pytest.mark.parametrize("spec,node,kw", [
    ("lenet", "conv2:7", {}),
    ("lenet", "fc1:3", {}),  # an in-place ReLU follows fc1: the node must see the pre-ReLU value
    ("tv:resnet18", "layer1.0.relu_1:5,mean", dict(num_classes=4)),  # the block's ReLU module is called twice
    ("tv:squeezenet1_1", "features.3.expand1x1:17,2,3", dict(num_classes=4)),
    ("timm:test_vit", "blocks.0:3", dict(num_classes=4, img_size=32)),  # (B, tokens, dim), mean over tokens
    ("timm:mobilenetv3_small_050", "blocks.1:4", dict(num_classes=4)),
])
def test_fx_and_hooks_agree(spec, node, kw):
    torch.manual_seed(0)
    model, info = create_model(spec, **kw)
    x = torch.randn(3, *info.input_size)
    fx, hook = node_score(model, info, node), node_score(model, info, node, use_fx=False)
    torch.testing.assert_close(fx(x), hook(x))
    xg = x.clone().requires_grad_(True)
    fx(xg).sum().backward()
    assert xg.grad.abs().sum() > 0


def test_reused_module_and_inplace_activation_are_exact():
    torch.manual_seed(0)
    model, info = create_model("tv:resnet18", num_classes=4)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    blk = model.layer1[0]
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    first = blk.relu(blk.bn1(blk.conv1(h)))
    second = blk.relu(blk.bn2(blk.conv2(first)) + h)
    for use_fx in (True, False):
        torch.testing.assert_close(node_score(model, info, "layer1.0.relu:2,4,5", use_fx)(x), first[:, 2, 4, 5])
        torch.testing.assert_close(node_score(model, info, "layer1.0.relu_1:2,4,5", use_fx)(x), second[:, 2, 4, 5])
    lenet, linfo = create_model("lenet")
    xs = torch.randn(64, 1, 28, 28)
    pre_relu = lenet.fc1(lenet.forward_features(xs).flatten(1))[:, 0]
    for use_fx in (True, False):
        torch.testing.assert_close(node_score(lenet, linfo, "fc1:0", use_fx)(xs), pre_relu)
    assert (pre_relu < 0).any()


def test_eval_mode_makes_the_score_deterministic():
    model, info = create_model("tv:alexnet", num_classes=3)
    model.train()
    score = node_score(model, info, "logits:1")
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(score(x), score(x))
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_several_nodes_share_the_batch():
    model, info = create_model("lenet")
    score = node_score(model, info, ["logits:1", "logits:4", "logits:7"])
    x = torch.randn(6, 1, 28, 28)
    torch.testing.assert_close(score(x), model.eval()(x)[torch.arange(6), torch.tensor([1, 1, 4, 4, 7, 7])])
    with pytest.raises(NodeError, match="one layer"):
        node_score(model, info, ["logits:1", "conv1:0"])


def test_log_probability_scores_log_softmax_of_each_chains_class():
    model, info = create_model("lenet")
    score = node_score(model, info, ["logits:1", "logits:4", "logits:7"])
    x = torch.randn(6, 1, 28, 28)
    expected = model.eval()(x).log_softmax(1)[torch.arange(6), torch.tensor([1, 1, 4, 4, 7, 7])]
    torch.testing.assert_close(score.log_probability()(x), expected)
    assert (score.log_probability()(x) <= 0).all() and not score.log_softmax  # the logit score is left as it was
    with pytest.raises(NodeError, match="output nodes"):
        node_score(model, info, "conv2:3").log_probability()


@pytest.mark.parametrize("node,match", [
    ("layer1.0.rel:3", "close names: layer1.0.relu"),
    ("conv1:64", r"conv1 has 64 channels \(0-63\)"),
    ("logits:4", r"logits has 4 outputs \(0-3\)"),
    ("layer1:3,99,0", r"Y=99 out of range: layer1 is 56 units along Y \(0-55\)"),
    ("fc:1,mean", "averages a conv channel"),
])
def test_node_errors_say_what_is_valid(node, match):
    model, info = create_model("tv:resnet18", num_classes=4)
    with pytest.raises(NodeError, match=match):
        node_score(model, info, node)


def test_imagenet_class_names_address_the_output():
    model, info = create_model("tv:squeezenet1_1")
    score = node_score(model, info, "espresso")
    assert score.node == Node("logits", 967, (), "index")


def _by_hand(spec: str, model, x: torch.Tensor) -> torch.Tensor:
    """The node values of test_fx_and_hooks_agree's cases, computed by calling the modules in forward order: a
    reference independent of both FX truncation and hooks."""
    if spec == "lenet":
        return model.conv2(model.pool1(model.conv1(x)))
    if spec == "tv:squeezenet1_1":
        fire = model.features[3]
        return fire.expand1x1(fire.squeeze_activation(fire.squeeze(model.features[:3](x))))
    if spec == "timm:test_vit":
        t = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        return model.blocks[0](t)
    if spec == "timm:mobilenetv3_small_050":
        return model.blocks[1](model.blocks[0](model.bn1(model.conv_stem(x))))
    raise KeyError(spec)


@pytest.mark.parametrize("spec,node,kw,pick", [
    ("lenet", "conv2:7", {}, lambda h: h[:, 7, h.shape[2] // 2, h.shape[3] // 2]),
    ("tv:squeezenet1_1", "features.3.expand1x1:17,2,3", dict(num_classes=4), lambda h: h[:, 17, 2, 3]),
    ("timm:test_vit", "blocks.0:3", dict(num_classes=4, img_size=32), lambda h: h.mean(1)[:, 3]),
    ("timm:test_vit", "blocks.0:3,2", dict(num_classes=4, img_size=32), lambda h: h[:, 2, 3]),
    ("timm:mobilenetv3_small_050", "blocks.1:4,mean", dict(num_classes=4), lambda h: h[:, 4].mean((1, 2))),
])
def test_node_values_equal_a_forward_pass_by_hand(spec, node, kw, pick):
    torch.manual_seed(0)
    model, info = create_model(spec, **kw)
    model.eval()
    x = torch.randn(3, *info.input_size)
    with torch.no_grad():
        expected = pick(_by_hand(spec, model, x))
    for use_fx in (True, False):
        torch.testing.assert_close(node_score(model, info, node, use_fx)(x), expected)
