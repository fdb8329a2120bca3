"""ONNX export of a classifier or of one node's score function, checked against ONNX Runtime.

The exported graph takes what the PyTorch model takes: a normalised float batch (B, C, H, W) with a dynamic batch
axis, input name ``input``; it returns ``logits`` (B, K) or, for a node, ``score`` (B,). ``metadata_props`` carry
what a deployment needs besides the graph (model, class names, mean/std, input size, opset, node, precision). Files
are written atomically; with external data the ``.onnx`` and its ``.onnx.data`` are one artifact, replaced together,
and a ``.onnx.data`` is only ever written or removed as part of the artifact it belongs to.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .checkpoint import open_model
from .files import check_output_path, new_file_mode
from .nodes import node_score
from .specs import ModelInfo

__all__ = ["export_onnx", "verify_onnx", "real_inputs", "default_providers", "ExportError", "ExportResult",
           "ParityReport", "EXPORTERS", "DEFAULT_EXPORTER", "EXPORT_PRECISIONS", "MIN_OPSET"]

EXPORTERS = ("dynamo", "legacy")
EXPORT_PRECISIONS = ("fp32", "fp16")  # of the exported graph's weights and input
MIN_OPSET = {"dynamo": 18, "legacy": 7}  # the oldest opset each exporter writes
# The torch.export-based exporter ("dynamo") is the default: it exported and matched every model we test, while the
# TorchScript one ("legacy") fails on ZFNet (LocalResponseNorm loses the shapes that AdaptiveAvgPool2d needs under a
# dynamic batch) and on AlexNet below 224 px. Legacy exports 5-30x faster (0.05-0.3 s against 1-3 s here) and its
# graphs run about as fast in ONNX Runtime (docs/results/onnx_latency.md); --exporter legacy picks it.
DEFAULT_EXPORTER = "dynamo"
EXTERNAL_DATA_LIMIT = 1_900_000_000  # protobuf caps a file at 2 GiB; larger models must keep weights outside


class ExportError(RuntimeError):
    """The model could not be exported, or the export does not match PyTorch."""


@dataclass
class ExportResult:
    path: Path
    data_path: Path | None  # the external-data file, when the weights live outside the .onnx
    exporter: str
    opset: int
    seconds: float
    output: str
    metadata: dict[str, str]
    warnings: list[str] = field(default_factory=list)


@dataclass
class ParityReport:
    """ONNX Runtime against eager PyTorch on the same inputs."""

    cases: list[dict]  # one per input set: name, batch, max_abs_diff
    max_abs_diff: float
    atol: float
    providers: list[str]
    torch_ms: dict[int, float]  # median latency per batch size
    ort_ms: dict[int, float]

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol

    def lines(self) -> list[str]:
        out = [f"  {c['name']:<12} batch {c['batch']:>3}: max |onnx - torch| = {c['max_abs_diff']:.3g}"
               for c in self.cases]
        for b in sorted(self.torch_ms):
            out.append(f"  latency batch {b:>3}: torch {self.torch_ms[b]:.3f} ms, onnxruntime {self.ort_ms[b]:.3f} ms "
                       f"({', '.join(self.providers)})")
        verdict = "passed" if self.passed else "FAILED"
        out.append(f"parity {verdict}: largest difference {self.max_abs_diff:.3g} (tolerance {self.atol:g})")
        return out


def default_providers() -> list[str]:
    """CUDA when both ONNX Runtime and torch see a GPU, else the CPU (the onnxruntime-gpu wheel runs on CPU too)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _providers(names: list[str] | str | None) -> list[str]:
    if names is None:
        return default_providers()
    alias = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
    items = names.split(",") if isinstance(names, str) else names
    return [alias.get(n.strip().lower(), n.strip()) for n in items if n.strip()]


