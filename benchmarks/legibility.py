"""Legibility and convergence of generative-visualization samples (paper section 3.4, 4.2), judged by networks that
never see the sampled one.

Subcommands (each writes what it measures; ``report`` renders docs/results/legibility.md from the JSON records):

    python benchmarks/legibility.py fit-references                       # zoo_configs/references/*.yaml
    python benchmarks/legibility.py train-judge --dataset mnist          # runs/judge_mnist (timm:test_resnet)
    python benchmarks/legibility.py digits --dataset mnist --settings paper pca_t1 ...
    python benchmarks/legibility.py imagenet --model squeezenet1_1 --settings paper pink_clip ...
    python benchmarks/legibility.py report                               # docs/results/legibility.md

Digits (MNIST, Fashion-MNIST): class nodes logits:0..9 of a trained LeNet; the judge is a timm:test_resnet trained
here with noise from the reference family added at random amplitudes. ImageNet: class nodes of SqueezeNet 1.1 judged
by MobileNetV2 and the reverse. Samples are judged as an image file holds them: x * std + mean clipped to [0, 1],
then the judge's own normalisation.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import posixpath
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gencnn_plugin.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from gencnn_plugin.data import load_idx  # noqa: E402
from gencnn_plugin.hmc import HMCConfig  # noqa: E402
from gencnn_plugin.reference import REFERENCE_DIR, make_reference  # noqa: E402
from gencnn_plugin.specs import create_model  # noqa: E402

RESULTS = REPO / "docs" / "results" / "legibility"
IMAGES = REPO / "docs" / "images"
DATASET_FILES = {"mnist": "mnist", "fashion-mnist": "fashion_mnist"}  # dataset -> reference data file stem


def _data_dir(args: argparse.Namespace) -> str:
    import os

    return args.data_dir or os.environ.get("GENCNN_DATA") or str(REPO.parent / "shared" / "data")


def _meta(args: argparse.Namespace, threads: int) -> dict:
    from benchmarks._common import device_name

    return {"device": f"cpu: {device_name(torch.device('cpu'))} ({threads} threads)", "torch": torch.__version__,
            "date": date.today().isoformat(), "command": "python " + " ".join(sys.argv),
            "python": platform.python_version()}


# ----------------------------------------------------------------------------------------------------------------
# fit-references
# ----------------------------------------------------------------------------------------------------------------

def photo_crops(folder: Path, size: int = 224, short: int = 256) -> torch.Tensor:
    """The photos resized (shorter side ``short``, bicubic) and cut into centre + 4 corner crops, in [0, 1]."""
    import numpy as np
    from PIL import Image

    crops = []
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        im = Image.open(f).convert("RGB")
        w, h = im.size
        s = short / min(w, h)
        im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
        a = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255
        hh, ww = a.shape[1:]
        for oy, ox in (((hh - size) // 2, (ww - size) // 2), (0, 0), (0, ww - size), (hh - size, 0),
                       (hh - size, ww - size)):
            crops.append(a[:, oy:oy + size, ox:ox + size])
    return torch.stack(crops)


def cmd_fit_references(args: argparse.Namespace) -> None:
    """Fit and write the reference data files (pixel space) from the shared photos and training sets."""
    from gencnn_plugin.reference import fit_pca_reference, fit_reference, save_reference_data

    data = Path(_data_dir(args))
    REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/legibility.py fit-references"
    crops = photo_crops(data / "images")
    d = fit_reference(crops, "imagenet_photos", f"{data.name}/images: {crops.shape[0] // 5} photos, shorter side "
                      "resized to 256 px (bicubic), centre + 4 corner 224-px crops")
    save_reference_data(d, REFERENCE_DIR / "imagenet_photos.yaml", f"Stationary reference fitted by `{cmd}`: pixel "
                        "mean, colour covariance and amplitude spectrum of\nthe shared photos, in [0, 1] pixels.")
    print(f"imagenet_photos: alpha {d['spectrum']['alpha']}, mean {d['mean']}")
    for name, stem in DATASET_FILES.items():
        images = load_idx(name, data, train=True).images[: args.fit_images]
        src = f"{name} train images 0-{images.shape[0] - 1}"
        d = fit_reference(images, stem, src)
        save_reference_data(d, REFERENCE_DIR / f"{stem}.yaml", f"Stationary reference fitted by `{cmd}`.")
        p = fit_pca_reference(images, k=args.pca_k, name=f"{stem}_pca", source=src, digits=4)
        save_reference_data(p, REFERENCE_DIR / f"{stem}_pca.yaml", f"Full-covariance (probabilistic PCA, k = "
                            f"{p['pca']['k']}) reference fitted by `{cmd}`:\nmean image, top eigenpairs of the pixel "
                            "covariance, mean of the other eigenvalues (residual_var).")
        print(f"{stem}: alpha {d['spectrum']['alpha']}, pca explained {p['pca']['explained']}")


# ----------------------------------------------------------------------------------------------------------------
# train-judge
# ----------------------------------------------------------------------------------------------------------------

JUDGE_SPEC = "timm:test_resnet"  # a small ResNet (BN, residuals, global pooling): not LeNet's architecture
NOISE_KINDS = ("white", "pink", "spectral", "lowres")


def reference_noise(kinds: dict, n: int, generator: torch.Generator) -> torch.Tensor:
    """n zero-mean noise images in pixel units, each from a random kind of the reference family (unit-scaled:
    the data's marginal std)."""
    which = torch.randint(len(kinds), (n,), generator=generator)
    out = torch.empty(n, *next(iter(kinds.values())).x_shape)
    for i, ref in enumerate(kinds.values()):
        sel = (which == i).nonzero().flatten()
        if len(sel):
            with torch.no_grad():
                out[sel] = (ref.sample(len(sel), generator) - ref.x_mean) * ref.pixel_std_scale
    return out


def noise_family(info, dataset: str) -> dict:
    """The reference kinds as noise sources in pixel space (each rescaled to the data's marginal std)."""
    stem = DATASET_FILES[dataset]
    kinds = {}
    for kind in NOISE_KINDS:
        ref = make_reference(kind, info, data=None if kind == "white" else stem)
        # pixel units: normalised * std; white gets the data's marginal std as its sigma
        std = torch.tensor(info.std).view(1, -1, 1, 1)
        if kind == "white":
            from gencnn_plugin.reference import load_reference_data

            d = load_reference_data(stem)
            ref = make_reference("white", info, sigma=math.sqrt(d["colour_cov"][0][0]) / info.std[0])
        ref.pixel_std_scale = std
        kinds[kind] = ref
    return kinds


def cmd_train_judge(args: argparse.Namespace) -> None:
    """Train the judge: clean images half of the time, else plus reference noise at amplitude U(0, max) x the data's
    std, clipped to [0, 1]. Saved with save_checkpoint; prints the clean and noisy test accuracy."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = _data_dir(args)
    train = load_idx(args.dataset, data, train=True)
    test = load_idx(args.dataset, data, train=False)
    from gencnn_plugin.data import dataset_mean_std

    mean, std = dataset_mean_std(args.dataset)
    model, info = create_model(JUDGE_SPEC, num_classes=10, in_chans=1, img_size=28, mean=mean, std=std,
                               class_names=list(train.class_names))
    kinds = noise_family(info, args.dataset)
    g = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (len(train) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    m_t, s_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def augment(pix: torch.Tensor) -> torch.Tensor:
        n = pix.shape[0]
        noisy = torch.rand(n, generator=g) < args.noise_prob
        amp = torch.rand(n, generator=g) * args.noise_max
        noise = reference_noise(kinds, n, g) * (amp * noisy).view(-1, 1, 1, 1)
        shift = torch.randint(-2, 3, (2,), generator=g)  # small translations: samples are not centred like MNIST
        pix = torch.roll(pix, (int(shift[0]), int(shift[1])), (2, 3))
        return (pix + noise).clamp(0, 1)

    t0 = time.perf_counter()
    model.train()
    step = 0
    for epoch in range(args.epochs):
        perm = torch.randperm(len(train), generator=g)
        for i in range(0, len(train) - args.batch + 1, args.batch):
            idx = perm[i:i + args.batch]
            pix = augment(train.images[idx].float() / 255)
            loss = F.cross_entropy(model((pix - m_t) / s_t), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 200 == 0:
                print(f"epoch {epoch + 1} step {step}/{steps} loss {loss.item():.3f}", flush=True)
    model.eval()
    seconds = time.perf_counter() - t0
    accs = judge_accuracy(model, info, test, kinds, args.seed)
    print(f"judge {JUDGE_SPEC} on {args.dataset}: " + ", ".join(f"{k} {v:.4f}" for k, v in accs.items()))
    out = Path(args.out or REPO / "runs" / f"judge_{DATASET_FILES[args.dataset]}")
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "checkpoint.safetensors", model, info, dataset=args.dataset, mode="judge",
                    judge={"epochs": args.epochs, "noise_prob": args.noise_prob, "noise_max": args.noise_max,
                           "noise_kinds": list(NOISE_KINDS), "accuracy": accs, "seconds": seconds,
                           "command": "python " + " ".join(sys.argv)})
    (out / "summary.json").write_text(json.dumps({"model": JUDGE_SPEC, "dataset": args.dataset, "accuracy": accs,
                                                  "seconds": seconds, **_meta(args, args.threads)}, indent=1) + "\n")
    print(f"saved {out}")


def judge_accuracy(model: nn.Module, info, test, kinds: dict, seed: int) -> dict:
    """Clean test accuracy, and with reference noise of amplitude 0.5 and 1.0 x the data's std (clipped)."""
    g = torch.Generator().manual_seed(seed + 1)
    m_t, s_t = torch.tensor(info.mean).view(1, -1, 1, 1), torch.tensor(info.std).view(1, -1, 1, 1)
    out = {}
    for amp in (0.0, 0.5, 1.0):
        correct = 0
        for i in range(0, len(test), 1000):
            pix = test.images[i:i + 1000].float() / 255
            if amp:
                pix = (pix + amp * reference_noise(kinds, pix.shape[0], g)).clamp(0, 1)
            with torch.no_grad():
                correct += int((model((pix - m_t) / s_t).argmax(1) == test.labels[i:i + 1000]).sum())
        out["clean" if not amp else f"noise_{amp:g}"] = correct / len(test)
    return out


# ----------------------------------------------------------------------------------------------------------------
# settings and statistics
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Setting:
    """One way of drawing pictures of a node. ``method``: hmc (exact HMC in whitened coordinates of ``reference``),
    ascent (plain gradient ascent on the node's score from a reference draw, the T -> 0 limit without a prior),
    lucent or maco (optimisation recipes, ImageNet only). ``display``: the chain's last state or its running mean
    after warm-up. ``clip``: the score sees the displayed pixels, f(clip(x)) (a different node, exact for it).
    ``jitter``: the score is the mean of f over the 4 fixed translations (0, 0), (0, j), (j, 0), (j, j) px of
    ``visualize.score_view`` (what ``gencnn sample --jitter`` samples; a different node, exact for it).
    ``warm_opt``: warm-up Adam steps on U(z) before HMC (discarded, like the adaptation iterations)."""

    name: str
    method: str = "hmc"
    reference: str = "white"
    sigma: float = 1.0
    temperature: float = 1.0
    step_size: float = 0.1
    leapfrog_steps: int = 50
    mass: float = 0.01
    iters: int = 100
    adapt_steps: int = 0
    target_accept: float = 0.65
    chains: int = 4
    display: str = "last"
    clip: bool = False
    jitter: int = 0
    affine_views: int = 0  # HMCConfig.affine_views: the score averaged over this many fixed shifts/zooms/rotations
    warm_opt: int = 0
    warm_lr: float = 0.05
    warm_augment: str = "off"  # HMCConfig.warm_augment: off, standard or wide random transforms in the warm start
    replicas: int = 1  # HMCConfig.replicas: replica exchange over a geometric ladder from T up to hot_temperature
    hot_temperature: float = 1.0
    score: str = "logit"  # HMCConfig.score: the logit f_y or log p(y|x)
    note: str = ""

    def label(self) -> str:
        if self.method != "hmc":
            return f"{self.method}" + (f" ({self.note})" if self.note else "")
        extra = (", clip" if self.clip else "") + (f", jitter {self.jitter} px" if self.jitter else "") + \
            (f", {self.affine_views} fixed views" if self.affine_views else "") + \
            (f", warm Adam {self.warm_opt}" if self.warm_opt else "") + \
            ({"off": "", "standard": " (random shift/zoom/rotation)",
              "wide": " (wide random shift/zoom/rotation)"}[self.warm_augment]) + \
            (f", {self.replicas} replicas up to T={self.hot_temperature:g}" if self.replicas > 1 else "") + \
            (", score log p(y|x)" if self.score == "log_softmax" else "")
        return (f"{self.reference} s={self.sigma:g} T={self.temperature:g}; eps {self.step_size:g} L "
                f"{self.leapfrog_steps} m {self.mass:g} iters {self.iters} (adapt {self.adapt_steps}){extra}; "
                f"{self.display}")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k / n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def bootstrap_classes(hits: torch.Tensor, groups: torch.Tensor, n_boot: int = 4000, seed: int = 0
                      ) -> tuple[float, float]:
    """Percentile 95% interval of the mean of ``hits`` when whole classes (``groups``) are resampled: samples of one
    class are not independent, classes are."""
    rng = random.Random(seed)
    per = {}
    for h, gr in zip(hits.tolist(), groups.tolist()):
        per.setdefault(gr, []).append(float(h))
    keys = list(per)
    means = []
    for _ in range(n_boot):
        pick = [per[rng.choice(keys)] for _ in keys]
        means.append(sum(sum(v) for v in pick) / sum(len(v) for v in pick))
    means.sort()
    return means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]


