"""The trainer end to end on tiny data: run folder contents, resume, modes, errors."""

from __future__ import annotations

import json

import pytest
import torch

from gencnn_plugin import load_checkpoint, load_config, train

TINY = dict(dataset="synthetic", model="lenet", img_size=16, num_classes=4, batch_size=32, epochs=3,
            switch_epoch=2, lr=0.05, lr_policy="cosine", device="cpu", log_interval=1000)


def quiet(msg: str) -> None:
    pass


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["dg", "gg", "gg+dg", "auto"])
def test_modes_leave_a_complete_run_folder(tmp_path, mode):
    summary = train(load_config(None, {**TINY, "mode": mode, "out": str(tmp_path), "ess_threshold": 0.9}), log=quiet)
    assert {p.name for p in tmp_path.iterdir()} >= {"checkpoint.safetensors", "train_state.pt", "metrics.jsonl",
                                                    "summary.json", "config.yaml"}
    rows = metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(0 < r["mean_ess"] <= 1 and r["seconds"] > 0 for r in rows)
    phases = [r["phase"] for r in rows]
    expected = {"dg": ["dg"] * 3, "gg": ["gg"] * 3, "gg+dg": ["gg", "gg", "dg"]}
    if mode in expected:
        assert phases == expected[mode]
    else:  # auto: GG first, then DG once the ESS fell below the (here high) threshold
        assert phases[0] == "gg" and summary["switched_at_epoch"] is not None and phases[-1] == "dg"
    assert summary["test_error"] == rows[-1]["test_error"] < 0.5  # 4 classes: chance is 0.75
    _, info, meta = load_checkpoint(tmp_path)
    assert meta["mode"] == mode and meta["epoch"] == 3 and info.num_classes == 4


class Interrupt(Exception):
    pass


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    full = tmp_path / "full"
    train(load_config(None, {**TINY, "out": str(full)}), log=quiet)

    def stop_after_epoch_2(msg: str) -> None:
        if msg.startswith("epoch   2/3"):
            raise Interrupt

    part = tmp_path / "part"
    with pytest.raises(Interrupt):
        train(load_config(None, {**TINY, "out": str(part)}), log=stop_after_epoch_2)
    assert len(metrics(part)) == 2
    train(load_config(None, {**TINY, "resume": str(part)}), log=quiet)

    def strip(rows):
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]

    assert strip(metrics(part)) == strip(metrics(full))
    a, _, _ = load_checkpoint(full)
    b, _, _ = load_checkpoint(part)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_labels_beyond_num_classes_fail_before_training(tmp_path, data_dir):
    cfg = load_config("lenet_mnist", dict(num_classes=5, data_dir=str(data_dir), out=str(tmp_path), device="cpu"))
    with pytest.raises(ValueError, match=r"labels span \[0, 9\] but the model has num_classes=5"):
        train(cfg, log=quiet)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_lenet_on_real_mnist_learns(tmp_path, data_dir):
    """The paper's recipe, GG only, 100 steps on real MNIST: far better than chance (0.9) on the 10,000 test images."""
    cfg = load_config("lenet_mnist", dict(epochs=1, train_subset=6400, data_dir=str(data_dir), out=str(tmp_path),
                                          device="cpu", mode="gg"))
    summary = train(cfg, log=quiet)
    assert summary["test_error"] < 0.3


def test_zoo_recipe_on_one_channel_input(tmp_path):
    cfg = load_config("resnet18_mnist", dict(dataset="synthetic", num_classes=4, img_size=16, epochs=1,
                                             out=str(tmp_path), device="cpu", mode="gg", batch_size=32))
    summary = train(cfg, log=quiet)
    model, info, _ = load_checkpoint(tmp_path)
    assert info.spec == "timm:resnet18" and info.in_chans == 1 and model.conv1.in_channels == 1
    assert summary["test_error"] is not None
