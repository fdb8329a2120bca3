"""Faults injected on purpose: hostile and broken files, killed and interrupted training, bad parameters, a
sampler pushed past its limits, and property-based inputs. docs/reliability.md lists each one with its test."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gencnn_plugin import create_model, load_checkpoint, load_config, open_model, save_checkpoint, train
from gencnn_plugin.checkpoint import CheckpointError
from gencnn_plugin.cli import main
from gencnn_plugin.config import ConfigError
from gencnn_plugin.hmc import HMCConfig
from gencnn_plugin.nodes import NodeError, parse_node
from gencnn_plugin.specs import WeightsError
from gencnn_plugin.trainer import NonFiniteLossError, TrainingInterrupted
from gencnn_plugin.visualize import sample_node

REPO = Path(__file__).resolve().parent.parent
TINY = dict(dataset="synthetic", model="lenet", img_size=16, num_classes=4, batch_size=32, epochs=2,
            switch_epoch=1, lr=0.05, lr_policy="cosine", device="cpu", log_interval=1000)
EXAMPLES = 150  # per property; docs/reliability.md reports the total


def quiet(msg: str) -> None:
    pass


class _Touch:
    """Unpickling this runs ``touch MARKER``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile(tmp_path):
    """A .pt whose unpickling would create a file, and that file's path."""
    marker = tmp_path / "CODE_RAN"
    model, _ = create_model("lenet")
    path = tmp_path / "weights.pt"
    torch.save({**model.state_dict(), "payload": _Touch(marker)}, path)
    return path, marker


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gencnn {command}: error:") and "\n" not in err and "Traceback" not in err, err
    return err


# -- 1. no code execution from files -------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["eval", "lenet", "--weights", "{w}"],
    ["eval", "{w}"],
    ["sample", "lenet", "--weights", "{w}", "--node", "logits:1", "--iters", "1", "--chains", "1"],
    ["export", "lenet", "--weights", "{w}", "--out", "{tmp}/x.onnx", "--exporter", "legacy"],
    ["nodes", "lenet", "--weights", "{w}"],
    ["train", "lenet_mnist", "--dataset", "synthetic", "--weights", "{w}", "--mode", "dg", "--epochs", "1",
     "--out", "{tmp}/r"],
], ids=["eval-weights", "eval-checkpoint", "sample", "export", "nodes", "train"])
def test_cli_refuses_a_hostile_pickle(hostile, tmp_path, capsys, argv):
    weights, marker = hostile
    code = main([a.format(w=weights, tmp=tmp_path) for a in argv])
    err = _one_line_error(capsys, argv[0])
    assert code == 2 and ("refused to unpickle" in err or "not a gencnn checkpoint" in err)
    assert not marker.exists()


def test_python_api_refuses_a_hostile_pickle(hostile, tmp_path):
    weights, marker = hostile
    with pytest.raises(WeightsError, match="refused to unpickle.*--trust-pickle"):
        create_model("lenet", weights=weights)
    with pytest.raises(WeightsError, match="refused"):
        open_model("lenet", weights=weights)
    state_dir = tmp_path / "run"
    state_dir.mkdir()
    torch.save({"epoch": 1, "payload": _Touch(marker)}, state_dir / "train_state.pt")
    (state_dir / "config.yaml").write_text("model: lenet\ndataset: synthetic\n")
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        train(load_config(None, {**TINY, "resume": str(state_dir)}), log=quiet)
    assert not marker.exists()


def test_gui_refuses_a_hostile_pickle(hostile, qtbot, tmp_path):
    from PySide6.QtCore import QSettings

    from gencnn_gui.main_window import MainWindow

    weights, marker = hostile
    window = MainWindow(QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(window)
    assert not window.open_source("lenet", str(weights))
    assert not window.open_source(str(weights))
    assert "refused to unpickle" in window.error_label.text() or "not a gencnn checkpoint" in window.error_label.text()
    assert not marker.exists()


def test_trusting_a_pickle_is_an_explicit_opt_in(tmp_path):
    model, _ = create_model("lenet")
    path = tmp_path / "old.pt"
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)  # harmless, not allowed
    with pytest.raises(WeightsError, match="refused"):
        create_model("lenet", weights=path)
    loaded, _ = create_model("lenet", weights=path, trust_pickle=True)
    torch.testing.assert_close(loaded.state_dict()["fc2.weight"], model.state_dict()["fc2.weight"])


