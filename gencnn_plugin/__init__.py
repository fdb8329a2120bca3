"""gencnn: generative modeling of CNNs (Dai, Lu & Wu) for timm and torchvision classifiers.

The public API: the generative loss (GG) and its ESS diagnostic, the GG/DG schedule, model specs, checkpoints, the
trainer, node addressing, the HMC sampler and ONNX export. Names are imported on first use (PEP 562), so
``import gencnn_plugin.cli`` or ``gencnn --help`` does not load every module.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "load_checkpoint": "checkpoint", "open_model": "checkpoint", "read_metadata": "checkpoint",
    "save_checkpoint": "checkpoint",
    "TrainConfig": "config", "load_config": "config",
    "export_onnx": "export", "verify_onnx": "export",
    "HMCConfig": "hmc", "HMCResult": "hmc", "hmc_sample": "hmc",
    "GenerativeLoss": "losses", "generative_loss": "losses", "importance_ess": "losses",
    "Node": "nodes", "list_layers": "nodes", "node_score": "nodes", "parse_node": "nodes",
    "GenerativeSchedule": "schedule", "LRPolicy": "schedule",
    "ModelInfo": "specs", "create_model": "specs", "list_specs": "specs",
    "evaluate": "trainer", "train": "trainer",
    "load_preset": "visualize", "sample_node": "visualize", "save_grid": "visualize", "save_npz": "visualize",
    "sample_command": "visualize",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gencnn_plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
