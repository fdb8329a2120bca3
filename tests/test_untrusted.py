"""Files are data: hostile checkpoint metadata and run configs run nothing; no command replaces or deletes what the
user did not name; every bad input is one error line. docs/reliability.md lists each case with its test."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from gencnn_plugin import create_model, load_checkpoint, load_config, save_checkpoint, train
from gencnn_plugin.checkpoint import CheckpointError
from gencnn_plugin.cli import main
from gencnn_plugin.data import DataError, make_loader
from gencnn_plugin.nodes import NodeError, list_layers, node_score

EXAMPLES = 60  # per property; docs/reliability.md reports the total
TINY = dict(dataset="synthetic", model="lenet", img_size=16, num_classes=4, batch_size=32, epochs=1,
            switch_epoch=1, lr=0.05, lr_policy="cosine", device="cpu", log_interval=1000)


def quiet(msg: str) -> None:
    pass


class _Touch:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gencnn {command}: error:") and "\n" not in err and "Traceback" not in err, err
    return err


def _crafted(tmp_path: Path, model_meta: dict) -> Path:
    """A real LeNet's weights under crafted metadata, next to a hostile pickle ``evil.pt``."""
    model, info = create_model("lenet")
    torch.save({**model.state_dict(), "x": _Touch(tmp_path / "CODE_RAN")}, tmp_path / "evil.pt")
    meta = {"format_version": 2, "model": {**info.to_dict(), **model_meta}}
    path = tmp_path / "crafted.safetensors"
    save_file(model.state_dict(), str(path), metadata={"gencnn": json.dumps(meta)})
    return path


# -- 1. a checkpoint's metadata never runs code, loads a file or downloads -------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"weights_file": "evil.pt", "trust_pickle": True},
    {"weights": "evil.pt"},
    {"checkpoint_path": "evil.pt"},
    {"pretrained": True},
    {"pretrained_cfg_overlay": {"file": "evil.pt"}},
    {"drop_rate": "../evil.pt"},
], ids=["weights_file+trust", "weights", "checkpoint_path", "pretrained", "cfg_overlay", "path-as-value"])
def test_crafted_metadata_is_refused_everywhere(tmp_path, capsys, kwargs):
    path = _crafted(tmp_path, {"kwargs": kwargs})
    os.chdir(tmp_path)  # a relative weights path would resolve next to the checkpoint
    with pytest.raises(CheckpointError, match="kwargs"):
        load_checkpoint(path)
    for argv in (["eval", str(path)], ["nodes", str(path)], ["export", str(path), "--out", "x.onnx"],
                 ["sample", str(path), "--node", "logits:1", "--iters", "1", "--chains", "1"]):
        assert main(argv) == 2
        assert "kwargs" in _one_line(capsys, argv[0])
    assert not (tmp_path / "CODE_RAN").exists() and not (tmp_path / "x.onnx").exists()