def proportion(hits: torch.Tensor, groups: torch.Tensor) -> dict:
    """A proportion with its Wilson interval (samples treated as independent) and the class-bootstrap interval."""
    k, n = int(hits.sum()), int(hits.numel())
    lo, hi = wilson(k, n)
    blo, bhi = bootstrap_classes(hits, groups)
    return {"k": k, "n": n, "p": k / n if n else float("nan"), "wilson": [lo, hi], "boot": [blo, bhi]}


def convergence(scores: torch.Tensor, projections: torch.Tensor, chains: int, warmup: int) -> dict:
    """Rank-normalised split R-hat and bulk ESS (gencnn_plugin.diagnostics) of f_y and of the random projections,
    per node across its chains, after warm-up: the worst node and the median node."""
    from gencnn_plugin import diagnostics

    s, pr = scores[warmup:], projections[warmup:]
    if s.shape[0] < 4:
        return {"rhat_max": float("nan"), "rhat_median": float("nan"), "ess_bulk_min": float("nan"), "draws": 0}
    per_node_rhat, per_node_ess, rhat_f = [], [], []
    for g in range(s.shape[1] // chains):
        sl = slice(g * chains, (g + 1) * chains)
        tr = torch.cat([s[:, sl].unsqueeze(-1), pr[:, sl]], -1) if pr.numel() else s[:, sl].unsqueeze(-1)
        r = diagnostics.rhat(tr)
        e = diagnostics.ess_bulk(tr)
        r = r if isinstance(r, torch.Tensor) else torch.tensor([r])
        e = e if isinstance(e, torch.Tensor) else torch.tensor([e])
        per_node_rhat.append(float(torch.nan_to_num(r, nan=float("inf")).max()))
        per_node_ess.append(float(torch.nan_to_num(e, nan=0.0).min()))
        rhat_f.append(float(r[0]))
    srt = sorted(per_node_rhat)
    return {"rhat_max": srt[-1], "rhat_median": srt[len(srt) // 2], "rhat_f_max": max(rhat_f),
            "ess_bulk_min": min(per_node_ess), "ess_bulk_median": sorted(per_node_ess)[len(per_node_ess) // 2],
            "nodes_rhat_le_1.05": sum(r <= 1.05 for r in per_node_rhat), "nodes": len(per_node_rhat),
            "draws": int(s.shape[0]), "per_node_rhat": [round(r, 4) for r in per_node_rhat]}


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean L2 distance over all pairs of images (N, ...)."""
    flat = images.flatten(1).double()
    n = flat.shape[0]
    return float(torch.cdist(flat, flat).sum() / (n * (n - 1))) if n > 1 else float("nan")


def to_pixels(x: torch.Tensor, info) -> torch.Tensor:
    """What an image file holds: x * std + mean, clipped to [0, 1]."""
    return (x.float() * torch.tensor(info.std).view(1, -1, 1, 1) + torch.tensor(info.mean).view(1, -1, 1, 1)
            ).clamp(0, 1)


def from_pixels(pix: torch.Tensor, info) -> torch.Tensor:
    return (pix - torch.tensor(info.mean).view(1, -1, 1, 1)) / torch.tensor(info.std).view(1, -1, 1, 1)


def score_config(setting: Setting, seed: int = 0) -> HMCConfig:
    """The library's settings for the function a setting samples and warm-starts (jitter or fixed views, clip, score,
    warm start)."""
    return HMCConfig(temperature=setting.temperature, jitter=setting.jitter, affine_views=setting.affine_views,
                     clip=setting.clip, warm_start=setting.warm_opt, warm_augment=setting.warm_augment,
                     score=setting.score, seed=seed)


def build_score(model: nn.Module, info, nodes: list[str], setting: Setting) -> nn.Module:
    """The function HMC samples: the library's ``visualize.score_view`` of the nodes' score."""
    from gencnn_plugin.nodes import node_score
    from gencnn_plugin.visualize import score_view

    return score_view(node_score(model, info, nodes), info, score_config(setting))


def draw(model: nn.Module, info, nodes: list[str], setting: Setting, seed: int, data: str | None = None) -> dict:
    """Samples (display images in normalised space, one row per chain, nodes in consecutive groups), traces and
    timing for one setting."""
    from gencnn_plugin.reference import initial_z, sample_reference

    score = build_score(model, info, nodes, setting)
    n = setting.chains * len(nodes)
    ref = make_reference(setting.reference, info, sigma=setting.sigma, data=data)
    t0 = time.perf_counter()
    z0 = initial_z(ref, n, seed)
    out: dict = {"grad_evals_per_chain": 0}
    if setting.method == "ascent":
        z = z0.clone()
        lr = setting.step_size
        for _ in range(setting.iters):
            z.requires_grad_(True)
            f = score(ref.to_x(z))
            (g,) = torch.autograd.grad(f.sum(), z)
            rms = g.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12).view(-1, *([1] * (g.ndim - 1)))
            z = (z + lr * g / rms).detach()  # RMS-normalised steps: the same step length at any gradient scale
        with torch.no_grad():
            x = ref.to_x(z)
        out.update(x=x, seconds=time.perf_counter() - t0, grad_evals_per_chain=setting.iters,
                   scores=None, projections=None, accept=None)
        return out
    views = (4 if setting.jitter else 1) * (setting.affine_views or 1)  # forward passes per score evaluation
    # random transforms replace the average
    warm_evals = setting.warm_opt * (1 if setting.warm_augment != "off" else views)
    if setting.warm_opt:  # the library's warm start: Adam on U(z) = -f / T + |z|^2 / 2
        from gencnn_plugin.nodes import node_score
        from gencnn_plugin.visualize import warm_start, warm_view

        wcfg = score_config(setting, seed)
        z0 = warm_start(warm_view(node_score(model, info, nodes), info, wcfg), ref, z0, wcfg, lr=setting.warm_lr)
        with torch.no_grad():
            out["warm_x"] = ref.to_x(z0)
    cfg = HMCConfig(iters=setting.iters, leapfrog_steps=setting.leapfrog_steps, step_size=setting.step_size,
                    mass=setting.mass, sigma=1.0, chains=setting.chains, seed=seed, adapt_steps=setting.adapt_steps,
                    target_accept=setting.target_accept, temperature=setting.temperature,
                    replicas=setting.replicas, hot_temperature=setting.hot_temperature)
    # step size and mass are in x units (the paper's): sample_reference runs z with mass x sigma^2, which for the
    # white reference is exactly the paper's x-space sampler
    run = sample_reference(score, ref, cfg, chains=n, z0=z0)
    seconds = time.perf_counter() - t0
    res = run.result
    warm = setting.adapt_steps
    x = run.mean_x if setting.display == "mean" and run.mean_x is not None else run.x
    acc = res.trace["accepted"][warm:] if res.iters_done > warm else res.trace["accepted"]
    out.update(x=x, last=run.x, mean_x=run.mean_x, seconds=seconds, scores=res.trace["score"],
               projections=run.projections,
               accept=float(acc.mean()), step=float(res.trace["step_size"][-1].mean()), warmup=warm,
               grad_evals_per_chain=warm_evals + res.grad_evals * views,  # every replica's work
               mean_abs_energy_error=res.summary["mean_abs_energy_error"], swap_rate=res.summary.get("swap_rate"))
    return out


# ----------------------------------------------------------------------------------------------------------------
# digits: LeNet on MNIST / Fashion-MNIST
# ----------------------------------------------------------------------------------------------------------------

DIGIT_ITERS = 500
DIGIT_SETTINGS = {s.name: s for s in [
    # the paper's LeNet setting (section 4.2), exactly: white q, sigma 1, T 1, eps 0.1, L 50, m 0.01, 100 iterations
    Setting("paper", reference="white", step_size=0.1, leapfrog_steps=50, mass=0.01, iters=100),
    # the same model with the step tuned by dual averaging (the project's lenet_tuned preset, longer)
    Setting("white_t1", reference="white", step_size=0.015, leapfrog_steps=50, mass=0.01, iters=DIGIT_ITERS,
            adapt_steps=50),
    Setting("pink_t1", reference="pink", step_size=0.2, leapfrog_steps=8, mass=1.0, iters=DIGIT_ITERS,
            adapt_steps=50),
    Setting("pink_t03", reference="pink", temperature=0.3, step_size=0.2, leapfrog_steps=8, mass=1.0,
            iters=DIGIT_ITERS, adapt_steps=50),
    Setting("pca_t1", reference="pca", step_size=0.2, leapfrog_steps=8, mass=1.0, iters=DIGIT_ITERS, adapt_steps=50),
    Setting("pca_t1_long", reference="pca", step_size=0.2, leapfrog_steps=8, mass=1.0, iters=3 * DIGIT_ITERS,
            adapt_steps=100),
    Setting("pca_t1_mean", reference="pca", step_size=0.2, leapfrog_steps=8, mass=1.0, iters=DIGIT_ITERS,
            adapt_steps=50, display="mean"),
    Setting("pca_t05", reference="pca", temperature=0.5, step_size=0.2, leapfrog_steps=8, mass=1.0,
            iters=DIGIT_ITERS, adapt_steps=50),
    Setting("pca_t03", reference="pca", temperature=0.3, step_size=0.2, leapfrog_steps=8, mass=1.0,
            iters=DIGIT_ITERS, adapt_steps=50),
    # slightly colder than the paper's T = 1, run as long as pca_t1_long: a sharper tilt that may still mix
    Setting("pca_t08_long", reference="pca", temperature=0.8, step_size=0.2, leapfrog_steps=8, mass=1.0,
            iters=3 * DIGIT_ITERS, adapt_steps=100),
    Setting("pca_t07_long", reference="pca", temperature=0.7, step_size=0.2, leapfrog_steps=8, mass=1.0,
            iters=3 * DIGIT_ITERS, adapt_steps=100),
    # ... twice as long again: at T = 0.7 one node's chains still sit apart after 1500 iterations
    Setting("pca_t07_3k", reference="pca", temperature=0.7, step_size=0.2, leapfrog_steps=8, mass=1.0,
            iters=6 * DIGIT_ITERS, adapt_steps=100),
    Setting("pca_t08_3k", reference="pca", temperature=0.8, step_size=0.2, leapfrog_steps=8, mass=1.0,
            iters=6 * DIGIT_ITERS, adapt_steps=100),
    # replica exchange (HMCConfig.replicas): colder targets whose chains reach every mode through copies up to T = 1,
    # each at the work of pca_t07_3k (replicas x iterations = 3,000 or 4,000)
    Setting("pca_t07_pt3_1k", reference="pca", temperature=0.7, step_size=0.2, leapfrog_steps=8, mass=1.0,
            iters=2 * DIGIT_ITERS, adapt_steps=100, replicas=3, hot_temperature=1.0),
    Setting("pca_t06_pt4_1k", reference="pca", temperature=0.6, step_size=0.2, leapfrog_steps=8, mass=1.0,
            iters=2 * DIGIT_ITERS, adapt_steps=100, replicas=4, hot_temperature=1.0),
    # plain gradient ascent on f_y (the T -> 0 limit, no prior) from the paper's white q, in pixels
    Setting("ascent_white", method="ascent", reference="white", step_size=0.01, iters=2400,
            note="pixels, from white noise, RMS-normalised steps of 0.01"),
    # ... and from a pca reference draw, in its whitened coordinates (preconditioned by the data covariance)
    Setting("ascent_pca", method="ascent", reference="pca", step_size=0.01, iters=2400,
            note="whitened pca coordinates, RMS-normalised steps of 0.01"),
]}


def digit_control(lenet: nn.Module, info, judge: nn.Module, jinfo, reference: str, data: str, per_class: int,
                  budget: float, seed: int, linf: float | None = None) -> dict:
    """The judge on reference noise nudged towards each class by the LeNet's gradient: 10 steps of projected
    gradient ascent on f_y in an L2 ball of radius ``budget`` x |noise - mean| in pixels (the noise's own
    deviation), or with ``linf`` in an L-inf ball of that radius in pixels, clipped to [0, 1]. A perturbation of a
    few percent of the noise's norm, or of 4/255 per pixel, is invisible. The LeNet's own agreement on the nudged
    noise says how strong the nudge was."""
    from gencnn_plugin.nodes import node_score

    ref = make_reference(reference, info, data=data)
    g = torch.Generator().manual_seed(seed + 7)
    x0 = ref.sample(10 * per_class, g)
    pix0 = to_pixels(x0, info)
    radius = budget * (pix0 - to_pixels(ref.x_mean, info)).flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    score = node_score(lenet, info, [f"logits:{k}" for k in range(10)])
    targets = torch.arange(10).repeat_interleave(per_class)
    delta = torch.zeros_like(pix0)
    for _ in range(10):
        delta.requires_grad_(True)
        f = score(from_pixels((pix0 + delta).clamp(0, 1), info))
        (grad,) = torch.autograd.grad(f.sum(), delta)
        if linf is not None:
            delta = (delta.detach() + 0.3 * linf * grad.sign()).clamp(-linf, linf)
            continue
        step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1) * radius * 0.3
        delta = (delta.detach() + step)
        norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * torch.clamp(radius / norm.clamp_min(1e-12), max=1.0)
    pix = (pix0 + delta).clamp(0, 1)
    with torch.no_grad():
        jl = judge(from_pixels(pix, jinfo)).argmax(1)
        jl0 = judge(from_pixels(pix0, jinfo)).argmax(1)
        lenet_l = lenet(from_pixels(pix, info)).argmax(1)
    return {"reference": reference, "per_class": per_class, "l2_budget": None if linf is not None else budget,
            "linf_budget": linf, "max_linf": float((pix - pix0).abs().amax()),
            "mean_l2_over_noise_l2": float(((pix - pix0).flatten(1).norm(dim=1) / (pix0 - to_pixels(
                ref.x_mean, info)).flatten(1).norm(dim=1)).mean()),
            "judge": proportion(jl == targets, targets), "judge_unnudged": proportion(jl0 == targets, targets),
            "lenet_agrees": float((lenet_l == targets).float().mean())}


def cmd_digits(args: argparse.Namespace) -> None:
    """Sample the 10 class nodes of a LeNet with each setting; judge, control, diversity, convergence."""
    torch.set_num_threads(args.threads)
    data_dir = _data_dir(args)
    stem = DATASET_FILES[args.dataset]
    lenet, info, lmeta = load_checkpoint(args.lenet)
    judge, jinfo, jmeta = load_checkpoint(args.judge or REPO / "runs" / f"judge_{stem}")
    if jinfo.model == info.model:
        sys.exit("the judge must be another architecture than the sampled network")
    test = load_idx(args.dataset, data_dir, train=False)
    real = test.images.float() / 255
    real_div = [mean_pairwise_distance(real[test.labels == k][: args.real_per_class]) for k in range(10)]
    nodes = [f"logits:{k}" for k in range(10)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.settings:
        st = DIGIT_SETTINGS[name]
        st = replace(st, chains=args.chains)
        ref_name = st.reference if st.reference == "white" else f"{st.reference}:{stem}" + \
            ("_pca" if st.reference == "pca" else "")
        st_run = replace(st, reference=ref_name)
        out = draw(lenet, info, nodes, st_run, args.seed)
        targets = torch.arange(10).repeat_interleave(st.chains)
        rec = {"benchmark": "digits", "dataset": args.dataset, "setting": asdict(st), "label": st.label(),
               "sampled": {"checkpoint": str(args.lenet), "model": info.model,
                           "test_error": lmeta.get("test_error")},
               "judge": {"checkpoint": str(args.judge or f"runs/judge_{stem}"), "model": jinfo.model,
                         "accuracy": (jmeta.get("judge") or {}).get("accuracy")},
               "seconds": out["seconds"], "grad_evals_per_chain": out["grad_evals_per_chain"],
               "accept": out["accept"], "step": out.get("step"), "swap_rate": out.get("swap_rate"),
               **_meta(args, args.threads)}
        pix = to_pixels(out["x"], info)
        with torch.no_grad():
            jl = judge(from_pixels(pix, jinfo)).argmax(1)
            own = lenet(out["x"]).argmax(1)
        rec["judge_agreement"] = proportion(jl == targets, targets)
        rec["judge_per_class"] = [float((jl[targets == k] == k).float().mean()) for k in range(10)]
        rec["lenet_agreement"] = float((own == targets).float().mean())
        div = [mean_pairwise_distance(pix[targets == k]) / real_div[k] for k in range(10)]
        rec["diversity"] = sum(div) / 10
        rec["diversity_per_class"] = div
        if out["scores"] is not None:
            rec["convergence"] = convergence(out["scores"], out["projections"], st.chains, out["warmup"])
        rec["control"] = digit_control(lenet, info, judge, jinfo, ref_name, None, args.control_per_class,
                                       args.control_budget, args.seed)
        rec["control_linf"] = digit_control(lenet, info, judge, jinfo, ref_name, None, args.control_per_class,
                                            args.control_budget, args.seed, linf=4 / 255)
        rec["control_strong"] = digit_control(lenet, info, judge, jinfo, ref_name, None, args.control_per_class,
                                              0.15, args.seed)
        grid = IMAGES / f"legibility_{stem}_{name}.png"
        save_digit_grid(pix, st.chains, grid)
        rec["grid"] = str(grid.relative_to(REPO))
        path = RESULTS / f"{stem}_{name}.json"
        path.write_text(json.dumps(rec, indent=1) + "\n")
        c = rec.get("convergence", {})
        print(f"{args.dataset} {name}: judge {rec['judge_agreement']['p']:.3f} (control "
              f"{rec['control']['judge']['p']:.3f} / linf {rec['control_linf']['judge']['p']:.3f} / L2 15% "
              f"{rec['control_strong']['judge']['p']:.3f}, LeNet on them {rec['control']['lenet_agrees']:.2f} / "
              f"{rec['control_linf']['lenet_agrees']:.2f} / {rec['control_strong']['lenet_agrees']:.2f}), "
              f"diversity {rec['diversity']:.2f}, R-hat max "
              f"{c.get('rhat_max', float('nan')):.3f}, ESS min {c.get('ess_bulk_min', float('nan')):.1f}, accept "
              f"{rec['accept'] if rec['accept'] is not None else float('nan'):.2f}, {rec['seconds']:.0f} s", flush=True)


def repo_path(path: str | Path) -> str:
    """A checkpoint's path as records name it: relative to the repository when inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def cmd_real_agreement(args: argparse.Namespace) -> None:
    """How often the judge names the class the sampled LeNet names, on real test images: the agreement that samples
    as typical as real images would read. A judge that disagrees with the LeNet on real shirts caps what its
    agreement on sampled shirts can show (``real_agreement_<dataset>.json``; the report prints it)."""
    torch.set_num_threads(args.threads)
    stem = DATASET_FILES[args.dataset]
    lenet, info, _ = load_checkpoint(args.lenet)
    judge, jinfo, _ = load_checkpoint(args.judge or REPO / "runs" / f"judge_{stem}")
    test = load_idx(args.dataset, _data_dir(args), train=False)
    pix = test.images.float() / 255

    def labels(model: nn.Module, minfo) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(from_pixels(pix[i:i + 1000], minfo)).argmax(1) for i in range(0, len(pix), 1000)])

    own, jl = labels(lenet, info), labels(judge, jinfo)
    rec = {"benchmark": "real_agreement", "dataset": args.dataset, "lenet": repo_path(args.lenet),
           "judge": repo_path(args.judge or REPO / "runs" / f"judge_{stem}"), "images": len(pix),
           "agreement": proportion(jl == own, own),  # grouped by the LeNet's class, as samples are by their node
           # None: a class the LeNet never names
           "per_class": [float((jl[own == k] == k).float().mean()) if (own == k).any() else None for k in range(10)],
           "lenet_accuracy": float((own == test.labels).float().mean()),
           "judge_accuracy": float((jl == test.labels).float().mean()), **_meta(args, args.threads)}
    path = Path(args.out) if args.out else RESULTS / f"real_agreement_{stem}.json"
    path.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"{args.dataset}: the judge names the LeNet's class on {100 * rec['agreement']['p']:.1f}% of the "
          f"{len(pix)} test images; per class " + " ".join(_pct0(v) for v in rec["per_class"]))


