"""How strong should the warm start's random transforms be? A warm-start-only probe on the 20 tuning classes
(legibility.IMAGENET_CLASSES): SqueezeNet 1.1 class nodes, the ``imagenet_legible`` warm start (pink reference at
sigma 0.3, T 0.01, clipped pixels, 600 Adam steps, each scoring a random shift / zoom / rotation of the image) with
the transform ranges below; MobileNetV2 judges the warm start's end, as ``legibility.py imagenet`` records it
(``warm_ranks``). Same chains (seeds) as the benchmark, so ``base`` repeats the record of ``pink_s03_aug600_t001``.

Only the tuning classes are read here: a range chosen from this probe is then run in full on the held-out classes
(``legibility.py imagenet --class-set heldout``), which this probe never sees.

    GENCNN_DATA=../shared/data python benchmarks/augment_probe.py --variants lucent strong wide
    GENCNN_DATA=../shared/data python benchmarks/augment_probe.py --variants wider zoomout wide_x4  # eighth session
    GENCNN_DATA=../shared/data python benchmarks/augment_probe.py --variants wide_1f  # ninth session: 1/f reference
    GENCNN_DATA=../shared/data python benchmarks/augment_probe.py --model mobilenetv2_100 --variants wide wide_1f \
        --classes 1 130 417 949 22 207 555 779 920 967
    GENCNN_DATA=../shared/data python benchmarks/augment_probe.py --model mobilenetv2_100 \
        --variants wide_1f_t0002 wide_1f_t00005 --classes 1 130 417 949 22 207 555 779 920 967  # twelfth session
    GENCNN_DATA=../shared/data python benchmarks/augment_probe.py --variants wide_1f_lsm \
        --classes 1 130 417 949 22 207 555 779 920 967  # twelfth session: the bounded score log p(y|x)
    GENCNN_DATA=../shared/data python benchmarks/augment_probe.py --variants wide_1f_t0002 wide_1f_t005 \
        --classes 1 130 417 949 22 207 555 779 920 967  # thirteenth session: SqueezeNet colder and warmer
    # -> docs/results/legibility/pilots/augment_probe_<model>.json (one entry per variant and class;
    #    resumes; processes on other variants or classes may run side by side: each re-reads the file before
    #    adding its class)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import legibility as L  # noqa: E402

from gencnn_plugin.nodes import node_score  # noqa: E402
from gencnn_plugin.reference import WARM_TRANSFORMS, RandomAffineScore, initial_z, make_reference  # noqa: E402
from gencnn_plugin.visualize import warm_start, warm_view  # noqa: E402

# name: (largest shift as a fraction of the side, zoom range, largest rotation in degrees)
VARIANTS = {
    "base": WARM_TRANSFORMS["standard"],  # what imagenet_legible ran until this probe
    "lucent": (12 / 224, (0.90, 1.10), 10.0),  # lucent's standard_transforms: pad 12 + jitter 8 + 4, zoom 0.9-1.1
    "strong": (16 / 224, (0.80, 1.20), 15.0),
    "wide": WARM_TRANSFORMS["wide"],  # mostly zoom-out (smaller copies of the image): object-sized parts
    # the eighth session's step past wide: does more zoom-out (and shift) keep paying?
    "wider": (48 / 224, (0.45, 1.20), 25.0),
    "zoomout": (32 / 224, (0.40, 1.00), 20.0),  # only smaller copies: the whole object must fit in the frame
    "wide_x4": WARM_TRANSFORMS["wide"],  # the wide range, each step averaging 4 transforms of every image
    # ninth session: the wide range from a reference with the textbook 1/f amplitude (alpha 1, lucent's decay)
    # instead of the photos' steeper fitted slope (alpha 1.42): does fine detail help (MobileNetV2's washes)?
    "wide_1f": WARM_TRANSFORMS["wide"],
    # twelfth session: colder warm starts for MobileNetV2, whose logits span less (hypothesis: at T 0.01 the prior's
    # pull towards the mean image wins, U = -f / T + |z|^2 / 2 settling near z = grad f / T); and the bounded score
    "wide_1f_t0002": WARM_TRANSFORMS["wide"],
    "wide_1f_t00005": WARM_TRANSFORMS["wide"],
    "wide_1f_lsm": WARM_TRANSFORMS["wide"],
    # thirteenth session: is T a property of the network? SqueezeNet's warm starts colder and warmer than its T 0.01
    "wide_1f_t005": WARM_TRANSFORMS["wide"],
}
PILOTS = L.RESULTS / "pilots"  # not records: the report reads only the folder above
VIEWS = {"wide_x4": 4}  # transforms averaged per step (1 if not named): MACO's several crops per step, 4 x the work
OVERRIDES = {  # fields of the setting changed (legibility.Setting)
    "wide_1f": {"reference": "pink:imagenet_1f"},
    "wide_1f_t0002": {"reference": "pink:imagenet_1f", "temperature": 0.002},
    "wide_1f_t00005": {"reference": "pink:imagenet_1f", "temperature": 0.0005},
    "wide_1f_lsm": {"reference": "pink:imagenet_1f", "score": "log_softmax"},
    "wide_1f_t005": {"reference": "pink:imagenet_1f", "temperature": 0.05},
}


class ViewAveraged(torch.nn.Module):
    """The mean of ``k`` calls' worth of a random-transform score in one batch: each image scored under k fresh
    transforms, so a step's gradient is less the luck of one shift or zoom."""

    def __init__(self, fn: torch.nn.Module, k: int) -> None:
        super().__init__()
        self.fn, self.k = fn, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x.repeat(self.k, 1, 1, 1)).view(self.k, x.shape[0]).mean(0)


