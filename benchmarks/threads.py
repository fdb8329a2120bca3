"""CPU threads and OpenMP's wait policy, measured: which default serves a user on a quiet or a busy machine.

For each OpenMP wait policy (libgomp's default ACTIVE spinning, and PASSIVE), torch thread count and machine state
(quiet; busy = as many spinning processes as cores, started by this script), a fresh process measures HMC gradient
evaluations per second of a trained LeNet (16 and 64 chains) and of SqueezeNet 1.1 (2 chains), and LeNet training
steps per second (batch 64), median of 3 rounds. Writes docs/results/threads.{json,md}.

    python benchmarks/threads.py --lenet runs/lenet_dg25
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "results" / "threads.json"

PROBE = r"""
import json, statistics, sys, time, torch
sys.path.insert(0, sys.argv[1])
from gencnn_plugin import create_model, load_checkpoint
from gencnn_plugin.hmc import HMCConfig
from gencnn_plugin.visualize import sample_node
torch.set_num_threads(int(sys.argv[3]))
lenet, info, _ = load_checkpoint(sys.argv[2])
out = {}
for chains in (16, 64):
    rates = [sample_node(lenet, info, "logits:3", HMCConfig(iters=4, leapfrog_steps=25, step_size=0.015,
             chains=chains, seed=r)).result.summary["grad_evals_per_second"] for r in range(3)]
    out[f"lenet_hmc_c{chains}"] = statistics.median(rates)
sq, sinfo = create_model("tv:squeezenet1_1", num_classes=1000)
rates = [sample_node(sq.eval(), sinfo, "logits:1", HMCConfig(iters=2, leapfrog_steps=3, step_size=0.01,
         chains=2, seed=r)).result.summary["grad_evals_per_second"] for r in range(3)]
out["squeezenet_hmc_c2"] = statistics.median(rates)
net, _ = create_model("lenet")
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
rates = []
for r in range(3):
    t0 = time.perf_counter()
    for _ in range(50):
        opt.zero_grad(); torch.nn.functional.cross_entropy(net(x), y).backward(); opt.step()
    rates.append(50 / (time.perf_counter() - t0))
out["lenet_train_steps"] = statistics.median(rates)
print(json.dumps(out))
"""


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def measure(policy: str, threads: int, lenet: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", PROBE, str(REPO), lenet, str(threads)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def render(data: dict) -> str:
    rows = data["rows"]
    keys = ["lenet_hmc_c16", "lenet_hmc_c64", "squeezenet_hmc_c2", "lenet_train_steps"]
    lines = ["# CPU threads and OpenMP's wait policy", "",
             f"Written by `benchmarks/threads.py` on {data['device']} ({data['cores']} cores), torch {data['torch']}, "
             f"{data['date']}. Each cell: a fresh process, median of 3 rounds. HMC columns: gradient evaluations per "
             "second (all chains); training: LeNet steps per second (batch 64). Busy: as many spinning processes as "
             "cores, running beside the measurement.", "",
             "| machine | OMP_WAIT_POLICY | threads | LeNet HMC 16 chains | LeNet HMC 64 chains | SqueezeNet HMC 2 "
             "chains | LeNet training steps/s |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['load']} | {r['policy']} | {r['threads']} | " + " | ".join(f"{r[k]:.0f}" if r[k] >= 10
                     else f"{r[k]:.2f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lenet", default=str(REPO / "runs" / "lenet_dg25"))
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    if not args.render_only:
        import torch

        cores = os.cpu_count() or 1
        rows = []
        for load in ("quiet", "busy"):
            stop = multiprocessing.Event()
            spinners = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(cores if load == "busy"
                                                                                        else 0)]
            for s in spinners:
                s.start()
            time.sleep(1)
            try:
                for policy in ("default", "PASSIVE"):
                    for threads in sorted({1, cores}):
                        row = {"load": load, "policy": policy if policy != "default" else "(unset: ACTIVE)",
                               "threads": threads, **measure(policy, threads, args.lenet)}
                        rows.append(row)
                        print(row, flush=True)
            finally:
                stop.set()
                for s in spinners:
                    s.join()
        from _common import device_name

        OUT.write_text(json.dumps({"benchmark": "threads", "rows": rows, "cores": cores, "torch": torch.__version__,
                                   "device": device_name(torch.device("cpu")),
                                   "date": datetime.date.today().isoformat()}, indent=1) + "\n")
    OUT.with_suffix(".md").write_text(render(json.loads(OUT.read_text())))


if __name__ == "__main__":
    main()
