"""ONNX Runtime latency against eager PyTorch, and the two exporters against each other, on the CPU.

For each case (LeNet at batch 1 and 64, SqueezeNet 1.1 and resnet18 at batch 1, 224 px), the model (random
weights: timing does not depend on them) is exported with both exporters (export seconds recorded), then each round
times one call of eager PyTorch (``torch.no_grad``), of ONNX Runtime on the dynamo graph and of ONNX Runtime on the
legacy graph, in an order that rotates from round to round, on the same input, with the same thread count for both
runtimes. Reported: median milliseconds, the median of per-round ratios ORT / eager (target <= 0.8) and ORT(dynamo)
/ ORT(legacy), with interquartile ranges.

    python benchmarks/onnx_latency.py --threads 2          # writes docs/results/onnx_latency.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from _common import quartiles  # noqa: E402

from gencnn_plugin import create_model, export_onnx  # noqa: E402

CASES = {  # name: (spec, create_model kwargs, batch)
    "lenet-b1": ("lenet", {}, 1),
    "lenet-b64": ("lenet", {}, 64),
    "squeezenet1_1-b1": ("tv:squeezenet1_1", {}, 1),
    "resnet18-b1": ("timm:resnet18", {}, 1),
}
TARGET = 0.8


def q1_median_q3(xs: list[float]) -> tuple[float, float, float]:
    lo, hi = quartiles(xs)
    return lo, statistics.median(xs), hi


def run_case(name: str, rounds: int, threads: int, tmp: Path) -> dict:
    spec, kwargs, batch = CASES[name]
    torch.manual_seed(0)
    model, info = create_model(spec, **kwargs)
    model.eval()
    export_s, sessions = {}, {}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    for exporter in ("dynamo", "legacy"):
        result = export_onnx(model, tmp / f"{name}-{exporter}.onnx", info=info, exporter=exporter)
        export_s[exporter] = result.seconds
        sessions[exporter] = ort.InferenceSession(str(result.path), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(batch, *info.input_size)
    xn = x.numpy()
    calls = {
        "eager": lambda: model(x),
        "ort_dynamo": lambda: sessions["dynamo"].run(None, {"input": xn}),
        "ort_legacy": lambda: sessions["legacy"].run(None, {"input": xn}),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    order = list(calls)
    with torch.no_grad():
        for fn in calls.values():  # warm-up
            fn(), fn()
        for r in range(rounds):
            for k in order[r % 3:] + order[:r % 3]:
                t = time.perf_counter()
                calls[k]()
                times[k].append((time.perf_counter() - t) * 1e3)
    ratio = {f"{k}/eager": [a / b for a, b in zip(times[k], times["eager"])] for k in ("ort_dynamo", "ort_legacy")}
    ratio["ort_dynamo/ort_legacy"] = [a / b for a, b in zip(times["ort_dynamo"], times["ort_legacy"])]
    return {"case": name, "spec": spec, "batch": batch, "input": list(info.input_size), "rounds": rounds,
            "threads": threads, "export_s": export_s, "ms": {k: statistics.median(v) for k, v in times.items()},
            "ratios": {k: q1_median_q3(v) for k, v in ratio.items()}}


def render(records: list[dict], meta: dict) -> str:
    lines = ["# ONNX Runtime against eager PyTorch (CPU)", "",
             f"Written by `benchmarks/onnx_latency.py`; {meta['date']}, {meta['cpu']}, {meta['threads']} threads for "
             f"both runtimes, torch {meta['torch']}, onnxruntime {meta['onnxruntime']}, {meta['rounds']} rounds per "
             "case (one call of each runtime per round, order rotating). Random weights; the default exporter is "
             "dynamo.", "", f"Command: `{meta['command']}`", "",
             "| case | input | eager ms | ORT (dynamo graph) ms | ORT (legacy graph) ms | ORT/eager, dynamo graph "
             "(IQR) | met (<= 0.8)? | ORT/eager, legacy graph | ORT dynamo / ORT legacy (IQR) | export s dynamo | "
             "export s legacy |", "|---|---|---:|---:|---:|---|---|---|---|---:|---:|"]
    for r in records:
        q = r["ratios"]
        d, lg, dl = q["ort_dynamo/eager"], q["ort_legacy/eager"], q["ort_dynamo/ort_legacy"]
        lines.append(
            f"| {r['case']} | {r['batch']}x{'x'.join(map(str, r['input']))} | {r['ms']['eager']:.3f} | "
            f"{r['ms']['ort_dynamo']:.3f} | {r['ms']['ort_legacy']:.3f} | {d[1]:.3f} ({d[0]:.3f}-{d[2]:.3f}) | "
            f"{'yes' if d[1] <= TARGET else 'NO'} | {lg[1]:.3f} | {dl[1]:.3f} ({dl[0]:.3f}-{dl[2]:.3f}) | "
            f"{r['export_s']['dynamo']:.2f} | {r['export_s']['legacy']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "onnx_latency.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        records = []
        for name in args.cases:
            records.append(run_case(name, args.rounds, args.threads, Path(tmp)))
            r = records[-1]
            print(f"{name}: eager {r['ms']['eager']:.3f} ms, ORT {r['ms']['ort_dynamo']:.3f} ms (dynamo graph), "
                  f"{r['ms']['ort_legacy']:.3f} ms (legacy graph); ratio {r['ratios']['ort_dynamo/eager'][1]:.3f}",
                  flush=True)
    meta = {"date": date.today().isoformat(), "cpu": platform.processor() or platform.machine(),
            "threads": args.threads, "torch": torch.__version__, "onnxruntime": ort.__version__,
            "rounds": args.rounds, "command": "python " + " ".join(sys.argv)}
    args.out.write_text(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(records, meta))


if __name__ == "__main__":
    main()
