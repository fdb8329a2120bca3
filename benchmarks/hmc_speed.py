"""HMC sampling speed: the sampler's overhead over bare gradient evaluations, and samples per minute against the paper.

1. Sampler overhead. For one model, node, chain count and device, each round times a bare loop that only computes
   d f_y / d x (``x.requires_grad_(); f = score(x); autograd.grad(f.sum(), x); x = x + 0 * grad``) and a call of
   ``gencnn_plugin.hmc.hmc_sample`` (whole iterations, Metropolis step included) with the same number of gradient
   evaluations (``iters * leapfrog + 1``: hmc_sample evaluates U and its gradient once before the first
   iteration). The order alternates from round to round. Ratio = HMC gradient evaluations per second (from
   ``HMCResult.summary``, i.e. hmc_sample's own timer around its loop) / bare ones; reported: the median of the
   per-round ratios, its interquartile range and a bootstrap 95% interval; also the ratio with hmc_sample's wall
   time around the whole call (validation, trace copy and ``summarize``'s ESS / R-hat included).
2. Against the paper (Dai, Lu, Wu; GTX Titan): 0.4 min per LeNet sample (100 HMC iterations x 50 leapfrog steps)
   and 12 min per AlexNet fc8 sample (500 x 25). Samples per minute with the paper's settings come from the median
   time per gradient evaluation of short hmc_sample runs, extrapolated to ``iters * leapfrog + 1`` evaluations per
   sample (the tables say so and from how many measured steps); the speed-up is over the paper's samples/minute.

Models are randomly initialised (timing does not depend on the weights); x0 ~ N(0, I) in the normalised input
space. Step size / mass: 0.01 / 0.01 for LeNet, the paper's 1.0 / 0.3 for SqueezeNet and AlexNet (acceptance is
recorded, it does not matter for timing). On CUDA the script synchronises at timing boundaries and reports
achieved FLOP/s (FLOPs of one forward+backward counted once with ``torch.utils.flop_counter.FlopCounterMode``)
against ``--peak-tflops``.

CPU noise: with glibc's default malloc, the large activation buffers (SqueezeNet/AlexNet at 224 px) are mmap'ed and
returned on every evaluation, and the page faults that follow vary from call to call (seen here: 0.1 to 1.3 million
minor faults, up to ~30% of a round's time, in either loop). ``MALLOC_MMAP_THRESHOLD_=4294967296
MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824`` (or jemalloc / tcmalloc in LD_PRELOAD) removed them
here (HMC runs 12-15% faster; the SqueezeNet ratio, above 1 from this noise, became a steady 0.97). The script records
these variables with each run and leaves the choice to whoever runs it.

Targets (from the issue): overhead ratio >= 0.85 with many chains (LeNet 256 chains, SqueezeNet 1.1 32 chains);
LeNet with 256 chains >= 5x the paper on a 2-core CPU; on a GPU >= 1000x for LeNet and for AlexNet batched.

    python benchmarks/hmc_speed.py --threads 2              # CPU cases (~3-4 min on 2 quiet cores)
    python benchmarks/hmc_speed.py --device cuda            # GPU cases, merged into the same files
    python benchmarks/hmc_speed.py --render-only            # rewrite the Markdown from the JSON
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import (  # noqa: E402
    add_output_args,
    bootstrap_median_ci,
    device_name,
    load_records,
    quartiles,
    select_cases,
    sync,
)
from torch.utils.flop_counter import FlopCounterMode

from gencnn_plugin import create_model
from gencnn_plugin.hmc import HMCResult, hmc_sample
from gencnn_plugin.nodes import node_score
from gencnn_plugin.visualize import initial_states

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_OUT = Path("docs/results/hmc_speed.json")
DEFAULT_ROUNDS = {"cpu": 5, "cuda": 30}
SIGMA = 1.0
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# H100 SXM dense peaks (TFLOP/s): non-tensor-core fp32, and bf16/fp16 tensor cores
DEFAULT_PEAK_TFLOPS = {"fp32": 67.0, "bf16": 989.0, "fp16": 989.0}
TF32_PEAK_TFLOPS = 495.0  # H100 SXM dense TF32 tensor cores
OVERHEAD_TARGET = 0.85
ENV_KEYS = ("LD_PRELOAD", "OMP_NUM_THREADS", "MKL_NUM_THREADS")  # recorded with MALLOC_*: they move CPU timings


@dataclass(frozen=True)
class Paper:
    """A setting of the paper and its reported time per sample on a GTX Titan."""

    label: str
    iters: int
    leapfrog: int
    minutes_per_sample: float

    @property
    def evals_per_sample(self) -> int:
        """Gradient evaluations per chain: iters * leapfrog, plus hmc_sample's initial one."""
        return self.iters * self.leapfrog + 1

    @property
    def samples_per_minute(self) -> float:
        """The paper's samples per minute (one chain)."""
        return 1.0 / self.minutes_per_sample


