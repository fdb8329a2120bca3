"""The package version, in one place (``gencnn --version``, checkpoints, ONNX metadata, run records)."""

__version__ = "0.2.0"