def test_crafted_metadata_in_the_gui(tmp_path, qtbot):
    from PySide6.QtCore import QSettings

    from gencnn_gui.main_window import MainWindow

    path = _crafted(tmp_path, {"kwargs": {"weights_file": str(tmp_path / "evil.pt"), "trust_pickle": True}})
    window = MainWindow(QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(window)
    assert not window.open_source(str(path))
    assert "kwargs" in window.error_label.text() and not (tmp_path / "CODE_RAN").exists()


@pytest.mark.parametrize("field,value,match", [
    ("model", "timm:no_such_net", "unknown model"),
    ("model", {"nested": 1}, "spec string"),
    ("num_classes", 0, "num_classes"),
    ("num_classes", 10**12, "num_classes"),
    ("in_chans", 0, "in_chans"),
    ("input_size", [1, 28], "input_size"),
    ("input_size", [1, 10**9, 28], "input_size"),
    ("mean", [float("nan")], "mean"),
    ("std", [0.0], "std"),
    ("class_names", None, None),  # allowed: the names are generated
    ("class_names", ["\x1b[31mred\x1b[0m"] + [str(i) for i in range(9)], r"class_names\[0\]"),
    ("class_names", ["x" * 10_000] + [str(i) for i in range(9)], r"class_names\[0\]"),
    ("kwargs", "drop_rate=0.1", "mapping"),
    ("kwargs", {"drop_rate": "abc"}, "does not build"),
    ("kwargs", {"act_layer": "no_such_activation", "drop_rate": 2.0}, "does not build"),
])
def test_metadata_fields_are_validated(tmp_path, field, value, match):
    path = _crafted(tmp_path, {field: value})
    if field == "class_names" and value is None:  # a missing name list is filled in, not an error
        _, info, _ = load_checkpoint(path)
        assert info.class_names == [str(i) for i in range(10)]
        return
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_metadata_that_is_not_a_description(tmp_path):
    model, _ = create_model("lenet")
    for i, raw in enumerate(["[" * 100_000, "not json", "[1, 2]", json.dumps({"model": None}),
                             json.dumps({"model": {"spec": "lenet"}})]):
        path = tmp_path / f"m{i}.safetensors"
        save_file(model.state_dict(), str(path), metadata={"gencnn": raw})
        with pytest.raises(CheckpointError):
            load_checkpoint(path)


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=20), st.sampled_from(["evil.pt", "../evil.pt", "/etc/passwd", "\x1b[2J"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=8)
_fields = st.sampled_from(["model", "num_classes", "in_chans", "input_size", "mean", "std", "class_names", "kwargs",
                           "spec", "weights", "trust_pickle", "pretrained"])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(_fields, _json_values, min_size=1, max_size=4),
       st.dictionaries(st.sampled_from(["weights_file", "trust_pickle", "pretrained", "checkpoint_path", "drop_rate",
                                        "pad_type", "act_layer"]), _json_values, max_size=3))
def test_any_metadata_loads_or_is_refused_and_runs_nothing(tmp_path, fields, kwargs):
    path = _crafted(tmp_path, {**fields, **({"kwargs": kwargs} if kwargs else {})})
    os.chdir(tmp_path)
    try:
        _, info, _ = load_checkpoint(path)
    except CheckpointError:
        pass
    else:  # what loads is a validated description
        assert info.num_classes == 10 and all(isinstance(v, (int, float, bool, str, list, type(None)))
                                              for v in info.kwargs.values())
    assert not (tmp_path / "CODE_RAN").exists()


def test_format_1_checkpoints_still_load(tmp_path):
    model, info = create_model("lenet")
    meta = {"format_version": 1, "model": {**{k: v for k, v in info.to_dict().items() if k != "model"},
                                           "spec": info.model}}
    save_file(model.state_dict(), str(tmp_path / "old.safetensors"), metadata={"gencnn": json.dumps(meta)})
    _, loaded, _ = load_checkpoint(tmp_path / "old.safetensors")
    assert loaded == info


