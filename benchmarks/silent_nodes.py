"""Silent nodes: do the ``imagenet_legible`` chains of a channel's unit leave the reference when the unit is 0 at the
draws of q they start from?

A channel's centre unit (the node string ``LAYER:C``, what the app and ``gencnn sample`` take by default) sits behind
a ReLU and is 0 at most draws of the preset's reference in SqueezeNet 1.1's deeper Fire modules. There d f / d x = 0,
so unless the warm start's random views happen to wake it, nothing moves the image towards the node: HMC moves the
chain by q alone, its picture is mostly the reference's fog, and R-hat flags the node only when another chain
escaped. This benchmark draws channels at random
from each layer (seeded) and runs the shipped preset on each unit twice from the same starting states: with the
warm start's ordinary ReLU gradient (``warm_redirect`` off, the preset until 2026-11-25) and with Lucid's
redirected ReLU gradient (on, ``gencnn_plugin.redirect``). It records, per chain, whether the node's score is 0
at the draw of q (the sampled score: the 4-shift average of the clipped pixels) and at the chain's end, the score
at the first and last iteration, R-hat and the wall time.

    GENCNN_DATA=../shared/data python benchmarks/silent_nodes.py run --threads 1 --part 0/2   # beside --part 1/2
    python benchmarks/silent_nodes.py report
    # -> docs/results/silent_nodes.json (resumes; parts run side by side), docs/results/silent_nodes.md and a grid
    #    per arm in docs/images
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import legibility as L  # noqa: E402
from _common import device_name  # noqa: E402

from gencnn_plugin import load_preset, node_score, open_model, sample_node  # noqa: E402
from gencnn_plugin.nodes import list_layers  # noqa: E402
from gencnn_plugin.redirect import RedirectedClamp  # noqa: E402
from gencnn_plugin.reference import initial_z, make_reference  # noqa: E402
from gencnn_plugin.visualize import save_grid, score_view, warm_start, warm_view  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "silent_nodes.json"
CACHE = ROOT / "runs" / "silent_nodes"
WEIGHTS = ROOT.parent / "shared" / "weights" / "squeezenet1_1_imagenet.safetensors"
ARMS = {"plain": False, "redirect": True}  # HMCConfig.warm_redirect


def draw_nodes(model, info, layers: list[str], per_layer: int, seed: int) -> list[str]:
    """``per_layer`` channels of each layer, drawn without replacement (seeded): their centre units."""
    shapes = {li.name: li.shape for li in list_layers(model, info)}
    g = torch.Generator().manual_seed(seed)
    return [f"{layer}:{int(c)}" for layer in layers for c in torch.randperm(shapes[layer][0], generator=g)[:per_layer]]


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model, info = open_model(args.model, weights=args.weights)
    nodes = draw_nodes(model, info, args.layers, args.per_layer, args.seed)
    k, n = (int(v) for v in args.part.split("/"))
    mine = nodes[k::n]
    base = replace(load_preset("imagenet_legible"), chains=args.chains)
    CACHE.mkdir(parents=True, exist_ok=True)
    for node in mine:
        done = json.loads(OUT.read_text()).get("nodes", {}).get(node, {}) if OUT.exists() else {}
        for arm, redirect in ARMS.items():
            if arm in done:
                continue
            cfg = replace(base, warm_redirect=redirect)
            with torch.no_grad():  # the sampled score at the chains' starting states (sample_node draws the same z0)
                ref = make_reference(cfg.reference, info, cfg.sigma)
                x0 = ref.to_x(initial_z(ref, cfg.chains, cfg.seed))
                f0 = score_view(node_score(model, info, node), info, cfg)(x0)
            t0 = time.perf_counter()
            run = sample_node(model, info, node, cfg)
            seconds = time.perf_counter() - t0
            scores = run.result.trace["score"]
            entry = {"silent_at_draw": (f0 == 0).tolist(), "first_scores": scores[0].tolist(),
                     "final_scores": scores[-1].tolist(), "silent_at_end": (scores[-1] == 0).tolist(),
                     "rhat": run.result.summary["rhat"], "accept": run.result.summary["accept_rate"],
                     "seconds": seconds}
            torch.save(run.result.x.half(), CACHE / f"{arm}_{node.replace(':', '_')}.pt")

            def add(disk: dict | None, node=node, arm=arm, entry=entry) -> dict:
                rec = disk or {"model": args.model, "preset": "imagenet_legible", "chains": args.chains,
                               "layers": args.layers, "per_layer": args.per_layer, "seed": args.seed,
                               "device": f"cpu: {device_name(torch.device('cpu'))} ({args.threads} threads)",
                               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "nodes": {},
                               "commands": []}
                rec["nodes"].setdefault(node, {})[arm] = entry
                rec["commands"] = list(dict.fromkeys(rec["commands"] + [" ".join(["python", *sys.argv])]))
                return rec

            L.update_json(OUT, add)
            print(f"{node} {arm}: silent at the draw {entry['silent_at_draw']}, final {entry['final_scores']}, "
                  f"R-hat {entry['rhat']:.2f}, {seconds:.0f} s", flush=True)


def cmd_census(args: argparse.Namespace) -> None:
    """How many channels of each layer are silent at draws of the preset's reference: the centre unit (``LAYER:C``)
    or the channel's mean (``LAYER:C,mean``) exactly 0 at every one of ``--draws`` draws, and at any."""
    torch.set_num_threads(args.threads)
    model, info = open_model(args.model, weights=args.weights)
    cfg = load_preset("imagenet_legible")
    ref = make_reference(cfg.reference, info, cfg.sigma)
    x = ref.to_x(initial_z(ref, args.draws, args.seed))
    modules, outs = dict(model.named_modules()), {}
    hooks = [modules[name].register_forward_hook(lambda m, i, o, name=name: outs.__setitem__(name, o.detach().clone()))
             for name in args.layers]  # copied: a later in-place ReLU would overwrite a module's output
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    census = {}
    for name in args.layers:
        o = outs[name]
        centre = o[:, :, o.shape[2] // 2, o.shape[3] // 2] == 0
        mean = o.mean((2, 3)) == 0
        census[name] = {"channels": o.shape[1], "centre_zero_all": int(centre.all(0).sum()),
                        "centre_zero_any": int(centre.any(0).sum()), "mean_zero_all": int(mean.all(0).sum()),
                        "mean_zero_any": int(mean.any(0).sum())}
        print(name, census[name], flush=True)

    def add(disk: dict | None) -> dict:
        rec = disk or {"nodes": {}, "commands": []}
        rec["census"] = {"draws": args.draws, "seed": args.seed, "layers": census}
        rec["commands"] = list(dict.fromkeys(rec["commands"] + [" ".join(["python", *sys.argv])]))
        return rec

    L.update_json(OUT, add)


@contextmanager
def counted_redirects(n: int) -> Iterator[torch.Tensor]:
    """Within the block, count per row of an ``n``-row batch the ReLU backward calls whose redirected gradient
    differs from the ordinary one (``gencnn_plugin.redirect``): where the count stays 0, the redirected warm start
    is the ordinary one, bit for bit."""
    rows = torch.zeros(n, dtype=torch.long)
    ordinary, saved = RedirectedClamp.backward, vars(RedirectedClamp)["backward"]

    def counted(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        blocked = out <= 0 if ctx.upper is None else (out <= 0) | (out >= ctx.upper)
        got = ordinary(ctx, grad)
        plain = torch.where(blocked, 0.0, grad)
        same = (got[0] == plain) | (got[0].isnan() & plain.isnan())
        rows.add_((~same).reshape(n, -1).any(1).cpu())
        return got

    RedirectedClamp.backward = staticmethod(counted)
    try:
        yield rows
    finally:
        RedirectedClamp.backward = saved


def cmd_classes(args: argparse.Namespace) -> None:
    """Class nodes with the preset's warm start, seeded as ``legibility.py imagenet`` seeds them (seed 0 + class):
    at how many ReLU backward calls did the redirect change a chain's gradient? Where never, the warm start is the
    one the legibility records (run before the redirect) ran, bit for bit, so they measure today's preset there."""
    torch.set_num_threads(args.threads)
    model, info = open_model(args.model, weights=args.weights)
    st = L.IMAGENET_SETTINGS[L.IMAGENET_PRESET_SETTING]
    for c in args.classes:
        cfg = replace(L.score_config(st, c), warm_start=args.steps, warm_redirect=True)
        ref = make_reference(st.reference, info, sigma=st.sigma)
        fn = warm_view(node_score(model, info, [f"logits:{c}"]), info, cfg)
        t0 = time.perf_counter()
        with counted_redirects(args.chains) as rows:
            warm_start(fn, ref, initial_z(ref, args.chains, c), cfg, lr=st.warm_lr)
        entry = {"steps": args.steps, "redirected_calls": rows.tolist(), "seconds": time.perf_counter() - t0}

        def add(disk: dict | None, c=c, entry=entry) -> dict:
            rec = disk or {"nodes": {}, "commands": []}
            rec.setdefault("class_nodes", {})[str(c)] = entry
            rec["commands"] = list(dict.fromkeys(rec["commands"] + [" ".join(["python", *sys.argv])]))
            return rec

        L.update_json(OUT, add)
        print(f"class {c}: redirected ReLU backward calls per chain {entry['redirected_calls']} in {args.steps} "
              f"steps, {entry['seconds']:.0f} s", flush=True)


def _share(rows: list[list[bool]]) -> str:
    """k of n chains with the Wilson interval and the interval of a bootstrap over nodes."""
    hits = torch.tensor([float(v) for r in rows for v in r])
    groups = torch.tensor([i for i, r in enumerate(rows) for _ in r])
    p = L.proportion(hits, groups)
    lo, hi = min(p["wilson"][0], p["boot"][0]), max(p["wilson"][1], p["boot"][1])
    return f"{p['k']} of {p['n']}, {100 * p['p']:.1f}% ({100 * lo:.1f}-{100 * hi:.1f}%)"


def cmd_report(args: argparse.Namespace) -> None:
    rec = json.loads(OUT.read_text())
    model, info = open_model(rec["model"], weights=args.weights)
    nodes = [n for n in draw_nodes(model, info, rec["layers"], rec["per_layer"], rec["seed"])
             if all(a in rec["nodes"].get(n, {}) for a in ARMS)]
    lines = ["# Silent nodes: channel units that are 0 where the chains start", "",
             "Written by `benchmarks/silent_nodes.py report` from [silent_nodes.json](silent_nodes.json); what is "
             "measured and why: the script's docstring.", ""]
    if "census" in rec:
        cen = rec["census"]
        lines += [f"**How often a node is silent** at {cen['draws']} draws of the preset's reference (seed "
                  f"{cen['seed']}; `silent_nodes.py census`): channels whose centre unit / mean is exactly 0",
                  "", "| layer | channels | centre unit 0 at every draw | at some draw | mean 0 at every draw | "
                  "at some draw |", "|---|---|---|---|---|---|"]
        lines += [f"| `{k}` | {v['channels']} | {v['centre_zero_all']} | {v['centre_zero_any']} | "
                  f"{v['mean_zero_all']} | {v['mean_zero_any']} |" for k, v in cen["layers"].items()]
        lines.append("")
    lines += ["**The preset with and without the redirect**, on the same starting states: "
              f"{rec['model']} with the `{rec['preset']}` preset, {rec['chains']} chains per node, the centre units "
              f"of {rec['per_layer']} channels drawn at random (seed {rec['seed']}) from each of "
              f"{', '.join(rec['layers'])}; {rec['device']}, two processes side by side with other work on the two "
              f"cores (so the seconds compare only roughly), torch {rec['torch']}, fp32, {rec['date']}.", "",
             "| node | silent at the draw | plain: final f per chain | redirect: final f per chain | R-hat plain / "
             "redirect | s plain / redirect |", "|---|---|---|---|---|---|"]
    for n in nodes:
        a, b = rec["nodes"][n]["plain"], rec["nodes"][n]["redirect"]
        lines.append(f"| `{n}` | {sum(a['silent_at_draw'])} of {len(a['silent_at_draw'])} | "
                     f"{', '.join(f'{v:.1f}' for v in a['final_scores'])} | "
                     f"{', '.join(f'{v:.1f}' for v in b['final_scores'])} | {a['rhat']:.2f} / {b['rhat']:.2f} | "
                     f"{a['seconds']:.0f} / {b['seconds']:.0f} |")
    lines += ["", "Chains whose node is 0 (95% interval: the wider of Wilson's over chains and a bootstrap over "
              "nodes):", ""]
    for label, key, arm in (("at the draw of q", "silent_at_draw", "plain"),
                            ("at the end, plain warm start", "silent_at_end", "plain"),
                            ("at the end, redirected warm start", "silent_at_end", "redirect")):
        lines.append(f"- {label}: {_share([rec['nodes'][n][arm][key] for n in nodes])}")
    def silent(n: str, arm: str) -> float:
        v = rec["nodes"][n][arm]["silent_at_end"]
        return sum(v) / len(v)

    diff = [silent(n, "plain") - silent(n, "redirect") for n in nodes]
    rng = random.Random(0)
    boots = sorted(statistics.mean(rng.choices(diff, k=len(diff))) for _ in range(4000))
    up, down = sum(d > 0 for d in diff), sum(d < 0 for d in diff)
    sign_p = min(1.0, 2 * sum(math.comb(up + down, i) for i in range(min(up, down) + 1)) / 2 ** (up + down)) \
        if up + down else 1.0
    lines.append(f"- plain minus redirected, paired by node: {100 * statistics.mean(diff):+.1f} points "
                 f"({100 * boots[99]:+.1f} .. {100 * boots[3899]:+.1f}, percentile bootstrap over {len(nodes)} "
                 f"nodes); the nodes that differ: {up} with more silent chains without the redirect, {down} with "
                 f"fewer (two-sided sign test over nodes, p = {sign_p:.3f})")
    if rec.get("class_nodes"):
        cls = rec["class_nodes"]
        calls = [v for e in cls.values() for v in e["redirected_calls"]]
        steps = next(iter(cls.values()))["steps"]
        lines += ["", f"**Class nodes** (`silent_nodes.py classes`): the preset's warm start ({steps} steps, "
                  f"redirect on, seeded as `legibility.py imagenet` seeds it) on {len(cls)} classes "
                  f"x {len(calls) // len(cls)} chains: the redirect changed a chain's gradient in "
                  f"{sum(v > 0 for v in calls)} of {len(calls)} chains ({sum(calls)} ReLU backward calls in all). "
                  "Where it changed none, the warm start is the one the legibility records ran before the redirect "
                  f"existed, bit for bit. Classes: {' '.join(cls)}."]
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in rec["commands"]) + "."]
    secs = {arm: statistics.median(rec["nodes"][n][arm]["seconds"] for n in nodes) for arm in ARMS}
    lines += ["", f"Median wall time per node: plain {secs['plain']:.0f} s, redirect {secs['redirect']:.0f} s.", ""]
    for arm in ARMS:
        x = torch.cat([torch.load(CACHE / f"{arm}_{n.replace(':', '_')}.pt").float() for n in nodes])
        path = ROOT / "docs" / "images" / f"silent_nodes_{arm}.png"
        save_grid(x, info, path, nrow=rec["chains"], min_size=112, display="clip", row_labels=nodes,
                  caption=f"{rec['model']}, imagenet_legible, final samples, warm start {arm} "
                          f"(warm_redirect {ARMS[arm]})")
        lines += [f"![{arm}](../images/{path.name})", ""]
    (ROOT / "docs" / "results" / "silent_nodes.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", default="tv:squeezenet1_1")
    r.add_argument("--layers", nargs="+", default=["features.7", "features.9", "features.12"])
    r.add_argument("--per-layer", type=int, default=4)
    r.add_argument("--seed", type=int, default=0, help="of the channel draw")
    r.add_argument("--chains", type=int, default=2)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--part", default="0/1", help="K/N: this process runs every N-th node from the K-th")
    c = sub.add_parser("classes", help=cmd_classes.__doc__.split("\n")[0])
    c.add_argument("--model", default="tv:squeezenet1_1")
    c.add_argument("--classes", type=int, nargs="+", required=True)
    c.add_argument("--steps", type=int, default=600, help="warm-start steps to replay (the preset's 600)")
    c.add_argument("--chains", type=int, default=2)
    c.add_argument("--threads", type=int, default=1)
    e = sub.add_parser("census", help=cmd_census.__doc__.split("\n")[0])
    e.add_argument("--model", default="tv:squeezenet1_1")
    e.add_argument("--layers", nargs="+", default=["features.3", "features.5", "features.7", "features.9",
                                                   "features.12"])
    e.add_argument("--draws", type=int, default=8)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, default=1)
    for q in (r, c, e, sub.add_parser("report")):
        q.add_argument("--weights", default=str(WEIGHTS))
    args = p.parse_args()
    {"run": cmd_run, "census": cmd_census, "classes": cmd_classes, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