PAPERS = {
    "lenet": Paper("LeNet, 100 x 50", 100, 50, 0.4),
    "alexnet_fc8": Paper("AlexNet fc8, 500 x 25", 500, 25, 12.0),
}


@dataclass(frozen=True)
class Case:
    """A model, node and chain count; the HMC run timed each round; what it is measured for and where it runs."""

    name: str
    spec: str
    node: str
    chains: int
    iters: int  # HMC iterations per timed run
    leapfrog: int  # leapfrog steps per iteration
    step_size: float
    mass: float
    bare: bool = False  # also time the bare gradient loop: the overhead ratio
    paper: str | None = None  # key of PAPERS: report samples/minute against it
    overhead_target: float | None = None
    speedup_targets: tuple[tuple[str, float], ...] = ()  # (device type, minimum speed-up over the paper)
    devices: tuple[str, ...] = ("cpu", "cuda")

    def speedup_target(self, device: str) -> float | None:
        """The minimum speed-up over the paper on this device type, if the issue sets one."""
        return dict(self.speedup_targets).get(device)


LENET = {"spec": "lenet", "node": "logits:3", "step_size": 0.01, "mass": 0.01}
ALEXNET = {"spec": "tv:alexnet", "node": "logits:967", "step_size": 1.0, "mass": 0.3, "paper": "alexnet_fc8"}
CASES = {
    c.name: c
    for c in (
        Case("lenet-c256", chains=256, iters=2, leapfrog=25, bare=True, paper="lenet",
             overhead_target=OVERHEAD_TARGET, speedup_targets=(("cpu", 5.0), ("cuda", 1000.0)), **LENET),
        Case("squeezenet-c32", "tv:squeezenet1_1", "logits:967", chains=32, iters=2, leapfrog=10, step_size=1.0,
             mass=0.3, bare=True, overhead_target=OVERHEAD_TARGET),
        Case("lenet-c1", chains=1, iters=2, leapfrog=50, bare=True, paper="lenet", **LENET),
        Case("alexnet-c1", chains=1, iters=2, leapfrog=5, **ALEXNET),
        Case("alexnet-c8", chains=8, iters=2, leapfrog=5, devices=("cpu",), **ALEXNET),
        Case("alexnet-c256", chains=256, iters=2, leapfrog=25, speedup_targets=(("cuda", 1000.0),),
             devices=("cuda",), **ALEXNET),
        Case("lenet-c4096", chains=4096, iters=2, leapfrog=50, bare=True, paper="lenet", devices=("cuda",),
             **LENET),
    )
}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context hmc_sample uses for ``precision`` (none for fp32)."""
    dtype = DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def bare_grad_loop(score: ScoreFn, x0: torch.Tensor, evals: int, precision: str) -> torch.Tensor:
    """``evals`` evaluations of d f / d x on all chains, each one's input depending on the previous gradient."""
    x = x0.detach().clone()
    for _ in range(evals):
        x = x.detach().requires_grad_(True)
        with autocast(x.device, precision):
            f = score(x)
        (grad,) = torch.autograd.grad(f.float().sum(), x)
        x = x.detach() + 0 * grad
    return x


