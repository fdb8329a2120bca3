"""Where do the digit samples' misreads come from? A probe of a few class nodes of the MNIST LeNet (runs/lenet_dg25)
at one temperature: ``mnist_legible``'s sampler (pca reference, eps 0.2 adapted, L 8, 3000 iterations, 100
adaptation) with 32 chains per node; the benchmark's judge (runs/judge_mnist) reads the last states. Prints the
judge's agreement and misreads per node and each node's split R-hat; writes the pixels, the judge's probabilities and
a grid under runs/digit_probe/.

    GENCNN_DATA=../shared/data python benchmarks/digit_probe.py --temperature 0.8 --seed 1 --digits 8 9
    GENCNN_DATA=../shared/data python benchmarks/digit_probe.py --temperature 0.6 --seed 2 --digits 7 9

Seeds other than the benchmark's 0: fresh chains, not the ones the recorded table judged.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import legibility as L  # noqa: E402

from gencnn_plugin.checkpoint import load_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--iters", type=int, default=3000)
    p.add_argument("--chains", type=int, default=32)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--digits", nargs="+", type=int, default=[8, 9])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--replicas", type=int, default=1, help="replica exchange: temperatures per chain (1: off)")
    p.add_argument("--hot-temperature", type=float, default=1.0, help="the hottest replica's T")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lenet, info, _ = load_checkpoint(L.REPO / "runs" / "lenet_dg25")
    judge, jinfo, _ = load_checkpoint(L.REPO / "runs" / "judge_mnist")
    st = replace(L.DIGIT_SETTINGS["pca_t08_3k"], temperature=args.temperature, iters=args.iters, chains=args.chains,
                 reference="pca:mnist_pca", replicas=args.replicas, hot_temperature=args.hot_temperature)
    out = L.draw(lenet, info, [f"logits:{k}" for k in args.digits], st, args.seed)
    pix = L.to_pixels(out["x"], info)
    targets = torch.tensor(args.digits).repeat_interleave(args.chains)
    with torch.no_grad():
        probs = judge(L.from_pixels(pix, jinfo)).softmax(1)
        own = lenet(L.from_pixels(pix, info)).argmax(1)  # the sampled LeNet on the same pixels
    read = probs.argmax(1)
    print(f"T {args.temperature} iters {args.iters} seed {args.seed}: {out['seconds']:.0f} s, accept "
          f"{out['accept']:.2f}" + (f", {args.replicas} replicas up to T {args.hot_temperature:g}, swap rates "
                                    f"{out['swap_rate']}" if args.replicas > 1 else ""))
    for k in args.digits:
        m = targets == k
        print(f"digit {k}: judge agrees {int((read[m] == k).sum())} / {args.chains}; misread as "
              f"{read[m][read[m] != k].tolist()}; the LeNet reads {int((own[m] == k).sum())} / {args.chains} as {k}")
    conv = L.convergence(out["scores"], out["projections"], args.chains, out["warmup"])
    print("split R-hat per node", conv.get("per_node_rhat"))
    folder = L.REPO / "runs" / "digit_probe"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"T{args.temperature:g}_seed{args.seed}_" + "".join(map(str, args.digits)) + \
        (f"_pt{args.replicas}" if args.replicas > 1 else "")
    torch.save({"pix": pix, "read": read, "probs": probs, "targets": targets}, folder / f"{stem}.pt")
    import torchvision.utils as vu

    vu.save_image(torch.nn.functional.interpolate(pix, scale_factor=3), str(folder / f"{stem}.png"), nrow=16)


if __name__ == "__main__":
    main()
