"""Quality of HMC samples from a trained LeNet (issue: generative visualization, part 4).

For each digit node logits:0..9, draw chains with an HMC preset, then measure
- recognisability: the fraction of samples that an independently trained classifier of another architecture
  (the judge) labels as the sampled digit, and the fraction the LeNet itself assigns to it;
- diversity: the mean pairwise L2 distance between samples of one digit (pixels in [0, 1]) beside the same number
  for real MNIST test images of that digit;
and write a 10 x 8 grid (docs/images/), grids of conv1 and conv2 channels, and docs/results/lenet_samples.{json,md}.

    python benchmarks/lenet_samples.py --lenet runs/lenet_dg25 --judge runs/judge_resnet18 --preset lenet_tuned
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gencnn_plugin import load_checkpoint  # noqa: E402
from gencnn_plugin.data import load_mnist, normalizer  # noqa: E402
from gencnn_plugin.visualize import display_pixels, load_preset, sample_node, save_grid  # noqa: E402


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean L2 distance over all pairs of images (N, ...) in pixel space."""
    flat = images.flatten(1).double()
    d = torch.cdist(flat, flat)
    n = flat.shape[0]
    return float(d.sum() / (n * (n - 1)))


def judge_labels(judge, judge_info, pixels: torch.Tensor) -> torch.Tensor:
    """The judge's labels for images given as pixels in [0, 1] (its own normalisation applied)."""
    norm = normalizer(judge_info.mean, judge_info.std, pixels.device)
    with torch.no_grad():
        return judge(norm(pixels)).argmax(1)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    lenet, info, meta = load_checkpoint(args.lenet)
    judge, judge_info, judge_meta = load_checkpoint(args.judge)
    assert judge_info.model != info.model, "the judge must be another architecture"
    cfg = load_preset(args.preset, chains=args.chains, seed=args.seed, sigma=args.sigma, step_size=args.step_size,
                      iters=args.iters)
    t0 = time.perf_counter()
    out = sample_node(lenet, info, [f"logits:{k}" for k in range(10)], cfg)
    seconds = time.perf_counter() - t0
    x = out.result.x
    pixels = display_pixels(x, info, "range")  # what the grid shows
    targets = torch.arange(10).repeat_interleave(cfg.chains)
    judged = judge_labels(judge, judge_info, pixels)
    judged_clip = judge_labels(judge, judge_info, display_pixels(x, info, "clip"))
    # the judge never saw N(0, sigma^2) pixel noise: also show it a 3x3-blurred view, clipped (strokes kept)
    judged_blur = judge_labels(judge, judge_info, display_pixels(torch.nn.functional.avg_pool2d(x, 3, 1, 1), info,
                                                                 "clip"))
    with torch.no_grad():
        own = lenet(x).argmax(1)
    test = load_mnist(args.data_dir, train=False)
    real = test.images.float() / 255
    per_class = []
    for k in range(10):
        sel = targets == k
        real_k = real[test.labels == k][: cfg.chains * 4]
        per_class.append({
            "digit": k, "judge_agrees": float((judged[sel] == k).float().mean()),
            "lenet_agrees": float((own[sel] == k).float().mean()),
            "diversity": mean_pairwise_distance(pixels[sel]), "real_diversity": mean_pairwise_distance(real_k),
            "accept_rate": float(out.result.accept_rate[sel].mean()),
        })
    tag = args.tag or args.preset
    images = REPO / "docs" / "images"
    grid_idx = torch.cat([torch.arange(k * cfg.chains, k * cfg.chains + min(8, cfg.chains)) for k in range(10)])
    save_grid(x[grid_idx], info, images / f"lenet_digits_{tag}.png", nrow=min(8, cfg.chains), min_size=56)
    channel_grids = {}
    for layer, channels in (("conv1", range(0, 20, 2)), ("conv2", range(0, 50, 5))):
        ccfg = load_preset(args.preset, chains=4, iters=args.conv_iters, seed=args.seed, sigma=args.sigma,
                           step_size=args.step_size)
        cres = sample_node(lenet, info, [f"{layer}:{c}" for c in channels], ccfg)
        path = images / f"lenet_{layer}_{tag}.png"
        save_grid(cres.result.x, info, path, nrow=4 * 5, min_size=56)
        channel_grids[layer] = {"path": str(path.relative_to(REPO)), "channels": list(channels),
                                "accept_rate": cres.result.summary["accept_rate"]}
    s = out.result.summary
    return {
        "preset": args.preset, "tag": tag, "config": vars(cfg), "lenet": str(args.lenet),
        "lenet_test_error": meta.get("test_error"), "judge": judge_info.model,
        "judge_test_error": judge_meta.get("test_error"), "chains_per_digit": cfg.chains,
        "judge_agrees": float((judged == targets).float().mean()),
        "judge_agrees_clipped": float((judged_clip == targets).float().mean()),
        "judge_agrees_blurred": float((judged_blur == targets).float().mean()),
        "lenet_agrees": float((own == targets).float().mean()),
        "diversity": sum(c["diversity"] for c in per_class) / 10,
        "real_diversity": sum(c["real_diversity"] for c in per_class) / 10,
        "accept_rate": s["accept_rate"], "mean_abs_energy_error": s["mean_abs_energy_error"],
        "rhat_score": s["rhat_score"], "seconds": seconds, "per_class": per_class,
        "grid": str((images / f"lenet_digits_{tag}.png").relative_to(REPO)), "channel_grids": channel_grids,
        "device": f"cpu ({platform.machine()}, {args.threads} threads)", "torch": torch.__version__,
        "date": date.today().isoformat(), "command": "python " + " ".join(sys.argv),
    }


