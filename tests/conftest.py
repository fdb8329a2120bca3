"""Shared fixtures: the read-only data folder beside the checkout, and a quiet, small torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """$GENCNN_DATA, else ../shared/data beside the checkout; tests that need MNIST skip without it."""
    root = Path(os.environ.get("GENCNN_DATA") or REPO.parent / "shared" / "data")
    if not (root / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST not found under {root} (set GENCNN_DATA)")
    return root


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder (weights, photos); tests that need it skip without it."""
    root = Path(os.environ.get("GENCNN_SHARED") or REPO.parent / "shared")
    if not (root / "weights").is_dir():
        pytest.skip(f"no pretrained weights under {root}")
    return root
