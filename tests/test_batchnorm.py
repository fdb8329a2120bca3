"""BatchNorm during GG: what each way of normalising computes, against torch's own functions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gencnn_plugin import create_model, generative_loss
from gencnn_plugin.batchnorm import gg_batchnorm


def _bn():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn.train()


def test_batch_is_torchs_own_and_eval_mode_is_untouched():
    x = torch.randn(8, 3, 4, 4) * 2 + 1
    bn, ref = _bn(), _bn()
    with gg_batchnorm(torch.nn.Sequential(bn), "batch"):
        torch.testing.assert_close(bn(x), ref(x))
    bn.eval(), ref.eval()
    with gg_batchnorm(torch.nn.Sequential(bn), "frozen"):
        torch.testing.assert_close(bn(x), ref(x))


def test_frozen_uses_running_statistics_updated_from_the_batch():
    x = torch.randn(8, 3, 4, 4) * 2 + 1
    bn = _bn()
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    with gg_batchnorm(torch.nn.Sequential(bn), "frozen"):
        y = bn(x)
    m = 0.1
    new_mean = (1 - m) * mean0 + m * x.mean((0, 2, 3))
    new_var = (1 - m) * var0 + m * x.var((0, 2, 3), unbiased=True)
    torch.testing.assert_close(bn.running_mean, new_mean)
    torch.testing.assert_close(bn.running_var, new_var)
    torch.testing.assert_close(y, F.batch_norm(x, new_mean, new_var, bn.weight, bn.bias, False, 0.0, bn.eps))
    # one example's output does not depend on the others of its batch
    with gg_batchnorm(torch.nn.Sequential(bn), "frozen"):
        alone = bn(x[:1])
    torch.testing.assert_close(alone, F.batch_norm(x[:1], bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                                   False, 0.0, bn.eps))
    assert bn.forward.__func__ is type(bn).forward  # restored after the block


def test_detached_normalises_with_the_batch_but_passes_no_gradient_through_it():
    x = torch.randn(8, 3, 4, 4, requires_grad=True)
    bn, ref = _bn(), _bn()
    with gg_batchnorm(torch.nn.Sequential(bn), "detached"):
        y = bn(x)
    torch.testing.assert_close(y, ref(x))  # the same values as torch's batch normalisation
    w = torch.randn_like(y)
    (g_detached,) = torch.autograd.grad((y * w).sum(), x)
    var = x.var((0, 2, 3), unbiased=False, keepdim=True)
    expected = w * bn.weight.view(1, -1, 1, 1) / torch.sqrt(var + bn.eps)  # d/dx with mean and var held fixed
    torch.testing.assert_close(g_detached, expected)
    (g_batch,) = torch.autograd.grad((ref(x) * w).sum(), x)
    assert not torch.allclose(g_batch, g_detached)


@pytest.mark.parametrize("how", ["batch", "detached", "frozen"])
def test_a_gg_step_on_a_batchnorm_network(how):
    model, _ = create_model("timm:lenet_caffe_bn", num_classes=4, img_size=16)
    x, y = torch.randn(6, 1, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    with gg_batchnorm(model.train(), how):
        loss = generative_loss(model(x), y)
    loss.backward()
    assert torch.isfinite(loss) and model.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("how", ["detached", "frozen"])
def test_timm_batchnorm_act_keeps_its_activation(how):
    """MobileNetV2's BatchNormAct2d normalises, then applies dropout and ReLU6: the GG variants and the global
    BatchNorm keep that (they once dropped it and trained another network)."""
    from gencnn_plugin.distributed import convert_global_batchnorm

    torch.manual_seed(0)
    model, _ = create_model("timm:mobilenetv2_100", num_classes=4, img_size=32)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(convert_global_batchnorm(model)(x), ref)
    model.train()
    with torch.no_grad():
        expected = model(x)  # batch statistics: "detached" gives the same values
        if how == "detached":
            with gg_batchnorm(model, how):  # rounding differs from F.batch_norm's, amplified over 17 blocks with
                # 4-example statistics; without the activation the difference was 29 (the bug this guards)
                torch.testing.assert_close(model(x), expected, rtol=0.05, atol=0.02)
        else:
            with gg_batchnorm(model, how):
                out = model(x)
            assert (out.abs() < 1e4).all() and not torch.allclose(out, expected)  # running statistics, activations