def _metadata(info: ModelInfo, node: str | None, opset: int, exporter: str, precision: str, output: str
              ) -> dict[str, str]:
    dtype = "float16" if precision == "fp16" else "float32"
    return {"model": info.model, "class_names": json.dumps(info.class_names), "num_classes": str(info.num_classes),
            "mean": json.dumps(list(info.mean)), "std": json.dumps(list(info.std)),
            "input_size": json.dumps(list(info.input_size)), "input": "input", "output": output,
            "node": node or "", "opset": str(opset), "exporter": exporter, "precision": precision,
            "producer": f"gencnn {__version__}", "torch": torch.__version__,
            "preprocess": "x = (pixels / 255 - mean) / std, NCHW",
            # deprecated names of "model" and "precision", kept for one release
            "arch": info.model, "dtype": dtype}


def _remove_stale_folders(path: Path) -> None:
    """Private export folders ``.NAME.PID.XXXX.tmp/`` beside ``path`` whose process is gone (a killed export)."""
    from .files import _TMP, _pid_alive

    for cand in path.parent.glob(f".{path.name}.*.tmp"):
        m = _TMP.fullmatch(cand.name)
        if cand.is_dir() and m and m.group("name") == path.name and not _pid_alive(int(m.group("pid"))):
            shutil.rmtree(cand, ignore_errors=True)


def _external_locations(path: Path) -> set[str]:
    """The external-data files an existing .onnx refers to (empty if it is not a readable ONNX file)."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return set()
    return {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}


@contextlib.contextmanager
def _artifact(path: Path):
    """A private folder beside ``path``; on success its .onnx (and .onnx.data) replace the old artifact together.

    ``OUT.data`` is written only when this export keeps its weights outside, and removed only when the ``OUT`` being
    replaced referred to it (then it was that artifact's part); any other file of that name is left alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_folders(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    data = Path(f"{path}.data")
    old_mode = path.stat().st_mode & 0o7777 if path.is_file() else None
    mode = old_mode if old_mode is not None else new_file_mode()
    ours = path.is_file() and data.name in _external_locations(path)
    try:
        yield tmp / path.name
        os.chmod(tmp / path.name, mode)
        if (tmp / data.name).exists():
            check_output_path(data, follow_symlinks=False)
            if data.exists() and not ours:  # a file of that name that is not the replaced artifact's: the user's
                raise ExportError(f"{data} exists and is not the external data of {path.name}: move it, or choose "
                                  "another --out")
            os.chmod(tmp / data.name, mode)  # onnx writes it 0600; give it the .onnx file's mode
            os.replace(tmp / data.name, data)  # the data first: the old .onnx never points at missing weights
            os.replace(tmp / path.name, path)
        else:
            os.replace(tmp / path.name, path)
            if ours:
                data.unlink(missing_ok=True)  # the replaced artifact's own weights, now stale
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _culprit(module: nn.Module, x: torch.Tensor, export) -> str | None:
    """The smallest submodule that fails to export on its own input: where an export error came from."""
    inputs: dict[str, tuple] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: inputs.setdefault(name, args))
             for name, m in module.named_modules() if name]
    try:
        with torch.no_grad():
            module(x)
    except Exception:
        pass
    finally:
        for h in hooks:
            h.remove()
    modules = dict(module.named_modules())
    # deepest first: a leaf that fails explains its parents' failure
    for name in sorted(inputs, key=lambda n: -n.count(".")):
        args = inputs[name]
        if not all(isinstance(a, torch.Tensor) for a in args):
            continue
        try:
            export(modules[name], args)
        except Exception:
            return f"{name} ({type(modules[name]).__name__})"
    return None


