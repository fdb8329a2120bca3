"""Generative visualization (paper section 3.4, 4.2): sample images of a node with HMC, save them as a grid and .npz.

The glue between :mod:`nodes` (which score), :mod:`hmc` (how to sample) and files; the CLI and the GUI call these.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .files import atomic_path
from .hmc import HMCConfig, HMCResult, hmc_sample, summarize
from .nodes import Node, NodeScore, node_score
from .settings import to_argv
from .specs import ModelInfo

__all__ = ["SampleRun", "sample_node", "initial_states", "to_pixels", "display_pixels", "grid_pixels", "save_grid",
           "save_npz", "load_preset", "sample_command", "default_preset", "DEFAULT_PRESETS", "grid_columns", "annotate",
           "caption", "row_labels", "RHAT_OK"]


@dataclass
class SampleRun:
    """A finished sampling run: the HMC result, the node strings (one per group of chains) and the settings."""

    result: HMCResult
    nodes: list[str]
    config: HMCConfig  # as run: chains may be fewer than asked when the device ran out of memory
    info: ModelInfo
    warnings: list[str] = field(default_factory=list)


def load_preset(name_or_path: str | None = None, **overrides) -> HMCConfig:
    """An HMCConfig from a preset in zoo_configs/hmc/ (lenet, alexnet_conv, alexnet_fc8, ...) or a YAML path."""
    from .config import HMC_PRESET_DIR, load_config

    return load_config(name_or_path, overrides, cls=HMCConfig, folder=HMC_PRESET_DIR)


RHAT_OK = 1.05  # split R-hat above this: the chains of a node disagree, the grid is not (yet) a sample of p_y
# The preset a model gets when none is named: by its input (small grey digits-like inputs, or photos).
DEFAULT_PRESETS = {"small": "lenet_tuned", "large": "alexnet_fc8"}


def grid_columns(chains: int, nodes: int = 1) -> int:
    """Images per grid row: one row per node when several nodes share a grid; for one node the most square layout
    that fills every row when the chain count allows it (8 -> 4 x 2, 12 -> 4 x 3, 16 -> 4 x 4). The CLI's grid, the
    GUI's preview and the GUI's saved PNG all use it, so what is shown is what is saved."""
    if nodes > 1:
        return chains
    square = math.ceil(math.sqrt(chains))
    return next((c for c in range(square, min(chains, 2 * square) + 1) if chains % c == 0), square)


def default_preset(info: ModelInfo) -> str:
    """The preset that suits a model's input: ``small`` for inputs up to 64 px, ``large`` otherwise."""
    return DEFAULT_PRESETS["small" if max(info.input_size[1:]) <= 64 else "large"]


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


