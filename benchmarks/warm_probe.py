"""Warm-start-only probe of MobileNetV2 class nodes (docs/results/legibility/NOTE.md, the reverse direction): 300
Adam steps with random transforms (visualize.warm_start, warm_augment) on 4 classes, 1 image each, at three (T,
sigma) pairs of the pink reference; SqueezeNet judges. Prints one line per pair and writes the images as one grid.

    GENCNN_DATA=../shared/data python benchmarks/warm_probe.py > docs/results/legibility/warm_probe_mobilenetv2.txt

Run on 2026-11-23 on the 2-core CPU (1 thread, beside two benchmark processes) as /tmp/pilot/mnv2_diag.py, this
file's body with the output paths below.
"""

import sys
import time
from pathlib import Path

import torch
import torchvision.utils as vu

sys.path.insert(0, str(Path(__file__).resolve().parent))
import legibility as L  # noqa: E402

from gencnn_plugin.hmc import HMCConfig  # noqa: E402
from gencnn_plugin.reference import initial_z, make_reference  # noqa: E402
from gencnn_plugin.visualize import warm_start  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    w = L.REPO.parent / "shared" / "weights"
    m, info = L.load_imagenet("mobilenetv2_100", w)
    j, jinfo = L.load_imagenet("squeezenet1_1", w)
    classes = [1, 130, 417, 949]  # goldfish, flamingo, balloon, strawberry
    rows = []
    print("T sigma | SqueezeNet ranks | MobileNetV2 ranks | seconds | pixel std", flush=True)
    for T, s in [(0.01, 0.3), (0.001, 0.3), (0.01, 1.0)]:
        st = L.Setting("x", reference="pink", sigma=s, temperature=T, clip=True)
        score = L.build_score(m, info, [f"logits:{c}" for c in classes], st)
        ref = make_reference("pink", info, sigma=s)
        z0 = initial_z(ref, len(classes), 0)
        t0 = time.perf_counter()
        z = warm_start(score, ref, z0, HMCConfig(temperature=T, warm_start=300, warm_augment="standard", seed=0))
        with torch.no_grad():
            x = ref.to_x(z)
        pix = L.to_pixels(x, info)
        ranks = L.judge_ranks(j, jinfo, pix, torch.tensor(classes)).tolist()
        own = L.judge_ranks(m, info, pix, torch.tensor(classes)).tolist()
        print(T, s, ranks, own, f"{time.perf_counter() - t0:.0f}s", "pix std", float(pix.std()), flush=True)
        rows.append(pix)
    vu.save_image(vu.make_grid(torch.cat(rows), nrow=4), str(L.IMAGES / "warm_probe_mobilenetv2.png"))


if __name__ == "__main__":
    main()