# -- 2. a run's config and a recipe are data: trust comes only from the command line ---------------------------------
def test_a_recipe_cannot_grant_trust(tmp_path, capsys):
    model, _ = create_model("lenet", num_classes=4, img_size=16)
    torch.save({**model.state_dict(), "x": _Touch(tmp_path / "CODE_RAN")}, tmp_path / "evil.pt")
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"model: lenet\ndataset: synthetic\nimg_size: 16\nnum_classes: 4\nmode: dg\nepochs: 1\n"
                      f"weights: {tmp_path / 'evil.pt'}\ntrust_pickle: true\n")
    assert main(["train", str(recipe), "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    assert "refused to unpickle" in _one_line(capsys, "train")
    assert not (tmp_path / "CODE_RAN").exists()


def test_resume_reads_neither_trust_nor_the_start_weights_from_the_run(tmp_path):
    model, info = create_model("lenet", num_classes=4, img_size=16)
    start = tmp_path / "start.safetensors"
    save_file(model.state_dict(), str(start))
    run = tmp_path / "run"
    train(load_config(None, {**TINY, "weights": str(start), "out": str(run)}), log=quiet)
    start.unlink()  # the start weights moved away: resuming must not need them
    cfg = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(cfg + "trust_pickle: true\n")  # planted: ignored, never trusted
    summary = train(load_config(run / "config.yaml", {"resume": str(run), "epochs": 2}), log=quiet)
    assert summary["epochs"] == 2 and load_checkpoint(run)[2]["epoch"] == 2


# -- 3. no command replaces or deletes what the user did not name --------------------------------------------------
def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "lenet_mnist", "--dataset", "synthetic", "--img-size", "16", "--num-classes", "4", "--epochs",
            "1", "--mode", "dg", "--device", "cpu", "--out", str(run), "-q"]
    assert main(argv) == 0
    (run / "notes.txt").write_text("mine")
    before = _snapshot(run)
    capsys.readouterr()
    assert main(argv) == 2
    assert "already holds a run" in _one_line(capsys, "train") and _snapshot(run) == before
    assert main([*argv, "--overwrite", "--seed", "1"]) == 0
    after = _snapshot(run)
    assert after["notes.txt"] == before["notes.txt"] and after["checkpoint.safetensors"] != \
        before["checkpoint.safetensors"]


def test_export_leaves_a_data_file_it_did_not_write(tmp_path):
    from gencnn_plugin.export import export_onnx

    model, info = create_model("lenet")
    (tmp_path / "notes.data").write_text("the user's own file")
    export_onnx(model, tmp_path / "notes", info=info, exporter="legacy")
    assert (tmp_path / "notes.data").read_text() == "the user's own file"


@pytest.mark.parametrize("out,match", [("", "empty"), ("/dev/null", "is a device"), (".", "is a folder"),
                                       ("sub/", "folder"), ("file.txt/x.png", "is a file, not a folder")])
def test_outputs_must_be_regular_file_paths(tmp_path, capsys, out, match):
    (tmp_path / "sub").mkdir()
    (tmp_path / "file.txt").write_text("keep")
    os.chdir(tmp_path)
    ck = save_checkpoint(tmp_path / "c.safetensors", *create_model("lenet"))
    before = _snapshot(tmp_path)
    for argv in (["sample", str(ck), "--node", "logits:1", "--iters", "1", "--chains", "1", "--out", out],
                 ["export", str(ck), "--out", out]):
        assert main(argv) == 2
        assert match in _one_line(capsys, argv[0])
    assert _snapshot(tmp_path) == before
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_replaced_files_keep_their_mode_and_new_ones_get_the_umask(tmp_path):
    old_umask = os.umask(0o022)
    ck = save_checkpoint(tmp_path / "c.safetensors", *create_model("lenet"))
    png = tmp_path / "grid.png"
    png.write_bytes(b"old")
    os.chmod(png, 0o640)
    try:
        argv = ["sample", str(ck), "--node", "logits:1", "--iters", "1", "--chains", "1", "-q"]
        assert main([*argv, "--out", str(png), "--npz", str(tmp_path / "new.npz")]) == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(png.stat().st_mode) == 0o640 and png.read_bytes()[:4] == b"\x89PNG"
    assert stat.S_IMODE((tmp_path / "new.npz").stat().st_mode) == 0o644
    assert stat.S_IMODE(ck.stat().st_mode) == 0o644


def test_temporaries_of_a_killed_writer_are_removed(tmp_path):
    model, info = create_model("lenet")
    target = tmp_path / "c.safetensors"
    dead = tmp_path / ".c.safetensors.999999999.abcd.tmp"  # no process has that id
    alive = tmp_path / f".c.safetensors.{os.getppid()}.abcd.tmp"  # a living writer's: left alone
    other = tmp_path / ".notes.999999999.abcd.tmp"  # another file's: left alone
    for p in (dead, alive, other):
        p.write_bytes(b"partial")
    save_checkpoint(target, model, info)
    assert not dead.exists() and alive.exists() and other.exists() and target.exists()


# -- 4. ImageFolder: validation labels are the training split's -----------------------------------------------------
def _image_tree(root: Path, splits: dict[str, list[str]]) -> None:
    from PIL import Image

    for split, classes in splits.items():
        for name in classes:
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (40 * len(name), 0, 0)).save(root / split / name / "0.png")