def render(records: list[dict]) -> str:
    lines = [
        "# HMC samples of a trained LeNet: do they look like the digit?",
        "",
        "Judge = an independently trained classifier of another architecture; agreement = fraction of samples it",
        "labels as the sampled digit, shown three ways: as displayed (each image rescaled to its own range), as",
        "clipped pixels, and 3x3-blurred then clipped. Chance is 10%. Diversity = mean pairwise L2 distance of",
        "displayed samples of one digit (in [0, 1]), beside real MNIST test digits.",
        "Written by `benchmarks/lenet_samples.py`.",
        "",
        "| run | eps, L, m, sigma, iters | chains/digit | acceptance | judge: range / clipped / blurred | LeNet agrees "
        "| diversity (real) | seconds |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in records:
        c = r["config"]
        lines.append(
            f"| {r['tag']} | {c['step_size']}, {c['leapfrog_steps']}, {c['mass']}, {c['sigma']}, {c['iters']} | "
            f"{r['chains_per_digit']} | {r['accept_rate']:.3f} | {100 * r['judge_agrees']:.0f}% / "
            f"{100 * r['judge_agrees_clipped']:.0f}% / {100 * r['judge_agrees_blurred']:.0f}% | "
            f"{100 * r['lenet_agrees']:.1f}% | {r['diversity']:.2f} ({r['real_diversity']:.2f}) | {r['seconds']:.0f} |")
    for r in records:
        lines += ["", f"## {r['tag']} (preset {r['preset']})", "",
                  f"![digits]({'../' + r['grid'].removeprefix('docs/')})", "",
                  f"LeNet {r['lenet']} (test error {100 * (r['lenet_test_error'] or 0):.2f}%), judge {r['judge']} "
                  f"(test error {100 * (r['judge_test_error'] or 0):.2f}%); {r['device']}, torch {r['torch']}, "
                  f"{r['date']}.", "", f"Command: `{r['command']}`", "",
                  "| digit | judge agrees | LeNet agrees | diversity | real | acceptance |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {c['digit']} | {100 * c['judge_agrees']:.0f}% | {100 * c['lenet_agrees']:.0f}% | "
                  f"{c['diversity']:.2f} | {c['real_diversity']:.2f} | {c['accept_rate']:.2f} |"
                  for c in r["per_class"]]
        for layer, g in r["channel_grids"].items():
            lines += ["", f"{layer} channels {g['channels']} (4 chains each, acceptance {g['accept_rate']:.2f}):", "",
                      f"![{layer}]({'../' + g['path'].removeprefix('docs/')})"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lenet", required=True, help="trained LeNet checkpoint or run folder")
    p.add_argument("--judge", required=True, help="classifier of another architecture trained on MNIST")
    p.add_argument("--preset", default="lenet")
    p.add_argument("--tag", help="name for the output images (default: the preset)")
    p.add_argument("--chains", type=int, default=32, help="chains per digit")
    p.add_argument("--sigma", type=float, help="reference std (default: the preset's)")
    p.add_argument("--step-size", type=float, help="leapfrog step (default: the preset's)")
    p.add_argument("--iters", type=int, help="HMC iterations (default: the preset's)")
    p.add_argument("--conv-iters", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(REPO / "docs" / "results" / "lenet_samples.json"))
    args = p.parse_args(argv)
    record = run(args)
    out = Path(args.out)
    records = [r for r in (json.loads(out.read_text()) if out.is_file() else []) if r["tag"] != record["tag"]]
    records.append(record)
    out.write_text(json.dumps(records, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(records))
    print(f"{record['preset']}: acceptance {record['accept_rate']:.3f}, "
          f"judge agrees {100 * record['judge_agrees']:.1f}%, LeNet agrees {100 * record['lenet_agrees']:.1f}%, "
          f"diversity {record['diversity']:.2f} (real {record['real_diversity']:.2f}), {record['seconds']:.0f} s")


if __name__ == "__main__":
    main()
