"""Reference distributions (gencnn_plugin.reference): exact whitening, temperature, running means, data files."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gencnn_plugin.hmc import HMCConfig, hmc_sample
from gencnn_plugin.reference import (
    ChainMonitor,
    PixelClippedScore,
    TransformAveragedScore,
    fit_pca_reference,
    fit_reference,
    load_reference_data,
    make_reference,
    parse_reference,
    sample_reference,
    save_reference_data,
    tilted_score,
)
from gencnn_plugin.specs import ModelInfo

RGB = ModelInfo("tv:squeezenet1_1", 10, 3, (3, 8, 8), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
GREY = ModelInfo("timm:lenet_caffe", 10, 1, (1, 8, 8), (0.1,), (0.5,))
# HMC whose trajectory is a quarter period of the unit harmonic oscillator: with a zero score every iteration is an
# (almost) independent exact draw of z ~ N(0, I). The mass in z is mass x sigma^2 (z_config), so pass 1 / sigma^2.
def _quarter(sigma: float = 1.0) -> dict:
    return dict(leapfrog_steps=8, step_size=math.pi / 16, mass=1.0 / sigma ** 2, adapt_steps=0)


def _fake_data(c: int, n: int = 64, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] with correlated channels (a stand-in for photos)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.avg_pool2d(torch.rand(n, 1, size + 4, size + 4, generator=g), 5, 1)
    x = base.repeat(1, c, 1, 1) * 0.85 + torch.rand(n, c, size, size, generator=g) * 0.15
    return x.clamp(0, 1)


def _data(c: int) -> dict:
    return fit_reference(_fake_data(c), name=f"fake{c}")


def _matrix(ref) -> torch.Tensor:
    """A of x = mu + A z, column by column (small shapes only)."""
    dz = math.prod(ref.z_shape)
    with torch.no_grad():
        return (ref.to_x(torch.eye(dz).view(dz, *ref.z_shape)) - ref.x_mean).flatten(1).T  # (dx, dz)


def _zero_score(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1) * 0.0


def test_fit_and_data_file_round_trip(tmp_path):
    d = _data(3)
    assert d["channels"] == 3 and len(d["colour_cov"]) == 3 and d["spectrum"]["alpha"] > 0
    path = save_reference_data(d, tmp_path / "fake3.yaml", comment="fitted in a test")
    back = load_reference_data(path)
    assert back == d
    a, b = make_reference("pink", RGB, data=d), make_reference("pink", RGB, data=str(path))
    for name in ("mu", "colour", "amplitude"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    bad = dict(d, colour_cov=[[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # not positive definite
    with pytest.raises(ValueError, match="positive-definite"):
        save_reference_data(bad, tmp_path / "bad.yaml")
    assert parse_reference("pink:mnist") == ("pink", "mnist") and parse_reference("white") == ("white", None)


@pytest.mark.parametrize("kind", ["pink", "spectral", "lowres"])
def test_fitted_kinds_match_the_data_marginals_in_pixels(kind):
    d = _data(3)
    ref = make_reference(kind, RGB, data=d, factor=2)
    a = _matrix(ref).double()
    cov = a @ a.T  # q's covariance in normalised space, exactly
    std = torch.tensor(RGB.std, dtype=torch.float64).repeat_interleave(64)
    pix_cov = cov * std.view(-1, 1) * std.view(1, -1)
    colour = pix_cov.view(3, 64, 3, 64).diagonal(dim1=1, dim2=3).mean(-1)  # same-pixel colour covariance
    assert torch.allclose(colour, torch.tensor(d["colour_cov"], dtype=torch.float64), rtol=1e-4, atol=1e-7)
    pix_mu = ref.mu.view(3).double() * torch.tensor(RGB.std) + torch.tensor(RGB.mean)
    assert torch.allclose(pix_mu, torch.tensor(d["mean"], dtype=torch.float64), atol=1e-6)
    if kind != "lowres":  # stationary: every pixel has the data's marginal variance
        var = pix_cov.diagonal().view(3, 64)
        assert torch.allclose(var, colour.diagonal().view(3, 1).expand(3, 64), rtol=1e-4)


@pytest.mark.parametrize("kind", ["pink", "lowres", "pca"])
def test_hmc_with_zero_score_reproduces_the_reference_covariance(kind):
    data = fit_pca_reference(_fake_data(3, size=8), k=20) if kind == "pca" else _data(3)
    ref = make_reference(kind, RGB, data=data, factor=2)
    a = _matrix(ref).double()
    target = a @ a.T
    cfg = HMCConfig(iters=3, chains=1500, seed=1, **_quarter())
    run = sample_reference(_zero_score, ref, cfg, projections=0)
    assert run.result.summary["accept_rate"] > 0.85
    x = (run.x - ref.x_mean).flatten(1).double()
    emp = x.T @ x / x.shape[0]
    scale = target.diagonal().sqrt()
    corr_err = (emp - target) / (scale.view(-1, 1) * scale.view(1, -1))
    assert corr_err.abs().max() < 0.15  # 1500 draws: the standard error of a correlation is ~0.026
    # the colour covariance and the spatial correlation at lag 1 (the spectrum's signature), averaged over pixels
    emp_c = emp.view(3, 64, 3, 64).diagonal(dim1=1, dim2=3).mean(-1)
    tgt_c = target.view(3, 64, 3, 64).diagonal(dim1=1, dim2=3).mean(-1)
    assert torch.allclose(emp_c, tgt_c, rtol=0.06, atol=0.02 * float(tgt_c.diagonal().max()))
    lag = torch.arange(63)
    lag = lag[(lag % 8) != 7]
    rho_emp = emp[lag, lag + 1].mean() / emp.diagonal().mean()
    rho_tgt = target[lag, lag + 1].mean() / target.diagonal().mean()
    assert abs(float(rho_emp - rho_tgt)) < 0.03 and float(rho_tgt) > 0.2


def test_pca_reference_is_the_fitted_low_rank_plus_residual_covariance():
    images = _fake_data(1, n=200, size=8)
    d = fit_pca_reference(images, k=10)
    ref = make_reference("pca", GREY, data=d)
    a = _matrix(ref).double() * GREY.std[0]  # pixel units
    flat = images.flatten(1).double()
    cov = torch.cov(flat.T)
    assert d["pca"]["k"] == 10 and ref.z_shape == (10 + 64,)
    assert torch.allclose(torch.trace(a @ a.T), torch.trace(cov), rtol=1e-3)  # residual keeps the total variance
    ev = torch.linalg.eigvalsh(cov)
    got = torch.linalg.eigvalsh(a @ a.T)  # the data's top 10 eigenvalues, then the residual variance
    assert torch.allclose(got[-10:], ev[-10:], rtol=1e-3)
    assert torch.allclose(got[:-10], torch.full((54,), d["pca"]["residual_var"], dtype=torch.float64), rtol=1e-3)
    pix_mean = ref.x_mean.flatten().double() * GREY.std[0] + GREY.mean[0]
    assert torch.allclose(pix_mean, flat.mean(0), atol=1e-4)
    with pytest.raises(ValueError, match="fitted at"):
        make_reference("pca", ModelInfo("timm:lenet_caffe", 10, 1, (1, 6, 6), (0.1,), (0.5,)), data=d)


def test_clipped_score_sees_the_displayed_pixels():
    seen = []

    def score(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return x.flatten(1).sum(1)

    clipped = PixelClippedScore(score, GREY)
    x = torch.tensor([-5.0, 0.5, 5.0]).view(1, 1, 1, 3)
    clipped(x)
    assert torch.allclose(seen[0] * 0.5 + 0.1, torch.tensor([0.0, 0.35, 1.0]).view(1, 1, 1, 3))


def test_white_reference_reproduces_n0_sigma2_and_todays_sampler():
    sigma = 2.5
    ref = make_reference("white", GREY, sigma=sigma)
    run = sample_reference(_zero_score, ref, HMCConfig(iters=2, chains=3000, seed=0, **_quarter(sigma)), projections=0)
    x = run.x.flatten()
    assert abs(float(x.mean())) < 0.05 and abs(float(x.var()) / sigma ** 2 - 1) < 0.03

    # a small non-linear score: x-space HMC (hmc.py) and z-space HMC through the white reference take the same path
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 36, 1))

    def score(x: torch.Tensor) -> torch.Tensor:
        return net(x).squeeze(1) * 3

    cfg = HMCConfig(iters=6, leapfrog_steps=5, step_size=0.3, mass=0.5, sigma=sigma, chains=4, seed=3, adapt_steps=3)
    x0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * sigma
    old = hmc_sample(score, x0, cfg, generator=torch.Generator().manual_seed(3))
    new = sample_reference(score, ref, cfg)
    assert torch.equal(old.trace["accepted"], new.result.trace["accepted"])
    assert torch.allclose(old.x, new.x, atol=5e-3)  # float32 rounding differs (x = sigma z)
    assert torch.allclose(old.trace["score"], new.result.trace["score"], atol=5e-3)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_linear_and_quadratic_scores(temperature):
    ref = make_reference("pink", GREY, data=_data(1), sigma=0.7)
    a_mat = _matrix(ref).double()
    cov = a_mat @ a_mat.T
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, generator=g, dtype=torch.float64)

    def linear(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ w.float()

    cfg = HMCConfig(iters=4, chains=3000, seed=2, temperature=temperature, **_quarter(0.7))
    run = sample_reference(linear, ref, cfg, projections=0)
    # exp(<w, x> / T) N(mu, S) = N(mu + S w / T, S)
    mean = ref.mu.flatten().double() + cov @ w / temperature
    emp = run.x.flatten(1).double().mean(0)
    se = cov.diagonal().sqrt() / math.sqrt(3000)
    assert float(((emp - mean) / se).abs().max()) < 5

    white = make_reference("white", GREY, sigma=1.5)
    c = 0.8

    def quadratic(x: torch.Tensor) -> torch.Tensor:
        return -c * x.flatten(1).pow(2).sum(1) / 2

    run = sample_reference(quadratic, white, HMCConfig(iters=6, chains=2000, seed=2, temperature=temperature,
                                                       leapfrog_steps=8, step_size=0.12, mass=1.0), projections=0)
    var = 1 / (1 / 1.5 ** 2 + c / temperature)  # exp(-c |x|^2 / 2T) N(0, s^2 I): precision adds
    assert abs(float(run.x.var()) / var - 1) < 0.05
    tilted = tilted_score(quadratic, white, temperature)
    z = torch.randn(3, *white.z_shape)
    assert torch.allclose(tilted(z), quadratic(white.to_x(z)) / temperature)


def test_running_mean_and_projections():
    ref = make_reference("pink", GREY, data=_data(1))
    seen = []
    cfg = HMCConfig(iters=7, leapfrog_steps=3, step_size=0.3, mass=1.0, chains=5, seed=0, adapt_steps=2)

    def record(step):
        seen.append(ref.to_x(step.x.detach()))

    run = sample_reference(lambda x: x.flatten(1)[:, :5].sum(1), ref, cfg, callback=record)
    assert run.warmup == 2 and len(seen) == 7
    assert torch.allclose(run.mean_x, torch.stack(seen[2:]).mean(0), atol=1e-5)
    assert run.projections.shape == (7, 5, 4)
    monitor = ChainMonitor(ref, warmup=100)
    assert monitor.mean_x() is None


def test_transform_averaged_score_keeps_chain_groups():
    def score(x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        group = torch.arange(b) // (b // 2)  # two nodes: the first half of the batch is node 0
        return x[:, 0, 1, 2] * (1 + group)

    avg = TransformAveragedScore(score, shifts=[(0, 0), (1, 0)])
    x = torch.randn(4, 1, 8, 8)
    want = (x[:, 0, 1, 2] + x[:, 0, 0, 2]) / 2 * torch.tensor([1.0, 1.0, 2.0, 2.0])
    assert torch.allclose(avg(x), want)
    zoom = TransformAveragedScore(lambda x: x.flatten(1).sum(1), scales=[1.0, 1.25, 0.75])
    assert zoom(torch.ones(2, 1, 8, 8)).shape == (2,)


def test_pca_named_by_its_dataset():
    info = create_model_info_lenet()
    assert make_reference("pca:fashion_mnist", info).data == "fashion_mnist_pca"
    assert make_reference("pca", info).data == "mnist_pca"


def create_model_info_lenet() -> ModelInfo:
    from gencnn_plugin import create_model

    return create_model("lenet")[1]


def test_the_1f_reference_is_the_photos_with_a_1_over_f_amplitude():
    photos, one_f = load_reference_data("imagenet_photos"), load_reference_data("imagenet_1f")
    assert one_f["mean"] == photos["mean"] and one_f["colour_cov"] == photos["colour_cov"]
    assert one_f["spectrum"]["alpha"] == 1.0 < photos["spectrum"]["alpha"]
    info = ModelInfo("tv:squeezenet1_1", 10, 3, (3, 64, 64), RGB.mean, RGB.std)
    a, b = make_reference("pink:imagenet_1f", info), make_reference("pink", info)
    # the rfft2 filter along the first row: amplitude ~ f^-alpha, so doubling f halves it (alpha 1)
    amp = a.amplitude[0]
    assert torch.allclose(amp[4] / amp[8], torch.tensor(2.0), rtol=1e-5)
    assert float(b.amplitude[0][4] / b.amplitude[0][8]) == pytest.approx(2 ** photos["spectrum"]["alpha"], rel=1e-5)
    assert torch.equal(a.mu, b.mu) and torch.equal(a.colour, b.colour)
