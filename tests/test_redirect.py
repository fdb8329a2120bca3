"""Redirected ReLU gradients in the warm start: ordinary where any gradient flows, redirected per image where none
does, restored afterwards, and a silent node climbed."""

from __future__ import annotations

import argparse
from dataclasses import replace
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gencnn_plugin import create_model, node_score
from gencnn_plugin.hmc import HMCConfig
from gencnn_plugin.redirect import RedirectedClamp, redirected_relus
from gencnn_plugin.reference import initial_z, make_reference
from gencnn_plugin.settings import add_flags, given, to_argv
from gencnn_plugin.visualize import sample_node, warm_start


def _grad(fn, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    fn(x).backward(g)
    return x.grad


@pytest.mark.parametrize("upper", [None, 6.0])
def test_ordinary_gradient_where_any_flows_redirected_where_none_does(upper):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) * 4
    g = torch.randn(4, 3, 5, 5)
    x[1] = -x[1].abs() - 0.1  # image 1: every unit below 0, so the ordinary gradient is 0 everywhere
    if upper is not None:
        x[2] = x[2].abs() + 6.1  # image 2: every unit above 6
    ordinary = _grad(F.relu if upper is None else F.relu6, x, g)
    got = _grad(lambda v: RedirectedClamp.apply(v, upper), x, g)
    silent = [1] if upper is None else [1, 2]
    for i in range(4):
        if i not in silent:  # bit for bit torch's own backward
            assert torch.equal(got[i], ordinary[i]) and ordinary[i].ne(0).any()
    assert torch.equal(ordinary[1], torch.zeros_like(g[1]))
    # a minimised loss: a positive gradient pushes the input down, so below 0 only negative ones pass
    assert torch.equal(got[1], torch.where(g[1] < 0, g[1], 0.0))
    if upper is not None:  # above 6 only positive ones (which bring it down) pass
        assert torch.equal(got[2], torch.where(g[2] > 0, g[2], 0.0))
    assert torch.equal(RedirectedClamp.apply(x, upper), x.clamp(0, upper))


def _clamp(v: torch.Tensor, upper: float | None) -> torch.Tensor:
    return RedirectedClamp.apply(v, upper)


def test_the_full_path_equals_the_shortcut_and_nan_passes_as_in_torch(monkeypatch):
    """On the CPU a batch whose every row flows returns early; the path a GPU always takes gives the same. A NaN
    output passes its gradient, as torch's ReLU backward does; unbatched tensors are one row."""
    import gencnn_plugin.redirect as R

    torch.manual_seed(1)
    x, g = torch.randn(3, 4, 6) * 3, torch.randn(3, 4, 6)
    x[2] = -x[2].abs() - 0.1
    for upper in (None, 6.0):
        fn = partial(_clamp, upper=upper)
        early, mixed = _grad(fn, x[:2], g[:2]), _grad(fn, x, g)
        assert torch.equal(early, _grad(F.relu if upper is None else F.relu6, x[:2], g[:2]))
        monkeypatch.setattr(R, "_can_wait", lambda t: False)
        assert torch.equal(_grad(fn, x[:2], g[:2]), early) and torch.equal(_grad(fn, x, g), mixed)
        monkeypatch.undo()
    x[0, 0, 0] = float("nan")
    relu = partial(_clamp, upper=None)
    for wait in (True, False):
        monkeypatch.setattr(R, "_can_wait", lambda t, wait=wait: wait)
        assert torch.equal(_grad(relu, x[:2], g[:2]), _grad(F.relu, x[:2], g[:2]))
        assert _grad(relu, x[:2], g[:2])[0, 0, 0] == g[0, 0, 0]
        one = torch.tensor([-1.0, 1.0])  # one row: the second unit flows, so the first is not redirected
        assert torch.equal(_grad(relu, one, torch.tensor([-1.0, 1.0])), torch.tensor([0.0, 1.0]))
        empty = torch.zeros(0, 3)
        assert _grad(relu, empty, empty).shape == (0, 3)


def test_in_place_keeps_torchs_gradient_and_a_silent_branch_is_redirected_as_in_lucid():
    """An in-place ReLU gives torch's gradient where it flows. In a residual block whose branch is silent, the branch
    is redirected although the skip still carries gradient to the image: the rule is per layer (Lucid's)."""
    torch.manual_seed(2)
    x, g = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    got = _grad(lambda v: RedirectedClamp.apply(v * 1.0, None, True), x, g)
    assert torch.equal(got, _grad(lambda v: F.relu(v * 1.0, inplace=True), x, g))

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.relu = nn.Conv2d(1, 1, 1), nn.ReLU()
            with torch.no_grad():
                self.conv.weight.fill_(1.0)
                self.conv.bias.fill_(-100.0)  # the branch is 0 for any small input

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return (v + self.relu(self.conv(v))).flatten(1).sum(1)

    net, v = Residual(), torch.randn(2, 1, 4, 4)
    ordinary = _grad(lambda t: -net(t), v, torch.ones(2))
    with redirected_relus(net):
        redirected = _grad(lambda t: -net(t), v, torch.ones(2))
    assert torch.equal(ordinary, -torch.ones_like(v))  # the skip alone
    assert torch.equal(redirected, -2 * torch.ones_like(v))  # plus the branch, pushed back into range