def time_bare(score: ScoreFn, x0: torch.Tensor, evals: int, precision: str) -> float:
    """Seconds of one bare loop of ``evals`` gradient evaluations."""
    sync(x0.device)
    t0 = time.perf_counter()
    bare_grad_loop(score, x0, evals, precision)
    sync(x0.device)
    return time.perf_counter() - t0


def run_hmc(score: ScoreFn, x0: torch.Tensor, case: Case, precision: str, seed: int, iters: int | None = None,
            leapfrog: int | None = None) -> tuple[HMCResult, float]:
    """One hmc_sample call with the case's settings; returns the result and the wall seconds around the call."""
    gen = torch.Generator(device=x0.device).manual_seed(seed)
    sync(x0.device)
    t0 = time.perf_counter()
    res = hmc_sample(score, x0, iters=iters or case.iters, leapfrog_steps=leapfrog or case.leapfrog,
                     step_size=case.step_size, mass=case.mass, sigma=SIGMA, generator=gen, precision=precision)
    sync(x0.device)
    return res, time.perf_counter() - t0


def count_flops(score: ScoreFn, x0: torch.Tensor, precision: str) -> int:
    """FLOPs of one forward+backward (d f / d x) over all chains, counted by FlopCounterMode."""
    x = x0.detach().clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter, autocast(x.device, precision):
        # .backward(), not autograd.grad: FlopCounterMode's module hooks do not support grad() on a leaf input
        score(x).float().sum().backward()
    return int(counter.get_total_flops())


def precision_note(device: torch.device, precision: str) -> str:
    """What ran: the score's precision, and on CUDA whether fp32 convolutions / matmuls may use TF32."""
    if device.type != "cuda" or precision != "fp32":
        return precision
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    conv_tf32 = conv == "tf32" if conv is not None else bool(torch.backends.cudnn.allow_tf32)
    mm_tf32 = torch.get_float32_matmul_precision() != "highest"
    return f"fp32 (TF32 convolutions: {'on' if conv_tf32 else 'off'}, TF32 matmuls: {'on' if mm_tf32 else 'off'})"


def overhead_stats(case: Case, evals: int, bare_s: list[float], hmc_s: list[float], wall_s: list[float],
                   seed: int) -> dict:
    """Median gradient evaluations per second of both loops and the per-round ratio statistics."""
    gps = evals * case.chains
    ratios = [b / h for b, h in zip(bare_s, hmc_s)]  # = (gps / h) / (gps / b)
    ratios_wall = [b / w for b, w in zip(bare_s, wall_s)]
    ratio = statistics.median(ratios)
    return {
        "bare_grad_evals_per_s": gps / statistics.median(bare_s),
        "hmc_grad_evals_per_s": gps / statistics.median(hmc_s),
        "ratio_median": ratio, "ratio_iqr": list(quartiles(ratios)),
        "ratio_median_ci95": list(bootstrap_median_ci(ratios, seed=seed)),
        "ratio_wall_median": statistics.median(ratios_wall),
        "target": case.overhead_target,
        "met": None if case.overhead_target is None else ratio >= case.overhead_target,
        "per_round_bare_s": [round(v, 5) for v in bare_s],
    }


def paper_stats(case: Case, device: torch.device, evals: int, hmc_s: list[float]) -> dict:
    """Samples per minute with the paper's setting, extrapolated from the measured time per gradient evaluation."""
    paper = PAPERS[case.paper]
    s_per_eval = statistics.median(hmc_s) / evals
    minutes_per_batch = s_per_eval * paper.evals_per_sample / 60
    samples_per_min = case.chains / minutes_per_batch
    speedup = samples_per_min / paper.samples_per_minute
    target = case.speedup_target(device.type)
    extrapolated = (case.iters, case.leapfrog) != (paper.iters, paper.leapfrog)
    return {
        "paper": case.paper, "paper_label": paper.label, "paper_iters": paper.iters,
        "paper_leapfrog": paper.leapfrog, "evals_per_sample": paper.evals_per_sample,
        "paper_samples_per_minute": paper.samples_per_minute, "extrapolated": extrapolated,
        "measured_steps": evals * len(hmc_s), "ms_per_grad_eval": s_per_eval * 1e3,
        "minutes_per_batch": minutes_per_batch, "samples_per_minute": samples_per_min, "speedup": speedup,
        "target": target, "met": None if target is None else speedup >= target,
    }


