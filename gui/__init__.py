"""gencnn's desktop app (import name ``gencnn_gui``): open a classifier, pick a layer and node, watch HMC samples.

Started by ``gencnn-gui [CHECKPOINT]``. The widgets only display and collect settings; sampling runs in
:class:`gencnn_gui.worker.SamplerWorker` on a QThread, through ``gencnn_plugin.visualize.sample_node``.
"""

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from .app import main as _main

    return _main(argv)
