"""Training throughput with 1 process against N DDP processes (torchrun, gloo on the CPU or NCCL on GPUs).

Each case trains LeNet for one epoch of full MNIST with ``gencnn train`` (per-process batch 64, so N processes
take N x 64 examples per step) and reads the epoch's training seconds from rank 0's metrics.jsonl; throughput =
training images / seconds. On the CPU the cores are shared out: 1 process gets all threads, N processes 1/N each.

    python benchmarks/ddp_scaling.py --data-dir ../shared/data          # writes docs/results/ddp_scaling.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_case(nproc: int, estimator: str, mode: str, device: str, data_dir: str, threads: int, tmp: Path) -> dict:
    out = tmp / f"n{nproc}-{estimator}-{mode}"
    argv = [sys.executable, "-m", "gencnn_plugin", "train", "lenet_mnist", "--mode", mode, "--epochs", "1",
            "--set", f"gg_estimator={estimator}", "--device", device, "--data-dir", data_dir, "--out", str(out),
            "--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // nproc))}
    t = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"{argv} failed:\n{done.stderr[-3000:]}")
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"nproc": nproc, "estimator": estimator, "mode": mode, "epoch_s": row["seconds"],
            "images_per_s": 60_000 // nproc * nproc / row["seconds"], "wall_s": wall,
            "test_error": row["test_error"], "threads_per_process": max(1, threads // nproc)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("GENCNN_DATA", "../shared/data"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads shared by the processes")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "ddp_scaling.json")
    args = p.parse_args(argv)
    cases = [(1, "local", "gg"), (args.nproc, "local", "gg"), (args.nproc, "global", "gg"), (1, "local", "dg"),
             (args.nproc, "local", "dg")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for nproc, estimator, mode in cases:
            rows.append(run_case(nproc, estimator, mode, args.device, str(Path(args.data_dir).resolve()),
                                 args.threads, Path(tmp)))
            r = rows[-1]
            print(f"{mode} {nproc} process(es), estimator {estimator}: {r['images_per_s']:.0f} images/s "
                  f"(epoch {r['epoch_s']:.1f} s, wall {r['wall_s']:.1f} s)", flush=True)
    meta = {"date": date.today().isoformat(), "device": args.device, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": args.threads, "command": "python " + " ".join(sys.argv)}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    base = {m: next(r for r in rows if r["nproc"] == 1 and r["mode"] == m)["images_per_s"] for m in ("gg", "dg")}
    lines = ["# DDP scaling: 1 process against several", "",
             f"Written by `benchmarks/ddp_scaling.py`: {meta['date']}, device {args.device} ({meta['cpu']}, "
             f"{meta['cores']} cores, {args.threads} threads shared by the processes); LeNet, one epoch of full "
             "MNIST, per-process batch 64; throughput from rank 0's epoch seconds.", "",
             f"Command: `{meta['command']}`", "",
             "| mode | processes | GG estimator | images/s | vs 1 process | epoch s | wall s (incl. start-up) | "
             "test error after 1 epoch |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['nproc']} | {r['estimator'] if r['mode'] == 'gg' else '-'} | "
                     f"{r['images_per_s']:.0f} | {r['images_per_s'] / base[r['mode']]:.2f}x | {r['epoch_s']:.1f} | "
                     f"{r['wall_s']:.1f} | {100 * r['test_error']:.2f}% |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
