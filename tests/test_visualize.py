"""Sampling a node end to end: presets, grid PNG, .npz, and the nodes/sample commands."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from gencnn_plugin import create_model, save_checkpoint
from gencnn_plugin.cli import main
from gencnn_plugin.config import ConfigError
from gencnn_plugin.hmc import HMCConfig
from gencnn_plugin.settings import SettingsError
from gencnn_plugin.visualize import caption, display_pixels, load_preset, sample_node, save_grid, save_npz


@pytest.fixture(scope="module")
def lenet_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model, info = create_model("lenet")
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "lenet.safetensors", model, info, mode="dg", epoch=0)


def test_presets_are_the_papers_settings():
    lenet, conv, fc8 = load_preset("lenet"), load_preset("alexnet_conv"), load_preset("alexnet_fc8")
    assert (lenet.iters, lenet.step_size, lenet.leapfrog_steps, lenet.mass) == (100, 0.1, 50, 0.01)
    assert (conv.iters, conv.step_size, conv.leapfrog_steps, conv.mass) == (100, 1.0, 25, 0.3)
    assert (fc8.iters, fc8.step_size, fc8.leapfrog_steps, fc8.mass) == (500, 1.0, 25, 0.3)
    assert lenet.adapt_steps == conv.adapt_steps == fc8.adapt_steps == 0
    assert load_preset("lenet", chains=3, step_size=None).chains == 3
    with pytest.raises(ConfigError, match="step_size"):
        load_preset("lenet", step_size=-1.0)
    with pytest.raises(ConfigError, match="unknown config key 'step'"):
        load_preset("lenet", step=0.1)


def test_the_default_preset_suits_the_input_and_every_default_loads():
    from gencnn_plugin.specs import ModelInfo
    from gencnn_plugin.visualize import DEFAULT_PRESETS, default_preset

    def info(c: int, size: int) -> ModelInfo:
        return ModelInfo("lenet", 10, c, (c, size, size), (0.5,) * c, (0.5,) * c)

    assert [default_preset(info(1, 28)), default_preset(info(3, 32)), default_preset(info(1, 32)),
            default_preset(info(3, 224))] == ["mnist_legible", "lenet_tuned", "lenet_tuned", "imagenet_legible"]
    from gencnn_plugin.config import HMC_PRESET_DIR, list_configs

    assert set(DEFAULT_PRESETS.values()) | {"lenet", "fashion_mnist_legible"} <= set(list_configs(HMC_PRESET_DIR))
    for name in list_configs(HMC_PRESET_DIR):  # every shipped preset passes HMCConfig's validation
        load_preset(name)
    from gencnn_plugin.reference import make_reference

    fashion = load_preset("fashion_mnist_legible")
    ref = make_reference(fashion.reference, info(1, 28), fashion.sigma)  # the shipped Fashion-MNIST Gaussian
    assert ref.data == "fashion_mnist_pca" and ref.to_x(torch.zeros(1, *ref.z_shape)).shape == (1, 1, 28, 28)
    legible = load_preset("mnist_legible")
    assert (legible.reference, legible.temperature, legible.replicas, legible.hot_temperature, legible.iters,
            legible.adapt_steps) == ("pca", 0.6, 4, 1.0, 1000, 100)


def test_grid_and_npz(tmp_path):
    model, info = create_model("lenet")
    cfg = load_preset("lenet", chains=3, iters=2, leapfrog_steps=3, step_size=0.01)
    run = sample_node(model, info, ["logits:1", "logits:2"], cfg)
    assert run.result.x.shape == (6, 1, 28, 28) and run.nodes == ["logits:1", "logits:2"]
    png = save_grid(run.result.x, info, tmp_path / "g.png", nrow=3)
    assert Image.open(png).size == (3 * 30 + 2, 2 * 30 + 2)
    big = save_grid(run.result.x, info, tmp_path / "b.png", nrow=3, min_size=56)
    assert Image.open(big).size == (3 * 58 + 2, 2 * 58 + 2)
    npz = np.load(save_npz(run, tmp_path / "s.npz"))
    assert npz["samples"].shape == (6, 1, 28, 28) and npz["pixels"].dtype == np.uint8
    assert npz["trace_accepted"].shape == (2, 6) and list(npz["nodes"]) == ["logits:1", "logits:2"]
    for display in ("range", "clip"):
        pix = display_pixels(run.result.x, info, display)
        assert pix.min() >= 0 and pix.max() <= 1
    spread = display_pixels(run.result.x, info, "range").flatten(1)
    torch.testing.assert_close(spread.min(1).values, torch.zeros(6))
    torch.testing.assert_close(spread.max(1).values, torch.ones(6))


def test_nodes_command(lenet_ckpt, capsys):
    assert main(["nodes", str(lenet_ckpt)]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "20x24x24" in out and "logits" in out


def test_sample_command(lenet_ckpt, tmp_path, capsys):
    png, npz = tmp_path / "s.png", tmp_path / "s.npz"
    assert main(["sample", str(lenet_ckpt), "--node", "conv2:3,mean", "--chains", "4", "--iters", "3",
                 "--leapfrog-steps", "4", "--step-size", "0.01", "--device", "cpu", "--out", str(png),
                 "--npz", str(npz)]) == 0
    out = capsys.readouterr().out
    assert "acceptance" in out and "gradient evaluations/s" in out
    assert png.is_file() and np.load(npz)["samples"].shape == (4, 1, 28, 28)


def test_sample_a_spec_with_local_weights(tmp_path, capsys):
    from safetensors.torch import save_file

    model, _ = create_model("tv:squeezenet1_1", num_classes=5)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    assert main(["sample", "tv:squeezenet1_1", "--weights", str(tmp_path / "w.safetensors"), "--num-classes", "5",
                 "--node", "features.0:3", "--chains", "2", "--iters", "1", "--leapfrog-steps", "1",
                 "--device", "cpu", "--out", str(tmp_path / "sq.png")]) == 0


@pytest.mark.parametrize("argv,match", [
    (["--node", "conv9:1"], "no layer 'conv9'"),
    (["--node", "conv1:20"], r"conv1 has 20 channels \(0-19\)"),
    (["--node", "conv1:1", "--step-size", "0"], "step_size"),
    (["--node", "conv1:1", "--preset", "alexnet_fc9"], "alexnet_fc8"),
])
def test_sample_errors(lenet_ckpt, tmp_path, capsys, argv, match):
    assert main(["sample", str(lenet_ckpt), "--device", "cpu", "--out", str(tmp_path / "x.png"), *argv]) == 2
    err = capsys.readouterr().err
    assert match in err or __import__("re").search(match, err), err


@pytest.mark.parametrize("reference", ["white", "pink", "lowres", "pca"])
def test_every_reference_samples_a_node(reference):
    """sample_node in whitened coordinates for each kind of reference: images of the model's input shape, running
    means after warm-up, projections for R-hat, the reference recorded in the summary."""
    torch.manual_seed(0)
    model, info = create_model("lenet")
    cfg = HMCConfig(reference=reference, chains=3, iters=4, leapfrog_steps=3, step_size=0.05, mass=1.0,
                    adapt_steps=1, temperature=0.5)
    run = sample_node(model, info, ["logits:1", "logits:2"], cfg)
    assert run.result.x.shape == run.mean_x.shape == (6, 1, 28, 28)
    assert run.projections.shape == (4, 6, 4) and run.result.summary["reference"].split(":")[0] == reference
    assert run.result.summary["rhat"] >= run.result.summary["rhat_score"] or math.isnan(run.result.summary["rhat"])


def test_white_reference_is_the_papers_sampler_on_x():
    """The whitened path with the white reference reproduces HMC on x itself: same states (x = sigma z)."""
    from gencnn_plugin.hmc import hmc_sample
    from gencnn_plugin.nodes import node_score
    from gencnn_plugin.visualize import initial_states

    torch.manual_seed(0)
    model, info = create_model("lenet")
    cfg = HMCConfig(chains=4, iters=3, leapfrog_steps=4, step_size=0.01, mass=0.01, sigma=2.0, seed=5)
    run = sample_node(model, info, "logits:3", cfg)
    x0 = initial_states(info, 4, cfg.sigma, cfg.seed, "cpu")
    direct = hmc_sample(node_score(model, info, "logits:3"), x0, cfg, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(run.result.x, direct.x, rtol=1e-4, atol=1e-5)


def test_cli_shows_samples_and_means_and_writes_them(lenet_ckpt, tmp_path, capsys):
    png, npz = tmp_path / "s.png", tmp_path / "s.npz"
    assert main(["sample", str(lenet_ckpt), "--node", "logits:4", "--chains", "4", "--iters", "4",
                 "--leapfrog-steps", "3", "--adapt-steps", "1", "--reference", "pink", "--temperature", "0.5",
                 "--device", "cpu", "--out", str(png), "--npz", str(npz), "-q"]) == 0
    out = capsys.readouterr().out
    assert "reference pink:mnist, T 0.5" in out and "R-hat" in out and "x projections" in out
    data = np.load(npz)
    assert data["mean_samples"].shape == data["samples"].shape == (4, 1, 28, 28)
    assert data["trace_projections"].shape == (4, 4, 4)
    both, mean_only = Image.open(png), None
    assert main(["sample", str(lenet_ckpt), "--node", "logits:4", "--chains", "4", "--iters", "4",
                 "--leapfrog-steps", "3", "--adapt-steps", "1", "--show", "mean", "--no-caption",
                 "--out", str(tmp_path / "m.png"), "-q"]) == 0
    mean_only = Image.open(tmp_path / "m.png")
    assert both.size[1] > mean_only.size[1]  # samples and means (and a caption) against means alone
    assert "R-hat" in both.text["Description"]


def test_sample_command_with_replica_exchange(lenet_ckpt, tmp_path, capsys):
    """``--replicas`` on two nodes: the T chains come back (one row per chain, nodes grouped), the command prints the
    ladder and swap rates, and the caption and .npz say how the samples were drawn."""
    import json

    png, npz = tmp_path / "t.png", tmp_path / "t.npz"
    assert main(["sample", str(lenet_ckpt), "--node", "logits:3", "--node", "logits:4", "--chains", "3", "--iters",
                 "4", "--leapfrog-steps", "3", "--reference", "pink", "--temperature", "0.5", "--replicas", "3",
                 "--hot-temperature", "2", "--device", "cpu", "--out", str(png), "--npz", str(npz), "-q"]) == 0
    out = capsys.readouterr().out
    assert "replica exchange: T 0.5 / 1 / 2, swap rates" in out
    assert "3 replicas up to T = 2" in Image.open(png).text["Description"]
    data = np.load(npz, allow_pickle=False)
    assert data["samples"].shape == (6, 1, 28, 28)
    meta = json.loads(str(data["meta"]))
    assert meta["config"]["replicas"] == 3 and len(meta["summary"]["swap_rate"]) == 2
    assert main(["sample", str(lenet_ckpt), "--node", "logits:4", "--replicas", "2", "--temperature", "1",
                 "--out", str(tmp_path / "bad.png"), "-q"]) == 2  # a hot temperature that is not hotter
    assert "hot_temperature" in capsys.readouterr().err


def test_unconverged_chains_are_reported(lenet_ckpt, tmp_path, capsys):
    """Chains that barely move stay at their dispersed starting points: R-hat far above 1.05, and the command says
    the grid is not yet a sample (the warning path); the .npz records the same R-hat."""
    npz = tmp_path / "u.npz"
    assert main(["sample", str(lenet_ckpt), "--node", "logits:4", "--chains", "4", "--iters", "8",
                 "--leapfrog-steps", "1", "--step-size", "1e-5", "--adapt-steps", "2", "--reference", "white",
                 "--out", str(tmp_path / "u.png"), "--npz", str(npz), "-q"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "> 1.05: the chains of a node disagree" in text
    import json

    summary = json.loads(str(np.load(npz, allow_pickle=False)["meta"]))["summary"]
    assert summary["rhat"] > 1.05


def test_jitter_clip_and_warm_start_sample_the_stated_node():
    """jitter: HMC sees the mean of f over the 4 fixed shifts; clip: f of the clipped pixels; warm_start: the chains
    start where Adam left them (lower U than the reference draws), the same run otherwise."""
    from gencnn_plugin.nodes import node_score
    from gencnn_plugin.reference import PixelClippedScore, TransformAveragedScore
    from gencnn_plugin.visualize import score_view

    torch.manual_seed(0)
    model, info = create_model("lenet")
    score = node_score(model, info, "logits:3")
    view = score_view(score, info, HMCConfig(jitter=2, clip=True))
    assert isinstance(view, PixelClippedScore) and isinstance(view.score_fn, TransformAveragedScore)
    x = torch.randn(3, 1, 28, 28) * 3
    pix = ((x * info.std[0] + info.mean[0]).clamp(0, 1) - info.mean[0]) / info.std[0]
    shifts = [torch.roll(torch.nn.functional.pad(pix, (2, 2, 2, 2), mode="reflect"), (dy, dx), (2, 3))[..., 2:30, 2:30]
              for dy, dx in [(0, 0), (0, 2), (2, 0), (2, 2)]]
    torch.testing.assert_close(view(x), torch.stack([score(v) for v in shifts]).mean(0), rtol=1e-5, atol=1e-5)
    assert score_view(score, info, HMCConfig()) is score
    cfg = HMCConfig(chains=2, iters=2, leapfrog_steps=2, step_size=1e-6, mass=1.0, seed=3)
    cold = sample_node(model, info, "logits:3", cfg)
    warm = sample_node(model, info, "logits:3", HMCConfig(**{**cfg.__dict__, "warm_start": 30}))
    assert (warm.result.trace["potential"][0] < cold.result.trace["potential"][0] - 1).all()  # Adam lowered U
    with pytest.raises(ValueError, match="jitter"):
        score_view(score, info, HMCConfig(jitter=28))


def test_log_softmax_score_is_sampled_and_warm_started():
    """score log_softmax: HMC and the warm start both see log p(y|x) of the clipped, jittered image, and a run says
    so; a channel node has no softmax, so asking for one is an error, not a silent logit."""
    from gencnn_plugin.nodes import NodeError, node_score
    from gencnn_plugin.visualize import score_view, warm_view

    torch.manual_seed(0)
    model, info = create_model("lenet")
    score = node_score(model, info, "logits:3")
    cfg = HMCConfig(jitter=2, clip=True, score="log_softmax", warm_start=5)
    x = torch.randn(3, 1, 28, 28) * 3
    pix = ((x * info.std[0] + info.mean[0]).clamp(0, 1) - info.mean[0]) / info.std[0]  # by hand: clip, 4 shifts,
    shifts = [torch.roll(torch.nn.functional.pad(pix, (2, 2, 2, 2), mode="reflect"), (dy, dx), (2, 3))[..., 2:30, 2:30]
              for dy, dx in [(0, 0), (0, 2), (2, 0), (2, 2)]]  # log_softmax of the network's logits, class 3
    expected = torch.stack([model(v).log_softmax(1)[:, 3] for v in shifts]).mean(0)
    torch.testing.assert_close(score_view(score, info, cfg)(x), expected, rtol=1e-5, atol=1e-5)
    one = HMCConfig(clip=True, score="log_softmax", warm_start=5, warm_augment="wide")  # the warm start's view
    torch.testing.assert_close(warm_view(score, info, one)(x), model(pix).log_softmax(1)[:, 3], rtol=1e-5, atol=1e-5)
    run = sample_node(model, info, "logits:3", HMCConfig(chains=2, iters=3, leapfrog_steps=2, step_size=1e-3,
                                                          mass=1.0, score="log_softmax"))
    assert (run.result.trace["score"] <= 0).all() and "f = log p(y|x)" in caption(run)
    with pytest.raises(NodeError, match="output nodes"):
        sample_node(model, info, "conv2:3", HMCConfig(chains=1, iters=1, score="log_softmax"))
    with pytest.raises(ValueError, match="settings say logit"):
        score_view(score.log_probability(), info, HMCConfig())
    noisy, ninfo = create_model("lenet", batch_norm=True, drop_rate=0.5)  # dropout and batch statistics: the
    nscore = node_score(noisy, ninfo, "logits:3")  # score must stay in eval mode, the shared network untouched
    for view in (score_view(nscore, ninfo, cfg), warm_view(nscore, ninfo, replace(cfg, warm_augment="wide"))):
        torch.testing.assert_close(view(x), view(x))
    sample_node(noisy, ninfo, "logits:3", HMCConfig(chains=2, iters=2, leapfrog_steps=2, step_size=1e-3, mass=1.0,
                                                    score="log_softmax", warm_start=2))
    assert not noisy.training and not any(m.training for m in noisy.modules())
    with pytest.raises(SettingsError, match="score"):
        HMCConfig(score="softmax")


def test_fixed_views_sample_the_stated_node():
    """affine_views: HMC sees the mean of f over K fixed views of the clipped image, the identity first and the rest
    drawn once from the warm-start range (within its bounds, the same for any chain seed); each chain's mean is its
    own; under warm_augment the warm start scores one random view instead; it does not combine with jitter."""
    from gencnn_plugin.nodes import node_score
    from gencnn_plugin.reference import FixedAffineScore, PixelClippedScore, affine_views
    from gencnn_plugin.visualize import score_view, warm_view

    torch.manual_seed(0)
    model, info = create_model("lenet")
    score = node_score(model, info, "logits:3")
    x = torch.randn(3, 1, 28, 28) * 3
    torch.testing.assert_close(FixedAffineScore(score, 1)(x), score(x), rtol=1e-5, atol=1e-5)  # the identity alone
    cfg = HMCConfig(affine_views=5, clip=True, warm_start=3, warm_augment="wide")
    view = score_view(score, info, cfg)
    assert isinstance(view, PixelClippedScore) and isinstance(view.score_fn, FixedAffineScore)
    th = view.score_fn.thetas.double()
    assert th.shape == (5, 2, 3) and torch.equal(th[0], torch.eye(2, 3, dtype=torch.float64))
    zoom = 1 / th[1:, 0, :2].norm(dim=1)  # rows of R(angle) / zoom
    angle = torch.rad2deg(torch.atan2(th[1:, 1, 0], th[1:, 0, 0]))
    assert 0.6 - 1e-6 <= zoom.min() < 0.9 and zoom.max() <= 1.2 + 1e-6  # the wide range, not the standard one
    assert 10 < angle.abs().max() <= 20 + 1e-4 and th[1:, :, 2].abs().max() <= 2 * 32 / 224 + 1e-6
    pix = ((x * info.std[0] + info.mean[0]).clamp(0, 1) - info.mean[0]) / info.std[0]
    by_hand = torch.stack([score(affine_views(pix, t.expand(3, 2, 3))) for t in view.score_fn.thetas]).mean(0)
    torch.testing.assert_close(view(x), by_hand, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(view(x), score(pix), rtol=1e-3, atol=1e-3)  # the views are not ignored
    torch.testing.assert_close(view(x[1:2]), view(x)[1:2], rtol=1e-5, atol=1e-5)  # chain 1's mean is its own
    pair = score_view(node_score(model, info, ["logits:3", "logits:5"]), info, cfg)  # chains grouped by node
    five = score_view(node_score(model, info, "logits:5"), info, cfg)
    x4 = torch.cat([x[:2], x[1:]])
    torch.testing.assert_close(pair(x4), torch.cat([view(x4[:2]), five(x4[2:])]), rtol=1e-5, atol=1e-5)
    other = score_view(score, info, replace(cfg, seed=7)).score_fn.thetas
    assert torch.equal(other, view.score_fn.thetas)  # one node for every run
    narrow = score_view(score, info, HMCConfig(affine_views=5)).thetas.double()  # warm_augment off: standard range
    assert (1 / narrow[1:, 0, :2].norm(dim=1) - 1).abs().max() <= 0.05 + 1e-6
    warm = warm_view(score, info, cfg)
    assert isinstance(warm, PixelClippedScore) and not isinstance(warm.score_fn, FixedAffineScore)
    assert isinstance(warm_view(score, info, replace(cfg, warm_augment="off")).score_fn, FixedAffineScore)
    with pytest.raises(SettingsError, match="affine_views"):
        HMCConfig(jitter=2, affine_views=4)
    with pytest.raises(SettingsError, match="affine_views"):
        HMCConfig(affine_views=1)
    run = sample_node(model, info, "logits:3", HMCConfig(chains=2, iters=2, leapfrog_steps=2, step_size=1e-3,
                                                          mass=1.0, affine_views=3))
    assert "averaged over 3 fixed standard views" in caption(run)


def test_warm_start_minimises_the_samplers_potential():
    """With a linear score f(x) = <w, x> and q = N(0, s^2 I), U(z) = -<w, s z> / T + |z|^2 / 2 has its minimum at
    z* = s w / T: the warm start must land there (an objective without -f / T, or with the wrong T or s, does not)."""
    from gencnn_plugin.reference import make_reference
    from gencnn_plugin.specs import ModelInfo
    from gencnn_plugin.visualize import warm_start

    info = ModelInfo("lenet", 10, 1, (1, 3, 3), (0.5,), (0.5,))
    ref = make_reference("white", info, sigma=2.0)
    w = torch.linspace(-1, 1, 9).view(1, 1, 3, 3)
    cfg = HMCConfig(temperature=0.5, warm_start=1500)
    z = warm_start(lambda x: (x * w).flatten(1).sum(1), ref, torch.zeros(2, 1, 3, 3), cfg)
    torch.testing.assert_close(z, (2.0 * w / 0.5).expand(2, 1, 3, 3), atol=2e-3, rtol=0)


def test_random_transforms_of_the_warm_start():
    """RandomAffineScore: the identity when its ranges are zero; shifts, zooms and rotations within the stated
    bounds, repeatable from the seed and fresh at every call; the warm start uses it on the un-averaged view (no
    jitter average) and it never reaches the sampled score."""
    from gencnn_plugin.nodes import node_score
    from gencnn_plugin.reference import PixelClippedScore, RandomAffineScore, TransformAveragedScore
    from gencnn_plugin.visualize import score_view, warm_view

    torch.manual_seed(0)
    model, info = create_model("lenet")
    score = node_score(model, info, "logits:3")
    x = torch.randn(4, 1, 28, 28)
    still = RandomAffineScore(score, shift=0.0, zoom=(1.0, 1.0), degrees=0.0)
    torch.testing.assert_close(still(x), score(x), rtol=1e-5, atol=1e-5)
    moved = RandomAffineScore(lambda v: v, shift=3 / 28, zoom=(0.9, 1.1), degrees=10.0, seed=5)
    th = moved.thetas(2000, torch.device("cpu")).double()
    zoom = 1 / th[:, 0, :2].norm(dim=1)  # rows of R(angle) / zoom
    angle = torch.rad2deg(torch.atan2(th[:, 1, 0], th[:, 0, 0]))
    assert 0.9 <= zoom.min() and zoom.max() <= 1.1 and zoom.max() - zoom.min() > 0.15
    assert angle.abs().max() <= 10 + 1e-4 and angle.abs().max() > 9
    assert 2.9 < th[:, :, 2].abs().max() * 14 <= 3 + 1e-4  # normalised units: 1 = half the side, 14 px
    fresh = RandomAffineScore(lambda v: v, 3 / 28, (0.9, 1.1), 10.0, seed=5)
    a, b = fresh(x), fresh(x)
    assert a.shape == x.shape and not torch.equal(a, b)  # a fresh transform every call
    torch.testing.assert_close(RandomAffineScore(lambda v: v, 3 / 28, (0.9, 1.1), 10.0, seed=5)(x), a)  # repeats
    const = RandomAffineScore(lambda v: v, 0.3, (0.9, 1.1), 10.0)(torch.full((2, 1, 28, 28), 0.7))
    torch.testing.assert_close(const, torch.full_like(const, 0.7))  # reflected borders: no black corners
    cfg = HMCConfig(jitter=2, clip=True, warm_start=5, warm_augment="standard")
    warm = warm_view(score, info, cfg)
    assert isinstance(warm, PixelClippedScore) and not isinstance(warm.score_fn, TransformAveragedScore)
    assert isinstance(score_view(score, info, cfg).score_fn, TransformAveragedScore)  # HMC: the fixed average
    plain_view = warm_view(score, info, HMCConfig(jitter=2, clip=True, warm_start=5))  # no transforms: the sampled
    assert isinstance(plain_view.score_fn, TransformAveragedScore)  # view, jitter average and all
    base = dict(chains=2, iters=2, leapfrog_steps=2, step_size=1e-6, mass=1.0, seed=3)
    calls = []
    forward = RandomAffineScore.forward

    def counted(self, x):
        calls.append(x.shape[0])
        return forward(self, x)

    RandomAffineScore.forward = counted
    try:
        run = sample_node(model, info, "logits:3", HMCConfig(**base, warm_start=20, warm_augment="standard"))
    finally:
        RandomAffineScore.forward = forward
    assert calls == [2] * 20  # every warm-start step, and nothing the chain evaluates
    again = sample_node(model, info, "logits:3", HMCConfig(**base, warm_start=20, warm_augment="standard"))
    plain = sample_node(model, info, "logits:3", HMCConfig(**base, warm_start=20))
    torch.testing.assert_close(run.result.x, again.result.x)
    assert not torch.allclose(run.result.x, plain.result.x)
    assert "random transforms" in caption(run)
    idle = sample_node(model, info, "logits:3", HMCConfig(**base, warm_augment="standard"))  # no warm start: no effect
    torch.testing.assert_close(idle.result.x, sample_node(model, info, "logits:3", HMCConfig(**base)).result.x)
    wide = sample_node(model, info, "logits:3", HMCConfig(**base, warm_start=20, warm_augment="wide"))
    assert not torch.allclose(run.result.x, wide.result.x) and "wide random transforms" in caption(wide)
    four = HMCConfig(**{**base, "chains": 4}, warm_start=5, warm_augment="standard")
    split = sample_node(model, info, "logits:3", four, devices=["cpu", "cpu"])  # each part draws its own chains'
    whole = sample_node(model, info, "logits:3", four)  # transforms, as one run does
    torch.testing.assert_close(split.result.x, whole.result.x, rtol=1e-5, atol=1e-5)


def test_warm_transforms_are_named_ranges_and_old_booleans_still_load():
    """warm_augment names a range of WARM_TRANSFORMS; a preset or config written when it was on/off still loads
    (on was the standard range), on the command line too; wide draws larger moves than standard."""
    from gencnn_plugin.reference import WARM_TRANSFORMS, RandomAffineScore
    from gencnn_plugin.settings import add_flags, from_mapping, given

    assert HMCConfig().warm_augment == "off"
    assert HMCConfig(warm_augment=True).warm_augment == "standard"
    assert HMCConfig(warm_augment=False).warm_augment == "off"
    assert from_mapping(HMCConfig, {"warm_augment": True}).warm_augment == "standard"
    with pytest.raises(SettingsError, match="warm_augment"):
        HMCConfig(warm_augment="wider")
    parser = argparse.ArgumentParser()
    add_flags(parser, HMCConfig)
    for argv, meant in ((["--warm-augment", "wide"], "wide"), (["--warm-augment"], "standard"),
                        (["--no-warm-augment"], "off"), (["--warm-augment", "true"], "standard"),
                        (["--warm-augment", "False"], "off"), ([], None)):  # the old flag's forms still parse
        assert given(parser.parse_args(argv), HMCConfig).get("warm_augment") == meant
    with pytest.raises(SystemExit):
        parser.parse_args(["--warm-augment", "wider"])
    default = RandomAffineScore(lambda v: v)
    assert (default.shift, default.zoom, default.degrees) == WARM_TRANSFORMS["standard"]
    x = torch.zeros(64, 1, 28, 28)
    moves = {}
    for name, (shift, zoom, degrees) in WARM_TRANSFORMS.items():
        th = RandomAffineScore(lambda v: v, shift, zoom, degrees, seed=1).thetas(64, x.device)
        moves[name] = th[:, :, 2].abs().max()
        scale = th[:, 0, :2].norm(dim=1)  # 1 / zoom
        assert 1 / zoom[1] - 1e-4 <= scale.min() and scale.max() <= 1 / zoom[0] + 1e-4
    assert moves["wide"] > 2 * moves["standard"]


def test_random_shift_moves_the_pixels():
    """With zoom 1 and no rotation the image moves by the drawn shift: a bright dot lands where theta says."""
    from gencnn_plugin.reference import RandomAffineScore

    img = torch.zeros(1, 1, 29, 29)
    img[0, 0, 14, 14] = 1.0
    tau = RandomAffineScore(lambda v: v, shift=4 / 29, zoom=(1.0, 1.0), degrees=0.0, seed=2)
    theta = RandomAffineScore(lambda v: v, shift=4 / 29, zoom=(1.0, 1.0), degrees=0.0, seed=2).thetas(1, "cpu")
    out = tau(img)[0, 0]
    dy, dx = (theta[0, 1, 2] * 29 / 2).item(), (theta[0, 0, 2] * 29 / 2).item()  # input offset in pixels
    cy = (out.sum(1) * torch.arange(29.0)).sum() / out.sum()
    cx = (out.sum(0) * torch.arange(29.0)).sum() / out.sum()
    assert abs(dy) + abs(dx) > 0.5
    torch.testing.assert_close(torch.stack([cy, cx]), torch.tensor([14 - dy, 14 - dx]), atol=1e-3, rtol=0)


def test_fitted_references_are_shown_as_pixels():
    from gencnn_plugin.visualize import default_display

    assert default_display(HMCConfig()) == "range"  # the paper's white q spreads past the pixel range
    assert default_display(HMCConfig(reference="pca")) == default_display(HMCConfig(reference="pink:mnist")) == "clip"
    assert default_display(HMCConfig(clip=True)) == "clip"
