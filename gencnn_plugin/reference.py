"""Reference distributions q(x) for generative visualization (paper eq. 1 and section 3.4), sampled in whitened
coordinates.

The paper's model is p_y(x) ~ exp(f_y(x)) q(x) with q = N(0, sigma^2 I) in the model's normalised input space; q is a
choice (section 3.1: "the reference distribution q(x) may not be unique"). Here q = N(mu, A A^T) is any Gaussian
whose square root A is a fixed linear map, so x = mu + A z with z ~ N(0, I). Sampling

    p(z) ~ exp(f_y(mu + A z) / T) N(z; 0, I),   U(z) = -f_y(mu + A z) / T + |z|^2 / 2

by HMC and mapping x = mu + A z draws EXACTLY from p(x) ~ exp(f_y(x) / T) q(x): the tilt depends on z only through
x, so pushing p(z) forward through the linear map gives q's pushforward tilted by the same factor (no Jacobian
enters, even when A is not square). T = 1 is the paper's model; T -> 0 approaches activation maximisation under q.

Kinds (:func:`make_reference`):

- ``white``: the paper's q = N(0, sigma^2 I) (A = sigma I, mu = 0). :func:`sample_reference` with it reproduces
  :func:`gencnn_plugin.hmc.hmc_sample` on x (same random numbers; the mass is rescaled, see :func:`z_config`).
- ``pink``: a stationary Gaussian with a natural-image power spectrum, amplitude ~ 1 / f^alpha, and a colour
  covariance, both fitted to data (:func:`fit_reference`) and stored in pixel space in
  ``zoo_configs/references/<name>.yaml``; its per-pixel marginal variance equals the data's (sigma = 1).
  A is a convolution applied by FFT on a canvas padded on each side (half the image, at most 32 px), then
  cropped, so the picture shows no circular wrap-around (still linear, still exact).
- ``spectral``: as ``pink`` with the fitted radial amplitude table instead of the power law.
- ``lowres``: white noise on a grid ``factor`` times coarser, bilinearly upsampled, colour-mixed; its mean marginal
  variance equals the data's. A low-dimensional reference: the samples live in a d / factor^2 subspace.
- ``pca``: the Gaussian with the training images' mean image and covariance (not stationary): probabilistic PCA,
  A = [U_k diag(sqrt(lambda_k - r)), sqrt(r) I] with the top k eigenpairs and r the mean of the remaining
  eigenvalues, so q's covariance has the data's top k eigenvalues exactly, r elsewhere, and the data's trace.
  For small inputs (its data file holds k x H x W numbers); the maximum-entropy reference for the data's first two
  moments, where the paper's white noise matches only the marginal variances.

``sigma`` scales A for every kind (pixel std of q = sigma x the data's for the fitted kinds).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .hmc import HMCConfig, HMCResult, HMCStep, hmc_sample
from .specs import ModelInfo

__all__ = ["KINDS", "REFERENCE_DIR", "Reference", "ReferenceRun", "ChainMonitor", "TransformAveragedScore",
           "PixelClippedScore", "RandomAffineScore", "FixedAffineScore", "affine_thetas", "affine_views",
           "make_reference", "fit_reference", "fit_pca_reference", "PCAReference", "save_reference_data",
           "load_reference_data", "parse_reference",
           "tilted_score", "z_config", "initial_z", "sample_reference", "radial_amplitude"]

KINDS = ("white", "pink", "spectral", "lowres", "pca")
_PKG = Path(__file__).resolve().parent
REFERENCE_DIR = next((p for p in (_PKG / "zoo_configs" / "references", _PKG.parent / "zoo_configs" / "references")
                      if p.is_dir()), _PKG.parent / "zoo_configs" / "references")
# the data file a fitted kind uses when none is named: photos for RGB models, MNIST digits for grey ones
DEFAULT_DATA = {3: "imagenet_photos", 1: "mnist"}


# ----------------------------------------------------------------------------------------------------------------
# fitting (pixel space, [0, 1])
# ----------------------------------------------------------------------------------------------------------------

def radial_amplitude(images: torch.Tensor, bins: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged amplitude spectrum sqrt(E|F(f)|^2) of mean-subtracted, Hann-windowed images (N, C, H, W),
    averaged over channels; returns (bin centres in cycles/pixel, amplitude), bins spanning (0, 0.5]."""
    x = images.double()
    x = x - x.mean((2, 3), keepdim=True)
    h, w = x.shape[-2:]
    win = torch.outer(torch.hann_window(h, periodic=False, dtype=torch.float64),
                      torch.hann_window(w, periodic=False, dtype=torch.float64))
    power = (torch.fft.fft2(x * win).abs() ** 2).mean((0, 1))  # (H, W)
    fy = torch.fft.fftfreq(h, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.fftfreq(w, dtype=torch.float64).view(1, -1)
    f = torch.sqrt(fy ** 2 + fx ** 2)
    edges = torch.linspace(0, 0.5, bins + 1, dtype=torch.float64)
    centres, amps = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (f > lo) & (f <= hi)
        if sel.any():
            centres.append(float((lo + hi) / 2))
            amps.append(float(power[sel].mean().sqrt()))
    return np.array(centres), np.array(amps)


def fit_reference(images: torch.Tensor, name: str = "custom", source: str = "",
                  fit_range: tuple[float, float] = (0.02, 0.25)) -> dict[str, Any]:
    """What a reference data file holds, fitted to images (N, C, H, W) in [0, 1] pixels (uint8 is divided by 255).

    Per-channel mean, the C x C colour covariance of pixel values (marginal variances included), and the spatial
    spectrum: the exponent alpha of a least-squares power law amplitude ~ f^-alpha over ``fit_range`` cycles/pixel
    and the radial amplitude table (normalised to 1 at its first bin). Plain numbers only (YAML-safe).
    """
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
    c = x.shape[1]
    flat = x.permute(1, 0, 2, 3).reshape(c, -1).double()
    mean = flat.mean(1)
    cov = torch.cov(flat) if c > 1 else flat.var().view(1, 1)
    freqs, amp = radial_amplitude(x)
    sel = (freqs >= fit_range[0]) & (freqs <= fit_range[1])
    slope = np.polyfit(np.log(freqs[sel]), np.log(amp[sel]), 1)[0]
    return {
        "name": name, "source": source, "channels": c, "fitted_size": [int(x.shape[2]), int(x.shape[3])],
        "images": int(x.shape[0]),
        "mean": [round(float(v), 6) for v in mean],
        "colour_cov": [[round(float(v), 8) for v in row] for row in cov.view(c, c)],
        "spectrum": {"alpha": round(float(-slope), 4), "fit_range": [float(fit_range[0]), float(fit_range[1])],
                     "freq": [round(float(v), 6) for v in freqs], "amplitude": [round(float(v / amp[0]), 6)
                                                                               for v in amp]},
    }


def fit_pca_reference(images: torch.Tensor, k: int = 64, name: str = "custom", source: str = "",
                      digits: int = 5) -> dict[str, Any]:
    """What a ``pca`` data file holds: the mean image, the top ``k`` eigenvalues / eigenvectors of the pixel
    covariance of images (N, C, H, W) in [0, 1], and the mean of the other eigenvalues (the isotropic residual)."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    n, c, h, w = x.shape
    flat = x.reshape(n, -1).double()
    mean = flat.mean(0)
    cov = torch.cov(flat.T)
    ev, vec = torch.linalg.eigh(cov)
    ev, vec = ev.flip(0).clamp_min(0), vec.flip(1)
    k = min(int(k), ev.numel() - 1)
    sign = torch.where(vec[:, :k].sum(0) < 0, -1.0, 1.0).to(vec.dtype)  # a deterministic sign per component

    def r(v: float) -> float:
        return float(f"{float(v):.{digits}g}")

    return {
        "name": name, "source": source, "channels": c, "fitted_size": [h, w], "images": n,
        "mean": [r(v) for v in x.mean((0, 2, 3))],
        "colour_cov": [[r(v) for v in row] for row in (torch.cov(x.permute(1, 0, 2, 3).reshape(c, -1).double())
                                                      .view(c, c) if c > 1 else flat.var().view(1, 1))],
        "spectrum": {"alpha": 0.0},
        "pca": {"k": k, "residual_var": r(ev[k:].mean()), "explained": r(ev[:k].sum() / ev.sum()),
                "eigenvalues": [r(v) for v in ev[:k]], "mean_image": [r(v) for v in mean],
                "components": [[r(v) for v in col] for col in (vec[:, :k] * sign).T]},
    }


def _check_data(d: Any, where: str) -> dict[str, Any]:
    """A reference data mapping validated field by field (a data file is data: numbers of the right shapes)."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping")
    try:
        c = int(d["channels"])
        mean = [float(v) for v in d["mean"]]
        cov = np.array(d["colour_cov"], dtype=np.float64)
        spec = d["spectrum"]
        alpha = float(spec["alpha"])
        freq = np.array(spec.get("freq", []), dtype=np.float64)
        amp = np.array(spec.get("amplitude", []), dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: missing or malformed field ({type(e).__name__}: {e})") from None
    if c not in (1, 3) or len(mean) != c or cov.shape != (c, c):
        raise ValueError(f"{where}: channels {c}, mean of {len(mean)}, colour_cov of shape {cov.shape} do not agree")
    if not (np.all(np.isfinite(cov)) and np.allclose(cov, cov.T, atol=1e-6) and np.linalg.eigvalsh(cov).min() > 0):
        raise ValueError(f"{where}: colour_cov must be a finite symmetric positive-definite matrix")
    if not 0 <= alpha <= 4:
        raise ValueError(f"{where}: spectrum alpha {alpha} outside [0, 4]")
    if freq.shape != amp.shape or (amp.size and (np.any(amp <= 0) or np.any(np.diff(freq) <= 0))):
        raise ValueError(f"{where}: the amplitude table needs increasing frequencies and positive amplitudes")
    if "pca" in d:
        try:
            pca = d["pca"]
            size = c * int(d["fitted_size"][0]) * int(d["fitted_size"][1])
            k = int(pca["k"])
            ok = (len(pca["eigenvalues"]) == k and len(pca["components"]) == k and len(pca["mean_image"]) == size
                  and all(len(v) == size for v in pca["components"]) and float(pca["residual_var"]) >= 0
                  and min(float(v) for v in pca["eigenvalues"]) >= 0)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: malformed pca section ({type(e).__name__}: {e})") from None
        if not ok:
            raise ValueError(f"{where}: the pca section's sizes do not agree (k, eigenvalues, components, mean_image)")
    return dict(d)


def save_reference_data(data: dict[str, Any], path: str | Path, comment: str = "") -> Path:
    """Write a fitted reference (:func:`fit_reference`) as YAML, with an optional comment header."""
    import yaml

    _check_data(data, str(path))
    head = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)
    path = Path(path)
    path.write_text(head + body)
    return path


