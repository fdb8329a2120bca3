"""HMC samples of ImageNet classes and a mid-level conv channel, from the pretrained SqueezeNet 1.1 and MobileNetV2
weights in ../shared/weights (issue: generative visualization, part 4).

Writes docs/images/imagenet_<model>_<what>.png and docs/results/imagenet_samples.{json,md}. On a CPU the runs are
shortened (--iters); the paper's AlexNet settings are 100 iterations for conv nodes and 500 for fc8.

    python benchmarks/imagenet_samples.py --weights-dir ../shared/weights --iters 40 --chains 4
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

from gencnn_plugin import create_model  # noqa: E402
from gencnn_plugin.hmc import HMCConfig  # noqa: E402
from gencnn_plugin.visualize import load_preset, sample_node, save_grid  # noqa: E402

MODELS = {
    # spec, weights file, constructor kwargs, input mean/std (see ../shared/README.md), mid-level conv layer
    "squeezenet1_1": ("tv:squeezenet1_1", "squeezenet1_1_imagenet.safetensors", {}, None, "features.7"),
    "mobilenetv2_100": ("timm:mobilenetv2_100", "mobilenetv2_100_imagenet.safetensors", {"pad_type": "same"},
                        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), "blocks.3"),
}
CLASSES = ["espresso", "tiger cat", "hourglass"]


def load(name: str, weights_dir: Path):
    spec, file, kwargs, norm, mid = MODELS[name]
    mean, std = norm if norm else (None, None)
    model, info = create_model(spec, weights=weights_dir / file, mean=mean, std=std, **kwargs)
    return model.eval(), info, mid


def run_one(model, info, nodes: list[str], cfg: HMCConfig, path: Path) -> dict:
    t0 = time.perf_counter()
    out = sample_node(model, info, nodes, cfg)
    seconds = time.perf_counter() - t0
    save_grid(out.result.x, info, path, nrow=cfg.chains)
    s = out.result.summary
    with torch.no_grad():
        top = model(out.result.x).argmax(1).tolist()
    return {"nodes": out.nodes, "grid": str(path.relative_to(REPO)), "accept_rate": s["accept_rate"],
            "final_step_size": float(out.result.trace["step_size"][-1].mean()), "final_score_mean":
            s["final_score_mean"], "model_top1_of_samples": [info.class_names[i] for i in top], "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights-dir", default=str(REPO.parent / "shared" / "weights"))
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--adapt-steps", type=int, default=15, help="dual averaging warm-up (the paper's step accepts 0%)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "docs" / "results" / "imagenet_samples.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    records = []
    for name in args.models:
        model, info, mid = load(name, Path(args.weights_dir))
        for what, preset, nodes in (("classes", "alexnet_fc8", CLASSES), ("conv", "alexnet_conv",
                                                                          [f"{mid}:{c}" for c in (3, 10, 17)])):
            cfg = load_preset(preset, iters=args.iters, chains=args.chains, adapt_steps=args.adapt_steps)
            rec = run_one(model, info, nodes, cfg, REPO / "docs" / "images" / f"imagenet_{name}_{what}.png")
            rec.update(model=info.model, preset=preset, config=vars(cfg))
            records.append(rec)
            print(f"{name} {what}: acceptance {rec['accept_rate']:.2f}, step {rec['final_step_size']:.3g}, "
                  f"{rec['seconds']:.0f} s -> {rec['grid']}", flush=True)
    meta = {"device": f"cpu ({platform.machine()}, {args.threads} threads)", "torch": torch.__version__,
            "date": date.today().isoformat(), "command": "python " + " ".join(sys.argv)}
    out = Path(args.out)
    out.write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")
    lines = ["# HMC samples of ImageNet networks", "",
             "Pretrained SqueezeNet 1.1 (torchvision) and MobileNetV2 (timm, TF weights) from ../shared/weights. "
             "Presets: the paper's AlexNet settings (step 1, 25 leapfrog steps, mass 0.3) with the iterations "
             f"shortened to {args.iters} for this CPU and dual-averaging step-size adaptation in the first "
             f"{args.adapt_steps} iterations (the paper's step accepts no proposal in 150,528 dimensions). "
             "Each row is one node, each column one chain; images rescaled to their own range.", "",
             f"{meta['device']}, torch {meta['torch']}, {meta['date']}; command: `{meta['command']}`", ""]
    for r in records:
        lines += [f"## {r['model']}: {', '.join(r['nodes'])}", "",
                  f"acceptance {r['accept_rate']:.2f}, adapted step {r['final_step_size']:.3g}, "
                  f"{r['seconds']:.0f} s; the model's top-1 on the samples: {', '.join(r['model_top1_of_samples'])}",
                  "", f"![samples](../{r['grid'].removeprefix('docs/')})", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