def test_a_validation_split_missing_a_class_keeps_the_training_indices(tmp_path):
    _image_tree(tmp_path, {"train": ["ant", "bee", "cat"], "val": ["bee", "cat"]})
    loader = make_loader("imagefolder", tmp_path, "test", (3, 8, 8), (0.5,) * 3, (0.5,) * 3, "cpu", 4, workers=0,
                         classes=["ant", "bee", "cat"])
    labels = torch.cat([y for _, y in loader])
    assert sorted(labels.tolist()) == [1, 2]  # bee, cat: not re-indexed to 0, 1


def test_a_validation_class_unknown_to_training_is_an_error(tmp_path):
    _image_tree(tmp_path, {"train": ["ant", "bee"], "val": ["bee", "cow"]})
    with pytest.raises(DataError, match="cow"):
        make_loader("imagefolder", tmp_path, "test", (3, 8, 8), (0.5,) * 3, (0.5,) * 3, "cpu", 4, workers=0,
                    classes=["ant", "bee"])


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_image_is_one_line(tmp_path, capsys, workers):
    _image_tree(tmp_path / "data", {"train": ["ant", "bee"], "val": ["ant", "bee"]})
    (tmp_path / "data" / "train" / "bee" / "1.png").write_bytes(b"not a png")
    argv = ["train", "lenet_mnist", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--img-size",
            "16", "--in-chans", "3", "--mode", "dg", "--epochs", "1", "--batch-size", "2", "--device", "cpu",
            "--set", f"workers={workers}", "--out", str(tmp_path / "run"), "-q"]
    assert main(argv) == 2
    assert "1.png is not a readable image" in _one_line(capsys, "train")


