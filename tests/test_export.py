"""ONNX export: parity with PyTorch in ONNX Runtime across model families, nodes, errors and artifacts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from gencnn_plugin import create_model, export_onnx, verify_onnx
from gencnn_plugin.cli import main
from gencnn_plugin.export import DEFAULT_EXPORTER, ExportError, real_inputs
from gencnn_plugin.specs import ModelInfo

# (spec, in_chans, img_size): the zoo_configs models, the paper's networks and other families (residual, depthwise,
# SE, inverted residual, squeeze, ConvNeXt/LayerNorm, RegNet, a transformer), at small sizes.
MODELS = [
    ("lenet", 1, 28),  # lenet_mnist
    ("timm:lenet_caffe_bn", 1, 28),  # lenet_bn_mnist
    ("timm:resnet18", 1, 28),  # resnet18_mnist
    ("timm:mobilenetv2_100", 1, 28),  # mobilenetv2_mnist
    ("tv:alexnet", 3, 224),  # alexnet_imagenet, the paper's network
    ("zfnet", 3, 224),  # zfnet_imagenet, the paper's other network
    ("timm:mobilenetv3_small_050", 3, 32),
    ("timm:test_efficientnet", 3, 32),
    ("timm:test_convnext", 1, 32),
    ("timm:test_vit", 3, 32),
    ("timm:regnetx_002", 3, 32),
    ("tv:squeezenet1_1", 3, 64),
    ("tv:mobilenet_v2", 3, 32),
]


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """One export per (spec, node, exporter) per session: (path, model, info)."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("onnx")

    def get(spec: str, in_chans: int, img_size: int, node: str | None = None, exporter: str = DEFAULT_EXPORTER):
        key = (spec, node, exporter)
        if key not in cache:
            torch.manual_seed(0)
            model, info = create_model(spec, num_classes=5, in_chans=in_chans, img_size=img_size)
            name = f"{spec.replace(':', '_')}_{(node or 'logits').replace(':', '_')}_{exporter}.onnx"
            export_onnx(model, root / name, info=info, node=node, exporter=exporter)
            cache[key] = (root / name, model, info)
        return cache[key]

    return get


@pytest.mark.parametrize("spec,in_chans,img_size", MODELS, ids=[m[0] for m in MODELS])
def test_classifier_parity(exported, spec, in_chans, img_size):
    path, model, info = exported(spec, in_chans, img_size)
    report = verify_onnx(path, model, info, batches=(1, 3), repeats=1)
    assert report.passed, report.lines()
    assert [c["batch"] for c in report.cases] == [1, 3] and report.max_abs_diff < 1e-4
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model"] == meta["arch"] == info.model and meta["output"] == "logits" and meta["opset"] == "18"
    assert meta["exporter"] == DEFAULT_EXPORTER
    assert meta["input_size"] == f"[{in_chans}, {img_size}, {img_size}]" and len(eval(meta["class_names"])) == 5
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert proto.graph.input[0].name == "input" and dims[0].dim_param == "batch"


@pytest.mark.parametrize("spec,in_chans,img_size,node", [
    ("lenet", 1, 28, "conv2:7"),
    ("lenet", 1, 28, "fc1:3"),
    ("timm:resnet18", 1, 28, "layer1.0.act2:3,2,5"),
    ("timm:test_vit", 3, 32, "blocks.0:3"),
    ("tv:squeezenet1_1", 3, 64, "features.3.expand3x3_activation:2,mean"),
])
def test_node_parity(exported, spec, in_chans, img_size, node):
    path, model, info = exported(spec, in_chans, img_size, node=node)
    report = verify_onnx(path, model, info, node=node, batches=(1, 4), repeats=1)
    assert report.passed, report.lines()
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["node"] == node and meta["output"] == "score"


@pytest.mark.parametrize("spec,in_chans,img_size,node", [
    ("lenet", 1, 28, None), ("timm:resnet18", 1, 28, None), ("timm:test_vit", 3, 32, None),
    ("tv:squeezenet1_1", 3, 64, None), ("lenet", 1, 28, "conv2:7"), ("tv:alexnet", 3, 224, "features.4:5"),
])
def test_legacy_exporter_parity(exported, spec, in_chans, img_size, node):
    path, model, info = exported(spec, in_chans, img_size, node=node, exporter="legacy")
    assert verify_onnx(path, model, info, node=node, batches=(1, 3), repeats=1).passed


def test_real_inputs(exported, data_dir):
    path, model, info = exported("lenet", 1, 28)
    digits = real_inputs(info, data_dir, n=4)
    assert digits.shape == (4, 1, 28, 28) and digits.max() > 0.9  # MNIST strokes, scaled as Caffe does
    report = verify_onnx(path, model, info, inputs=digits, repeats=1)
    assert [c["name"] for c in report.cases] == ["random", "random", "real", "real"] and report.passed
    photos = real_inputs(create_model("tv:squeezenet1_1", num_classes=5)[1], data_dir, n=3)
    assert photos.shape == (3, 3, 224, 224) and photos.std() > 0.3


