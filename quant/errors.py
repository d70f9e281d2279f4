"""The one exception hierarchy of quant.

Every error a user can cause is raised as a subclass of :class:`QuantError` with a message that
names the offending thing (file, tensor, option) and says what to do. The CLI prints the message
as one line on stderr and exits with :attr:`QuantError.exit_code`; tracebacks only with --verbose.
"""

from __future__ import annotations


class QuantError(Exception):
    """Base class of every error quant raises on purpose. Exit code 1 (a failure)."""

    exit_code: int = 1


class UsageError(QuantError):
    """The command line or API arguments are wrong or contradict each other. Exit code 2."""

    exit_code = 2


class DataError(QuantError):
    """Calibration or evaluation data is missing, unreadable or does not fit the model."""


class ModelError(QuantError):
    """The model file is missing, not ONNX, or cannot be handled."""


class CacheError(QuantError):
    """A calibration cache, sidecar or statistics file is unreadable or does not fit the model."""


class CalibrationError(QuantError):
    """Calibration itself failed, e.g. non-finite activations."""


class ReportError(QuantError):
    """A report file is unreadable, of an unknown schema version, or not comparable."""


class OutputError(QuantError):
    """An output file cannot be written (permissions, disk full, output equal to an input)."""


class BackendUnavailableError(QuantError):
    """An optional backend (TensorRT, CUDA, PyTorch) is not installed; the message names the extra."""
