"""Cost of one training step with the generative loss (GG) versus cross-entropy (DG) on the same model and batch.

One step is zero_grad, forward, loss, backward and an SGD step (lr 0.01, momentum 0.9, weight decay 5e-4). Inputs
and labels are random (fixed seed), made once and kept on the device. After warm-up, each round times a block of
``k`` GG steps and a block of ``k`` DG steps (the order alternates from round to round) with ``time.perf_counter``,
synchronising CUDA only at block boundaries. Reported per case: the median step time of each loss, the median of
the per-round ratios GG/DG with its interquartile range and a bootstrap 95% interval of that median, and, as a
diagnostic, the forward+backward time of the two losses alone on logits of the case's shape.

Targets (from the issue): median ratio <= 1.05 on CPU, <= 1.02 on a GPU.

    python benchmarks/gg_dg_step_cost.py                      # CPU cases, writes docs/results/gg_dg_step_cost.{json,md}
    python benchmarks/gg_dg_step_cost.py --device cuda        # GPU cases, merged into the same files
    python benchmarks/gg_dg_step_cost.py --render-only        # rewrite the Markdown from the JSON
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import (  # noqa: E402
    add_output_args,
    bootstrap_median_ci,
    device_name,
    load_records,
    quartiles,
    select_cases,
    sync,
)
from torch import nn

from gencnn_plugin import create_model, generative_loss

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: dict[str, LossFn] = {"GG": generative_loss, "DG": F.cross_entropy}
TARGETS = {"cpu": 1.05, "cuda": 1.02}
LOSS_FORM = "nll_loss(log_softmax(logits, dim=0), y) - log n"  # how generative_loss computes eq. (8), recorded
DEFAULT_OUT = Path("docs/results/gg_dg_step_cost.json")


@dataclass(frozen=True)
class Case:
    """A model, its input geometry and batch size, and where it runs by default."""

    name: str
    spec: str
    batch: int
    num_classes: int
    in_chans: int
    img_size: int
    steps_per_block: int  # default k: blocks of roughly 20-100 ms on a small CPU
    devices: tuple[str, ...]


CASES = {
    c.name: c
    for c in (
        Case("lenet-b64", "lenet", 64, 10, 1, 28, 6, ("cpu", "cuda")),
        Case("resnet18-32px-b32", "timm:resnet18", 32, 10, 3, 32, 2, ("cpu", "cuda")),
        Case("resnet18-224px-b32-in1k", "timm:resnet18", 32, 1000, 3, 224, 2, ("cuda",)),
    )
}


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
               ) -> torch.Tensor:
    """One full training step; returns the (detached) loss without synchronising."""
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


def time_block(step: Callable[[], torch.Tensor], k: int, device: torch.device) -> float:
    """Seconds per step over a block of ``k`` consecutive steps."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(k):
        step()
    sync(device)
    return (time.perf_counter() - t0) / k


def loss_only_us(logits: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, device: torch.device, reps: int) -> float:
    """Median microseconds of forward+backward of ``loss_fn`` alone on ``logits`` (diagnostic)."""
    leaf = logits.detach().clone().requires_grad_(True)
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(20):
            loss_fn(leaf, y).backward()
        sync(device)
        times.append((time.perf_counter() - t0) / 20 * 1e6)
        leaf.grad = None
    return statistics.median(times)


def run_case(case: Case, device: torch.device, rounds: int, k: int, warmup: int, seed: int) -> dict:
    """Benchmark one case; returns its JSON record (without the run-wide fields)."""
    torch.manual_seed(seed)
    model, info = create_model(case.spec, num_classes=case.num_classes, in_chans=case.in_chans,
                               img_size=case.img_size)
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case.batch, *info.input_size, generator=gen).to(device)
    y = torch.randint(0, case.num_classes, (case.batch,), generator=gen).to(device)
    steps = {name: (lambda fn=fn: train_step(model, opt, x, y, fn)) for name, fn in LOSSES.items()}

    for _ in range(warmup):
        for step in steps.values():
            step()
    sync(device)

    per_step: dict[str, list[float]] = {name: [] for name in LOSSES}
    ratios: list[float] = []
    for r in range(rounds):
        order = ("GG", "DG") if r % 2 == 0 else ("DG", "GG")
        t = {name: time_block(steps[name], k, device) for name in order}
        for name in order:
            per_step[name].append(t[name])
        ratios.append(t["GG"] / t["DG"])
    final = {name: float(step()) for name, step in steps.items()}

    with torch.no_grad():
        logits = model(x)
    loss_us = {name: loss_only_us(logits, y, fn, device, reps=15) for name, fn in LOSSES.items()}

    target = TARGETS[device.type]
    ratio = statistics.median(ratios)
    q1, q3 = quartiles(ratios)
    lo, hi = bootstrap_median_ci(ratios, seed=seed)
    dg_ms, gg_ms = (statistics.median(per_step[n]) * 1e3 for n in ("DG", "GG"))
    return {
        "case": case.name, "model": case.spec, "batch": case.batch, "num_classes": case.num_classes,
        "input_shape": list(info.input_size), "device": device.type, "device_name": device_name(device),
        "rounds": rounds, "steps_per_block": k, "warmup_steps_per_loss": warmup, "seed": seed,
        "dg_ms_per_step": dg_ms, "gg_ms_per_step": gg_ms, "gg_minus_dg_ms": gg_ms - dg_ms,
        "ratio_median": ratio, "ratio_iqr": [q1, q3], "ratio_median_ci95": [lo, hi],
        "target": target, "met": ratio <= target,
        "loss_only_fwd_bwd_us": loss_us, "final_loss": final, "finite": all(map(math.isfinite, final.values())),
        "per_round_ms": {n: [round(v * 1e3, 4) for v in per_step[n]] for n in LOSSES},
    }