def warm(model: torch.nn.Module, info, c: int, shift: float, zoom: tuple[float, float], degrees: float, chains: int,
         seed: int, views: int = 1, overrides: dict | None = None) -> torch.Tensor:
    """The benchmark's warm start (legibility.draw) with other transform ranges (``views`` transforms averaged
    per step; ``overrides`` of the setting's fields); returns pixel images."""
    st = replace(L.IMAGENET_SETTINGS["pink_s03_aug600_t001"], chains=chains, **(overrides or {}))
    cfg = L.score_config(st, seed)
    ref = make_reference(st.reference, info, sigma=st.sigma)
    fn = RandomAffineScore(warm_view(node_score(model, info, [f"logits:{c}"]), info, cfg),
                           shift=shift, zoom=zoom, degrees=degrees, seed=seed)
    fn = ViewAveraged(fn, views) if views > 1 else fn
    # the library's warm start with this range wrapped around the score (and none added by the config)
    z = warm_start(fn, ref, initial_z(ref, chains, seed), replace(cfg, warm_augment="off"), lr=st.warm_lr)
    with torch.no_grad():
        return L.to_pixels(ref.to_x(z), info)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--classes", nargs="+", type=int, default=L.IMAGENET_CLASSES)
    p.add_argument("--model", choices=list(L.JUDGE_OF), default="squeezenet1_1", help="the sampled network; the "
                   "other one judges")
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights-dir", default=str(L.REPO.parent / "shared" / "weights"))
    args = p.parse_args(argv)
    if set(args.classes) - set(L.IMAGENET_CLASSES):
        sys.exit("the probe reads the tuning classes only")
    torch.set_num_threads(args.threads)
    model, info = L.load_imagenet(args.model, Path(args.weights_dir))
    judge, jinfo = L.load_imagenet(L.JUDGE_OF[args.model], Path(args.weights_dir))
    cache = L.REPO / "runs" / "legibility" / "augment_probe"
    cache.mkdir(parents=True, exist_ok=True)
    out = PILOTS / f"augment_probe_{args.model}.json"
    for name in args.variants:
        shift, zoom, degrees = VARIANTS[name]
        for c in args.classes:
            key = f"{name}/{c}"
            if key in read(out)["runs"]:
                continue
            t0 = time.perf_counter()
            pix = warm(model, info, c, shift, zoom, degrees, args.chains, args.seed + c, VIEWS.get(name, 1),
                       OVERRIDES.get(name))
            ranks = L.judge_ranks(judge, jinfo, pix, torch.full((args.chains,), c)).tolist()
            torch.save((pix * 255).round().to(torch.uint8), cache / f"{args.model}_{name}_{c}.pt")
            meta = L._meta(args, args.threads)  # the file's device and date are the last run's; each run keeps its own
            run = {"ranks": ranks, "seconds": time.perf_counter() - t0, "device": meta["device"]}
            L.update_json(out, partial(with_run, key=key, run=run, meta=meta))  # other processes add classes too
            print(f"{name} class {c}: judge ranks {ranks}, {run['seconds']:.0f} s", flush=True)
    summarize(read(out), args.variants)


def read(path: Path) -> dict:
    """The probe's record, or an empty one."""
    return json.loads(path.read_text()) if path.exists() else {"variants": {}, "runs": {}}


def with_run(rec: dict | None, key: str, run: dict, meta: dict) -> dict:
    """The record on disk with one class's run added, the variants' table and this command."""
    rec = rec or {"variants": {}, "runs": {}}
    rec["variants"] = {k: {"shift_px": round(v[0] * 224, 6), "zoom": list(v[1]), "degrees": v[2],
                           "views": VIEWS.get(k, 1), "setting": OVERRIDES.get(k, {})} for k, v in VARIANTS.items()}
    rec["runs"][key] = run
    return {**rec, **meta, "commands": L.merged_commands(rec, meta["command"])}


def summarize(rec: dict, variants: list[str], against: str = "wide") -> None:
    """Each variant's top-5 count, and its paired difference from ``against`` (imagenet_legible's range) over the
    classes both ran, with the benchmark's class-bootstrap interval."""
    def as_record(name: str) -> dict:
        """A variant's runs in the shape of a benchmark record (class -> ranks), for paired_difference."""
        return {"classes": {k.split("/")[1]: v for k, v in rec["runs"].items() if k.split("/")[0] == name}}

    for name in variants:
        hits = [r < 5 for v in as_record(name)["classes"].values() for r in v["ranks"]]
        d = L.paired_difference(as_record(name), as_record(against)) if name != against else None
        vs = "" if d is None else (f"; minus {against} over {d['classes']} classes {100 * d['diff']:+.1f} points "
                                   f"({100 * d['ci'][0]:+.1f} .. {100 * d['ci'][1]:+.1f})")
        print(f"{name}: top-5 {sum(hits)}/{len(hits)}{vs}", flush=True)


if __name__ == "__main__":
    main()
