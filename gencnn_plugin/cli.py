"""``gencnn``: argparse subcommands over the Python API (train, eval, models, nodes, sample, export). No logic here.

Errors a user can fix print one line and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

__all__ = ["main", "build_parser", "sample_command"]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _add_train(sub) -> None:
    from .config import list_configs

    p = sub.add_parser(
        "train", help="train a classifier with DG, GG, GG+DG or auto", formatter_class=_Formatter,
        description="Train from a recipe (a name in zoo_configs/ or a YAML path); flags override the recipe.",
        epilog=f"recipes: {', '.join(list_configs())}\n"
               "example: gencnn train lenet_mnist --mode gg+dg --data-dir ../shared/data")
    p.add_argument("config", nargs="?", help="recipe name or YAML path (optional with --resume: the run's own)")
    o = p.add_argument_group("overrides (default: the recipe's value)")
    o.add_argument("--model", help="model spec: lenet, timm:<name>, tv:<name>")
    o.add_argument("--mode", choices=["dg", "gg", "gg+dg", "auto"])
    o.add_argument("--epochs", type=int)
    o.add_argument("--batch-size", type=int)
    o.add_argument("--lr", type=float, help="base learning rate")
    o.add_argument("--lr-policy", choices=["inv", "step", "cosine", "fixed"])
    o.add_argument("--momentum", type=float)
    o.add_argument("--weight-decay", type=float)
    o.add_argument("--switch-epoch", type=int, help="gg+dg: number of GG epochs")
    o.add_argument("--switch-lr", type=float, help="base LR of the DG phase")
    o.add_argument("--ess-threshold", type=float, help="auto: switch to DG below this mean normalised ESS")
    o.add_argument("--dataset", choices=["mnist", "fashion-mnist", "imagefolder", "synthetic"])
    o.add_argument("--data-dir", help="dataset folder (default: $GENCNN_DATA)")
    o.add_argument("--train-subset", type=int, help="train on the first N images only")
    o.add_argument("--num-classes", type=int)
    o.add_argument("--in-chans", type=int)
    o.add_argument("--img-size", type=int)
    o.add_argument("--weights-file", help="local weights to start from")
    o.add_argument("--trust-pickle", action="store_true", default=None,
                   help="unpickle --weights-file fully: only for files you trust (it can run code)")
    o.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    o.add_argument("--amp", choices=["none", "bf16", "fp16"])
    o.add_argument("--seed", type=int)
    o.add_argument("--out", help="run folder (default: runs/<name>-<mode>-s<seed>-<time>)")
    o.add_argument("--resume", help="run folder (or its train_state.pt) to continue")
    o.add_argument("--nproc", type=int, help="train with DDP in this many processes on this machine (torchrun)")
    o.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config key, value parsed as YAML (repeatable)")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    import os

    from .config import ConfigError, load_config
    from .train import train

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
    keys = ["model", "mode", "epochs", "batch_size", "lr", "lr_policy", "momentum", "weight_decay", "switch_epoch",
            "switch_lr", "ess_threshold", "dataset", "data_dir", "train_subset", "num_classes", "in_chans",
            "img_size", "weights_file", "trust_pickle", "device", "amp", "seed", "out", "resume"]
    overrides = {k: getattr(args, k) for k in keys}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip().replace("-", "_")] = yaml.safe_load(value)
    config = args.config
    if config is None:
        if not args.resume:
            raise ConfigError("give a recipe (e.g. lenet_mnist) or --resume RUN")
        run = Path(args.resume)
        config = (run.parent if run.is_file() else run) / "config.yaml"
    cfg = load_config(config, overrides)
    train(cfg)
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="test error of a checkpoint", formatter_class=_Formatter,
                       description="Evaluate a checkpoint (or run folder) on the test split of its dataset.")
    p.add_argument("checkpoint", help="checkpoint .safetensors or run folder, or a model spec with --weights")
    _add_weights(p)
    p.add_argument("--dataset", help="override the dataset recorded in the checkpoint")
    p.add_argument("--data-dir", help="dataset folder (default: $GENCNN_DATA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from .checkpoint import load_checkpoint, open_model, resolve_checkpoint
    from .data import DeviceLoader, folder_loader, load_dataset, normalizer
    from .train import evaluate, resolve_device

    device = resolve_device(args.device)
    if args.weights is None:
        path = resolve_checkpoint(args.checkpoint)
        model, info, meta = load_checkpoint(path, device)
    else:  # a spec and its weights: no metadata, so the dataset is --dataset (default mnist)
        path = args.checkpoint
        model, info = open_model(args.checkpoint, weights_file=args.weights, device=device,
                                 **({"trust_pickle": True} if args.trust_pickle else {}))
        meta = {}
    dataset = args.dataset or meta.get("dataset", "mnist")
    seed = (meta.get("config") or {}).get("seed", 0)
    if dataset == "imagefolder":
        data_dir = args.data_dir or (meta.get("config") or {}).get("data_dir")
        loader, _ = folder_loader(data_dir, False, info.input_size[-1], info.mean, info.std, args.batch_size, 2)
    else:
        data = load_dataset(dataset, args.data_dir, train=False, in_chans=info.in_chans,
                            img_size=info.input_size[-1], num_classes=info.num_classes, seed=seed)
        loader = DeviceLoader(data.to(device), args.batch_size, normalizer(info.mean, info.std, device), False)
    result = evaluate(model, loader, device)
    out = {"checkpoint": str(path), "model": info.spec, "dataset": dataset, "mode": meta.get("mode"),
           "epoch": meta.get("epoch"), "test_error": result["error"], "test_loss": result["loss"], "n": result["n"]}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{path}: {info.spec} ({out['mode']}, epoch {out['epoch']}) on {dataset} test ({result['n']} images): "
              f"error {100 * result['error']:.2f}%, loss {result['loss']:.4f}")
    return 0


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list model specs", formatter_class=_Formatter,
                       description="List the model specs create_model accepts (aliases, timm:<name>, tv:<name>).")
    p.add_argument("pattern", nargs="?", default="*", help="glob on the model name, e.g. '*resnet*'")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args) -> int:
    from .specs import list_specs

    print("\n".join(list_specs(args.pattern)))
    return 0


def _add_weights(p) -> None:
    p.add_argument("--weights", help="local weights for a model spec (safetensors or a weights-only state dict)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="unpickle a .pt/.pth weights file fully: only for files you trust (it can run code)")


def _add_source(p) -> None:
    p.add_argument("source", help="checkpoint (.safetensors or run folder) or model spec (lenet, timm:NAME, tv:NAME)")
    _add_weights(p)
    p.add_argument("--num-classes", type=int, help="for a model spec")
    p.add_argument("--mean", type=float, nargs="+", help="input mean for a model spec (default: the model's)")
    p.add_argument("--std", type=float, nargs="+", help="input std for a model spec")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="constructor argument for a model spec, value parsed as YAML (e.g. pad_type=same)")


def _open(args, device="cpu"):
    from .checkpoint import open_model
    from .config import ConfigError

    kwargs = {}
    for item in args.model_arg:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--model-arg expects KEY=VALUE, got {item!r}")
        kwargs[key.strip()] = yaml.safe_load(value)
    if args.num_classes:
        kwargs["num_classes"] = args.num_classes
    if args.mean:
        kwargs["mean"] = tuple(args.mean)
    if args.std:
        kwargs["std"] = tuple(args.std)
    if args.trust_pickle:
        kwargs["trust_pickle"] = True
    return open_model(args.source, weights_file=args.weights, device=device, **kwargs)


def _add_nodes(sub) -> None:
    p = sub.add_parser("nodes", help="list the layers and nodes that can be sampled", formatter_class=_Formatter,
                       description="List every addressable layer: module path, type, output shape, node count.")
    _add_source(p)
    p.add_argument("--classes", action="store_true", help="print every class name of the output layer")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_nodes)


def _cmd_nodes(args) -> int:
    from .nodes import list_layers

    model, info = _open(args)
    layers = list_layers(model, info)
    if args.json:
        print(json.dumps({"model": info.to_dict(), "layers": [vars(li) for li in layers]}))
        return 0
    print(f"{info.spec}: input {'x'.join(map(str, info.input_size))}, mean {info.mean}, std {info.std}, "
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
    from .config import HMC_PRESET_DIR, list_configs

    p = sub.add_parser(
        "sample", help="draw images of a node by HMC", formatter_class=_Formatter,
        description="Sample p_y(x) ~ exp(f_y(x)) N(x; 0, sigma^2 I) for a node y by Hamiltonian Monte Carlo "
                    "(paper section 3.4) and write an image grid.",
        epilog=f"presets: {', '.join(list_configs(HMC_PRESET_DIR))}\n"
               "example: gencnn sample runs/lenet --node logits:3 --chains 16 --out three.png")
    _add_source(p)
    p.add_argument("--node", action="append", required=True,
                   help="node string (repeat for several nodes of one layer: one grid row group each)")
    p.add_argument("--preset", default="lenet", help="HMC preset name or YAML path")
    h = p.add_argument_group("sampler (default: the preset's value)")
    h.add_argument("--chains", type=int, help="chains per node")
    h.add_argument("--iters", type=int, help="HMC iterations")
    h.add_argument("--leapfrog-steps", type=int)
    h.add_argument("--step-size", type=float)
    h.add_argument("--mass", type=float)
    h.add_argument("--sigma", type=float, help="std of the Gaussian reference q")
    h.add_argument("--seed", type=int)
    h.add_argument("--adapt-steps", type=int, help="dual-averaging warm-up iterations (0: off)")
    h.add_argument("--mala", action="store_true", default=None, help="Langevin: one leapfrog step per iteration")
    h.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--devices", help="split the chains over these devices, comma-separated (e.g. cuda:0,cuda:1); "
                                     "the samples equal a one-device run's")
    p.add_argument("--out", default="samples.png", help="PNG grid")
    p.add_argument("--npz", help="also write samples, pixels and per-iteration diagnostics here")
    p.add_argument("--nrow", type=int, help="images per grid row (default: chains per node)")
    p.add_argument("--display", choices=["range", "clip"], default="range",
                   help="grid images: each rescaled to its own range, or de-normalised pixels clipped to [0, 1]")
    p.add_argument("--min-size", type=int, default=56, help="upscale small images to at least this many pixels")
    p.set_defaults(func=_cmd_sample)


def sample_command(source: str, node: str, config, device: str = "auto", weights: str | None = None,
                   out: str = "samples.png", npz: str | None = "samples.npz") -> str:
    """The ``gencnn sample`` command line that repeats a run with these settings (the GUI copies it)."""
    import shlex

    argv = ["gencnn", "sample", str(source)] + (["--weights", str(weights)] if weights else [])
    argv += ["--node", node, "--chains", str(config.chains), "--iters", str(config.iters), "--leapfrog-steps",
             str(config.leapfrog_steps), "--step-size", f"{config.step_size:g}", "--mass", f"{config.mass:g}",
             "--sigma", f"{config.sigma:g}", "--seed", str(config.seed), "--adapt-steps", str(config.adapt_steps),
             "--precision", config.precision, "--device", device, "--out", out]
    argv += (["--mala"] if config.mala else []) + (["--npz", npz] if npz else [])
    return shlex.join(argv)


def _cmd_sample(args) -> int:
    from .train import resolve_device
    from .visualize import load_preset, sample_node, save_grid, save_npz

    keys = ["chains", "iters", "leapfrog_steps", "step_size", "mass", "sigma", "seed", "adapt_steps", "mala",
            "precision"]
    config = load_preset(args.preset, **{k: getattr(args, k) for k in keys})
    device = resolve_device(args.device)
    model, info = _open(args, device)
    devices = [d.strip() for d in args.devices.split(",")] if args.devices else None
    for d in devices or []:
        resolve_device(d)  # a device that does not exist is an error before anything runs
    run = sample_node(model, info, args.node, config, device, devices=devices)
    s = run.result.summary
    save_grid(run.result.x, info, args.out, nrow=args.nrow or run.config.chains, min_size=args.min_size,
              display=args.display)
    if args.npz:
        save_npz(run, args.npz)
    print(f"{info.spec} {', '.join(run.nodes)}: {s['chains']} chains x {s['iters']} iterations x "
          f"{config.leapfrog_steps if not config.mala else 1} leapfrog steps on {device}")
    print(f"acceptance {s['accept_rate']:.3f}, mean |energy error| {s['mean_abs_energy_error']:.3g}, "
          f"final f_y {s['final_score_mean']:.3f}, ESS(f_y) {s['ess_score']:.1f}, R-hat {s['rhat_score']:.3f}")
    print(f"{s['seconds']:.2f} s, {s['grad_evals_per_second']:.0f} gradient evaluations/s; wrote {args.out}"
          f"{' and ' + args.npz if args.npz else ''}")
    for note in run.warnings:
        print(f"gencnn sample: warning: {note}", file=sys.stderr)
    return 0


def _add_export(sub) -> None:
    from .export import DEFAULT_EXPORTER, EXPORTERS

    p = sub.add_parser(
        "export", help="export a classifier or a node's score to ONNX, checked in ONNX Runtime",
        formatter_class=_Formatter,
        description="Write an ONNX model (dynamic batch axis, input 'input', output 'logits' or 'score', the model's "
                    "metadata in metadata_props), run onnx.checker and compare ONNX Runtime with PyTorch on random "
                    "and real inputs at batch 1 and > 1. Fails, with the numbers, when they differ by more than "
                    "--atol.",
        epilog="examples:\n  gencnn export runs/lenet/checkpoint.safetensors --out lenet.onnx\n"
               "  gencnn export runs/lenet --node conv2:7 --out conv2_7.onnx\n"
               "  gencnn export tv:squeezenet1_1 --weights squeezenet1_1.safetensors --out squeezenet.onnx")
    _add_source(p)
    p.add_argument("--out", required=True, help="the .onnx file to write (replaced atomically)")
    p.add_argument("--node", help="export this node's score function (same syntax as gencnn sample)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--exporter", choices=EXPORTERS, default=DEFAULT_EXPORTER,
                   help="TorchScript-based (legacy) or torch.export-based (dynamo, needs onnxscript)")
    p.add_argument("--fp16", action="store_true", help="float16 weights and input (for CUDA deployment)")
    p.add_argument("--external-data", action="store_true",
                   help="keep the weights in OUT.data beside OUT (automatic above protobuf's 2 GiB limit)")
    p.add_argument("--device", default="cpu", help="where PyTorch runs during export and the parity check")
    p.add_argument("--providers", help="ONNX Runtime providers, comma-separated (cpu, cuda or full names); "
                                       "default: CUDA when available, else CPU")
    p.add_argument("--atol", type=float, help="largest allowed |onnx - torch| (default 1e-4; 1e-2 with --fp16)")
    p.add_argument("--batch", type=int, default=4, help="the batch size > 1 of the parity check")
    p.add_argument("--data-dir", help="real inputs: MNIST or DATA_DIR/images (default $GENCNN_DATA)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime parity check")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from .export import export_onnx, real_inputs, verify_onnx

    model, info = _open(args, args.device)
    result = export_onnx(model, args.out, info=info, node=args.node, provenance_of=args.source, opset=args.opset,
                         exporter=args.exporter, fp16=args.fp16, device=args.device,
                         external_data=args.external_data or None)
    data = f" + {result.data_path}" if result.data_path else ""
    print(f"wrote {result.path}{data}: {info.spec}{' node ' + args.node if args.node else ''} -> "
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
    from . import __version__

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.debug:
        return args.func(args)
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataNotFoundError
    from .export import ExportError
    from .nodes import NodeError
    from .specs import UnknownModelError
    from .train import NonFiniteLossError, TrainingInterrupted

    try:
        return args.func(args)
    except (ConfigError, CheckpointError, DataNotFoundError, UnknownModelError, NodeError, NonFiniteLossError,
            ExportError, MemoryError, ValueError, FileNotFoundError, IsADirectoryError) as e:
        print(f"gencnn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"gencnn {args.command}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"gencnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