# -- 5. token layers: the index addresses features D, the position tokens T -----------------------------------------
class _Tokens(torch.nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.embed = torch.nn.Linear(4, tokens * dim)
        self.head = torch.nn.Linear(dim, 3)

    def forward(self, x):
        t = self.embed(x.flatten(1)[:, :4]).view(-1, self.tokens, self.dim)
        return self.head(t.mean(1))


@pytest.mark.parametrize("tokens,dim", [(5, 64), (70, 8)])
def test_token_nodes_address_features_and_tokens(tokens, dim):
    from gencnn_plugin.specs import ModelInfo

    model = _Tokens(tokens, dim)
    info = ModelInfo("timm:resnet18", 3, 1, (1, 2, 2), (0.0,), (1.0,), ["a", "b", "c"])
    layer = {li.name: li for li in list_layers(model, info)}["embed"]
    assert layer.num_nodes == tokens * dim  # a linear layer: its features
    model.embed.register_forward_hook(lambda m, i, o: o.view(-1, tokens, dim))
    layer = {li.name: li for li in list_layers(model, info)}["embed"]
    assert layer.shape == (tokens, dim) and layer.num_nodes == dim
    x = torch.randn(2, 1, 2, 2)
    out = model.embed(x.flatten(1)[:, :4]).view(-1, tokens, dim)
    torch.testing.assert_close(node_score(model, info, f"embed:{dim - 1}", use_fx=False)(x), out.mean(1)[:, dim - 1])
    torch.testing.assert_close(node_score(model, info, f"embed:{dim - 1},{tokens - 1}", use_fx=False)(x),
                               out[:, tokens - 1, dim - 1])
    with pytest.raises(NodeError, match=f"{dim} tokens' features"):
        node_score(model, info, f"embed:{dim}")
    with pytest.raises(NodeError, match=f"{tokens} tokens"):
        node_score(model, info, f"embed:0,{tokens}")


# -- 6. a generated corpus: bad numbers, paths and data files give one line, never a traceback or a lost file ------
BAD_NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1e300", "-1e-300", "99999999999999999999", "1e-320", "abc", ""]
SAMPLE_FLAGS = ["--iters", "--leapfrog-steps", "--step-size", "--mass", "--sigma", "--chains", "--seed",
                "--adapt-steps", "--target-accept", "--nrow", "--min-size", "--threads"]
TRAIN_FLAGS = ["--epochs", "--batch-size", "--lr", "--momentum", "--weight-decay", "--switch-epoch", "--switch-lr",
               "--ess-threshold", "--ess-plateau", "--img-size", "--num-classes", "--in-chans", "--train-subset",
               "--seed", "--lr-gamma", "--lr-power", "--bias-lr-mult", "--eval-batch-size", "--threads", "--mean"]
EXPORT_FLAGS = ["--opset", "--batch", "--atol", "--threads"]
EVAL_FLAGS = ["--batch-size", "--threads"]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    torch.manual_seed(0)
    save_checkpoint(d / "c.safetensors", *create_model("lenet"), dataset="synthetic")
    (d / "keep.txt").write_text("the user's file")
    return d


def _mine(snapshot: dict) -> dict:
    """The user's files: everything but the outputs the corpus names (under out/)."""
    return {k: v for k, v in snapshot.items() if not k.startswith("out")}


def _run_cli(argv: list[str], capsys) -> tuple[int | None, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage error: exit 2 with its usage text
        code = e.code
    err = capsys.readouterr().err
    return code, err


def _check(code, err):
    assert code in (0, 1, 2) and "Traceback" not in err and "internal error" not in err, (code, err)
    if code == 2 and "usage:" not in err:
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("flag", SAMPLE_FLAGS)
def test_corpus_sample_numbers(corpus_dir, capsys, flag):
    before = _snapshot(corpus_dir)
    for value in BAD_NUMBERS:
        argv = ["sample", str(corpus_dir / "c.safetensors"), "--node", "logits:1", "--iters", "2", "--chains", "1",
                "--leapfrog-steps", "2", "--out", str(corpus_dir / "out" / "s.png"), "-q", flag, value]
        _check(*_run_cli(argv, capsys))
    assert _mine(_snapshot(corpus_dir)) == _mine(before)


@pytest.mark.parametrize("flag", TRAIN_FLAGS)
def test_corpus_train_numbers(tmp_path, capsys, flag):
    for i, value in enumerate(BAD_NUMBERS):
        argv = ["train", "lenet_mnist", "--dataset", "synthetic", "--img-size", "16", "--num-classes", "4",
                "--epochs", "1", "--mode", "gg", "--train-subset", "64", "--device", "cpu", "-q", "--out",
                str(tmp_path / f"r{i}"), flag, value]
        _check(*_run_cli(argv, capsys))


@pytest.mark.parametrize("flag", EXPORT_FLAGS + ["eval " + f for f in EVAL_FLAGS])
def test_corpus_export_and_eval_numbers(corpus_dir, capsys, flag):
    before = _snapshot(corpus_dir)
    for value in BAD_NUMBERS:
        if flag.startswith("eval "):
            argv = ["eval", str(corpus_dir / "c.safetensors"), flag.split()[1], value]
        else:
            argv = ["export", str(corpus_dir / "c.safetensors"), "--out", str(corpus_dir / "out" / "m.onnx"),
                    "--exporter", "legacy", "--no-verify", flag, value]
        _check(*_run_cli(argv, capsys))
    assert _mine(_snapshot(corpus_dir)) == _mine(before)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=30), st.sampled_from(["", ".", "..", "/", "/dev/null", "/proc/self/mem", "keep.txt/x",
                                                       "a" * 300, "x\n.png", "deep/er/x.png", "-x.png"])))
def test_corpus_output_paths(corpus_dir, capsys, out):
    before = _snapshot(corpus_dir)
    cwd = os.getcwd()
    os.chdir(corpus_dir)
    try:
        argv = ["sample", "c.safetensors", "--node", "logits:1", "--iters", "1", "--chains", "1",
                "--leapfrog-steps", "1", "-q", "--out", out]
        code, err = _run_cli(argv, capsys)
    finally:
        os.chdir(cwd)
    _check(code, err)
    after = _snapshot(corpus_dir)
    named = None
    try:
        named = (corpus_dir / out).resolve() if out else None
    except (ValueError, OSError):
        pass
    for name, value in before.items():  # nothing the user had was changed, except the file they named
        assert after.get(name) == value or (corpus_dir / name).resolve() == named, name


def _idx(path: Path, magic: bytes, dims: list[int], body: bytes, compress: bool = True) -> None:
    raw = magic + b"".join(d.to_bytes(4, "big", signed=True) for d in dims) + body
    (gzip.open if compress else open)(path, "wb").write(raw)


