"""Per-layer quantization sensitivity and automatic mixed-precision fallback.

- :mod:`.switchable`: one Q/DQ model where each layer is INT8 or float according to a flags input
  (graph rewrite, no runtime).
- :mod:`.results`: measurements, ranking, budgets and their JSON forms (pure).
- :mod:`.measure`: the ONNX Runtime loops (sensitivity pass, greedy fallback).
- :mod:`.io`: the fallback file (``<output>.fallback.json``) that ``--exclude-from`` reads.

``quant.api.sensitivity`` and ``quant.api.build_with_fallback`` tie them to models, caches and
data; docs/SENSITIVITY.md explains the method and its cost.
"""

from __future__ import annotations

from quant.sensitivity.results import (
    METRICS,
    Budget,
    FallbackResult,
    FallbackStep,
    LayerSensitivity,
    Measurement,
    SensitivityOptions,
    SensitivityResult,
    rank_layers,
    render_fallback,
    render_sensitivity,
)
from quant.sensitivity.switchable import (
    Layer,
    SwitchableModel,
    build_switchable_model,
    exclude_pattern,
    name_unnamed_nodes,
)

#: Samples ranked when the data options give no --max-samples: the cost grows as layers x
#: samples (ResNet-50 on 2 cores: about 5 s per sample, see docs/SENSITIVITY.md).
DEFAULT_MAX_SAMPLES = 128
#: Samples a fallback budget is checked on when the data options give no --max-samples.
DEFAULT_BUDGET_SAMPLES = 512

__all__ = [
    "DEFAULT_BUDGET_SAMPLES",
    "DEFAULT_MAX_SAMPLES",
    "METRICS",
    "Budget",
    "FallbackResult",
    "FallbackStep",
    "Layer",
    "LayerSensitivity",
    "Measurement",
    "SensitivityOptions",
    "SensitivityResult",
    "SwitchableModel",
    "build_switchable_model",
    "exclude_pattern",
    "name_unnamed_nodes",
    "rank_layers",
    "render_fallback",
    "render_sensitivity",
]