def initial_states(info: ModelInfo, chains: int, sigma: float, seed: int, device: torch.device | str) -> torch.Tensor:
    """x0 ~ q = N(0, sigma^2 I) in the normalised input space, drawn on the CPU so every device starts alike."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(chains, *info.input_size, generator=g) * sigma).to(device)


def sample_node(model: nn.Module, info: ModelInfo, node: str | list[str], config: HMCConfig | None = None,
                device: torch.device | str = "cpu", callback=None, stop=None,
                score: NodeScore | None = None, devices: list[str] | None = None) -> SampleRun:
    """Run ``config.chains`` HMC chains per node (several nodes of one layer share the batch).

    ``devices`` (e.g. ["cuda:0", "cuda:1"]) splits each node's chains over those devices, one thread each, and
    gathers them: the same samples as one device with the same seed (the callback is not called then).
    """
    config = config or HMCConfig()
    if devices and len(devices) > 1:
        return _sample_split(model, info, node if isinstance(node, list) else [node], config, devices, stop)
    device = torch.device(device)
    nodes = node if isinstance(node, list) else [node]
    score = score or node_score(model.to(device), info, nodes)
    notes: list[str] = []
    while True:
        try:
            x0 = initial_states(info, config.chains * len(score.nodes), config.sigma, config.seed, device)
            result = _run_chains(score, x0, config, callback, stop)
            break
        except torch.cuda.OutOfMemoryError:
            if config.chains == 1:
                raise MemoryError(f"{device} ran out of memory with a single chain per node; use the CPU") from None
            fewer = config.chains // 2
            notes.append(f"{device} ran out of memory with {config.chains} chains per node; ran {fewer}")
            config = replace(config, chains=fewer)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result.summary = summarize(result, config.adapt_steps, groups=len(score.nodes))  # R-hat within each node
    if result.iters_done and result.summary["accept_rate"] < 0.01:
        notes.append(f"no proposal was accepted (mean |energy error| {result.summary['mean_abs_energy_error']:.3g}): "
                     f"the step size {config.step_size:g} is too large for this node; try a smaller one or "
                     "adapt_steps > 0. The samples are the starting noise, never NaN.")
    return SampleRun(result, [str(n) for n in score.nodes], config, info, notes)


def _sample_split(model: nn.Module, info: ModelInfo, nodes: list[str], config: HMCConfig, devices: list[str],
                  stop) -> SampleRun:
    import copy
    from concurrent.futures import ThreadPoolExecutor

    c, k = config.chains, len(nodes)
    parts = [p for p in torch.arange(c).tensor_split(len(devices)) if len(p)]  # each device: some chains per node
    x0 = initial_states(info, c * k, config.sigma, config.seed, "cpu")  # the one-device run's starting points

    def run(dev: str, chains: torch.Tensor):
        dev = torch.device(dev)
        score = node_score(copy.deepcopy(model).to(dev), info, nodes)
        rows = torch.cat([j * c + chains for j in range(k)])
        res = _run_chains(score, x0[rows].to(dev), config, stop=stop, noise_rows=rows.to(dev), noise_total=c * k)
        return rows, res, [str(n) for n in score.nodes]

    with ThreadPoolExecutor(len(parts)) as pool:
        outs = list(pool.map(run, devices[: len(parts)], parts))
    order = torch.cat([rows for rows, _, _ in outs])
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order))
    done = min(res.iters_done for _, res, _ in outs)
    result = HMCResult(
        x=torch.cat([res.x.cpu() for _, res, _ in outs])[back],
        accept_rate=torch.cat([res.accept_rate for _, res, _ in outs])[back],
        trace={key: torch.cat([res.trace[key][:done] for _, res, _ in outs], dim=1)[:, back]
               for key in outs[0][1].trace},
        grad_evals=sum(res.grad_evals for _, res, _ in outs), seconds=max(res.seconds for _, res, _ in outs),
        iters_done=done, stopped=any(res.stopped for _, res, _ in outs))
    result.summary = summarize(result, config.adapt_steps, groups=k)
    return SampleRun(result, outs[0][2], config, info)


def _run_chains(score: NodeScore, x0: torch.Tensor, config: HMCConfig, callback=None, stop=None,
                noise_rows: torch.Tensor | None = None, noise_total: int | None = None) -> HMCResult:
    """``hmc_sample`` with a config's settings, from ``x0`` on its device."""
    g = torch.Generator(device=x0.device).manual_seed(config.seed)
    return hmc_sample(score, x0, config, generator=g, callback=callback, stop=stop, noise_rows=noise_rows,
                      noise_total=noise_total)


def to_pixels(x: torch.Tensor, info: ModelInfo) -> torch.Tensor:
    """Normalised inputs (B, C, H, W) -> pixels in [0, 1]: x * std + mean, clipped."""
    mean = torch.tensor(info.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=x.device).view(1, -1, 1, 1)
    return (x.float() * std + mean).clamp(0, 1)


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


def caption(run: SampleRun) -> str:
    """What produced a grid, in one or two lines: model, node(s), reference and temperature, sampler settings,
    acceptance, and the convergence check (split R-hat; flagged above 1.05)."""
    c, s = run.config, run.result.summary
    nodes = run.nodes[0] if len(run.nodes) == 1 else f"{len(run.nodes)} nodes, one per row"
    rhat = s.get("rhat_score", float("nan"))
    flag = "" if rhat <= RHAT_OK else " - NOT CONVERGED (R-hat > 1.05)"
    return (f"{run.info.model} {nodes}: q = N(0, {c.sigma:g}^2 I), T = {c.temperature:g}; {s['iters']} iterations x "
            f"{c.trajectory_steps} leapfrog steps (step {c.step_size:g}, mass {c.mass:g}); acceptance "
            f"{s['accept_rate']:.2f}; R-hat {rhat:.2f}{flag}")


def save_npz(run: SampleRun, path: str | Path) -> Path:
    """Raw samples (normalised and as uint8 pixels), the per-iteration traces and the settings, in one .npz."""
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
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return Path(path)