def test_the_context_redirects_every_relu_module_and_restores_them():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Conv2d(2, 2, 3), nn.ReLU6(), nn.Flatten())
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
    with redirected_relus(model) as n:
        assert n == 2 and "forward" in vars(model[1]) and "forward" in vars(model[3])
        with torch.no_grad():
            assert torch.equal(model(x), before)  # the forward is unchanged
        out = model(x.requires_grad_(True))
        assert type(out.grad_fn.next_functions[0][0]).__name__ == "RedirectedClampBackward"
    assert "forward" not in vars(model[1]) and "forward" not in vars(model[3]) and model[1].inplace
    with pytest.raises(RuntimeError, match="boom"):
        with redirected_relus(model):
            raise RuntimeError("boom")
    assert "forward" not in vars(model[1])
    assert type(model(x).grad_fn.next_functions[0][0]).__name__ != "RedirectedClampBackward"


def test_the_warm_start_climbs_a_node_that_is_silent_at_the_start():
    """A unit behind a ReLU that is 0 at every starting state: without the redirect the warm start never moves
    towards it (its score stays 0), with it the score rises above 0; a run that stays silent is told so."""
    torch.manual_seed(0)
    model, info = create_model("lenet")
    model.eval()
    ref = make_reference("white", info, 1.0)
    z0 = initial_z(ref, 2, 0)
    pre = {}  # fc1's output, copied before the in-place relu1 overwrites it
    hook = model.fc1.register_forward_hook(lambda m, i, o: pre.__setitem__("x", o.detach().clone()))
    with torch.no_grad():
        model(ref.to_x(z0))
    hook.remove()
    k = int(pre["x"].max(0).values.argmin())  # the unit furthest below 0 at both starting states
    assert (pre["x"][:, k] < -1).all()
    with torch.no_grad():
        model.fc1.bias[k] -= 1.0  # and at the mean image (every pre-activation is 0 there), where the prior pulls
    score = node_score(model, info, f"relu1:{k}")
    with torch.no_grad():
        assert torch.equal(score(ref.to_x(z0)), torch.zeros(2))
    cfg = HMCConfig(temperature=0.1, warm_start=100)
    ends = {}
    for on in (False, True):
        z = warm_start(score, ref, z0, replace(cfg, warm_redirect=on))
        with torch.no_grad():
            ends[on] = score(ref.to_x(z))
    assert torch.equal(ends[False], torch.zeros(2))
    assert (ends[True] > 0).all()
    # a run whose chains never leave the silent region says so, and how to reach the node
    short = replace(cfg, chains=2, iters=2, leapfrog_steps=2, step_size=0.01)
    for warm, redirect, says in ((0, True, "add warm-start steps"), (100, False, "turn warm_redirect on"),
                                 (100, True, None)):
        run = sample_node(model, info, f"relu1:{k}", replace(short, warm_start=warm, warm_redirect=redirect))
        silent = [w for w in run.warnings if "is silent" in w]
        assert (silent == []) if says is None else (len(silent) == 1 and says in silent[0])


def test_where_gradients_flow_the_warm_start_is_unchanged_bit_for_bit():
    torch.manual_seed(0)
    model, info = create_model("lenet")
    model.eval()
    ref = make_reference("white", info, 1.0)
    z0 = initial_z(ref, 3, 0)
    score = node_score(model, info, "logits:3")
    cfg = HMCConfig(temperature=0.1, warm_start=30, warm_augment="standard")
    plain = warm_start(score, ref, z0, replace(cfg, warm_redirect=False))
    assert torch.equal(warm_start(score, ref, z0, cfg), plain) and not torch.equal(plain, z0)
    assert model.relu1.inplace  # restored after the warm start


def test_the_setting_is_on_by_default_and_has_a_flag():
    assert HMCConfig().warm_redirect
    parser = argparse.ArgumentParser()
    add_flags(parser, HMCConfig)
    assert given(parser.parse_args(["--no-warm-redirect"]), HMCConfig)["warm_redirect"] is False
    assert "--no-warm-redirect" in to_argv(HMCConfig(warm_redirect=False))
