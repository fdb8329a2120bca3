"""HMC latency and throughput of full-length runs of trained models at the paper's settings, against the paper.

Each case runs ``gencnn_plugin.visualize.sample_node`` once per round at the paper's full setting (LeNet: 100 HMC
iterations x 50 leapfrog steps, step 0.1, mass 0.01; AlexNet fc8: 500 x 25, step 1.0, mass 0.3) on a trained
network, nothing extrapolated: the LeNet of ``--lenet`` (a run folder) and SqueezeNet 1.1 with the ImageNet
weights of ../shared/weights (the paper's AlexNet is not available trained here; SqueezeNet is of AlexNet's
accuracy and about 1/3 of its FLOPs, so its row is labelled as what it is). Reported per case and chain count B:

- latency: wall seconds of the whole run, i.e. the time until each of its B samples is done; against the paper's
  0.4 min per LeNet sample and 12 min per AlexNet fc8 sample (paper / ours: above 1 means sooner);
- throughput: B samples / latency, against the paper's 2.5 and 1/12 samples per minute.

Timings with the paper's step sizes, which accept almost nothing on trained networks (acceptance is recorded; the
work per iteration does not depend on it).

    python benchmarks/hmc_latency.py --lenet runs/lenet_dg25 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import add_output_args, device_name, load_records, sync

from gencnn_plugin import create_model, load_checkpoint
from gencnn_plugin.hmc import HMCConfig
from gencnn_plugin.runtime import device_name as runtime_device_name
from gencnn_plugin.visualize import sample_node

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "results" / "hmc_latency.json"
PAPER = {"lenet": (100, 50, 0.1, 0.01, 0.4), "alexnet_fc8": (500, 25, 1.0, 0.3, 12.0)}  # iters, L, eps, m, min


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # "lenet" (the --lenet checkpoint) or "squeezenet"
    node: str
    paper: str
    chains: int


CASES = {c.name: c for c in [
    Case("lenet-c1", "lenet", "logits:3", "lenet", 1),
    Case("lenet-c16", "lenet", "logits:3", "lenet", 16),
    Case("lenet-c256", "lenet", "logits:3", "lenet", 256),
    Case("squeezenet-c1", "squeezenet", "espresso", "alexnet_fc8", 1),
    Case("squeezenet-c4", "squeezenet", "espresso", "alexnet_fc8", 4),
]}


def load(case: Case, args: argparse.Namespace):
    if case.model == "lenet":
        model, info, _ = load_checkpoint(args.lenet)
        return model, info, f"LeNet ({Path(args.lenet).name})"
    weights = Path(args.weights_dir) / "squeezenet1_1_imagenet.safetensors"
    model, info = create_model("tv:squeezenet1_1", weights=weights)
    return model.eval(), info, "SqueezeNet 1.1, ImageNet weights"


def run_case(case: Case, device: torch.device, rounds: int, args: argparse.Namespace) -> dict:
    model, info, what = load(case, args)
    iters, steps, eps, mass, paper_min = PAPER[case.paper]
    cfg = HMCConfig(iters=iters, leapfrog_steps=steps, step_size=eps, mass=mass, sigma=1.0, chains=case.chains,
                    precision=args.precision)
    seconds, accept = [], []
    for r in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        run = sample_node(model, info, case.node, HMCConfig(**{**cfg.__dict__, "seed": r}), device)
        sync(device)
        seconds.append(time.perf_counter() - t0)
        accept.append(run.result.summary["accept_rate"])
    latency_min = statistics.median(seconds) / 60
    return {
        "case": case.name, "model": what, "node": case.node, "chains": case.chains, "paper": case.paper,
        "iters": iters, "leapfrog": steps, "step_size": eps, "mass": mass, "grad_evals": iters * steps + 1,
        "rounds": rounds, "seconds": seconds, "latency_min": latency_min, "latency_vs_paper": paper_min / latency_min,
        "throughput_per_min": case.chains / latency_min,
        "throughput_vs_paper": case.chains / latency_min / (1 / paper_min), "accept_rate": statistics.fmean(accept),
        "device": device.type, "device_name": device_name(device), "threads": torch.get_num_threads(),
        "precision": args.precision, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
        "runtime": runtime_device_name(device), "command": "python " + " ".join(sys.argv),
    }


def render(records: list[dict]) -> str:
    lines = ["# HMC latency and throughput: full-length runs of trained models", "",
             "Written by `benchmarks/hmc_latency.py` (its docstring has the method). Every run is a whole",
             "`sample_node` call at the paper's setting, timed from the start to the samples; nothing is",
             "extrapolated. Latency = minutes until each of the batch's samples is done (paper: 0.4 min per LeNet",
             "sample, 12 min per AlexNet fc8 sample on a GTX Titan); throughput = samples per minute.", "",
             "| case | model | node | chains | device | threads | precision | setting | rounds | latency min "
             "(median; range) | latency vs paper | samples/min | throughput vs paper | acceptance |",
             "|---|---|---|---:|---|---:|---|---|---:|---|---:|---:|---:|---:|"]
    for r in records:
        rng = f"{min(r['seconds']) / 60:.3g}-{max(r['seconds']) / 60:.3g}"
        setting = f"{r['paper']} ({r['iters']} x {r['leapfrog']}, eps {r['step_size']:g}, m {r['mass']:g})"
        lines.append(f"| {r['case']} | {r['model']} | {r['node']} | {r['chains']} | {r['device_name']} | "
                     f"{r['threads']} | {r['precision']} | {setting} | {r['rounds']} | {r['latency_min']:.3g} ({rng}) "
                     f"| {r['latency_vs_paper']:.3g}x | {r['throughput_per_min']:.3g} "
                     f"| {r['throughput_vs_paper']:.3g}x | {r['accept_rate']:.2f} |")
    dates = sorted({r["date"] for r in records})
    lines += ["", f"Measured {', '.join(dates)}; torch {records[0]['torch']}; command: `{records[0]['command']}`.",
              "The AlexNet row is SqueezeNet 1.1 at the paper's AlexNet fc8 setting (no trained AlexNet here)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lenet", default=str(REPO / "runs" / "lenet_dg25"), help="a trained LeNet run folder")
    p.add_argument("--weights-dir", default=str(REPO.parent / "shared" / "weights"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--cases", default=None, help=f"comma-separated, from {', '.join(CASES)}")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default="fp32")
    add_output_args(p, DEFAULT_OUT)
    args = p.parse_args(argv)
    md = args.md or args.out.with_suffix(".md")
    if not args.render_only:
        device = torch.device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        records = {r["case"] + r["device"]: r for r in load_records(args.out)}
        for name in (args.cases.split(",") if args.cases else CASES):
            rec = run_case(CASES[name], device, args.rounds, args)
            records[rec["case"] + rec["device"]] = rec
            print(f"{name}: {rec['latency_min'] * 60:.1f} s per batch, {rec['throughput_vs_paper']:.3g}x the paper's "
                  f"throughput, {rec['latency_vs_paper']:.3g}x its latency", flush=True)
            args.out.write_text(json.dumps({"benchmark": "hmc_latency", "records": list(records.values())},
                                           indent=1) + "\n")
    md.write_text(render(load_records(args.out)))


if __name__ == "__main__":
    main()
