"""Helpers shared by the benchmark scripts: device synchronisation and naming, robust statistics, JSON records."""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bootstrap_median_ci(values: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the median of ``values``."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n_boot))
    return meds[int(0.025 * n_boot)], meds[int(0.975 * n_boot) - 1]


def quartiles(values: list[float]) -> tuple[float, float]:
    """First and third quartile (the value twice for a single round)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model name from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_records(path: Path) -> list[dict]:
    """Records of an existing results file, or none."""
    if not path.exists():
        return []
    return json.loads(path.read_text()).get("records", [])


def add_output_args(p: argparse.ArgumentParser, default_out: Path) -> None:
    """--out (JSON that keeps other cases' records), --md, --render-only: shared by the case-based benchmarks."""
    p.add_argument("--out", type=Path, default=default_out, help=f"JSON path (default {default_out}); records of "
                                                                 "other cases/devices already there are kept")
    p.add_argument("--md", type=Path, default=None, help="Markdown path (default: --out with .md)")
    p.add_argument("--render-only", action="store_true", help="only rewrite the Markdown from --out")


def select_cases(args: argparse.Namespace, cases: dict) -> tuple[torch.device, list[str]]:
    """The device (exits if CUDA is asked for and missing), threads set, and the case names to run."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no GPU available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = args.cases.split(",") if args.cases else [n for n, c in cases.items() if device.type in c.devices]
    unknown = [n for n in names if n not in cases]
    if unknown:
        sys.exit(f"unknown case(s) {unknown}; choose from {list(cases)}")
    return device, names