def _reason(e: Exception) -> str:
    """The informative line of an exporter's exception: the dynamo exporter puts it under "Exception summary"."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.split("## Exception summary", 1)[-1].splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _export_graph(model: nn.Module, x: torch.Tensor, path: Path, exporter: str, opset: int, output: str) -> list[str]:
    """Run torch's exporter into ``path``; returns the tracer's warnings (e.g. data-dependent control flow)."""
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(open(os.devnull, "w")):
        warnings.simplefilter("always")
        if exporter == "legacy":
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=[output], dynamic_axes={"input": {0: "batch"}, output: {0: "batch"}},
                              do_constant_folding=True)
        else:
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, input_names=["input"],
                                        output_names=[output], dynamic_shapes=({0: batch},), verbose=False)
            program.save(str(path), external_data=False)
    return sorted({str(w.message).splitlines()[0] for w in caught
                   if issubclass(w.category, torch.jit.TracerWarning)})


def export_onnx(source: str | Path | nn.Module, path: str | Path, *, info: ModelInfo | None = None,
                node: str | None = None, weights: str | Path | None = None, opset: int = 18,
                exporter: str = DEFAULT_EXPORTER, precision: str = "fp32", device: str | torch.device = "cpu",
                external_data: bool | None = None, batch: int = 2, provenance_of: str | Path | None = None,
                weights_file: str | Path | None = None, fp16: bool | None = None) -> ExportResult:
    """Export a checkpoint, a spec (with optional local weights) or a module to ONNX at ``path``.

    Args:
        source: a checkpoint or run folder, a model spec, or an ``nn.Module`` (then ``info`` is needed).
        path: the ``.onnx`` file to write (a regular file path; replaced atomically).
        info: the ModelInfo of a module ``source``.
        node: export this node's score function (``conv2:7``, ``logits:3``, a class name) instead of the logits.
        weights: local weights for a spec ``source``.
        opset: the ONNX opset (dynamo: >= 18; legacy: >= 7); the file's actual opset is checked against it.
        exporter: ``dynamo`` (torch.export) or ``legacy`` (TorchScript).
        precision: ``fp32`` or ``fp16`` (weights and input cast to float16, for CUDA deployment).
        device: where PyTorch runs during the export.
        external_data: keep weights in ``OUT.data``; None = only above protobuf's 2 GiB limit.
        batch: the example batch size traced (the batch axis is dynamic either way).
        provenance_of: the checkpoint a passed-in module came from; its training record (mode, epoch, test error,
            ...) goes into the metadata as ``trained``, as it does for a checkpoint source.
        weights_file, fp16: deprecated names of ``weights`` and ``precision="fp16"`` (one release).

    Raises :class:`ExportError` naming the exporter's message and the layer.
    """
    if weights_file is not None:
        warnings.warn("export_onnx(weights_file=...) is deprecated; use weights=", DeprecationWarning, stacklevel=2)
        weights = weights if weights is not None else weights_file
    if fp16 is not None:
        warnings.warn("export_onnx(fp16=...) is deprecated; use precision='fp16'", DeprecationWarning, stacklevel=2)
        precision = "fp16" if fp16 else precision
    if node is not None and not str(node).strip():
        raise ExportError("--node is empty: give a node (e.g. logits:3), or leave it out to export the logits")
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}: use {' or '.join(EXPORTERS)}")
    if precision not in EXPORT_PRECISIONS:
        raise ExportError(f"precision {precision!r}: export writes {' or '.join(EXPORT_PRECISIONS)}")
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET[exporter] <= opset <= newest:
        raise ExportError(f"opset {opset}: the {exporter} exporter writes opsets {MIN_OPSET[exporter]}-{newest} "
                          f"(onnx {onnx.__version__})" + ("; --exporter legacy writes older ones"
                                                           if exporter == "dynamo" and opset < 18 else ""))
    fp16 = precision == "fp16"
    path = check_output_path(path)
    model, info = _resolve(source, info, weights, device)
    trained = _provenance(provenance_of or source)
    module: nn.Module = node_score(model, info, node) if node else model.eval()
    module = module.to(device)
    if fp16:
        module = module.half()
    output = "score" if node else "logits"
    x = torch.randn(batch, *info.input_size, device=device, dtype=torch.float16 if fp16 else torch.float32)
    meta = _metadata(info, node, opset, exporter, precision, output)
    if trained:
        meta["trained"] = json.dumps(trained)
    t0 = time.perf_counter()
    with _artifact(path) as tmp:
        raw = tmp.with_name("raw.onnx")
        try:
            tracer_warnings = _export_graph(module, x, raw, exporter, opset, output)
        except Exception as e:
            where = _culprit(module, x, lambda m, a: _export_graph(m, a[0], tmp.with_name("part.onnx"), exporter,
                                                                        opset, "out"))
            layer = f" in layer {where}" if where else ""
            raise ExportError(f"{exporter} exporter could not export {info.model}"
                              f"{' node ' + node if node else ''}{layer}: {_reason(e)}") from e
        seconds = time.perf_counter() - t0
        proto = onnx.load(str(raw))  # loads external tensors too, whatever the exporter did
        written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if written != opset:
            raise ExportError(f"the {exporter} exporter wrote opset {written}, not the {opset} asked for; "
                              f"ask for opset {written}" + (" or use --exporter legacy" if exporter == "dynamo"
                                                            else ""))
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        size = sum(t.ByteSize() for t in proto.graph.initializer)
        external = size > EXTERNAL_DATA_LIMIT if external_data is None else external_data
        if external:
            _to_external(proto, f"{path.name}.data")
        onnx.save_model(proto, str(tmp))  # writes any external tensors beside tmp, in the private folder
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as e:
            raise ExportError(f"onnx.checker rejected the export of {info.model}: {e}") from e
    data = Path(f"{path}.data")
    return ExportResult(path, data if data.exists() else None, exporter, opset, seconds, output, meta, tracer_warnings)


def _to_external(proto, location: str) -> None:
    """Mark the initializers (> 1 KiB) as external data in one file named ``location`` beside the model.

    onnx's own ``location=`` refuses when a file of that name exists in the *current* folder, whatever the model's
    folder; converting under onnx's temporary name and renaming the references avoids that.
    """
    from onnx.external_data_helper import convert_model_to_external_data

    convert_model_to_external_data(proto, all_tensors_to_one_file=True, location=None, size_threshold=1024)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location


def _provenance(source) -> dict | None:
    """For a checkpoint: how it was trained (mode, epoch, dataset, test error, date), from its metadata."""
    if isinstance(source, nn.Module) or not Path(str(source)).exists():
        return None
    from .checkpoint import read_metadata

    meta = read_metadata(source)
    return {k: meta[k] for k in ("mode", "epoch", "phase", "dataset", "test_error", "date", "gencnn") if k in meta}


def _resolve(source, info, weights, device) -> tuple[nn.Module, ModelInfo]:
    if isinstance(source, nn.Module):
        if info is None:
            raise ExportError("exporting a module needs its ModelInfo (info=...)")
        return source.eval(), info
    return open_model(source, weights=weights, device=device)


def real_inputs(info: ModelInfo, data_dir: str | Path | None = None, n: int = 4) -> torch.Tensor | None:
    """Up to ``n`` real images, normalised for ``info``: MNIST test digits for 1-channel 28x28 models, else the
    photos in ``data_dir/images``. None when neither is found."""
    from .data import DataNotFoundError, load_mnist

    c, h, w = info.input_size
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    if c == 1:
        with contextlib.suppress(DataNotFoundError, OSError):
            x = load_mnist(data_dir, train=False).images[:n].float() / 255.0
            x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear") if (h, w) != x.shape[2:] else x
            return (x - mean) / std
    root = Path(data_dir or os.environ.get("GENCNN_DATA", "../shared/data")) / "images"
    files = sorted(p for p in root.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:n] if root.is_dir() \
        else []
    if not files:
        return None
    from PIL import Image

    mode = "L" if c == 1 else "RGB"
    arrays = [np.asarray(Image.open(f).convert(mode).resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
              for f in files]
    x = torch.from_numpy(np.stack(arrays)).reshape(len(files), h, w, -1).permute(0, 3, 1, 2)
    if x.shape[1] != c:
        x = x[:, :1].expand(-1, c, -1, -1)
    return (x - mean) / std




def verify_onnx(path: str | Path, model: nn.Module, info: ModelInfo, *, node: str | None = None,
                inputs: torch.Tensor | None = None, batches: tuple[int, ...] = (1, 4), atol: float | None = None,
                providers: list[str] | str | None = None, threads: int | None = None, repeats: int = 10,
                seed: int = 0) -> ParityReport:
    """Run the ONNX file and the PyTorch model on random inputs (batch 1 and > 1) and ``inputs`` (real images).

    Args:
        path: the exported ``.onnx``.
        model, info: the PyTorch model and its ModelInfo (the reference).
        node: the node the file scores (as exported), or None for the logits.
        inputs: real images, normalised (e.g. :func:`real_inputs`).
        batches: the random batch sizes compared and timed.
        atol: the largest allowed |onnx - torch|; default 1e-4 for float32 graphs and 1e-2 for float16 ones.
        providers: ONNX Runtime execution providers (default: CUDA when available, else CPU).
        threads: ONNX Runtime's intra-op threads (default: as many as torch uses).
        repeats: timed calls per batch size; latency is the median of interleaved calls of both runtimes.
        seed: the random inputs' seed.
    """
    import onnx
    import onnxruntime as ort

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    fp16 = meta.get("precision", "fp16" if meta.get("dtype") == "float16" else "fp32") == "fp16"
    atol = atol if atol is not None else (1e-2 if fp16 else 1e-4)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 3
    # ORT's worker threads spin after a run by default, taking the cores from the PyTorch call timed next to it
    # (that made PyTorch look 20x slower); without spinning both runtimes are timed on an idle machine.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    provs = _providers(providers)
    session = ort.InferenceSession(str(path), opts, providers=provs)
    module = node_score(model, info, node) if node else model.eval()
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    dtype = torch.float16 if fp16 else torch.float32
    module = module.to(dtype)
    g = torch.Generator().manual_seed(seed)
    sets = [("random", torch.randn(b, *info.input_size, generator=g)) for b in batches]
    if inputs is not None:
        sets += [("real", inputs[:1]), ("real", inputs)] if len(inputs) > 1 else [("real", inputs)]
    cases, torch_ms, ort_ms = [], {}, {}
    for name, x in sets:
        x = x.to(dtype)
        with torch.no_grad():
            ref = module(x.to(device)).float().cpu().numpy()
        got = session.run(None, {"input": x.numpy()})[0].astype(np.float32)
        diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        if not np.isfinite(got).all():
            diff = float("inf")
        cases.append({"name": name, "batch": x.shape[0], "max_abs_diff": diff})
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for b in batches:
        x = torch.randn(b, *info.input_size, generator=g).to(dtype)
        xd, xn = x.to(device), x.numpy()
        with torch.no_grad():
            for _ in range(3):  # warm-up: first calls allocate, pick kernels and start thread pools
                module(xd), session.run(None, {"input": xn}), sync()
            t_ms, o_ms = [], []
            for _ in range(repeats):  # interleaved, so drifting load hits both alike
                t0 = time.perf_counter()
                module(xd)
                sync()
                t1 = time.perf_counter()
                session.run(None, {"input": xn})
                t2 = time.perf_counter()
                t_ms.append((t1 - t0) * 1e3)
                o_ms.append((t2 - t1) * 1e3)
        torch_ms[b], ort_ms[b] = statistics.median(t_ms), statistics.median(o_ms)
    return ParityReport(cases, max(c["max_abs_diff"] for c in cases), atol, session.get_providers(), torch_ms, ort_ms)