def _pct0(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def save_digit_grid(pix: torch.Tensor, chains: int, path: Path) -> None:
    """One row per class, one column per chain, upscaled 3x."""
    import torchvision.utils as vutils

    big = F.interpolate(pix, scale_factor=3, mode="nearest")
    vutils.save_image(vutils.make_grid(big, nrow=chains, padding=2, pad_value=0.5), str(path))


# ----------------------------------------------------------------------------------------------------------------
# ImageNet: SqueezeNet 1.1 judged by MobileNetV2 and the reverse
# ----------------------------------------------------------------------------------------------------------------

IMAGENET_CLASSES = [1, 22, 130, 145, 207, 281, 292, 301, 323, 340, 388, 417, 555, 607, 779, 920, 949, 951, 963, 967]
# goldfish, bald eagle, flamingo, king penguin, golden retriever, tabby, tiger, ladybug, monarch, zebra, giant panda,
# balloon, fire engine, jack-o'-lantern, school bus, traffic light, strawberry, lemon, pizza, espresso


def heldout_classes(n: int = 20, seed: int = 14, exclude: tuple[int, ...] = ()) -> list[int]:
    """Classes no setting was tuned on: a seeded draw from all 1000, the tuning classes above and ``exclude``
    excluded. The tuning classes were picked by hand and every setting was chosen on them, so their rates are
    optimistic."""
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted([c for c in order if c not in IMAGENET_CLASSES and c not in exclude][:n])


HELDOUT_CLASSES = heldout_classes()  # hen, leatherback turtle, hermit crab, Chihuahua, ... coral fungus
# A second draw, outside both sets above: the first held-out set decided two settings (the wide warm-start
# transforms and the 1/f reference), so it is no longer held out for them; this one decided nothing.
HELDOUT2_CLASSES = heldout_classes(seed=15, exclude=tuple(HELDOUT_CLASSES))  # chickadee, loggerhead, ... lakeside
# A third (twelfth session): the eleventh session ran an exploratory setting on eight of the second draw's classes
HELDOUT3_CLASSES = heldout_classes(seed=16, exclude=tuple(HELDOUT_CLASSES + HELDOUT2_CLASSES))
CLASS_SETS = {"tuning": IMAGENET_CLASSES, "heldout": HELDOUT_CLASSES, "heldout2": HELDOUT2_CLASSES,
              "heldout3": HELDOUT3_CLASSES}
CLASS_SET_WORDS = {"tuning": "", "heldout": "held-out", "heldout2": "second held-out",  # how the report names them
                   "heldout3": "third held-out"}


def class_name(c: int) -> str:
    """An ImageNet class's short name: timm's description (as ``create_model`` names the classes), first part."""
    from timm.data import ImageNetInfo

    return ImageNetInfo().index_to_description(c).split(",")[0]
IMAGENET_MODELS = {
    # name: spec, weights file, constructor options, (mean, std) (../shared/README.md)
    "squeezenet1_1": ("tv:squeezenet1_1", "squeezenet1_1_imagenet.safetensors", {}, None),
    "mobilenetv2_100": ("timm:mobilenetv2_100", "mobilenetv2_100_imagenet.safetensors", {"pad_type": "same"},
                        ((0.5,) * 3, (0.5,) * 3)),
}
JUDGE_OF = {"squeezenet1_1": "mobilenetv2_100", "mobilenetv2_100": "squeezenet1_1"}
JITTER = 8  # px: the score averaged over shifts (0, 0), (0, 8), (8, 0), (8, 8)
IMAGENET_SETTINGS = {s.name: s for s in [
    # the paper's AlexNet fc8 setting (section 4.2): white q, sigma 1, T 1, eps 1, L 25, m 0.3; the paper runs 500
    # iterations, we run --paper-iters (every proposal is rejected: the state stays the starting noise)
    Setting("paper", reference="white", step_size=1.0, leapfrog_steps=25, mass=0.3, iters=500),
    Setting("pink_t1", reference="pink", step_size=0.05, leapfrog_steps=10, mass=1.0, iters=80, adapt_steps=30),
    Setting("pink_clip_t01", reference="pink", temperature=0.1, clip=True, step_size=0.01, leapfrog_steps=10,
            mass=1.0, iters=40, adapt_steps=20, warm_opt=200),
    # the same with the score averaged over 4 fixed translations (lucent's jitter, made deterministic so HMC stays
    # exact for the node it samples)
    Setting("pink_clip_jitter_t01", reference="pink", temperature=0.1, clip=True, jitter=JITTER, step_size=0.01,
            leapfrog_steps=10, mass=1.0, iters=40, adapt_steps=20, warm_opt=200),
    # ... colder, with a longer warm start: the prior's pull towards noise is 5x weaker
    Setting("pink_clip_jitter_t002", reference="pink", temperature=0.02, clip=True, jitter=JITTER, step_size=0.01,
            leapfrog_steps=10, mass=1.0, iters=40, adapt_steps=20, warm_opt=400),
    # lucent's lesson in the warm start: every Adam step scores a random shift / zoom / rotation of the image
    # (RandomAffineScore), so the start is a picture that survives transforms; HMC then samples the fixed average
    Setting("pink_aug_t01", reference="pink", temperature=0.1, clip=True, jitter=JITTER, step_size=0.01,
            leapfrog_steps=10, mass=1.0, iters=40, adapt_steps=20, warm_opt=300, warm_augment="standard"),
    # ... with a quieter reference: q at 0.3 x the photos' amplitude and T = 0.01 (T / sigma^2 ~ 0.1, the same
    # balance of score and prior at the mode), so the directions the score ignores carry 0.3 x the noise
    Setting("pink_s03_aug_t001", reference="pink", sigma=0.3, temperature=0.01, clip=True, jitter=JITTER,
            step_size=0.003, leapfrog_steps=10, mass=1.0, iters=40, adapt_steps=20, warm_opt=300,
            warm_augment="standard"),
    # ablation: the quieter q without the random transforms (the warm start scores the fixed 4-shift average)
    Setting("pink_s03_t001", reference="pink", sigma=0.3, temperature=0.01, clip=True, jitter=JITTER,
            step_size=0.003, leapfrog_steps=10, mass=1.0, iters=40, adapt_steps=20, warm_opt=300),
    # ... with twice the warm start (lucent takes 512 steps): its end decides most of what the judge reads
    Setting("pink_s03_aug600_t001", reference="pink", sigma=0.3, temperature=0.01, clip=True, jitter=JITTER,
            step_size=0.003, leapfrog_steps=10, mass=1.0, iters=40, adapt_steps=20, warm_opt=600,
            warm_augment="standard"),
    # ... and longer still (exploratory, fifth session): does the warm start's length still pay after 600 steps?
    Setting("pink_s03_aug1000_t001", reference="pink", sigma=0.3, temperature=0.01, clip=True, jitter=JITTER,
            step_size=0.003, leapfrog_steps=10, mass=1.0, iters=40, adapt_steps=20, warm_opt=1000,
            warm_augment="standard"),
    # sixth session: the 600-step warm start with the wide transform range (4x the shift, zoom 0.6-1.2, 20 degrees),
    # chosen by benchmarks/augment_probe.py on the tuning classes' warm starts alone, then run here on both sets
    Setting("pink_s03_wide600_t001", reference="pink", sigma=0.3, temperature=0.01, clip=True, jitter=JITTER,
            step_size=0.003, leapfrog_steps=10, mass=1.0, iters=40, adapt_steps=20, warm_opt=600,
            warm_augment="wide"),
    # ninth session: the same from the 1/f reference (zoo_configs/references/imagenet_1f.yaml: the photos' mean and
    # colour, amplitude ~ 1/f by choice instead of their fitted 1/f^1.42): more variance in fine detail
    Setting("pink1f_s03_wide600_t001", reference="pink:imagenet_1f", sigma=0.3, temperature=0.01, clip=True,
            jitter=JITTER, step_size=0.003, leapfrog_steps=10, mass=1.0, iters=40, adapt_steps=20, warm_opt=600,
            warm_augment="wide"),
    Setting("ascent", method="ascent", reference="white", step_size=0.02, iters=600,
            note="pixels from white noise, RMS-normalised steps of 0.02"),
    Setting("lucent", method="lucent", iters=512, chains=1,
            note="torch-lucent 0.1.8: param.image(224) fft + decorrelate, Adam 0.05, standard_transforms, 512 steps"),
    Setting("maco", method="maco", iters=128, chains=1,
            note="horama 0.3.0 maco(): 512-px buffer, 6 crops/step, NAdam 1.0, 128 steps; spectrum fitted here"),
]}


# eleventh session (exploratory): the 1/f setting run 4x as long, to see whether f_y's split R-hat falls with more
# draws or the chains keep climbing, and what the climb does to what the judge reads
IMAGENET_SETTINGS["pink1f_s03_wide600_t001_i160"] = replace(IMAGENET_SETTINGS["pink1f_s03_wide600_t001"],
                                                            name="pink1f_s03_wide600_t001_i160", iters=160)


# twelfth session: the 1/f setting colder, for MobileNetV2, whose samples wash out at T 0.01 (its logits span less;
# our hypothesis: the prior's pull towards the mean image wins); T 0.002 was chosen over 0.0005 on 10 tuning classes'
# warm starts (benchmarks/augment_probe.py, variants wide_1f_t0002 / wide_1f_t00005), then run in full on the third
# draw and (thirteenth session) on the 6 tuning classes pink1f_s03_wide600_t001 ran on, to pair the two T; SqueezeNet
# was run with it on the third draw too (thirteenth session), paired with the preset's T 0.01
IMAGENET_SETTINGS["pink1f_s03_wide600_t0002"] = replace(IMAGENET_SETTINGS["pink1f_s03_wide600_t001"],
                                                        name="pink1f_s03_wide600_t0002", temperature=0.002)


# thirteenth session (exploratory): the 1/f setting with the bounded score log p(y|x) <= 0 in place of the logit, run
# in full (the twelfth session read its warm starts only), to measure whether a score bounded above (f <= 0) lets the
# chains become stationary (split R-hat) and what the HMC iterations then do to the reading
IMAGENET_SETTINGS["pink1f_s03_wide600_t001_lsm"] = replace(IMAGENET_SETTINGS["pink1f_s03_wide600_t001"],
                                                           name="pink1f_s03_wide600_t001_lsm", score="log_softmax")


# fourteenth session (exploratory, tuning classes first): the HMC iterations lower the reading (-8.1 points over 80
# classes) while the warm start, which scores random shifts, zooms and rotations, reads more; here HMC samples the
# class score averaged over K fixed views drawn once from the same wide range (the identity first) instead of 4 shifts
# of 8 px, which a CNN sees almost alike: at K = 4 the same work per score as the jitter average
IMAGENET_SETTINGS["pink1f_s03_wide600_t001_av4"] = replace(IMAGENET_SETTINGS["pink1f_s03_wide600_t001"],
                                                           name="pink1f_s03_wide600_t001_av4", jitter=0,
                                                           affine_views=4)
# ... and for MobileNetV2 at its T 0.002, whose samples lose most to the HMC iterations (-20.0 points against its warm
# starts on the third draw)
IMAGENET_SETTINGS["pink1f_s03_wide600_t0002_av4"] = replace(IMAGENET_SETTINGS["pink1f_s03_wide600_t0002"],
                                                            name="pink1f_s03_wide600_t0002_av4", jitter=0,
                                                            affine_views=4)


def load_imagenet(name: str, weights_dir: Path):
    spec, file, kwargs, norm = IMAGENET_MODELS[name]
    mean, std = norm if norm else (None, None)
    model, info = create_model(spec, weights=weights_dir / file, mean=mean, std=std, **kwargs)
    return model.eval().requires_grad_(False), info


def judge_ranks(judge: nn.Module, jinfo, pix: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank of the target class in the judge's logits (0 = top-1) for pixel images in [0, 1]."""
    with torch.no_grad():
        logits = judge(from_pixels(pix, jinfo))
    return (logits > logits.gather(1, targets.view(-1, 1))).sum(1)


def lucent_images(model: nn.Module, info, classes: list[int], steps: int, seed: int) -> torch.Tensor:
    """lucent's render_vis recipe, one image per class in one batch: its own parameterisation (param.image: FFT
    spectrum with 1/f scaling, decorrelated colour, sigmoid), Adam lr 0.05, transform.standard_transforms (pad 12,
    jitter 8, scale 0.90-1.10, rotate -10..10 deg, jitter 4), maximising the class logit. lucent's own
    ``transform.normalize()`` is ImageNet's; the model's own mean/std is applied instead (MobileNetV2 uses 0.5)."""
    from lucent.optvis import param, transform

    torch.manual_seed(seed)
    import numpy as np

    np.random.seed(seed)
    params, image_f = param.image(224, batch=len(classes))
    opt = torch.optim.Adam(params, lr=5e-2)
    tf = transform.compose(transform.standard_transforms)
    idx = torch.tensor(classes)
    rows = torch.arange(len(classes))
    for _ in range(steps):
        opt.zero_grad()
        logits = model(from_pixels(tf(image_f()), info))
        (-logits[rows, idx].sum()).backward()
        opt.step()
    return image_f().detach()


def maco_images(model: nn.Module, info, classes: list[int], steps: int, seed: int, size: int = 512) -> torch.Tensor:
    """horama's maco() (Fel et al. 2023): phase optimised, magnitude fixed to a natural-image template, 6 random
    crops per step, NAdam lr 1.0. horama downloads its ImageNet magnitude template; offline we fit the template the
    same way (mean amplitude spectrum of decorrelated images) from the shared photos and place it where horama
    looks (spectrum_decorrelated.npy in the working directory). Crops are in horama's values_range (-2.5, 2.5),
    which it treats as the model's normalised input; the image is mapped back to pixels with the model's mean/std."""
    import os

    import numpy as np
    from horama import maco

    here = Path.cwd()
    work = REPO / "runs" / "legibility" / "maco"
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    try:
        if not Path("spectrum_decorrelated.npy").is_file():
            np.save("spectrum_decorrelated.npy", maco_template(size).numpy())
        images = []
        for c in classes:
            torch.manual_seed(seed + c)
            img, _ = maco(lambda x, c=c: model(x)[:, c].mean(), total_steps=steps, image_size=size,
                          model_input_size=224, device="cpu")
            images.append(img.detach())
    finally:
        os.chdir(here)
    x = torch.stack(images)  # (N, 3, size, size) in the model's normalised space
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return to_pixels(x, info)


def maco_template(size: int) -> torch.Tensor:
    """MACO's magnitude template: the mean |rfft2| of colour-decorrelated photos (horama's SVD-sqrt colour basis,
    inverted), resized to size x (size // 2 + 1) by horama itself; here from the shared photos' 224-px crops."""
    from horama.common import get_color_correlation_svd_sqrt

    crops = photo_crops(Path(_data_dir(argparse.Namespace(data_dir=None))) / "images")
    m = get_color_correlation_svd_sqrt("cpu")
    flat = (crops - crops.mean((2, 3), keepdim=True)).permute(0, 2, 3, 1) @ torch.linalg.inv(m)
    dec = flat.permute(0, 3, 1, 2)
    return torch.fft.rfft2(dec).abs().mean(0)


def cmd_imagenet(args: argparse.Namespace) -> None:
    """Sample class nodes of one network with each setting, class by class (4 chains per class by default); judge
    with the other network; convergence per class; wall and CPU time per class."""
    torch.set_num_threads(args.threads)
    wdir = Path(args.weights_dir)
    model, info = load_imagenet(args.model, wdir)
    judge_name = JUDGE_OF[args.model]
    judge, jinfo = load_imagenet(judge_name, wdir)
    class_set = CLASS_SETS[args.class_set]
    classes = args.classes or class_set
    if set(classes) - set(class_set):  # a record holds one class set, so its rate means what its name says
        sys.exit(f"--classes {sorted(set(classes) - set(class_set))} are not in --class-set {args.class_set}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    cache = REPO / "runs" / "legibility" / "imagenet"
    cache.mkdir(parents=True, exist_ok=True)
    for name in args.settings:
        st = IMAGENET_SETTINGS[name]
        if name == "paper":
            st = replace(st, iters=args.paper_iters)
        if st.method in ("hmc", "ascent"):
            st = replace(st, chains=args.chains if name != "paper" else args.paper_chains)
        key = record_key(name, args.class_set)
        path = RESULTS / f"imagenet_{args.model}_{key}.json"
        rec = json.loads(path.read_text()) if path.exists() and not args.fresh else None
        if rec is None or setting_dict(rec.get("setting")) != asdict(st):
            rec = {"benchmark": "imagenet", "model": args.model, "judge": judge_name, "setting": asdict(st),
                   "label": st.label(), "class_set": args.class_set, "classes": {}}
        rec.update(_meta(args, args.threads))  # from the first class on: a run stopped early still says what ran
        t_all = time.perf_counter()
        if st.method in ("lucent", "maco"):
            todo = [c for c in classes if str(c) not in rec["classes"]]
            if todo:
                t0, c0 = time.perf_counter(), time.process_time()
                pix = (lucent_images(model, info, todo, st.iters, args.seed) if st.method == "lucent" else
                       maco_images(model, info, todo, st.iters, args.seed))
                secs, cpu = time.perf_counter() - t0, time.process_time() - c0
                ranks = judge_ranks(judge, jinfo, pix, torch.tensor(todo))
                own = judge_ranks(model, info, pix, torch.tensor(todo))
                for i, c in enumerate(todo):
                    torch.save((pix[i:i + 1] * 255).round().to(torch.uint8), cache / f"{args.model}_{name}_{c}.pt")
                    rec["classes"][str(c)] = {"ranks": [int(ranks[i])], "own_ranks": [int(own[i])],
                                              "seconds": secs / len(todo), "cpu_seconds": cpu / len(todo),
                                              "grad_evals_per_chain": st.iters * (6 if st.method == "maco" else 1)}
        else:
            for c in classes:
                if str(c) in rec["classes"]:
                    continue
                c0 = time.process_time()
                out = draw(model, info, [f"logits:{c}"], st, args.seed + c)
                cpu = time.process_time() - c0
                pix = to_pixels(out["x"], info)
                t = torch.full((pix.shape[0],), c)
                r = {"ranks": judge_ranks(judge, jinfo, pix, t).tolist(),
                     "own_ranks": judge_ranks(model, info, pix, t).tolist(),
                     "seconds": out["seconds"], "cpu_seconds": cpu, "accept": out["accept"], "step": out.get("step"),
                     "grad_evals_per_chain": out["grad_evals_per_chain"]}
                if out.get("scores") is not None:
                    r["convergence"] = convergence(out["scores"], out["projections"], st.chains, out["warmup"])
                    r["final_scores"] = out["scores"][-1].tolist()
                    mean_x = out.get("mean_x")
                    if mean_x is not None:
                        r["mean_ranks"] = judge_ranks(judge, jinfo, to_pixels(mean_x, info), t).tolist()
                if out.get("warm_x") is not None:  # the warm start's end, before any HMC iteration
                    r["warm_ranks"] = judge_ranks(judge, jinfo, to_pixels(out["warm_x"], info), t).tolist()
                torch.save((pix * 255).round().to(torch.uint8), cache / f"{args.model}_{name}_{c}.pt")
                rec["classes"][str(c)] = r
                save_record(path, rec)
                print(f"{args.model} {name} class {c}: judge ranks {r['ranks']}, own {r['own_ranks']}, "
                      f"{r['seconds']:.0f} s (cpu {cpu:.0f} s), R-hat "
                      f"{r.get('convergence', {}).get('rhat_max', float('nan')):.4g}", flush=True)
        rec.update(_meta(args, args.threads))
        rec["seconds_this_invocation"] = time.perf_counter() - t_all
        save_record(path, rec, summarize=True)  # merges what other processes recorded for other classes
        imagenet_grid(args.model, name, [int(c) for c in rec["classes"]], cache, st.chains, key)
        a = rec["summary"]
        print(f"{args.model} {key}: top-1 {a['top1']['p']:.3f} top-5 {a['top5']['p']:.3f} (n {a['top5']['n']}), "
              f"{a['seconds_per_class_median']:.0f} s per class", flush=True)


def setting_dict(stored: dict | None) -> dict | None:
    """A stored setting with the defaults of fields added since it was written, without empty fields removed since:
    an old record of the same setting still matches."""
    if stored is None:
        return None
    import dataclasses

    defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for f in dataclasses.fields(Setting) if f.name != "name"}
    out = {**defaults, **{k: v for k, v in stored.items() if k in defaults or k == "name" or v}}
    if isinstance(out["jitter"], list):  # written when jitter was the list of shifts [[0, 0], [0, j], [j, 0], [j, j]]
        shifts = out["jitter"]
        j = shifts[1][1] if len(shifts) == 4 else None
        if not shifts:
            out["jitter"] = 0
        elif shifts == [[0, 0], [0, j], [j, 0], [j, j]]:
            out["jitter"] = j  # any other list is no setting of today's and matches none
    if isinstance(out["warm_augment"], bool):  # written when it was on/off: on was today's standard range
        out["warm_augment"] = "standard" if out["warm_augment"] else "off"
    return out


def current_label(stored: dict) -> str:
    """A stored setting's label as this code writes it (records keep the label of the code that ran them)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(Setting)}
    return Setting(**{k: v for k, v in setting_dict(stored).items() if k in names}).label()


def update_json(path: Path, update: Callable[[dict | None], dict]) -> dict:
    """Read-modify-write a JSON record that other processes (run side by side) also write: a lock file serialises
    them, and the new text replaces the old in one rename, so a reader never sees half a file. ``update`` gets the
    record on disk (None if there is none) and returns what to write."""
    import fcntl

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rec = update(json.loads(path.read_text()) if path.exists() else None)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=1) + "\n")
        tmp.replace(path)
    return rec


def merged_commands(disk: dict, command: str | None) -> list[str]:
    """Every command that wrote a record: those on disk (older records kept one ``command``), then this one."""
    said = disk.get("commands") or ([disk["command"]] if disk.get("command") else [])
    return list(dict.fromkeys(said + ([command] if command else [])))


def save_record(path: Path, rec: dict, summarize: bool = False) -> None:
    """Write a setting's record after merging the classes that other processes (``--classes`` splits of the same
    setting, run side by side) wrote meanwhile (:func:`update_json`). ``summarize``: the summary over every
    recorded class, computed after the merge."""
    def merge(disk: dict | None) -> dict:
        if disk is not None and setting_dict(disk.get("setting")) == setting_dict(rec.get("setting")):
            rec["classes"] = {**disk.get("classes", {}), **rec["classes"]}
            rec["commands"] = merged_commands(disk, rec.get("command"))
        rec["classes"] = {c: rec["classes"][c] for c in sorted(rec["classes"], key=int)}
        if summarize:
            summarize_imagenet(rec, [int(c) for c in rec["classes"]])
        return rec

    update_json(path, merge)


def summarize_imagenet(rec: dict, classes: list[int]) -> None:
    done = [c for c in classes if str(c) in rec["classes"]]
    ranks, groups = [], []
    for c in done:
        for r in rec["classes"][str(c)]["ranks"]:
            ranks.append(r)
            groups.append(c)
    ranks_t, groups_t = torch.tensor(ranks), torch.tensor(groups)
    secs = sorted(rec["classes"][str(c)]["seconds"] for c in done)
    cpu = sorted(rec["classes"][str(c)]["cpu_seconds"] for c in done)
    summ = {"classes": len(done), "top1": proportion(ranks_t < 1, groups_t),
            "top5": proportion(ranks_t < 5, groups_t),
            "seconds_per_class_median": secs[len(secs) // 2] if secs else float("nan"),
            "seconds_per_class_max": secs[-1] if secs else float("nan"),
            "cpu_seconds_per_class_median": cpu[len(cpu) // 2] if cpu else float("nan")}
    own = torch.tensor([r for c in done for r in rec["classes"][str(c)]["own_ranks"]])
    summ["own_top1"] = float((own < 1).float().mean()) if own.numel() else float("nan")
    conv = [rec["classes"][str(c)].get("convergence") for c in done]
    conv = [v for v in conv if v]
    if conv:
        rh = sorted(v["rhat_max"] for v in conv)
        summ["rhat_max"] = rh[-1]
        summ["rhat_median"] = rh[len(rh) // 2]
        summ["nodes_rhat_le_1.05"] = sum(v <= 1.05 for v in rh)
        summ["ess_bulk_min"] = min(v["ess_bulk_min"] for v in conv)
        acc = [rec["classes"][str(c)]["accept"] for c in done]
        summ["accept_mean"] = sum(acc) / len(acc)
    warms = [(r, c) for c in done for r in rec["classes"][str(c)].get("warm_ranks", [])]
    if warms:  # the warm start's end, judged the same way: what HMC's iterations add or take away
        summ["warm_top5"] = proportion(torch.tensor([r for r, _ in warms]) < 5, torch.tensor([c for _, c in warms]))
    means = [r for c in done for r in rec["classes"][str(c)].get("mean_ranks", [])]
    if means:
        summ["mean_display_top5"] = float((torch.tensor(means) < 5).float().mean())
    rec["summary"] = summ


def record_key(setting: str, class_set: str | None) -> str:
    """A record's (and its grid's) name: the setting, and ``_<class set>`` for a class set other than tuning."""
    return setting + (f"_{class_set}" if class_set not in (None, "tuning") else "")


def set_order(rec: dict) -> int:
    """A record's class set's place in CLASS_SETS (tuning first): the report's order."""
    return list(CLASS_SETS).index(rec.get("class_set", "tuning"))


