"""Recipes and their validation."""

from __future__ import annotations

import pytest

from gencnn_plugin.config import ConfigError, TrainConfig, config_from_dict, list_configs, load_config


def test_every_recipe_loads():
    assert {"lenet_mnist", "resnet18_mnist", "alexnet_imagenet", "zfnet_imagenet"} <= set(list_configs())
    for name in list_configs():
        assert isinstance(load_config(name), TrainConfig)


def test_lenet_mnist_is_the_papers_table1_setting():
    c = load_config("lenet_mnist")
    assert (c.model, c.dataset, c.batch_size, c.lr, c.momentum, c.weight_decay, c.epochs) == (
        "lenet", "mnist", 64, 0.01, 0.9, 0.0005, 25)
    assert (c.lr_policy, c.lr_gamma, c.lr_power, c.switch_epoch, c.switch_lr) == ("inv", 1e-4, 0.75, 16, 0.003)


def test_imagenet_recipes_are_table2():
    for name in ("alexnet_imagenet", "zfnet_imagenet"):
        c = load_config(name)
        assert (c.batch_size, c.lr, c.epochs, c.switch_epoch, c.switch_lr) == (256, 0.01, 70, 45, 0.003)


def test_overrides_win_and_none_is_ignored():
    c = load_config("lenet_mnist", {"epochs": 3, "lr": None, "mode": "dg"})
    assert (c.epochs, c.lr, c.mode) == (3, 0.01, "dg")


@pytest.mark.parametrize("values,match", [
    ({"epoch": 3}, "unknown config key 'epoch'.*epochs"),
    ({"batch_size": "big"}, "batch_size: expected int"),
    ({"lr": "fast"}, "lr: expected float"),
    ({"mode": "gd"}, "mode"),
    ({"batch_size": 0}, "batch_size: must be >= 1"),
    ({"mode": "gg", "batch_size": 1}, "needs batch_size >= 2"),
    ({"model": "timm:resnet81"}, "did you mean"),
    ({"switch_epoch": 99}, "switch_epoch"),
    ({"mean": "zero"}, "mean"),
])
def test_bad_values_name_the_key(values, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(values)


def test_yaml_strings_for_floats_are_parsed(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("lr: 1e-3\nmodel: lenet\n")  # PyYAML reads 1e-3 as a string
    assert load_config(p).lr == 0.001


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="no recipe 'lenet_mnst'.*lenet_mnist"):
        load_config("lenet_mnst")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "evil.yaml").write_text("lr: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "evil.yaml")


def test_set_null_is_explicit_and_applies_after_the_flags():
    assert load_config("lenet_mnist", {"epochs": 20}).epochs == 20
    with pytest.raises(ConfigError, match="epochs: expected int"):
        load_config("lenet_mnist", {"epochs": 20}, explicit={"epochs": None})
    assert load_config("lenet_mnist", {"epochs": 20}, explicit={"train_subset": None}).train_subset is None


def test_old_keys_are_renamed_with_a_warning():
    with pytest.warns(FutureWarning, match="'amp' is deprecated; use 'precision'"):
        assert load_config("lenet_mnist", {"amp": "none"}).precision == "fp32"
    with pytest.warns(FutureWarning, match="weights_file"):
        assert load_config("lenet_mnist", {"weights_file": "w.safetensors"}).weights == "w.safetensors"
    with pytest.warns(UserWarning, match="trust is given only on the command line"):
        assert not hasattr(load_config("lenet_mnist", {"trust_pickle": True}), "trust_pickle")
