"""Generative visualization (paper section 3.4, 4.2): sample images of a node with HMC, save them as a grid and .npz.

The glue between :mod:`nodes` (which score), :mod:`hmc` (how to sample) and files; the CLI and the GUI call these.
"""

from __future__ import annotations

import json
import math
import shlex
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .diagnostics import ess_bulk, rhat
from .files import atomic_path
from .hmc import HMCConfig, HMCResult, HMCStep, hmc_sample, summarize
from .nodes import Node, NodeScore, node_score
from .redirect import redirected_relus
from .reference import (
    WARM_TRANSFORMS,
    ChainMonitor,
    FixedAffineScore,
    PixelClippedScore,
    RandomAffineScore,
    Reference,
    TransformAveragedScore,
    initial_z,
    make_reference,
    tilted_score,
    z_config,
)
from .runtime import precision_context
from .settings import to_argv
from .specs import ModelInfo

__all__ = ["SampleRun", "sample_node", "initial_states", "to_pixels", "display_pixels", "grid_pixels", "save_grid",
           "save_npz", "load_preset", "sample_command", "default_preset", "DEFAULT_PRESETS", "grid_columns", "annotate",
           "caption", "row_labels", "RHAT_OK", "grid_images", "SHOW", "SampleStep", "score_view", "warm_start",
           "warm_view", "default_display"]


@dataclass
class SampleRun:
    """A finished sampling run: the HMC result (``result.x``: the final samples as model inputs; the traces are
    HMC's, in whitened coordinates), the node strings (one per group of chains), the settings, the running mean of
    each chain after warm-up (an estimate of E_p[x]), the traces of a few fixed random projections of x (iters,
    chains, k) behind the convergence check, and the final whitened states."""

    result: HMCResult
    nodes: list[str]
    config: HMCConfig  # as run: chains may be fewer than asked when the device ran out of memory
    info: ModelInfo
    warnings: list[str] = field(default_factory=list)
    mean_x: torch.Tensor | None = None
    projections: torch.Tensor | None = None
    z: torch.Tensor | None = None


@dataclass
class SampleStep(HMCStep):
    """What a :func:`sample_node` callback sees after each iteration: HMC's step with the states as model inputs,
    and ``running_mean()`` (the chains' means after warm-up so far, or None during warm-up; computed on request)."""

    running_mean: object = None  # Callable[[], torch.Tensor | None]


def load_preset(name_or_path: str | None = None, **overrides) -> HMCConfig:
    """An HMCConfig from a preset in zoo_configs/hmc/ (lenet, alexnet_conv, alexnet_fc8, ...) or a YAML path."""
    from .config import HMC_PRESET_DIR, load_config

    return load_config(name_or_path, overrides, cls=HMCConfig, folder=HMC_PRESET_DIR)


RHAT_OK = 1.05  # split R-hat above this: the chains of a node disagree, the grid is not (yet) a sample of p_y
# The preset a model gets when none is named, by its input: 28x28 grey (the PCA reference's size), other small inputs,
# photos. The paper's own settings (lenet, alexnet_fc8, alexnet_conv) stay one --preset away.
DEFAULT_PRESETS = {"grey28": "mnist_legible", "small": "lenet_tuned", "large": "imagenet_legible"}


def grid_columns(chains: int, nodes: int = 1) -> int:
    """Images per grid row: one row per node when several nodes share a grid; for one node the most square layout
    that fills every row when the chain count allows it (8 -> 4 x 2, 12 -> 4 x 3, 16 -> 4 x 4). The CLI's grid, the
    GUI's preview and the GUI's saved PNG all use it, so what is shown is what is saved."""
    if nodes > 1:
        return chains
    square = math.ceil(math.sqrt(chains))
    return next((c for c in range(square, min(chains, 2 * square) + 1) if chains % c == 0), square)


def default_preset(info: ModelInfo) -> str:
    """The preset that suits a model's input: ``grey28`` for 1 x 28 x 28 inputs (MNIST-like: its PCA reference is
    fitted at that size), ``small`` for other inputs up to 64 px, ``large`` otherwise."""
    c, h, w = (int(v) for v in info.input_size)
    if (c, h, w) == (1, 28, 28):
        return DEFAULT_PRESETS["grey28"]
    return DEFAULT_PRESETS["small" if max(h, w) <= 64 else "large"]


