"""The paper's Table 1 protocol (section 4.1): LeNet on MNIST with DG, GG, GG+DG and auto, several seeds; and the same
protocol for any recipe (Fashion-MNIST, zoo models) and any set of arms (a mode plus settings).

Runs every (seed, arm) pair with the lenet_mnist recipe (or another, e.g. lenet_fashion_mnist, resnet18_mnist), one
JSON per run in docs/results/<name>/, then a summary: mean / std / 95% t interval / each seed's test error at the end
of training beside the paper's numbers, wall time, GG vs DG seconds per epoch, and for every arm the paired
difference to the baseline arm (DG by default) per seed with a 95% t interval, an exact sign test and a verdict that
the interval decides (better: the interval is below 0; worse: above 0; else not distinguishable at this n). Runs
already recorded are skipped, so the script resumes after an interruption. Plots (with matplotlib, the `bench`
extra): test error per epoch per arm, mean normalised ESS per epoch under GG.

    python benchmarks/mnist_table1.py --seeds 0 1 2 3 4 --device cuda --data-dir .data --jobs 8
    python benchmarks/mnist_table1.py --recipe lenet_fashion_mnist --name fashion_lenet --device cpu
    python benchmarks/mnist_table1.py --name mnist_switch --modes dg gg+dg auto \
        --arm ggdg-keep=mode:gg+dg,switch_reset:false

With --jobs N, N runs train at once in separate processes (one GPU can serve several small LeNet runs, which are
limited by kernel launches rather than arithmetic); each run's wall time is then measured under that sharing, and
the report says so.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from gencnn_plugin import load_config, train  # noqa: E402

PAPER = {"dg": 1.03, "gg": 0.85, "gg+dg": 0.78}  # Table 1, % test error
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def parse_arm(text: str) -> tuple[str, dict]:
    """``TAG=key:value,key:value`` (values parsed as YAML) -> (TAG, settings); a bare mode ``gg+dg`` -> ("ggdg",
    {"mode": "gg+dg"})."""
    if "=" not in text:
        return text.replace("+", ""), {"mode": text}
    tag, _, rest = text.partition("=")
    settings = {}
    for item in rest.split(","):
        key, _, value = item.partition(":")
        settings[key.strip()] = yaml.safe_load(value)
    return tag.strip(), settings


def run_one(recipe: str, tag: str, arm: dict, seed: int, args: argparse.Namespace, out: Path, command: str) -> str:
    """Train one (arm, seed) and write its record to ``out``; returns a line for the console."""
    import torch

    if args.jobs > 1:  # a worker process: share the host's cores among the concurrent runs
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))
    elif args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.runs) / out.name / f"{tag}-s{seed}"
    overrides = dict(seed=seed, device=args.device, data_dir=args.data_dir, out=str(run_dir), epochs=args.epochs,
                     switch_epoch=args.switch_epoch, train_subset=args.train_subset, **arm)
    if (run_dir / "train_state.pt").is_file():  # a run cut off earlier continues from its last epoch
        overrides["resume"] = str(run_dir)
    cfg = load_config(recipe, overrides)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{tag}-s{seed}.log", "a") as log:
        train(cfg, log=lambda msg: print(msg, file=log, flush=True), overwrite="resume" not in overrides, quiet=True)
    record = {**record_from_run(run_dir, command), "arm": tag, "arm_settings": arm}
    (out / f"{tag}-s{seed}.json").write_text(json.dumps(record, indent=1) + "\n")
    return f"{tag} seed {seed}: test error {100 * record['test_error']:.2f}% ({record['train_seconds']:.0f} s)"


def record_from_run(run_dir: Path, command: str) -> dict:
    """One run's record from its folder (summary.json, metrics.jsonl, config.yaml): summary + per-epoch history."""
    summary = json.loads((run_dir / "summary.json").read_text())
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    config = {k: v for k, v in yaml.safe_load((run_dir / "config.yaml").read_text()).items()
              if k not in ("out", "resume")}
    return {**summary, "history": history, "config": config, "command": command}