def _verdict(r: dict) -> str:
    """Met / NOT met / not decided, by the bootstrap interval of the median ratio against the target."""
    lo, hi = r["ratio_median_ci95"]
    return "yes" if hi <= r["target"] else "NO" if lo > r["target"] else "not decided"


def render_markdown(records: list[dict]) -> str:
    """The results table, then per-record command, date and device."""
    lines = [
        "# GG vs DG: cost of one training step",
        "",
        "One step = zero_grad, forward, loss, backward, SGD (lr 0.01, momentum 0.9, weight decay 5e-4), with",
        "`gencnn_plugin.generative_loss` (GG) or `F.cross_entropy` (DG) on the same model, batch and device.",
        "Ratio = median over interleaved rounds of GG/DG per-step time; IQR = interquartile range of the per-round",
        "ratios; CI = bootstrap 95% interval of the median ratio. Written by `benchmarks/gg_dg_step_cost.py`.",
        "Met: the whole interval is at or below the target; not met: the whole interval is above it; otherwise",
        "the runs do not decide it (the median alone is not enough).",
        "",
        "| model | batch | input | device | threads | DG ms/step | GG ms/step | median ratio | IQR | 95% CI "
        "| target | met? |",
        "|---|---:|---|---|---:|---:|---:|---:|---|---|---:|---|",
    ]
    for r in records:
        shape = "x".join(map(str, r["input_shape"]))
        lines.append(
            f"| {r['model']} | {r['batch']} | {shape} | {r['device_name']} | {r['threads']} "
            f"| {r['dg_ms_per_step']:.2f} | {r['gg_ms_per_step']:.2f} | {r['ratio_median']:.3f} "
            f"| {r['ratio_iqr'][0]:.3f}-{r['ratio_iqr'][1]:.3f} "
            f"| {r['ratio_median_ci95'][0]:.3f}-{r['ratio_median_ci95'][1]:.3f} "
            f"| <= {r['target']:.2f} | {_verdict(r)} |"
        )
    lines += ["", "Loss alone (forward+backward on the case's logits, median us):", ""]
    for r in records:
        lo = r["loss_only_fwd_bwd_us"]
        lines.append(f"- {r['case']} on {r['device']}: GG {lo['GG']:.1f} us, DG {lo['DG']:.1f} us")
    lines += ["", "## Runs", ""]
    for r in records:
        lines += [
            f"- **{r['case']}** ({r['device']}): {r['date']}, {r['rounds']} rounds x {r['steps_per_block']} steps "
            f"per loss, torch {r['torch_version']}, {r['threads']} threads",
            f"  - device: {r['device_name']}",
            f"  - command: `{r['command']}`",
            f"  - GG computed as `{r.get('loss_form', LOSS_FORM)}`",
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--cases", default=None, help=f"comma-separated, from: {', '.join(CASES)} (default: all cases "
                                                  "for --device)")
    p.add_argument("--rounds", type=int, default=200, help="interleaved GG/DG rounds per case (default 200)")
    p.add_argument("--steps-per-block", type=int, default=None, help="steps per timed block (default: per case)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up steps per loss (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    p.add_argument("--seed", type=int, default=0)
    add_output_args(p, DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    md_path = args.md or args.out.with_suffix(".md")
    if args.render_only:
        md_path.write_text(render_markdown(load_records(args.out)))
        return
    device, names = select_cases(args, CASES)

    command = shlex.join([Path(sys.executable).name, *sys.argv])
    common = {"threads": torch.get_num_threads(), "torch_version": torch.__version__,
              "date": datetime.date.today().isoformat(), "command": command, "loss_form": LOSS_FORM}
    new = []
    for name in names:
        case = CASES[name]
        k = args.steps_per_block or case.steps_per_block
        rec = {**run_case(case, device, args.rounds, k, args.warmup, args.seed), **common}
        new.append(rec)
        print(f"{name:>24} {device.type}: DG {rec['dg_ms_per_step']:.2f} ms  GG {rec['gg_ms_per_step']:.2f} ms  "
              f"ratio {rec['ratio_median']:.3f} (IQR {rec['ratio_iqr'][0]:.3f}-{rec['ratio_iqr'][1]:.3f}, "
              f"CI {rec['ratio_median_ci95'][0]:.3f}-{rec['ratio_median_ci95'][1]:.3f})  "
              f"target {rec['target']}: {'met' if rec['met'] else 'NOT met'}", flush=True)

    replaced = {(r["case"], r["device"]) for r in new}
    records = [r for r in load_records(args.out) if (r["case"], r["device"]) not in replaced] + new
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "gg_dg_step_cost", "records": records}, indent=1) + "\n")
    md_path.write_text(render_markdown(records))
    print(f"wrote {args.out} and {md_path}")


if __name__ == "__main__":
    main()
