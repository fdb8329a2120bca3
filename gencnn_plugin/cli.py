"""``gencnn``: argparse subcommands over the Python API (train, eval, models, nodes, sample, export). No logic here.

Flags of settings are generated from their dataclasses (:class:`TrainConfig`, :class:`HMCConfig`). Errors a user can
fix print one line and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if "torch" not in sys.modules:  # OpenMP reads its wait policy once, when torch loads; spinning threads that share a
    # core with any other process slow everything 6-15x, passive ones cost 0-41% on an idle machine
    # (docs/results/threads.md); a value the user set wins
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import yaml

from .config import HMC_PRESET_DIR, ConfigError, TrainConfig, list_configs
from .hmc import HMCConfig
from .settings import add_flags, given

__all__ = ["main", "build_parser"]

MODEL_HELP = "checkpoint (.safetensors or run folder) or model spec (lenet, timm:NAME, tv:NAME)"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _common(p: argparse.ArgumentParser, quiet: bool = True) -> None:
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: $GENCNN_THREADS, else torch's choice)")
    if quiet:
        p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a classifier with DG, GG, GG+DG or auto", formatter_class=_Formatter,
        description="Train from a recipe (a name in zoo_configs/ or a YAML path); flags override the recipe.",
        epilog=f"recipes: {', '.join(list_configs())}\n"
               "example: gencnn train lenet_mnist --mode gg+dg --data-dir ../shared/data")
    p.add_argument("config", nargs="?", help="recipe name or YAML path (optional with --resume: the run's own)")
    o = p.add_argument_group("settings (default: the recipe's value)")
    add_flags(o, TrainConfig)
    o.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="architecture option for the model constructor, value parsed as YAML (e.g. drop_rate=0.1)")
    o.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, value parsed as YAML (repeatable; null sets None)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="unpickle a .pt/.pth --weights file fully: only for files you trust (it can run code)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in the --out folder")
    p.add_argument("--nproc", type=int, help="train with DDP in this many processes on this machine (torchrun)")
    _common(p)
    p.set_defaults(func=_cmd_train)


def _key_values(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except (yaml.YAMLError, RecursionError) as e:
            raise ConfigError(f"{flag} {key.strip()}: the value is not valid YAML "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return out


def _cmd_train(args) -> int:
    from .config import load_config
    from .trainer import train

    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc and args.nproc > 1 and "RANK" not in os.environ:  # relaunch ourselves under torchrun
        import subprocess

        argv, skip = [], False
        for a in args.argv:
            if skip or a == "--nproc" or a.startswith("--nproc="):
                skip = a == "--nproc"
                continue
            argv.append(a)
        return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                f"--nproc_per_node={args.nproc}", "-m", "gencnn_plugin", *argv])
    explicit = _key_values(args.set, "--set")
    if args.model_arg:
        explicit["model_kwargs"] = {**explicit.get("model_kwargs", {}), **_key_values(args.model_arg, "--model-arg")}
    config = args.config
    if config is None:
        if not args.resume:
            raise ConfigError("give a recipe (e.g. lenet_mnist) or --resume RUN")
        run = Path(args.resume)
        config = (run.parent if run.is_file() else run) / "config.yaml"
        if not config.is_file():
            raise ConfigError(f"--resume {args.resume}: no run there ({config} does not exist)")
    cfg = load_config(config, given(args, TrainConfig), explicit=explicit)
    if cfg.mode == "gg+dg" and "epochs" in given(args, TrainConfig) and cfg.switch_epoch > cfg.epochs:
        raise ConfigError(f"--epochs {cfg.epochs} ends before the switch to DG after {cfg.switch_epoch} GG epochs; "
                          "also lower --switch-epoch")
    _threads(args)
    summary = train(cfg, log=(lambda m: None) if args.quiet else _print, trust_pickle=args.trust_pickle,
                    overwrite=args.overwrite, quiet=args.quiet)
    if args.quiet and summary.get("test_error") is not None:
        print(f"done: test error {100 * summary['test_error']:.2f}% after {cfg.epochs} epochs ({cfg.mode}); "
              f"{summary['run_dir']}")
    return 0


def _print(msg: str) -> None:
    print(msg, flush=True)


def _threads(args) -> None:
    from .runtime import set_threads

    set_threads(getattr(args, "threads", None))


def _add_model_source(p, spec_options: bool = True) -> None:
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--weights", metavar="FILE", help="local weights for a model spec (safetensors or a weights-only "
                                                     "state dict)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="unpickle a .pt/.pth weights file fully: only for files you trust (it can run code)")
    if spec_options:
        p.add_argument("--num-classes", type=int, help="for a model spec")
        p.add_argument("--mean", type=float, nargs="+", help="input mean for a model spec (default: the model's)")
        p.add_argument("--std", type=float, nargs="+", help="input std for a model spec")
        p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="architecture option for a model spec, value parsed as YAML (e.g. pad_type=same)")


def _open(args, device="cpu"):
    """The model and its info for a MODEL argument; warns when a spec runs with random weights."""
    from .checkpoint import open_model
    from .specs import check_model_kwargs

    kwargs = check_model_kwargs(_key_values(getattr(args, "model_arg", []), "--model-arg"), "--model-arg")
    if getattr(args, "num_classes", None) is not None:
        kwargs["num_classes"] = args.num_classes
    if getattr(args, "mean", None):
        kwargs["mean"] = tuple(args.mean)
    if getattr(args, "std", None):
        kwargs["std"] = tuple(args.std)
    if args.trust_pickle:
        kwargs["trust_pickle"] = True
    model, info = open_model(args.model, weights=args.weights, device=device, **kwargs)
    if args.weights is None and not Path(args.model).exists():
        args.notes.append(f"{info.model} has no trained weights here (random initialisation); pass --weights FILE "
                          "or a checkpoint")
    return model, info


def _add_eval(sub) -> None:
    from .data import DATASETS

    p = sub.add_parser("eval", help="test error of a checkpoint", formatter_class=_Formatter,
                       description="Evaluate a checkpoint (or run folder) on the test split of its dataset.")
    _add_model_source(p, spec_options=False)
    p.add_argument("--dataset", choices=DATASETS, help="override the dataset recorded in the checkpoint")
    p.add_argument("--data-dir", help="dataset folder (default: $GENCNN_DATA)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--batch-size", type=int, default=1000, help="(default: 1000)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _common(p, quiet=False)
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from .checkpoint import load_checkpoint, resolve_checkpoint
    from .data import make_loader
    from .runtime import resolve_device
    from .schedule import MODES
    from .trainer import evaluate

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    _threads(args)
    device = resolve_device(args.device)
    if args.weights is None and Path(args.model).exists():
        path = resolve_checkpoint(args.model)
        model, info, meta = load_checkpoint(path, device)
    else:  # a spec and its weights: no metadata, so the dataset is --dataset (default mnist)
        path = args.model
        model, info = _open(args, device)
        meta = {}
    from .data import DATASETS

    recorded = meta.get("dataset")  # metadata is data: checked before it is used, and it never names a folder
    if args.dataset is None and recorded is not None and recorded not in DATASETS:
        raise ConfigError(f"the checkpoint records dataset {str(recorded)[:40]!r}, not one of {', '.join(DATASETS)}; "
                          "pass --dataset")
    dataset = args.dataset or recorded or "mnist"
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    seed = config.get("seed", 0)
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32 else 0
    if dataset == "imagefolder" and not args.data_dir:
        raise ConfigError("an image-folder checkpoint: pass --data-dir FOLDER (with train/ and val/); the folder a "
                          "checkpoint was trained on is not read from its metadata")
    loader = make_loader(dataset, args.data_dir, "test", info.input_size, info.mean, info.std, device,
                         args.batch_size, num_classes=info.num_classes, seed=seed if dataset == "synthetic" else 0,
                         workers=2, classes=info.class_names if dataset == "imagefolder" else None)
    result = evaluate(model, loader, device)
    mode = meta.get("mode") if meta.get("mode") in MODES else None
    epoch = meta.get("epoch") if isinstance(meta.get("epoch"), int) and not isinstance(meta.get("epoch"), bool) \
        else None
    out = {"checkpoint": str(path), "model": info.model, "dataset": dataset, "mode": mode, "epoch": epoch,
           "test_error": result["error"], "test_loss": result["loss"], "n": result["n"]}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{path}: {info.model} ({out['mode']}, epoch {out['epoch']}) on {dataset} test ({result['n']} images): "
              f"error {100 * result['error']:.2f}%, loss {result['loss']:.4f}")
    return 0


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list model specs", formatter_class=_Formatter,
                       description="List the model specs create_model accepts (aliases, timm:<name>, tv:<name>).")
    p.add_argument("pattern", nargs="?", default="*", help="glob on the model name, e.g. '*resnet*' (default: all)")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args) -> int:
    from .specs import list_specs

    specs = list_specs(args.pattern)
    if not specs:
        print(f"gencnn models: no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    print("\n".join(specs))
    return 0


def _add_nodes(sub) -> None:
    p = sub.add_parser("nodes", help="list the layers and nodes that can be sampled", formatter_class=_Formatter,
                       description="List every addressable layer: module path, type, output shape, node count.")
    _add_model_source(p)
    p.add_argument("--classes", action="store_true", help="print every class name of the output layer")
    p.add_argument("--json", action="store_true", help="print JSON")
    _common(p, quiet=False)
    p.set_defaults(func=_cmd_nodes)


def _fmt(values) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


def _cmd_nodes(args) -> int:
    from .nodes import list_layers

    _threads(args)
    model, info = _open(args)
    layers = list_layers(model, info)
    if args.json:
        print(json.dumps({"model": info.to_dict(), "layers": [vars(li) for li in layers]}))
        return 0
    print(f"{info.model}: input {'x'.join(map(str, info.input_size))}, mean {_fmt(info.mean)}, std {_fmt(info.std)}, "
          f"{info.num_classes} classes")
    width = max(len(li.name) for li in layers)
    print(f"{'layer'.ljust(width)}  {'type':<22} {'output shape':<18} nodes")
    for li in layers:
        print(f"{li.name.ljust(width)}  {li.type:<22} {'x'.join(map(str, li.shape)):<18} {li.num_nodes}")
    names = info.class_names
    if args.classes:
        print("\n".join(f"logits:{i}  {n}" for i, n in enumerate(names)))
    else:
        shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:10]))
        print(f"classes (logits:K or a name): {shown}{', ...' if len(names) > 10 else ''}"
              f"{' (--classes lists all)' if len(names) > 10 else ''}")
    print("node syntax: logits:K | CLASS NAME | LAYER:C (centre) | LAYER:C,Y,X | LAYER:C,mean | LAYER:D[,T]")
    return 0


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample", help="draw images of a node by HMC", formatter_class=_Formatter,
        description="Sample p_y(x) ~ exp(f_y(x)) q(x) for a node y by Hamiltonian Monte Carlo (paper section 3.4) "
                    "and write an image grid.",
        epilog=f"presets: {', '.join(list_configs(HMC_PRESET_DIR))}\n"
               "example: gencnn sample runs/lenet --node logits:3 --chains 16 --out three.png")
    _add_model_source(p)
    p.add_argument("--node", action="append", required=True,
                   help="node string (repeat for several nodes of one layer: one grid row group each)")
    p.add_argument("--preset", help="HMC preset name or YAML path (default: the one that suits the model's input)")
    h = p.add_argument_group("sampler (default: the preset's value)")
    add_flags(h, HMCConfig, help_suffix=" in HMCConfig; presets set their own")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--devices", help="split the chains over these devices, comma-separated (e.g. cuda:0,cuda:1); "
                                     "the samples equal a one-device run's")
    p.add_argument("--out", default="samples.png", help="PNG grid (default: samples.png)")
    p.add_argument("--npz", help="also write samples, pixels and per-iteration diagnostics here")
    p.add_argument("--nrow", type=int, help="images per grid row (default: one row per node; for one node a square "
                                            "layout, as the desktop app shows it)")
    p.add_argument("--display", choices=["range", "clip"], default=None,
                   help="grid images: each rescaled to its own range, or de-normalised pixels clipped to [0, 1] "
                        "(default: clip for a fitted reference or with --clip, range for white)")
    p.add_argument("--min-size", type=int, default=56, help="upscale small images to at least this many pixels "
                                                            "(default: 56)")
    p.add_argument("--no-caption", action="store_true", help="the grid alone, without the caption under it")
    p.add_argument("--show", choices=["both", "sample", "mean"], default="both",
                   help="each chain's final sample, its running mean after warm-up (an estimate of E_p[x]), or both "
                        "side by side (default: both)")
    _common(p)
    p.set_defaults(func=_cmd_sample)


def _cmd_sample(args) -> int:
    from .files import check_output_path
    from .runtime import resolve_device
    from .visualize import (
        RHAT_OK,
        caption,
        default_display,
        default_preset,
        grid_images,
        load_preset,
        sample_node,
        save_grid,
        save_npz,
    )

    if args.nrow is not None and args.nrow < 1:
        raise ConfigError(f"--nrow must be >= 1, got {args.nrow}")
    if not 0 <= args.min_size <= 4096:
        raise ConfigError(f"--min-size must be in [0, 4096], got {args.min_size}")
    if args.npz and Path(args.npz).resolve() == Path(args.out).resolve():
        raise ConfigError(f"--out and --npz name the same file ({args.out}); give two names")
    for out in [args.out] + ([args.npz] if args.npz else []):
        check_output_path(out, follow_symlinks=out != "samples.png" or "--out" in args.argv)
    _threads(args)
    device = resolve_device(args.device)
    devices = [d.strip() for d in args.devices.split(",")] if args.devices else None
    for d in devices or []:
        resolve_device(d)  # a device that does not exist is an error before anything runs
    model, info = _open(args, device)
    preset = args.preset or default_preset(info)
    config = load_preset(preset, **given(args, HMCConfig))
    run = sample_node(model, info, args.node, config, device, devices=devices,
                      callback=None if args.quiet or devices else _sample_progress(config, len(args.node)))
    s = run.result.summary
    images, nrow, labels = grid_images(run, args.show)
    display = args.display or default_display(config)
    save_grid(images, info, args.out, nrow=args.nrow or nrow, min_size=args.min_size, display=display,
              row_labels=labels if not args.nrow else None,
              caption=None if args.no_caption else caption(run, args.show),
              metadata={"nodes": run.nodes, "config": vars(run.config), "summary": s, "model": info.model})
    if args.npz:
        save_npz(run, args.npz)
    print(f"{info.model} {', '.join(run.nodes)}: {s['chains']} chains x {s['iters']} iterations x "
          f"{config.trajectory_steps} leapfrog steps on {device} (preset {preset})")
    print(f"reference {s['reference']}, T {config.temperature:g}; acceptance {s['accept_rate']:.3f}, mean |energy "
          f"error| {s['mean_abs_energy_error']:.3g}, final f_y {s['final_score_mean']:.3f}")
    if "swap_rate" in s:
        print(f"replica exchange: T {' / '.join(f'{t:.3g}' for t in config.ladder)}, swap rates "
              f"{' / '.join(f'{v:.2f}' for v in s['swap_rate'])}")
    print(f"convergence after {config.adapt_steps} warm-up iterations: R-hat {s['rhat']:.3f} (f_y "
          f"{s['rhat_score']:.3f}, x projections {s['rhat_x']:.3f}), bulk ESS f_y {s['ess_score']:.0f}, x "
          f"{s['ess_x']:.0f}")
    print(f"{s['seconds']:.2f} s, {s['grad_evals_per_second']:.0f} gradient evaluations/s; wrote {args.out}"
          f"{' and ' + args.npz if args.npz else ''}")
    if not s["rhat"] <= RHAT_OK:
        args.notes.append(f"R-hat {s['rhat']:.2f} > {RHAT_OK}: the chains of a node disagree, so the grid is not yet a "
                          "sample of p_y; run more iterations (--iters) or more adapted steps (--adapt-steps), or "
                          "temper (--replicas 3 --hot-temperature 1 for T < 1)")
    args.notes.extend(run.warnings)
    return 0


def _sample_progress(config: HMCConfig, nodes: int):
    """An HMC callback that shows iterations, acceptance and time left (numbers read only when shown)."""
    from .progress import Progress

    progress = Progress(config.iters, f"sampling {nodes * config.chains} chains", "iters")
    accepted = []

    def on_step(step) -> None:
        accepted.append(step.accepted)
        done = step.iteration + 1
        if progress.due() or done == config.iters:
            import torch

            rate = float(torch.stack(accepted[-20:]).float().mean())
            progress.update(done, accept=rate)
        if done == config.iters:
            progress.close()

    return on_step


def _add_export(sub) -> None:
    from .export import DEFAULT_EXPORTER, EXPORT_PRECISIONS, EXPORTERS

    p = sub.add_parser(
        "export", help="export a classifier or a node's score to ONNX, checked in ONNX Runtime",
        formatter_class=_Formatter,
        description="Write an ONNX model (dynamic batch axis, input 'input', output 'logits' or 'score', the model's "
                    "metadata in metadata_props), run onnx.checker and compare ONNX Runtime with PyTorch on random "
                    "and real inputs at batch 1 and > 1. Fails, with the numbers, when they differ by more than "
                    "--atol.",
        epilog="examples:\n  gencnn export runs/lenet/checkpoint.safetensors --out lenet.onnx\n"
               "  gencnn export runs/lenet --node conv2:7 --out conv2_7.onnx\n"
               "  gencnn export tv:squeezenet1_1 --weights ../shared/weights/squeezenet1_1_imagenet.safetensors "
               "--out squeezenet.onnx")
    _add_model_source(p)
    p.add_argument("--out", required=True, help="the .onnx file to write (replaced atomically)")
    p.add_argument("--node", help="export this node's score function (same syntax as gencnn sample)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18; dynamo writes >= 18)")
    p.add_argument("--exporter", choices=EXPORTERS, default=DEFAULT_EXPORTER,
                   help=f"TorchScript-based (legacy) or torch.export-based (dynamo, needs onnxscript) "
                        f"(default: {DEFAULT_EXPORTER})")
    p.add_argument("--precision", choices=EXPORT_PRECISIONS, default="fp32",
                   help="weights and input in float32, or float16 for CUDA deployment (default: fp32)")
    p.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help=argparse.SUPPRESS)
    p.add_argument("--external-data", action="store_true",
                   help="keep the weights in OUT.data beside OUT (automatic above protobuf's 2 GiB limit)")
    p.add_argument("--device", default="cpu", help="where PyTorch runs during export and the parity check "
                                                   "(default: cpu)")
    p.add_argument("--providers", help="ONNX Runtime providers, comma-separated (cpu, cuda or full names); "
                                       "default: CUDA when available, else CPU")
    p.add_argument("--atol", type=float, help="largest allowed |onnx - torch| (default 1e-4; 1e-2 with fp16)")
    p.add_argument("--batch", type=int, default=4, help="the batch size > 1 of the parity check (default: 4)")
    p.add_argument("--data-dir", help="real inputs: MNIST or DATA_DIR/images (default $GENCNN_DATA)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime parity check")
    _common(p, quiet=False)
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    import math

    from .export import export_onnx, real_inputs, verify_onnx
    from .files import check_output_path
    from .runtime import resolve_device

    if "--fp16" in args.argv:
        print("gencnn export: warning: --fp16 is deprecated; use --precision fp16", file=sys.stderr)
    if not 1 <= args.batch <= 4096:
        raise ConfigError(f"--batch must be in [1, 4096], got {args.batch}")
    if args.atol is not None and not (math.isfinite(args.atol) and args.atol >= 0):
        raise ConfigError(f"--atol must be a finite number >= 0, got {args.atol}")
    check_output_path(args.out)
    _threads(args)
    device = resolve_device(args.device)
    model, info = _open(args, device)
    result = export_onnx(model, args.out, info=info, node=args.node, opset=args.opset, exporter=args.exporter,
                         precision=args.precision, device=device, external_data=args.external_data or None,
                         provenance_of=args.model if Path(args.model).exists() else None)
    data = f" + {result.data_path}" if result.data_path else ""
    print(f"wrote {result.path}{data}: {info.model}{' node ' + args.node if args.node else ''} -> "
          f"'{result.output}', opset {result.opset}, {result.exporter} exporter, {result.seconds:.2f} s")
    for w in result.warnings:
        print(f"  tracer warning: {w}")
    if args.no_verify:
        return 0
    report = verify_onnx(result.path, model, info, node=args.node, inputs=real_inputs(info, args.data_dir),
                         batches=(1, args.batch), atol=args.atol, providers=args.providers)
    print("\n".join(report.lines()))
    return 0 if report.passed else 1


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog="gencnn", formatter_class=_Formatter,
        description="Generative modeling of CNNs: GG/DG training, evaluation, HMC sampling of nodes, ONNX export.")
    parser.add_argument("--version", action="version", version=f"gencnn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    _add_models(sub)
    _add_nodes(sub)
    _add_sample(sub)
    _add_export(sub)
    return parser


def _one_line(e: BaseException) -> str:
    """The informative line of an error: a DataLoader worker's re-raised error carries the worker's traceback."""
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if "Traceback" in text:
        return lines[-1].split(": ", 1)[-1] if ": " in lines[-1] else lines[-1]
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename + ': ' if e.filename else ''}{e.strerror}"
    return lines[0]


def _finish(args, code: int) -> int:
    for note in args.notes:
        print(f"gencnn {args.command}: warning: {note}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # deprecations and notes: shown once the command is done
        warnings.simplefilter("always", FutureWarning)
        warnings.simplefilter("always", UserWarning)
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        args.notes = []  # warnings, printed after the command succeeded (an error stays one line)
        if args.debug:
            code = args.func(args)
        else:
            code = _run(args)
    if code in (0, 1):
        seen = set()
        for w in caught:
            text = str(w.message)
            if issubclass(w.category, (FutureWarning, UserWarning)) and text not in seen:
                seen.add(text)
                args.notes.insert(0, text)
        _finish(args, code)
    return code


def _run(args) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError, DataNotFoundError
    from .export import ExportError
    from .files import OutputPathError
    from .nodes import NodeError
    from .specs import MetadataError, UnknownModelError, WeightsError
    from .trainer import NonFiniteLossError, TrainingInterrupted

    user_errors = (ConfigError, CheckpointError, DataNotFoundError, DataError, UnknownModelError, NodeError,
                   NonFiniteLossError, ExportError, MemoryError, ValueError, OSError, WeightsError, MetadataError,
                   OutputPathError)
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `gencnn models | head`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except TrainingInterrupted as e:
        print(f"gencnn {args.command}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"gencnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except user_errors as e:
        print(f"gencnn {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        text = str(e).lower()
        if any(k in text for k in ("can't allocate memory", "out of memory", "not enough memory")):
            print(f"gencnn {args.command}: error: out of memory ({_one_line(e)[:120]}); use a smaller batch, input "
                  "size or chain count", file=sys.stderr)
            return 2
        print(f"gencnn {args.command}: internal error: RuntimeError: {_one_line(e)} (--debug shows the traceback; "
              "please report it)", file=sys.stderr)
        return 1
    except Exception as e:  # a bug of ours: one line too, and the way to see more
        print(f"gencnn {args.command}: internal error: {type(e).__name__}: {_one_line(e)} (--debug shows the "
              "traceback; please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
