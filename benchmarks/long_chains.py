"""Long chains: does the ``imagenet_legible`` preset converge if its chains run 25 times longer, and what happens to
what another network reads in them on the way?

The preset runs 20 adaptation + 20 sampling iterations, and its split R-hat is 2-3 per class; 160 iterations (the
legibility benchmark's ``i160`` setting) still left every chain climbing f_y. This runs the shipped preset, exactly
as ``gencnn sample`` runs it (``sample_node``; only ``iters`` and ``chains`` changed), for ``--iters`` iterations and
keeps, at a few iterations fixed in advance (``SNAPSHOTS``):
- each chain's state, and what MobileNetV2 (the judge, which never sees the sampled SqueezeNet) ranks the class at;
- the rank-normalised split R-hat and bulk ESS of f_y and of the sampler's random projections of x, over the draws
  a run stopped at that iteration would use (after the adaptation iterations) and over its second half only
  (the first half discarded as burn-in, Gelman et al.'s rule);
- the mean of f_y over the chains.

    GENCNN_DATA=../shared/data python benchmarks/long_chains.py run --classes 71 --threads 1   # beside --classes 85
    python benchmarks/long_chains.py report
    # -> docs/results/long_chains.json (one entry per class; processes run side by side), docs/results/long_chains.md
    #    and docs/images/long_chains_<class>.png (rows: chains; columns: the snapshots); the report reads the
    #    snapshots' states from runs/long_chains/, which only the machine that ran them has
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import legibility as L  # noqa: E402
from _common import device_name  # noqa: E402

from gencnn_plugin import load_preset, sample_node  # noqa: E402
from gencnn_plugin.visualize import save_grid, to_pixels  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "long_chains.json"
CACHE = ROOT / "runs" / "long_chains"
WEIGHTS = ROOT.parent / "shared" / "weights"
SNAPSHOTS = (40, 100, 200, 400, 700, 1000)  # iterations (1-based) whose states are judged; 40 is the preset's length
MODEL, JUDGE = "squeezenet1_1", "mobilenetv2_100"


def windows(scores: torch.Tensor, projections: torch.Tensor, chains: int, adapt: int, k: int) -> dict:
    """Split R-hat / bulk ESS of f_y and the projections for a run stopped after ``k`` iterations: over the draws
    after adaptation (what ``gencnn sample`` reports) and over the second half of those draws."""
    full = L.convergence(scores[:k], projections[:k], chains, adapt)
    half = L.convergence(scores[:k], projections[:k], chains, adapt + (k - adapt) // 2)
    keys = ("rhat_max", "rhat_f_max", "ess_bulk_min", "draws")
    return {"after_adapt": {key: full.get(key, float("nan")) for key in keys},
            "second_half": {key: half.get(key, float("nan")) for key in keys}}


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model, info = L.load_imagenet(MODEL, Path(args.weights))
    judge, jinfo = L.load_imagenet(JUDGE, Path(args.weights))
    cfg = replace(load_preset("imagenet_legible"), iters=args.iters, chains=args.chains, seed=args.seed)
    marks = [k for k in SNAPSHOTS if k <= args.iters]
    CACHE.mkdir(parents=True, exist_ok=True)
    for c in args.classes:
        done = json.loads(OUT.read_text()).get("classes", {}) if OUT.exists() else {}
        if str(c) in done:
            continue
        kept: dict[int, torch.Tensor] = {}
        t_iter: dict[int, float] = {}

        def keep(step, kept=kept, t_iter=t_iter) -> None:
            if step.iteration + 1 in marks:
                kept[step.iteration + 1] = step.x.detach().cpu().clone()
                t_iter[step.iteration + 1] = time.perf_counter()

        t0 = time.perf_counter()
        run = sample_node(model, info, f"logits:{c}", cfg, callback=keep)
        seconds = time.perf_counter() - t0
        scores, proj = run.result.trace["score"], run.projections
        targets = torch.full((args.chains,), c)
        snaps = {}
        for k in marks:
            ranks = L.judge_ranks(judge, jinfo, to_pixels(kept[k], info), targets)
            snaps[str(k)] = {"judge_rank": ranks.tolist(), "f_mean": float(scores[k - 1].mean()),
                             "f": scores[k - 1].tolist(), "seconds": t_iter[k] - t0,
                             **windows(scores, proj, args.chains, cfg.adapt_steps, k)}
        torch.save({k: v.half() for k, v in kept.items()}, CACHE / f"{c}.pt")
        entry = {"name": L.class_name(c), "snapshots": snaps, "seconds": seconds,
                 "accept": run.result.summary["accept_rate"], "step": float(run.result.trace["step_size"][-1].mean()),
                 "f_trace_every_10": scores[9::10].mean(1).tolist()}

        def add(disk: dict | None, c=c, entry=entry) -> dict:
            rec = disk or {"model": MODEL, "judge": JUDGE, "preset": "imagenet_legible", "iters": args.iters,
                           "chains": args.chains, "seed": args.seed, "adapt_steps": cfg.adapt_steps,
                           "device": f"cpu: {device_name(torch.device('cpu'))} ({args.threads} threads)",
                           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "classes": {},
                           "commands": []}
            rec["classes"][str(c)] = entry
            rec["commands"] = list(dict.fromkeys(rec["commands"] + [" ".join(["python", *sys.argv])]))
            return rec

        L.update_json(OUT, add)
        last = {w: L._num(snaps[str(marks[-1])][w]["rhat_max"], ".2f") for w in ("after_adapt", "second_half")}
        print(f"{c} {entry['name']}: judge ranks by snapshot "
              f"{ {k: v['judge_rank'] for k, v in snaps.items()} }, R-hat at {marks[-1]} "
              f"{last['after_adapt']} (second half {last['second_half']}), "
              f"{seconds:.0f} s", flush=True)


def cmd_report(args: argparse.Namespace) -> None:
    rec = json.loads(OUT.read_text())
    classes = list(rec["classes"])
    marks = [k for k in SNAPSHOTS if k <= rec["iters"]]
    n_chains = rec["chains"] * len(classes)
    lines = ["# Long chains: the ImageNet preset run 25 times longer", "",
             "Written by `benchmarks/long_chains.py report` from [long_chains.json](long_chains.json); what is "
             "measured and why: the script's docstring.", "",
             f"{rec['model']} sampled with the shipped `{rec['preset']}` preset ({rec['adapt_steps']} adaptation "
             f"iterations, then sampling) for {rec['iters']} iterations, {rec['chains']} chains per class, seed "
             f"{rec['seed']}; {rec['judge']} judges. {rec['device']}, torch {rec['torch']}, fp32, {rec['date']}; "
             "processes side by side on the two cores, so seconds compare only roughly.", "",
             "| class | iteration | mean f_y | R-hat (after adaptation) | R-hat (second half) | bulk ESS (second "
             "half) | judge's rank of the class per chain (0 = top-1) | s |", "|---|---|---|---|---|---|---|---|"]
    for c in classes:
        e = rec["classes"][c]
        for k in marks:
            s = e["snapshots"][str(k)]
            r = {w: L._num(s[w]["rhat_max"], ".2f") for w in ("after_adapt", "second_half")}
            lines.append(f"| {e['name']} ({c}) | {k} | {s['f_mean']:.1f} | {r['after_adapt']} | "
                         f"{r['second_half']} | {s['second_half']['ess_bulk_min']:.1f} | "
                         f"{', '.join(str(r) for r in s['judge_rank'])} | {s['seconds']:.0f} |")
    lines += ["", f"Top-5 by snapshot, over {n_chains} chains ({len(classes)} classes; Wilson 95% intervals, "
              "chains of one class are not independent, so these are narrower than they should be):", ""]
    for k in marks:
        hits = sum(r < 5 for c in classes for r in rec["classes"][c]["snapshots"][str(k)]["judge_rank"])
        lo, hi = L.wilson(hits, n_chains)
        lines.append(f"- iteration {k}: {hits} of {n_chains} ({100 * lo:.1f}-{100 * hi:.1f}%)")
    lines += ["", "Mean f_y over the chains every 10 iterations:", ""]
    for c in classes:
        tr = rec["classes"][c]["f_trace_every_10"]
        lines.append(f"- {rec['classes'][c]['name']}: " + ", ".join(f"{v:.0f}" for v in tr[::5]) +
                     " (every 50th iteration from the 10th)")
    lines += ["", "How far the chains move (RMS over the pixels of the normalised input): "
              "each chain from its own state at the first snapshot, and the two chains from each other:", ""]
    states = {c: {k: v.float() for k, v in torch.load(CACHE / f"{c}.pt").items()} for c in classes}
    for c in classes:
        kept = states[c]
        first = kept[marks[0]]
        moved = {k: (kept[k] - first).flatten(1).pow(2).mean(1).sqrt() for k in marks[1:]}  # per chain
        apart = [float((kept[k][0] - kept[k][1]).pow(2).mean().sqrt()) for k in (marks[0], marks[-1])]
        lines.append(f"- {rec['classes'][c]['name']}: moved " + ", ".join(
            f"{' / '.join(f'{v:.2f}' for v in m)} by {k}" for k, m in moved.items()) + " (per chain); chains 0 and 1 "
            "apart "
            f"{apart[0]:.2f} at {marks[0]}, {apart[1]:.2f} at {marks[-1]}; the states' own RMS "
            f"{first.pow(2).mean().sqrt():.2f}")
    acc = statistics.median(rec["classes"][c]["accept"] for c in classes)
    lines += ["", f"Median acceptance {acc:.2f}. Commands: " + "; ".join(f"`{c}`" for c in rec["commands"]) + ".",
              ""]
    _, info = L.load_imagenet(rec["model"], Path(args.weights))
    for c in classes:
        x = torch.stack([states[c][k] for k in marks], 1).flatten(0, 1)  # rows: chains, columns: snapshots
        path = ROOT / "docs" / "images" / f"long_chains_{c}.png"
        save_grid(x, info, path, nrow=len(marks), min_size=112, display="clip",
                  row_labels=[f"chain {i}" for i in range(rec["chains"])],
                  caption=f"{rec['model']} {rec['classes'][c]['name']}, {rec['preset']}: the state at iteration "
                          + ", ".join(str(k) for k in marks))
        lines += [f"![{rec['classes'][c]['name']}](../images/{path.name})", ""]
    (ROOT / "docs" / "results" / "long_chains.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--classes", type=int, nargs="+", required=True, help="ImageNet class indices")
    r.add_argument("--iters", type=int, default=1000)
    r.add_argument("--chains", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1)
    for q in (r, sub.add_parser("report")):
        q.add_argument("--weights", default=str(WEIGHTS), help="folder of the two ImageNet weight files")
    args = p.parse_args()
    {"run": cmd_run, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