def sample_command(source: str, node: str | Node | list, config: HMCConfig, device: str = "auto",
                   weights: str | None = None, out: str = "samples.png", npz: str | None = "samples.npz") -> str:
    """The ``gencnn sample`` command line that repeats a run with these settings (the GUI's "copy command"):
    every sampler setting is spelled out, generated from :class:`HMCConfig`'s fields."""
    nodes = node if isinstance(node, list) else [node]
    argv = ["gencnn", "sample", str(source)] + (["--weights", str(weights)] if weights else [])
    for n in nodes:
        argv += ["--node", str(n)]
    argv += to_argv(config) + ["--device", device, "--out", out] + (["--npz", npz] if npz else [])
    return shlex.join(argv)


PROJECTIONS = 4  # fixed random directions of x whose traces join f_y's in the R-hat check


def sample_node(model: nn.Module, info: ModelInfo, node: str | list[str], config: HMCConfig | None = None,
                device: torch.device | str = "cpu", callback=None, stop=None,
                score: NodeScore | None = None, devices: list[str] | None = None) -> SampleRun:
    """Run ``config.chains`` HMC chains per node (several nodes of one layer share the batch) on
    p_y(x) ~ exp(f_y(x) / T) q(x), q = ``config.reference``.

    Every reference is sampled in whitened coordinates, z ~ N(0, I) with x = mu + A z (:mod:`reference`), which is
    exact for the stated target; for ``white`` it is the paper's sampler on x, the same random numbers and states.

    Args:
        model, info: the network and its ModelInfo.
        node: a node string (or :class:`Node`), or a list of nodes of one layer.
        config: the sampler settings (reference, temperature, chains, iterations, ...).
        device: where to sample.
        callback: called after every iteration with a :class:`SampleStep`; returning True stops the run.
        stop: polled after every leapfrog step (a GUI's stop button).
        score: a prepared node score (default: ``node_score(model, info, node)``).
        devices: split each node's chains over these devices (e.g. ["cuda:0", "cuda:1"]), one thread each: the
            same samples as one device with the same seed (the callback is not called then).
    """
    config = config or HMCConfig()
    if devices and len(devices) > 1:
        return _sample_split(model, info, node if isinstance(node, list) else [node], config, devices, stop)
    device = torch.device(device)
    nodes = node if isinstance(node, list) else [node]
    score = score or node_score(model.to(device), info, nodes)
    fn = score_view(score, info, config).to(device)
    reference = make_reference(config.reference, info, config.sigma).to(device)
    notes: list[str] = []
    while True:
        try:
            z0 = initial_z(reference, config.chains * len(score.nodes), config.seed, device)
            result, monitor = _run_chains(fn, reference, z0, config, callback, stop,
                                          warm_fn=warm_view(score, info, config).to(device))
            break
        except torch.cuda.OutOfMemoryError:
            if config.chains == 1:
                raise MemoryError(f"{device} ran out of memory with a single chain per node; use the CPU") from None
            fewer = config.chains // 2
            notes.append(f"{device} ran out of memory with {config.chains} chains per node; ran {fewer}")
            config = replace(config, chains=fewer)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return _finish(result, monitor.mean_z, monitor.projection_trace(), reference, [str(n) for n in score.nodes],
                   config, info, notes)


