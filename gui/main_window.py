"""The main window: model, layer tree, node picker, sampler settings, live preview and plots. Display only: the
model is opened with ``open_model``, layers come from ``list_layers`` and sampling from the worker thread."""

from __future__ import annotations

import html
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PySide6.QtCore import QSettings, Qt, QThread, Signal
from PySide6.QtGui import QAction, QColor, QGuiApplication, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gencnn_plugin.checkpoint import open_model
from gencnn_plugin.config import HMC_PRESET_DIR, list_configs
from gencnn_plugin.hmc import HMCConfig
from gencnn_plugin.nodes import LOGITS, LayerInfo, Node, NodeError, check_node, list_layers
from gencnn_plugin.reference import make_reference
from gencnn_plugin.visualize import (
    RHAT_OK,
    SampleRun,
    caption,
    default_display,
    default_preset,
    grid_images,
    load_preset,
    sample_command,
    save_grid,
    save_npz,
)

from .form import SettingsForm
from .worker import SampleJob, SamplerWorker

__all__ = ["MainWindow", "Sparkline"]

MAX_RECENT = 8


class Sparkline(QWidget):
    """A small line plot of one value per iteration (acceptance rate, |energy error|)."""

    def __init__(self, title: str, color: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title, self.color, self.values = title, QColor(color), []
        self.setMinimumHeight(70)

    def set_values(self, values: list[float]) -> None:
        self.values = values
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        r = self.rect().adjusted(4, 18, -4, -4)
        p.fillRect(self.rect(), QColor("#fafafa"))
        last = f"  {self.values[-1]:.3g}" if self.values else ""
        p.setPen(QColor("#333"))
        p.drawText(6, 14, f"{self.title}{last}")
        if len(self.values) > 1:
            lo, hi = min(self.values), max(self.values)
            span = (hi - lo) or 1.0
            n = len(self.values)
            pts = [(r.left() + r.width() * i / (n - 1), r.bottom() - r.height() * (v - lo) / span)
                   for i, v in enumerate(self.values)]
            p.setPen(QPen(self.color, 1.5))
            for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
                p.drawLine(int(x0), int(y0), int(x1), int(y1))
            p.setPen(QColor("#888"))
            span_text = f"{lo:.2g}..{hi:.2g}"
            p.drawText(r.right() - p.fontMetrics().horizontalAdvance(span_text), 14, span_text)
        p.end()


class SpecDialog(QDialog):
    """A model spec plus an optional local weights file."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Open a model spec")
        self.spec = QLineEdit("tv:squeezenet1_1")
        self.weights = QLineEdit()
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.weights)
        row.addWidget(browse)
        form = QFormLayout(self)
        form.addRow("spec (lenet, timm:NAME, tv:NAME)", self.spec)
        form.addRow("weights (.safetensors)", row)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Weights", "", "Weights (*.safetensors *.pt *.pth)")
        if path:
            self.weights.setText(path)


class MainWindow(QMainWindow):
    """gencnn's desktop window. Public methods (open_source, set_node, start, stop, save_png, save_npz) are what
    the menus call, and what tests and the screenshot script drive."""

    start_job = Signal(object)

    def __init__(self, settings: QSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or QSettings("gencnn", "gencnn-gui")
        self.model = self.info = None
        self.source: str | None = None
        self.weights: str | None = None
        self.layers: dict[str, LayerInfo] = {}
        self.last_run: SampleRun | None = None
        self.running = False
        self._restart = False
        self._t0 = 0.0
        self._accept: list[float] = []
        self._energy: list[float] = []
        self.preview_image: np.ndarray | None = None
        self.setWindowTitle("gencnn: generative visualization")
        self.setAcceptDrops(True)
        self._build_menu()
        self._build_ui()
        self._build_worker()
        self._load_settings()

    # -- construction ------------------------------------------------------------------------------------------
    def _build_menu(self) -> None:
        m = self.menuBar().addMenu("&File")
        for text, slot, key in (("&Open checkpoint...", self._open_dialog, "Ctrl+O"),
                                ("Open model &spec...", self._open_spec_dialog, "Ctrl+Shift+O")):
            a = QAction(text, self)
            a.setShortcut(key)
            a.triggered.connect(slot)
            m.addAction(a)
        self.recent_menu = m.addMenu("Open &recent")
        m.addSeparator()
        for text, slot in (("Save grid as &PNG...", self._save_png_dialog), ("Save samples as .&npz...",
                                                                            self._save_npz_dialog),
                           ("&Copy gencnn sample command", self.copy_command)):
            a = QAction(text, self)
            a.triggered.connect(slot)
            m.addAction(a)
        m.addSeparator()
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut("Ctrl+Q")
        quit_action.triggered.connect(self.close)
        m.addAction(quit_action)

    def _build_ui(self) -> None:
        # left: model and layers
        self.model_label = QLabel("Open a checkpoint (File > Open, or drop a .safetensors file here).")
        self.model_label.setWordWrap(True)
        self.layer_search = QLineEdit(placeholderText="search layers")
        self.layer_search.textChanged.connect(self._filter_layers)
        self.layer_tree = QTreeWidget()
        self.layer_tree.setHeaderLabels(["layer", "type", "output", "nodes"])
        for col in (1, 2, 3):  # the short columns always fit; a long module path scrolls
            self.layer_tree.header().setSectionResizeMode(col, QHeaderView.ResizeToContents)
        self.layer_tree.currentItemChanged.connect(self._layer_picked)
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.addWidget(self.model_label)
        lv.addWidget(self.layer_search)
        lv.addWidget(self.layer_tree, 1)

        # middle: node and sampler settings
        self.node_label = QLabel("node: -")
        self.class_search = QLineEdit(placeholderText="search classes")
        self.class_search.textChanged.connect(self._filter_classes)
        self.class_list = QListWidget()
        self.class_list.currentRowChanged.connect(lambda _: self._node_changed())
        classes = QWidget()
        cv = QVBoxLayout(classes)
        cv.setContentsMargins(0, 0, 0, 0)
        cv.addWidget(self.class_search)
        cv.addWidget(self.class_list)
        self.channel = QSpinBox()
        self.where = QComboBox()
        self.pos_y, self.pos_x = QSpinBox(), QSpinBox()
        for w in (self.channel, self.pos_y, self.pos_x):
            w.valueChanged.connect(self._node_changed)
        self.where.currentIndexChanged.connect(self._node_changed)
        units = QWidget()
        uf = QFormLayout(units)
        uf.addRow("channel / feature", self.channel)
        uf.addRow("where", self.where)
        uf.addRow("y (or token)", self.pos_y)
        uf.addRow("x", self.pos_x)
        self.node_stack = QStackedWidget()
        self.node_stack.addWidget(classes)
        self.node_stack.addWidget(units)
        node_box = QGroupBox("Node")
        nv = QVBoxLayout(node_box)
        nv.addWidget(self.node_stack)
        nv.addWidget(self.node_label)

        self.preset = QComboBox()
        self.preset.addItems(list_configs(HMC_PRESET_DIR))
        self.preset.currentTextChanged.connect(self.apply_preset)
        self.form = SettingsForm(HMCConfig)  # one widget per HMCConfig field, generated
        for name, w in self.form.widgets.items():
            setattr(self, name, w)  # window.chains, window.step_size, ... (what tests and scripts drive)
        self.device = QComboBox()
        self.device.addItems(["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())])
        sampler = QGroupBox("Sampler (HMC, paper section 3.4)")
        sf = QFormLayout(sampler)
        sf.addRow("preset", self.preset)
        sf.addRow(self.form)
        sf.addRow("device", self.device)
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.start)
        self.run_button.setEnabled(False)  # until a model is open
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.stop_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        middle = QWidget()
        mv = QVBoxLayout(middle)
        mv.addWidget(node_box, 1)
        mv.addWidget(sampler)
        mv.addLayout(buttons)

        # right: preview, progress, plots, messages
        self.preview = QLabel("samples appear here")
        self.preview.setAlignment(Qt.AlignCenter)
        self.preview.setMinimumSize(320, 320)
        self.preview.setStyleSheet("background: #202020; color: #aaa;")
        self.view = QComboBox()
        self.view.addItems(["samples", "running means"])
        self.view.setToolTip("each chain's current sample, or its mean after warm-up (an estimate of E_p[x]: the "
                             "reference's noise averaged out)")
        self.view.currentIndexChanged.connect(self._view_changed)
        self.progress = QProgressBar()
        self.progress.setFormat("idle")
        self.accept_plot = Sparkline("acceptance rate", "#1f77b4")
        self.energy_plot = Sparkline("mean |energy error|", "#d62728")
        self.stats_label = QLabel("")
        self.error_label = QLabel("")
        self.error_label.setTextFormat(Qt.PlainText)  # messages quote file and model names: text, never markup
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #b00020;")
        right = QWidget()
        rv = QVBoxLayout(right)
        rv.addWidget(self.preview, 1)
        view_row = QHBoxLayout()
        view_row.addWidget(QLabel("show"))
        view_row.addWidget(self.view, 1)
        rv.addLayout(view_row)
        rv.addWidget(self.progress)
        rv.addWidget(self.accept_plot)
        rv.addWidget(self.energy_plot)
        rv.addWidget(self.stats_label)
        rv.addWidget(self.error_label)

        split = QSplitter()
        for w in (left, middle, right):
            split.addWidget(w)
        split.setSizes([330, 300, 520])
        self.setCentralWidget(split)
        self.resize(1180, 720)

    def _build_worker(self) -> None:
        self.thread = QThread(self)
        self.worker = SamplerWorker()
        self.worker.moveToThread(self.thread)
        self.start_job.connect(self.worker.run)
        self.worker.started.connect(self._on_started)
        self.worker.progress.connect(self._on_progress)
        self.worker.finished.connect(self._on_finished)
        self.worker.failed.connect(self._on_failed)
        self.thread.start()

    # -- settings ----------------------------------------------------------------------------------------------
    def apply_preset(self, name: str) -> None:
        """Fill the sampler fields from a preset in zoo_configs/hmc/."""
        if name:
            self.form.set_values(load_preset(name))

    def config(self) -> HMCConfig:
        """The sampler settings as shown."""
        return HMCConfig(**{**asdict(load_preset(self.preset.currentText() or None)), **self.form.values()})

    def _load_settings(self) -> None:
        s = self.settings
        self.preset.setCurrentText(s.value("preset", "mnist_legible"))
        self.apply_preset(self.preset.currentText())
        saved = {k: s.value(f"sampler/{k}") for k in self.form.widgets if s.contains(f"sampler/{k}")}
        for key, value in saved.items():
            try:
                self.form.set_value(key, value)
            except (TypeError, ValueError, OverflowError):
                pass  # a value an older version stored: keep the preset's
        if s.value("device") in [self.device.itemText(i) for i in range(self.device.count())]:
            self.device.setCurrentText(s.value("device"))
        elif self.device.count() > 1:
            self.device.setCurrentIndex(1)  # the first GPU
        if s.value("geometry") is not None:
            self.restoreGeometry(s.value("geometry"))
        self._rebuild_recent()

    def save_settings(self) -> None:
        """The sampler settings go under the open model (and as the default for the next new model), the device and
        window geometry globally."""
        s = self.settings
        groups = ["", self._model_group()] if self.info is not None else [""]
        for g in groups:
            s.setValue(f"{g}preset", self.preset.currentText())
            for key, value in self.form.values(strict=False).items():
                s.setValue(f"{g}sampler/{key}", value)
        s.setValue("device", self.device.currentText())
        s.setValue("geometry", self.saveGeometry())
        s.sync()

    def _model_group(self) -> str:
        """The QSettings group of the open model: its spec and input size (a LeNet and SqueezeNet differ)."""
        key = f"{self.info.model}_{'x'.join(map(str, self.info.input_size))}".replace("/", "_").replace(":", "_")
        return f"models/{key}/"

    def _settings_for_model(self) -> None:
        """The sampler fields for the model just opened: what was last used with it, else the preset that suits
        its input (default_preset), never the previous model's."""
        s, group = self.settings, self._model_group()
        preset = s.value(f"{group}preset") or default_preset(self.info)
        self.preset.blockSignals(True)
        self.preset.setCurrentText(preset)
        self.preset.blockSignals(False)
        self.apply_preset(self.preset.currentText())
        for key in self.form.widgets:
            if s.contains(f"{group}sampler/{key}"):
                try:
                    self.form.set_value(key, s.value(f"{group}sampler/{key}"))
                except (TypeError, ValueError, OverflowError):
                    pass
        self._warm_reference()

    def _warm_reference(self) -> None:
        """Read the reference's data file now, while opening a model, so a run never stalls the window parsing it
        (the parsed file is cached); a reference that cannot load is reported when Run is pressed."""
        try:
            make_reference(self.form.values(strict=False).get("reference", "white"), self.info)
        except (ValueError, OSError, TypeError):
            pass

    def recent(self) -> list[tuple[str, str | None]]:
        """Recently opened (source, weights), newest first: absolute paths for files, specs as typed; stored as JSON
        pairs (a file name may hold any character)."""
        import json

        value = self.settings.value("recent_files", "[]")
        try:
            items = json.loads(value if isinstance(value, str) else "[]")
        except ValueError:
            return []
        return [(str(s), str(w) if w else None) for s, w in items if isinstance(s, str)][:MAX_RECENT]

    def _remember(self, source: str, weights: str | None) -> None:
        import json

        def absolute(p: str | None) -> str | None:
            return str(Path(p).resolve()) if p and Path(p).exists() else p

        entry = (absolute(source), absolute(weights))
        items = [entry] + [r for r in self.recent() if r != entry]
        self.settings.setValue("recent_files", json.dumps(items[:MAX_RECENT]))
        self._rebuild_recent()

    def _rebuild_recent(self) -> None:
        self.recent_menu.clear()
        for source, weights in self.recent():
            a = QAction(f"{source}  +  {weights}" if weights else source, self)
            a.triggered.connect(lambda _=False, s=source, w=weights: self.open_source(s, w))
            self.recent_menu.addAction(a)

    # -- opening -----------------------------------------------------------------------------------------------
    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open checkpoint", self.settings.value("last_dir", ""),
                                              "Checkpoints (*.safetensors);;All files (*)")
        if path:
            self.open_source(path)

    def _open_spec_dialog(self) -> None:
        d = SpecDialog(self)
        if d.exec():
            self.open_source(d.spec.text().strip(), d.weights.text().strip() or None)

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        urls = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if urls:
            self.open_source(urls[0])

    def open_source(self, source: str, weights: str | None = None) -> bool:
        """Open a checkpoint (file or run folder) or a spec with optional weights; errors go to the message line."""
        self.stop()
        try:
            model, info = open_model(source, weights=weights)
            layers = list_layers(model, info)
        except Exception as e:  # a bad file must not take the app down
            self.show_error(f"Could not open {source}: {e}")
            return False
        self.model, self.info, self.source, self.weights = model, info, str(source), weights
        self.layers = {li.name: li for li in layers}
        self.show_error("")
        c, h, w = info.input_size
        esc = html.escape  # file and class names are text, never markup
        self.model_label.setText(
            f"<b>{esc(info.model)}</b><br>{esc(Path(str(source)).name) + '<br>' if Path(str(source)).exists() else ''}"
            f"{'weights ' + esc(Path(weights).name) + '<br>' if weights else ''}input {c}x{h}x{w}, mean "
            f"{', '.join(f'{m:.3g}' for m in info.mean)}, std {', '.join(f'{s:.3g}' for s in info.std)}<br>"
            f"{info.num_classes} classes")
        self._fill_tree(layers)
        self._fill_classes()
        self._settings_for_model()
        self.last_run, self.preview_image = None, None
        self.preview.clear()
        self.preview.setText("samples appear here")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        self.stats_label.setText("")
        self._accept, self._energy = [], []
        self.accept_plot.set_values([])
        self.energy_plot.set_values([])
        self.run_button.setEnabled(True)
        if Path(str(source)).exists():
            self.settings.setValue("last_dir", str(Path(source).parent))
        self._remember(str(source), weights)
        self.select_layer(LOGITS)
        return True

    def _fill_tree(self, layers: list[LayerInfo]) -> None:
        self.layer_tree.clear()
        items: dict[str, QTreeWidgetItem] = {}
        for li in layers:
            parts = li.name.split(".")
            parent = None
            for depth in range(1, len(parts)):  # group by module path, as named_modules nests them
                key = ".".join(parts[:depth])
                if key not in items:
                    item = QTreeWidgetItem([key, "", "", ""])
                    (parent.addChild(item) if parent else self.layer_tree.addTopLevelItem(item))
                    items[key] = item
                parent = items[key]
            shape = "x".join(map(str, li.shape))
            item = items.get(li.name) or QTreeWidgetItem([li.name, "", "", ""])
            item.setText(1, li.type)
            item.setText(2, shape)
            item.setText(3, str(li.num_nodes))
            item.setData(0, Qt.UserRole, li.name)
            if li.name not in items:
                (parent.addChild(item) if parent else self.layer_tree.addTopLevelItem(item))
                items[li.name] = item
        self._tree_items = items
        self.layer_tree.expandToDepth(0)
        self.layer_tree.resizeColumnToContents(0)

    def _filter_layers(self, text: str) -> None:
        text = text.lower()
        for name, item in getattr(self, "_tree_items", {}).items():
            item.setHidden(bool(text) and text not in name.lower()
                           and not any(text in n.lower() for n in self._tree_items if n.startswith(name + ".")))
            if text and not item.isHidden():
                item.setExpanded(True)

    def _fill_classes(self) -> None:
        self.class_list.clear()
        for k, name in enumerate(self.info.class_names or [str(i) for i in range(self.info.num_classes)]):
            self.class_list.addItem(QListWidgetItem(f"{k}: {name}"))
        self.class_list.setCurrentRow(0)

    def _filter_classes(self, text: str) -> None:
        for i in range(self.class_list.count()):
            item = self.class_list.item(i)
            item.setHidden(bool(text) and text.lower() not in item.text().lower())

    # -- nodes -------------------------------------------------------------------------------------------------
    def select_layer(self, name: str) -> None:
        item = getattr(self, "_tree_items", {}).get(name)
        if item is not None:
            self.layer_tree.setCurrentItem(item)

    def _layer_picked(self, item: QTreeWidgetItem | None, _prev=None) -> None:
        name = item.data(0, Qt.UserRole) if item else None
        li = self.layers.get(name) if name else None
        if li is None:
            return
        self.current_layer = li
        if li.name == LOGITS:
            self.node_stack.setCurrentIndex(0)
        else:
            self.node_stack.setCurrentIndex(1)
            shape = li.shape
            for w in (self.channel, self.where, self.pos_y, self.pos_x):
                w.blockSignals(True)
            self.channel.setRange(0, shape[-1 if len(shape) == 2 else 0] - 1)
            self.where.clear()
            if len(shape) == 3:
                self.where.addItems(["centre unit", "channel mean", "position (y, x)"])
                self.pos_y.setRange(0, shape[1] - 1)
                self.pos_x.setRange(0, shape[2] - 1)
            elif len(shape) == 2:
                self.where.addItems(["mean over tokens", "token (y)"])
                self.pos_y.setRange(0, shape[0] - 1)
            else:
                self.where.addItems(["unit"])
            for w in (self.channel, self.where, self.pos_y, self.pos_x):
                w.blockSignals(False)
        self._node_changed()

    def node(self) -> str | None:
        """The node string of the current picks (:class:`Node`'s syntax, as gencnn sample takes it)."""
        li = getattr(self, "current_layer", None)
        if li is None:
            return None
        if li.name == LOGITS:
            return str(Node.output(max(self.class_list.currentRow(), 0)))
        c, where = self.channel.value(), self.where.currentText()
        node = {"channel mean": lambda: Node.channel(li.name, c, mean=True),
                "position (y, x)": lambda: Node.unit(li.name, c, self.pos_y.value(), self.pos_x.value()),
                "token (y)": lambda: Node.token(li.name, c, self.pos_y.value())}.get(
            where, lambda: Node.channel(li.name, c) if len(li.shape) == 3 else Node.feature(li.name, c))()
        return str(node)

    def set_node(self, text: str) -> bool:
        """Pick a node by string (any form :class:`Node` parses, class names included); a node this model does
        not have is shown as an error and changes nothing."""
        try:
            node = Node.parse(text, self.info.class_names if self.info else None)
            li = self.layers.get(node.layer)
            if li is None:
                raise NodeError(f"no layer {node.layer!r} in {self.info.model if self.info else 'the model'}")
            check_node(node, li)
        except NodeError as e:
            self.show_error(f"node {text!r}: {e}")
            return False
        self.select_layer(node.layer)
        if node.layer == LOGITS:
            self.class_search.clear()
            self.class_list.setCurrentRow(node.index)
            return True
        self.channel.setValue(node.index)
        if node.reduce == "mean":
            self.where.setCurrentText("channel mean")
        elif len(node.position) == 2:
            self.where.setCurrentText("position (y, x)")
            self.pos_y.setValue(node.position[0])
            self.pos_x.setValue(node.position[1])
        elif len(node.position) == 1:
            self.where.setCurrentText("token (y)")
            self.pos_y.setValue(node.position[0])
        else:
            self.where.setCurrentIndex(0)
        return True

    def _node_changed(self) -> None:
        node = self.node()
        li = getattr(self, "current_layer", None)
        if li is not None and li.name == LOGITS and self.info and self.info.class_names:
            row = max(self.class_list.currentRow(), 0)
            self.node_label.setText(f"node: {node}  ({self.info.class_names[row]})")
        else:
            self.node_label.setText(f"node: {node or '-'}")
        self.pos_y.setEnabled(self.where.currentText() in ("position (y, x)", "token (y)"))
        self.pos_x.setEnabled(self.where.currentText() == "position (y, x)")
        if self.running and node != getattr(self, "_running_node", None):
            self._restart = True  # a new node while sampling: stop, then start again with it
            self.worker.request_stop()

    # -- running -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start sampling the current node with the shown settings."""
        if self.model is None or self.running:
            return
        node = self.node()
        try:
            cfg = self.config()
        except ValueError as e:
            self.show_error(str(e))
            return
        self.show_error("")
        self.running, self._restart, self._running_node = True, False, node
        self._accept, self._energy = [], []
        self.accept_plot.set_values([])
        self.energy_plot.set_values([])
        self.progress.setRange(0, cfg.iters)
        self.progress.setValue(0)
        self.progress.setFormat(f"starting {node}...")
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.save_settings()
        self.start_job.emit(SampleJob(self.model, self.info, node, cfg, self.device.currentText()))

    def stop(self) -> None:
        """Ask the worker to stop; it returns within one leapfrog step."""
        self._restart = False
        if self.running:
            self.worker.request_stop()

    def _on_started(self, total: int) -> None:
        self._t0 = time.perf_counter()
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        self.progress.setFormat(f"0/{total} iterations")

    def _on_progress(self, done: int, total: int, grid: np.ndarray, stats: dict) -> None:
        self.show_grid(grid)
        elapsed = time.perf_counter() - self._t0
        left = elapsed / done * (total - done)
        self.progress.setValue(done)
        self.progress.setFormat(f"{done}/{total} iterations, about {left:.0f} s left")
        self._accept.append(stats["accept"])
        self._energy.append(stats["energy_error"])
        self.accept_plot.set_values(self._accept)
        self.energy_plot.set_values(self._energy)
        self.stats_label.setText(f"mean f_y {stats['score']:.3f}   step size {stats['step_size']:.3g}")

    def show_grid(self, grid: np.ndarray) -> None:
        self.preview_image = grid
        h, w, _ = grid.shape
        image = QImage(grid.data, w, h, 3 * w, QImage.Format_RGB888).copy()
        pix = QPixmap.fromImage(image)
        size = self.preview.size()
        scale = max(1, min(size.width() // max(w, 1), size.height() // max(h, 1)))
        self.preview.setPixmap(pix.scaled(w * scale, h * scale, Qt.KeepAspectRatio, Qt.FastTransformation)
                               if scale > 1 else pix.scaled(size, Qt.KeepAspectRatio, Qt.SmoothTransformation))

    def _shown(self) -> str:
        return "mean" if self.view.currentIndex() == 1 else "sample"

    def _view_changed(self) -> None:
        self.worker.view = self._shown()
        if not self.running and self.last_run is not None:
            self._show_run(self.last_run)

    def _show_run(self, run: SampleRun) -> None:
        """The finished run's grid, as the view asks (the same picture save_png writes)."""
        from .worker import grid_image

        images, nrow, _ = grid_images(run, self._shown() if run.mean_x is not None else "sample")
        self.show_grid(grid_image(images, run.info, nrow, display=default_display(run.config)))

    def _on_finished(self, run: SampleRun) -> None:
        self.last_run = run
        self.running = False
        s = run.result.summary
        state = "stopped" if run.result.stopped else "done"
        self.progress.setFormat(f"{state}: {run.result.iters_done}/{run.config.iters} iterations, "
                                f"{run.result.seconds:.1f} s")
        r = s.get("rhat", float("nan"))
        verdict = "converged" if r <= RHAT_OK else "NOT converged: more iterations"
        self.stats_label.setText(f"{run.nodes[0]}: acceptance {s['accept_rate']:.2f}, final mean f_y "
                                 f"{s['final_score_mean']:.3f}, R-hat {r:.2f} ({verdict}), "
                                 f"{s['grad_evals_per_second']:.0f} gradients/s")
        self.stats_label.setStyleSheet("" if r <= RHAT_OK else "color: #b00020;")
        if run.result.iters_done:
            self._show_run(run)
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.show_error(" ".join(run.warnings))  # e.g. every proposal rejected, or fewer chains after CUDA OOM
        if self._restart:
            self.start()

    def _on_failed(self, message: str) -> None:
        self.running = False
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.progress.setFormat("failed")
        self.show_error(message)

    def show_error(self, message: str) -> None:
        self.error_label.setText(message)

    # -- saving ------------------------------------------------------------------------------------------------
    def save_png(self, path: str | Path) -> Path | None:
        if self.last_run is None:
            self.show_error("Nothing to save yet: run the sampler first.")
            return None
        run = self.last_run
        show = self._shown() if run.mean_x is not None else "sample"
        images, nrow, _ = grid_images(run, show)
        return save_grid(images, self.info, path, nrow=nrow, min_size=56, display=default_display(run.config),
                         # the grid shown; what made it, in the PNG's text chunks
                         metadata={"caption": caption(run, show), "nodes": run.nodes,
                                   "config": asdict(run.config), "summary": run.result.summary})

    def save_npz(self, path: str | Path) -> Path | None:
        if self.last_run is None:
            self.show_error("Nothing to save yet: run the sampler first.")
            return None
        return save_npz(self.last_run, path)

    def _save_png_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save grid", "samples.png", "PNG (*.png)")
        if path:
            self._saving(self.save_png, path)

    def _save_npz_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save samples", "samples.npz", "NumPy (*.npz)")
        if path:
            self._saving(self.save_npz, path)

    def _saving(self, save, path: str) -> Path | None:
        """Save, showing a failure (a folder, a device, no permission, a full disk) in the window."""
        try:
            return save(path)
        except (OSError, ValueError) as e:
            self.show_error(f"Could not save {path}: {e}")
            return None

    def command(self) -> str | None:
        """The gencnn sample command line that repeats the current settings headless."""
        if self.source is None:
            return None
        return sample_command(self.source, self.node(), self.config(), self.device.currentText(), self.weights)

    def copy_command(self) -> None:
        try:
            cmd = self.command()
        except ValueError as e:
            self.show_error(str(e))
            return
        if cmd:
            QGuiApplication.clipboard().setText(cmd)
            self.statusBar().showMessage("copied: " + cmd, 5000)

    def closeEvent(self, event) -> None:  # noqa: N802
        self.stop()
        self.save_settings()
        self.thread.quit()
        self.thread.wait(5000)
        super().closeEvent(event)
