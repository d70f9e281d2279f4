"""quant: INT8 post-training quantization and calibration for TensorRT.

One calibration serves both TensorRT worlds: a calibration cache in TensorRT's text format
(implicit quantization, TensorRT 8.6 to 10.x) and a Q/DQ ONNX model (explicit quantization,
TensorRT 10.x and 11.x). Everything except the TensorRT backend runs on CPU through ONNX Runtime.

Importing this package is cheap: heavy or optional modules (ONNX Runtime sessions, TensorRT,
PyTorch) are imported inside the functions that need them.
"""

from quant.errors import QuantError

__version__ = "0.1.0"

__all__ = ["QuantError", "__version__"]
