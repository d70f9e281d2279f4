"""Shard tasks with an injected fault, for the Ray retry test (importable by Ray's workers)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quant.pipeline.distributed import eval_shard_task


def die_once_then_evaluate(options: Mapping[str, Any]) -> dict[str, Any]:
    """The first attempt of each shard kills its worker process (as an OOM kill would); the
    retry evaluates the shard."""
    marker = Path(options["marker_dir"]) / options["shard"].replace("/", "_of_")
    if not marker.exists():
        marker.write_text("died once\n")
        os._exit(1)
    return eval_shard_task(options)