def run_case(case: Case, device: torch.device, rounds: int, warmup: int, precision: str, seed: int,
             peak_tflops: float | None) -> dict:
    """Benchmark one case; returns its JSON record (without the run-wide fields)."""
    torch.manual_seed(seed)
    model, info = create_model(case.spec)
    score = node_score(model.to(device), info, case.node)
    x0 = initial_states(info, case.chains, SIGMA, seed, device)
    evals = case.iters * case.leapfrog + 1  # what hmc_sample counts: the initial evaluation plus the leapfrog steps

    for _ in range(warmup):  # same shapes, short: builds kernels / oneDNN primitives and caches
        run_hmc(score, x0, case, precision, seed, iters=1, leapfrog=1)
        if case.bare:
            time_bare(score, x0, 2, precision)
    bare_s: list[float] = []
    hmc_s: list[float] = []
    wall_s: list[float] = []
    accept: list[float] = []
    for r in range(rounds):
        order = ("bare", "hmc") if r % 2 == 0 else ("hmc", "bare")
        for what in order:
            if what == "bare" and case.bare:
                bare_s.append(time_bare(score, x0, evals, precision))
            elif what == "hmc":
                res, wall = run_hmc(score, x0, case, precision, seed)
                if res.grad_evals != evals:
                    raise RuntimeError(f"hmc_sample counted {res.grad_evals} gradient evaluations, expected {evals}")
                hmc_s.append(res.summary["seconds"])
                wall_s.append(wall)
                accept.append(res.summary["accept_rate"])

    flops = count_flops(score, x0, precision)
    achieved = flops * evals / statistics.median(hmc_s) / 1e12
    rec = {
        "case": case.name, "model": case.spec, "node": case.node, "chains": case.chains,
        "input_shape": list(info.input_size), "device": device.type, "device_name": device_name(device),
        "precision": precision_note(device, precision), "rounds": rounds, "warmup": warmup, "seed": seed,
        "iters": case.iters, "leapfrog": case.leapfrog, "grad_evals_per_run": evals,
        "step_size": case.step_size, "mass": case.mass, "sigma": SIGMA,
        "hmc_seconds_median": statistics.median(hmc_s), "hmc_wall_seconds_median": statistics.median(wall_s),
        "accept_rate": statistics.fmean(accept),
        "flops_per_grad_eval": flops, "achieved_tflops": achieved, "peak_tflops": peak_tflops,
        "fraction_of_peak": achieved / peak_tflops if peak_tflops else None,
        "per_round_hmc_s": [round(v, 5) for v in hmc_s], "per_round_hmc_wall_s": [round(v, 5) for v in wall_s],
        "overhead": overhead_stats(case, evals, bare_s, hmc_s, wall_s, seed) if case.bare else None,
        "vs_paper": paper_stats(case, device, evals, hmc_s) if case.paper else None,
    }
    return rec


def _met(value: bool | None) -> str:
    """'-' where no target applies, else yes / NO."""
    return "-" if value is None else ("yes" if value else "NO")


def _fmt_rate(v: float) -> str:
    """A rate with 3 significant digits, readable from 0.01 to 1e7."""
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _fmt_speedup(v: float) -> str:
    """A speed-up factor: 3 significant digits below 100x."""
    return f"{v:,.0f}x" if v >= 100 else f"{v:.3g}x"


