"""``gencnn-gui [CHECKPOINT | SPEC] [--weights FILE] [--node NODE]``: start the desktop app."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

if "torch" not in sys.modules:  # as the CLI: OpenMP threads that wait passively (docs/results/threads.md)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["main", "platform_hint"]

# the shared libraries Qt's xcb platform plugin loads, and the Debian/Ubuntu packages that hold them
XCB_PACKAGES = {
    "libxcb-cursor.so.0": "libxcb-cursor0", "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1", "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0", "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-xinerama.so.0": "libxcb-xinerama0", "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-xkb.so.1": "libxcb-xkb1", "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0", "libEGL.so.1": "libegl1", "libGL.so.1": "libgl1",
    "libfontconfig.so.1": "libfontconfig1", "libdbus-1.so.3": "libdbus-1-3", "libX11-xcb.so.1": "libx11-xcb1",
}


def platform_hint(env: dict | None = None) -> str | None:
    """One line saying why Qt's window system plugin would fail to load, or None when it should load.

    Qt aborts the process when its platform plugin cannot load, before Python can catch anything, so the app
    checks first: no display at all, or shared libraries the xcb plugin needs that ``ldd`` cannot find.
    """
    env = os.environ if env is None else env
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform and not platform.startswith("xcb"):
        return None  # offscreen, wayland, ...: Qt's own messages are enough
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        return ("gencnn-gui: no display (DISPLAY is not set); run it on a desktop, under Xvfb "
                "(xvfb-run gencnn-gui ...), or headless with QT_QPA_PLATFORM=offscreen")
    try:
        import PySide6

        plugin = Path(PySide6.__file__).parent / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    except ImportError:
        return None
    ldd = shutil.which("ldd")
    if not plugin.is_file() or ldd is None:
        return None
    out = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=20).stdout
    missing = sorted({line.split()[0] for line in out.splitlines() if "not found" in line})
    if not missing:
        return None
    packages = " ".join(sorted({XCB_PACKAGES.get(m, m) for m in missing}))
    return (f"gencnn-gui: Qt's xcb platform plugin cannot load: missing {', '.join(missing)}; on Debian or Ubuntu: "
            f"sudo apt-get install {packages}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gencnn-gui", description="gencnn's desktop app: pick a node, watch HMC samples.")
    p.add_argument("source", nargs="?", help="checkpoint (.safetensors or run folder) or model spec")
    p.add_argument("--weights", help="local weights for a model spec")
    p.add_argument("--node", help="node to select (e.g. logits:3, conv2:7, a class name)")
    args, qt_args = p.parse_known_args(argv)

    hint = platform_hint()
    if hint:
        print(hint, file=sys.stderr)
        return 2

    from PySide6.QtWidgets import QApplication

    from .main_window import MainWindow

    app = QApplication.instance() or QApplication([sys.argv[0], *qt_args])
    app.setOrganizationName("gencnn")
    app.setApplicationName("gencnn-gui")
    window = MainWindow()
    window.show()
    if args.source and window.open_source(args.source, args.weights) and args.node:
        window.set_node(args.node)  # a node the model does not have is shown as an error in the window
    return app.exec()