# -- 2. bad files: one line, exit 2 ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    model, info = create_model("lenet")
    save_checkpoint(d / "good.safetensors", model, info)
    data = (d / "good.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[12:60] = b"\xff" * 48
    (d / "corrupt.safetensors").write_bytes(bytes(corrupt))
    (d / "empty.safetensors").write_bytes(b"")
    save_file(model.state_dict(), str(d / "plain.safetensors"))
    five, info5 = create_model("lenet", num_classes=5)
    save_checkpoint(d / "five.safetensors", five, info5)
    resnet, _ = create_model("timm:resnet18", num_classes=10, in_chans=1)
    save_file(resnet.state_dict(), str(d / "resnet.safetensors"))
    # our metadata on another network's weights: the loader must name the keys that do not fit
    import json

    from safetensors import safe_open

    with safe_open(str(d / "good.safetensors"), framework="pt") as f:
        meta = f.metadata()
    save_file(resnet.state_dict(), str(d / "mislabelled.safetensors"), metadata=meta)
    (d / "folder").mkdir()
    torch.save(model.state_dict(), d / "state.pt")
    json.dumps(meta)
    return d


@pytest.mark.parametrize("argv,match", [
    (["eval", "{d}/truncated.safetensors"], "not a readable safetensors file"),
    (["eval", "{d}/corrupt.safetensors"], "not a readable safetensors file"),
    (["eval", "{d}/empty.safetensors"], "is empty"),
    (["eval", "{d}/plain.safetensors"], r"no gencnn metadata: name its model .*--weights plain.safetensors"),
    (["eval", "{d}/mislabelled.safetensors"],
     r"do not fit lenet_caffe: 7 missing \(conv1.bias.*121 unexpected \(bn1\..*conv1.weight \(64, 1, 7, 7\)"),
    (["eval", "{d}/folder"], "folder without checkpoint.safetensors"),
    (["eval", "{d}/state.pt"], "not a gencnn checkpoint.*SPEC --weights"),
    (["eval", "{d}/missing.safetensors"], "no such file"),
    (["sample", "lenet", "--weights", "{d}/five.safetensors", "--node", "logits:1"],
     r"fc2.weight \(5, 500\) in the file vs \(10, 500\) in the model"),
    (["sample", "lenet", "--weights", "{d}/resnet.safetensors", "--node", "logits:1"], "121 unexpected"),
    (["sample", "lenet", "--weights", "{d}/empty.safetensors", "--node", "logits:1"], "is empty"),
    (["sample", "lenet", "--weights", "{d}/folder", "--node", "logits:1"], "is a folder"),
    (["export", "{d}/truncated.safetensors", "--out", "{d}/x.onnx"], "not a readable"),
    (["nodes", "{d}/corrupt.safetensors"], "not a readable"),
])
def test_bad_files_are_one_line_errors(bad_files, capsys, argv, match):
    argv = [a.format(d=bad_files) for a in argv]
    assert main(argv) == 2
    import re

    assert re.search(match, _one_line_error(capsys, argv[0]))
    with pytest.raises(Exception):  # noqa: B017  --debug shows the traceback instead
        main(["--debug", *argv])


# -- 3. training never loses more than one epoch --------------------------------------------------------------------
_SAVE_LOOP = """
import sys, torch
from gencnn_plugin import create_model, save_checkpoint
model, info = create_model("timm:resnet18", num_classes=10)
i = 0
while True:
    torch.nn.init.normal_(model.fc.weight, std=0.01)
    save_checkpoint(sys.argv[1], model, info, epoch=i)
    print(i, flush=True)
    i += 1
"""


def test_sigkill_while_saving_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "c.safetensors"
    for delay in (0.35, 0.8, 1.3):
        proc = subprocess.Popen([sys.executable, "-c", _SAVE_LOOP, str(path)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # one checkpoint is complete; later saves are in flight when the kill comes
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _, _, meta = load_checkpoint(path)
        assert meta["epoch"] >= 0
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["c.safetensors"]
    # a killed write can leave its hidden temporary file beside the checkpoint; never a half-written checkpoint


def test_sigterm_stops_training_cleanly_and_resume_continues(tmp_path):
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "gencnn_plugin", "train", "lenet_mnist", "--mode", "dg", "--dataset", "synthetic",
            "--set",
            "img_size=16", "--set", "num_classes=4", "--epochs", "400", "--device", "cpu", "--out", str(run)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.time() + 120
    while not (run / "checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted in epoch" in err and "--resume" in err, err
    _, _, meta = load_checkpoint(run)
    done = meta["epoch"]
    summary = train(load_config(run / "config.yaml", {"resume": str(run), "epochs": done + 1}), log=quiet)
    assert summary["epochs"] == done + 1 and load_checkpoint(run)[2]["epoch"] == done + 1


def test_ctrl_c_in_the_api_raises_training_interrupted(tmp_path):
    def interrupt_in_epoch_2(msg: str) -> None:
        if msg.startswith("epoch   1/"):
            raise KeyboardInterrupt

    match = r"interrupted in epoch 1; the checkpoint of epoch 1 is kept .*--resume"
    with pytest.raises(TrainingInterrupted, match=match):
        train(load_config(None, {**TINY, "out": str(tmp_path)}), log=interrupt_in_epoch_2)


def test_ctrl_c_before_the_first_epoch_ends_does_not_advise_resume(tmp_path, monkeypatch, capsys):
    trainer = sys.modules["gencnn_plugin.trainer"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_one_epoch", interrupted)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match=r"no epoch had finished.*--overwrite --out"):
        train(load_config(None, {**TINY, "out": str(run)}), log=quiet)
    assert main(["train", "--resume", str(run)]) == 2  # and --resume says why it cannot, in one line
    assert "no epoch of that run had finished" in _one_line_error(capsys, "train")


def test_non_finite_loss_names_epoch_and_step_and_keeps_the_checkpoint(tmp_path):
    train(load_config(None, {**TINY, "epochs": 1, "out": str(tmp_path)}), log=quiet)
    good = load_checkpoint(tmp_path)[0].state_dict()["fc2.weight"].clone()
    match = r"epoch 2 at step \d+ of \d+ \(\w+\); the last good checkpoint .*epoch 1"
    with pytest.raises(NonFiniteLossError, match=match):
        train(load_config(None, {**TINY, "mode": "dg", "lr": 1e6, "lr_policy": "fixed", "resume": str(tmp_path)}),
              log=quiet)
    torch.testing.assert_close(load_checkpoint(tmp_path)[0].state_dict()["fc2.weight"], good)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = sys.modules["gencnn_plugin.trainer"]

    train(load_config(None, {**TINY, "epochs": 1, "out": str(tmp_path)}), log=quiet)
    real = trainer.save_checkpoint

    def full(path, *a, **k):
        with open(Path(path).with_name(".partial"), "wb") as f:
            f.write(b"x")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(trainer, "save_checkpoint", full)
    with pytest.raises(CheckpointError, match=r"could not save epoch 2 .*No space left on device.*previous checkpoint"):
        train(load_config(None, {**TINY, "resume": str(tmp_path)}), log=quiet)
    monkeypatch.setattr(trainer, "save_checkpoint", real)
    assert load_checkpoint(tmp_path)[2]["epoch"] == 1


# -- 4. bad parameters -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,match", [
    (["sample", "lenet", "--node", "logits:1", "--step-size", "0"], "step_size: must be > 0"),
    (["sample", "lenet", "--node", "logits:1", "--step-size", "-1"], "step_size: must be > 0"),
    (["sample", "lenet", "--node", "logits:1", "--leapfrog-steps", "0"], "leapfrog_steps: must be >= 1"),
    (["sample", "lenet", "--node", "logits:1", "--chains", "0"], "chains: must be >= 1"),
    (["sample", "lenet", "--node", "logits:10"], r"logits has 10 outputs \(0-9\)"),
    (["sample", "lenet", "--node", "conv2:3,9,9"], "out of range"),
    (["sample", "lenet", "--node", "conv9:1"], "no layer 'conv9'"),
    (["sample", "lenet", "--node", "logits:1", "--device", "cuda:3"], "CUDA is not available"),
    (["train", "lenet_mnist", "--batch-size", "1"], "GG uses the batch .* needs batch_size >= 2"),
    (["train", "lenet_mnist", "--batch-size", "0"], "batch_size: must be >= 1"),
    (["train", "lenet_mnist", "--set", "lr=fast"], "lr"),
    (["train", "lenet_mnist", "--set", "no_such_key=1"], "no_such_key"),
    (["train", "lenet_mnist", "--device", "cuda:1", "--dataset", "synthetic"], "CUDA is not available"),
])
def test_bad_parameters_are_one_line_errors(capsys, argv, match):
    import re

    assert main(argv) == 2
    assert re.search(match, _one_line_error(capsys, argv[0]))


def test_cuda_out_of_memory_retries_with_fewer_chains(monkeypatch):
    import gencnn_plugin.visualize as vis

    real = vis.hmc_sample

    def small_device(score, x0, *args, **kw):
        if x0.shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(score, x0, *args, **kw)

    monkeypatch.setattr(vis, "hmc_sample", small_device)
    model, info = create_model("lenet")
    run = sample_node(model, info, "logits:1", HMCConfig(chains=16, iters=2, leapfrog_steps=2))
    assert run.config.chains == 4 and run.result.x.shape[0] == 4
    assert run.warnings[:2] == ["cpu ran out of memory with 16 chains per node; ran 8",
                                "cpu ran out of memory with 8 chains per node; ran 4"]


# -- 6. sampler robustness -----------------------------------------------------------------------------------------
def test_an_exploding_score_is_rejected_never_nan(capsys, tmp_path):
    torch.manual_seed(0)
    model, info = create_model("lenet")
    run = sample_node(model, info, "fc1:3", HMCConfig(chains=4, iters=5, leapfrog_steps=5, step_size=1e5))
    assert torch.isfinite(run.result.x).all() and run.result.summary["accept_rate"] == 0.0
    assert "no proposal was accepted" in run.warnings[-1]
    assert main(["sample", "lenet", "--node", "fc1:3", "--chains", "2", "--iters", "2", "--leapfrog-steps", "2",
                 "--step-size", "1e6", "--out", str(tmp_path / "s.png")]) == 0
    assert "warning: no proposal was accepted" in capsys.readouterr().err


def test_a_long_gui_session_does_not_grow_memory(qtbot, tmp_path):
    from PySide6.QtCore import QSettings

    from gencnn_gui.main_window import MainWindow

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    window = MainWindow(QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(window)
    window.open_source("lenet")
    window.chains.setValue(4)
    window.iters.setValue(1000)
    window.leapfrog_steps.setValue(2)
    sizes = []
    for cycle in range(200):
        with qtbot.waitSignal(window.worker.progress, timeout=10_000):
            window.start()
        with qtbot.waitSignal(window.worker.finished, timeout=10_000):
            window.stop()
        qtbot.waitUntil(lambda: not window.running)
        if cycle in (20, 199):
            sizes.append(rss_mb())
    assert sizes[1] - sizes[0] < 40, f"resident memory grew {sizes[1] - sizes[0]:.0f} MB over 180 start/stop cycles"


# -- 5. property-based tests ---------------------------------------------------------------------------------------
_values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.lists(st.floats(-2, 2), max_size=4))
_keys = st.sampled_from(["model", "mode", "epochs", "batch_size", "lr", "lr_policy", "momentum", "switch_epoch",
                         "switch_lr", "dataset", "img_size", "num_classes", "mean", "std", "seed", "amp", "device",
                         "ess_threshold", "ess_plateau", "bias_lr_mult", "weights_file", "no_such_key"])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=6))
def test_config_loader_accepts_or_raises_config_error(overrides):
    try:
        cfg = load_config("lenet_mnist", overrides)
    except ConfigError:
        return
    assert cfg.batch_size >= 1 and cfg.epochs >= 1 and cfg.lr > 0


_node_text = st.one_of(
    st.text(max_size=20),
    st.builds(lambda layer, parts: f"{layer}:{','.join(parts)}",
              st.sampled_from(["logits", "conv1", "conv2", "fc1", "pool2", "x", ""]),
              st.lists(st.one_of(st.integers(-5, 60).map(str), st.sampled_from(["mean", "", " ", "a", "1.5"])),
                       max_size=4)))


@settings(max_examples=EXAMPLES, deadline=None)
@given(_node_text)
def test_node_parser_accepts_or_raises_node_error(text):
    try:
        node = parse_node(text, [str(i) for i in range(10)])
    except NodeError:
        return
    assert node.layer and isinstance(node.index, int)


_LENET, _LENET_INFO = create_model("lenet")


@settings(max_examples=EXAMPLES, deadline=None)
@given(_node_text)
def test_node_scores_accept_or_raise_node_error(text):
    from gencnn_plugin.nodes import node_score

    try:
        score = node_score(_LENET, _LENET_INFO, text)
    except NodeError:
        return
    assert score(torch.zeros(2, 1, 28, 28)).shape == (2,)


_argv = st.lists(st.sampled_from([
    "eval", "sample", "export", "nodes", "models", "--node", "logits:1", "conv1:x", "--chains", "-3", "0", "2.5",
    "--iters", "--step-size", "nan", "--device", "cuda:9", "--weights", "/nonexistent.pt", "timm:no_such_net",
    "tv:nope", "/nonexistent/run", "--out", "--opset", "--exporter", "onnx", "--json", "--preset", "no_preset",
    "--mean", "--sigma", "-1", "", "--debug-not", "--precision", "fp8",
]), min_size=1, max_size=7)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_argv)
def test_cli_returns_a_status_or_usage_error(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors and --help
        assert e.code in (0, 2)
        return
    finally:
        capsys.readouterr()
    assert code in (0, 1, 2)


def test_an_interrupt_waits_until_the_resume_state_and_checkpoint_are_both_written():
    """SIGTERM inside the write of the pair is held and raised after it (the race that once left a resume state one
    epoch ahead of the checkpoint)."""
    import os

    trainer = sys.modules["gencnn_plugin.trainer"]
    reached = []
    with pytest.raises(KeyboardInterrupt), trainer._signals_interrupt():
        with trainer._deferred_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            reached.append("end of block")
    assert reached == ["end of block"]
