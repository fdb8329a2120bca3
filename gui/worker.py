"""The sampling worker: runs ``sample_node`` on a QThread and reports to the window only through signals."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from PySide6.QtCore import QObject, Signal, Slot

from gencnn_plugin.hmc import HMCConfig
from gencnn_plugin.runtime import resolve_device
from gencnn_plugin.specs import ModelInfo
from gencnn_plugin.visualize import SampleStep, default_display, grid_columns, grid_pixels, sample_node

__all__ = ["SampleJob", "SamplerWorker", "grid_image"]


@dataclass
class SampleJob:
    """One run: which model and node, with which settings, where."""

    model: torch.nn.Module
    info: ModelInfo
    node: str
    config: HMCConfig
    device: str = "cpu"
    min_fps_interval: float = 1 / 30  # previews at most this often when iterations are faster


def grid_image(x: torch.Tensor, info: ModelInfo, nrow: int, min_size: int = 56, display: str = "range"
               ) -> np.ndarray:
    """Samples -> one RGB uint8 grid (H, W, 3), drawn as ``gencnn sample`` draws it."""
    grid = grid_pixels(x, info, nrow, min_size=min_size, display=display)
    return (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).contiguous().numpy()


class SamplerWorker(QObject):
    """Lives on a worker thread. ``run(job)`` samples; ``request_stop()`` (any thread) ends it within one leapfrog
    step. Signals carry plain data (numpy arrays, dicts), never widgets."""

    started = Signal(int)  # total iterations
    progress = Signal(int, int, object, dict)  # iteration done, total, preview grid (H, W, 3) uint8, stats
    finished = Signal(object)  # SampleRun
    failed = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()
        self.view = "sample"  # what previews show: "sample" (each chain's state) or "mean" (its running mean)

    def request_stop(self) -> None:
        self._stop.set()

    @Slot(object)
    def run(self, job: SampleJob) -> None:
        self._stop.clear()
        cfg = job.config
        total = cfg.iters
        last = [0.0]
        self.started.emit(total)

        def on_step(step: SampleStep) -> bool:
            now = time.perf_counter()
            done = step.iteration + 1
            if now - last[0] >= job.min_fps_interval or done == total:  # a steady frame rate for fast iterations
                last[0] = now
                stats = {"accept": float(step.accepted.float().mean()), "energy_error":
                         float(step.energy_error.abs().mean()), "score": float(step.score.mean()),
                         "step_size": float(step.step_size.mean())}
                nodes = len(job.node) if isinstance(job.node, list) else 1
                nrow = grid_columns(step.x.shape[0] // nodes, nodes)  # the layout the saved PNG has
                mean = step.running_mean() if self.view == "mean" and step.running_mean is not None else None
                stats["view"] = "mean" if mean is not None else "sample"
                self.progress.emit(done, total, grid_image(mean if mean is not None else step.x, job.info, nrow,
                                                          display=default_display(job.config)),
                                   stats)
            return self._stop.is_set()

        try:
            device = resolve_device(job.device)  # a missing GPU is an error with a clear message, not a crash
            run = sample_node(job.model, job.info, job.node, cfg, device, callback=on_step,
                              stop=self._stop.is_set)
        except torch.cuda.OutOfMemoryError:
            self.failed.emit(f"CUDA out of memory with {cfg.chains} chains on {job.device}: use fewer chains or "
                             "the CPU")
            return
        except Exception as e:  # shown in the window; the app keeps running
            self.failed.emit(f"{type(e).__name__}: {e}")
            return
        self.finished.emit(run)