def imagenet_grid(model: str, setting: str, classes: list[int], cache: Path, chains: int, key: str | None = None,
                  size: int = 112) -> None:
    """All classes of a setting, one row per class (its chains side by side), at ``size`` px; saved under ``key``
    (default the setting)."""
    import torchvision.utils as vutils

    rows = []
    for c in classes:
        f = cache / f"{model}_{setting}_{c}.pt"
        if f.is_file():
            rows.append(torch.load(f, weights_only=True).float() / 255)
    if not rows:
        return
    pix = torch.cat(rows)
    pix = F.interpolate(pix, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    n = max(1, min(chains, pix.shape[0]))
    nrow = n * max(1, 10 // n)  # 10 images a row: a class's chains side by side, 5 (or 10) classes a row
    vutils.save_image(vutils.make_grid(pix, nrow=nrow, padding=2, pad_value=1.0),
                      str(IMAGES / f"legibility_imagenet_{model}_{key or setting}.png"))


# ----------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------

DIGIT_TARGETS = {"agreement": 0.97, "over_control": 0.50, "diversity": 0.5, "rhat": 1.05}
IMAGENET_TOP5_TARGET = 0.60


def _ci(p: dict) -> str:
    lo, hi = _bounds(p)
    return f"{100 * p['p']:.1f}% ({100 * lo:.1f}-{100 * hi:.1f}), {p['k']}/{p['n']}"


def _num(v: float | None, fmt: str = ".3f") -> str:
    if v is None or v != v:
        return "-"
    return "inf" if v > 1e300 else format(v, fmt)


def _bounds(p: dict) -> tuple[float, float]:
    """The wider of the Wilson interval (samples independent) and the class bootstrap (classes independent): the
    chains of one class are correlated, and the bootstrap alone collapses to [1, 1] when every sample agrees."""
    return min(p["wilson"][0], p["boot"][0]), max(p["wilson"][1], p["boot"][1])


def _decide(lo: float, hi: float, target: float) -> str:
    """met: the interval clears the target; not met: it lies below; undecided: it contains the target (at this n)."""
    return "met" if lo >= target else ("not met" if hi < target else "undecided")


def _digit_verdict(r: dict) -> str:
    """Each digit target, decided by its interval: agreement >= 97%; agreement minus control >= 50 points (lower
    bound of agreement minus upper bound of control, and the reverse); diversity and R-hat as measured."""
    a, c = _bounds(r["judge_agreement"]), _bounds(r["control"]["judge"])
    conv = r.get("convergence") or {}
    rhat = conv.get("rhat_max", float("nan"))
    parts = {"agreement": _decide(*a, DIGIT_TARGETS["agreement"]),
             "+50 over control": _decide(a[0] - c[1], a[1] - c[0], DIGIT_TARGETS["over_control"]),
             "diversity": "met" if r["diversity"] >= DIGIT_TARGETS["diversity"] else "not met",
             "R-hat": ("n/a (not a sampler)" if not conv else
                       "met" if rhat == rhat and rhat <= DIGIT_TARGETS["rhat"] else "not met")}
    return "; ".join(f"{k} {v}" for k, v in parts.items())


def _pct(p: dict | None) -> str:
    return "-" if not p else f"{100 * p['p']:.1f}%"


def class_rates(rec: dict) -> dict[str, float]:
    """A record's rate per class over its chains: the judge's agreement (digits) or top-5 (ImageNet)."""
    if rec.get("benchmark") == "digits":
        return {str(k): float(p) for k, p in enumerate(rec["judge_per_class"])}
    return {c: sum(r < 5 for r in v["ranks"]) / len(v["ranks"]) for c, v in rec["classes"].items()}


def paired_difference(a: dict, b: dict, n_boot: int = 4000, seed: int = 0) -> dict | None:
    """Rate of record a minus that of b over the classes both sampled, with a percentile 95% interval from
    resampling those classes (paired: a class's difficulty cancels)."""
    ra, rb = class_rates(a), class_rates(b)
    common = sorted(set(ra) & set(rb), key=int)
    if len(common) < 5:
        return None
    diffs = [ra[c] - rb[c] for c in common]
    rng = random.Random(seed)
    boots = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(n_boot))
    return {"classes": len(common), "diff": sum(diffs) / len(diffs),
            "ci": [boots[int(0.025 * n_boot)], boots[int(0.975 * n_boot) - 1]]}


# the benchmark setting each shipped digit preset is (zoo_configs/hmc/mnist_legible.yaml, fashion_mnist_legible.yaml)
DIGIT_PRESET_SETTING = {"mnist": "pca_t06_pt4_1k", "fashion-mnist": "pca_t08_3k"}
IMAGENET_PRESET_SETTING = "pink1f_s03_wide600_t001"  # what zoo_configs/hmc/imagenet_legible.yaml runs


def digit_paired_lines(dataset: str, rows: list[dict]) -> list[str]:
    """Each setting minus the shipped preset's, judge agreement paired by class."""
    base = next((r for r in rows if r["setting"]["name"] == DIGIT_PRESET_SETTING[dataset]), None)
    if base is None or len(rows) < 2:
        return []
    out = [f"{dataset}: each setting minus `{base['setting']['name']}` (the shipped preset's setting), judge agreement "
           "points over the 10 classes (95% interval from resampling classes; each class's rate is over its "
           "chains):", "", "| setting | chains per class | difference (95% interval) |", "|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["judge_agreement"]["p"]):
        d = paired_difference(r, base) if r is not base else None
        if d:
            out.append(f"| `{r['setting']['name']}` | {r['setting']['chains']} | {100 * d['diff']:+.1f} "
                       f"({100 * d['ci'][0]:+.1f} .. {100 * d['ci'][1]:+.1f}) |")
    return out + [""]


def setting_groups(rows: list[dict]) -> list[list[dict]]:
    """ImageNet records grouped by model and setting (the same setting run on several class sets), each group in
    CLASS_SETS order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        key = (r["model"], json.dumps(setting_dict(r["setting"]), sort_keys=True, default=str))
        groups.setdefault(key, []).append(r)
    return sorted((sorted(g, key=set_order) for g in groups.values()),
                  key=lambda g: (g[0]["model"], g[0]["setting"]["name"]))


def _merged(recs: list[dict]) -> dict:
    """One setting's records as one: its classes over every class set, and the set each class came from."""
    return {"classes": {c: v for r in recs for c, v in r["classes"].items()},
            "set_of": {c: r.get("class_set", "tuning") for r in recs for c in r["classes"]}}


def pooled_lines(rows: list[dict]) -> list[str]:
    """Settings run on more than one class set: top-5 over every class set of the setting together, and over its
    held-out sets together (the rate no class chose) where it also ran the tuning set."""
    out = []
    for same in setting_groups(rows):
        if len(same) < 2:
            continue
        held = [h for h in same if h.get("class_set", "tuning") != "tuning"]
        for recs in (same, held) if 2 <= len(held) < len(same) else (same,):
            ranks, groups = [], []
            for c, v in _merged(recs)["classes"].items():
                ranks += v["ranks"]
                groups += [int(c)] * len(v["ranks"])
            pooled = proportion(torch.tensor(ranks) < 5, torch.tensor(groups))
            words = [CLASS_SET_WORDS[h.get("class_set", "tuning")] or "tuning" for h in recs]
            sets = ", ".join(words[:-1]) + " and " + words[-1]
            out.append(f"- {same[0]['model']}, `{same[0]['setting']['name']}` over the {sets} classes together "
                       f"({len(set(groups))} classes): top-5 {_ci(pooled)}, "
                       f"{_decide(*_bounds(pooled), IMAGENET_TOP5_TARGET)}")
    return out + [""] if out else []


def pooled_paired_lines(rows: list[dict]) -> list[str]:
    """The shipped preset's setting minus each other setting over every class both ran, across class sets (the
    per-set tables below split the same comparison), and minus its own warm starts (what the HMC iterations add or
    take away); only where the classes compared span two class sets or more."""
    out, groups = [], setting_groups(rows)
    for model in sorted({r["model"] for r in rows}):
        mine = [_merged(g) | {"name": g[0]["setting"]["name"]} for g in groups if g[0]["model"] == model]
        base = max((m for m in mine if m["name"] == IMAGENET_PRESET_SETTING), key=lambda m: len(m["classes"]),
                   default=None)
        if base is None:
            continue
        warm = {"name": "its own warm starts (before any HMC iteration)", "set_of": base["set_of"],
                "classes": {c: {"ranks": v["warm_ranks"]} for c, v in base["classes"].items() if "warm_ranks" in v}}
        table = []
        for other in sorted((m for m in mine if m is not base), key=lambda m: m["name"]) + [warm]:
            common = set(base["classes"]) & set(other["classes"])
            if len({base["set_of"][c] for c in common}) < 2:
                continue
            d = paired_difference(base, other)
            if d:
                name = other["name"] if other is warm else f"`{other['name']}`"
                table.append(f"| {name} | {d['classes']} | {100 * d['diff']:+.1f} "
                             f"({100 * d['ci'][0]:+.1f} .. {100 * d['ci'][1]:+.1f}) |")
        if table:
            out += [f"{model}, every class set together: `{IMAGENET_PRESET_SETTING}` (the shipped preset's setting) "
                    "minus each other setting, top-5 points over the classes both sampled (95% interval from "
                    "resampling classes):", "", "| other setting | classes | difference (95% interval) |",
                    "|---|---|---|", *table, ""]
    return out


def paired_lines(rows: list[dict]) -> list[str]:
    """Each model's best sampler setting (HMC; by top-5 among those with the most classes) against each other
    setting, the optimisation baselines included, paired by class."""
    out = []
    for model, class_set in sorted({(r["model"], r.get("class_set", "tuning")) for r in rows},
                                   key=lambda k: (k[0], list(CLASS_SETS).index(k[1]))):
        mine = sorted((r for r in rows if r["model"] == model and r.get("class_set", "tuning") == class_set),
                      key=lambda r: (-r["summary"]["top5"]["p"], r["setting"]["name"] == "paper"))
        hmc = [r for r in mine if r["setting"].get("method", "hmc") == "hmc"]
        if len(mine) < 2 or not hmc:
            continue
        most = max(len(r["classes"]) for r in hmc)
        best = next(r for r in hmc if len(r["classes"]) == most)
        mine = [best] + [r for r in mine if r is not best]
        where = f" ({CLASS_SET_WORDS[class_set]} classes)" if CLASS_SET_WORDS[class_set] else ""
        out += [f"{model}{where}: `{best['setting']['name']}` minus each other setting, top-5 points over the "
                "classes both sampled (95% interval from resampling classes; each class's rate is over its "
                "chains):", "",
                "| other setting | classes | difference (95% interval) |", "|---|---|---|"]
        for r in mine[1:]:
            d = paired_difference(best, r)
            if d:
                out.append(f"| `{r['setting']['name']}` | {d['classes']} | {100 * d['diff']:+.1f} "
                           f"({100 * d['ci'][0]:+.1f} .. {100 * d['ci'][1]:+.1f}) |")
        out.append("")
    return out


MD_LINK = re.compile(r"\]\(([^)\s]+)\)")  # a markdown link's target
NOT_RELATIVE = re.compile(r"[a-z][a-z0-9+.-]*:|[#/]")  # a URL, an anchor or an absolute path


def rebase_links(markdown: str, folder: str) -> str:
    """Markdown written in ``folder`` with its relative links rewritten for the folder above it (NOTE.md's links,
    written beside the records, as they must read once the report copies NOTE.md into docs/results/legibility.md)."""
    def rebase(m: re.Match) -> str:
        target = m.group(1)
        return m.group(0) if NOT_RELATIVE.match(target) else f"]({posixpath.normpath(posixpath.join(folder, target))})"
    return MD_LINK.sub(rebase, markdown)


def cmd_report(args: argparse.Namespace) -> None:
    """docs/results/legibility.md from every JSON record in docs/results/legibility/ (and NOTE.md beside them)."""
    recs = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("*.json"))]
    for r in recs:
        if r.get("setting"):
            r["label"] = current_label(r["setting"])
    lines = ["# Legibility of generative-visualization samples", "",
             "Generated by `python benchmarks/legibility.py report` from the JSON records in "
             "[legibility/](legibility/) (one per dataset or model and setting; each holds its command, device, "
             "torch version and date). Pictures are judged as an image file holds them (x * std + mean clipped "
             "to [0, 1]) by a network that never saw the sampled one. Intervals are 95%: Wilson for proportions "
             "(samples treated as independent) and a bootstrap over classes (classes independent); tables show "
             "the wider of the two.", ""]
    for dataset in ("mnist", "fashion-mnist"):
        rows = [r for r in recs if r.get("benchmark") == "digits" and r["dataset"] == dataset]
        if not rows:
            continue
        r0 = rows[0]
        acc = r0["judge"].get("accuracy") or {}
        pair = (repo_path(r0["sampled"]["checkpoint"]), repo_path(r0["judge"]["checkpoint"]))
        real = next((r for r in recs if r.get("benchmark") == "real_agreement" and r["dataset"] == dataset
                     and (repo_path(r["lenet"]), repo_path(r["judge"])) == pair), None)  # the same two networks
        ceiling = "" if real is None else (
            f" On the {real['images']:,} real test images the judge names the LeNet's class {_ci(real['agreement'])}"
            " (`legibility.py real-agreement`): the agreement samples as typical as real images would read; per "
            "class " + ", ".join(f"{k} {_pct0(v)}" for k, v in enumerate(real["per_class"])) + ".")
        lines += [f"## {dataset}: class nodes logits:0-9 of a LeNet", "",
                  f"Sampled: `{r0['sampled']['model']}` (test error {_num(r0['sampled'].get('test_error'), '.4f')}). "
                  f"Judge: `{r0['judge']['model']}` trained here with reference noise added (clean accuracy "
                  f"{_num(acc.get('clean'), '.4f')}, with noise of 0.5 / 1 x the data's std "
                  f"{_num(acc.get('noise_0.5'), '.4f')} / {_num(acc.get('noise_1'), '.4f')}). Control: the judge on "
                  "the setting's reference noise nudged towards each class by the LeNet's gradient (L2 radius "
                  f"{100 * r0['control']['l2_budget']:g}% of the noise's, {r0['control']['per_class']} per class). "
                  "Diversity: mean within-class pairwise distance of the samples over that of real test images of "
                  "the class. R-hat: rank-normalised split R-hat of f_y and of random projections of x after the "
                  "warm-up, worst node (nodes <= 1.05 of 10). Targets: agreement >= 97% and >= 50 points over the "
                  "control, each decided by the wider of the Wilson and the class-bootstrap 95% intervals (met, "
                  "not met, or undecided at this n); diversity >= 0.5; R-hat <= 1.05. Rows are sorted by agreement. "
                  "A running mean (display mean) is an average, not a sample: its diversity is not comparable."
                  + ceiling, "",
                  "| setting | judge agreement (95% interval), k/n | control | diversity | R-hat max (nodes ok) "
                  "| accept | LeNet agrees | wall s | verdict |", "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: -r["judge_agreement"]["p"]):
            conv = r.get("convergence") or {}
            nodes = f" ({conv['nodes_rhat_le_1.05']}/{conv['nodes']})" if "nodes" in conv else ""
            lines.append(f"| `{r['setting']['name']}`: {r['label']} | {_ci(r['judge_agreement'])} | "
                         f"{100 * r['control']['judge']['p']:.1f}% | {r['diversity']:.2f} | "
                         f"{_num(conv.get('rhat_max'))}{nodes} | {_num(r['accept'], '.2f')} | "
                         f"{100 * r['lenet_agreement']:.0f}% | {r['seconds']:.0f} | {_digit_verdict(r)} |")
        lines.append("")
        lines += digit_paired_lines(dataset, rows)
        for r in sorted(rows, key=lambda r: -r["judge_agreement"]["p"]):
            if r.get("grid") and r["setting"]["name"] in args.show:
                lines += [f"`{r['setting']['name']}` ({r['label']}), rows 0-9, one column per chain:", "",
                          f"![{dataset} {r['setting']['name']}](../images/{Path(r['grid']).name})", ""]
    rows = [r for r in recs if r.get("benchmark") == "imagenet" and r.get("classes")]
    for r in rows:  # recomputed: records grow class by class, the stored summary is the last invocation's
        r["classes"] = {c: r["classes"][c] for c in sorted(r["classes"], key=int)}  # grids in class-index order
        summarize_imagenet(r, [int(c) for c in r["classes"]])
        cache = REPO / "runs" / "legibility" / "imagenet"
        if cache.is_dir():  # the samples of this machine's runs: redraw the grid
            imagenet_grid(r["model"], r["setting"]["name"], [int(c) for c in r["classes"]], cache,
                          r["setting"]["chains"], record_key(r["setting"]["name"], r.get("class_set")))
    if rows:
        lines += ["## ImageNet: class nodes judged by the other network", "",
                  f"Top-1 / top-5: the judge's rank of the sampled class; target top-5 >= "
                  f"{100 * IMAGENET_TOP5_TARGET:.0f}%, decided by the wider of the Wilson and class-bootstrap "
                  "intervals. Own top-1: the sampled network's. Seconds per class: all its chains, median wall time "
                  "on this CPU.", "",
                  "Warm start: top-5 of the chains' starting states, after the warm start and before any HMC "
                  "iteration (what the sampler adds or takes away).", "",
                  "| sampled -> judge | setting | classes | top-1 | top-5 (95% interval), k/n | warm start | own top-1 "
                  "| R-hat max (nodes ok) | s per class | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["model"], set_order(r), -r["summary"]["top5"]["p"])):
            sm = r["summary"]
            verdict = _decide(*_bounds(sm["top5"]), IMAGENET_TOP5_TARGET)
            n_set = len(CLASS_SETS[r.get("class_set", "tuning")])
            if sm["classes"] < n_set:  # the classes run, not a draw from the set: say so
                verdict += f" on {sm['classes']} of {n_set} classes"
            nodes = f" ({sm['nodes_rhat_le_1.05']}/{sm['classes']})" if "nodes_rhat_le_1.05" in sm else ""
            held = f" {CLASS_SET_WORDS[r.get('class_set', 'tuning')]}".rstrip()
            lines.append(f"| {r['model']} -> {r['judge']} | `{r['setting']['name']}`: {r['label']} | "
                         f"{sm['classes']}{held} "
                         f"| {100 * sm['top1']['p']:.1f}% | {_ci(sm['top5'])} | "
                         f"{_pct(sm.get('warm_top5'))} | {100 * sm['own_top1']:.0f}% | "
                         f"{_num(sm.get('rhat_max'))}{nodes} | {sm['seconds_per_class_median']:.0f} | "
                         f"{verdict} |")
        lines.append("")
        lines += pooled_lines(rows)
        lines += pooled_paired_lines(rows)
        lines += paired_lines(rows)
        for r in sorted(rows, key=lambda r: (r["model"], set_order(r), -r["summary"]["top5"]["p"])):
            key = record_key(r["setting"]["name"], r.get("class_set"))
            img = IMAGES / f"legibility_imagenet_{r['model']}_{key}.png"
            if img.is_file() and r["setting"]["name"] in args.show:
                order = ", ".join(class_name(int(c)) for c in r["classes"])
                per = f"{r['setting']['chains']} chains of a class side by side, " if r["setting"]["chains"] > 1 else ""
                held = f"{CLASS_SET_WORDS[r.get('class_set', 'tuning')]} ".lstrip()
                lines += [f"{r['model']}, `{r['setting']['name']}` ({r['label']}); {per}{held}classes in reading "
                          f"order: {order}:", "",
                          f"![{r['model']} {key}](../images/{img.name})", ""]
    note = RESULTS / "NOTE.md"
    if note.is_file():
        lines += [rebase_links(note.read_text().rstrip(), RESULTS.name), ""]
    out = RESULTS.parent / "legibility.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit-references", help="fit zoo_configs/references/*.yaml")
    f.add_argument("--data-dir", default=None)
    f.add_argument("--fit-images", type=int, default=20000)
    f.add_argument("--pca-k", type=int, default=64)
    j = sub.add_parser("train-judge", help="train a noise-robust judge for digits")
    j.add_argument("--dataset", choices=list(DATASET_FILES), default="mnist")
    j.add_argument("--data-dir", default=None)
    j.add_argument("--epochs", type=int, default=4)
    j.add_argument("--batch", type=int, default=128)
    j.add_argument("--lr", type=float, default=3e-3)
    j.add_argument("--noise-prob", type=float, default=0.5)
    j.add_argument("--noise-max", type=float, default=1.5)
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--threads", type=int, default=1)
    j.add_argument("--out", default=None)
    d = sub.add_parser("digits", help="LeNet class samples judged by the noise-robust judge")
    d.add_argument("--dataset", choices=list(DATASET_FILES), default="mnist")
    d.add_argument("--lenet", default=None, help="default runs/lenet_dg25 (mnist), runs/fashion_lenet/dg-s0")
    d.add_argument("--judge", default=None)
    d.add_argument("--settings", nargs="+", default=list(DIGIT_SETTINGS), choices=list(DIGIT_SETTINGS))
    d.add_argument("--chains", type=int, default=4)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--control-per-class", type=int, default=50)
    d.add_argument("--control-budget", type=float, default=0.03, help="L2 radius / the noise's L2 deviation")
    d.add_argument("--real-per-class", type=int, default=200)
    d.add_argument("--data-dir", default=None)
    d.add_argument("--threads", type=int, default=2)
    a = sub.add_parser("real-agreement", help="the judge against the LeNet on real test images (a ceiling)")
    a.add_argument("--dataset", choices=list(DATASET_FILES), default="mnist")
    a.add_argument("--lenet", default=None, help="as for digits")
    a.add_argument("--judge", default=None)
    a.add_argument("--data-dir", default=None)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--out", default=None, help="default docs/results/legibility/real_agreement_<dataset>.json")
    m = sub.add_parser("imagenet", help="ImageNet class samples judged by the other network")
    m.add_argument("--model", choices=list(IMAGENET_MODELS), default="squeezenet1_1")
    m.add_argument("--settings", nargs="+", default=list(IMAGENET_SETTINGS), choices=list(IMAGENET_SETTINGS))
    m.add_argument("--classes", type=int, nargs="+", default=None, help="default: every class of --class-set")
    m.add_argument("--class-set", choices=list(CLASS_SETS), default="tuning",
                   help="tuning: the 20 classes settings were chosen on; heldout: 20 drawn at random from the rest "
                        "(their own records, *_heldout.json); heldout2, heldout3: 20 more each, outside the sets "
                        "before (*_heldout2.json, *_heldout3.json); heldout2 decided no setting, but an exploratory "
                        "setting was read on 8 of its classes")
    m.add_argument("--chains", type=int, default=4)
    m.add_argument("--paper-iters", type=int, default=4)
    m.add_argument("--paper-chains", type=int, default=2)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--fresh", action="store_true", help="ignore classes already recorded")
    m.add_argument("--weights-dir", default=str(REPO.parent / "shared" / "weights"))
    m.add_argument("--threads", type=int, default=2)
    r = sub.add_parser("report", help="render docs/results/legibility.md from the records")
    shown = [IMAGENET_PRESET_SETTING, "paper", "pca_t06_pt4_1k", "pca_t07_pt3_1k", "pca_t1_long", "pca_t1",
             "pca_t1_mean", "pink_s03_wide600_t001", "pink_s03_aug600_t001", "pink_s03_aug_t001",
             "pink_clip_jitter_t01", "pink1f_s03_wide600_t0002", "lucent", "maco"]
    r.add_argument("--show", nargs="+", default=shown,
                   help="settings whose pictures the report shows")
    args = p.parse_args(argv)
    if args.cmd in ("digits", "real-agreement") and args.lenet is None:
        args.lenet = str(REPO / "runs" / ("lenet_dg25" if args.dataset == "mnist" else "fashion_lenet/dg-s0"))
    {"fit-references": cmd_fit_references, "train-judge": cmd_train_judge, "digits": cmd_digits,
     "real-agreement": cmd_real_agreement, "imagenet": cmd_imagenet, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
