"""Screenshots of the desktop app in use, for the README: a LeNet digit node and a SqueezeNet ImageNet class,
each grabbed mid-run. Runs headless (QT_QPA_PLATFORM=offscreen is set if no display is given).

    python scripts/gui_screenshots.py --lenet runs/lenet_dg25 \
        --weights ../shared/weights/squeezenet1_1_imagenet.safetensors
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shoot(app, window, iterations: int, path: Path, timeout: float = 600.0) -> None:
    """Start sampling, grab the window once ``iterations`` are shown (or the run ended), then stop."""
    window.start()
    t = time.perf_counter()
    while window.running and len(window._accept) < iterations and time.perf_counter() - t < timeout:
        app.processEvents()
        time.sleep(0.01)
    app.processEvents()
    window.grab().save(str(path))
    window.stop()
    while window.running:
        app.processEvents()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lenet", required=True, help="a trained LeNet checkpoint or run folder")
    p.add_argument("--weights", default=str(REPO.parent / "shared" / "weights" / "squeezenet1_1_imagenet.safetensors"))
    p.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    p.add_argument("--lenet-iters", type=int, default=300, help="grab the LeNet run after this many iterations")
    p.add_argument("--squeezenet-iters", type=int, default=20)
    p.add_argument("--squeezenet-chains", type=int, default=4)
    args = p.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    sys.path.insert(0, str(REPO))
    from gencnn_gui.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory() as tmp:
        window = MainWindow(QSettings(str(Path(tmp) / "s.ini"), QSettings.IniFormat))
        window.resize(1280, 760)
        window.show()
        window.open_source(args.lenet)  # its default preset: mnist_legible
        window.set_node("logits:3")
        window.chains.setValue(16)
        shoot(app, window, args.lenet_iters, args.out / "gui_lenet.png")

        window.open_source("tv:squeezenet1_1", args.weights)  # its default preset: imagenet_legible
        window.class_search.setText("goldfish")
        window.set_node("logits:1")
        window.chains.setValue(args.squeezenet_chains)
        shoot(app, window, args.squeezenet_iters, args.out / "gui_squeezenet.png")
        window.close()
    print(f"wrote {args.out / 'gui_lenet.png'} and {args.out / 'gui_squeezenet.png'}", flush=True)


if __name__ == "__main__":
    main()
