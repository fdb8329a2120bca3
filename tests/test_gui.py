"""The desktop app under pytest-qt (QT_QPA_PLATFORM=offscreen): open, pick, run, stop, save, errors, responsiveness."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PySide6.QtCore import QSettings, QTimer
from PySide6.QtGui import QGuiApplication

from gencnn_gui.main_window import MainWindow
from gencnn_plugin import create_model, save_checkpoint


@pytest.fixture(scope="module")
def lenet_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model, info = create_model("lenet")
    path = tmp_path_factory.mktemp("ckpt") / "lenet.safetensors"
    save_checkpoint(path, model, info, mode="dg")
    return path


@pytest.fixture
def window(qtbot, tmp_path):
    w = MainWindow(QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    w.show()
    yield w
    w.stop()
    w.close()


def small(window, chains=4, iters=3, leapfrog=5):
    window.chains.setValue(chains)
    window.iters.setValue(iters)
    window.leapfrog_steps.setValue(leapfrog)


def test_open_pick_run_save(window, qtbot, lenet_ckpt, tmp_path):
    assert window.open_source(str(lenet_ckpt))
    assert "lenet_caffe" in window.model_label.text() and "1x28x28" in window.model_label.text()
    assert {"conv1", "conv2", "fc1", "logits"} <= set(window.layers)
    window.set_node("logits:3")
    assert window.node() == "logits:3" and "(3)" in window.node_label.text()
    window.set_node("conv2:7,mean")
    assert window.node() == "conv2:7,mean"
    window.set_node("conv2:7,2,3")
    assert window.node() == "conv2:7,2,3"
    small(window, iters=4)
    frames = []
    window.worker.progress.connect(lambda done, total, grid, stats: frames.append(grid.copy()))
    with qtbot.waitSignal(window.worker.finished, timeout=20_000):
        window.start()
    qtbot.waitUntil(lambda: not window.running)
    assert len(frames) >= 2 and not np.array_equal(frames[0], frames[-1])  # the preview changes as chains move
    assert window.preview.pixmap() is not None and not window.preview.pixmap().isNull()
    assert window.last_run.result.iters_done == 4 and "done" in window.progress.format()
    png, npz = window.save_png(tmp_path / "g.png"), window.save_npz(tmp_path / "s.npz")
    assert png.stat().st_size > 0 and set(np.load(npz)) >= {"samples", "pixels", "trace_accepted"}
    assert np.load(npz)["samples"].shape == (4, 1, 28, 28)
    window.copy_command()
    cmd = QGuiApplication.clipboard().text()
    assert cmd.startswith(f"gencnn sample {lenet_ckpt} --node conv2:7,2,3 --iters 4 --leapfrog-steps 5")
    assert " --chains 4 " in cmd


def test_stop_mid_run_returns_quickly(window, qtbot, lenet_ckpt):
    window.open_source(str(lenet_ckpt))
    small(window, chains=4, iters=10_000, leapfrog=20)
    with qtbot.waitSignal(window.worker.progress, timeout=20_000):
        window.start()
    t = time.perf_counter()
    with qtbot.waitSignal(window.worker.finished, timeout=10_000):
        window.stop()
    assert time.perf_counter() - t < 2.0
    qtbot.waitUntil(lambda: not window.running)
    assert window.last_run.result.stopped and window.last_run.result.iters_done < 10_000
    assert window.run_button.isEnabled() and "stopped" in window.progress.format()


def test_changing_the_node_while_running_restarts(window, qtbot, lenet_ckpt):
    window.open_source(str(lenet_ckpt))
    window.set_node("logits:1")
    small(window, chains=2, iters=10_000, leapfrog=5)
    with qtbot.waitSignal(window.worker.progress, timeout=20_000):
        window.start()
    with qtbot.waitSignal(window.worker.started, timeout=10_000):  # stopped, then started again
        window.set_node("logits:7")
    qtbot.waitUntil(lambda: window.last_run is not None)
    assert window.running and window._running_node == "logits:7"
    assert window.last_run.nodes == ["logits:1"] and window.last_run.result.stopped
    with qtbot.waitSignal(window.worker.finished, timeout=10_000):
        window.stop()


def test_the_event_loop_stays_responsive(window, qtbot, lenet_ckpt):
    window.open_source(str(lenet_ckpt))
    small(window, chains=16, iters=30, leapfrog=10)
    ticks = []
    timer = QTimer(window)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    with qtbot.waitSignal(window.worker.finished, timeout=60_000):
        window.start()
    timer.stop()
    gaps = np.diff(ticks)
    assert len(ticks) > 20 and gaps.max() < 0.100, f"largest gap between 10 ms ticks: {gaps.max() * 1e3:.0f} ms"


def test_bad_files_show_an_error_and_the_app_keeps_running(window, qtbot, tmp_path, lenet_ckpt):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("not a checkpoint")
    assert not window.open_source(str(bad))
    assert "Could not open" in window.error_label.text() and window.model is None

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    pickle_file = tmp_path / "weights.pt"
    torch.save({"w": Evil()}, pickle_file)
    assert not window.open_source("lenet", str(pickle_file))
    assert "weights" in window.error_label.text().lower()
    assert window.open_source(str(lenet_ckpt)) and window.error_label.text() == ""  # still usable
    window.set_node("logits:2")
    window.chains.setValue(3)
    window.device.addItem("cuda:7")  # a device that does not exist here: the worker's error is shown
    window.device.setCurrentText("cuda:7")
    with qtbot.waitSignal(window.worker.failed, timeout=20_000):
        window.start()
    qtbot.waitUntil(lambda: not window.running)  # the window's slot runs after the worker's signal
    assert "cuda" in window.error_label.text().lower() and window.run_button.isEnabled() and not window.running


def test_settings_and_recent_files_persist(qtbot, tmp_path, lenet_ckpt):
    ini = str(tmp_path / "settings.ini")
    first = MainWindow(QSettings(ini, QSettings.IniFormat))
    qtbot.addWidget(first)
    first.open_source(str(lenet_ckpt))
    first.chains.setValue(12)
    first.sigma.setValue(2.5)
    first.close()
    second = MainWindow(QSettings(ini, QSettings.IniFormat))
    qtbot.addWidget(second)
    assert second.chains.value() == 12 and second.sigma.value() == pytest.approx(2.5)
    assert second.recent()[0] == (str(lenet_ckpt.resolve()), None) and second.recent_menu.actions()
    second.close()


def test_spec_with_local_weights(window, shared_dir):
    weights = shared_dir / "weights" / "squeezenet1_1_imagenet.safetensors"
    assert window.open_source("tv:squeezenet1_1", str(weights))
    assert "1000 classes" in window.model_label.text() and "3x224x224" in window.model_label.text()
    window.class_search.setText("tiger cat")
    visible = [window.class_list.item(i).text() for i in range(window.class_list.count())
               if not window.class_list.item(i).isHidden()]
    assert visible == ["282: tiger cat"]
    window.layer_search.setText("features.3")
    assert not window._tree_items["features.3"].isHidden() and window._tree_items["classifier"].isHidden()


def test_signals_do_not_leak_references(window):
    # PySide6-Essentials 6.12.0's Signal.emit() dropped a reference to True on every call (Python < 3.12), which
    # aborted long sessions; pyproject excludes it. A live session emits thousands of signals.
    import sys

    before = sys.getrefcount(True)
    for _ in range(500):
        window.worker.started.emit(1)
    assert sys.getrefcount(True) >= before - 5


def test_nodes_by_class_name_and_bad_nodes_are_errors(window):
    assert window.open_source("tv:squeezenet1_1")  # class names come with the spec, weights or not
    assert window.set_node("espresso") and window.node() == "logits:967"
    assert "espresso" in window.node_label.text()
    assert window.set_node("features.3.expand1x1:7,2,3") and window.node() == "features.3.expand1x1:7,2,3"
    for bad in ("no such class", "logits:1000", "features.3:9999", "conv9:1"):
        assert not window.set_node(bad)
        assert bad in window.error_label.text() and window.node() == "features.3.expand1x1:7,2,3"


def test_file_names_are_shown_as_text_not_markup(window, tmp_path):
    model, info = create_model("lenet")
    path = save_checkpoint(tmp_path / "<b>bold<b><img src=x>.safetensors", model, info)
    assert window.open_source(str(path))
    assert "&lt;b&gt;bold&lt;b&gt;&lt;img src=x&gt;" in window.model_label.text()


def test_fields_follow_the_opened_model(window, lenet_ckpt):
    """Opening another model never keeps the last one's sampler settings: it gets what was last used with it, else
    the preset that suits its input; the status line and plots start empty."""
    from gencnn_plugin.visualize import default_preset, load_preset

    assert not window.run_button.isEnabled()  # no model yet
    assert window.open_source(str(lenet_ckpt)) and window.run_button.isEnabled()
    assert window.preset.currentText() == default_preset(window.info)
    window.chains.setValue(12)
    window.stats_label.setText("old status")
    window.save_settings()
    assert window.open_source("tv:squeezenet1_1")
    large = load_preset(default_preset(window.info))
    assert window.preset.currentText() == default_preset(window.info) and window.chains.value() == large.chains
    assert window.stats_label.text() == "" and window.progress.format() == "idle"
    assert window.open_source(str(lenet_ckpt)) and window.chains.value() == 12  # the LeNet's own, restored


def test_the_preview_grid_is_the_saved_grid(window, qtbot, lenet_ckpt, tmp_path):
    from PIL import Image

    window.open_source(str(lenet_ckpt))
    window.set_node("logits:1")
    small(window, chains=8, iters=2, leapfrog=2)
    with qtbot.waitSignal(window.worker.finished, timeout=20_000):
        window.start()
    qtbot.waitUntil(lambda: not window.running)
    h, w, _ = window.preview_image.shape
    assert (w, h) == Image.open(window.save_png(tmp_path / "g.png")).size == (4 * 58 + 2, 2 * 58 + 2)  # 4 x 2


def test_quit_action_and_platform_hint(window):
    from gencnn_gui.app import platform_hint

    assert any(a.text() == "&Quit" and a.shortcut().toString() == "Ctrl+Q"
               for a in window.menuBar().actions()[0].menu().actions())
    assert platform_hint({"QT_QPA_PLATFORM": "offscreen"}) is None
    assert "no display" in platform_hint({})


def test_form_keeps_exact_numbers_and_reports_bad_ones(window, lenet_ckpt):
    """Numbers the spin boxes used to round (mass 2e-6, step 0.0123456789) or could not hold (seed 4e9) are run as
    given; text that is not a number is an error in the window, not a crash."""
    window.open_source(str(lenet_ckpt))
    window.mass.setValue(2e-6)
    window.step_size.setValue(0.0123456789)
    window.seed.setValue(4_000_000_000)
    cfg = window.config()
    assert (cfg.mass, cfg.step_size, cfg.seed) == (2e-6, 0.0123456789, 4_000_000_000)
    assert "--mass 2e-06" in window.command() and "--seed 4000000000" in window.command()
    window.sigma.setText("lots")
    window.start()
    assert "sigma" in window.error_label.text() and not window.running
    window.save_settings()  # a bad field is left out of the saved settings, not a crash


def test_form_reads_an_old_on_off_value_of_a_choice(window, lenet_ckpt):
    """Settings saved when warm_augment was on/off (QSettings gives back "true" / "false" or bools) load as the
    ranges they meant, not as whatever the preset had."""
    window.open_source(str(lenet_ckpt))
    form = window.form
    for stored, meant in ((True, "standard"), ("true", "standard"), ("false", "off"), ("wide", "wide")):
        form.set_value("warm_augment", "wide" if meant != "wide" else "off")
        form.set_value("warm_augment", stored)
        assert window.config().warm_augment == meant
    form.set_value("precision", "none")  # precision's old name of fp32
    assert window.config().precision == "fp32"


def test_recent_files_with_any_name(qtbot, tmp_path):
    from gencnn_gui.main_window import MainWindow

    model, info = create_model("lenet")
    odd = tmp_path / "pipe|dir"
    odd.mkdir()
    path = save_checkpoint(odd / "ck.safetensors", model, info)
    w = MainWindow(QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    assert w.open_source(str(path))
    source, weights = w.recent()[0]
    assert source == str(path.resolve()) and weights is None
    w.recent_menu.actions()[0].trigger()
    assert w.error_label.text() == "" and w.source == source


def test_the_view_shows_samples_or_running_means(window, qtbot, lenet_ckpt, tmp_path):
    from PIL import Image

    window.open_source(str(lenet_ckpt))
    window.set_node("logits:2")
    small(window, chains=4, iters=4, leapfrog=3)
    window.adapt_steps.setValue(1)
    with qtbot.waitSignal(window.worker.finished, timeout=20_000):
        window.start()
    qtbot.waitUntil(lambda: not window.running)
    assert window.last_run.mean_x is not None and "R-hat" in window.stats_label.text()
    samples = window.preview_image.copy()
    window.view.setCurrentIndex(1)  # running means
    assert not np.array_equal(samples, window.preview_image)
    shown = window.preview_image.shape
    saved = Image.open(window.save_png(tmp_path / "m.png"))
    assert saved.size == (shown[1], shown[0]) and "running means" in saved.text["gencnn"]