DATA_FAULTS = {
    "truncated gzip": lambda d: (d / "t10k-images-idx3-ubyte.gz").write_bytes(
        (d / "t10k-images-idx3-ubyte.gz").read_bytes()[:-12]),
    "garbage": lambda d: (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x00garbage" * 10),
    "wrong magic": lambda d: _idx(d / "t10k-labels-idx1-ubyte.gz", b"\x00\x00\x0d\x01", [10], bytes(10)),
    "negative dims": lambda d: _idx(d / "t10k-images-idx3-ubyte.gz", b"\x00\x00\x08\x03", [-1, 28, 28], b""),
    "fewer images than labels": lambda d: _idx(d / "t10k-images-idx3-ubyte.gz", b"\x00\x00\x08\x03", [5, 28, 28],
                                               bytes(5 * 784)),
    "label 12": lambda d: _idx(d / "t10k-labels-idx1-ubyte.gz", b"\x00\x00\x08\x01", [10], bytes([12] * 10)),
    "empty": lambda d: (d / "t10k-images-idx3-ubyte.gz").write_bytes(b""),
    "header only": lambda d: _idx(d / "t10k-images-idx3-ubyte.gz", b"\x00\x00\x08\x03", [10, 28], b""),
}


def _tiny_mnist(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 64), ("t10k", 10)):
        _idx(d / f"{split}-images-idx3-ubyte.gz", b"\x00\x00\x08\x03", [n, 28, 28], bytes(n * 784))
        _idx(d / f"{split}-labels-idx1-ubyte.gz", b"\x00\x00\x08\x01", [n], bytes(i % 10 for i in range(n)))


@pytest.mark.parametrize("fault", list(DATA_FAULTS))
def test_corpus_damaged_data_files(tmp_path, capsys, fault):
    data = tmp_path / "data"
    _tiny_mnist(data)
    DATA_FAULTS[fault](data)
    ck = save_checkpoint(tmp_path / "c.safetensors", *create_model("lenet"), dataset="mnist")
    for argv in (["eval", str(ck), "--data-dir", str(data)],
                 ["train", "lenet_mnist", "--data-dir", str(data), "--epochs", "1", "--device", "cpu", "-q",
                  "--mode", "dg", "--out", str(tmp_path / "run")]):
        code, err = _run_cli(argv, capsys)
        assert code == 2, (fault, argv[0], err)
        _check(code, err)


def test_the_tiny_set_itself_loads(tmp_path, capsys):
    """The corpus's damage is what fails: the undamaged tiny set trains and evaluates."""
    from gencnn_plugin.data import load_idx

    _tiny_mnist(tmp_path / "data")
    assert load_idx("mnist", tmp_path / "data", train=False).images.shape == (10, 1, 28, 28)
    ck = save_checkpoint(tmp_path / "c.safetensors", *create_model("lenet"), dataset="mnist")
    assert main(["eval", str(ck), "--data-dir", str(tmp_path / "data")]) == 0


# -- 7. found by an independent review (each was a reproduction that failed before its fix) -------------------------
@pytest.mark.parametrize("model", ["tv:fcn_resnet50", "tv:lraspp_mobilenet_v3_large", "tv:raft_small",
                                   "timm:lenet_caffe.\x1b[31mred", "timm:lenet_caffe.<h1>x", "hf-hub:someone/net"])
def test_only_image_classifiers_are_specs(tmp_path, model):
    """torchvision's detection/segmentation builders download backbone weights even without `pretrained`; specs
    with escapes or markup would reach the terminal and the app. A checkpoint naming one is refused."""
    path = _crafted(tmp_path, {"model": model})
    with pytest.raises(CheckpointError, match="model"):
        load_checkpoint(path)


def test_eval_never_reads_the_folder_a_checkpoint_names(tmp_path, capsys):
    _image_tree(tmp_path / "secret", {"train": ["a", "b"], "val": ["a", "b"]})
    model, info = create_model("lenet", num_classes=2, in_chans=3, img_size=16)
    ck = save_checkpoint(tmp_path / "c.safetensors", model, info, dataset="imagefolder",
                         config={"data_dir": str(tmp_path / "secret")})
    assert main(["eval", str(ck), "--device", "cpu"]) == 2
    assert "pass --data-dir" in _one_line(capsys, "eval")