def _target_lines(records: list[dict]) -> list[str]:
    """One line per target of the issue: met, not met, or not measured yet."""
    by_key = {(r["case"], r["device"]): r for r in records}
    goals = [
        ("overhead", "lenet-c256", "cpu", "Overhead ratio >= 0.85, LeNet 256 chains (CPU)"),
        ("overhead", "squeezenet-c32", "cpu", "Overhead ratio >= 0.85, SqueezeNet 1.1 32 chains (CPU)"),
        ("overhead", "lenet-c256", "cuda", "Overhead ratio >= 0.85, LeNet 256 chains (GPU)"),
        ("overhead", "squeezenet-c32", "cuda", "Overhead ratio >= 0.85, SqueezeNet 1.1 32 chains (GPU)"),
        ("vs_paper", "lenet-c256", "cpu", "LeNet 256 chains >= 5x the paper (CPU)"),
        ("vs_paper", "lenet-c256", "cuda", "LeNet 256 chains >= 1000x the paper (GPU)"),
        ("vs_paper", "alexnet-c256", "cuda", "AlexNet batched (256 chains) >= 1000x the paper (GPU)"),
    ]
    lines = []
    for part, case, dev, text in goals:
        rec = by_key.get((case, dev))
        if rec is None or rec.get(part) is None:
            lines.append(f"- {text}: not measured yet")
            continue
        block = rec[part]
        value = (f"{block['ratio_median']:.3f} (95% CI {block['ratio_median_ci95'][0]:.3f}-"
                 f"{block['ratio_median_ci95'][1]:.3f})" if part == "overhead" else "")
        if part == "overhead":  # met only when the interval clears the target, not the median alone
            lo, hi = block["ratio_median_ci95"]
            verdict = "met" if lo >= block["target"] else "NOT met" if hi < block["target"] else \
                "not decided (the interval contains the target)"
        else:  # the throughput of each round, then the bootstrap interval of their median
            evals, paper_spm = rec["grad_evals_per_run"], block["paper_samples_per_minute"]
            per_round = [rec["chains"] / (t / evals * block["evals_per_sample"] / 60) / paper_spm
                         for t in rec["per_round_hmc_s"]]
            lo, hi = bootstrap_median_ci(per_round)
            value = (f"throughput {_fmt_speedup(block['speedup'])} (95% CI {_fmt_speedup(lo)}-{_fmt_speedup(hi)} over "
                     f"{len(per_round)} rounds), latency {_fmt_speedup(1 / paper_spm / block['minutes_per_batch'])}")
            verdict = "met" if lo >= block["target"] else "NOT met" if hi < block["target"] else \
                "not decided (the interval contains the target)"
        lines.append(f"- {text}: {value} -> {verdict}")
    return lines