def _finish(result: HMCResult, mean_z: torch.Tensor | None, projections: torch.Tensor, reference: Reference,
            nodes: list[str], config: HMCConfig, info: ModelInfo, notes: list[str]) -> SampleRun:
    """States back to images; the convergence check of f_y and the projections within each node's chains."""
    z = result.x
    with torch.no_grad():
        result.x = reference.to_x(z)
        mean_x = reference.to_x(mean_z) if mean_z is not None else None
    groups = len(nodes)
    result.summary = summarize(result, config.adapt_steps, groups=groups)  # R-hat of f_y within each node
    kept = projections[config.adapt_steps:] if projections.shape[0] > config.adapt_steps else projections
    if kept.numel() and kept.shape[1] % groups == 0:
        per = [kept[:, g * (kept.shape[1] // groups):(g + 1) * (kept.shape[1] // groups)] for g in range(groups)]
        rhats = torch.stack([torch.as_tensor(rhat(p)).reshape(-1) for p in per])
        esses = torch.stack([torch.as_tensor(ess_bulk(p)).reshape(-1) for p in per])
        rhat_x = float("nan") if torch.isnan(rhats).any() else float(rhats.max())
        ess_x = float("nan") if torch.isnan(esses).any() else float(esses.min())
    else:
        rhat_x = ess_x = float("nan")
    s = result.summary
    named = f"{reference.kind}:{reference.data}" if reference.data else reference.kind  # the data file used
    s.update(reference=named, temperature=config.temperature, rhat_x=rhat_x, ess_x=ess_x,
             rhat=float("nan") if rhat_x != rhat_x or s["rhat_score"] != s["rhat_score"]
             else max(s["rhat_score"], rhat_x), warmup=config.adapt_steps)
    scores = result.trace.get("score")
    if result.iters_done and scores is not None and scores.shape[1] % groups == 0:
        per = scores.shape[1] // groups
        silent = [nodes[g] for g in range(groups) if not scores[:, g * per:(g + 1) * per].ne(0).any()]
        if silent:
            fix = ("add warm-start steps (--warm-start) with the redirected ReLU gradient (--warm-redirect, the "
                   "default), which reaches a silent node" if not config.warm_start
                   else "turn warm_redirect on (--warm-redirect)" if not config.warm_redirect
                   else "try more warm-start steps, or the channel's mean (LAYER:C,mean) instead of one unit")
            notes.append(f"{', '.join(silent)}: f_y is 0 in every chain at every iteration: the node is silent (a "
                         f"unit behind a ReLU at 0) where the chains ran, so HMC moved them by q alone; {fix}")
    if result.iters_done and s["accept_rate"] < 0.01:
        notes.append(f"no proposal was accepted (mean |energy error| {s['mean_abs_energy_error']:.3g}): "
                     f"the step size {config.step_size:g} is too large for this node; try a smaller one or "
                     "adapt_steps > 0. The samples are the starting noise, never NaN.")
    return SampleRun(result, nodes, config, info, notes, mean_x=mean_x, projections=projections, z=z)


def _sample_split(model: nn.Module, info: ModelInfo, nodes: list[str], config: HMCConfig, devices: list[str],
                  stop) -> SampleRun:
    import copy
    from concurrent.futures import ThreadPoolExecutor

    c, k = config.chains, len(nodes)
    parts = [p for p in torch.arange(c).tensor_split(len(devices)) if len(p)]  # each device: some chains per node
    z0 = initial_z(make_reference(config.reference, info, config.sigma), c * k, config.seed, "cpu")

    def run(dev: str, chains: torch.Tensor):
        dev = torch.device(dev)
        score = node_score(copy.deepcopy(model).to(dev), info, nodes)
        reference = make_reference(config.reference, info, config.sigma).to(dev)
        rows = torch.cat([j * c + chains for j in range(k)])
        res, monitor = _run_chains(score_view(score, info, config).to(dev), reference, z0[rows].to(dev), config,
                                   stop=stop, noise_rows=rows.to(dev), noise_total=c * k,
                                   warm_fn=warm_view(score, info, config).to(dev))
        return rows, res, monitor, [str(n) for n in score.nodes]

    with ThreadPoolExecutor(len(parts)) as pool:
        outs = list(pool.map(run, devices[: len(parts)], parts))
    order = torch.cat([rows for rows, *_ in outs])
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order))
    done = min(res.iters_done for _, res, _, _ in outs)
    result = HMCResult(
        x=torch.cat([res.x.cpu() for _, res, _, _ in outs])[back],
        accept_rate=torch.cat([res.accept_rate for _, res, _, _ in outs])[back],
        trace={key: torch.cat([res.trace[key][:done] for _, res, _, _ in outs], dim=1)[:, back]
               for key in outs[0][1].trace},
        grad_evals=sum(res.grad_evals for _, res, _, _ in outs), seconds=max(res.seconds for _, res, _, _ in outs),
        iters_done=done, stopped=any(res.stopped for _, res, _, _ in outs),
        swap_rate=_pooled_swap_rate([(len(rows), res.swap_rate) for rows, res, _, _ in outs]))
    means = [m.mean_z for _, _, m, _ in outs]
    mean_z = torch.cat([m.cpu() for m in means])[back] if all(m is not None for m in means) else None
    proj = torch.cat([m.projection_trace()[:done].cpu() for _, _, m, _ in outs], dim=1)[:, back]
    reference = make_reference(config.reference, info, config.sigma)
    return _finish(result, mean_z, proj, reference, outs[0][3], config, info, [])


def _pooled_swap_rate(parts: list[tuple[int, torch.Tensor | None]]) -> torch.Tensor | None:
    """The replica-exchange swap rate of chains split over devices: each part's rate weighted by its chains."""
    if any(rate is None for _, rate in parts):
        return None
    return sum(n * rate.cpu() for n, rate in parts) / sum(n for n, _ in parts)


def score_view(score: nn.Module, info: ModelInfo, config: HMCConfig) -> nn.Module:
    """The function HMC samples: the node's score, averaged over ``config.jitter``'s 4 fixed translations or over
    ``config.affine_views`` fixed shifts, zooms and rotations, of the clipped pixels (``config.clip``), of log p(y|x)
    instead of the logit (``config.score``); the score itself when all are off."""
    if config.score == "log_softmax":
        if not isinstance(score, NodeScore):
            raise ValueError("score: log_softmax needs a node score (gencnn_plugin.nodes.node_score)")
        score = score.log_probability()
    elif getattr(score, "log_softmax", False):  # a prepared score must be what the config (caption, .npz) says
        raise ValueError("score: this node score is log p(y|x), but the settings say logit")
    if config.jitter:
        j = config.jitter
        if j >= min(info.input_size[1:]):
            raise ValueError(f"jitter: {j} px must be smaller than the input's sides {tuple(info.input_size[1:])}")
        score = TransformAveragedScore(score, [(0, 0), (0, j), (j, 0), (j, j)])
    if config.affine_views:
        shift, zoom, degrees = WARM_TRANSFORMS[affine_range(config)]
        score = FixedAffineScore(score, config.affine_views, shift=shift, zoom=zoom, degrees=degrees)
    if config.clip:
        score = PixelClippedScore(score, info)
    return score


def affine_range(config: HMCConfig) -> str:
    """The ``WARM_TRANSFORMS`` range ``config.affine_views`` draws its fixed views from: the warm start's, standard
    when it has none (part of the sampled node, so the caption names it)."""
    return config.warm_augment if config.warm_augment != "off" else "standard"


def warm_view(score: nn.Module, info: ModelInfo, config: HMCConfig) -> nn.Module:
    """What the warm start scores: the sampled view, without its jitter or fixed-view average under
    ``warm_augment`` (one random transform per step replaces it, at 1/4 of the jitter's work or 1/K of K views')."""
    plain = replace(config, jitter=0, affine_views=0)
    return score_view(score, info, plain if config.warm_augment != "off" else config)


def warm_start(fn: nn.Module, reference: Reference, z0: torch.Tensor, config: HMCConfig, lr: float = 0.05,
               stop=None, rows: torch.Tensor | None = None, total: int | None = None) -> torch.Tensor:
    """``config.warm_start`` Adam steps on U(z) = -f(mu + A z) / T + |z|^2 / 2 from z0 (each chain on its own: the
    sum of independent terms): starting states near a mode, so a short run at low T starts where p puts its mass.
    With ``config.warm_augment`` (a range of ``WARM_TRANSFORMS``) each step scores a random shift, zoom and rotation
    of the images (:class:`RandomAffineScore` around ``fn``; pass :func:`warm_view`'s score, without the jitter or
    fixed-view average, which the random transform replaces; ``rows`` of ``total``: these chains' place in a run
    split over devices).
    With ``config.warm_redirect`` the ReLUs pass a gradient where none flows (:mod:`redirect`), so a node that is
    silent at the start moves.
    The path is not part of the chain; HMC from the result is exact as from any start."""
    if config.warm_augment != "off":
        shift, zoom, degrees = WARM_TRANSFORMS[config.warm_augment]
        fn = RandomAffineScore(fn, shift=shift, zoom=zoom, degrees=degrees, seed=config.seed, rows=rows, total=total)
    z = z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    with redirected_relus(fn) if config.warm_redirect else nullcontext():
        for _ in range(config.warm_start):
            if stop is not None and stop():
                break
            opt.zero_grad(set_to_none=True)
            with precision_context(z.device, config.precision):
                f = fn(reference.to_x(z)).float()
            u = -f / config.temperature + z.pow(2).flatten(1).sum(1) / 2
            u.sum().backward()
            opt.step()
    return z.detach()


def _run_chains(score: nn.Module, reference: Reference, z0: torch.Tensor, config: HMCConfig, callback=None,
                stop=None, noise_rows: torch.Tensor | None = None, noise_total: int | None = None,
                warm_fn: nn.Module | None = None) -> tuple[HMCResult, ChainMonitor]:
    """``hmc_sample`` in whitened coordinates with a config's settings, from ``z0`` (moved by ``warm_start`` steps
    first) on its device; the monitor keeps the running means (after ``adapt_steps``) and projection traces, and
    hands the caller's callback image states. ``warm_fn``: what the warm start scores (default ``score``)."""
    if config.warm_start:
        z0 = warm_start(warm_fn if warm_fn is not None else score, reference, z0, config, stop=stop,
                        rows=noise_rows, total=noise_total)
    monitor = ChainMonitor(reference, warmup=config.adapt_steps, projections=PROJECTIONS)
    if callback is not None:
        def on_step(step: HMCStep):
            with torch.no_grad():
                x = reference.to_x(step.x)
            return callback(SampleStep(step.iteration, x, step.accepted, step.score, step.energy_error,
                                       step.step_size, monitor.mean_x))

        monitor.then = on_step
    g = torch.Generator(device=z0.device).manual_seed(config.seed)
    result = hmc_sample(tilted_score(score, reference, 1.0), z0, z_config(config, reference), generator=g,
                        callback=monitor, stop=stop, noise_rows=noise_rows, noise_total=noise_total)
    return result, monitor


def initial_states(info: ModelInfo, chains: int, sigma: float, seed: int, device: torch.device | str) -> torch.Tensor:
    """x0 ~ q = N(0, sigma^2 I) in the normalised input space, drawn on the CPU so every device starts alike (the
    white reference's starting points: :func:`sample_node` draws z0 the same way, x0 = sigma z0)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(chains, *info.input_size, generator=g) * sigma).to(device)


def to_pixels(x: torch.Tensor, info: ModelInfo) -> torch.Tensor:
    """Normalised inputs (B, C, H, W) -> pixels in [0, 1]: x * std + mean, clipped."""
    mean = torch.tensor(info.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=x.device).view(1, -1, 1, 1)
    return (x.float() * std + mean).clamp(0, 1)


def default_display(config: HMCConfig) -> str:
    """How a grid shows samples unless told: ``range`` for the paper's white q (its draws spread far beyond the
    pixel range), ``clip`` -- the pixels an image file holds -- for a fitted q, whose draws look like the data, and
    when the score itself sees clipped pixels."""
    return "clip" if config.clip or config.reference.partition(":")[0] != "white" else "range"


def display_pixels(x: torch.Tensor, info: ModelInfo, display: str = "range") -> torch.Tensor:
    """Samples as images in [0, 1]. ``clip``: de-normalised pixels, clipped. ``range``: each image de-normalised and
    rescaled to its own min..max, because draws from p_y with q = N(0, sigma^2 I) spread far beyond the pixel range
    (the raw values are in the .npz)."""
    pix = x.detach().float() * torch.tensor(info.std, device=x.device).view(1, -1, 1, 1) \
        + torch.tensor(info.mean, device=x.device).view(1, -1, 1, 1)
    if display == "clip":
        return pix.clamp(0, 1)
    if display != "range":
        raise ValueError(f"display must be 'range' or 'clip', got {display!r}")
    lo = pix.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = pix.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return (pix - lo) / (hi - lo).clamp_min(1e-12)


def grid_pixels(x: torch.Tensor, info: ModelInfo, nrow: int = 8, padding: int = 2, min_size: int = 0,
                display: str = "range") -> torch.Tensor:
    """Samples as one image grid (3, H, W) in [0, 1], ``nrow`` per row, upscaled by an integer factor to
    ``min_size`` px: what :func:`save_grid` writes and the GUI previews."""
    import torchvision.utils as vutils

    pix = display_pixels(x.detach().float().cpu(), info, display)
    if min_size and pix.shape[-1] < min_size:
        pix = torch.nn.functional.interpolate(pix, scale_factor=-(-min_size // pix.shape[-1]), mode="nearest")
    return vutils.make_grid(pix, nrow=nrow, padding=padding, pad_value=1.0)


def annotate(grid: torch.Tensor, row_labels: list[str] | None = None, caption: str | None = None,
             font_size: int = 14) -> np.ndarray:
    """A grid (3, H, W) in [0, 1] as an RGB uint8 picture (H', W', 3) with a label left of each row (e.g. the
    class of that row's node) and a caption below (the settings that produced it). Without either, the grid."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray((grid.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    if not row_labels and not caption:
        return np.asarray(img)
    font = ImageFont.load_default(font_size)
    draw = ImageDraw.Draw(img)
    left = max((int(draw.textlength(t, font=font)) for t in row_labels), default=0) + 8 if row_labels else 0
    lines = _wrap(caption or "", font, draw, left + img.width - 8)
    line_h = font_size + 4
    out = Image.new("RGB", (left + img.width, img.height + (len(lines) * line_h + 6 if lines else 0)), "white")
    out.paste(img, (left, 0))
    draw = ImageDraw.Draw(out)
    if row_labels:
        row_h = img.height / len(row_labels)
        for i, text in enumerate(row_labels):
            draw.text((4, row_h * (i + 0.5)), text, fill="black", font=font, anchor="lm")
    for i, text in enumerate(lines):
        draw.text((4, img.height + 4 + i * line_h), text, fill="black", font=font)
    return np.asarray(out)


def _wrap(text: str, font, draw, width: int) -> list[str]:
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split():
            trial = f"{line} {word}".strip()
            if line and draw.textlength(trial, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        if line:
            lines.append(line)
    return lines


def save_grid(x: torch.Tensor, info: ModelInfo, path: str | Path, nrow: int = 8, padding: int = 2,
              min_size: int = 0, display: str = "range", row_labels: list[str] | None = None,
              caption: str | None = None, metadata: dict | None = None) -> Path:
    """Write samples as a PNG grid (``nrow`` images per row), upscaled by an integer factor to ``min_size`` px, with
    optional row labels and a caption (:func:`annotate`); ``metadata`` goes into the PNG's text chunks as JSON."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    picture = annotate(grid_pixels(x, info, nrow, padding, min_size, display), row_labels, caption)
    png = PngInfo()
    if caption:
        png.add_text("Description", caption)
    if metadata:
        png.add_text("gencnn", json.dumps(metadata, default=str))
    png.add_text("Software", "gencnn")
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(str(tmp), format="png", pnginfo=png)
    return Path(path)


SHOW = ("both", "sample", "mean")  # what a grid shows: samples and running means side by side, or one of them


def grid_images(run: SampleRun, show: str = "both") -> tuple[torch.Tensor, int, list[str] | None]:
    """The images of a run's grid, its images per row, and its row labels.

    ``sample``: the final state of each chain; ``mean``: each chain's running mean after warm-up (an estimate of
    E_p[x], the noise of q averaged out); ``both``: for one node the samples in the top half and the means in the
    bottom half (rows labelled), for several nodes each node's row holds its samples then its means.
    """
    if show not in SHOW:
        raise ValueError(f"show must be one of {', '.join(SHOW)}, got {show!r}")
    x, mean = run.result.x.detach().cpu(), run.mean_x
    k, chains = len(run.nodes), run.config.chains
    labels = row_labels(run)
    if show == "sample" or mean is None:
        return x, grid_columns(chains, k), labels
    mean = mean.detach().cpu()
    if show == "mean":
        return mean, grid_columns(chains, k), labels
    if k > 1:  # a row per node: its chains' samples, then their means
        rows = [torch.cat([x[j * chains:(j + 1) * chains], mean[j * chains:(j + 1) * chains]]) for j in range(k)]
        return torch.cat(rows), 2 * chains, labels
    cols = grid_columns(chains)
    per_half = -(-chains // cols)
    return torch.cat([x, mean]), cols, (["sample"] * per_half + ["mean"] * per_half) if chains % cols == 0 else None


def row_labels(run: SampleRun) -> list[str] | None:
    """One label per grid row when each row is one node (several nodes): the class name for an output node."""
    if len(run.nodes) < 2:
        return None
    names = run.info.class_names
    out = []
    for text in run.nodes:
        node = Node.parse(text, names)
        out.append(names[node.index] if node.layer == "logits" and node.index < len(names) else text)
    return out


def caption(run: SampleRun, show: str = "sample") -> str:
    """What produced a grid, in one or two lines: model, node(s), what is shown, reference and temperature, sampler
    settings, acceptance, and the convergence check (rank-normalised split R-hat of f_y and of random projections
    of x; flagged above 1.05)."""
    c, s = run.config, run.result.summary
    nodes = run.nodes[0] if len(run.nodes) == 1 else f"{len(run.nodes)} nodes, one per row"
    shown = {"sample": "samples", "mean": f"running means after {c.adapt_steps} warm-up iterations",
             "both": "samples beside their running means"}[show]
    r = s.get("rhat", s.get("rhat_score", float("nan")))
    flag = "" if r <= RHAT_OK else " - NOT CONVERGED (R-hat > 1.05)"
    named = s.get("reference", c.reference)
    q = f"N(0, {c.sigma:g}^2 I)" if c.reference == "white" else f"{named} (sigma {c.sigma:g})"
    view = (", f = log p(y|x)" if c.score == "log_softmax" else "") + \
        (f", f averaged over 4 shifts of {c.jitter} px" if c.jitter else "") + \
        (f", f averaged over {c.affine_views} fixed {affine_range(c)} views" if c.affine_views else "") + \
        (", clipped pixels" if c.clip else "")
    moves = f" ({c.warm_augment} random transforms)" if c.warm_augment != "off" else ""
    view += f", {c.warm_start} warm-start steps{moves}" if c.warm_start else ""
    view += f", {c.replicas} replicas up to T = {c.hot_temperature:g}" if c.replicas > 1 else ""
    return (f"{run.info.model} {nodes}, {shown}: q = {q}, T = {c.temperature:g}{view}; {s['iters']} iterations x "
            f"{c.trajectory_steps} leapfrog steps (step {c.step_size:g}, mass {c.mass:g}); acceptance "
            f"{s['accept_rate']:.2f}; R-hat {r:.2f}{flag}")


def save_npz(run: SampleRun, path: str | Path) -> Path:
    """Raw samples and running means (normalised and as uint8 pixels), the per-iteration traces (HMC's, and the
    projections of x behind R-hat) and the settings, in one .npz."""
    x = run.result.x.detach().cpu()
    arrays = {
        "samples": x.numpy(),
        "pixels": (to_pixels(x, run.info) * 255).round().to(torch.uint8).numpy(),
        "accept_rate": run.result.accept_rate.numpy(),
        **{f"trace_{k}": v.numpy() for k, v in run.result.trace.items()},
        "nodes": np.array(run.nodes),
        "meta": np.array(json.dumps({"config": asdict(run.config), "model": run.info.to_dict(),
                                     "summary": run.result.summary})),
    }
    if run.mean_x is not None:
        mean = run.mean_x.detach().cpu()
        arrays.update(mean_samples=mean.numpy(), mean_pixels=(to_pixels(mean, run.info) * 255).round()
                      .to(torch.uint8).numpy())
    if run.projections is not None and run.projections.numel():
        arrays["trace_projections"] = run.projections.numpy()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return Path(path)