def paired(a: list[float], b: list[float]) -> dict:
    """Paired differences b - a: mean, std, 95% t interval, and an exact two-sided sign test."""
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    mean = statistics.fmean(d)
    sd = statistics.stdev(d) if n > 1 else float("nan")
    half = T975.get(n - 1, 1.96) * sd / math.sqrt(n) if n > 1 else float("nan")
    neg, pos = sum(x < 0 for x in d), sum(x > 0 for x in d)
    k, m = min(neg, pos), neg + pos
    p_sign = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m) if m else 1.0
    return {"diffs": d, "mean": mean, "std": sd, "ci95": [mean - half, mean + half], "t": mean / (sd / math.sqrt(n))
            if n > 1 and sd > 0 else float("nan"), "sign_test_p": p_sign, "n_better": neg, "n_worse": pos}


def arm_of(record: dict) -> str:
    """A record's arm: its tag, or (records of gencnn 0.1) its mode without '+'."""
    return record.get("arm") or record["mode"].replace("+", "")


def verdict(ci: list[float]) -> str:
    """What a 95% interval of (arm - baseline) test error supports."""
    if ci[1] < 0:
        return "better (interval below 0)"
    if ci[0] > 0:
        return "worse (interval above 0)"
    return "not distinguishable at this n (interval contains 0)"


def summarize(records: list[dict], arms: list[str], baseline: str = "dg") -> dict:
    by_arm = {a: sorted((r for r in records if arm_of(r) == a), key=lambda r: r["seed"]) for a in arms}
    table = {}
    paper_model = all(r["model"] == "timm:lenet_caffe" and r.get("dataset", "mnist") == "mnist" for r in records)
    for a, rs in by_arm.items():
        errs = [100 * r["test_error"] for r in rs]
        mode = rs[0]["mode"] if rs else None
        half = T975.get(len(errs) - 1, 1.96) * statistics.stdev(errs) / math.sqrt(len(errs)) if len(errs) > 1 else None
        mean = statistics.fmean(errs) if errs else None
        table[a] = {"mode": mode, "seeds": [r["seed"] for r in rs], "errors": errs, "mean": mean,
                    "std": statistics.stdev(errs) if len(errs) > 1 else None,
                    "ci95": [mean - half, mean + half] if half is not None else None,
                    "paper": PAPER.get(mode) if paper_model and rs and not rs[0].get("arm_settings", {}).keys() - {
                        "mode"} else None,
                    "wall_s": statistics.fmean([r["train_seconds"] for r in rs]) if rs else None,
                    "switched_at": [r["switched_at_epoch"] for r in rs]}
    err = {(arm_of(r), r["seed"]): 100 * r["test_error"] for r in records}
    comparisons = {}
    for a in arms:
        if a == baseline:
            continue
        common = sorted(set(table.get(baseline, {}).get("seeds", [])) & set(table.get(a, {}).get("seeds", [])))
        if len(common) >= 2:
            pr = paired([err[baseline, s_] for s_ in common], [err[a, s_] for s_ in common])
            comparisons[a] = {**pr, "seeds": common, "verdict": verdict(pr["ci95"])}
    gg_s = [h["seconds"] for r in records for h in r["history"] if h["phase"] == "gg"]
    dg_s = [h["seconds"] for r in records for h in r["history"] if h["phase"] == "dg"]
    common = comparisons.get("ggdg", {}).get("seeds", [])
    pair = comparisons.get("ggdg") if baseline == "dg" else None
    # GG vs DG seconds per epoch, paired: epoch k of the GG+DG run (GG phase) against epoch k of the DG run of the
    # same seed, so that both epochs saw the same device load when the two runs trained side by side.
    by_key = {(arm_of(r), r["seed"]): r for r in records}
    ratios = [g["seconds"] / d["seconds"] for s_ in common if ("dg", s_) in by_key
              for g, d in zip(by_key["ggdg", s_]["history"], by_key["dg", s_]["history"]) if g["phase"] == "gg"]
    return {"table": table, "baseline": baseline, "comparisons": comparisons, "paired_ggdg_minus_dg": pair,
            "seeds_paired": common,
            "epoch_ratio_paired": statistics.median(ratios) if ratios else None, "epoch_pairs": len(ratios),
            "gg_epoch_s": statistics.median(gg_s) if gg_s else None, "dg_epoch_s": statistics.median(dg_s) if dg_s
            else None}


def _auto_text(c: dict) -> str:
    if c.get("auto_rule", "ess") == "holdout":
        return (f"auto switches once the error on {c['holdout']} held-out training images (not trained on) has not "
                f"improved for {c['patience']} epochs, at most after {c['switch_epoch']}")
    return (f"auto switches once the epoch's mean ESS is below {c['ess_threshold']} or fell by less than "
            f"{c.get('ess_plateau')} (relative)")


