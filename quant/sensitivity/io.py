"""The fallback file: what ``quant build --accuracy-budget`` decided, readable by ``--exclude-from``.

Layout (JSON object, ``schema: "quant.fallback"``, ``schema_version: 1``)::

    {
      "schema": "quant.fallback", "schema_version": 1, "created": "...Z", "quant_version": "...",
      "model": {"path": "model.onnx", "fingerprint": {"graph": ..., "weights": ..., "combined": ...}},
      "cache": "model.cache", "output": "model.int8.onnx", "target": "tensorrt",
      "data": {... data summary, "fingerprint": ...},
      "exclude": ["head_conv", "/layer4/Add"],     # what --exclude-from reads
      "fallback": {... FallbackResult.to_dict()},  # budget, FP32 / all-INT8, every step, verified
      "sensitivity": {... SensitivityResult.to_dict()}
    }

``--exclude-from`` also accepts a plain JSON list of patterns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant._io import atomic_write
from quant.errors import ReportError, UsageError

__all__ = [
    "FALLBACK_SCHEMA",
    "FALLBACK_VERSION",
    "ExcludeFile",
    "fallback_path",
    "read_exclude_file",
    "save_fallback",
]

FALLBACK_SCHEMA = "quant.fallback"
FALLBACK_VERSION = 1


def fallback_path(output: str | Path) -> Path:
    """The default fallback file of a built model: ``<output>.fallback.json``."""
    return Path(str(output) + ".fallback.json")


def save_fallback(path: str | Path, content: Mapping[str, Any]) -> Path:
    """Write a fallback document (stamped with schema, version, time and quant version), atomically."""
    from quant import __version__

    doc = {
        "schema": FALLBACK_SCHEMA,
        "schema_version": FALLBACK_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quant_version": __version__,
        **content,
    }
    if not isinstance(doc.get("exclude"), list):
        raise UsageError("a fallback document needs an 'exclude' list")
    return atomic_write(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")


@dataclass(frozen=True)
class ExcludeFile:
    """Exclusion patterns read from a fallback file (or a JSON list), and the model it was made for."""

    path: Path
    exclude: tuple[str, ...]
    model_fingerprint: Mapping[str, Any] | None = None


def read_exclude_file(path: str | Path) -> ExcludeFile:
    """Read ``--exclude-from``: a fallback file (its ``exclude`` list) or a JSON list of patterns."""
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist"
        raise UsageError(
            f"--exclude-from '{p}' {what}; give the .fallback.json written by 'quant build --accuracy-budget'"
        )
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"--exclude-from '{p}' is not a JSON file ({exc}); give a .fallback.json") from exc
    except OSError as exc:
        raise ReportError(f"cannot read --exclude-from '{p}': {exc.strerror or exc}") from exc
    fingerprint: Mapping[str, Any] | None = None
    if isinstance(data, Mapping):
        schema = data.get("schema")
        if schema != FALLBACK_SCHEMA:
            raise ReportError(
                f"--exclude-from '{p}' is not a quant fallback file (schema {schema!r}); give the .fallback.json "
                "written by 'quant build --accuracy-budget' or a JSON list of node names"
            )
        version = data.get("schema_version")
        if not isinstance(version, int) or version > FALLBACK_VERSION:
            raise ReportError(
                f"--exclude-from '{p}' has fallback schema version {version!r}; this quant reads up to "
                f"{FALLBACK_VERSION}: upgrade quant"
            )
        patterns = data.get("exclude")
        model = data.get("model")
        if isinstance(model, Mapping) and isinstance(model.get("fingerprint"), Mapping):
            fingerprint = model["fingerprint"]
    else:
        patterns = data
    if not isinstance(patterns, list) or not all(isinstance(x, str) and x for x in patterns):
        raise ReportError(
            f"--exclude-from '{p}': 'exclude' must be a list of node names or op types (strings)"
        )
    return ExcludeFile(path=p, exclude=tuple(patterns), model_fingerprint=fingerprint)
