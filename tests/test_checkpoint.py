"""Checkpoints: one safetensors file with metadata; atomic writes; weights-only resume state."""

from __future__ import annotations

import pytest
import torch

from gencnn_plugin import create_model, load_checkpoint, read_metadata, save_checkpoint
from gencnn_plugin.checkpoint import CheckpointError, atomic_path, load_train_state, save_train_state


@pytest.mark.parametrize("spec,kw", [
    ("lenet", {}), ("timm:test_convnext", dict(num_classes=7, in_chans=1, img_size=32)),
    ("tv:squeezenet1_1", dict(num_classes=4)),
])
def test_round_trip_needs_only_the_file(tmp_path, spec, kw):
    model, info = create_model(spec, **kw)
    path = save_checkpoint(tmp_path / "c.safetensors", model, info, mode="gg+dg", epoch=3)
    loaded, info2, meta = load_checkpoint(path)
    assert info2 == info and meta["mode"] == "gg+dg" and meta["epoch"] == 3
    assert not loaded.training
    x = torch.randn(2, *info.input_size)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_run_folder_is_accepted(tmp_path):
    model, info = create_model("lenet")
    save_checkpoint(tmp_path / "checkpoint.safetensors", model, info)
    assert read_metadata(tmp_path)["model"]["model"] == "timm:lenet_caffe"


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "c.safetensors"
    model, info = create_model("lenet")
    save_checkpoint(target, model, info, epoch=1)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a file")
        raise RuntimeError("disk full")
    assert read_metadata(target)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    for name, match in [("empty", "is empty"), ("junk", "not a readable"), ("plain", "no gencnn metadata")]:
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(tmp_path / f"{name}.safetensors")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="folder without"):
        load_checkpoint(tmp_path)


def test_wrong_architecture_names_the_keys(tmp_path):
    import json

    from safetensors.torch import save_file

    model, info = create_model("lenet")
    meta = {"format_version": 1, "model": {**info.to_dict(), "num_classes": 5, "class_names": list("abcde")}}
    save_file(model.state_dict(), str(tmp_path / "c.safetensors"), metadata={"gencnn": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="fc2"):
        load_checkpoint(tmp_path / "c.safetensors")


def test_train_state_refuses_pickled_objects(tmp_path):
    save_train_state(tmp_path / "s.pt", {"epoch": 2, "t": torch.ones(2), "h": [{"a": 1.0}]})
    assert load_train_state(tmp_path / "s.pt")["epoch"] == 2

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_train_state(tmp_path / "evil.pt")