def render_markdown(records: list[dict]) -> str:
    """The overhead table, the samples/minute table, the targets, then per-record command, device and date."""
    lines = ["# HMC sampling speed", ""]
    for recs in _runs(records):
        if recs[0].get("note"):
            lines += [f"> **{recs[0]['note']}** ({', '.join(r['case'] for r in recs)} on {recs[0]['device']})", ""]
    lines += [
        "Written by `benchmarks/hmc_speed.py` (see its docstring for the method). Models are randomly initialised;",
        "x0 ~ N(0, I). One gradient evaluation = forward + backward of f_y for all chains of the batch. Step size /",
        "mass: 0.01 / 0.01 for LeNet, the paper's 1.0 / 0.3 for SqueezeNet and AlexNet ('accept' = acceptance rate).",
        "",
        "## Sampler overhead",
        "",
        "Ratio = gradient evaluations per second of `hmc_sample` (its own timer around the loop, Metropolis step",
        "included) / those of a bare loop that only computes d f_y / d x for the same chains, model and device.",
        "Median over interleaved rounds, each of `iters x leapfrog + 1` gradient evaluations per loop; IQR and",
        "bootstrap 95% CI of the per-round ratios. 'wall' = the same ratio with the wall time around the whole",
        "`hmc_sample` call (argument validation, trace copy and the ESS / R-hat summary included).",
        "",
        "| case | model | node | chains | input | device | threads | evals/round | bare evals/s | HMC evals/s "
        "| median ratio | IQR | 95% CI | wall ratio | accept | target | met? |",
        "|---|---|---|---:|---|---|---:|---|---:|---:|---:|---|---|---:|---:|---|---|",
    ]
    for r in records:
        o = r.get("overhead")
        if o is None:
            continue
        shape = "x".join(map(str, r["input_shape"]))
        target = f">= {o['target']:.2f}" if o["target"] is not None else "-"
        lines.append(
            f"| {r['case']} | {r['model']} | {r['node']} | {r['chains']} | {shape} | {r['device']} | {r['threads']} "
            f"| {r['iters']}x{r['leapfrog']}+1 | {_fmt_rate(o['bare_grad_evals_per_s'])} "
            f"| {_fmt_rate(o['hmc_grad_evals_per_s'])} | {o['ratio_median']:.3f} "
            f"| {o['ratio_iqr'][0]:.3f}-{o['ratio_iqr'][1]:.3f} "
            f"| {o['ratio_median_ci95'][0]:.3f}-{o['ratio_median_ci95'][1]:.3f} | {o['ratio_wall_median']:.3f} "
            f"| {r['accept_rate']:.2f} | {target} | {_met(o['met'])} |"
        )
    lines += [
        "",
        "## Latency and throughput against the paper",
        "",
        "Paper (GTX Titan): 0.4 min per LeNet sample (100 HMC iterations x 50 leapfrog steps) = 2.5 samples/min;",
        "12 min per AlexNet fc8 sample (500 x 25) = 1/12 samples/min. Here: the median time per gradient evaluation",
        "of short `hmc_sample` runs (whole iterations) times the paper's `iters x leapfrog + 1` evaluations per",
        "sample. Two different speeds, reported side by side:",
        "",
        "- **latency**: minutes until a batch's samples are done; with B chains that is the time to *each* of its",
        "  B samples. Latency vs paper = the paper's minutes per sample / ours (above 1: a sample arrives sooner).",
        "- **throughput**: samples per minute = B / latency; throughput vs paper = ours / the paper's. Many chains",
        "  raise throughput, not latency: a batch of 4,096 LeNet chains gives 4,096 samples, each after a full run.",
        "",
        "| case | model | chains | device | threads | paper setting | ms per grad eval (batch) | how measured "
        "| latency: min per batch | latency vs paper | throughput: samples/min | throughput vs paper | target | met? "
        "| TFLOP/s | % of peak |",
        "|---|---|---:|---|---:|---|---:|---|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in records:
        p = r.get("vs_paper")
        if p is None:
            continue
        runs = len(r["per_round_hmc_s"])
        how = (f"extrapolated from {p['measured_steps']} measured steps ({runs} runs of {r['iters']}x{r['leapfrog']}+1)"
               if p["extrapolated"] else f"measured in full (median of {runs} runs)")
        target = f">= {p['target']:,.0f}x" if p["target"] is not None else "-"
        peak = f"{100 * r['fraction_of_peak']:.1f}" if r.get("fraction_of_peak") is not None else "-"
        paper_min = 1.0 / p["paper_samples_per_minute"]
        if "TF32 convolutions: on" in str(r.get("precision", "")) and r.get("achieved_tflops"):
            peak = f"{peak} of fp32; {100 * r['achieved_tflops'] / TF32_PEAK_TFLOPS:.1f} of TF32"
        lines.append(
            f"| {r['case']} | {r['model']} | {r['chains']} | {r['device']} | {r['threads']} | {p['paper_label']} "
            f"| {p['ms_per_grad_eval']:.2f} | {how} | {p['minutes_per_batch']:.3g} "
            f"| {_fmt_speedup(paper_min / p['minutes_per_batch'])} | {_fmt_rate(p['samples_per_minute'])} "
            f"| {_fmt_speedup(p['speedup'])} | {target} | {_met(p['met'])} | {r['achieved_tflops']:.3g} | {peak} |"
        )
    lines += ["", "The targets of the speed issue are throughput targets. TFLOP/s: FLOPs of one forward+backward",
              "(FlopCounterMode: convolutions and matmuls) times the gradient evaluations per second of the HMC runs.",
              "% of peak: against `--peak-tflops` (default on CUDA: H100 SXM dense, fp32 67 / bf16 989 TFLOP/s). The",
              "CUDA runs of 2026-11-22 ran their convolutions in TF32 (PyTorch's default for cuDNN) while naming the",
              f"precision fp32, so their share of the TF32 dense peak (~{TF32_PEAK_TFLOPS:.0f}) is shown beside the",
              "fp32 one; `--precision fp32` now means TF32 off and `tf32` is its own choice (gencnn_plugin.runtime).",
              "These CUDA figures are extrapolated from 2-iteration runs of randomly initialised models; full-length",
              "runs of trained models are in [hmc_latency.md](hmc_latency.md) (CPU; no GPU was lent since).",
              "", "## Targets", ""]
    lines += _target_lines(records)
    lines += ["", "## Runs", ""]
    for recs in _runs(records):
        r = recs[0]
        peak = f", peak {r['peak_tflops']:g} TFLOP/s" if r.get("peak_tflops") else ""
        env = " ".join(f"{k}={v}" for k, v in sorted(r.get("env", {}).items())) or "(none set)"
        lines += [
            f"- {', '.join(x['case'] for x in recs)} ({r['device']}): {r['date']}, {r['rounds']} rounds "
            f"(+{r['warmup']} warm-up), precision {r['precision']}{peak}, torch {r['torch_version']}, "
            f"{r['threads']} threads",
            f"  - device: {r['device_name']}",
            f"  - command: `{r['command']}`",
        ]
        if "env" in r:
            lines.append(f"  - allocator / threading environment: {env}")
    return "\n".join(lines) + "\n"


def _runs(records: list[dict]) -> list[list[dict]]:
    """Records grouped by the run (command, date, device) that produced them, in order."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        key = (r["command"], r["date"], r["device"], r["device_name"], r["rounds"], r["precision"], r.get("note"))
        groups.setdefault(key, []).append(r)
    return list(groups.values())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--cases", default=None, help=f"comma-separated, from: {', '.join(CASES)} (default: all cases "
                                                  "for --device)")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"interleaved rounds per case (default {DEFAULT_ROUNDS['cpu']} on CPU, "
                        f"{DEFAULT_ROUNDS['cuda']} on CUDA)")
    p.add_argument("--warmup", type=int, default=1, help="untimed short warm-up calls per loop (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    p.add_argument("--precision", default="fp32", choices=list(DTYPES), help="the score's precision (default fp32)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak for the %% of peak column (default on CUDA: H100 SXM dense, fp32 67, "
                        "bf16/fp16 989)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default=None, help="a label stored with the records and shown in the Markdown")
    add_output_args(p, DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    md_path = args.md or args.out.with_suffix(".md")
    if args.render_only:
        md_path.write_text(render_markdown(load_records(args.out)))
        return
    device, names = select_cases(args, CASES)
    rounds = args.rounds or DEFAULT_ROUNDS.get(device.type, DEFAULT_ROUNDS["cpu"])
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        peak = DEFAULT_PEAK_TFLOPS[args.precision]

    command = shlex.join([Path(sys.executable).name, *sys.argv])
    common = {"threads": torch.get_num_threads(), "torch_version": torch.__version__,
              "date": datetime.date.today().isoformat(), "command": command, "note": args.note,
              "env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k in ENV_KEYS}}
    new = []
    for name in names:
        rec = {**run_case(CASES[name], device, rounds, args.warmup, args.precision, args.seed, peak), **common}
        new.append(rec)
        o, p = rec["overhead"], rec["vs_paper"]
        msg = f"{name:>15} {device.type}: HMC {rec['hmc_seconds_median']:.3f} s/run"
        if o:
            msg += f", overhead ratio {o['ratio_median']:.3f} (IQR {o['ratio_iqr'][0]:.3f}-{o['ratio_iqr'][1]:.3f})"
        if p:
            msg += f", {p['samples_per_minute']:.3g} samples/min = {_fmt_speedup(p['speedup'])} the paper"
        print(msg + f", accept {rec['accept_rate']:.2f}, {rec['achieved_tflops']:.3g} TFLOP/s", flush=True)

    replaced = {(r["case"], r["device"]) for r in new}
    records = [r for r in load_records(args.out) if (r["case"], r["device"]) not in replaced] + new
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "hmc_speed", "records": records}, indent=1) + "\n")
    md_path.write_text(render_markdown(records))
    print(f"wrote {args.out} and {md_path}")


if __name__ == "__main__":
    main()