def render(s: dict, records: list[dict], name: str, note: str | None = None) -> str:
    r0 = records[0]
    c = r0["config"]
    subset = f", first {c['train_subset']} training images only" if c.get("train_subset") else ""
    dataset = r0.get("dataset", "mnist")
    test_n = {"mnist": "10,000 MNIST", "fashion-mnist": "10,000 Fashion-MNIST"}.get(dataset, dataset)
    switch = ("the DG phase starts with a fresh optimizer" if c.get("switch_reset", False)
              else "the momentum carries over into DG")
    lines = [f"# {name}: the paper's Table 1 protocol", "",
             f"Model {r0['model']} on {dataset}, batch {c['batch_size']}, lr {c['lr']} ({c['lr_policy']}), momentum "
             f"{c['momentum']}, weight decay {c['weight_decay']}, {c['epochs']} epochs{subset}; GG+DG switches after "
             f"{c['switch_epoch']} epochs to lr {c['switch_lr']} ({switch}); {_auto_text(c)}. Test error on the "
             f"{test_n} test images at the end of training. Device: {r0['device']}; torch {r0['torch']}; gencnn "
             f"{r0.get('gencnn', '?')}; precision {r0.get('precision', 'fp32 (TF32 as PyTorch defaults)')}; trained "
             f"{r0.get('started', r0['date'])[:10]}.", "",
             f"{len(records)} runs recorded; an arm with fewer seeds is incomplete, and each paired comparison uses "
             "only the seeds both arms have. Intervals are 95% t intervals over seeds (n = seeds).", "",
             f"Command: `{r0['command']}`", ""]
    if note is not None:
        lines += [note.strip(), ""]
    lines += ["| arm | settings | seeds | mean % (95% interval) | std | per seed | paper % | wall s/run "
              "| switched at |", "|---|---|---:|---|---:|---|---:|---:|---|"]
    settings = {arm_of(r): r.get("arm_settings") or {"mode": r["mode"]} for r in records}
    for a, t in s["table"].items():
        if not t["errors"]:
            continue
        per = ", ".join(f"{e:.2f}" for e in t["errors"])
        ci = f" ({t['ci95'][0]:.3f} .. {t['ci95'][1]:.3f})" if t["ci95"] else ""
        shown = ", ".join(f"{k} {v}" for k, v in settings.get(a, {}).items())
        lines.append(f"| {a} | {shown} | {len(t['errors'])} | {t['mean']:.3f}{ci} | {t['std'] or float('nan'):.3f} | "
                     f"{per} | {t['paper'] if t['paper'] is not None else '-'} | {t['wall_s']:.0f} | "
                     f"{', '.join(str(x) for x in t['switched_at'])} |")
    if s.get("comparisons"):
        lines += ["", f"Paired against {s['baseline']} (arm minus {s['baseline']}, test error points, same seed):", "",
                  "| arm | n | mean difference | 95% t interval | better / worse seeds | sign test p | verdict |",
                  "|---|---:|---:|---|---|---:|---|"]
        for a, pr in s["comparisons"].items():
            lines.append(f"| {a} | {len(pr['seeds'])} | {pr['mean']:+.3f} | {pr['ci95'][0]:+.3f} .. "
                         f"{pr['ci95'][1]:+.3f} | {pr['n_better']} / {pr['n_worse']} | {pr['sign_test_p']:.3f} | "
                         f"{pr['verdict']} |")
    if s["gg_epoch_s"] and s["dg_epoch_s"]:
        lines += ["", f"Median seconds per epoch over all runs: GG {s['gg_epoch_s']:.2f}, DG {s['dg_epoch_s']:.2f} "
                      f"(ratio {s['gg_epoch_s'] / s['dg_epoch_s']:.3f})."]
    if s.get("epoch_ratio_paired"):
        lines += ["", f"GG/DG seconds per epoch paired by seed and epoch (GG epochs of GG+DG against the same epochs "
                      f"of DG): median ratio {s['epoch_ratio_paired']:.3f} over {s['epoch_pairs']} pairs. Epoch "
                      "times include the trainer's logging of both losses and the ESS each step; the isolated "
                      "step cost is in [gg_dg_step_cost.md](gg_dg_step_cost.md)."]
    lines += ["", f"![test error per epoch](../images/{name}_test_error.png)",
              f"![ESS under GG](../images/{name}_ess.png)"]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], arms: list[str], images: Path, name: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plots")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for a in arms:
        hs = [r["history"] for r in records if arm_of(r) == a]
        if hs:
            n = min(len(h) for h in hs)
            mean_err = [100 * statistics.fmean(h[e]["test_error"] for h in hs) for e in range(n)]
            ax.plot(range(1, n + 1), mean_err, label=a)
    ax.set(xlabel="epoch", ylabel="test error % (mean over seeds)", yscale="log")
    ax.legend()
    fig.savefig(images / f"{name}_test_error.png", dpi=120, bbox_inches="tight")
    fig, ax = plt.subplots(figsize=(6, 4))
    hs = [r["history"] for r in records if r["mode"] == "gg"] or [
        [h for h in r["history"] if h["phase"] == "gg"] for r in records if r["mode"] in ("gg+dg", "auto")]
    if hs and min(map(len, hs)):
        n = min(len(h) for h in hs)
        ax.plot(range(1, n + 1), [statistics.fmean(h[e]["mean_ess"] for h in hs) for e in range(n)])
    ax.set(xlabel="epoch", ylabel="mean normalised ESS under GG")
    fig.savefig(images / f"{name}_ess.png", dpi=120, bbox_inches="tight")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="lenet_mnist")
    p.add_argument("--modes", nargs="+", default=["dg", "gg", "gg+dg", "auto"], help="arms that are plain modes")
    p.add_argument("--arm", action="append", default=[], metavar="TAG=KEY:VALUE,...",
                   help="an arm with settings, e.g. ggdg-keep=mode:gg+dg,switch_reset:false (repeatable)")
    p.add_argument("--baseline", default="dg", help="the arm every other is compared with")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per run (--jobs 1)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=None, help="override the recipe (smoke runs only)")
    p.add_argument("--switch-epoch", type=int, default=None, help="override the recipe (smoke runs only)")
    p.add_argument("--train-subset", type=int, default=None, help="smoke runs only")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--runs", default=str(REPO / "runs"), help="where the run folders go")
    p.add_argument("--name", default=None, help="results folder name (default: mnist_table1 or <recipe>_table1)")
    p.add_argument("--jobs", type=int, default=1, help="runs to train at once, each in its own process")
    p.add_argument("--collect", default=None, metavar="DIR",
                   help="record the finished runs found in DIR/<mode>-s<seed>/ (trained elsewhere), then report")
    p.add_argument("--command", default=None, help="with --collect: the command that trained the runs")
    p.add_argument("--report-only", action="store_true", help="summarise the runs recorded so far, train nothing")
    args = p.parse_args(argv)
    name = args.name or ("mnist_table1" if args.recipe == "lenet_mnist" else f"{args.recipe}_table1")
    out = REPO / "docs" / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(sys.argv)
    if args.collect:
        for run_dir in sorted(p for p in Path(args.collect).iterdir() if (p / "summary.json").is_file()):
            (out / f"{run_dir.name}.json").write_text(json.dumps(record_from_run(run_dir, args.command or command),
                                                                  indent=1) + "\n")
        args.report_only = True
    arms = dict(parse_arm(m) for m in args.modes)
    arms.update(parse_arm(a) for a in args.arm)
    # seed-major, so that an interrupted protocol has every arm of its first seeds
    todo = [(seed, tag) for seed in ([] if args.report_only else args.seeds) for tag in arms
            if not (out / f"{tag}-s{seed}.json").is_file()]
    if args.jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_one, args.recipe, t, arms[t], s, args, out, command) for s, t in todo]
            for f in futures:
                print(f.result(), flush=True)
    else:
        for seed, tag in todo:
            print(run_one(args.recipe, tag, arms[tag], seed, args, out, command), flush=True)
    records = [json.loads(f.read_text()) for f in sorted(out.glob("*-s*.json"))]
    if not records:
        sys.exit(f"no runs recorded in {out}")
    s = summarize(records, list(arms), args.baseline)
    (out / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    plot(records, list(arms), REPO / "docs" / "images", name)
    note = out / "NOTE.md"  # hand-written context (how the runs shared the device, etc.), kept across reports
    (REPO / "docs" / "results" / f"{name}.md").write_text(render(s, records, name,
                                                                 note.read_text() if note.is_file() else None))


if __name__ == "__main__":
    main()