def test_a_recipe_cannot_choose_the_run_folder(tmp_path, capsys):
    victim = tmp_path / "victim"
    train(load_config(None, {**TINY, "out": str(victim)}), log=quiet)
    before = _snapshot(victim)
    recipe = tmp_path / "innocent.yaml"
    recipe.write_text(f"model: lenet\ndataset: synthetic\nimg_size: 16\nnum_classes: 4\nepochs: 2\nmode: dg\n"
                      f"resume: {victim}\nout: {tmp_path / 'elsewhere'}\n")
    os.chdir(tmp_path)
    assert main(["train", str(recipe), "--device", "cpu", "-q", "--out", str(tmp_path / "mine")]) == 0
    assert _snapshot(victim) == before and not (tmp_path / "elsewhere").exists()
    assert "ignored resume from innocent.yaml" in capsys.readouterr().err


def test_links_planted_in_a_run_folder_are_not_written_through(tmp_path, capsys):
    run = tmp_path / "run"
    train(load_config(None, {**TINY, "out": str(run)}), log=quiet)
    (tmp_path / "thesis.txt").write_text("years of work")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(tmp_path / "thesis.txt")
    assert main(["train", "--resume", str(run), "--epochs", "2", "--device", "cpu", "-q"]) == 2
    assert "symbolic link" in _one_line(capsys, "train")
    assert (tmp_path / "thesis.txt").read_text() == "years of work"


def test_external_data_never_replaces_a_users_data_file(tmp_path, capsys):
    (tmp_path / "notes.data").write_text("my notes")
    os.chmod(tmp_path / "notes.data", 0o640)
    os.chdir(tmp_path)  # also from the output's own folder (onnx checks the current folder)
    argv = ["export", "lenet", "--out", "notes", "--external-data", "--no-verify", "--exporter", "legacy"]
    assert main(argv) == 2
    assert "notes.data exists and is not the external data of notes" in _one_line(capsys, "export")
    assert (tmp_path / "notes.data").read_text() == "my notes"
    assert main(["export", "lenet", "--out", "model.onnx", "--external-data", "--no-verify",
                 "--exporter", "legacy"]) == 0
    assert main(["export", "lenet", "--out", "model.onnx", "--external-data", "--no-verify",
                 "--exporter", "legacy"]) == 0  # replacing its own artifact, from its folder
    assert (tmp_path / "model.onnx.data").stat().st_size > 100_000


def test_metadata_asking_for_a_huge_network_fails_before_allocating(tmp_path):
    import resource

    path = _crafted(tmp_path, {"model": "timm:zfnet", "num_classes": 10, "in_chans": 1, "input_size": [1, 28, 28],
                               "kwargs": {"hidden": 20000, "widths": [8, 8, 8, 8, 8]}})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="do not fit zfnet"):
        load_checkpoint(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"resident memory grew {grown_mb:.0f} MB (a 20000-wide fc6 would be 1.6 GB)"


def test_bad_constructor_values_and_outputs_are_one_line(tmp_path, capsys):
    assert main(["nodes", "lenet", "--model-arg", "drop_rate=abc"]) == 2
    assert "cannot build lenet with" in _one_line(capsys, "nodes")
    os.chdir(tmp_path)
    ck = save_checkpoint(tmp_path / "c.safetensors", *create_model("lenet"))
    (tmp_path / "victim.txt").write_text("keep")
    (tmp_path / "samples.png").symlink_to(tmp_path / "victim.txt")  # the default name, a link: never followed
    base = ["sample", str(ck), "--node", "logits:1", "--iters", "1", "--chains", "1", "-q"]
    assert main(base) == 2 and "symbolic link" in _one_line(capsys, "sample")
    assert main([*base, "--out", "x.png", "--npz", "x.png"]) == 2 and "same file" in _one_line(capsys, "sample")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert main([*base, "--out", "loop"]) == 2 and "leads nowhere" in _one_line(capsys, "sample")
    assert (tmp_path / "victim.txt").read_text() == "keep"