def load_reference_data(name_or_path: str | Path) -> dict[str, Any]:
    """A reference data file by name (zoo_configs/references/NAME.yaml) or path, validated.

    Parsed once per file version and shared (treat it as read-only): a PCA file is ~0.5 MB of YAML, and parsing it
    holds the GIL for about a second, which would freeze the desktop app's window if repeated on every run."""
    path = Path(name_or_path)
    if not path.is_file():
        path = REFERENCE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in REFERENCE_DIR.glob("*.yaml")) if REFERENCE_DIR.is_dir() else []
        raise FileNotFoundError(f"no reference data {str(name_or_path)!r} (known: {', '.join(known) or 'none'})")
    st = path.stat()
    return _parsed_data(str(path.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _parsed_data(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """yaml.safe_load semantics with libyaml's parser where PyYAML has it (2-3x faster), validated."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        return _check_data(yaml.load(f, Loader=loader), path)  # a safe loader (no tags, no objects)


# ----------------------------------------------------------------------------------------------------------------
# the reference: x = mu + A z
# ----------------------------------------------------------------------------------------------------------------

class Reference(nn.Module):
    """q = N(mu, A A^T) in a model's normalised input space, with A applied as a linear map of white z.

    ``z_shape`` is the shape of one whitened state, ``x_shape`` the model input's; :meth:`to_x` is batched and
    differentiable; :meth:`sample` draws x ~ q. ``sigma`` is the overall scale of A (the HMC mass is rescaled by
    sigma^2 in z, :func:`z_config`).
    """

    def __init__(self, kind: str, x_shape: tuple[int, int, int], z_shape: tuple[int, ...], mu: torch.Tensor,
                 colour: torch.Tensor, sigma: float = 1.0, amplitude: torch.Tensor | None = None, pad: int = 0,
                 factor: int = 1, data: str | None = None) -> None:
        super().__init__()
        self.kind, self.x_shape, self.z_shape, self.sigma = kind, tuple(x_shape), tuple(z_shape), float(sigma)
        self.pad, self.factor, self.data = int(pad), int(factor), data
        self.register_buffer("mu", mu.float().view(1, -1, 1, 1))
        self.register_buffer("colour", colour.float())  # C x C: its product with its transpose is the colour cov
        self.register_buffer("amplitude", amplitude.float() if amplitude is not None else torch.ones(1))
        self._lowres_norm = self._lowres_scale() if kind == "lowres" else 1.0

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, data={self.data}, sigma={self.sigma:g}, x_shape={self.x_shape}, "
                f"z_shape={self.z_shape}")

    def _lowres_scale(self) -> float:
        """1 / sqrt(mean marginal variance) of bilinearly upsampled unit white noise over the cropped image."""
        _, h, w = self.x_shape
        _, hz, wz = self.z_shape
        var = []
        for n_in, n_out in ((hz, h), (wz, w)):
            eye = torch.eye(n_in, dtype=torch.float64).unsqueeze(1)  # (n_in, 1, n_in): the basis as signals
            up = F.interpolate(eye, scale_factor=self.factor, mode="linear", align_corners=False)[:, 0]
            off = (up.shape[1] - n_out) // 2
            var.append((up[:, off:off + n_out] ** 2).sum(0))
        return float(1.0 / torch.sqrt(torch.outer(var[0], var[1]).mean()))

    def spatial(self, z: torch.Tensor) -> torch.Tensor:
        """The spatial part of A: unit-marginal-variance correlated noise (B, C, H, W) from z, before colour."""
        _, h, w = self.x_shape
        if self.kind == "white":
            return z
        if self.kind in ("pink", "spectral"):
            spec = torch.fft.rfft2(z, norm="ortho") * self.amplitude
            s = torch.fft.irfft2(spec, s=z.shape[-2:], norm="ortho")
            return s[..., self.pad:self.pad + h, self.pad:self.pad + w]
        if self.kind == "lowres":
            up = F.interpolate(z, scale_factor=self.factor, mode="bilinear", align_corners=False)
            oy, ox = (up.shape[-2] - h) // 2, (up.shape[-1] - w) // 2
            return up[..., oy:oy + h, ox:ox + w] * self._lowres_norm
        raise ValueError(f"unknown reference kind {self.kind!r}")

    def to_x(self, z: torch.Tensor) -> torch.Tensor:
        """x = mu + A z for a batch z (B, *z_shape): linear, differentiable."""
        s = self.spatial(z.float())
        if self.kind != "white":
            s = torch.einsum("ij,bjhw->bihw", self.colour, s)
        return self.mu + self.sigma * s

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.to_x(z)

    @property
    def x_mean(self) -> torch.Tensor:
        """The mean of q, (1, *x_shape)."""
        return self.mu.expand(1, *self.x_shape)

    def sample_z(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n whitened states z ~ N(0, I) on the reference's device."""
        return torch.randn(n, *self.z_shape, generator=generator, device=self.mu.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws x ~ q (B, *x_shape)."""
        with torch.no_grad():
            return self.to_x(self.sample_z(n, generator))

    def marginal_std(self) -> torch.Tensor:
        """The per-channel marginal standard deviation of q in normalised space (mean over pixels for lowres)."""
        return self.sigma * self.colour.pow(2).sum(1).sqrt()


def _amplitude_grid(size: tuple[int, int], amp_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The rfft2 amplitude filter on a canvas, normalised so the filtered unit white noise has unit variance."""
    hc, wc = size
    fy = torch.fft.fftfreq(hc, dtype=torch.float64).view(-1, 1)
    full = amp_fn(torch.sqrt(fy ** 2 + torch.fft.fftfreq(wc, dtype=torch.float64).view(1, -1) ** 2))
    var = (full ** 2).mean()  # Parseval (orthonormal FFT): the per-pixel variance of the filtered noise
    half = amp_fn(torch.sqrt(fy ** 2 + torch.fft.rfftfreq(wc, dtype=torch.float64).view(1, -1) ** 2))
    return (half / var.sqrt()).float()


def parse_reference(spec: str) -> tuple[str, str | None]:
    """``KIND`` or ``KIND:DATA`` (``pink:fashion_mnist``); a bare data-file name means ``pink:NAME``."""
    kind, _, data = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        if not data and (REFERENCE_DIR / f"{spec}.yaml").is_file():
            return "pink", spec
        raise ValueError(f"unknown reference {spec!r}: use one of {', '.join(KINDS)}, KIND:DATA or a data file name")
    return kind, (data.strip() or None)


def make_reference(kind: str, info: ModelInfo, sigma: float = 1.0, data: str | dict | None = None,
                   factor: int | None = None, pad: int | None = None) -> Reference:
    """The reference ``kind`` (white, pink, spectral, lowres; or ``KIND:DATA``) for a model's input.

    Fitted kinds read ``data`` (a file name in zoo_configs/references, a path, or a mapping from
    :func:`fit_reference`; default: imagenet_photos for 3 channels, mnist for 1) in PIXEL space and map it into the
    model's normalised space with ``info.mean`` / ``info.std``. ``factor``: lowres downsampling (default H / 28,
    i.e. 8 at 224 px, 4 at 28 px); ``pad``: canvas padding of the FFT kinds on each side (default min(H / 2, 32):
    a 224-px image sits on a 288-px canvas, a 28-px one on 56).
    """
    if ":" in kind or kind not in KINDS:
        kind, named = parse_reference(kind)
        data = data if data is not None else named
    c, h, w = (int(v) for v in info.input_size)
    if sigma <= 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be positive, got {sigma}")
    if kind == "white":
        return Reference("white", (c, h, w), (c, h, w), torch.zeros(c), torch.eye(c), sigma)
    if data is None:
        data = DEFAULT_DATA.get(c)
        if data is None:
            raise ValueError(f"no default reference data for {c} channels; name one (data=...)")
        data = f"{data}_pca" if kind == "pca" else data
    elif kind == "pca" and isinstance(data, str) and (REFERENCE_DIR / f"{data}_pca.yaml").is_file():
        data = f"{data}_pca"  # pca:fashion_mnist names the dataset; its PCA lives in fashion_mnist_pca.yaml
    d = _check_data(data, "reference data") if isinstance(data, dict) else load_reference_data(data)
    dname = d.get("name", str(data)) if isinstance(data, dict) else str(data)
    if d["channels"] != c:
        raise ValueError(f"reference data {dname!r} has {d['channels']} channels, the model takes {c}")
    mean_m = torch.tensor(info.mean, dtype=torch.float64)
    std_m = torch.tensor(info.std, dtype=torch.float64)
    mu = (torch.tensor(d["mean"], dtype=torch.float64) - mean_m) / std_m
    cov = torch.tensor(d["colour_cov"], dtype=torch.float64)
    colour = torch.linalg.cholesky(cov) / std_m.view(-1, 1)  # normalised space: rows divided by the model's std
    if kind == "pca":
        return _pca_reference(d, dname, (c, h, w), mean_m, std_m, sigma)
    if kind == "lowres":
        k = int(factor or max(4, h // 28))
        hz, wz = -(-h // k) + 2, -(-w // k) + 2
        return Reference("lowres", (c, h, w), (c, hz, wz), mu, colour, sigma, factor=k, data=dname)
    p = int(min(h // 2, 32) if pad is None else pad)
    canvas = (h + 2 * p, w + 2 * p)
    spec = d["spectrum"]
    if kind == "pink":
        alpha, fmin = float(spec["alpha"]), 1.0 / max(canvas)

        def amp_fn(f: torch.Tensor) -> torch.Tensor:
            return f.clamp_min(fmin) ** -alpha
    else:  # spectral: the fitted radial table (cycles/pixel), flat beyond its ends
        freq = torch.tensor(spec["freq"], dtype=torch.float64)
        amp = torch.tensor(spec["amplitude"], dtype=torch.float64)
        if freq.numel() < 2:
            raise ValueError(f"reference data {dname!r} has no amplitude table for kind 'spectral'")

        def amp_fn(f: torch.Tensor) -> torch.Tensor:
            fl = f.clamp(float(freq[0]), float(freq[-1]))
            i = torch.searchsorted(freq, fl.reshape(-1)).clamp(1, freq.numel() - 1).view(fl.shape)
            t = ((fl.log() - freq[i - 1].log()) / (freq[i].log() - freq[i - 1].log())).clamp(0, 1)
            return torch.exp(amp[i - 1].log() * (1 - t) + amp[i].log() * t)  # log-log interpolation
    return Reference(kind, (c, h, w), (c, *canvas), mu, colour, sigma, _amplitude_grid(canvas, amp_fn), pad=p,
                     data=dname)


class PCAReference(Reference):
    """q = N(m, U_k diag(lambda_k - r) U_k^T + r I): z = (k component scores, one white value per pixel)."""

    def __init__(self, x_shape: tuple[int, int, int], mean_image: torch.Tensor, basis: torch.Tensor, residual: float,
                 std: torch.Tensor, sigma: float, data: str | None) -> None:
        c = x_shape[0]
        d = math.prod(x_shape)
        super().__init__("pca", x_shape, (basis.shape[1] + d,), torch.zeros(c), torch.eye(c), sigma, data=data)
        self.k, self.residual = int(basis.shape[1]), float(residual)
        self.register_buffer("mean_image", mean_image.float().view(1, *x_shape))
        self.register_buffer("basis", basis.float())  # (d, k) in normalised units: U_k sqrt(lambda_k - r) / std
        self.register_buffer("res_scale", (math.sqrt(residual) / std.float()).view(1, c, 1, 1))

    def to_x(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        comp = (z[:, :self.k] @ self.basis.T).view(-1, *self.x_shape)
        res = z[:, self.k:].view(-1, *self.x_shape) * self.res_scale
        return self.mean_image + self.sigma * (comp + res)

    def spatial(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the pca reference is not stationary: use to_x")

    @property
    def x_mean(self) -> torch.Tensor:
        return self.mean_image

    def marginal_std(self) -> torch.Tensor:
        var = self.basis.pow(2).sum(1).view(self.x_shape) + self.res_scale.view(-1, 1, 1) ** 2
        return self.sigma * var.mean((1, 2)).sqrt()


def _pca_reference(d: dict[str, Any], name: str, x_shape: tuple[int, int, int], mean_m: torch.Tensor,
                   std_m: torch.Tensor, sigma: float) -> PCAReference:
    if "pca" not in d:
        raise ValueError(f"reference data {name!r} has no pca section (fit it with fit_pca_reference)")
    if [x_shape[1], x_shape[2]] != [int(v) for v in d["fitted_size"]]:
        raise ValueError(f"reference data {name!r} was fitted at {d['fitted_size']}; the model takes {x_shape[1:]}")
    pca = d["pca"]
    c = x_shape[0]
    std_px = std_m.view(c, 1).repeat_interleave(x_shape[1] * x_shape[2], 0).view(-1, 1)  # (d, 1)
    mean_px = mean_m.view(c, 1).repeat_interleave(x_shape[1] * x_shape[2], 0).view(-1)
    comps = torch.tensor(pca["components"], dtype=torch.float64).T  # (d, k)
    lam = (torch.tensor(pca["eigenvalues"], dtype=torch.float64) - float(pca["residual_var"])).clamp_min(0)
    basis = comps * lam.sqrt().view(1, -1) / std_px  # PPCA: U_k (Lambda_k - r)^(1/2), so the top eigenvalues are exact
    mean_image = (torch.tensor(pca["mean_image"], dtype=torch.float64) - mean_px) / std_px.view(-1)
    return PCAReference(x_shape, mean_image.view(x_shape), basis, float(pca["residual_var"]), std_m, sigma, name)


# ----------------------------------------------------------------------------------------------------------------
# sampling in z
# ----------------------------------------------------------------------------------------------------------------

class _ReferenceScore(nn.Module):
    """z -> f(to_x(z)) / T."""

    def __init__(self, score_fn: Callable[[torch.Tensor], torch.Tensor], reference: Reference, temperature: float
                 ) -> None:
        super().__init__()
        self.score_fn, self.reference, self.temperature = score_fn, reference, float(temperature)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        f = self.score_fn(self.reference.to_x(z))
        return f if self.temperature == 1.0 else f / self.temperature


def tilted_score(score_fn: Callable[[torch.Tensor], torch.Tensor], reference: Reference, temperature: float = 1.0
                 ) -> nn.Module:
    """The function of z whose HMC with sigma = 1 samples p(x) ~ exp(f(x) / T) q(x): z -> f(mu + A z) / T.

    Either put T here (and leave HMCConfig.temperature at 1) or use T = 1 here and the config's temperature, which
    keeps the recorded score trace in f's own units (:func:`sample_reference` does that).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return _ReferenceScore(score_fn, reference, temperature)


def z_config(config: HMCConfig, reference: Reference) -> HMCConfig:
    """The HMC settings in z: sigma 1, mass x sigma^2, step size unchanged.

    For ``white`` this is the exact image of x-space HMC under x = sigma z (momentum psi = sigma phi, so
    K = |psi|^2 / (2 m sigma^2) = |phi|^2 / (2 m)): same leapfrog path, same energy errors, same random numbers.
    """
    return replace(config, sigma=1.0, mass=config.mass * reference.sigma ** 2)


def initial_z(reference: Reference, chains: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """z0 ~ N(0, I), drawn on the CPU from ``seed`` as :func:`gencnn_plugin.visualize.initial_states` draws x0
    (for ``white``, x0 = sigma z0 exactly)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(chains, *reference.z_shape, generator=g).to(device)


class ChainMonitor:
    """An hmc_sample callback: the running mean of x per chain over iterations >= ``warmup`` (an estimate of E_p[x]
    when the chains have converged) and the trace of ``k`` fixed random unit projections <v_j, x - mu> (for R-hat).

    Works on z (the states HMC sees): the mean is accumulated in z and mapped once (to_x is affine, so
    mean(to_x(z)) = to_x(mean(z))).
    """

    def __init__(self, reference: Reference, warmup: int = 0, projections: int = 4, seed: int = 1234,
                 then: Callable[[HMCStep], bool | None] | None = None) -> None:
        self.reference, self.warmup, self.then = reference, int(warmup), then
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(projections, *reference.x_shape, generator=g)
        self.directions = (v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).to(reference.mu.device)
        self.sum_z: torch.Tensor | None = None
        self.count = 0
        self.projections: list[torch.Tensor] = []

    def __call__(self, step: HMCStep) -> bool | None:
        z = step.x.detach()
        if step.iteration >= self.warmup:
            self.sum_z = z.clone() if self.sum_z is None else self.sum_z + z
            self.count += 1
        if self.directions.shape[0]:
            with torch.no_grad():
                x = self.reference.to_x(z) - self.reference.x_mean
                self.projections.append(torch.einsum("bchw,kchw->bk", x, self.directions).cpu())
        return self.then(step) if self.then is not None else None

    @property
    def mean_z(self) -> torch.Tensor | None:
        return None if self.sum_z is None else self.sum_z / self.count

    def mean_x(self) -> torch.Tensor | None:
        """The running mean of x per chain (B, *x_shape), or None before any post-warm-up iteration."""
        mz = self.mean_z
        if mz is None:
            return None
        with torch.no_grad():
            return self.reference.to_x(mz)

    def projection_trace(self) -> torch.Tensor:
        """(iters, chains, k) projections, every iteration (warm-up included)."""
        return torch.stack(self.projections) if self.projections else torch.zeros(0)


@dataclass
class ReferenceRun:
    """A finished run in z: the HMC result (states and traces in z; ``trace['score']`` is f, untempered), the final
    samples x, the running means E_p[x] per chain, the projection traces (iters, chains, k), and the z-settings."""

    result: HMCResult
    x: torch.Tensor
    mean_x: torch.Tensor | None
    projections: torch.Tensor
    config: HMCConfig
    warmup: int
    extra: dict = field(default_factory=dict)


def sample_reference(score_fn: Callable[[torch.Tensor], torch.Tensor], reference: Reference, config: HMCConfig,
                     chains: int | None = None, *, z0: torch.Tensor | None = None,
                     generator: torch.Generator | None = None, warmup: int | None = None, projections: int = 4,
                     callback: Callable[[HMCStep], bool | None] | None = None) -> ReferenceRun:
    """HMC in whitened coordinates for exp(f(x) / T) q(x), T = ``config.temperature``, q = ``reference``.

    ``chains`` (default ``config.chains``) rows start at ``z0`` (default :func:`initial_z` from ``config.seed``);
    the momenta come from ``generator`` (default seeded with ``config.seed``, as visualize.sample_node does).
    ``warmup`` (default ``config.adapt_steps``) iterations are left out of the running mean.
    """
    device = reference.mu.device
    n = chains if chains is not None else config.chains
    z0 = initial_z(reference, n, config.seed, device) if z0 is None else z0.to(device)
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    zc = z_config(config, reference)
    warm = config.adapt_steps if warmup is None else int(warmup)
    monitor = ChainMonitor(reference, warm, projections, then=callback)
    score = tilted_score(score_fn, reference, 1.0)  # T is applied by hmc_sample (zc.temperature)
    result = hmc_sample(score, z0, zc, generator=generator, callback=monitor)
    with torch.no_grad():
        x = reference.to_x(result.x)
    return ReferenceRun(result, x, monitor.mean_x(), monitor.projection_trace(), zc, warm)


# ----------------------------------------------------------------------------------------------------------------
# score transforms: deterministic, so HMC stays exact -- for a different node than f_y, stated as such
# ----------------------------------------------------------------------------------------------------------------

class PixelClippedScore(nn.Module):
    """f(clip(x)): the node's score of the image as an image file holds it (x * std + mean clipped to [0, 1]).

    Piecewise linear in x, so HMC samples exp(f(clip(x)) / T) q(x) exactly. Without it a ReLU network's logit grows
    with the image's contrast (f(c x) ~ c f(x)), and at T < 1 the samples run far outside the pixel range.
    """

    def __init__(self, score_fn: Callable[[torch.Tensor], torch.Tensor], info: ModelInfo) -> None:
        super().__init__()
        self.score_fn = score_fn
        self.register_buffer("mean", torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_fn(((x * self.std + self.mean).clamp(0, 1) - self.mean) / self.std)


def view_mean(score_fn: Callable[[torch.Tensor], torch.Tensor], views: torch.Tensor) -> torch.Tensor:
    """mean_k f(views[:, k]) for views (B, K, C, H, W), in one batch whose rows keep chain b's views at b*K..b*K+K-1,
    so a multi-node NodeScore's grouping of chains holds."""
    return score_fn(views.flatten(0, 1)).view(views.shape[:2]).mean(1)


class TransformAveragedScore(nn.Module):
    """f_bar(x) = mean_k f(tau_k x) over a FIXED set of translations (dy, dx) in pixels and zoom factors.

    Deterministic, so HMC on it is exact -- for this smoothed node, which is not the network's f_y. Translations
    pad by reflection and crop; zooms resample bilinearly about the centre and crop or reflect-pad back. Chains stay
    consecutive in the batch (copies of chain b at rows b*K..b*K+K-1), so a multi-node NodeScore's grouping holds.
    """

    def __init__(self, score_fn: Callable[[torch.Tensor], torch.Tensor],
                 shifts: list[tuple[int, int]] | None = None, scales: list[float] | None = None) -> None:
        super().__init__()
        self.score_fn = score_fn
        self.shifts = [tuple(int(v) for v in s) for s in (shifts or [(0, 0)])]
        self.scales = [float(s) for s in (scales or [1.0])]
        self.transforms = [(s, z) for z in self.scales for s in self.shifts]

    @staticmethod
    def _transform(x: torch.Tensor, shift: tuple[int, int], scale: float) -> torch.Tensor:
        h, w = x.shape[-2:]
        if scale != 1.0:
            hs, ws = max(1, round(h * scale)), max(1, round(w * scale))
            y = F.interpolate(x, size=(hs, ws), mode="bilinear", align_corners=False)
            if scale > 1:
                oy, ox = (hs - h) // 2, (ws - w) // 2
                x = y[..., oy:oy + h, ox:ox + w]
            else:
                py, px = h - hs, w - ws
                x = F.pad(y, (px // 2, px - px // 2, py // 2, py - py // 2), mode="reflect")
        dy, dx = shift
        if dy or dx:
            p = max(abs(dy), abs(dx))
            xp = F.pad(x, (p, p, p, p), mode="reflect")
            x = xp[..., p - dy:p - dy + h, p - dx:p - dx + w]
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.transforms)
        if k == 1:
            return self.score_fn(self._transform(x, *self.transforms[0]))
        return view_mean(self.score_fn, torch.stack([self._transform(x, s, z) for s, z in self.transforms], dim=1))


# the warm start's random transforms by name (HMCConfig.warm_augment): the largest shift as a fraction of the side,
# the zoom range (< 1 shows a smaller copy of the image, reflected at its borders) and the largest rotation in degrees
WARM_TRANSFORMS: dict[str, tuple[float, tuple[float, float], float]] = {
    "standard": (8 / 224, (0.95, 1.05), 10.0),  # after lucent's standard_transforms, its zoom narrowed
    # 4x the shift, mostly zoom-out, 2x the rotation: what scores well must be an object seen at several sizes and
    # places, not a texture tiled to the pixel (benchmarks/augment_probe.py: chosen on the tuning classes)
    "wide": (32 / 224, (0.60, 1.20), 20.0),
}


class RandomAffineScore(nn.Module):
    """f(tau x) with tau a fresh random shift, zoom and rotation per image at every call: after lucent's
    ``standard_transforms`` (jitter 8 px, rotate +-10 degrees), with its zoom 0.90-1.10 narrowed to 0.95-1.05,
    reflected borders instead of grey padding, and one transform per image instead of one per batch. ``shift`` is
    the largest translation as a fraction of the side (8 px at 224 px), so 28-px digits move in proportion.

    ``WARM_TRANSFORMS`` names this default range ("standard") and a wider one. Random, so it is never what HMC
    samples: it shapes the warm start only (:func:`visualize.warm_start`), whose
    path is not part of the chain. Its generator is seeded, so a warm start repeats; ``rows`` of ``total`` (as for
    HMC's noise) make chains split over devices draw what they would draw in one run. Unlike torchvision's
    ``RandomAffine`` (one transform per call), every chain gets its own, in one ``grid_sample`` that gradients
    pass through. Identity ranges give f(x) up to the resampling's rounding.
    """

    def __init__(self, score_fn: Callable[[torch.Tensor], torch.Tensor], shift: float = WARM_TRANSFORMS["standard"][0],
                 zoom: tuple[float, float] = WARM_TRANSFORMS["standard"][1],
                 degrees: float = WARM_TRANSFORMS["standard"][2], seed: int = 0,
                 rows: torch.Tensor | None = None, total: int | None = None) -> None:
        super().__init__()
        self.score_fn = score_fn
        self.rows, self.total = (rows.cpu() if rows is not None else None), total
        self.shift, self.degrees, self.seed = float(shift), float(degrees), seed
        self.zoom = (float(zoom[0]), float(zoom[1]))
        self._generator: torch.Generator | None = None

    def thetas(self, n: int, device: torch.device) -> torch.Tensor:
        """(n, 2, 3) affine matrices in affine_grid's normalised coordinates (the side spans 2), drawn on the CPU
        (the same on any device)."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        u = torch.rand(self.total or n, 4, generator=self._generator, dtype=torch.float64)
        u = u if self.rows is None else u[self.rows]
        return affine_thetas(u, self.shift, self.zoom, self.degrees).to(device=device, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_fn(affine_views(x, self.thetas(x.shape[0], x.device)))


def affine_thetas(u: torch.Tensor, shift: float, zoom: tuple[float, float], degrees: float) -> torch.Tensor:
    """(n, 2, 3) affine matrices (affine_grid's normalised coordinates, the side spans 2) from uniform draws u (n, 4):
    a zoom in ``zoom``, a rotation within +-``degrees`` and a shift within +-``shift`` of the side on each axis."""
    z = zoom[0] + (zoom[1] - zoom[0]) * u[:, 0]
    angle = torch.deg2rad((2 * u[:, 1] - 1) * degrees)
    ty, tx = (2 * u[:, 2] - 1) * shift * 2, (2 * u[:, 3] - 1) * shift * 2
    cos, sin = torch.cos(angle) / z, torch.sin(angle) / z  # output pixel -> input pixel: zoom in = 1/zoom
    return torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)


def affine_views(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) resampled by theta (N, 2, 3): bilinear, borders reflected."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class FixedAffineScore(nn.Module):
    """f_bar(x) = mean_k f(tau_k x) over K FIXED affine transforms: the identity and K - 1 shifts, zooms and
    rotations drawn once (``seed``, not the chains' seed: the node is the same in every run) from a
    ``WARM_TRANSFORMS`` range (default "standard", as ``HMCConfig.affine_views`` with ``warm_augment`` off).

    Deterministic, so HMC on it is exact -- for this smoothed node, which is not the network's f_y. It is a K-point
    estimate of the expectation that the warm start's random transforms (:class:`RandomAffineScore`) ascend, so the
    chains keep scoring views that move the pixel grid (zooms, turns), not 8-px shifts a CNN sees almost alike.
    Chains stay consecutive in the batch (copies of chain b at rows b*K..b*K+K-1), as in
    :class:`TransformAveragedScore`.
    """

    def __init__(self, score_fn: Callable[[torch.Tensor], torch.Tensor], count: int,
                 shift: float = WARM_TRANSFORMS["standard"][0],
                 zoom: tuple[float, float] = WARM_TRANSFORMS["standard"][1],
                 degrees: float = WARM_TRANSFORMS["standard"][2], seed: int = 0) -> None:
        super().__init__()
        if count < 1:
            raise ValueError(f"count: {count} fixed views, at least 1 (the identity)")
        self.score_fn = score_fn
        u = torch.rand(count - 1, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
        self.register_buffer("thetas", torch.cat([identity, affine_thetas(u, shift, zoom, degrees)]).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k = x.shape[0], self.thetas.shape[0]
        copies = x.unsqueeze(1).expand(b, k, *x.shape[1:]).flatten(0, 1)  # chain b at rows b*K..b*K+K-1
        return view_mean(self.score_fn, affine_views(copies, self.thetas.repeat(b, 1, 1)).view(b, k, *x.shape[1:]))