class _Histogram(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.histc(x, 5).unsqueeze(0).expand(x.shape[0], -1)  # aten::histc has no ONNX export


class _Unexportable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.head = _Histogram()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_unsupported_operator_names_the_layer_and_keeps_the_old_file(tmp_path, exporter):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the previous export")
    info = ModelInfo("custom", 5, 1, (1, 8, 8), (0.0,), (1.0,))
    with pytest.raises(ExportError, match=r"in layer head \(_Histogram\).*histc"):
        export_onnx(_Unexportable(), out, info=info, exporter=exporter)
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary folder left behind


def test_a_real_unsupported_case_is_located(tmp_path):
    # AlexNet below 224 px: its AdaptiveAvgPool2d upsamples to 6x6, which the TorchScript exporter cannot express
    model, info = create_model("tv:alexnet", num_classes=5, img_size=64)
    with pytest.raises(ExportError, match=r"legacy exporter could not export tv:alexnet in layer avgpool "
                                          r"\(AdaptiveAvgPool2d\): SymbolicValueError"):
        export_onnx(model, tmp_path / "alexnet.onnx", info=info, exporter="legacy")


def test_external_data_is_one_artifact(tmp_path):
    model, info = create_model("lenet")
    out = tmp_path / "a" / "lenet.onnx"
    result = export_onnx(model, out, info=info, external_data=True)
    assert result.data_path == tmp_path / "a" / "lenet.onnx.data" and result.data_path.stat().st_size > 1_000_000
    assert out.stat().st_size < 100_000
    moved = tmp_path / "b"
    moved.mkdir()
    for f in (out, result.data_path):  # the two files travel together
        shutil.move(f, moved / f.name)
    assert verify_onnx(moved / "lenet.onnx", model, info, repeats=1).passed
    again = export_onnx(model, moved / "lenet.onnx", info=info)  # inline weights: the stale .data goes away
    assert again.data_path is None and not (moved / "lenet.onnx.data").exists()


def test_fp16_export(tmp_path):
    torch.manual_seed(0)
    model, info = create_model("lenet")
    result = export_onnx(model, tmp_path / "lenet16.onnx", info=info, precision="fp16")
    proto = onnx.load(str(result.path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    report = verify_onnx(result.path, model, info, repeats=1)
    assert report.atol == 1e-2 and report.passed, report.lines()


def test_a_mismatch_fails_with_the_numbers(exported):
    path, model, info = exported("lenet", 1, 28)
    torch.manual_seed(1)
    other, _ = create_model("lenet", num_classes=5)
    report = verify_onnx(path, other, info, repeats=1)
    assert not report.passed and report.max_abs_diff > 1e-2
    assert "parity FAILED" in report.lines()[-1]


def test_cli_export(tmp_path, capsys):
    out = tmp_path / "lenet.onnx"
    assert main(["export", "lenet", "--out", str(out), "--batch", "2", "--node", "conv1:3"]) == 0
    text = capsys.readouterr().out
    assert "parity passed" in text and "onnxruntime" in text and out.is_file()
    session_in = onnx.load(str(out)).graph.input[0]
    assert session_in.name == "input"


def test_checkpoint_provenance_travels_into_the_metadata(tmp_path):
    from gencnn_plugin import save_checkpoint

    model, info = create_model("lenet")
    ckpt = tmp_path / "lenet.safetensors"
    save_checkpoint(ckpt, model, info, mode="gg+dg", epoch=25, dataset="mnist", test_error=0.0069)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "l.onnx"), "--exporter", "legacy", "--no-verify"]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "l.onnx")).metadata_props}
    assert json.loads(meta["trained"]) == {"mode": "gg+dg", "epoch": 25, "dataset": "mnist", "test_error": 0.0069}


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "lenet", "--out", str(tmp_path / "x.onnx"), "--node", "conv1:99"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gencnn export: error:") and "conv1 has 20 channels" in err and "\n" not in err


def test_onnx_runtime_matches_on_a_batch_it_never_saw(exported):
    path, model, info = exported("timm:resnet18", 1, 28)
    import onnxruntime as ort

    x = torch.randn(7, 1, 28, 28)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


def test_cli_export_of_a_spec_with_local_weights(shared_dir, tmp_path, capsys):
    import onnxruntime as ort

    out = tmp_path / "squeezenet.onnx"
    weights = shared_dir / "weights" / "squeezenet1_1_imagenet.safetensors"
    argv = ["export", "tv:squeezenet1_1", "--weights", str(weights), "--out", str(out), "--exporter", "legacy",
            "--data-dir", str(shared_dir / "data"), "--batch", "2"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "real         batch   4" in text and "random       batch   2" in text and "parity passed" in text
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    names = json.loads(meta["class_names"])
    _, info = create_model("tv:squeezenet1_1")
    photo = real_inputs(info, shared_dir / "data", n=5)  # astronaut, chelsea, coffee, grace_hopper, rocket
    logits = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": photo.numpy()})[0]
    assert len(names) == 1000 and "cat" in names[int(logits[1].argmax())]
