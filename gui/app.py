"""``gencnn-gui [CHECKPOINT | SPEC] [--weights FILE]``: start the desktop app."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gencnn-gui", description="gencnn's desktop app: pick a node, watch HMC samples.")
    p.add_argument("source", nargs="?", help="checkpoint (.safetensors or run folder) or model spec")
    p.add_argument("--weights", help="local weights for a model spec")
    p.add_argument("--node", help="node to select (e.g. logits:3, conv2:7)")
    args, qt_args = p.parse_known_args(argv)

    from PySide6.QtWidgets import QApplication

    from .main_window import MainWindow

    app = QApplication.instance() or QApplication([sys.argv[0], *qt_args])
    app.setOrganizationName("gencnn")
    app.setApplicationName("gencnn-gui")
    window = MainWindow()
    window.show()
    if args.source and window.open_source(args.source, args.weights) and args.node:
        window.set_node(args.node)
    return app.exec()
