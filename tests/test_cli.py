"""The ``gencnn`` command line: help, train, eval, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gencnn_plugin.cli import main


@pytest.mark.parametrize("argv", [[], ["train"], ["eval"], ["models"], ["nodes"], ["sample"], ["export"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: gencnn" in capsys.readouterr().out


def test_train_then_eval(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "lenet_mnist", "--dataset", "synthetic", "--img-size", "16", "--num-classes", "4",
               "--epochs", "2", "--switch-epoch", "1", "--batch-size", "32", "--lr", "0.05", "--seed", "3",
               "--device", "cpu", "--out", str(run), "--set", "lr_policy=cosine"])
    assert rc == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["seed"] == 3 and summary["epochs"] == 2 and summary["switched_at_epoch"] == 1
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_error"] == pytest.approx(summary["test_error"])
    # --resume alone picks up the run's own config; nothing is left to do
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0


@pytest.mark.parametrize("argv,match", [
    (["train", "lenet_mnist", "--set", "epoch=3"], "unknown config key 'epoch'"),
    (["train", "lenet_mnst"], "no recipe"),
    (["train", "lenet_mnist", "--model", "timm:resnt18"], "did you mean"),
    (["train"], "give a recipe"),
    (["eval", "/nonexistent/ckpt.safetensors"], "no such file"),
    (["train", "lenet_mnist", "--device", "cuda:7", "--dataset", "synthetic"], "cuda"),
])
def test_errors_are_one_line_with_exit_2(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_module_entry_point_and_console_script():
    from pathlib import Path

    from gencnn_plugin import __version__

    out = subprocess.run([sys.executable, "-m", "gencnn_plugin", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"gencnn {__version__}"
    script = Path(sys.executable).parent / "gencnn"  # the console script pip installed beside this interpreter
    assert script.is_file(), "gencnn is not installed as a console script (pip install -e .)"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"gencnn {__version__}"
    out = subprocess.run([str(script), "sample", "lenet", "--node", "conv9:1"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("gencnn sample: error: no layer 'conv9'")


def test_the_cli_makes_openmp_threads_wait_passively_unless_told():
    """docs/results/threads.md: spinning OpenMP threads collapse on a busy machine; the policy must be set before
    torch loads, so it is checked in a fresh interpreter."""
    import os
    import subprocess
    import sys

    code = "import os, gencnn_plugin.cli, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
