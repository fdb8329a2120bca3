"""Where and how tensors run: the device a name means, the numeric precision, and CPU threads.

Shared by training, sampling, export, the CLI and the GUI, so that ``--device``, ``--precision`` and ``--threads``
mean one thing everywhere.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["PRECISIONS", "resolve_device", "precision_context", "autocast_dtype", "set_threads", "device_name",
           "environment"]

# fp32: IEEE float32 (TF32 off); tf32: float32 storage with TensorFloat-32 matmuls/convolutions on NVIDIA GPUs
# (as PyTorch's defaults allow for convolutions); bf16 / fp16: autocast to that type (energies, losses and
# optimizer state stay float32).
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a device that does not exist is a ValueError naming it."""
    if isinstance(name, torch.device):
        return name
    name = str(name).strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device name: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: gencnn runs on cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision (None: no autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


@contextlib.contextmanager
def precision_context(device: torch.device | str, precision: str) -> Iterator[None]:
    """Run the enclosed forward passes at ``precision``: autocast for bf16/fp16, TF32 on or off for tf32/fp32
    (restored afterwards). fp16 autocast is CUDA-only in our trainer's tradition; on the CPU it runs as bf16 would."""
    device = torch.device(device)
    dtype = autocast_dtype(precision)
    if dtype is not None:
        with torch.autocast(device.type, dtype=dtype):
            yield
        return
    if device.type != "cuda":
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    on = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads (None: keep torch's choice, or ``$GENCNN_THREADS``); returns the number in use."""
    if threads is None and os.environ.get("GENCNN_THREADS", "").isdigit():
        threads = int(os.environ["GENCNN_THREADS"])
    if threads is not None:
        if not 1 <= threads <= 1024:
            raise ValueError(f"threads must be in [1, 1024], got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    import platform

    return f"cpu ({model or platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    """What a run record needs to say where it ran: versions of torch, CUDA, cuDNN and the driver, the device."""
    import platform

    from ._version import __version__

    env = {"gencnn": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "device": device_name(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["driver"] = _driver_version()
    return env


def _driver_version() -> str | None:
    with contextlib.suppress(Exception):
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    with contextlib.suppress(Exception):
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] or None
    return None
