"""gencnn: generative modeling of CNNs (Dai, Lu & Wu) for timm and torchvision classifiers.

The public API: the generative loss (GG) and its ESS diagnostic, the GG/DG schedule, model specs, checkpoints, the
trainer, node addressing, the HMC sampler and ONNX export.
"""

__version__ = "0.1.0"

from .checkpoint import load_checkpoint, open_model, read_metadata, save_checkpoint  # noqa: E402
from .config import TrainConfig, load_config  # noqa: E402
from .export import export_onnx, verify_onnx  # noqa: E402
from .hmc import HMCConfig, HMCResult, hmc_sample  # noqa: E402
from .losses import GenerativeLoss, generative_loss, importance_ess  # noqa: E402
from .nodes import list_layers, node_score, parse_node  # noqa: E402
from .schedule import GenerativeSchedule, LRPolicy  # noqa: E402
from .specs import ModelInfo, create_model, list_specs  # noqa: E402
from .train import evaluate, train  # noqa: E402
from .visualize import load_preset, sample_node, save_grid, save_npz  # noqa: E402

__all__ = [
    "GenerativeLoss", "generative_loss", "importance_ess", "GenerativeSchedule", "LRPolicy", "ModelInfo",
    "create_model", "list_specs", "load_checkpoint", "save_checkpoint", "read_metadata", "TrainConfig",
    "load_config", "train", "evaluate", "open_model", "HMCConfig", "HMCResult", "hmc_sample", "list_layers",
    "node_score", "parse_node", "load_preset", "sample_node", "save_grid", "save_npz", "export_onnx",
    "verify_onnx", "__version__",
]
